//! Project chores, run as `cargo xtask <task>`:
//! - `sim`: the deterministic cluster simulation (`--seeds N`, `--first S`, `--seed X` to
//!   replay one seed, `--steps S` fault steps per seed, `--threads T`, `--mutant NAME` to run
//!   the core with a deliberate bug the simulation must catch);
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

use clap::{Parser, Subcommand};

/// The system allocator; during `cargo xtask fuzz` runs it turns an allocation above 2 GiB
/// into a saved crash (see `fuzz_targets::runner::GuardedAlloc`).
#[global_allocator]
static ALLOC: fuzz_targets::runner::GuardedAlloc = fuzz_targets::runner::GuardedAlloc;

use raft_core::mutant::Mutant;
use raft_core::sim::{run_seed_caught, run_seeds, SeedReport, SimOptions};

/// Project chores: simulation, chaos, benchmarks, attacks and fuzzing.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// The deterministic cluster simulation under faults.
    Sim(SimArgs),
    /// Real raft-node processes under faults, with a linearizability check.
    Chaos(chaos::Args),
    /// The system measured against the hardware's limits.
    Bench(bench::Args),
    /// The hostile-client attacks at full size against release nodes.
    Attacks(attacks::Args),
    /// The fuzz targets on the stable toolchain.
    Fuzz(fuzz::Args),
}

/// `cargo xtask sim`: seeds of the deterministic simulation; a failing seed prints its replay line.
#[derive(clap::Args, Debug)]
struct SimArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed of the run.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Replay this one seed and print its statistics and violations.
    #[arg(long)]
    seed: Option<u64>,
    /// Fault steps per seed [default: the simulation's own].
    #[arg(long)]
    steps: Option<u64>,
    /// Worker threads [default: the available parallelism].
    #[arg(long)]
    threads: Option<usize>,
    /// Run the core with this deliberate bug (see `raft_core::mutant`), to show the
    /// simulation catches it.
    #[arg(long, value_name = "NAME", value_parser = parse_mutant)]
    mutant: Option<Mutant>,
}

fn parse_mutant(name: &str) -> Result<Mutant, String> {
    Mutant::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Mutant::ALL.iter().map(|m| m.name()).collect();
        format!("unknown mutant {name:?}; one of: {}", names.join(", "))
    })
}

fn main() -> ExitCode {
    match Cli::parse().task {
        Task::Sim(args) => sim(args),
        Task::Chaos(args) => chaos::main(args),
        Task::Bench(args) => bench::main(args),
        Task::Attacks(args) => attacks::main(args),
        Task::Fuzz(args) => fuzz::main(args),
    }
}

fn replay_line(report: &SeedReport, steps: u64, mutant: Option<Mutant>) -> String {
    let mutant = mutant.map_or(String::new(), |m| format!(" --mutant {}", m.name()));
    format!(
        "replay: cargo xtask sim{mutant} --seed {} --steps {steps}",
        report.seed
    )
}

fn sim(args: SimArgs) -> ExitCode {
    let SimArgs {
        seeds,
        first,
        seed,
        steps,
        threads,
        mutant,
    } = args;
    let mut template = SimOptions::new(0);
    template.mutant = mutant;
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
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let summary = run_seeds(first, seeds, threads, &template, &|r| {
        println!(
            "FAIL seed={}: {}",
            r.seed,
            r.violations.first().map_or("", String::as_str)
        );
        println!("{}", replay_line(r, fault_steps, mutant));
    });
    for r in &summary.failures {
        println!("{}", replay_line(r, fault_steps, mutant));
    }
    println!("{}", summary.line());
    if summary.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
