//! A 3-member etcd on loopback, the anchor of the comparison: temporary data directories,
//! ephemeral ports, killed with the [`Procs`] guard.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::procs::{Proc, Procs};
use raft_testkit::try_free_addr;

const MEMBERS: usize = 3;
/// A fresh etcd elects a leader within a few seconds here; far beyond that it is broken.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STATUS_REPLY_BYTES_MAX: usize = 64 << 10;

pub struct Etcd {
    pub procs: Procs,
    pub client_addrs: Vec<String>,
}

/// `etcd --version`'s first line, for the report.
pub fn version(binary: &Path) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "etcd (version unknown)".into())
}

/// Starts the members (from the calling thread; see [`Proc::start`]).
pub fn start(binary: &Path, dir: &Path) -> Result<Etcd, String> {
    let io = |e: std::io::Error| format!("etcd: {e}");
    let mut peer = Vec::new();
    let mut client = Vec::new();
    for _ in 0..MEMBERS {
        peer.push(try_free_addr().map_err(io)?);
        client.push(try_free_addr().map_err(io)?);
    }
    let initial_cluster = (0..MEMBERS)
        .map(|i| format!("m{}=http://{}", i + 1, peer[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Procs::default();
    for i in 0..MEMBERS {
        let data = dir.join(format!("etcd-{}", i + 1));
        let args = vec![
            "--name".to_string(),
            format!("m{}", i + 1),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen-client-urls".into(),
            format!("http://{}", client[i]),
            "--advertise-client-urls".into(),
            format!("http://{}", client[i]),
            "--listen-peer-urls".into(),
            format!("http://{}", peer[i]),
            "--initial-advertise-peer-urls".into(),
            format!("http://{}", peer[i]),
            "--initial-cluster".into(),
            initial_cluster.clone(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            format!("xtask-bench-{}", std::process::id()),
            "--logger".into(),
            "zap".into(),
            "--log-level".into(),
            "warn".into(),
        ];
        procs.0.push(Proc::new(
            format!("etcd m{}", i + 1),
            binary,
            args,
            dir.join(format!("etcd-{}.log", i + 1)),
        ));
    }
    for p in &mut procs.0 {
        p.start().map_err(|e| format!("starting {}: {e}", p.name))?;
    }
    Ok(Etcd {
        procs,
        client_addrs: client.iter().map(|a| a.to_string()).collect(),
    })
}

impl Etcd {
    /// The leader's client address, once every member answers and agrees on a leader.
    pub async fn wait_leader(&mut self) -> Result<String, String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.procs.check_alive()?;
            let mut leader = None;
            let mut answered = 0;
            for addr in &self.client_addrs {
                if let Ok((member, lead)) = status(addr).await {
                    answered += 1;
                    if lead != 0 && member == lead {
                        leader = Some(addr.clone());
                    }
                }
            }
            if let (Some(l), true) = (leader, answered == self.client_addrs.len()) {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(format!("etcd: no leader within {READY_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `(member_id, leader)` from `POST /v3/maintenance/status` on one connection.
async fn status(addr: &str) -> Result<(u64, u64), String> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let req: &[u8] = b"POST /v3/maintenance/status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        s.write_all(req).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        (&mut s)
            .take(STATUS_REPLY_BYTES_MAX as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .ok_or("no HTTP body")?;
        // A chunked body has its JSON between the size lines; take the outermost braces.
        let json = &body[body.find('{').ok_or("no JSON")?..=body.rfind('}').ok_or("no JSON")?];
        let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        // uint64 fields arrive as JSON strings from the gateway.
        let num = |v: &serde_json::Value| -> u64 {
            v.as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| v.as_u64())
                .unwrap_or(0)
        };
        Ok::<_, String>((num(&v["header"]["member_id"]), num(&v["leader"])))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| "status timed out".to_string())?
}
