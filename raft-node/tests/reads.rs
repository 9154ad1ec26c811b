//! Linearizable reads under concurrency, end to end: many readers at the leader and at the
//! followers share batched ReadIndex rounds while a writer moves a counter on; no read may
//! return a value older than one acknowledged before the read began, and each reader's
//! values never go backwards.
//!
//! Processes are killed on drop (also when an assertion fails); ports are ephemeral on
//! 127.0.0.1; every loop is bounded in count and time.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_client::{Client, ClientConfig};

const BIN: &str = env!("CARGO_BIN_EXE_raft-node");
const WRITES: i64 = 200;
const READERS_PER_NODE: usize = 8;
const READS_PER_READER_MAX: u64 = 5_000;
const RUN_LIMIT: Duration = Duration::from_secs(60);

struct Nodes {
    children: Vec<Child>,
    clients: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(size: u64) -> Nodes {
    let dir = tempfile::tempdir().expect("tempdir");
    let held: Vec<TcpListener> = (0..2 * size)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    let ports: Vec<SocketAddr> = held.iter().map(|l| l.local_addr().unwrap()).collect();
    drop(held);
    let mut nodes = Nodes {
        children: Vec::new(),
        clients: Vec::new(),
        _dir: dir,
    };
    for id in 1..=size {
        let data = nodes._dir.path().join(format!("node-{id}"));
        let log = std::fs::File::create(nodes._dir.path().join(format!("node-{id}.log")))
            .expect("log file");
        let mut args = vec![
            "run".to_string(),
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            // A new cluster of several members is given its shared ID.
            "--cluster-id".into(),
            "7e575e7e575e7e575e7e575e7e575e01".into(),
        ];
        for pid in 1..=size {
            let i = 2 * (pid as usize - 1);
            args.push("--peer".into());
            args.push(format!("{pid}={},{}", ports[i], ports[i + 1]));
        }
        nodes.clients.push(ports[2 * (id as usize - 1) + 1]);
        let child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn raft-node");
        nodes.children.push(child);
    }
    nodes
}

fn client(addrs: Vec<String>) -> Client {
    let mut config = ClientConfig::new(addrs);
    config.request_timeout_ms = 10_000;
    config.attempt_timeout_ms = 2_000;
    Client::new(config)
}

fn counter(v: Option<bytes::Bytes>) -> i64 {
    v.map(|b| std::str::from_utf8(&b).unwrap().parse().unwrap())
        .unwrap_or(0)
}

#[test]
fn batched_reads_never_miss_an_acknowledged_write() {
    let nodes = start(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let all: Vec<String> = nodes.clients.iter().map(|a| a.to_string()).collect();
        let writer = client(all.clone());
        // The first write waits out the election.
        writer.set("n", "0").await.expect("first write");
        let acked = Arc::new(AtomicI64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + RUN_LIMIT;
        let mut readers = Vec::new();
        for addr in &nodes.clients {
            for _ in 0..READERS_PER_NODE {
                // One node each: a follower's reads go through its forwarded ReadIndex rounds.
                let c = client(vec![addr.to_string()]);
                let (acked, done, reads) = (acked.clone(), done.clone(), reads.clone());
                readers.push(tokio::spawn(async move {
                    let mut last = 0;
                    for _ in 0..READS_PER_READER_MAX {
                        if done.load(Ordering::Acquire) || Instant::now() > deadline {
                            break;
                        }
                        let before = acked.load(Ordering::Acquire);
                        let v = counter(c.get("n").await.expect("linearizable read"));
                        assert!(v >= before, "read {v} after {before} was acknowledged");
                        assert!(v >= last, "a reader's value went back from {last} to {v}");
                        last = v;
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
        for i in 1..=WRITES {
            assert!(
                Instant::now() < deadline,
                "writes took longer than {RUN_LIMIT:?}"
            );
            let v = writer.incr_by("n", 1).await.expect("write");
            assert_eq!(v, i);
            acked.store(v, Ordering::Release);
        }
        done.store(true, Ordering::Release);
        for r in readers {
            r.await.expect("reader");
        }
        assert!(
            reads.load(Ordering::Relaxed) >= WRITES as u64,
            "readers made progress: {} reads",
            reads.load(Ordering::Relaxed)
        );
        assert_eq!(counter(writer.get("n").await.unwrap()), WRITES);
    });
}
