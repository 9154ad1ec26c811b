//! Real `raft-node` processes on loopback, under faults: writes through raft-client and
//! through the `redis` crate, SIGKILL of the leader, exactly-once retries, a minority that
//! refuses service, restarts from disk, a wiped follower, compaction margins, a full disk.
//! Membership changes are in `cluster_membership.rs`, anti-entropy in
//! `cluster_anti_entropy.rs`, configuration errors in `config.rs`.
//!
//! The process harness is `common/mod.rs`.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raft_client::{ClientError, KvCommand, NodeError};

use common::*;

#[test]
fn writes_survive_leader_kill_and_retries_apply_once() {
    let mut cluster = Cluster::start(3);
    runtime().block_on(async {
        let leader = cluster.wait_leader(Duration::from_secs(15)).await;
        let client = cluster.client();

        // Acknowledged writes through raft-client.
        for i in 0..30 {
            client
                .set(format!("k{i}"), format!("v{i}"))
                .await
                .unwrap_or_else(|e| panic!("set k{i}: {e}\n{}", cluster.logs()));
        }

        // Through a Redis client library we did not write, at a follower and at the leader.
        let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap().id;
        for id in [follower, leader] {
            let addr = cluster.node(id).client;
            let got = tokio::task::spawn_blocking(move || {
                redis_set_get(addr, &format!("redis-{id}"), "hello")
            })
            .await
            .unwrap();
            assert_eq!(
                got.unwrap().as_deref(),
                Some("hello"),
                "redis via node {id}"
            );
        }
        let addr = cluster.node(follower).client;
        let pipelined: Vec<i64> = tokio::task::spawn_blocking(move || {
            let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
            let mut con = client.get_connection().unwrap();
            // A read pipelined after a write on the same connection sees it, as in Redis.
            let (seen,): (String,) = redis::pipe()
                .cmd("SET")
                .arg("pk")
                .arg("x")
                .ignore()
                .cmd("GET")
                .arg("pk")
                .query(&mut con)
                .unwrap();
            assert_eq!(seen, "x");
            let mut pipe = redis::pipe();
            for _ in 0..20 {
                pipe.cmd("INCR").arg("pipelined");
            }
            pipe.query(&mut con).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(pipelined, (1..=20).collect::<Vec<i64>>());

        // A request resent with the same (client_id, seq) is applied once.
        let retrying = cluster.client();
        let incr = KvCommand::IncrBy {
            key: "once".into(),
            by: 1,
        }
        .encode();
        for _ in 0..3 {
            retrying.propose_with_seq(incr.clone(), 1).await.unwrap();
        }
        retrying.set_next_seq(2).await;
        assert_eq!(
            client.get("once").await.unwrap().as_deref(),
            Some(&b"1"[..])
        );

        // SIGKILL the leader: a new one serves within a few seconds and keeps every
        // acknowledged write.
        let killed_at = Instant::now();
        cluster.kill(leader);
        client
            .set("after-failover", "yes")
            .await
            .unwrap_or_else(|e| panic!("write after failover: {e}\n{}", cluster.logs()));
        let failover = killed_at.elapsed();
        assert!(
            failover < Duration::from_secs(8),
            "failover took {failover:?}"
        );
        let new_leader = cluster.wait_leader(Duration::from_secs(5)).await;
        assert_ne!(new_leader, leader);
        for i in 0..30 {
            let v = client.get(format!("k{i}")).await.unwrap();
            assert_eq!(v.as_deref(), Some(format!("v{i}").as_bytes()), "k{i} lost");
        }
        assert_eq!(
            client.get("pipelined").await.unwrap().as_deref(),
            Some(&b"20"[..])
        );
        assert_eq!(
            client.get("once").await.unwrap().as_deref(),
            Some(&b"1"[..])
        );
        // The retry's cached answer survived the leader change too.
        let again = retrying.propose_with_seq(incr.clone(), 1).await.unwrap();
        assert_eq!(
            raft_client::KvResponse::decode(&again),
            Some(raft_client::KvResponse::Int(1))
        );
        assert_eq!(
            client.get("once").await.unwrap().as_deref(),
            Some(&b"1"[..])
        );

        // HTTP on a survivor.
        let http = cluster
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .unwrap()
            .http;
        let status = http_get(http, "/status").await;
        assert!(status.contains("\"commit_index\""), "{status}");
        let metrics = http_get(http, "/metrics").await;
        assert!(
            metrics.contains("raft_proposal_latency_seconds_bucket"),
            "{metrics}"
        );
        let kv = http_get(http, "/kv/k7").await;
        assert!(kv.ends_with("v7"), "{kv}");
        // PUT and DELETE through every survivor (followers forward), read back from another.
        let survivors: Vec<SocketAddr> = cluster
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.http)
            .collect();
        let put = http_request(survivors[0], "PUT", "/kv/h%20key", "hv").await;
        assert!(put.starts_with("HTTP/1.1 200"), "{put}");
        let got = http_request(survivors[1], "GET", "/kv/h%20key", "").await;
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("hv"),
            "{got}"
        );
        let stale = http_request(survivors[1], "GET", "/kv/h%20key?stale=1", "").await;
        assert!(stale.ends_with("hv"), "{stale}");
        let del = http_request(survivors[1], "DELETE", "/kv/h%20key", "").await;
        assert!(del.starts_with("HTTP/1.1 200"), "{del}");
        let gone = http_request(survivors[0], "GET", "/kv/h%20key", "").await;
        assert!(gone.starts_with("HTTP/1.1 404"), "{gone}");
    });
}

#[test]
fn minority_refuses_reads_and_writes() {
    let mut cluster = Cluster::start(3);
    runtime().block_on(async {
        let leader = cluster.wait_leader(Duration::from_secs(15)).await;
        cluster.client().set("before", "1").await.unwrap();
        // Keep the old leader alone: it must step down and refuse, like any minority node.
        for n in [1, 2, 3].into_iter().filter(|&n| n != leader) {
            cluster.kill(n);
        }
        let lone = cluster.node_client(leader, 6_000);
        // Whatever it believed a moment ago (leadership may have moved before the kill),
        // the lone node refuses at once, never hangs.
        let started = Instant::now();
        let first = lone.set("during", "x").await;
        assert!(first.is_err(), "write on a minority: {first:?}");
        assert!(started.elapsed() < Duration::from_secs(8));
        // Once it knows there is no leader, every request is refused as unavailable.
        let deadline = Instant::now() + Duration::from_secs(10);
        while lone
            .status()
            .await
            .map(|s| s.leader.is_some())
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "lone node still names a leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let started = Instant::now();
        let write = lone.set("during", "x").await;
        assert!(
            matches!(write, Err(ClientError::Node(NodeError::Unavailable(_)))),
            "write on a minority: {write:?}"
        );
        let read = lone.get("before").await;
        assert!(
            matches!(read, Err(ClientError::Node(NodeError::Unavailable(_)))),
            "linearizable read on a minority: {read:?}"
        );
        // Refused within the timeout, never hung.
        assert!(started.elapsed() < Duration::from_millis(2 * REQUEST_TIMEOUT_MS + 3_000));
        // RESP clients see an error too.
        let addr = cluster.node(leader).client;
        let redis_result = tokio::task::spawn_blocking(move || redis_set_get(addr, "r", "v"))
            .await
            .unwrap();
        let err = redis_result.expect_err("redis write on a minority");
        assert!(
            err.to_string().to_ascii_uppercase().contains("CLUSTERDOWN"),
            "{err}"
        );
        // A stale read, asked for explicitly, is still served from the local replica.
        let stale = lone.get_stale("before").await.unwrap();
        assert_eq!(stale.as_deref(), Some(&b"1"[..]));
    });
}

#[test]
fn killed_leader_restarts_from_its_disk_and_catches_up() {
    // Small snapshots, so the restart restores one and replays the log after it.
    let mut cluster = Cluster::start_with(3, &["--snapshot-entries-max", "15"]);
    runtime().block_on(async {
        let leader = cluster.wait_leader(Duration::from_secs(15)).await;
        let client = cluster.client();
        for i in 0..20 {
            client.set(format!("a{i}"), format!("{i}")).await.unwrap();
        }
        // Snapshots are written off the apply path: let the first one land before the kill.
        let before = cluster.node_client(leader, 1_000);
        let deadline = Instant::now() + Duration::from_secs(10);
        while before.status().await.map(|s| s.snapshot_index).unwrap_or(0) == 0 {
            assert!(Instant::now() < deadline, "no snapshot\n{}", cluster.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster.kill(leader);
        for i in 20..40 {
            client.set(format!("a{i}"), format!("{i}")).await.unwrap();
        }
        let target = client.status().await.unwrap().commit_index;
        cluster.spawn(leader);
        let probe = cluster
            .wait_status(leader, "restarted node to catch up", |s| {
                s.applied_index >= target
            })
            .await;
        for i in [0, 19, 39] {
            let v = probe.get_stale(format!("a{i}")).await.unwrap();
            assert_eq!(v.as_deref(), Some(i.to_string().as_bytes()), "a{i}");
        }
        let log = std::fs::read_to_string(cluster.log_path(leader)).unwrap();
        assert!(
            log.contains("state machine restored from a snapshot"),
            "restarted from its own snapshot: {log}"
        );
    });
}

#[test]
fn wiped_follower_rejoins_through_a_snapshot() {
    // A margin smaller than the gap: the leader no longer holds what the follower lacks.
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--snapshot-entries-max",
            "20",
            "--snapshot-log-margin-entries",
            "5",
        ],
    );
    runtime().block_on(async {
        let leader = cluster.wait_leader(Duration::from_secs(15)).await;
        let follower = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
        let client = cluster.client();
        for i in 0..60 {
            client.set(format!("s{i}"), format!("{i}")).await.unwrap();
        }
        cluster.kill(follower);
        std::fs::remove_dir_all(cluster.data_dir(follower)).unwrap();
        // More writes while it is away, so the leader compacts past everything it had.
        for i in 60..90 {
            client.set(format!("s{i}"), format!("{i}")).await.unwrap();
        }
        let target = client.status().await.unwrap().commit_index;
        cluster.spawn(follower);
        let probe = cluster
            .wait_status(follower, "wiped follower to catch up", |s| {
                s.applied_index >= target && s.snapshot_index > 0
            })
            .await;
        let log = std::fs::read_to_string(cluster.log_path(follower)).unwrap();
        assert!(
            log.contains("installed a snapshot from the leader"),
            "{log}"
        );
        for i in [0, 45, 89] {
            let v = probe.get_stale(format!("s{i}")).await.unwrap();
            assert_eq!(v.as_deref(), Some(i.to_string().as_bytes()), "s{i}");
        }
    });
}

#[test]
fn compaction_keeps_a_margin_so_a_slow_follower_gets_entries() {
    const MARGIN: u64 = 50;
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--snapshot-entries-max",
            "20",
            "--snapshot-log-margin-entries",
            "50",
        ],
    );
    runtime().block_on(async {
        let leader = cluster.wait_leader(Duration::from_secs(15)).await;
        let follower = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
        let client = cluster.client();
        for i in 0..80 {
            client.set(format!("m{i}"), format!("{i}")).await.unwrap();
        }
        cluster.kill(follower);
        // Fewer entries than the margin while it is away: the leader snapshots and compacts,
        // but keeps everything the follower lacks.
        for i in 80..110 {
            client.set(format!("m{i}"), format!("{i}")).await.unwrap();
        }
        let target = client.status().await.unwrap().commit_index;
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            let s = cluster.node_client(leader, 1_000).status().await.unwrap();
            if s.snapshot_index > MARGIN && s.first_index == s.snapshot_index - MARGIN + 1 {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "leader never compacted to its snapshot less the margin: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(status.first_index > 1, "the prefix was dropped: {status:?}");

        cluster.spawn(follower);
        let probe = cluster
            .wait_status(follower, "follower to catch up", |s| {
                s.applied_index >= target
            })
            .await;
        let log = std::fs::read_to_string(cluster.log_path(follower)).unwrap();
        assert!(
            !log.contains("installed a snapshot from the leader"),
            "the follower got a snapshot although the leader kept the entries it lacked\n{log}"
        );
        for i in [0, 79, 109] {
            let v = probe.get_stale(format!("m{i}")).await.unwrap();
            assert_eq!(v.as_deref(), Some(i.to_string().as_bytes()), "m{i}");
        }
    });
}

/// A tmpfs mounted over a directory for the life of the guard (root only).
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    /// `None` when this process may not mount (not root, no tmpfs): the caller skips.
    fn new(path: &std::path::Path, size_mib: u64) -> Option<TmpfsMount> {
        std::fs::create_dir_all(path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| TmpfsMount(path.to_path_buf()))
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        // Lazy: a node still running (a failed assertion) must not keep the mount.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Regression (found by `cargo xtask chaos`, seed 14: a full disk during a snapshot
/// install): after a failed log write the runtime went on ticking the core, which then
/// panicked "commit beyond the log". A node whose disk cannot take its writes must stop
/// cleanly, every time it is started, while the others keep serving.
#[test]
fn a_full_disk_stops_the_node_cleanly_and_the_others_serve() {
    let mut cluster = Cluster::prepare(3, &[], &[], &[]);
    // Node 3's disk is smaller than one log segment (64 MiB, preallocated) from the start,
    // so it never stores (or acknowledges) an entry. (Mounting it over a node that already
    // acknowledged entries would be a wiped disk instead, which Raft does not allow for a
    // voter.)
    let victim = 3;
    let Some(_mount) = TmpfsMount::new(&cluster.data_dir(victim), 16) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    cluster.spawn(1);
    cluster.spawn(2);
    runtime().block_on(async {
        cluster.wait_leader(Duration::from_secs(15)).await;
        let client = cluster.client();
        for i in 0..10 {
            client.set(format!("d{i}"), format!("{i}")).await.unwrap();
        }
        for round in 0..2 {
            cluster.spawn(victim);
            let deadline = Instant::now() + Duration::from_secs(15);
            let status = loop {
                let n = cluster.nodes.iter_mut().find(|n| n.id == victim).unwrap();
                if let Some(status) = n.child.as_mut().unwrap().try_wait().unwrap() {
                    n.child = None;
                    break status;
                }
                // The others serve meanwhile, and their writes reach the victim.
                client.set(format!("r{round}"), "x").await.unwrap();
                assert!(
                    Instant::now() < deadline,
                    "node {victim} went on without a disk\n{}",
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert!(!status.success(), "a failed node exits non-zero");
            let log = std::fs::read_to_string(cluster.log_path(victim)).unwrap();
            assert!(!log.contains("panicked"), "round {round}: {log}");
            assert!(
                log.contains("No space left on device"),
                "round {round}: {log}"
            );
        }
        assert_eq!(client.get("d9").await.unwrap().as_deref(), Some(&b"9"[..]));
    });
}
