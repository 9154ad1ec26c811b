//! `cargo xtask bench [--quick]`: the system measured against the hardware's limits in the
//! same run (issue 7). Sections, in order:
//! - [`baseline`]: fdatasync of a 4 KiB write, 64-byte TCP ping-pong, one TCP stream, and
//!   the floor of a replicated commit (fdatasync p50 + round trip p50);
//! - [`core`]: 3 `RawNode`s on tokio tasks, in memory, closed-loop clients;
//! - [`log`]: raft-log append+sync beside raw pwrite+fdatasync of the same bytes;
//! - [`net`]: raft-net throughput and round trip beside raw TCP;
//! - [`snapshot`]: a snapshot installed over raft-net's snapshot lane beside a raw loopback
//!   copy + fsync of the same bytes;
//! - [`cluster`]: 3 `raft-node` processes end to end, the same workloads against etcd, and
//!   a node's restart time.
//!
//! Every figure is one [`report::Row`], printed as a table and written to
//! `target/bench/report.json`. Scratch files live in `target/bench/tmp-<pid>` (the project's
//! filesystem) and are removed on exit, on failure too.

mod baseline;
pub(crate) mod cluster;
mod core;
mod log;
mod net;
mod report;
mod snapshot;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub use baseline::Baselines;
use report::Row;

/// What every section needs to know about this run.
pub struct Ctx {
    /// `--quick`: the same measurements with half the time each and half the rounds.
    pub quick: bool,
    pub scratch: PathBuf,
    /// `--only a,b`: run just these sections (for profiling one of them).
    pub only: Option<Vec<String>>,
    /// `--soak-s N`: length of the cluster's RSS-growth run (default 60 s, none in --quick).
    pub soak: Option<Duration>,
}

impl Ctx {
    fn runs(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == section))
    }

    /// A full-run duration, shortened for `--quick`.
    pub fn scale(&self, full: Duration) -> Duration {
        if self.quick {
            full / 2
        } else {
            full
        }
    }
}

/// Size of the raw baseline file: room for the largest batch (16 KiB x 1024 entries).
const RAW_FILE_BYTES: u64 = 64 << 20;

/// The longest RSS-growth run `--soak-s` accepts (an hour): every load loop is bounded.
const SOAK_S_MAX: u64 = 3600;

const SECTIONS: [&str; 6] = ["baseline", "core", "log", "net", "snapshot", "cluster"];

/// `cargo xtask bench`: every section in order, one table and `target/bench/report.json`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The same measurements with half the time each and half the rounds (under 2 minutes).
    #[arg(long)]
    quick: bool,
    /// Run just these sections, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(SECTIONS))]
    only: Vec<String>,
    /// Length of the cluster's RSS-growth run, in seconds [default: 60, none with --quick].
    #[arg(long, value_parser = clap::value_parser!(u64).range(..=SOAK_S_MAX))]
    soak_s: Option<u64>,
}

pub(crate) fn main(args: Args) -> ExitCode {
    let quick = args.quick;
    let only = (!args.only.is_empty()).then_some(args.only);
    let soak = args.soak_s.map(Duration::from_secs);
    let root = util::bench_root();
    let scratch = match util::ScratchDir::create(&root) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("xtask bench: cannot create {}: {e}", root.display());
            return ExitCode::FAILURE;
        }
    };
    let ctx = Ctx {
        quick,
        scratch: scratch.path().to_owned(),
        only,
        soak,
    };
    let machine = machine_line(&ctx);
    println!("machine: {machine}");
    let started = Instant::now();
    let mut rows = Vec::new();
    let outcome = run_all(&ctx, &mut rows);
    drop(scratch);
    rows.push(Row::new(
        "bench_duration_s",
        "s",
        started.elapsed().as_secs_f64(),
    ));
    println!();
    report::print_table(&rows);
    let json = root.join("report.json");
    if let Err(e) = report::write_json(&json, &rows) {
        eprintln!("xtask bench: cannot write {}: {e}", json.display());
        return ExitCode::FAILURE;
    }
    println!("\nreport: {}", json.display());
    let md_path = root.join("report.md");
    match std::fs::write(&md_path, report::markdown(&machine, &rows)) {
        Ok(()) => println!("markdown (for README's Figures): {}", md_path.display()),
        Err(e) => eprintln!("xtask bench: cannot write {}: {e}", md_path.display()),
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_all(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<(), String> {
    let section = |name: &str| eprintln!("bench: {name}...");
    if ctx.runs("cluster") {
        // Before any measurement, so a compile never overlaps one.
        section("building raft-node (release)");
        cluster::prepare().map_err(|e| format!("cluster: {e}"))?;
    }
    let mut raw = None;
    if ctx.runs("baseline") || ctx.runs("log") {
        raw = Some(
            util::RawFile::create(&ctx.scratch.join("raw-baseline"), RAW_FILE_BYTES)
                .map_err(|e| format!("raw baseline file: {e}"))?,
        );
    }
    let mut baselines = None;
    if let (true, Some(raw)) = (ctx.runs("baseline"), raw.as_mut()) {
        section("baselines (disk, loopback)");
        baselines = Some(baseline::run(ctx, raw, rows).map_err(|e| format!("baselines: {e}"))?);
    }
    if ctx.runs("core") {
        section("core: 3 RawNodes in memory");
        core::run(ctx, rows).map_err(|e| format!("core: {e}"))?;
    }
    if let (true, Some(raw)) = (ctx.runs("log"), raw.as_mut()) {
        section("raft-log append+sync vs raw");
        log::run(ctx, raw, rows).map_err(|e| format!("raft-log: {e}"))?;
    }
    drop(raw);
    if ctx.runs("net") {
        section("raft-net vs raw TCP");
        net::run(ctx, rows).map_err(|e| format!("raft-net: {e}"))?;
    }
    if ctx.runs("snapshot") {
        section("snapshot install over the lane vs raw copy + fsync");
        snapshot::run(ctx, rows).map_err(|e| format!("snapshot: {e}"))?;
    }
    if ctx.runs("cluster") {
        let target = util::bench_root()
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        section("cluster: raft-node and etcd end to end");
        cluster::run(ctx, &target, baselines.as_ref(), rows)
            .map_err(|e| format!("cluster: {e}"))?;
    }
    Ok(())
}

/// The machine the figures belong to, for the README's figures section.
fn machine_line(ctx: &Ctx) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    // Load average at the start: a shared machine's figures need it beside them.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    format!(
        "{cores} cores, {cpu}; kernel {kernel}; scratch filesystem {}; mode {}; load average {load} at start",
        fs_type(&ctx.scratch),
        if ctx.quick { "--quick" } else { "full" }
    )
}

fn fs_type(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return "unknown".into();
    };
    // SAFETY: a valid NUL-terminated path and a zeroed statfs for the kernel to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    match st.f_type as i64 {
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794C_7630 => "overlayfs".into(),
        other => format!("0x{other:x}"),
    }
}
