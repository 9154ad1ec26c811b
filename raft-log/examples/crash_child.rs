//! Helper for the crash test (`tests/crash.rs`): appends and syncs in a loop, printing each
//! synced index, until the parent kills it.
//!
//! Usage: `crash_child DIR SEED`. Entry contents are a pure function of the index
//! (`expected_entry`), so the parent can verify them after a crash.

use std::io::Write;

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, LogStore, SnapshotMeta};
use raft_log::{Log, Options};

/// The entry the child writes at `index`; the parent checks against the same function.
fn expected_entry(index: u64) -> Entry {
    let len = (index.wrapping_mul(7919) % 700) as usize;
    let data: Vec<u8> = (0..len).map(|i| (index as usize + i) as u8).collect();
    Entry {
        index,
        term: 1 + index / 1000,
        payload: EntryPayload::Command(Bytes::from(data)),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("DIR");
    let mut seed: u64 = args.next().expect("SEED").parse().expect("SEED is a number");
    let mut next_random = move || {
        // xorshift64*: deterministic per seed, and no dependency for a helper binary.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let options = Options {
        segment_bytes: 64 << 10,
        ..Options::default()
    };
    let mut log = Log::open(&dir, options).expect("open");
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    loop {
        let next = log.last_index() + 1;
        let batch = 1 + next_random() % 32;
        let entries: Vec<Entry> = (next..next + batch).map(expected_entry).collect();
        log.append(&entries).expect("append");
        log.sync().expect("sync");
        writeln!(out, "{}", log.last_index()).expect("stdout");
        out.flush().expect("stdout");
        if next_random() % 64 == 0 && log.last_index() > 200 {
            let index = log.last_index() - 100;
            let meta = SnapshotMeta {
                index,
                term: log.term(index).expect("held"),
                membership: Default::default(),
            };
            log.compact(meta).expect("compact");
        }
    }
}
