//! raft-node hosting a state machine that is not the built-in key-value store: the counter
//! of `examples/counter`, three nodes in this process on 127.0.0.1. Exactly-once retries,
//! snapshots, anti-entropy and a restart from disk all go through the generic runtime.

#[path = "../examples/counter/machine.rs"]
mod machine;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use machine::{add, value_of, Counter};
use raft_client::{Client, ClientConfig};
use raft_core::Index;
use raft_node::config::{NodeConfig, PeerConfig};
use raft_node::node::RunningNode;
use raft_node::runtime::HostedMachine;
use raft_snapshot::{RestoreError, SnapshotSource, StateDigest, StateMachine};
use raft_testkit::free_addrs;
use std::sync::atomic::{AtomicBool, Ordering};

fn config(id: u64, dir: &std::path::Path, peers: &[PeerConfig]) -> NodeConfig {
    let mut config = NodeConfig::with_defaults(id, dir.join(format!("node-{id}")), peers.to_vec());
    config.cluster_id = Some(raft_node::cluster_id::ClusterId(0x7e57));
    config.snapshot_entries_max = 20;
    config.snapshot_log_margin_entries = 5;
    config.digest_interval_entries = 10;
    config.request_timeout_ms = 2_000;
    config
}

fn one_node_client(addr: SocketAddr) -> Client {
    let mut config = ClientConfig::new([addr.to_string()]);
    config.request_timeout_ms = 1_000;
    config.attempts_max = 1;
    Client::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_machine_is_replicated_snapshotted_and_compared() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let ports = free_addrs(6);
    let peers: Vec<PeerConfig> = (1..=3u64)
        .map(|id| PeerConfig {
            id,
            addr: ports[2 * (id as usize - 1)].into(),
            client_addr: Some(ports[2 * (id as usize - 1) + 1].into()),
        })
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let node = RunningNode::start_with(config(id, dir.path(), &peers), Counter::default());
        nodes.push(Some(node.await.unwrap()));
    }
    let addrs: Vec<String> = peers
        .iter()
        .map(|p| p.client_addr.as_ref().unwrap().to_string())
        .collect();
    let client = Client::new(ClientConfig::new(addrs.clone()));
    for i in 1..=60 {
        client.propose(add(i)).await.unwrap();
    }
    let total: i64 = (1..=60).sum();
    // A retried request (same number) is answered from the client table, not added again.
    let retrier = Client::new(ClientConfig::new(addrs.clone()));
    let first = retrier.propose_with_seq(add(1_000), 1).await.unwrap();
    let again = retrier.propose_with_seq(add(1_000), 1).await.unwrap();
    assert_eq!(value_of(&first), Some(total + 1_000));
    assert_eq!(first, again);
    let read = client.query(Vec::new(), true).await.unwrap();
    assert_eq!(value_of(&read), Some(total + 1_000));

    // Snapshots were taken of the custom state and the leader compared digests.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let s = client.status().await.unwrap();
        if s.role == "Leader" && s.snapshot_index > 0 && s.anti_entropy.compared_index >= 50 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot or comparison: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.anti_entropy.divergent.is_empty(), "{status:?}");
    assert_eq!(status.anti_entropy.divergence_total, 0);

    // A follower stopped and started again comes back from its snapshot and log.
    let follower = (1..=3u64).find(|&id| Some(id) != status.leader).unwrap();
    let index = follower as usize - 1;
    nodes[index].take().unwrap().shutdown().await;
    client.propose(add(5)).await.unwrap();
    let restarted =
        RunningNode::start_with(config(follower, dir.path(), &peers), Counter::default());
    nodes[index] = Some(restarted.await.unwrap());
    let probe = one_node_client(nodes[index].as_ref().unwrap().client_addr);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(v) = probe.query(Vec::new(), false).await {
            if value_of(&v) == Some(total + 1_005) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "restarted follower did not catch up: {:?}",
            probe.status().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
}

/// Set while a [`SlowRestore`] is inside `restore`.
static RESTORING: AtomicBool = AtomicBool::new(false);
/// How long [`SlowRestore::restore`] takes: many election timeouts.
const RESTORE_DELAY: Duration = Duration::from_secs(3);

/// The counter, with a restore that takes [`RESTORE_DELAY`]: a stand-in for a large snapshot.
#[derive(Debug, Default)]
struct SlowRestore(Counter);

impl SnapshotSource for SlowRestore {
    fn snapshot(&self, writer: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.0.snapshot(writer)
    }

    fn digest(&self) -> StateDigest {
        self.0.digest()
    }
}

impl StateMachine for SlowRestore {
    type Response = i64;
    type Frozen = Counter;

    fn apply(&mut self, index: Index, command: &[u8]) -> i64 {
        self.0.apply(index, command)
    }

    fn applied_index(&self) -> Index {
        self.0.applied_index()
    }

    fn freeze(&self) -> Counter {
        self.0.freeze()
    }

    fn restore(&mut self, reader: &mut dyn std::io::Read) -> Result<(), RestoreError> {
        RESTORING.store(true, Ordering::SeqCst);
        std::thread::sleep(RESTORE_DELAY);
        let result = self.0.restore(reader);
        RESTORING.store(false, Ordering::SeqCst);
        result
    }
}

impl HostedMachine for SlowRestore {
    fn query(&self, op: &[u8]) -> Bytes {
        self.0.query(op)
    }

    fn encode_response(response: &i64) -> Bytes {
        Counter::encode_response(response)
    }

    fn skip_to(&mut self, index: Index) {
        self.0.skip_to(index);
    }

    fn empty_like(&self) -> Self {
        SlowRestore::default()
    }
}

/// A snapshot from the leader is restored off the task that runs the protocol: while a
/// slow restore runs, the node goes on answering (and so on hearing heartbeats).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_snapshot_install_does_not_stall_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_addrs(6);
    let peers: Vec<PeerConfig> = (1..=3u64)
        .map(|id| PeerConfig {
            id,
            addr: ports[2 * (id as usize - 1)].into(),
            client_addr: Some(ports[2 * (id as usize - 1) + 1].into()),
        })
        .collect();
    // Nodes 1 and 2 are a majority: they commit and compact without node 3.
    let mut nodes = Vec::new();
    for id in 1..=2 {
        let node = RunningNode::start_with(config(id, dir.path(), &peers), Counter::default());
        nodes.push(node.await.unwrap());
    }
    let addrs: Vec<String> = peers[..2]
        .iter()
        .map(|p| p.client_addr.as_ref().unwrap().to_string())
        .collect();
    let client = Client::new(ClientConfig::new(addrs));
    for i in 1..=60 {
        client.propose(add(i)).await.unwrap();
    }
    let total: i64 = (1..=60).sum();
    // Node 3 starts empty, behind the leader's compaction point: it needs the snapshot.
    let slow = RunningNode::start_with(config(3, dir.path(), &peers), SlowRestore::default());
    nodes.push(slow.await.unwrap());
    let probe = one_node_client(nodes[2].client_addr);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !RESTORING.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "node 3 never began restoring a snapshot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answered = 0;
    while RESTORING.load(Ordering::SeqCst) {
        // The probe gives up after 1 s: a node busy restoring on its protocol task would
        // not answer for the whole RESTORE_DELAY.
        let status = probe.status().await;
        assert!(status.is_ok(), "node 3 stalled while restoring: {status:?}");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(answered >= 3, "only {answered} answers during the restore");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(v) = probe.query(Vec::new(), false).await {
            if value_of(&v) == Some(total) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node 3 did not catch up: {:?}",
            probe.status().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in nodes {
        node.shutdown().await;
    }
}
