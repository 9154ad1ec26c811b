//! The end-to-end measurements of issue 7: a real 3-node cluster on loopback with real
//! fsync, driven by this process as the load generator, and the same workloads against a
//! 3-member etcd when `etcd` is on PATH.
//!
//! - Nodes: `target/release/raft-node` (built by [`prepare`]), 3 processes on 127.0.0.1
//!   ephemeral ports, data under the run's scratch dir, killed by PID on every exit path
//!   ([`procs::Procs`] kills on drop, also when a panic unwinds; `PR_SET_PDEATHSIG` covers a
//!   bench that is itself killed).
//! - Load ([`load`]): closed-loop clients at [`CLIENTS`], each one connection with one
//!   request outstanding, doing SET of 16-byte keys (100,000-key space) and 100-byte values,
//!   then linearizable GETs, each for a fixed time after a warm-up; latency from write to
//!   answer in hdrhistogram. Then open-loop runs of each at half and at a quarter of the
//!   64-client throughput, latency from each request's due time, so queueing is not hidden
//!   (the generator's own pacing lateness is reported apart). All clients talk to the
//!   leader, in both systems. The generator runs on one thread (a current-thread tokio
//!   runtime), so at most one of the two cores is the generator's.
//! - Protocol: the native protocol (raft-client's length-prefixed postcard frames, writes
//!   with an exactly-once session) for every `cluster_*` row; the `*_resp_*` rows run some
//!   of the same workloads over RESP (what redis-benchmark does) against them, which is how
//!   the choice was made: RESP reached 0.43-0.90x native's SET throughput at 64 clients and
//!   0.49x its GET throughput at 16 in most runs here (though not in every one: the
//!   shared machine moves both).
//! - Resources: node CPU seconds per 1,000 operations (utime+stime of the 3 nodes from
//!   `/proc/<pid>/stat`, before and after each workload); peak RSS of each node (`VmHWM`);
//!   and the slope of RSS over a longer SET run (`--soak-s`, 60 s by default, off in
//!   `--quick`), fitted over its second half.
//! - Counters ([`scrape`]): each server's `/metrics` before and after each workload: log
//!   syncs and peer messages per 1,000 operations, elections during a run, the mean sync and
//!   the leader's mean proposal-to-apply time (where a write's time goes).
//! - `XTASK_BENCH_NODE_ARGS="--flag value ..."` adds `raft-node run` flags to the 3 nodes, to
//!   measure another configuration with the same workloads.
//! - `XTASK_BENCH_CLUSTER_ROWS=set:1,set:64,get:16` runs only these closed-loop workloads
//!   of ours (for profiling or a quick before/after), and skips the RESP comparison, the
//!   open-loop runs, the soak, etcd and the restart. Unset: everything.
//! - `XTASK_BENCH_NODE_BINARY=PATH` runs another `raft-node` build (e.g. the previous
//!   commit's), for before/after comparisons interleaved on the same machine.
//! - etcd ([`etcd`]): 3 members, the same workloads over its v3 JSON gateway with
//!   keep-alive HTTP/1.1; each `cluster_*` throughput, latency and CPU row carries the etcd
//!   figure of the same workload as its baseline.
//! - Repeats: the full bench runs each closed-loop workload [`REPEATS_FULL`] times, ours and
//!   etcd's alternating run by run (both clusters up meanwhile, the idle one costing little),
//!   so load from others on the machine hits both alike; rows give the median run, and the
//!   throughput row's note every run's figure and the load average before and after it.
//! - Redis ([`redis`]): one `redis-server` with `appendfsync always`, the RESP workloads of
//!   [`REDIS_WORKLOADS`], against ours over RESP, when `redis-server` is on PATH.
//! - Restart ([`restart`]): a node holding 1M entries (100k in `--quick`), by full replay
//!   and from a snapshot.

mod etcd;
mod load;
mod open_loop_run;
pub(crate) mod procs;
mod redis;
mod restart;
mod rivals;
mod rows;
mod scrape;
mod soak;
mod tls;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;

use self::load::{closed_loop, LoadResult, Op, Proto, Workload};
use self::procs::{cpu_s_sum, find_on_path, status_mib, Proc, Procs};
use self::rivals::{run_redis, start_rival, Rival};
use self::rows::push_rows;
use self::soak::soak;
use super::report::Row;
use super::util::us;
use super::{Baselines, Ctx};
use raft_testkit::try_free_addr;

/// Concurrent clients of the end-to-end workloads.
pub const CLIENTS: [usize; 4] = [1, 16, 64, 256];
/// The workloads `--quick` runs against etcd: the ones the targets name.
const ETCD_QUICK: [(Op, usize); 3] = [(Op::Set, 1), (Op::Set, 64), (Op::Get, 16)];
/// Connections of the open-loop runs (the rates are in [`OPEN_LOOP_RATES`]).
const OPEN_LOOP_CONNS: usize = 64;
const OPEN_LOOP_CLIENTS_REF: usize = 64;
/// Open-loop rates as fractions of the 64-client closed-loop throughput, with their rows'
/// name suffix. An open loop's requests arrive spread out, so they are batched less and
/// cost more CPU each than the closed loop's bursts (see `*_node_cpu_s_per_1000_ops`): at
/// half the closed-loop throughput the nodes run close to what two cores give them, and
/// any hiccup queues requests for long. The quarter rate shows the latency well below that.
const OPEN_LOOP_RATES: [(f64, &str); 2] = [(0.5, ""), (0.25, "_25pct")];
const NODES: u64 = 3;
/// How long the idle nodes' CPU is sampled (the kernel counts in 10 ms ticks).
const IDLE_SAMPLE: Duration = Duration::from_secs(2);
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The protocol of every `cluster_*` row: raft-client's native frames, which measured
/// faster than RESP on the same node in most runs (see the `*_resp_*` rows of each run).
const ROWS_PROTO: Proto = Proto::Native;
/// Workloads also run over RESP, for the comparison rows (`--quick`: the middle one only).
const RESP_COMPARE: [(Op, usize); 3] = [(Op::Set, 1), (Op::Set, 64), (Op::Get, 16)];
/// Workloads run against one durable Redis (`appendfsync always`), over RESP, beside our
/// RESP runs of the same workloads.
const REDIS_WORKLOADS: [(Op, usize); 3] = [(Op::Set, 1), (Op::Set, 64), (Op::Get, 16)];
/// Runs of each closed-loop workload in the full bench: figures on this shared machine move
/// by a quarter to a third between runs, so one run per workload says little.
const REPEATS_FULL: usize = 3;
/// RSS samples during the soak run, one per second at most.
const SOAK_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

struct Settings {
    warmup: Duration,
    duration: Duration,
    soak: Duration,
    restart_entries: u64,
    etcd_all: bool,
    /// Runs of each closed-loop workload, ours and etcd's alternating; rows show the median
    /// run and the spread.
    repeats: usize,
    /// `XTASK_BENCH_CLUSTER_ROWS`: only these closed-loop workloads, nothing else.
    rows: Option<Vec<(Op, usize)>>,
}

impl Settings {
    fn of(ctx: &Ctx) -> Result<Settings, String> {
        let rows = row_filter()?;
        Ok(if ctx.quick {
            Settings {
                warmup: Duration::from_millis(300),
                duration: Duration::from_millis(1500),
                soak: ctx.soak.unwrap_or(Duration::ZERO),
                restart_entries: 100_000,
                etcd_all: false,
                repeats: 1,
                rows,
            }
        } else {
            Settings {
                warmup: Duration::from_secs(1),
                duration: Duration::from_secs(10),
                soak: ctx.soak.unwrap_or(Duration::from_secs(60)),
                restart_entries: 1_000_000,
                etcd_all: true,
                repeats: REPEATS_FULL,
                rows,
            }
        })
    }

    fn selected(&self, op: Op, clients: usize) -> bool {
        self.rows
            .as_ref()
            .is_none_or(|r| r.contains(&(op, clients)))
    }
}

/// Parses `XTASK_BENCH_CLUSTER_ROWS` (`set:1,get:16`): `None` when unset.
fn row_filter() -> Result<Option<Vec<(Op, usize)>>, String> {
    let Ok(spec) = std::env::var("XTASK_BENCH_CLUSTER_ROWS") else {
        return Ok(None);
    };
    let bad = |item: &str| {
        format!("XTASK_BENCH_CLUSTER_ROWS: {item:?} is not OP:CLIENTS (OP set or get, CLIENTS one of {CLIENTS:?})")
    };
    let mut rows = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (op, clients) = item.split_once(':').ok_or_else(|| bad(item))?;
        let op = match op {
            "set" => Op::Set,
            "get" => Op::Get,
            _ => return Err(bad(item)),
        };
        let clients: usize = clients.parse().map_err(|_| bad(item))?;
        if !CLIENTS.contains(&clients) {
            return Err(bad(item));
        }
        rows.push((op, clients));
    }
    if rows.is_empty() {
        return Err(bad(&spec));
    }
    Ok(Some(rows))
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Set => "set",
        Op::Get => "get",
    }
}

/// `target/release/raft-node`, or `XTASK_BENCH_NODE_BINARY` (another build, for an
/// interleaved before/after comparison on the same machine).
fn node_binary(workspace_target: &Path) -> PathBuf {
    match std::env::var_os("XTASK_BENCH_NODE_BINARY") {
        Some(path) => PathBuf::from(path),
        None => workspace_target.join("release").join("raft-node"),
    }
}

/// Builds the node binary (a no-op when it is fresh), so the cluster rows never measure a
/// stale build. Run before any section, so a compile does not land in the middle of the
/// measurements.
pub fn prepare() -> Result<(), String> {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "raft-node"])
        .status()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() {
        return Err("cargo build --release -p raft-node failed".into());
    }
    Ok(())
}

/// One workload's figures: load result, and CPU and counters of the servers during it.
struct Measured {
    load: LoadResult,
    cpu_s: Option<f64>,
    /// Increase of each [`scrape::COUNTERS`] entry over the whole run (warm-up included).
    counters: BTreeMap<&'static str, f64>,
    /// Operations of the whole run, warm-up included, to divide the counters by.
    ops_all: u64,
}

impl Measured {
    fn cpu_s_per_1000_ops(&self) -> Option<f64> {
        self.cpu_s.map(|c| c / self.load.ops as f64 * 1000.0)
    }

    fn per_1000_ops(&self, counter: &str) -> Option<f64> {
        let v = self.counters.get(counter)?;
        (self.ops_all > 0).then(|| v / self.ops_all as f64 * 1000.0)
    }
}

/// The servers a workload runs against: their PIDs and metrics endpoints.
struct Servers {
    pids: Vec<u32>,
    system: scrape::System,
    metrics_addrs: Vec<String>,
}

/// One progress line per closed-loop row, the same for every system measured.
fn print_measured(system: &str, op: Op, clients: usize, m: &Measured) {
    eprintln!(
        "bench: {system} {} {clients} clients: {:.0} ops/s, p50 {:.0} us",
        op_name(op),
        m.load.ops_per_s(),
        us(&m.load.hist, 0.5)
    );
}

async fn measure(w: &Workload, clients: usize, servers: &Servers) -> Result<Measured, String> {
    let before = cpu_s_sum(&servers.pids);
    let counters_before = scrape::counters(servers.system, &servers.metrics_addrs).await;
    let load = closed_loop(w, clients).await?;
    let after = cpu_s_sum(&servers.pids);
    let counters_after = scrape::counters(servers.system, &servers.metrics_addrs).await;
    load.check(&format!(
        "{} {:?} {clients} clients",
        op_name(w.op),
        w.proto
    ))?;
    // The window excludes warm-up but the CPU counters include it: scale to the window.
    let share = w.duration.as_secs_f64() / (w.warmup + w.duration).as_secs_f64();
    let mut counters = BTreeMap::new();
    if let (Some(b), Some(a)) = (counters_before, counters_after) {
        for (k, v) in a {
            if let Some(old) = b.get(k) {
                counters.insert(k, v - old);
            }
        }
    }
    Ok(Measured {
        cpu_s: before.zip(after).map(|(b, a)| (a - b) * share),
        counters,
        ops_all: load.ops_all,
        load,
    })
}

/// One run of a repeated workload: its throughput and the 1-minute load average before and
/// after it.
struct RunNote {
    ops_per_s: f64,
    load_before: f64,
    load_after: f64,
}

/// The 1-minute load average (NaN when unreadable): reported around every run, since other
/// work on a shared machine moves the figures.
fn load_avg_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// One run of `w`, with its progress line and the load around it.
async fn measure_noted(
    w: &Workload,
    clients: usize,
    servers: &Servers,
    system: &str,
) -> Result<(Measured, RunNote), String> {
    let load_before = load_avg_1m();
    let m = measure(w, clients, servers).await?;
    print_measured(system, w.op, clients, &m);
    let note = RunNote {
        ops_per_s: m.load.ops_per_s(),
        load_before,
        load_after: load_avg_1m(),
    };
    Ok((m, note))
}

/// The median of `runs` by throughput (the upper one of an even count).
fn median_run(mut runs: Vec<Measured>) -> Measured {
    runs.sort_by(|a, b| a.load.ops_per_s().total_cmp(&b.load.ops_per_s()));
    runs.swap_remove(runs.len() / 2)
}

/// Everything the section measured, turned into rows at the end so that each of ours can
/// carry the etcd figure of the same workload.
#[derive(Default)]
struct Results {
    /// The median run of each closed-loop workload (by throughput).
    ours: BTreeMap<(&'static str, usize), Measured>,
    etcd: BTreeMap<(&'static str, usize), Measured>,
    /// Every run's throughput and the machine's load around it, for the spread.
    ours_runs: BTreeMap<(&'static str, usize), Vec<RunNote>>,
    etcd_runs: BTreeMap<(&'static str, usize), Vec<RunNote>>,
    etcd_why: Option<String>,
    etcd_version: Option<String>,
    /// Our RESP runs of [`RESP_COMPARE`], beside the native rows of the same workloads.
    resp: BTreeMap<(&'static str, usize), Measured>,
    /// One durable Redis, the same workloads over RESP ([`REDIS_WORKLOADS`]).
    redis: BTreeMap<(&'static str, usize), Measured>,
    redis_why: Option<String>,
    redis_version: Option<String>,
}

pub fn run(
    ctx: &Ctx,
    workspace_target: &Path,
    baselines: Option<&Baselines>,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    let binary = node_binary(workspace_target);
    if !binary.is_file() {
        return Err(format!("{} missing after the build", binary.display()));
    }
    let settings = Settings::of(ctx)?;
    // One thread: the generator gets at most one core, and never fights its own workers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let mut results = Results::default();
    let mut extra = Vec::new();
    // Processes are spawned inside `block_on`, i.e. on this thread, which outlives them.
    let outcome = rt.block_on(run_all(ctx, &settings, &binary, &mut results, &mut extra));
    push_rows(&settings, baselines, &results, rows);
    rows.extend(extra);
    outcome
}

async fn run_all(
    ctx: &Ctx,
    s: &Settings,
    binary: &Path,
    results: &mut Results,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    eprintln!(
        "bench: cluster: 3 raft-node processes{}",
        match extra_node_args() {
            a if a.is_empty() => String::new(),
            a => format!(" with {}", a.join(" ")),
        }
    );
    let rival = start_rival(ctx, s, results).await;
    run_ours(ctx, s, binary, results, rows, rival).await?;
    if !open_loop_only() {
        tls::run(ctx, s, binary, results, rows).await?;
    }
    if open_loop_only() {
        eprintln!("bench: cluster: XTASK_BENCH_OPEN_LOOP_ONLY: no etcd, no restart");
        return Ok(());
    }
    if s.rows.is_some() {
        eprintln!("bench: cluster: XTASK_BENCH_CLUSTER_ROWS set: etcd, redis and restart skipped");
        return Ok(());
    }
    match find_on_path("redis-server") {
        None => {
            results.redis_why = Some(
                "skipped: redis-server not on PATH (Debian: apt-get install redis-server)".into(),
            );
        }
        Some(redis_bin) => {
            eprintln!("bench: cluster: one redis-server, appendfsync always");
            results.redis_version = Some(redis::version(&redis_bin));
            if let Err(e) = run_redis(ctx, s, &redis_bin, results).await {
                eprintln!("bench: redis: {e}");
                results.redis_why = Some(format!("skipped: redis run failed: {e}"));
            }
        }
    }
    eprintln!("bench: cluster: restart with {} entries", s.restart_entries);
    let name = |what: &str| {
        format!(
            "node_restart_{}_entries_{what}_ms",
            count_name(s.restart_entries)
        )
    };
    match restart::run(binary, &ctx.scratch, s.restart_entries).await {
        Ok(r) => {
            rows.push(Row::new(name("replay"), "ms", r.replay_ms).note(format!(
                "single node, log to index {}, no snapshot; spawn to first linearizable GET, incl. a 30-60 ms election; loaded at {:.0} entries/s",
                r.log_last_index, r.load_entries_per_s
            )));
            rows.push(
                Row::new(name("from_snapshot"), "ms", r.snapshot_ms)
                    .vs(name("replay"), r.replay_ms)
                    .note(format!(
                        "snapshot plus a tail of {} entries",
                        r.snapshot_tail_entries
                    )),
            );
        }
        Err(e) => {
            rows.push(Row::skipped(name("replay"), "ms", format!("failed: {e}")));
            rows.push(Row::skipped(
                name("from_snapshot"),
                "ms",
                format!("failed: {e}"),
            ));
            return Err(format!("restart: {e}"));
        }
    }
    Ok(())
}

fn count_name(n: u64) -> String {
    if n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

struct Cluster {
    procs: Procs,
    client_addrs: Vec<String>,
    http_addrs: Vec<String>,
    /// How clients reach the nodes: plain TCP, or TLS trusting the cluster's CA.
    tls: load::Tls,
}

/// Starts 3 nodes under `dir`; with `certs` (a `raft-node certs` folder) every port speaks
/// TLS with the nodes' certificates.
fn start_cluster(binary: &Path, dir: &Path, certs: Option<&Path>) -> Result<Cluster, String> {
    let io = |e: std::io::Error| e.to_string();
    let mut peers = Vec::new();
    let mut clients = Vec::new();
    let mut https = Vec::new();
    for _ in 0..NODES {
        peers.push(try_free_addr().map_err(io)?);
        clients.push(try_free_addr().map_err(io)?);
        https.push(try_free_addr().map_err(io)?);
    }
    let mut procs = Procs::default();
    for id in 1..=NODES {
        let mut args = vec![
            "run".to_string(),
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            dir.join(format!("node-{id}")).display().to_string(),
            "--http-addr".into(),
            https[(id - 1) as usize].to_string(),
        ];
        // A new cluster of several members shares one ID: the certificates carry it, or the
        // flag gives it.
        if certs.is_none() {
            args.push("--cluster-id".into());
            args.push(format!(
                "{:032x}",
                0xbe7c_0000_u128 | u128::from(std::process::id())
            ));
        }
        for peer in 1..=NODES {
            let i = (peer - 1) as usize;
            args.push("--peer".into());
            args.push(format!("{peer}={},{}", peers[i], clients[i]));
        }
        if let Some(c) = certs {
            for (flag, file) in [
                ("--tls-ca", "ca.pem".to_string()),
                ("--tls-cert", format!("node-{id}.pem")),
                ("--tls-key", format!("node-{id}-key.pem")),
            ] {
                args.push(flag.into());
                args.push(c.join(file).display().to_string());
            }
        }
        args.extend(extra_node_args());
        procs.0.push(
            Proc::new(
                format!("raft-node {id}"),
                binary,
                args,
                dir.join(format!("node-{id}.log")),
            )
            // Logging at info would cost the measured nodes throughput.
            .with_env("RUST_LOG", "warn"),
        );
    }
    for p in &mut procs.0 {
        p.start().map_err(|e| format!("starting {}: {e}", p.name))?;
    }
    Ok(Cluster {
        procs,
        client_addrs: clients.iter().map(|a| a.to_string()).collect(),
        http_addrs: https.iter().map(|a| a.to_string()).collect(),
        tls: None,
    })
}

impl Cluster {
    /// The leader's client address, once every node answers and names the same leader.
    async fn wait_leader(&mut self) -> Result<String, String> {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            self.procs.check_alive()?;
            let mut leaders = Vec::new();
            for addr in &self.client_addrs {
                let mut config = raft_client::ClientConfig::new([addr.clone()]);
                config.request_timeout_ms = 500;
                config.attempt_timeout_ms = 500;
                config.connect_timeout_ms = 200;
                config.tls = self.tls.clone();
                if let Ok(st) = raft_client::Client::new(config).status().await {
                    leaders.push(st.leader);
                }
            }
            if leaders.len() == self.client_addrs.len() {
                if let Some(Some(l)) = leaders.first() {
                    if leaders.iter().all(|x| *x == Some(*l)) {
                        return Ok(self.client_addrs[(*l - 1) as usize].clone());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no leader within {LEADER_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn run_ours(
    ctx: &Ctx,
    s: &Settings,
    binary: &Path,
    results: &mut Results,
    rows: &mut Vec<Row>,
    mut rival: Option<Rival>,
) -> Result<(), String> {
    let mut cluster = start_cluster(binary, &ctx.scratch, None)?;
    let leader = cluster.wait_leader().await?;
    let pids = cluster.procs.pids();
    let servers = Servers {
        pids: pids.clone(),
        system: scrape::System::RaftNode,
        metrics_addrs: cluster.http_addrs.clone(),
    };
    // What the nodes burn with no load (ticks, heartbeats): a floor under the per-op CPU.
    let before = cpu_s_sum(&pids);
    tokio::time::sleep(IDLE_SAMPLE).await;
    if let Some((b, a)) = before.zip(cpu_s_sum(&pids)) {
        rows.push(
            Row::new(
                "cluster_idle_node_cpu_s_per_s",
                "s/s",
                (a - b) / IDLE_SAMPLE.as_secs_f64(),
            )
            .note("3 nodes summed, no load"),
        );
    }
    let workload = |op: Op, proto: Proto, seed: u64| Workload {
        proto,
        op,
        addr: leader.clone(),
        tls: None,
        warmup: s.warmup,
        duration: s.duration,
        seed,
    };
    let only_open_loop = open_loop_only();
    for op in [Op::Set, Op::Get] {
        for c in CLIENTS {
            if (only_open_loop && c != OPEN_LOOP_CLIENTS_REF) || !s.selected(op, c) {
                continue;
            }
            let key = (op_name(op), c);
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for run in 0..s.repeats as u64 {
                // Each run its own client IDs: a native session that starts again at sequence
                // 1 would be answered as a retry of the earlier run's requests.
                let w = workload(op, ROWS_PROTO, c as u64 + 10_000 * run);
                let (m, note) = measure_noted(&w, c, &servers, "cluster").await?;
                ours.push(m);
                results.ours_runs.entry(key).or_default().push(note);
                cluster.procs.check_alive()?;
                if let Some(r) = rival.as_mut().filter(|r| r.runs(s, op, c)) {
                    let (m, note) = r.measure(s, op, c).await?;
                    theirs.push(m);
                    results.etcd_runs.entry(key).or_default().push(note);
                }
            }
            results.ours.insert(key, median_run(ours));
            if !theirs.is_empty() {
                results.etcd.insert(key, median_run(theirs));
            }
        }
    }
    // etcd only idles from here on: it would take CPU from the runs below.
    drop(rival);
    if s.rows.is_some() {
        eprintln!(
            "bench: cluster: XTASK_BENCH_CLUSTER_ROWS set: RESP, open-loop and soak runs skipped"
        );
        return Ok(());
    }

    // RESP against the native protocol, same workloads: how the rows' protocol was chosen,
    // and what a Redis client gets.
    let compare: &[(Op, usize)] = if only_open_loop {
        &[]
    } else if s.etcd_all {
        &RESP_COMPARE
    } else {
        &RESP_COMPARE[1..2]
    };
    for &(op, c) in compare {
        let m = measure(&workload(op, Proto::Resp, 99 + c as u64), c, &servers).await?;
        let p = format!("cluster_{}_{c}_clients", op_name(op));
        let native = &results.ours[&(op_name(op), c)].load;
        rows.push(
            Row::new(format!("{p}_resp_ops_per_s"), "ops/s", m.load.ops_per_s())
                .vs(format!("{p}_ops_per_s"), native.ops_per_s())
                .note("RESP (redis-benchmark's way) against the native protocol"),
        );
        rows.push(
            Row::new(
                format!("{p}_resp_latency_us_p50"),
                "us",
                us(&m.load.hist, 0.5),
            )
            .vs(format!("{p}_latency_us_p50"), us(&native.hist, 0.5)),
        );
        results.resp.insert((op_name(op), c), m);
        cluster.procs.check_alive()?;
    }

    for (op, (fraction, tag)) in [Op::Set, Op::Get]
        .into_iter()
        .flat_map(|op| OPEN_LOOP_RATES.map(|r| (op, r)))
    {
        // Each run its own client IDs: a native session that starts again at sequence 1
        // would be answered as a retry of the earlier run's requests.
        let w = workload(op, ROWS_PROTO, 4242 + (fraction * 1000.0) as u64);
        open_loop_run::run(
            op,
            (fraction, tag),
            &w,
            &servers,
            results,
            only_open_loop,
            rows,
        )
        .await?;
        cluster.procs.check_alive()?;
    }

    if s.soak > Duration::ZERO && !only_open_loop {
        soak(s, &workload(Op::Set, ROWS_PROTO, 777), &pids, rows).await?;
    } else {
        rows.push(Row::skipped(
            "cluster_soak_rss_growth_MiB_per_min",
            "MiB/min",
            "skipped in --quick (add --soak-s N to run it)",
        ));
    }
    for (i, &pid) in pids.iter().enumerate() {
        let name = format!("cluster_node{}_rss_peak_MiB", i + 1);
        match status_mib(pid, "VmHWM") {
            Some(v) => rows.push(Row::new(name, "MiB", v)),
            None => rows.push(Row::skipped(name, "MiB", "VmHWM unreadable")),
        }
    }
    cluster.procs.check_alive()?;
    Ok(())
}

/// `XTASK_BENCH_OPEN_LOOP_ONLY=1`: of the cluster section, only the 64-client closed loops
/// (which set the open-loop rates) and the open-loop runs, to study the tail alone.
fn open_loop_only() -> bool {
    std::env::var("XTASK_BENCH_OPEN_LOOP_ONLY").is_ok_and(|v| v == "1")
}

/// `XTASK_BENCH_NODE_ARGS`: extra `raft-node run` flags for the 3-node cluster (split on
/// whitespace), to measure another configuration, e.g. `--snapshot-entries-max 1000000000`.
fn extra_node_args() -> Vec<String> {
    std::env::var("XTASK_BENCH_NODE_ARGS")
        .map(|a| a.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}
