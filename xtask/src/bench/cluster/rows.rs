//! The section's rows, built at the end from everything measured, so each of ours can carry
//! the etcd (or Redis) figure of the same workload as its baseline.

use super::{
    op_name, scrape, Measured, Results, RunNote, Settings, CLIENTS, ETCD_QUICK, REDIS_WORKLOADS,
};
use crate::bench::report::Row;
use crate::bench::util::us;
use crate::bench::Baselines;

pub(super) fn counter_note(counter: &str) -> &'static str {
    match counter {
        // raft_syncs_total counts completions of the sync thread; raft-log skips the
        // fdatasync of a job that finds nothing dirty, but the hand-off costs two wake-ups.
        "syncs" => "sync jobs (raft_syncs_total), 3 nodes summed; a job with nothing dirty does no fdatasync",
        _ => "3 nodes summed",
    }
}

/// "median of 3 runs: 41,000 / 44,100 / 47,300 ops/s (spread 15%); load 1.2->1.9, ...".
fn spread_note(runs: &[RunNote]) -> Option<String> {
    if runs.len() < 2 {
        return None;
    }
    let mut ops: Vec<f64> = runs.iter().map(|r| r.ops_per_s).collect();
    ops.sort_by(f64::total_cmp);
    let median = ops[ops.len() / 2];
    let spread = (ops[ops.len() - 1] - ops[0]) / median * 100.0;
    let loads = runs
        .iter()
        .map(|r| format!("{:.1}->{:.1}", r.load_before, r.load_after))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "median of {} runs: {} ops/s (spread {spread:.0}%); load average around each run {loads}",
        runs.len(),
        ops.iter()
            .map(|o| format!("{o:.0}"))
            .collect::<Vec<_>>()
            .join(" / "),
    ))
}

/// Rows of the one durable Redis, and ours over RESP against it.
fn push_redis_rows(r: &Results, out: &mut Vec<Row>) {
    let why = || {
        r.redis_why
            .clone()
            .unwrap_or_else(|| "not measured (an earlier step failed)".into())
    };
    for (op, c) in REDIS_WORKLOADS {
        let (op, e) = (op_name(op), format!("redis_{}_{c}_clients", op_name(op)));
        let Some(t) = r.redis.get(&(op, c)) else {
            out.push(Row::skipped(format!("{e}_ops_per_s"), "ops/s", why()));
            continue;
        };
        let mut row = Row::new(format!("{e}_ops_per_s"), "ops/s", t.load.ops_per_s());
        if let Some(v) = &r.redis_version {
            row = row.note(format!("{v}; appendonly yes, appendfsync always; RESP"));
        }
        out.push(row);
        for (q, qn) in [(0.5, "p50"), (0.99, "p99")] {
            out.push(Row::new(
                format!("{e}_latency_us_{qn}"),
                "us",
                us(&t.load.hist, q),
            ));
        }
        if let Some(cpu) = t.cpu_s_per_1000_ops() {
            out.push(Row::new(format!("{e}_cpu_s_per_1000_ops"), "s", cpu).note("one process"));
        }
        if let Some(m) = r.resp.get(&(op, c)) {
            out.push(
                Row::new(
                    format!("cluster_{op}_{c}_clients_resp_vs_redis_ops_per_s"),
                    "ops/s",
                    m.load.ops_per_s(),
                )
                .vs(format!("{e}_ops_per_s"), t.load.ops_per_s())
                .note("3 durable replicas over RESP against one durable Redis"),
            );
        }
    }
    let name = "target_set_64_clients_resp_vs_redis";
    match (r.resp.get(&("set", 64)), r.redis.get(&("set", 64))) {
        (Some(m), Some(t)) => out.push(
            Row::new(name, "ops/s", m.load.ops_per_s())
                .vs("redis_set_64_clients_ops_per_s", t.load.ops_per_s())
                .note("the headline: a 3-replica durable cluster against one durable Redis"),
        ),
        _ => out.push(Row::skipped(name, "ops/s", why())),
    }
}

pub(super) fn push_rows(
    s: &Settings,
    baselines: Option<&Baselines>,
    r: &Results,
    rows: &mut Vec<Row>,
) {
    let etcd_note = |what: &str| {
        r.etcd_why
            .clone()
            .unwrap_or_else(|| format!("etcd {what} not run in --quick"))
    };
    let mut out = Vec::new();
    for op in ["set", "get"] {
        for c in CLIENTS {
            let p = format!("cluster_{op}_{c}_clients");
            let e = format!("etcd_{op}_{c}_clients");
            let Some(m) = r.ours.get(&(op, c)) else {
                let why = match &s.rows {
                    Some(_) => "not selected by XTASK_BENCH_CLUSTER_ROWS",
                    None => "not measured (an earlier step failed)",
                };
                out.push(Row::skipped(format!("{p}_ops_per_s"), "ops/s", why));
                continue;
            };
            let theirs = r.etcd.get(&(op, c));
            let mut row = Row::new(format!("{p}_ops_per_s"), "ops/s", m.load.ops_per_s());
            if let Some(t) = theirs {
                row = row.vs(format!("{e}_ops_per_s"), t.load.ops_per_s());
            }
            let mut notes = Vec::new();
            if m.load.errors > 0 {
                notes.push(format!("{} requests failed", m.load.errors));
            }
            if let Some(&n) = m.counters.get("elections").filter(|&&n| n > 0.0) {
                notes.push(format!("{n} elections during the run"));
            }
            if let Some(n) = r.ours_runs.get(&(op, c)).and_then(|v| spread_note(v)) {
                notes.push(n);
            }
            if !notes.is_empty() {
                row = row.note(notes.join("; "));
            }
            out.push(row);
            for (q, qn) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p999")] {
                let mut row = Row::new(format!("{p}_latency_us_{qn}"), "us", us(&m.load.hist, q));
                if let (true, Some(b)) = (op == "set" && c == 1 && qn == "p50", baselines) {
                    row = row
                        .vs("floor_commit_us", b.floor_commit_us())
                        .note("target: ratio <= 1.5");
                } else if let Some(t) = theirs {
                    row = row.vs(format!("{e}_latency_us_{qn}"), us(&t.load.hist, q));
                }
                out.push(row);
            }
            let name = format!("{p}_node_cpu_s_per_1000_ops");
            match m.cpu_s_per_1000_ops() {
                Some(v) => {
                    let mut row = Row::new(name, "s", v).note("3 nodes summed");
                    if let Some(t) = theirs.and_then(Measured::cpu_s_per_1000_ops) {
                        row = row.vs(format!("{e}_cpu_s_per_1000_ops"), t);
                    }
                    out.push(row);
                }
                None => out.push(Row::skipped(name, "s", "/proc/<pid>/stat unreadable")),
            }
            for (counter, _, etcd_name) in scrape::COUNTERS {
                if !["syncs", "peer_messages"].contains(&counter) {
                    continue;
                }
                let Some(v) = m.per_1000_ops(counter) else {
                    continue;
                };
                let mut row = Row::new(format!("{p}_{counter}_per_1000_ops"), "count", v)
                    .note(counter_note(counter));
                if let (Some(t), Some(_)) =
                    (theirs.and_then(|t| t.per_1000_ops(counter)), etcd_name)
                {
                    row = row.vs(format!("{e}_{counter}_per_1000_ops"), t);
                }
                out.push(row);
            }
        }
    }
    // Where a write's time goes, from the nodes' own histograms (means over the run): the
    // sync thread's sync, and the leader's proposal-to-apply; the client sees the rest as
    // hops between client, runtime and peers.
    for c in CLIENTS {
        let Some(m) = r.ours.get(&("set", c)) else {
            continue;
        };
        let p = format!("cluster_set_{c}_clients");
        let mean_us = |sum: &str, count: &str, m: &Measured| {
            let (s, n) = (m.counters.get(sum)?, m.counters.get(count)?);
            (*n > 0.0).then(|| s / n * 1e6)
        };
        if let Some(v) = mean_us("sync_s", "syncs", m) {
            let mut row = Row::new(format!("{p}_sync_us_mean"), "us", v)
                .note("raft_fsync_latency_seconds, mean of the 3 nodes' sync jobs");
            if let Some(t) = r
                .etcd
                .get(&("set", c))
                .and_then(|t| mean_us("sync_s", "syncs", t))
            {
                row = row.vs(format!("etcd_set_{c}_clients_wal_fsync_us_mean"), t);
            }
            out.push(row);
        }
        if let Some(v) = mean_us("proposal_s", "proposals", m) {
            out.push(
                Row::new(format!("{p}_leader_propose_to_apply_us_mean"), "us", v)
                    .vs(format!("{p}_latency_us_mean"), m.load.hist.mean() / 1000.0)
                    .note("raft_proposal_latency_seconds on the leader, against the client's mean latency"),
            );
        }
    }
    // Target rows: the ratios, stated where a reader looks for them.
    for (op, c, what, goal) in [
        ("set", 64, "write", 10),
        ("get", 16, "linearizable read", 15),
    ] {
        let name = format!("target_{op}_{c}_clients_vs_etcd");
        match (r.ours.get(&(op, c)), r.etcd.get(&(op, c))) {
            (Some(m), Some(t)) => out.push(
                Row::new(name, "ops/s", m.load.ops_per_s())
                    .vs(
                        format!("etcd_{op}_{c}_clients_ops_per_s"),
                        t.load.ops_per_s(),
                    )
                    .note(format!("{what} throughput; target: ratio >= {goal}")),
            ),
            _ => out.push(Row::skipped(name, "ops/s", etcd_note("comparison"))),
        }
    }
    for op in ["set", "get"] {
        for c in CLIENTS {
            let e = format!("etcd_{op}_{c}_clients");
            match r.etcd.get(&(op, c)) {
                Some(t) => {
                    let mut row = Row::new(format!("{e}_ops_per_s"), "ops/s", t.load.ops_per_s());
                    let mut notes = Vec::new();
                    if let Some(v) = &r.etcd_version {
                        notes.push(format!("{v}, v3 JSON gateway, keep-alive HTTP/1.1"));
                    }
                    if let Some(n) = r.etcd_runs.get(&(op, c)).and_then(|v| spread_note(v)) {
                        notes.push(n);
                    }
                    if !notes.is_empty() {
                        row = row.note(notes.join("; "));
                    }
                    out.push(row);
                    for (q, qn) in [(0.5, "p50"), (0.99, "p99")] {
                        out.push(Row::new(
                            format!("{e}_latency_us_{qn}"),
                            "us",
                            us(&t.load.hist, q),
                        ));
                    }
                    if let Some(cpu) = t.cpu_s_per_1000_ops() {
                        out.push(
                            Row::new(format!("{e}_cpu_s_per_1000_ops"), "s", cpu)
                                .note("3 members summed"),
                        );
                    }
                }
                None if s.etcd_all
                    || ETCD_QUICK.iter().any(|&(o, n)| op_name(o) == op && n == c)
                    || r.etcd_why.is_some() =>
                {
                    out.push(Row::skipped(
                        format!("{e}_ops_per_s"),
                        "ops/s",
                        etcd_note("workload"),
                    ));
                }
                None => {}
            }
        }
    }
    push_redis_rows(r, &mut out);
    rows.extend(out);
}
