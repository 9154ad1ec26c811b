//! Embedding raft-node with a state machine of your own: three nodes of a replicated
//! counter in this process, on 127.0.0.1, with the disk log, snapshots, the peer transport
//! and the client server that `raft-node` itself uses. Run with
//! `cargo run -p raft-node --example counter`.

mod machine;

use machine::{add, value_of, Counter};
use raft_client::{Client, ClientConfig};
use raft_node::config::{NodeConfig, PeerConfig};
use raft_node::node::RunningNode;
// Free ports on 127.0.0.1 from the workspace's test helpers; any free ports would do.
use raft_testkit::free_addrs;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("raft-counter-example-{}", std::process::id()));
    let ports = free_addrs(6);
    let peers: Vec<PeerConfig> = (1..=3u64)
        .map(|id| PeerConfig {
            id,
            addr: ports[2 * (id as usize - 1)].into(),
            client_addr: Some(ports[2 * (id as usize - 1) + 1].into()),
        })
        .collect();
    // The members of a new cluster share one ID, drawn here for all three.
    let cluster_id = raft_node::cluster_id::ClusterId::random();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let mut config =
            NodeConfig::with_defaults(id, dir.join(format!("node-{id}")), peers.clone());
        config.snapshot_entries_max = 50;
        config.cluster_id = Some(cluster_id);
        nodes.push(RunningNode::start_with(config, Counter::default()).await?);
    }
    let result = async {
        let mut config = ClientConfig::new(
            peers
                .iter()
                .map(|p| p.client_addr.as_ref().unwrap().to_string()),
        );
        config.request_timeout_ms = 10_000;
        let client = Client::new(config);
        for i in 1..=100 {
            let value = value_of(&client.propose(add(i)).await?);
            if i % 25 == 0 {
                println!("after adding 1..={i}: {value:?}");
            }
        }
        let value = value_of(&client.query(Vec::new(), true).await?);
        println!(
            "linearizable read: {value:?} (expected {})",
            (1..=100).sum::<i64>()
        );
        let status = client.status().await?;
        println!(
            "leader {:?}, commit {}, snapshot at {}, log from {}",
            status.leader, status.commit_index, status.snapshot_index, status.first_index
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    for node in nodes {
        node.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}
