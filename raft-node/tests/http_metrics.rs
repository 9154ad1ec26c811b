//! `/metrics` against the naming rules, and the Grafana dashboard reading only series the
//! node really exports.

use raft_node::limits::ClientLimits;

mod http_common;

use http_common::*;

/// Every series name a scrape declares: counters with `_total`, histograms with their
/// `_bucket`, `_sum` and `_count`, infos with `_info`; and the samples' label sets.
fn scrape_names(text: &str) -> (std::collections::BTreeSet<String>, Vec<String>) {
    let mut names = std::collections::BTreeSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            samples.push(line.to_string());
        }
    }
    (names, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_naming_rules_and_the_dashboard_reads_only_real_series() {
    let n = Node::start(ClientLimits::default()).await;
    n.ready().await;
    let r = request(n.http, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let (names, samples) = scrape_names(&text);
    for sample in &samples {
        assert!(
            sample.contains("node=\"1\""),
            "a series without the node label: {sample}"
        );
    }
    for name in [
        "raft_has_leader",
        "raft_leader_changes_total",
        "raft_proposals_pending",
        "raft_peer_match_lag_entries",
        "raft_peer_rtt_seconds",
        "raft_peer_sent_bytes_total",
        "raft_peer_sent_messages_total",
        "raft_net_sent_bytes_total",
        "raft_proposal_latency_seconds_bucket",
        "raft_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(names.contains(name), "{name} missing from\n{text}");
    }
    assert!(text.contains("raft_has_leader{node=\"1\"} 1"), "{text}");
    assert!(
        text.contains("raft_build_info{node=\"1\",version="),
        "{text}"
    );

    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/grafana/raft-node.json"))
            .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => collect(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "{exprs:?}");
    let mut queried = 0;
    for expr in &exprs {
        let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        for word in words.filter(|w| w.starts_with("raft_") || w.starts_with("process_")) {
            queried += 1;
            assert!(
                names.contains(word),
                "the dashboard queries {word}, which /metrics lacks"
            );
        }
    }
    assert!(queried > 30, "{queried}");
}
