//! The process harness shared by the test files that start real `raft-node` processes
//! (`cluster*.rs`, `config.rs`, `hostile.rs`): a [`Cluster`] of children on ephemeral 127.0.0.1 ports, all
//! killed on drop (also when an assertion fails; each is a `raft_testkit::ChildGuard`), and
//! every wait bounded by a deadline.

// Each test file compiles this module on its own and uses a part of it.
#![allow(dead_code)]

pub mod attacks;
pub mod dev;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raft_client::{Client, ClientConfig};
use raft_proto::NodeStatus;
// Re-exported for the test files; each uses a part (as with the rest of this module).
#[allow(unused_imports)]
pub use raft_testkit::{free_addr, free_addrs};
use raft_testkit::{open_log, ChildGuard};

pub const BIN: &str = env!("CARGO_BIN_EXE_raft-node");
pub const REQUEST_TIMEOUT_MS: u64 = 1_500;
/// The ID every test cluster's members share.
pub const CLUSTER_ID: &str = "7e575e7e575e7e575e7e575e7e575e00";

pub struct NodeProc {
    pub id: u64,
    pub args: Vec<String>,
    pub peer: SocketAddr,
    pub client: SocketAddr,
    pub http: SocketAddr,
    /// The running process; killed and reaped when dropped.
    pub child: Option<ChildGuard>,
}

/// A cluster of child processes, all killed on drop. Fields drop in order: the processes
/// die before their temporary directory is removed.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(size: u64) -> Cluster {
        Self::start_with(size, &[])
    }

    pub fn start_with(size: u64, extra: &[&str]) -> Cluster {
        Self::start_custom(size, extra, &[])
    }

    /// `joiners` are listed as peers but start with `--join` (no membership) and are not
    /// spawned until [`spawn`](Self::spawn) is called for them.
    pub fn start_custom(size: u64, extra: &[&str], joiners: &[u64]) -> Cluster {
        Self::start_full(size, extra, joiners, &[])
    }

    /// As [`start_custom`](Self::start_custom), with `node_extra` flags for single nodes.
    pub fn start_full(
        size: u64,
        extra: &[&str],
        joiners: &[u64],
        node_extra: &[(u64, &[&str])],
    ) -> Cluster {
        let mut cluster = Self::prepare(size, extra, joiners, node_extra);
        for id in 1..=size {
            if !joiners.contains(&id) {
                cluster.spawn(id);
            }
        }
        cluster
    }

    /// The cluster of [`start_full`](Self::start_full) with no process spawned yet.
    pub fn prepare(
        size: u64,
        extra: &[&str],
        joiners: &[u64],
        node_extra: &[(u64, &[&str])],
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = free_addrs(3 * size as usize);
        let addrs: Vec<(u64, SocketAddr, SocketAddr, SocketAddr)> = (1..=size)
            .map(|id| {
                let i = 3 * (id as usize - 1);
                (id, ports[i], ports[i + 1], ports[i + 2])
            })
            .collect();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            dir,
        };
        for &(id, peer, client, http) in &addrs {
            let mut args: Vec<String> = vec![
                "run".into(),
                "--id".into(),
                id.to_string(),
                "--data-dir".into(),
                cluster.data_dir(id).display().to_string(),
                "--http-addr".into(),
                http.to_string(),
                "--request-timeout-ms".into(),
                REQUEST_TIMEOUT_MS.to_string(),
                // A new cluster of several members is given its shared ID.
                "--cluster-id".into(),
                CLUSTER_ID.into(),
            ];
            for &(pid, ppeer, pclient, _) in &addrs {
                args.push("--peer".into());
                args.push(format!("{pid}={ppeer},{pclient}"));
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            for (_, flags) in node_extra.iter().filter(|(n, _)| *n == id) {
                args.extend(flags.iter().map(|s| s.to_string()));
            }
            if joiners.contains(&id) {
                args.push("--join".into());
            } else if !joiners.is_empty() {
                for v in (1..=size).filter(|v| !joiners.contains(v)) {
                    args.push("--initial-voter".into());
                    args.push(v.to_string());
                }
            }
            cluster.nodes.push(NodeProc {
                id,
                args,
                peer,
                client,
                http,
                child: None,
            });
        }
        cluster
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    /// Spawns node `id`. Unlike xtask's `raft_testkit::Proc`, without PR_SET_PDEATHSIG: a
    /// test may spawn from a runtime's short-lived thread, whose end would kill the node; the
    /// guard's drop is what stops it. Only stderr (the logs) is kept: the tests read the log.
    pub fn spawn(&mut self, id: u64) {
        let log = open_log(&self.log_path(id)).expect("log file");
        let n = self.nodes.iter_mut().find(|n| n.id == id).expect("node");
        assert!(n.child.is_none(), "node {id} already runs");
        let child = ChildGuard::spawn(
            Command::new(BIN)
                .args(&n.args)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )
        .expect("spawn raft-node");
        n.child = Some(child);
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client.to_string()).collect()
    }

    pub fn client(&self) -> Client {
        let mut config = ClientConfig::new(self.addrs());
        config.request_timeout_ms = 10_000;
        config.attempt_timeout_ms = 2_000;
        Client::new(config)
    }

    pub fn node_client(&self, id: u64, timeout_ms: u64) -> Client {
        let n = self.node(id);
        let mut config = ClientConfig::new([n.client.to_string()]);
        config.request_timeout_ms = timeout_ms;
        config.attempt_timeout_ms = timeout_ms;
        config.attempts_max = 1;
        Client::new(config)
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        self.nodes.iter().find(|n| n.id == id).expect("node exists")
    }

    /// The process ID of node `id`, which must be running.
    pub fn pid(&self, id: u64) -> u32 {
        self.node(id).child.as_ref().expect("node runs").id()
    }

    /// Resident memory of node `id` in KiB.
    pub fn rss_kib(&self, id: u64) -> u64 {
        attacks::rss_kib(self.pid(id)).expect("the node's /proc status")
    }

    pub fn kill(&mut self, id: u64) {
        let n = self.nodes.iter_mut().find(|n| n.id == id).expect("node");
        if let Some(mut c) = n.child.take() {
            // SIGKILL: no shutdown path runs.
            c.kill().expect("kill and reap");
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(self.log_path(n.id)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out += &format!("--- node {} ---\n", n.id);
            for l in tail.into_iter().rev() {
                out += l;
                out.push('\n');
            }
        }
        out
    }

    /// Waits up to 15 s until node `id` answers a status that satisfies `done`, and returns
    /// a client of that node; panics naming `what`, with the logs, otherwise.
    pub async fn wait_status(
        &self,
        id: u64,
        what: &str,
        done: impl Fn(&NodeStatus) -> bool,
    ) -> Client {
        let probe = self.node_client(id, 1_000);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(s) = probe.status().await {
                if done(&s) {
                    return probe;
                }
            }
            assert!(
                Instant::now() < deadline,
                "waited in vain for {what}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader as seen by a live node, once one is known and serving, within `limit`.
    pub async fn wait_leader(&self, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            for n in self.nodes.iter().filter(|n| n.child.is_some()) {
                let c = self.node_client(n.id, 500);
                if let Ok(s) = c.status().await {
                    if let Some(l) = s.leader {
                        if self.node(l).child.is_some() && s.role == "Leader" {
                            return l;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader within {limit:?}\n{}", self.logs());
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn redis_set_get(
    addr: SocketAddr,
    key: &str,
    value: &str,
) -> redis::RedisResult<Option<String>> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(5))?;
    con.set_read_timeout(Some(Duration::from_secs(5)))?;
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query::<()>(&mut con)?;
    redis::cmd("GET").arg(key).query(&mut con)
}

pub async fn http_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("http answer in time")
        .unwrap();
    out
}

pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("http answer in time")
        .unwrap();
    out
}
