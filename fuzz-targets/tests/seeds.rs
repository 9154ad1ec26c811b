//! Every target runs its seeds and its committed corpus without a crash, and a short
//! mutation run from a fixed seed finds none: the same check `.ci/run` makes at length.

use std::time::Duration;

use fuzz_targets::runner::{self, RunOptions};
use fuzz_targets::{corpus_dir, TARGETS};

/// The runner's panic record is process-wide: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn seeds_and_corpus_run_clean() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for t in TARGETS {
        let seeds = (t.seeds)();
        assert!(!seeds.is_empty(), "{} has no seeds", t.name);
        for input in seeds
            .iter()
            .chain(&runner::read_corpus(&corpus_dir(t.name)))
        {
            if let Some(message) = runner::run_one(t, input) {
                panic!("{}: {message}\ninput: {input:?}", t.name);
            }
        }
    }
    fuzz_targets::remove_scratch_dir();
}

#[test]
fn a_short_mutation_run_is_clean() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let crash_dir = tempfile::tempdir().unwrap();
    for t in TARGETS.iter().filter(|t| t.name != "http") {
        let report = runner::run(
            t,
            &RunOptions {
                seed: 1,
                duration: Duration::from_secs(60),
                runs_max: Some(300),
                crash_dir: crash_dir.path().to_path_buf(),
            },
        );
        assert_eq!(report.executions, 300, "{}", t.name);
        if let Some((path, message)) = report.crash {
            panic!("{}: {message} (input in {})", t.name, path.display());
        }
    }
    fuzz_targets::remove_scratch_dir();
}
