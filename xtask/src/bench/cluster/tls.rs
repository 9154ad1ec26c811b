//! What TLS costs: the same cluster with TLS on every port (mutual TLS between peers, TLS
//! from the load's clients), measured right after the plaintext rows of the same run, on the
//! workloads the security issue names: 64-client SET and 16-client linearizable GET.

use std::path::Path;
use std::process::Command;

use super::load::{Op, Workload};
use super::{
    measure, op_name, print_measured, start_cluster, Measured, Results, Servers, Settings,
    ROWS_PROTO,
};
use crate::bench::report::Row;
use crate::bench::util::us;
use crate::bench::Ctx;

/// The workloads measured over TLS, each against the plaintext row of the same run.
const TLS_WORKLOADS: [(Op, usize); 2] = [(Op::Set, 64), (Op::Get, 16)];
/// The goal: TLS throughput at least this share of plaintext's.
const TLS_RATIO_TARGET: f64 = 0.85;

/// Generates a CA and node certificates with `raft-node certs`, runs a TLS cluster and
/// pushes one throughput and one p50 row per workload, each `vs` the plaintext figure.
pub async fn run(
    ctx: &Ctx,
    s: &Settings,
    binary: &Path,
    results: &Results,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    let workloads: Vec<(Op, usize)> = TLS_WORKLOADS
        .into_iter()
        .filter(|&(op, c)| s.selected(op, c))
        .collect();
    if workloads.is_empty() {
        return Ok(());
    }
    let dir = ctx.scratch.join("tls");
    let certs = dir.join("certs");
    let out = Command::new(binary)
        .args(["certs", "--nodes", "1,2,3", "--hosts", "127.0.0.1", "--out"])
        .arg(&certs)
        .output()
        .map_err(|e| format!("{} certs: {e}", binary.display()))?;
    if !out.status.success() {
        return Err(format!(
            "raft-node certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let client_tls = raft_client::tls::client_config_from_pem_files(&certs.join("ca.pem"), None)
        .map_err(|e| format!("client TLS config: {e}"))?;
    eprintln!("bench: cluster: 3 raft-node processes, TLS on every port");
    let mut cluster = start_cluster(binary, &dir, Some(&certs))?;
    cluster.tls = Some(client_tls.clone());
    let leader = cluster.wait_leader().await?;
    let servers = Servers {
        pids: cluster.procs.pids(),
        system: super::scrape::System::RaftNode,
        metrics_addrs: Vec::new(),
    };
    for (op, clients) in workloads {
        let w = Workload {
            proto: ROWS_PROTO,
            op,
            addr: leader.clone(),
            tls: Some(client_tls.clone()),
            warmup: s.warmup,
            duration: s.duration,
            seed: 5150 + clients as u64,
        };
        let m = measure(&w, clients, &servers).await?;
        print_measured("cluster TLS", op, clients, &m);
        push(op, clients, &m, results, rows);
        cluster.procs.check_alive()?;
    }
    Ok(())
}

fn push(op: Op, clients: usize, tls: &Measured, results: &Results, rows: &mut Vec<Row>) {
    let plain_name = format!("cluster_{}_{clients}_clients", op_name(op));
    let name = format!("cluster_tls_{}_{clients}_clients", op_name(op));
    let Some(plain) = results.ours.get(&(op_name(op), clients)) else {
        rows.push(Row::skipped(
            format!("{name}_ops_per_s"),
            "ops/s",
            "no plaintext row in this run to compare with",
        ));
        return;
    };
    rows.push(
        Row::new(format!("{name}_ops_per_s"), "ops/s", tls.load.ops_per_s())
            .vs(format!("{plain_name}_ops_per_s"), plain.load.ops_per_s())
            .note(format!(
                "TLS on peers and clients vs plaintext, same run; target: ratio >= {TLS_RATIO_TARGET}"
            )),
    );
    rows.push(
        Row::new(
            format!("{name}_latency_us_p50"),
            "us",
            us(&tls.load.hist, 0.5),
        )
        .vs(
            format!("{plain_name}_latency_us_p50"),
            us(&plain.load.hist, 0.5),
        ),
    );
    if let Some(v) = tls.cpu_s_per_1000_ops() {
        let mut row =
            Row::new(format!("{name}_node_cpu_s_per_1000_ops"), "s", v).note("3 nodes summed");
        if let Some(p) = plain.cpu_s_per_1000_ops() {
            row = row.vs(format!("{plain_name}_node_cpu_s_per_1000_ops"), p);
        }
        rows.push(row);
    }
}
