//! raft-node hosting a state machine that is not the built-in key-value store: the counter
//! of `examples/counter`, three nodes in this process on 127.0.0.1. Exactly-once retries,
//! snapshots, anti-entropy and a restart from disk all go through the generic runtime.

#[path = "../examples/counter/machine.rs"]
mod machine;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use machine::{add, value_of, Counter};
use raft_client::{Client, ClientConfig};
use raft_node::config::{NodeConfig, PeerConfig};
use raft_node::node::RunningNode;

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    held.iter().map(|l| l.local_addr().expect("addr")).collect()
}

fn config(id: u64, dir: &std::path::Path, peers: &[PeerConfig]) -> NodeConfig {
    let mut config = NodeConfig::with_defaults(id, dir.join(format!("node-{id}")), peers.to_vec());
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
            addr: ports[2 * (id as usize - 1)],
            client_addr: Some(ports[2 * (id as usize - 1) + 1]),
        })
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let node = RunningNode::start_with(config(id, dir.path(), &peers), Counter::default());
        nodes.push(Some(node.await.unwrap()));
    }
    let addrs: Vec<String> = peers
        .iter()
        .map(|p| p.client_addr.unwrap().to_string())
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
    let probe = one_node_client(peers[index].client_addr.unwrap());
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
