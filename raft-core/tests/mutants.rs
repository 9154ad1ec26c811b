//! The simulation must catch deliberate bugs: each mutant of `raft_core::mutant` removes one
//! rule of the protocol, and a run of seeds with it switched on must report a violation
//! within a bounded number of seeds. A safety net that has never caught anything proves
//! nothing.
//!
//! Replay a mutant's first failing seed (printed by the test) with
//! `cargo xtask sim --mutant NAME --seed N`.

use raft_core::mutant::Mutant;
use raft_core::sim::{run_seed_caught, SimOptions};
use std::sync::atomic::{AtomicU64, Ordering};

/// Seeds within which every mutant must be caught.
const SEEDS_MAX: u64 = 1000;

fn threads() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

/// The first seed in `1..=SEEDS_MAX` whose run with `mutant` reports a violation: seeds run
/// in parallel, so every seed below the answer is run to be sure it is the first.
fn first_failing_seed(mutant: Mutant) -> Option<u64> {
    let next = AtomicU64::new(1);
    let found = AtomicU64::new(u64::MAX);
    std::thread::scope(|scope| {
        for _ in 0..threads() {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed > SEEDS_MAX || seed >= found.load(Ordering::Relaxed) {
                    break;
                }
                let report = run_seed_caught(&SimOptions {
                    mutant: Some(mutant),
                    ..SimOptions::new(seed)
                });
                if !report.violations.is_empty() {
                    found.fetch_min(seed, Ordering::Relaxed);
                }
            });
        }
    });
    let seed = found.load(Ordering::Relaxed);
    (seed != u64::MAX).then_some(seed)
}

fn caught(mutant: Mutant) {
    match first_failing_seed(mutant) {
        Some(seed) => println!(
            "mutant {} caught: first failing seed {seed}; replay: cargo xtask sim --mutant {} --seed {seed}",
            mutant.name(),
            mutant.name()
        ),
        None => panic!(
            "mutant {} survived {SEEDS_MAX} seeds: the simulation does not exercise the rule it removes",
            mutant.name()
        ),
    }
}

#[test]
fn membership_change_before_term_commit_is_caught() {
    caught(Mutant::MembershipChangeBeforeTermCommit);
}

#[test]
fn commit_earlier_term_by_count_is_caught() {
    caught(Mutant::CommitEarlierTermByCount);
}

#[test]
fn vote_without_log_check_is_caught() {
    caught(Mutant::VoteWithoutLogCheck);
}

#[test]
fn read_before_term_commit_is_caught() {
    caught(Mutant::ReadBeforeTermCommit);
}

#[test]
fn snapshot_at_compaction_point_is_caught() {
    caught(Mutant::SnapshotAtCompactionPoint);
}

#[test]
fn every_mutant_has_a_test_and_a_name_that_parses() {
    assert_eq!(Mutant::ALL.len(), 5, "add a test above for the new mutant");
    for m in Mutant::ALL {
        assert_eq!(Mutant::from_name(m.name()), Some(m));
    }
}
