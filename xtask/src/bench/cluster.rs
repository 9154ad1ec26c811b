//! Hook for the end-to-end measurements of issue 7 that need the `raft-node` binary
//! (issue 6): a real 3-node cluster on loopback with real fsync, driven by a load-generator
//! process, and the same workloads against a 3-member etcd when `etcd` is on PATH.
//!
//! Until they are written, [`run`] returns every row they will fill, each with no value and
//! a note saying why it was skipped: the report shows the gap, never a made-up number.
//!
//! What the implementation is expected to do (and what it may assume):
//! - find the node binary at `target/release/raft-node` (built by `cargo build --release -p
//!   raft-node` before the run; this hook only checks that it exists);
//! - start 3 nodes on 127.0.0.1 ephemeral ports, data dirs under the run's scratch dir
//!   ([`super::Ctx::scratch`], removed afterwards), and kill them by their PIDs on any exit;
//! - load generator: SET of 16-byte keys (100,000-key space) and 100-byte values at
//!   [`CLIENTS`] closed-loop clients for a fixed duration, then linearizable GETs; plus an
//!   open-loop mode at a fixed rate; latency from send to acknowledgement in hdrhistogram;
//! - rows named below; latency ratios against [`floor_commit_us`](super::Baselines) for 1
//!   client, throughput ratios against etcd measured in the same run;
//! - node CPU seconds per 1,000 operations (from `/proc/<pid>/stat` utime+stime) and peak
//!   RSS (`VmHWM` in `/proc/<pid>/status`) of each node;
//! - restart time of a node holding 1M entries, with and without a snapshot.

use std::path::Path;

use super::report::Row;
use super::Baselines;

/// Concurrent clients of the end-to-end workloads.
pub const CLIENTS: [usize; 4] = [1, 16, 64, 256];

/// Every end-to-end row, skipped with the reason; see the module docs.
pub fn run(workspace_target: &Path, baselines: Option<&Baselines>) -> Vec<Row> {
    let node_bin = workspace_target.join("release").join("raft-node");
    let node_why = if node_bin.is_file() {
        "skipped: cluster load generator not written yet".to_string()
    } else {
        "skipped: raft-node not built".to_string()
    };
    let etcd_why = match find_on_path("etcd") {
        Some(_) => "skipped: etcd found; comparison comes with the cluster run".to_string(),
        None => "skipped: etcd not on PATH (Debian: apt-get install etcd-server)".to_string(),
    };
    let mut rows = Vec::new();
    for op in ["set", "get"] {
        for c in CLIENTS {
            let p = format!("cluster_{op}_{c}_clients");
            rows.push(Row::skipped(format!("{p}_ops_per_s"), "ops/s", &node_why));
            for q in ["p50", "p99", "p999"] {
                let mut why = node_why.clone();
                if let (true, Some(b)) = (op == "set" && c == 1 && q == "p50", baselines) {
                    // The target this row will be held to, from this run's own floor.
                    why.push_str(&format!(
                        "; target <= 2 x floor_commit_us = {:.0} us",
                        2.0 * b.floor_commit_us()
                    ));
                }
                rows.push(Row::skipped(format!("{p}_latency_us_{q}"), "us", why));
            }
        }
        rows.push(Row::skipped(
            format!("cluster_{op}_open_loop_latency_us_p99"),
            "us",
            &node_why,
        ));
    }
    rows.push(Row::skipped(
        "cluster_node_cpu_s_per_1000_ops",
        "s",
        &node_why,
    ));
    rows.push(Row::skipped("cluster_node_rss_peak_MiB", "MiB", &node_why));
    rows.push(Row::skipped(
        "cluster_restart_1M_entries_ms",
        "ms",
        &node_why,
    ));
    rows.push(Row::skipped(
        "cluster_restart_1M_entries_with_snapshot_ms",
        "ms",
        &node_why,
    ));
    for (op, c) in [("set", 1), ("set", 64), ("get", 16)] {
        rows.push(Row::skipped(
            format!("etcd_{op}_{c}_clients_ops_per_s"),
            "ops/s",
            &etcd_why,
        ));
    }
    rows
}

fn find_on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
