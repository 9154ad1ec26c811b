//! `cargo xtask fuzz`: every fuzz target (or one) on the stable toolchain, over its
//! committed corpus and seeds plus random mutations, for a bounded time from a printed
//! seed. The coverage-guided runs are cargo-fuzz's, on nightly (`fuzz/README.md`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuzz_targets::runner::{self, RunOptions};
use fuzz_targets::TARGETS;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// One target (default: every target, one after another).
    #[arg(long)]
    target: Option<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seed of the mutations (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop each target after this many inputs instead of after `--seconds`: with the same
    /// seed and corpus, exactly the same inputs.
    #[arg(long)]
    runs: Option<u64>,
    /// Run this one file through `--target` and report (a saved crash, say).
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Write every target's seeds into `fuzz/corpus/TARGET/` and exit.
    #[arg(long)]
    write_seeds: bool,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
}

pub(crate) fn main(args: Args) -> ExitCode {
    if args.list {
        for t in TARGETS {
            println!("{:<12} {}", t.name, t.about);
        }
        return ExitCode::SUCCESS;
    }
    let targets: Vec<_> = match &args.target {
        Some(name) => match fuzz_targets::find(name) {
            Some(t) => vec![t],
            None => {
                eprintln!("xtask fuzz: no target {name:?}; `cargo xtask fuzz --list` names them");
                return ExitCode::from(2);
            }
        },
        None => TARGETS.iter().collect(),
    };
    if args.write_seeds {
        for t in &targets {
            let dir = fuzz_targets::corpus_dir(t.name);
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("xtask fuzz: {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
            let seeds = (t.seeds)();
            for s in &seeds {
                let path = dir.join(format!("seed-{:016x}", runner::content_hash(s)));
                if let Err(e) = std::fs::write(&path, s) {
                    eprintln!("xtask fuzz: {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            println!("{}: {} seeds in {}", t.name, seeds.len(), dir.display());
        }
        fuzz_targets::remove_scratch_dir();
        return ExitCode::SUCCESS;
    }
    if let Some(path) = &args.replay {
        let [t] = targets[..] else {
            eprintln!("xtask fuzz: --replay needs --target");
            return ExitCode::from(2);
        };
        let input = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("xtask fuzz: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        let outcome = runner::run_one(t, &input);
        fuzz_targets::remove_scratch_dir();
        return match outcome {
            None => {
                println!(
                    "{}: {} ({} bytes): no crash",
                    t.name,
                    path.display(),
                    input.len()
                );
                ExitCode::SUCCESS
            }
            Some(message) => {
                println!("{}: {}: CRASH: {message}", t.name, path.display());
                ExitCode::FAILURE
            }
        };
    }
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let crash_dir = fuzz_targets::workspace_root()
        .join("target")
        .join("fuzz-crashes");
    let mut crashed = false;
    for t in targets {
        let report = runner::run(
            t,
            &RunOptions {
                seed,
                duration: Duration::from_secs(args.seconds),
                runs_max: args.runs,
                crash_dir: crash_dir.clone(),
            },
        );
        println!(
            "fuzz {}: seed={seed} executions={} corpus={} elapsed={:.1}s crashes={}",
            t.name,
            report.executions,
            report.corpus_inputs,
            report.elapsed.as_secs_f64(),
            u32::from(report.crash.is_some())
        );
        if let Some((path, message)) = report.crash {
            crashed = true;
            println!("CRASH in {}: {message}", t.name);
            println!("input saved: {}", path.display());
            println!(
                "replay: cargo xtask fuzz --target {} --replay {}",
                t.name,
                path.display()
            );
            println!(
                "rerun: cargo xtask fuzz --target {} --seed {seed} --runs {}",
                t.name, report.executions
            );
        }
    }
    fuzz_targets::remove_scratch_dir();
    if crashed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
