//! Real `raft-node` processes on loopback: writes through raft-client and through the
//! `redis` crate, SIGKILL of the leader, exactly-once retries, a minority that refuses
//! service, and config errors.
//!
//! The process harness is `common/mod.rs`.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

#[test]
fn config_errors_name_the_field_and_exit_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let p = free_addr();
    let out = Command::new(BIN)
        .args(["run", "--id", "1", "--data-dir"])
        .arg(dir.path())
        .args(["--peer", &format!("1={p},{p}"), "--peer", &format!("1={p}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("`peers`") && err.contains("duplicate ID 1"),
        "{err}"
    );

    // A data directory that cannot be one (a regular file) names `data_dir`.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--id", "1", "--data-dir"])
        .arg(&file)
        .args(["--peer", &format!("1={},{}", free_addr(), free_addr())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("`data_dir`"), "{err}");

    // A port in use names the listener's field.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap();
    let out = Command::new(BIN)
        .args(["run", "--id", "1", "--data-dir"])
        .arg(dir.path())
        .args(["--peer", &format!("1={busy_addr},{}", free_addr())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`peer_addr`"), "{err}");

    // A data directory in use by a running node is refused; SIGTERM stops that node cleanly.
    let (peer, client) = {
        let a = free_addrs(2);
        (a[0], a[1])
    };
    let node_args = |dir: &std::path::Path| -> Vec<String> {
        vec![
            "run".into(),
            "--id".into(),
            "1".into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--peer".into(),
            format!("1={peer},{client}"),
        ]
    };
    struct Kill(Option<Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    // Killed on drop if an assertion below fails first.
    let mut guard = Kill(Some(
        Command::new(BIN)
            .args(node_args(dir.path()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(client).is_err() {
        assert!(Instant::now() < deadline, "node did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = Command::new(BIN)
        .args(["run", "--id", "1", "--data-dir"])
        .arg(dir.path())
        .args(["--peer", &{
            let a = free_addrs(2);
            format!("1={},{}", a[0], a[1])
        }])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("`data_dir`") && err.contains("locked"),
        "{err}"
    );
    let running = guard.0.as_mut().unwrap();
    // SAFETY: signalling a child we spawned and have not reaped.
    unsafe { libc::kill(running.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = running.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop the node");
        std::thread::sleep(Duration::from_millis(20));
    };
    guard.0 = None;
    assert!(status.success(), "exit after SIGTERM: {status:?}");

    let help = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--peer",
        "--data-dir",
        "--http-addr",
        "--request-timeout-ms",
        "--config",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

/// `/status` of every live node as JSON, skipping nodes that do not answer.
async fn statuses_json(cluster: &Cluster) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for n in cluster.nodes.iter().filter(|n| n.child.is_some()) {
        let fetch = tokio::time::timeout(Duration::from_secs(2), http_get(n.http, "/status"));
        if let Ok(text) = fetch.await {
            if let Some((_, body)) = text.split_once("\r\n\r\n") {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// The value of the metric line that starts with `prefix` (name and labels).
fn metric(metrics: &str, prefix: &str) -> Option<u64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

const DIGEST_FLAGS: &[&str] = &["--digest-interval-entries", "10"];

#[test]
fn anti_entropy_alarms_on_a_corrupted_replica() {
    // Node 3 runs the fault-injection hook: its state gets a key no client wrote after
    // index 25, so every digest it takes from index 30 on differs from the others'.
    let cluster = Cluster::start_full(
        3,
        DIGEST_FLAGS,
        &[],
        &[(3, &["--debug-corrupt-apply-at", "25"])],
    );
    runtime().block_on(async {
        cluster.wait_leader(Duration::from_secs(15)).await;
        let client = cluster.client();
        for i in 0..60 {
            client.set(format!("k{i}"), format!("{i}")).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let (leader, status) = loop {
            let found = statuses_json(&cluster).await.into_iter().find(|s| {
                s["role"] == "Leader"
                    && s["anti_entropy"]["divergent"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|d| d["node"] == 3))
            });
            if let Some(s) = found {
                break (s["id"].as_u64().unwrap(), s);
            }
            assert!(
                Instant::now() < deadline,
                "no divergence alarm for node 3: {:?}\n{}",
                statuses_json(&cluster).await,
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let divergent = status["anti_entropy"]["divergent"].as_array().unwrap();
        assert_eq!(divergent.len(), 1, "only node 3 diverged: {status}");
        assert!(divergent[0]["index"].as_u64().unwrap() >= 30, "{status}");
        assert_ne!(divergent[0]["digest"], divergent[0]["majority_digest"]);
        assert!(status["anti_entropy"]["divergence_total"].as_u64().unwrap() >= 1);

        let metrics = http_get(cluster.node(leader).http, "/metrics").await;
        let total = metric(
            &metrics,
            &format!("raft_replica_divergence_total{{node=\"{leader}\"}}"),
        );
        assert!(total.is_some_and(|t| t >= 1), "{metrics}");
        let gauge = |peer: u64| {
            metric(
                &metrics,
                &format!("raft_replica_diverged{{node=\"{leader}\",peer=\"{peer}\"}}"),
            )
        };
        assert_eq!(gauge(3), Some(1), "{metrics}");
        let healthy = [1, 2].into_iter().find(|&n| n != leader).unwrap();
        assert_eq!(gauge(healthy), Some(0), "{metrics}");

        // RESP INFO names the replica too.
        let addr = cluster.node(leader).client;
        let info: String = tokio::task::spawn_blocking(move || {
            let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
            let mut con = client
                .get_connection_with_timeout(Duration::from_secs(5))
                .unwrap();
            redis::cmd("INFO").query(&mut con).unwrap()
        })
        .await
        .unwrap();
        assert!(info.contains("anti_entropy_divergent:3@"), "{info}");
        let log = std::fs::read_to_string(cluster.log_path(leader)).unwrap();
        assert!(log.contains("replica divergence"), "{log}");
    });
}

#[test]
fn anti_entropy_is_quiet_on_a_healthy_cluster() {
    let cluster = Cluster::start_with(3, DIGEST_FLAGS);
    runtime().block_on(async {
        cluster.wait_leader(Duration::from_secs(15)).await;
        let client = cluster.client();
        // Ten writes at a time, each batch's digest taken on every node before the next: a
        // node skips a digest index while its previous digest is still being hashed, and
        // on a loaded machine 60 writes at once left every node with its first digest only,
        // so the leader never had the later indexes to compare.
        for batch in 0..6 {
            for i in batch * 10..(batch + 1) * 10 {
                client.set(format!("k{i}"), format!("{i}")).await.unwrap();
            }
            let multiple = client.status().await.unwrap().commit_index / 10 * 10;
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let all = statuses_json(&cluster).await;
                let digested = |s: &serde_json::Value| {
                    s["digests"].as_array().is_some_and(|d| {
                        d.iter()
                            .any(|d| d["index"].as_u64().is_some_and(|i| i >= multiple))
                    })
                };
                if all.len() == 3 && all.iter().all(digested) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no digest at {multiple} on every node: {all:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let target = client.status().await.unwrap().commit_index / 10 * 10;
        let deadline = Instant::now() + Duration::from_secs(20);
        let (leader, status) = loop {
            let found = statuses_json(&cluster).await.into_iter().find(|s| {
                s["role"] == "Leader"
                    && s["anti_entropy"]["compared_index"]
                        .as_u64()
                        .is_some_and(|i| i >= target)
            });
            if let Some(s) = found {
                break (s["id"].as_u64().unwrap(), s);
            }
            assert!(
                Instant::now() < deadline,
                "digests up to {target} never compared: {:?}\n{}",
                statuses_json(&cluster).await,
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let ae = &status["anti_entropy"];
        assert!(ae["comparisons"].as_u64().unwrap() >= 1, "{status}");
        assert_eq!(ae["divergence_total"], 0, "{status}");
        assert_eq!(
            ae["divergent"].as_array().map(Vec::len),
            Some(0),
            "{status}"
        );
        let metrics = http_get(cluster.node(leader).http, "/metrics").await;
        assert_eq!(
            metric(
                &metrics,
                &format!("raft_replica_divergence_total{{node=\"{leader}\"}}")
            ),
            Some(0),
            "{metrics}"
        );
        for peer in 1..=3 {
            let line = format!("raft_replica_diverged{{node=\"{leader}\",peer=\"{peer}\"}}");
            assert_eq!(metric(&metrics, &line), Some(0), "{metrics}");
        }
        // Every node took the same digest at the same index. A node skips an index while
        // its previous digest is still being hashed (`raft_state_digests_skipped`: a loaded
        // machine), so the indexes compared are those every node took; its first is never
        // skipped, nothing being in flight then.
        let all = statuses_json(&cluster).await;
        let digests_of = |s: &serde_json::Value| -> Vec<(u64, String)> {
            s["digests"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| (d["index"].as_u64().unwrap(), d["digest"].to_string()))
                .collect()
        };
        let by_node: Vec<Vec<(u64, String)>> = all.iter().map(digests_of).collect();
        assert_eq!(by_node.len(), 3, "{all:?}");
        let common: Vec<u64> = by_node[0]
            .iter()
            .map(|&(index, _)| index)
            .filter(|index| by_node.iter().all(|d| d.iter().any(|(i, _)| i == index)))
            .collect();
        assert!(
            !common.is_empty(),
            "no index digested by every node: {all:?}"
        );
        for index in common {
            let at: Vec<&String> = by_node
                .iter()
                .filter_map(|d| d.iter().find(|(i, _)| *i == index).map(|(_, d)| d))
                .collect();
            assert!(at.windows(2).all(|w| w[0] == w[1]), "at {index}: {at:?}");
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
