//! One durable Redis on loopback, the second anchor of the comparison (issue 16, item 5): a
//! single `redis-server` with `appendonly yes` and `appendfsync always`, so every write it
//! acknowledges has been fdatasync'd, as ours are on a majority of three nodes. It runs only
//! when `redis-server` is on PATH (Debian: `apt-get install redis-server`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::procs::{Proc, Procs};
use raft_testkit::try_free_addr;

/// A fresh Redis answers PING within milliseconds; far beyond that it is broken.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const PING_TIMEOUT: Duration = Duration::from_millis(500);

pub struct Redis {
    pub procs: Procs,
    pub addr: String,
}

/// `redis-server --version`, for the report.
pub fn version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "redis-server (version unknown)".into())
}

/// Starts the server under `dir` (from the calling thread; see [`Proc::start`]): no RDB
/// snapshots, the append-only file synced before every reply, nothing read from or written
/// to the default config or port.
pub fn start(binary: &Path, dir: &Path) -> Result<Redis, String> {
    let addr = try_free_addr().map_err(|e| format!("redis: {e}"))?;
    let data = dir.join("redis");
    std::fs::create_dir_all(&data).map_err(|e| format!("redis: {}: {e}", data.display()))?;
    let args = [
        "--bind",
        "127.0.0.1",
        "--port",
        &addr.port().to_string(),
        "--dir",
        &data.display().to_string(),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--loglevel",
        "warning",
    ]
    .map(String::from)
    .to_vec();
    let mut procs = Procs::default();
    procs.0.push(Proc::new(
        "redis-server",
        binary,
        args,
        dir.join("redis.log"),
    ));
    for p in &mut procs.0 {
        p.start().map_err(|e| format!("starting {}: {e}", p.name))?;
    }
    Ok(Redis {
        procs,
        addr: addr.to_string(),
    })
}

impl Redis {
    /// Waits until the server answers `PING` with `+PONG`.
    pub async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.procs.check_alive()?;
            if tokio::time::timeout(PING_TIMEOUT, ping(&self.addr))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("redis: no PONG within {READY_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn ping(addr: &str) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(b"PING\r\n").await.map_err(|e| e.to_string())?;
    let mut reply = [0u8; 7];
    s.read_exact(&mut reply).await.map_err(|e| e.to_string())?;
    if &reply == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&reply)
        ))
    }
}
