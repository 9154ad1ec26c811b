//! Randomized model test of the multi-group log: seeded sequences of interleaved operations
//! on many groups (appends, conflicting rewrites, truncations, hard states, compactions,
//! snapshot installs, group creation and removal, flushes, syncs) are applied to the log and
//! to an in-memory model of every group (raft-core's `MemLog`), compared after every step,
//! across clean restarts and across crashes that lose every write since the last sync (the
//! newest segment zeroed from the last durable offset on).
//!
//! Reproduce a failure with `MULTI_LOG_MODEL_SEED=<seed printed> cargo test -p raft-log
//! --test multi_model`; `MULTI_LOG_MODEL_SEEDS=<n>` runs more seeds.

mod common;

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use common::multi::*;
use raft_core::{HardState, LogStore, MemLog, SnapshotMeta};
use raft_log::{MultiLog, MultiOptions};

/// Steps per seed, and seeds by default: bounded so the test stays a few seconds.
const STEPS: usize = 1500;
const SEEDS: u64 = 6;
/// Group IDs drawn from `1..=GROUP_IDS` (more than `groups_max`, so creation is refused too).
const GROUP_IDS: u64 = 10;

/// The state a crash falls back to: the model when the newest segment was last made
/// durable, and up to where.
struct Durable {
    model: Model,
    path: PathBuf,
    offset: u64,
}

struct Harness {
    dir: tempfile::TempDir,
    options: MultiOptions,
    log: Option<MultiLog>,
    model: Model,
    durable: Durable,
    rng: Rng,
}

impl Harness {
    fn log(&mut self) -> &mut MultiLog {
        self.log.as_mut().unwrap()
    }

    /// Runs one operation on the log, and on the model if the log accepted it.
    fn step(&mut self, step: usize) {
        let (before_path, _) = self.log().write_position();
        let id = 1 + self.rng.below(GROUP_IDS);
        let held = self.model.contains_key(&id);
        let mut synced = false;
        match self.rng.below(100) {
            0..=5 => {
                let r = self.log().create_group(id, SnapshotMeta::default());
                if held || self.model.len() >= self.options.groups_max {
                    assert!(r.is_err(), "step {step}: create of group {id} accepted");
                } else {
                    r.unwrap();
                    self.model
                        .insert(id, MemLog::with_snapshot(SnapshotMeta::default()));
                }
            }
            6..=7 if held => {
                self.log().remove_group(id).unwrap();
                self.model.remove(&id);
            }
            8..=50 if held => {
                let mem = &self.model[&id];
                let last = mem.last_index();
                // Mostly extend; sometimes rewrite a suffix with a higher term.
                let (from, term) = if self.rng.below(6) == 0 && last >= mem.first_index() {
                    let from = mem.first_index() + self.rng.below(last - mem.first_index() + 1);
                    (from, mem.hard_state().term.max(mem.term(last).unwrap()) + 1)
                } else {
                    let term = mem.term(last).unwrap().max(1) + u64::from(self.rng.below(8) == 0);
                    (last + 1, term)
                };
                let count = 1 + self.rng.below(12);
                let entries: Vec<_> = (from..from + count)
                    .map(|i| entry(id, i, term, self.rng.below(600) as usize))
                    .collect();
                self.log().append(id, &entries).unwrap();
                let mem = self.model.get_mut(&id).unwrap();
                mem.append(&entries);
                let mut hs = mem.hard_state();
                hs.term = hs.term.max(term);
                mem.set_hard_state(hs);
                self.log().set_hard_state(id, hs).unwrap();
            }
            51..=56 if held => {
                let mem = &self.model[&id];
                let (first, last) = (mem.first_index(), mem.last_index());
                if last >= first {
                    let from = first + self.rng.below(last - first + 1);
                    self.log().truncate_suffix(id, from).unwrap();
                    self.model.get_mut(&id).unwrap().truncate_suffix(from);
                }
            }
            57..=66 if held => {
                let mem = &self.model[&id];
                let hs = HardState {
                    term: mem.hard_state().term,
                    vote: Some(self.rng.below(3)),
                    commit: mem
                        .last_index()
                        .min(mem.hard_state().commit + self.rng.below(20)),
                };
                self.log().set_hard_state(id, hs).unwrap();
                self.model.get_mut(&id).unwrap().set_hard_state(hs);
            }
            67..=76 if held => {
                let mem = &self.model[&id];
                let (first, last) = (mem.first_index(), mem.last_index());
                if last >= first {
                    let index = first + self.rng.below(last - first + 1);
                    let meta = SnapshotMeta {
                        index,
                        term: mem.term(index).unwrap(),
                        membership: Default::default(),
                    };
                    self.log().compact(id, meta.clone()).unwrap();
                    self.model.get_mut(&id).unwrap().compact(meta);
                }
            }
            77..=78 if held => {
                let mem = &self.model[&id];
                let index = mem.last_index() + self.rng.below(30);
                let meta = SnapshotMeta {
                    index,
                    term: mem.hard_state().term + 1,
                    membership: raft_core::Membership::new_voters([1, 2, 3]),
                };
                self.log().install_snapshot(id, meta.clone()).unwrap();
                self.model.get_mut(&id).unwrap().install_snapshot(meta);
            }
            79..=84 => self.log().flush().unwrap(),
            85..=94 => {
                self.sync();
                synced = true;
            }
            95..=97 => {
                self.restart(false, step);
                synced = true;
            }
            98..=99 => {
                self.restart(true, step);
                synced = true;
            }
            _ => {}
        }
        // A roll syncs the segment it seals and starts one whose header is synced: the
        // state before this step is durable, up to the new segment's header.
        // A roll seals (and syncs) the old segment with whatever of this step's records
        // went before it: which part of the step is durable is not known here, so a step
        // that rolled ends with a sync. (A roll in a sync is followed by that sync anyway.)
        // Crashes that lose a new segment's checkpoint are tested in multi_log.rs.
        let (path, _) = self.log().write_position();
        if path != before_path && !synced {
            self.sync();
        }
        let log = self.log.as_ref().unwrap();
        assert_matches(log, &self.model, &format!("step {step}"));
    }

    fn sync(&mut self) {
        self.log().sync().unwrap();
        let (path, offset) = self.log().write_position();
        self.durable = Durable {
            model: self.model.clone(),
            path,
            offset,
        };
    }

    /// Reopens the log; with `crash`, first loses every write since the last durable point.
    fn restart(&mut self, crash: bool, step: usize) {
        let (path, _) = self.log().write_position();
        drop(self.log.take());
        if crash {
            assert_eq!(
                path, self.durable.path,
                "step {step}: durable point behind a roll"
            );
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let len = file.metadata().unwrap().len();
            let zeroes = vec![0u8; (len - self.durable.offset) as usize];
            file.write_all_at(&zeroes, self.durable.offset).unwrap();
            self.model = self.durable.model.clone();
        }
        let log = MultiLog::open(self.dir.path(), self.options.clone())
            .unwrap_or_else(|e| panic!("step {step}: reopen (crash {crash}): {e}"));
        assert_matches(&log, &self.model, &format!("step {step}: after reopen"));
        self.log = Some(log);
        self.sync();
    }
}

fn run(seed: u64) {
    // Odd seeds move groups that pin the oldest segment forward; even ones never do.
    let options = if seed % 2 == 1 {
        rewrite_options()
    } else {
        small_options()
    };
    eprintln!(
        "multi_model seed {seed} (moving groups forward: {})",
        seed % 2 == 1
    );
    let dir = test_dir();
    let log = MultiLog::open(dir.path(), options.clone()).unwrap();
    let (path, offset) = log.write_position();
    let mut h = Harness {
        dir,
        options,
        log: Some(log),
        model: Model::new(),
        durable: Durable {
            model: Model::new(),
            path,
            offset,
        },
        rng: Rng(seed | 1),
    };
    let mut max_segments = 0;
    for step in 0..STEPS {
        h.step(step);
        max_segments = max_segments.max(h.log().segment_count());
    }
    h.restart(false, STEPS);
    let first_kept = segment_files(h.dir.path())[0].clone();
    eprintln!(
        "seed {seed}: at most {max_segments} segments held, first kept {}, groups {}",
        first_kept.display(),
        h.model.len()
    );
    assert!(
        max_segments > 1,
        "seed {seed}: the log never rolled a segment"
    );
    assert!(
        !first_kept.ends_with(format!("{:020}.wal", 1)),
        "seed {seed}: no segment was ever freed"
    );
}

#[test]
fn interleaved_groups_match_the_model_across_restarts_and_crashes() {
    if let Ok(seed) = std::env::var("MULTI_LOG_MODEL_SEED") {
        run(seed.parse().expect("MULTI_LOG_MODEL_SEED is a u64"));
        return;
    }
    let seeds: u64 = std::env::var("MULTI_LOG_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS);
    for i in 0..seeds {
        run(0x6d75_6c74_0000 + i);
    }
}
