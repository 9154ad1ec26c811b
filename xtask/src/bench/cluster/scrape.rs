//! Counters from the servers' Prometheus endpoints, summed over the members, read before and
//! after each workload: how many log syncs and peer messages an operation cost, and whether
//! an election happened in the middle of a measurement.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REPLY_BYTES_MAX: u64 = 4 << 20;
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a row calls a counter, and its name in each system's `/metrics`.
/// etcd counts peer traffic in bytes only, so it has no peer-message counter.
pub const COUNTERS: [(&str, &str, Option<&str>); 15] = [
    (
        "syncs",
        "raft_syncs_total",
        Some("etcd_disk_wal_fsync_duration_seconds_count"),
    ),
    ("peer_messages", "raft_net_messages_sent_total", None),
    (
        "elections",
        "raft_elections_total",
        Some("etcd_server_leader_changes_seen_total"),
    ),
    (
        "sync_s",
        "raft_fsync_latency_seconds_sum",
        Some("etcd_disk_wal_fsync_duration_seconds_sum"),
    ),
    ("proposal_s", "raft_proposal_latency_seconds_sum", None),
    ("proposals", "raft_proposal_latency_seconds_count", None),
    // Sync jobs on the sync thread within 1, 5 and 25 ms (the count is `syncs`).
    (
        "syncs_1ms",
        "raft_fsync_latency_seconds_bucket{le=\"0.001\"}",
        None,
    ),
    (
        "syncs_5ms",
        "raft_fsync_latency_seconds_bucket{le=\"0.005\"}",
        None,
    ),
    (
        "syncs_25ms",
        "raft_fsync_latency_seconds_bucket{le=\"0.025\"}",
        None,
    ),
    // How long the runtime task sat in log calls: every call, and those within 1 and 5 ms.
    (
        "write_blocks",
        "raft_storage_write_block_seconds_count",
        None,
    ),
    (
        "write_blocks_1ms",
        "raft_storage_write_block_seconds_bucket{le=\"0.001\"}",
        None,
    ),
    (
        "write_blocks_5ms",
        "raft_storage_write_block_seconds_bucket{le=\"0.005\"}",
        None,
    ),
    (
        "compact_blocks",
        "raft_storage_compact_block_seconds_count",
        None,
    ),
    (
        "compact_blocks_1ms",
        "raft_storage_compact_block_seconds_bucket{le=\"0.001\"}",
        None,
    ),
    (
        "compact_blocks_5ms",
        "raft_storage_compact_block_seconds_bucket{le=\"0.005\"}",
        None,
    ),
];

#[derive(Clone, Copy)]
pub enum System {
    RaftNode,
    Etcd,
    /// No `/metrics`: nothing is scraped.
    Redis,
}

/// Every counter of [`COUNTERS`] that all `addrs` report, summed; `None` if any member did
/// not answer.
pub async fn counters(system: System, addrs: &[String]) -> Option<BTreeMap<&'static str, f64>> {
    let mut sum = BTreeMap::new();
    for addr in addrs {
        let text = tokio::time::timeout(SCRAPE_TIMEOUT, get_metrics(addr))
            .await
            .ok()??;
        for (row, ours, etcd) in COUNTERS {
            let name = match system {
                System::RaftNode => Some(ours),
                System::Etcd => etcd,
                System::Redis => None,
            };
            if let Some(v) = name.and_then(|n| value(&text, n)) {
                *sum.entry(row).or_insert(0.0) += v;
            }
        }
    }
    Some(sum)
}

/// The sum over label sets of one metric in Prometheus text.
fn value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let line = without_node_label(line);
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let v: f64 = rest.rsplit(' ').next()?.trim().parse().ok()?;
        *found.get_or_insert(0.0) += v;
    }
    found
}

/// `line` without raft-node's `node` label (the first of every series' labels), so that
/// names with other labels (`x_bucket{le="0.001"}`) match on every node.
fn without_node_label(line: &str) -> std::borrow::Cow<'_, str> {
    let Some((name, rest)) = line.split_once("{node=\"") else {
        return line.into();
    };
    let Some(end) = rest.find('"') else {
        return line.into();
    };
    match rest[end + 1..].strip_prefix(',') {
        Some(more) => format!("{name}{{{more}").into(),
        None => format!("{name}{}", rest[end + 1..].trim_start_matches('}')).into(),
    }
}

async fn get_metrics(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    (&mut s)
        .take(REPLY_BYTES_MAX)
        .read_to_end(&mut buf)
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.starts_with("HTTP/1.1 200").then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_metric_over_its_labels_and_ignores_longer_names() {
        let text = "# HELP x\nraft_syncs_total 12\nraft_syncs_total_other 99\n\
                    etcd_x{to=\"a\"} 2\netcd_x{to=\"b\"} 3.5\n";
        assert_eq!(value(text, "raft_syncs_total"), Some(12.0));
        assert_eq!(value(text, "etcd_x"), Some(5.5));
        assert_eq!(value(text, "missing"), None);
        let hist = "x_bucket{le=\"0.001\"} 4\nx_bucket{le=\"0.005\"} 6\nx_count 7\n";
        assert_eq!(value(hist, "x_bucket{le=\"0.005\"}"), Some(6.0));
        let labelled = "x_bucket{node=\"2\",le=\"0.005\"} 6\nx_count{node=\"2\"} 7\n";
        assert_eq!(value(labelled, "x_bucket{le=\"0.005\"}"), Some(6.0));
        assert_eq!(value(labelled, "x_count"), Some(7.0));
    }
}
