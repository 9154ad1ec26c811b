//! Membership changes on real `raft-node` processes: the CLI's add, promote, remove and
//! transfer; changes that would break the cluster refused with the reason; `recover` making
//! a survivor a new cluster that keeps its data and grows.
//!
//! The process harness is `common/mod.rs`.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn admin(addr: SocketAddr, args: &[&str]) -> String {
    admin_result(addr, args).unwrap_or_else(|e| panic!("admin {args:?}: {e}"))
}

/// `raft-node admin ...`: its stdout on success, its stderr otherwise.
fn admin_result(addr: SocketAddr, args: &[&str]) -> Result<String, String> {
    let out = Command::new(BIN)
        .args(["admin", "--addr", &addr.to_string()])
        .args(args)
        .output()
        .expect("run raft-node admin");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// Promotes learner `id`, retrying within 15 s while the leader answers that it is not yet
/// connected or caught up (a learner just added has not answered the leader yet).
async fn promote_when_ready(cluster: &Cluster, addr: SocketAddr, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let arg = id.to_string();
        let result = tokio::task::spawn_blocking(move || admin_result(addr, &["promote", &arg]))
            .await
            .unwrap();
        let why = match result {
            Ok(_) => return,
            Err(why) => why,
        };
        let retry = why.contains(&format!("learner {id} is not connected"))
            || why.contains("entries behind")
            || why.contains("busy");
        assert!(retry, "promote {id} refused: {why}");
        assert!(
            Instant::now() < deadline,
            "promote {id} still refused: {why}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn cli_adds_promotes_removes_and_transfers() {
    let mut cluster = Cluster::start_custom(4, &[], &[4]);
    runtime().block_on(async {
        let leader = cluster.wait_leader(Duration::from_secs(15)).await;
        let client = cluster.client();
        client.set("before-join", "1").await.unwrap();
        cluster.spawn(4);
        // Any node's address works: followers redirect the admin client to the leader.
        let any = cluster.node(1).client;
        admin(any, &["add-learner", "4"]);
        promote_when_ready(&cluster, any, 4).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        let joined = cluster.node_client(4, 1_000);
        loop {
            let s = client.status().await.unwrap();
            let caught_up = joined
                .get_stale("before-join")
                .await
                .ok()
                .flatten()
                .is_some();
            let own_view = joined.status().await.map(|s| s.voters).unwrap_or_default();
            if s.voters == vec![1, 2, 3, 4] && own_view == s.voters && caught_up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node 4 did not join: {s:?}\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The status table names the new voter.
        let out = Command::new(BIN)
            .args(["status", "--addr", &cluster.node(4).client.to_string()])
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(table.contains("voters      [1, 2, 3, 4]"), "{table}");

        // Hand leadership to node 4, then remove a follower.
        admin(any, &["transfer-leader", "4"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while cluster.wait_leader(Duration::from_secs(5)).await != 4 {
            assert!(
                Instant::now() < deadline,
                "transfer did not happen\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let removed = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
        admin(any, &["remove", &removed.to_string()]);
        // Ask the leader: the removed node may never hear of its own removal (the leader
        // stops replicating to it once the new configuration is appended).
        let new_leader = cluster.node_client(4, 1_000);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = new_leader.status().await.unwrap();
            if !s.voters.contains(&removed) {
                break;
            }
            assert!(Instant::now() < deadline, "remove did not happen: {s:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client.set("after-remove", "1").await.unwrap();
    });
}

/// A RESP command's error text (or `OK`), on a fresh connection.
fn redis_admin(addr: SocketAddr, command: &str, id: u64) -> String {
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    con.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match redis::cmd(command).arg(id).query::<String>(&mut con) {
        Ok(ok) => ok,
        Err(e) => e.to_string(),
    }
}

/// The attack of issue #13 (PROMOTE of three strangers) and every other change that would
/// break the cluster is refused with its reason; the cluster keeps electing and serving.
#[test]
fn membership_changes_that_would_break_the_cluster_are_refused_with_the_reason() {
    // Node 4 has an address but is not started: a learner the leader never hears from.
    let mut cluster = Cluster::start_custom(4, &[], &[4]);
    runtime().block_on(async {
        let leader = cluster.wait_leader(Duration::from_secs(15)).await;
        let client = cluster.client();
        client.set("before", "1").await.unwrap();
        let at = cluster.node(leader).client;
        let resp = |command: &'static str, id: u64| {
            tokio::task::spawn_blocking(move || redis_admin(at, command, id))
        };
        for id in [97, 98, 99] {
            let answer = resp("RAFT.PROMOTE", id).await.unwrap();
            assert!(
                answer.contains(&format!(
                    "node {id} is not a learner; add it with RAFT.ADDLEARNER {id}"
                )),
                "PROMOTE {id}: {answer}"
            );
        }
        let answer = resp("RAFT.ADDLEARNER", 97).await.unwrap();
        assert!(
            answer.contains("node 97 has no known peer address: list it in every node's peers"),
            "{answer}"
        );
        let answer = resp("RAFT.REMOVE", 9).await.unwrap();
        assert!(
            answer.contains("node 9 is not a member (voters {1, 2, 3}, learners {})"),
            "{answer}"
        );
        let voter = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
        let answer = resp("RAFT.PROMOTE", voter).await.unwrap();
        assert!(
            answer.contains(&format!("node {voter} is already a voter")),
            "{answer}"
        );
        // A learner with an address is added; promoting it while it is down is refused.
        let any = cluster.node(1).client;
        admin(any, &["add-learner", "4"]);
        let refused = admin_result(any, &["promote", "4"]).expect_err("promote a silent learner");
        assert!(
            refused.contains("learner 4 is not connected (never heard from; bound 400 ms)"),
            "{refused}"
        );
        let s = client.status().await.unwrap();
        assert_eq!((s.voters, s.learners), (vec![1, 2, 3], vec![4]));

        // The cluster still serves, elects a new leader when this one dies, and serves on.
        client.set("after-refusals", "1").await.unwrap();
        cluster.kill(leader);
        let second = cluster.wait_leader(Duration::from_secs(10)).await;
        assert_ne!(second, leader);
        client
            .set("after-failover", "1")
            .await
            .unwrap_or_else(|e| panic!("write after failover: {e}\n{}", cluster.logs()));
        assert_eq!(
            client.get("before").await.unwrap().as_deref(),
            Some(&b"1"[..])
        );

        // With the old leader still down, removing the other live voter would leave the
        // new leader alone with a dead voter: refused with the counts. Removing the dead
        // one is what keeps the cluster whole, and is accepted.
        let live = [1, 2, 3]
            .into_iter()
            .find(|&n| n != leader && n != second)
            .unwrap();
        // Let the new leader's view of the dead node age past the connected bound.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let refused = admin_result(cluster.node(second).client, &["remove", &live.to_string()])
            .expect_err("remove the last live follower");
        assert!(
            refused.contains(&format!(
                "the cluster would have 1 of 2 voters reachable ([{second}]: the leader and \
                 the voters it heard from in the last 400 ms), and a majority is 2"
            )),
            "{refused}"
        );
        admin(
            cluster.node(second).client,
            &["remove", &leader.to_string()],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = cluster.node_client(second, 1_000).status().await.unwrap();
            if !s.voters.contains(&leader) {
                break;
            }
            assert!(Instant::now() < deadline, "removal not in force: {s:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client.set("after-remove", "1").await.unwrap();
    });
}

/// `raft-node recover`: a cluster that lost two of three nodes for good comes back from the
/// survivor's data, serves every acknowledged key, takes writes, and grows again.
#[test]
fn recover_makes_a_survivor_a_new_cluster_that_keeps_its_data_and_grows() {
    let mut cluster = Cluster::start_custom(4, &[], &[4]);
    runtime().block_on(async {
        let survivor = cluster.wait_leader(Duration::from_secs(15)).await;
        let client = cluster.client();
        for i in 0..50 {
            client.set(format!("r{i}"), format!("{i}")).await.unwrap();
        }
        let lost: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != survivor).collect();
        for &n in &lost {
            cluster.kill(n);
            std::fs::remove_dir_all(cluster.data_dir(n)).unwrap();
        }
        let recover = |cluster: &Cluster| {
            Command::new(BIN)
                .args(["recover", "--data-dir"])
                .arg(cluster.data_dir(survivor))
                .args(["--id", &survivor.to_string()])
                .output()
                .expect("run raft-node recover")
        };
        // Refused while the node runs.
        let out = recover(&cluster);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "recover of a running node succeeded");
        assert!(
            stderr.contains("is locked by another running node; stop that node before"),
            "{stderr}"
        );
        cluster.kill(survivor);
        let out = recover(&cluster);
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "recover failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            report.contains(&format!("voters [{survivor}], no learners")),
            "{report}"
        );
        assert!(report.contains("configuration in force"), "{report}");

        cluster.spawn(survivor);
        let alone = cluster
            .wait_status(survivor, "the survivor to lead alone", |s| {
                s.role == "Leader" && s.voters == vec![survivor]
            })
            .await;
        for i in 0..50 {
            let v = alone.get(format!("r{i}")).await.unwrap();
            assert_eq!(v.as_deref(), Some(i.to_string().as_bytes()), "r{i} lost");
        }
        alone.set("after-recover", "1").await.unwrap();

        // A fresh member joins: learner, then voter once caught up.
        cluster.spawn(4);
        let addr = cluster.node(survivor).client;
        admin(addr, &["add-learner", "4"]);
        promote_when_ready(&cluster, addr, 4).await;
        let joined = cluster
            .wait_status(4, "node 4 to catch up as a voter", |s| {
                s.voters == vec![survivor, 4]
            })
            .await;
        alone.set("after-grow", "1").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        for key in ["r0", "r49", "after-recover", "after-grow"] {
            while joined.get_stale(key).await.ok().flatten().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "node 4 lacks {key}\n{}",
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
}
