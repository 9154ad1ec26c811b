//! `raft-node dev` as a user runs it: one process per node under a supervisor, `dev status`,
//! `dev kill N` while writes go on, `dev restart N` and its catch-up, Ctrl-C leaving no
//! process behind, a killed supervisor taking its nodes with it, and a data folder of
//! another cluster size refused.
//!
//! The harness is `common/dev.rs`.

mod common;

use std::time::{Duration, Instant};

use common::dev::*;
use common::runtime;

/// Waits until node `id` alone answers a status that satisfies `done`.
async fn wait_node(
    cluster: &DevCluster,
    id: u64,
    what: &str,
    done: impl Fn(&raft_client::NodeStatus) -> bool,
) -> raft_client::NodeStatus {
    let probe = cluster.node_client(id, 1_000);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = probe.status().await {
            if done(&s) {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "waited in vain for {what}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn dev_cluster_kill_restart_and_ctrl_c() {
    let mut cluster = DevCluster::start(3, &[]);
    let banner = cluster.output();
    // The banner names every node's PID and addresses, and the status page.
    for node in cluster.nodes() {
        let pid = node.pid.expect("every node runs");
        assert!(pid_alive(pid), "node {} pid {pid}", node.id);
        assert_ne!(pid, cluster.supervisor_pid(), "one process per node");
        for needle in [
            pid.to_string(),
            node.client.to_string(),
            format!("http://{}/", node.http),
        ] {
            assert!(banner.contains(&needle), "{needle} missing:\n{banner}");
        }
    }
    let pids: Vec<u32> = cluster.nodes().iter().filter_map(|n| n.pid).collect();
    assert_eq!(pids.len(), 3);

    runtime().block_on(async {
        let client = cluster.client();
        client
            .set("before", "1")
            .await
            .unwrap_or_else(|e| panic!("first write: {e}\n{}", cluster.logs()));

        // `dev status`: every node running, one leader.
        let out = cluster.dev(&["status"]);
        let text = stdout(&out);
        assert!(out.status.success(), "{text}{}", stderr(&out));
        assert_eq!(text.matches("running").count(), 3, "{text}");
        assert_eq!(text.matches("Leader").count(), 1, "{text}");

        // Kill node 2: its process is gone, the supervisor says so, writes go on.
        let node2_pid = cluster.node(2).pid.unwrap();
        let out = cluster.dev(&["kill", "2"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("killed"), "{}", stdout(&out));
        assert!(!pid_alive(node2_pid), "node 2 still runs after dev kill 2");
        assert_eq!(cluster.node(2).pid, None, "state file still lists node 2");
        for i in 0..20 {
            client
                .set(format!("k{i}"), format!("v{i}"))
                .await
                .unwrap_or_else(|e| panic!("write {i} with node 2 down: {e}\n{}", cluster.logs()));
        }
        let out = cluster.dev(&["status"]);
        let text = stdout(&out);
        assert_eq!(text.matches("running").count(), 2, "{text}");
        assert!(text.contains("stopped"), "{text}");
        // Killing it again is refused, saying why.
        let out = cluster.dev(&["kill", "2"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("not running"), "{}", stderr(&out));
        // A node the cluster does not have.
        let out = cluster.dev(&["kill", "7"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("no node 7"), "{}", stderr(&out));

        // Restart node 2: a new process, and it catches up with the writes it missed.
        let out = cluster.dev(&["restart", "2"]);
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        let new_pid = cluster.node(2).pid.expect("node 2 runs again");
        assert_ne!(new_pid, node2_pid);
        assert!(pid_alive(new_pid));
        let commit = client.status().await.expect("status").commit_index;
        wait_node(&cluster, 2, "node 2 to catch up", |s| {
            s.applied_index >= commit
        })
        .await;
        let local = cluster.node_client(2, 2_000);
        assert_eq!(
            local
                .get_stale("k19")
                .await
                .expect("local read on node 2")
                .as_deref(),
            Some(&b"v19"[..]),
            "node 2's own replica has the write made while it was down"
        );
    });

    // Ctrl-C (SIGINT to the supervisor alone): it stops every node and exits cleanly.
    let pids: Vec<u32> = cluster.nodes().iter().filter_map(|n| n.pid).collect();
    assert_eq!(pids.len(), 3);
    let status = cluster.signal_supervisor(libc::SIGINT, Duration::from_secs(30));
    assert!(
        status.success(),
        "supervisor exit {status}\n{}",
        cluster.logs()
    );
    for pid in pids {
        assert!(!pid_alive(pid), "node pid {pid} outlived Ctrl-C");
    }
    // With no supervisor, `dev status` says none runs and how to start one.
    let out = cluster.dev(&["status"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("raft-node dev"), "{}", stderr(&out));
}

#[test]
fn killed_supervisor_takes_its_nodes_and_another_size_is_refused() {
    let mut cluster = DevCluster::start(3, &[]);
    let pids: Vec<u32> = cluster.nodes().iter().filter_map(|n| n.pid).collect();
    assert_eq!(pids.len(), 3);
    // A second supervisor on the same folder is refused while the first runs.
    let dir = cluster.data_dir();
    let dir = dir.to_str().unwrap().to_string();
    let out = cluster.run(&["dev", "--nodes", "3", "--data-dir", &dir]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already runs"), "{}", stderr(&out));

    // SIGKILL runs no handler: the nodes must go by their parent-death signal.
    cluster.signal_supervisor(libc::SIGKILL, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(15);
    while pids.iter().any(|&p| pid_alive(p)) {
        assert!(
            Instant::now() < deadline,
            "nodes outlived their killed supervisor\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The folder holds a 3-node cluster: 5 nodes on it are refused, naming --fresh.
    let out = cluster.run(&["dev", "--nodes", "5", "--data-dir", &dir]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("--fresh") && err.contains("--nodes 3"),
        "{err}"
    );
}
