//! Project chores, run as `cargo xtask <task>`:
//! - `sim`: the deterministic cluster simulation (`--seeds N`, `--first S`, `--seed X` to
//!   replay one seed, `--steps S` fault steps per seed, `--threads T`);
//! - `chaos`: real `raft-node` processes under faults, with a linearizability check
//!   (`--nodes N`, `--duration 60s`, `--seed S`, `--clients C`, `--keys K`, `--no-build`);
//! - `bench`: the system against the hardware's limits (`--quick`: under 2 minutes;
//!   `--only baseline,core,log,net,cluster`; `--soak-s N` for the RSS-growth run); see
//!   `bench/mod.rs`;
//! - `attacks`: the hostile-client attacks of issue #13 at full size against release nodes,
//!   one row each (`--only NAME,...`, `--no-build`); see `attacks.rs`;
//! - `fuzz`: the fuzz targets on the stable toolchain, corpus plus random mutations for a
//!   bounded time (`--target T`, `--seconds N`, `--seed S`, `--replay FILE`); see
//!   `fuzz/README.md`.

mod attacks;
mod bench;
mod chaos;
mod fuzz;
/// The attacks themselves, shared with raft-node's hostile-client tests (one definition,
/// run there at small sizes).
#[path = "../../raft-node/tests/common/attacks.rs"]
#[allow(dead_code)]
mod hostile;

use std::process::ExitCode;

/// The system allocator; during `cargo xtask fuzz` runs it turns an allocation above 2 GiB
/// into a saved crash (see `fuzz_targets::runner::GuardedAlloc`).
#[global_allocator]
static ALLOC: fuzz_targets::runner::GuardedAlloc = fuzz_targets::runner::GuardedAlloc;

use raft_core::sim::{run_seed_caught, run_seeds, SeedReport, SimOptions};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("sim") => sim(&args[1..]),
        Some("chaos") => chaos::main(&args[1..]),
        Some("bench") => bench::main(&args[1..]),
        Some("attacks") => attacks::main(&args[1..]),
        Some("fuzz") => fuzz::main(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask sim [--seeds N] [--first S] [--seed X] [--steps S] [--threads T]");
            eprintln!("       cargo xtask chaos [--nodes 5] [--duration 60s] [--seed S]");
            eprintln!("       cargo xtask bench [--quick] [--only SECTION,...] [--soak-s N]");
            eprintln!("       cargo xtask attacks [--only NAME,...] [--no-build]");
            eprintln!(
                "       cargo xtask fuzz [--target T] [--seconds N] [--seed S] [--replay FILE]"
            );
            ExitCode::from(2)
        }
    }
}

fn flag(args: &[String], name: &str) -> Result<Option<u64>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .ok_or_else(|| format!("{name} needs a number"))?
            .parse()
            .map(Some)
            .map_err(|e| format!("{name}: {e}")),
    }
}

fn replay_line(report: &SeedReport, steps: u64) -> String {
    format!(
        "replay: cargo xtask sim --seed {} --steps {steps}",
        report.seed
    )
}

fn sim(args: &[String]) -> ExitCode {
    let parsed = (|| -> Result<_, String> {
        Ok((
            flag(args, "--seeds")?,
            flag(args, "--first")?,
            flag(args, "--seed")?,
            flag(args, "--steps")?,
            flag(args, "--threads")?,
        ))
    })();
    let (seeds, first, seed, steps, threads) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("xtask sim: {e}");
            return ExitCode::from(2);
        }
    };
    let mut template = SimOptions::new(0);
    if let Some(steps) = steps {
        template.fault_steps = steps;
    }
    let fault_steps = template.fault_steps;
    if let Some(seed) = seed {
        let report = run_seed_caught(&SimOptions { seed, ..template });
        println!("seed {seed}: {}", report.params);
        println!("stats: {:?}", report.stats);
        for v in &report.violations {
            println!("violation: {v}");
        }
        println!(
            "sim: seeds=1 steps={} violations={}",
            report.steps,
            report.violations.len()
        );
        return if report.violations.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let threads = threads
        .map(|t| t as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let summary = run_seeds(
        first.unwrap_or(1),
        seeds.unwrap_or(1000),
        threads,
        &template,
        &|r| {
            println!(
                "FAIL seed={}: {}",
                r.seed,
                r.violations.first().map_or("", String::as_str)
            );
            println!("{}", replay_line(r, fault_steps));
        },
    );
    for r in &summary.failures {
        println!("{}", replay_line(r, fault_steps));
    }
    println!("{}", summary.line());
    if summary.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
