//! Batches that straddle segments: the batch encoder and the write path's bookkeeping
//! (which records fit a segment, their offsets, the term runs) against the entries
//! themselves, with terms that change inside a batch, records laid out whole and records
//! written from the entries' own bytes, and segments reused after compaction.

mod common;

use bytes::Bytes;
use proptest::prelude::*;
use raft_core::{Entry, EntryPayload, LogStore, SnapshotMeta};
use raft_log::format::VECTORED_MIN_BYTES;
use raft_log::{Log, Options};

fn options() -> Options {
    Options {
        segment_bytes: 16 * 1024,
        ..Options::default()
    }
}

/// One entry of a batch: its term step from the previous entry and its payload's size.
/// Sizes from 0 to a few hundred bytes are laid out in the batch buffer; from
/// `VECTORED_MIN_BYTES` up they are written from the entry's own bytes.
fn arb_step() -> impl Strategy<Value = (u64, usize)> {
    (
        prop_oneof![8 => Just(0u64), 1 => 1..3u64],
        prop_oneof![
            6 => 0..300usize,
            1 => VECTORED_MIN_BYTES..VECTORED_MIN_BYTES + 3000,
        ],
    )
}

fn command(index: u64, len: usize) -> EntryPayload {
    match index % 11 {
        0 => EntryPayload::Noop,
        _ => EntryPayload::Command(Bytes::from(
            (0..len)
                .map(|i| (index as usize * 13 + i) as u8)
                .collect::<Vec<u8>>(),
        )),
    }
}

fn check(log: &Log, expected: &[Entry]) {
    let first = log.first_index();
    let held: Vec<&Entry> = expected.iter().filter(|e| e.index >= first).collect();
    assert_eq!(log.last_index(), expected.last().map_or(0, |e| e.index));
    for e in &held {
        assert_eq!(log.term(e.index), Ok(e.term), "term at {}", e.index);
    }
    if let Some(low) = held.first() {
        let got = log
            .entries(low.index, log.last_index() + 1, usize::MAX)
            .unwrap();
        assert_eq!(got.len(), held.len());
        for (g, e) in got.iter().zip(&held) {
            assert!(g == *e, "entry {} differs", e.index);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn batches_across_segments_read_back_as_appended(
        batches in proptest::collection::vec(proptest::collection::vec(arb_step(), 1..40), 1..12),
        compact_every in 2..5usize,
    ) {
        let dir = common::test_dir();
        let mut log = Log::open(dir.path(), options()).unwrap();
        let mut expected: Vec<Entry> = Vec::new();
        let mut term = 1;
        for (b, steps) in batches.iter().enumerate() {
            let next = log.last_index() + 1;
            let batch: Vec<Entry> = steps
                .iter()
                .enumerate()
                .map(|(i, &(step, len))| {
                    term += step;
                    let index = next + i as u64;
                    Entry { index, term, payload: command(index, len) }
                })
                .collect();
            log.append(&batch).unwrap();
            expected.extend(batch);
            log.sync().unwrap();
            check(&log, &expected);
            // Compaction frees segments, which later batches reuse.
            if b % compact_every == compact_every - 1 && log.last_index() > 8 {
                let index = log.last_index() - 8;
                let meta = SnapshotMeta {
                    index,
                    term: log.term(index).unwrap(),
                    membership: Default::default(),
                };
                log.compact(meta).unwrap();
                check(&log, &expected);
            }
        }
        drop(log);
        let log = Log::open(dir.path(), options()).unwrap();
        check(&log, &expected);
    }
}
