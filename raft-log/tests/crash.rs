//! Crash test with real processes: a child appends and syncs in a loop, printing each synced
//! index; the parent SIGKILLs it at seeded random moments, reopens the log and checks that
//! every entry reported synced is there and intact and that nothing after it is garbage.
//! The child also compacts now and then, and syncs half the time through a `SyncHandle` (as
//! raft-node does), so kills also land between a compaction and the sync that makes it
//! durable, and between that sync and the roll or compaction that frees its files.
//!
//! The child is this same test binary, re-executed with `CHILD_DIR_VAR` set, running the
//! `crash_child` test (a no-op otherwise); see [`common::child`].

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::child::Child;
use common::Rng;
use raft_core::{Entry, EntryPayload, HardState, LogStore, SnapshotMeta};
use raft_log::{Log, Options};

const CHILD_DIR_VAR: &str = "RAFT_LOG_CRASH_CHILD_DIR";
const CHILD_SEED_VAR: &str = "RAFT_LOG_CRASH_CHILD_SEED";
const KILLS: u64 = 200;
/// How long the parent waits for one line of the child before it fails the test.
const LINE_WAIT: Duration = Duration::from_secs(60);

/// The entry the child writes at `index`; the parent checks against the same function.
fn expected_entry(index: u64) -> Entry {
    let len = (index.wrapping_mul(7919) % 700) as usize;
    Entry {
        index,
        term: 1 + index / 1000,
        payload: EntryPayload::Command(Bytes::from(
            (0..len)
                .map(|i| (index as usize + i) as u8)
                .collect::<Vec<u8>>(),
        )),
    }
}

fn options() -> Options {
    Options {
        segment_bytes: 64 << 10,
        ..Options::default()
    }
}

#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_VAR).unwrap().parse().unwrap();
    let mut rng = Rng(seed | 1);
    let mut log = Log::open(&dir, options()).expect("child open");
    // raft-node's way: syncs through a handle (its sync thread), so compacted files are
    // retired by a later compaction or segment roll rather than by `Log::sync`.
    let handle = log.sync_handle();
    let mut out = std::io::stdout().lock();
    loop {
        let next = log.last_index() + 1;
        let batch = 1 + rng.next() % 32;
        let entries: Vec<Entry> = (next..next + batch).map(expected_entry).collect();
        log.append(&entries).expect("append");
        let last = log.last_index();
        log.set_hard_state(HardState {
            term: log.term(last).unwrap(),
            vote: Some(1),
            commit: last,
        })
        .expect("hard state");
        if rng.next() % 2 == 0 {
            handle.sync().expect("sync");
        } else {
            log.sync().expect("sync");
        }
        std::io::Write::write_all(&mut out, format!("synced {last}\n").as_bytes()).expect("stdout");
        std::io::Write::flush(&mut out).expect("stdout");
        if rng.next() % 16 == 0 && last > 300 {
            let index = last - 200;
            let term = log.term(index).expect("held");
            log.compact(SnapshotMeta {
                index,
                term,
                membership: Default::default(),
            })
            .expect("compact");
        }
    }
}

/// The synced index a line of the child reports, if it is one of its reports.
fn synced_index(line: &str) -> Option<u64> {
    line.trim().strip_prefix("synced ")?.parse().ok()
}

fn verify(dir: &Path, synced: u64) -> u64 {
    let log = Log::open(dir, options()).unwrap_or_else(|e| panic!("reopen after kill: {e}"));
    let (first, last) = (log.first_index(), log.last_index());
    assert!(
        last >= synced,
        "synced index {synced} lost: log ends at {last}"
    );
    let meta = log.snapshot_meta();
    assert_eq!(log.term(meta.index), Ok(meta.term));
    if meta.index > 0 {
        assert_eq!(meta.term, expected_entry(meta.index).term);
    }
    for index in first..=last {
        let got = log.entries(index, index + 1, usize::MAX).unwrap().remove(0);
        assert!(
            got == expected_entry(index),
            "entry {index} is garbage after a crash"
        );
    }
    let hs = log.hard_state();
    assert!(
        hs.commit >= synced && hs.commit <= last,
        "commit {} vs synced {synced}, last {last}",
        hs.commit
    );
    last
}

#[test]
fn sigkill_at_random_moments_loses_no_synced_entry() {
    if std::env::var(CHILD_DIR_VAR).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5eed_1234);
    let mut synced = 0u64;
    let mut kills = 0;
    for round in 0..KILLS {
        let mut child = Child::spawn(
            "crash_child",
            &[
                (CHILD_DIR_VAR, dir.path().display().to_string()),
                (CHILD_SEED_VAR, rng.next().to_string()),
            ],
        );
        let wanted = 1 + rng.next() % 8;
        let mut seen = 0;
        while seen < wanted {
            if let Some(n) = synced_index(&child.next_line(LINE_WAIT, round)) {
                synced = synced.max(n);
                seen += 1;
            }
        }
        // Kill between syncs or in the middle of one, at a random moment.
        let delay = Duration::from_micros(rng.next() % 400);
        for line in child.kill_after(delay) {
            if let Some(n) = synced_index(&line) {
                synced = synced.max(n);
            }
        }
        kills += 1;
        let last = verify(dir.path(), synced);
        assert!(last >= synced);
    }
    eprintln!("crash test: {kills} SIGKILLs, log reached index {synced}");
    assert_eq!(kills, KILLS);
}
