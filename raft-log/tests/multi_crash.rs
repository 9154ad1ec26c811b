//! Crash test of the multi-group log with real processes: a child writes interleaved
//! entries of many groups, sets their hard states, compacts some, and syncs the whole batch
//! at once, printing after each sync every group's last index and commit; the parent SIGKILLs it
//! at seeded random moments, reopens the log and checks that every group holds everything
//! reported synced, intact, and nothing after it that is not its own.
//!
//! The child is this same test binary, re-executed with `CHILD_DIR_VAR` set, running the
//! `multi_crash_child` test (a no-op otherwise); see [`common::child`].

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::child::Child;
use common::Rng;
use raft_core::{Entry, EntryPayload, HardState, SnapshotMeta};
use raft_log::{MultiLog, MultiOptions};

const CHILD_DIR_VAR: &str = "RAFT_MULTI_LOG_CRASH_CHILD_DIR";
const CHILD_SEED_VAR: &str = "RAFT_MULTI_LOG_CRASH_CHILD_SEED";
const KILLS: u64 = 60;
const GROUPS: u64 = 64;
/// Lines the parent waits for before a kill, at most, and seconds it waits for one line.
const LINES_MAX: u64 = 6;
const LINE_WAIT: Duration = Duration::from_secs(60);

/// The entry the child writes for `group` at `index`; the parent checks against it.
fn expected_entry(group: u64, index: u64) -> Entry {
    let len = ((index * 7919 + group * 104_729) % 300) as usize;
    Entry {
        index,
        term: 1 + index / 500,
        payload: EntryPayload::Command(Bytes::from(
            (0..len)
                .map(|i| (group as usize * 13 + index as usize + i) as u8)
                .collect::<Vec<u8>>(),
        )),
    }
}

fn options() -> MultiOptions {
    MultiOptions {
        segment_bytes: 128 << 10,
        frame_bytes_max: 32 << 10,
        entry_bytes_max: 4 << 10,
        groups_max: GROUPS as usize,
        // Small enough that kills also land around groups being moved forward.
        segments_held_max: 4,
        rewrite_entries_max: 2000,
    }
}

#[test]
fn multi_crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_VAR).unwrap().parse().unwrap();
    let mut rng = Rng(seed | 1);
    let mut log = MultiLog::open(&dir, options()).expect("child open");
    for g in 1..=GROUPS {
        if !log.has_group(g) {
            log.create_group(g, SnapshotMeta::default())
                .expect("create");
        }
    }
    let mut out = std::io::stdout().lock();
    // Bounded: the parent kills the child long before this many batches.
    for _ in 0..1_000_000 {
        // One group-commit batch: a few groups each get some entries and a hard state.
        for _ in 0..1 + rng.below(8) {
            let g = 1 + rng.below(GROUPS);
            let next = log.last_index(g).unwrap() + 1;
            let entries: Vec<Entry> = (next..next + 1 + rng.below(6))
                .map(|i| expected_entry(g, i))
                .collect();
            log.append(g, &entries).expect("append");
            let last = log.last_index(g).unwrap();
            log.set_hard_state(
                g,
                HardState {
                    term: expected_entry(g, last).term,
                    vote: Some(1),
                    commit: last,
                },
            )
            .expect("hard state");
            if rng.below(8) == 0 && last > 40 {
                let index = last - 20;
                log.compact(
                    g,
                    SnapshotMeta {
                        index,
                        term: expected_entry(g, index).term,
                        membership: Default::default(),
                    },
                )
                .expect("compact");
            }
        }
        log.sync().expect("sync");
        // Last index and commit of every group. (A group this child did not touch may hold
        // entries a killed child wrote without syncing, which survived in the page cache: its
        // last index is then past its commit, so the two are checked apart.)
        let lasts: Vec<String> = (1..=GROUPS)
            .map(|g| {
                let commit = log.hard_state(g).unwrap().commit;
                format!("{}:{commit}", log.last_index(g).unwrap())
            })
            .collect();
        std::io::Write::write_all(&mut out, format!("synced {}\n", lasts.join(" ")).as_bytes())
            .expect("stdout");
        std::io::Write::flush(&mut out).expect("stdout");
    }
}

/// Folds a `synced last:commit ...` line into the per-group synced last indexes and commits.
fn note_synced(line: &str, synced: &mut [(u64, u64)]) -> bool {
    let Some(rest) = line.trim().strip_prefix("synced ") else {
        return false;
    };
    for (s, pair) in synced.iter_mut().zip(rest.split(' ')) {
        // A line cut by the kill may end in a partial pair: ignore it.
        let Some((last, commit)) = pair.split_once(':') else {
            continue;
        };
        let (Ok(last), Ok(commit)) = (last.parse::<u64>(), commit.parse::<u64>()) else {
            continue;
        };
        s.0 = s.0.max(last);
        s.1 = s.1.max(commit);
    }
    true
}

fn verify(dir: &Path, synced: &[(u64, u64)], round: u64) {
    let log = MultiLog::open(dir, options())
        .unwrap_or_else(|e| panic!("round {round}: reopen after kill: {e}"));
    for g in 1..=GROUPS {
        if !log.has_group(g) {
            // Created but never synced before the first kill.
            assert_eq!(synced[g as usize - 1].0, 0, "round {round}: group {g} lost");
            continue;
        }
        let (first, last) = (log.first_index(g).unwrap(), log.last_index(g).unwrap());
        let (want, want_commit) = synced[g as usize - 1];
        assert!(
            last >= want,
            "round {round}: group {g} synced up to {want}, holds up to {last}"
        );
        let meta = log.snapshot_meta(g).unwrap();
        assert_eq!(meta.index + 1, first);
        if meta.index > 0 {
            assert_eq!(meta.term, expected_entry(g, meta.index).term);
        }
        if last >= first {
            let got = log.entries(g, first, last + 1, usize::MAX).unwrap();
            for e in &got {
                assert!(
                    *e == expected_entry(g, e.index),
                    "round {round}: group {g} entry {} is garbage after a crash",
                    e.index
                );
            }
        }
        let hs = log.hard_state(g).unwrap();
        assert!(
            hs.commit >= want_commit && hs.commit <= last,
            "round {round}: group {g} commit {} vs synced {want_commit}, last {last}",
            hs.commit
        );
    }
}

#[test]
fn sigkill_mid_batch_loses_no_synced_entry_of_any_group() {
    if std::env::var(CHILD_DIR_VAR).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x6d75_6c74_6b11);
    let mut synced = vec![(0u64, 0u64); GROUPS as usize];
    for round in 0..KILLS {
        let mut child = Child::spawn(
            "multi_crash_child",
            &[
                (CHILD_DIR_VAR, dir.path().display().to_string()),
                (CHILD_SEED_VAR, rng.next().to_string()),
            ],
        );
        let wanted = 1 + rng.below(LINES_MAX);
        let mut seen = 0;
        while seen < wanted {
            if note_synced(&child.next_line(LINE_WAIT, round), &mut synced) {
                seen += 1;
            }
        }
        // Kill between syncs or in the middle of a batch, at a random moment.
        let delay = Duration::from_micros(rng.below(3000));
        for line in child.kill_after(delay) {
            note_synced(&line, &mut synced);
        }
        verify(dir.path(), &synced, round);
    }
    let total: u64 = synced.iter().map(|s| s.0).sum();
    eprintln!("multi crash test: {KILLS} SIGKILLs, {total} entries synced over {GROUPS} groups");
    assert!(total > KILLS, "the child made no progress");
}
