//! The batch as the unit of the format: a torn batch at the tail is dropped whole, a bit
//! flip inside a batch mid-log is corruption named by path and offset, a batch of several
//! terms round-trips, a batch bigger than a segment's room spans segments, and a truncation
//! inside a batch keeps the entries before it, across reopens and crashes.

mod common;

use std::fs;
use std::path::Path;

use common::{all_entries, entry, segment_files, small_options};
use raft_core::{Entry, LogStore};
use raft_log::format::{read_batch, BatchFrame, SegmentHeader, SEGMENT_HEADER_BYTES};
use raft_log::{Log, LogError};

/// A batch record's start, frame and term runs.
type Record = (usize, BatchFrame, Vec<(u64, u64)>);

/// Every batch record in a segment image, in file order.
fn records(image: &[u8]) -> Vec<Record> {
    let key = SegmentHeader::decode(image).unwrap().batch_key();
    let mut found = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    loop {
        let (mut offsets, mut runs) = (Vec::new(), Vec::new());
        match read_batch(image, at, 1 << 20, key, &mut offsets, &mut runs) {
            Ok(frame) => {
                found.push((at, frame, runs));
                at = frame.end_offset;
            }
            Err(_) => return found,
        }
    }
}

/// Appends `batches` batches of `per_batch` entries of `len` bytes, syncing each.
fn fill(dir: &Path, batches: u64, per_batch: u64, len: usize) -> Vec<Entry> {
    let mut log = Log::open(dir, small_options()).unwrap();
    let entries: Vec<Entry> = (1..=batches * per_batch)
        .map(|i| entry(i, 1, len))
        .collect();
    for batch in entries.chunks(per_batch as usize) {
        log.append(batch).unwrap();
        log.sync().unwrap();
    }
    entries
}

#[test]
fn a_torn_batch_at_the_tail_is_dropped_whole() {
    let dir = common::test_dir();
    let written = fill(dir.path(), 3, 6, 40);
    let path = segment_files(dir.path()).pop().unwrap();
    let image = fs::read(&path).unwrap();
    let found = records(&image);
    let (start, last, _) = found.last().unwrap().clone();
    assert_eq!(last.count, 6);
    let before_last = last.first_index - 1;
    // Tear the last batch at several points: each leaves its first bytes (some of its
    // entries whole), and none of its entries may survive.
    for keep in [
        8,
        30,
        (last.end_offset - start) / 2,
        last.end_offset - start - 8,
    ] {
        let mut torn = image.clone();
        torn[start + keep..last.end_offset].fill(0);
        fs::write(&path, &torn).unwrap();
        let log = Log::open(dir.path(), small_options()).unwrap();
        assert_eq!(log.last_index(), before_last, "kept {keep} bytes");
        assert!(all_entries(&log) == written[..before_last as usize]);
        drop(log);
        // The cut region was erased: a second open finds the same, with nothing to cut.
        let reopened = fs::read(&path).unwrap();
        assert!(reopened[start..].iter().all(|&b| b == 0));
    }
}

#[test]
fn a_bit_flip_inside_a_batch_mid_log_is_an_error_naming_path_and_offset() {
    let dir = common::test_dir();
    fill(dir.path(), 5, 4, 30);
    let path = segment_files(dir.path()).pop().unwrap();
    let image = fs::read(&path).unwrap();
    let found = records(&image);
    assert!(found.len() >= 3);
    let (start, frame, _) = found[1].clone();
    // In the header, the term runs, an entry's length and an entry's payload.
    for at in [
        start + 2,
        start + 26,
        start + 40,
        (start + frame.end_offset) / 2,
    ] {
        let mut bad = image.clone();
        bad[at] ^= 0x04;
        fs::write(&path, &bad).unwrap();
        match Log::open(dir.path(), small_options()) {
            Err(LogError::Corrupt {
                path: p, offset, ..
            }) => {
                assert_eq!((p, offset as usize), (path.clone(), start), "flip at {at}")
            }
            other => panic!("flip at {at}: expected corruption, got {other:?}"),
        }
        assert_eq!(
            fs::read(&path).unwrap(),
            bad,
            "a failed open changed nothing"
        );
    }
    let error = {
        let mut bad = image.clone();
        bad[start + 40] ^= 0x04;
        fs::write(&path, &bad).unwrap();
        Log::open(dir.path(), small_options()).unwrap_err()
    };
    let message = error.to_string();
    assert!(
        message.contains(&path.display().to_string())
            && message.contains(&format!("offset {start}")),
        "{message}"
    );
}

#[test]
fn a_batch_with_several_terms_round_trips() {
    let dir = common::test_dir();
    let terms = [1, 1, 2, 3, 3, 3, 5, 8, 8];
    let batch: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| entry(1 + i as u64, t, 50))
        .collect();
    {
        let mut log = Log::open(dir.path(), small_options()).unwrap();
        log.append(&batch).unwrap();
        log.sync().unwrap();
    }
    let path = segment_files(dir.path()).pop().unwrap();
    let found = records(&fs::read(&path).unwrap());
    assert_eq!(found.len(), 1, "one append, one batch");
    assert_eq!(found[0].2, vec![(1, 1), (3, 2), (4, 3), (7, 5), (8, 8)]);
    let mut log = Log::open(dir.path(), small_options()).unwrap();
    assert!(all_entries(&log) == batch);
    for e in &batch {
        assert_eq!(log.term(e.index), Ok(e.term), "term at {}", e.index);
    }
    // Appends continue the runs across reopen.
    let more = [entry(10, 8, 50), entry(11, 9, 50)];
    log.append(&more).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!(log.term(9), Ok(8));
    assert_eq!(log.term(10), Ok(8));
    assert_eq!(log.term(11), Ok(9));
    assert_eq!(all_entries(&log).len(), 11);
}

#[test]
fn a_batch_bigger_than_the_segment_room_spans_segments() {
    let dir = common::test_dir();
    let mut log = Log::open(dir.path(), small_options()).unwrap();
    let head: Vec<Entry> = (1..=5).map(|i| entry(i, 1, 100)).collect();
    log.append(&head).unwrap();
    // About 15 KiB in one append, with a term change in the middle, into 4 KiB segments of
    // which the first is partly used.
    let big: Vec<Entry> = (6..=140)
        .map(|i| entry(i, if i < 70 { 1 } else { 2 }, 100))
        .collect();
    log.append(&big).unwrap();
    log.sync().unwrap();
    let all: Vec<Entry> = head.iter().chain(&big).cloned().collect();
    assert!(all_entries(&log) == all);
    drop(log);
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 3, "{} segments", segments.len());
    // The first segment took the start of the batch: the batch was split, not moved.
    let first = records(&fs::read(&segments[0]).unwrap());
    assert_eq!(first.len(), 2);
    assert_eq!(first[1].1.first_index, 6);
    // Every segment holds whole batches of consecutive indexes.
    let mut next = 1;
    for path in &segments {
        let image = fs::read(path).unwrap();
        for (_, frame, _) in records(&image) {
            assert_eq!(frame.first_index, next, "{}", path.display());
            next += u64::from(frame.count);
        }
        let name_first = common::segment_first_index(path);
        assert_eq!(
            SegmentHeader::decode(&image).unwrap().first_index,
            name_first
        );
    }
    assert_eq!(next, 141);
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert!(all_entries(&log) == all);
    assert_eq!(log.term(69), Ok(1));
    assert_eq!(log.term(70), Ok(2));
}

#[test]
fn a_truncation_inside_a_batch_keeps_the_entries_before_it() {
    let dir = common::test_dir();
    let first: Vec<Entry> = (1..=10).map(|i| entry(i, 1, 60)).collect();
    let mut log = Log::open(dir.path(), small_options()).unwrap();
    log.append(&first).unwrap();
    log.sync().unwrap();
    let path = segment_files(dir.path()).pop().unwrap();
    let before = fs::read(&path).unwrap();
    let (_, batch, _) = records(&before)[0].clone();

    // A conflicting append at 6 truncates inside the batch.
    let second: Vec<Entry> = (6..=8).map(|i| entry(i, 2, 60)).collect();
    log.append(&second).unwrap();
    log.sync().unwrap();
    let mut expected: Vec<Entry> = first[..5].iter().chain(&second).cloned().collect();
    assert!(all_entries(&log) == expected);
    let after = fs::read(&path).unwrap();
    assert_eq!(
        after[..batch.end_offset],
        before[..batch.end_offset],
        "the batch holding the kept entries is not rewritten"
    );
    drop(log);
    let mut log = Log::open(dir.path(), small_options()).unwrap();
    assert!(all_entries(&log) == expected);
    assert_eq!(log.term(5), Ok(1));
    assert_eq!(log.term(6), Ok(2));

    // Inside the first batch again, past the truncation record and the batch after it.
    log.truncate_suffix(3).unwrap();
    expected.truncate(2);
    assert!(all_entries(&log) == expected);
    drop(log);
    let mut log = Log::open(dir.path(), small_options()).unwrap();
    assert!(all_entries(&log) == expected);
    // At a batch boundary: nothing is left, and appends go on.
    log.truncate_suffix(1).unwrap();
    assert_eq!(log.last_index(), 0);
    let third: Vec<Entry> = (1..=4).map(|i| entry(i, 3, 60)).collect();
    log.append(&third).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert!(all_entries(&log) == third);
}

#[test]
fn a_torn_truncation_record_leaves_the_batch_whole() {
    // `truncate_suffix` had not returned: the truncated entries may come back, but the ones
    // before the truncation point are never lost.
    let dir = common::test_dir();
    let first: Vec<Entry> = (1..=10).map(|i| entry(i, 1, 60)).collect();
    let mut log = Log::open(dir.path(), small_options()).unwrap();
    log.append(&first).unwrap();
    log.sync().unwrap();
    log.truncate_suffix(4).unwrap();
    drop(log);
    let path = segment_files(dir.path()).pop().unwrap();
    let image = fs::read(&path).unwrap();
    let found = records(&image);
    assert_eq!(found.len(), 2);
    let (at, truncation, _) = found[1].clone();
    assert_eq!((truncation.first_index, truncation.count), (4, 0));
    // Its non-zero bytes are the first 9 (length, CRC, the low byte of the index).
    for keep in [0, 4, 6, 8] {
        let mut torn = image.clone();
        torn[at + keep..truncation.end_offset].fill(0);
        fs::write(&path, &torn).unwrap();
        let log = Log::open(dir.path(), small_options()).unwrap();
        assert!(
            all_entries(&log) == first,
            "kept {keep} bytes of the record"
        );
    }
}
