//! A deterministic simulation of whole clusters under faults: the safety net of the project.
//!
//! One seed fixes everything: the cluster's size and settings, the fault rates, every random
//! choice of network, disk and clients. [`run_seed`] drives 3- or 5-node clusters (plus two
//! spare nodes for membership changes) through message loss, duplication, reordering and delay,
//! partitions (symmetric, one-way, single node, bridge), crashes that lose every write not yet
//! synced (with a torn last write), pauses, membership changes, leadership transfers, snapshots
//! and compaction, while clients read and write a few registers. Membership faults: some
//! seeds walk the voters by single-server changes that keep returning to an even count (where
//! an addition and a removal from one configuration have disjoint majorities), new leaders
//! change the membership at once, a leader may be isolated just after appending a change (so
//! it reaches a minority), and a change may be followed by a *split along membership
//! knowledge*: the leader keeps a bare majority of its new configuration, chosen away from
//! nodes holding a configuration entry it lacks and from those entries' voters, and everyone
//! else (the nodes the change removed among them) is cut off, messages in flight included,
//! for a few election timeouts. After every step the
//! [`checker`] verifies Raft's safety properties and the client history; after the faults heal,
//! a leader must emerge, every replica must catch up and every new request must succeed.
//!
//! `cargo xtask sim --seed N` replays one seed.
//!
//! [`SimOptions::mutant`] runs the core with a deliberate bug ([`crate::mutant::Mutant`]);
//! `tests/mutants.rs` checks that each is caught within 1,000 seeds, and
//! `cargo xtask sim --mutant NAME --seed N` replays a mutant's failing seed.
//!
//! Layout: `params.rs` (what a seed draws), `network.rs`, `node.rs` (a node and its disk,
//! hosted by the `Ready` contract), `world.rs` (the step loop, delivery, the final checks),
//! `faults.rs`, `clients.rs`, and [`checker`] and [`kv`]; this file runs seeds.

pub mod checker;
mod clients;
mod faults;
pub mod kv;
mod network;
mod node;
mod params;
mod world;

use crate::mutant::Mutant;
use crate::types::Index;

use world::World;

/// How long one seed runs.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The seed: it fixes the whole run.
    pub seed: u64,
    /// Steps (ticks) with faults injected.
    pub fault_steps: u64,
    /// Steps after every fault has healed, in which the cluster must recover.
    pub heal_steps: u64,
    /// A deliberate bug to run the core with, to show that the simulation catches it.
    pub mutant: Option<Mutant>,
}

impl SimOptions {
    /// 5,000 fault steps then 1,000 healing steps.
    pub fn new(seed: u64) -> Self {
        SimOptions {
            seed,
            fault_steps: 5000,
            heal_steps: 1000,
            mutant: None,
        }
    }
}

/// What happened in one seed.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Leaders seen (new term or new node).
    pub elections: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Partitions made.
    pub partitions: u64,
    /// Process pauses.
    pub pauses: u64,
    /// Membership changes accepted by a leader.
    pub membership_changes: u64,
    /// Leadership transfers started.
    pub transfers: u64,
    /// Snapshots taken (and logs compacted).
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Writes acknowledged.
    pub writes_ok: u64,
    /// Reads served.
    pub reads_ok: u64,
    /// Operations refused (to be retried).
    pub ops_failed: u64,
    /// Operations whose outcome the client never learned.
    pub ops_unknown: u64,
    /// Messages sent (before loss).
    pub messages_sent: u64,
    /// Highest commit index reached.
    pub commit_max: Index,
}

#[derive(Clone, Debug)]
/// The outcome of one seed.
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Steps run.
    pub steps: u64,
    /// Violations found (empty when the seed passed).
    pub violations: Vec<String>,
    /// What happened.
    pub stats: Stats,
    /// The settings and fault rates the seed drew.
    pub params: String,
}

/// Runs one seed to the end (or its first violation).
pub fn run_seed(opts: &SimOptions) -> SeedReport {
    let mut world = World::new(opts);
    let params = format!("{:?}", world.params);
    crate::mutant::with(opts.mutant, || world.run());
    SeedReport {
        seed: opts.seed,
        steps: world.step,
        violations: world.checker.violations,
        stats: world.stats,
        params,
    }
}

/// Runs one seed, turning a panic (a failed assertion in the core) into a violation.
pub fn run_seed_caught(opts: &SimOptions) -> SeedReport {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_seed(opts))) {
        Ok(report) => report,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            SeedReport {
                seed: opts.seed,
                steps: 0,
                violations: vec![format!("panic: {what}")],
                stats: Stats::default(),
                params: String::new(),
            }
        }
    }
}

/// The outcome of many seeds.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Seeds run.
    pub seeds: u64,
    /// Steps run, over all seeds.
    pub steps: u64,
    /// Failing seeds with their first violations.
    pub failures: Vec<SeedReport>,
}

impl Summary {
    /// Violations found, over all seeds.
    pub fn violations(&self) -> usize {
        self.failures.iter().map(|r| r.violations.len()).sum()
    }

    /// The line `cargo xtask sim` ends with.
    pub fn line(&self) -> String {
        format!(
            "sim: seeds={} steps={} violations={}",
            self.seeds,
            self.steps,
            self.violations()
        )
    }
}

/// Runs `count` seeds from `first` on `threads` threads. `on_failure` is called for each
/// failing seed as soon as it fails.
pub fn run_seeds(
    first: u64,
    count: u64,
    threads: usize,
    template: &SimOptions,
    on_failure: &(dyn Fn(&SeedReport) + Sync),
) -> Summary {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    let next = AtomicU64::new(0);
    let summary = Mutex::new(Summary::default());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let opts = SimOptions {
                    seed: first + i,
                    ..template.clone()
                };
                let report = run_seed_caught(&opts);
                if !report.violations.is_empty() {
                    on_failure(&report);
                }
                let mut s = summary.lock().expect("no panics while holding the lock");
                s.seeds += 1;
                s.steps += report.steps;
                if !report.violations.is_empty() {
                    s.failures.push(report);
                }
            });
        }
    });
    let mut summary = summary.into_inner().expect("threads joined");
    summary.failures.sort_by_key(|r| r.seed);
    summary
}
