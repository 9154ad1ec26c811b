//! Anti-entropy on real `raft-node` processes: a corrupted replica raises the divergence
//! alarm, a healthy cluster stays quiet.
//!
//! The process harness is `common/mod.rs`.

mod common;

use std::time::{Duration, Instant};

use common::*;

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
