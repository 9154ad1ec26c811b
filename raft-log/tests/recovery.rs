//! Recovery from torn tails and bit flips, locking, unknown files, size limits, zero-copy
//! reads and the state slots.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use common::{all_entries, entry, segment_files, small_options};
use raft_core::{Entry, EntryPayload, HardState, LogStore, SnapshotMeta};
use raft_log::format::{read_batch, SegmentHeader, SEGMENT_HEADER_BYTES};
use raft_log::{Log, LogError, Options};

/// Writes `count` entries of about `len` bytes in batches of 4, syncing each batch.
fn fill(dir: &Path, count: u64, len: usize) -> Vec<Entry> {
    let mut log = Log::open(dir, small_options()).unwrap();
    let entries: Vec<Entry> = (1..=count).map(|i| entry(i, 1 + i / 10, len)).collect();
    for batch in entries.chunks(4) {
        log.append(batch).unwrap();
        log.sync().unwrap();
    }
    entries
}

/// End offsets (padding included) of the batches in a segment image.
fn record_ends(image: &[u8]) -> Vec<usize> {
    batches(image).into_iter().map(|b| b.end).collect()
}

/// One batch of a segment image.
struct Batch {
    /// Where its header starts.
    start: usize,
    /// Where its bytes end, padding excluded.
    content_end: usize,
    /// Where its padding ends.
    end: usize,
    /// Entries it holds.
    count: usize,
}

fn batches(image: &[u8]) -> Vec<Batch> {
    let mut found = Vec::new();
    let key = SegmentHeader::decode(image).unwrap().batch_key();
    let mut at = SEGMENT_HEADER_BYTES;
    let (mut offsets, mut runs) = (Vec::new(), Vec::new());
    while let Ok(frame) = read_batch(image, at, 1 << 20, key, &mut offsets, &mut runs) {
        let total_len = u32::from_le_bytes(image[at..at + 4].try_into().unwrap()) as usize;
        found.push(Batch {
            start: at,
            content_end: at + total_len,
            end: frame.end_offset,
            count: frame.count as usize,
        });
        at = frame.end_offset;
    }
    found
}

fn assert_prefix(log: &Log, written: &[Entry]) {
    let got = all_entries(log);
    assert!(got.len() <= written.len());
    assert!(
        got == written[..got.len()],
        "recovered entries are not a prefix of the written ones"
    );
}

#[test]
fn every_truncation_point_of_the_tail_recovers_a_prefix() {
    let dir = common::test_dir();
    let written = fill(dir.path(), 80, 100);
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 2, "the test wants sealed segments too");
    let last = segments.last().unwrap().clone();
    let image = fs::read(&last).unwrap();
    let batches = batches(&image);
    let written_end = batches.last().unwrap().end;
    let held_in_last: usize = batches.iter().map(|b| b.count).sum();
    let held_before_last: usize = {
        let log = Log::open(dir.path(), small_options()).unwrap();
        log.last_index() as usize - held_in_last
    };
    let file = OpenOptions::new().write(true).open(&last).unwrap();
    for cut in SEGMENT_HEADER_BYTES..=written_end {
        // A torn write: everything from `cut` on never reached the disk.
        file.write_all_at(&image[..written_end], 0).unwrap();
        file.write_all_at(&vec![0u8; written_end - cut], cut as u64)
            .unwrap();
        let log =
            Log::open(dir.path(), small_options()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        // Padding is zero anyway, and so may be a batch's last bytes: a batch is whole when
        // zeroing from `cut` changes none of its bytes, and is dropped whole otherwise.
        let whole: usize = batches
            .iter()
            .filter(|b| {
                image[cut.min(b.content_end)..b.content_end]
                    .iter()
                    .all(|&x| x == 0)
            })
            .map(|b| b.count)
            .sum();
        assert_eq!(
            log.last_index() as usize,
            held_before_last + whole,
            "cut at {cut}"
        );
        assert_prefix(&log, &written);
    }
    // A file cut short (not just zeroed) is a torn tail too.
    for cut in (SEGMENT_HEADER_BYTES..=written_end).step_by(37) {
        file.set_len(cut as u64).unwrap();
        let log =
            Log::open(dir.path(), small_options()).unwrap_or_else(|e| panic!("length {cut}: {e}"));
        assert_prefix(&log, &written);
        drop(log);
        file.set_len(image.len() as u64).unwrap();
        file.write_all_at(&image, 0).unwrap();
    }
}

#[test]
fn every_bit_flip_in_the_tail_gives_a_prefix_or_a_corruption_error() {
    let dir = common::test_dir();
    let written = fill(dir.path(), 40, 60);
    let last = segment_files(dir.path()).last().unwrap().clone();
    let image = fs::read(&last).unwrap();
    let ends = record_ends(&image);
    assert!(ends.len() >= 4);
    // The last three records and 64 bytes of the zeroes after them.
    let from = ends[ends.len() - 4];
    let to = ends[ends.len() - 1] + 64;
    let last_record_start = ends[ends.len() - 2];
    let file = OpenOptions::new().write(true).open(&last).unwrap();
    let (mut prefixes, mut corrupt) = (0, 0);
    for bit in from * 8..to * 8 {
        let mut bad = image.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        file.write_all_at(&bad, 0).unwrap();
        match Log::open(dir.path(), small_options()) {
            Ok(log) => {
                assert_prefix(&log, &written);
                prefixes += 1;
            }
            Err(LogError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, last);
                assert!(
                    offset as usize >= from && (offset as usize) < to,
                    "offset {offset}"
                );
                assert!(
                    bit / 8 < last_record_start,
                    "a flip in the last record is a torn tail"
                );
                corrupt += 1;
            }
            Err(e) => panic!("bit {bit}: unexpected error {e}"),
        }
    }
    file.write_all_at(&image, 0).unwrap();
    assert!(
        prefixes > 0 && corrupt > 0,
        "{prefixes} prefixes, {corrupt} corruptions"
    );
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_prefix(&log, &written);
}

#[test]
fn a_bit_flip_in_a_sealed_segment_is_corruption_and_deletes_nothing() {
    let dir = common::test_dir();
    fill(dir.path(), 80, 100);
    let segments = segment_files(dir.path());
    let sealed = segments[0].clone();
    let image = fs::read(&sealed).unwrap();
    let written_end = *record_ends(&image).last().unwrap();
    let file = OpenOptions::new().write(true).open(&sealed).unwrap();
    // Every byte of the written region, one bit each (all eight would take long in debug).
    for byte in 0..(written_end + 16).min(image.len()) {
        let mut bad = image.clone();
        bad[byte] ^= 1 << (byte % 8);
        file.write_all_at(&bad, 0).unwrap();
        match Log::open(dir.path(), small_options()) {
            Err(LogError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, sealed, "byte {byte}");
                assert!(offset as usize <= byte, "byte {byte} reported at {offset}");
            }
            Ok(_) => panic!("flip at byte {byte} of a sealed segment went unnoticed"),
            Err(e) => panic!("byte {byte}: unexpected error {e}"),
        }
        assert_eq!(segment_files(dir.path()), segments, "a file was deleted");
    }
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = common::test_dir();
    let _log = Log::open(dir.path(), small_options()).unwrap();
    assert!(matches!(
        Log::open(dir.path(), small_options()),
        Err(LogError::Locked { .. })
    ));
}

#[test]
fn unknown_files_are_reported_and_kept() {
    let dir = common::test_dir();
    fill(dir.path(), 5, 10);
    let stray = dir.path().join("notes.txt");
    fs::write(&stray, b"hello").unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!(log.unknown_files(), std::slice::from_ref(&stray));
    assert!(stray.exists());
}

#[test]
fn oversized_entries_are_refused_and_big_ones_get_their_own_segment() {
    let dir = common::test_dir();
    let options = raft_log::Options {
        segment_bytes: 4096,
        entry_bytes_max: 20_000,
        ..Default::default()
    };
    let mut log = Log::open(dir.path(), options.clone()).unwrap();
    let big = Entry {
        index: 1,
        term: 1,
        payload: EntryPayload::Command(vec![7u8; 15_000].into()),
    };
    let huge = Entry {
        index: 2,
        term: 1,
        payload: EntryPayload::Command(vec![7u8; 25_000].into()),
    };
    log.append(std::slice::from_ref(&big)).unwrap();
    let err = log.append(std::slice::from_ref(&huge)).unwrap_err();
    assert!(
        matches!(err, LogError::EntryTooLarge { index: 2, .. }),
        "{err}"
    );
    assert_eq!(log.last_index(), 1);
    log.append(&[entry(2, 1, 10)]).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = Log::open(dir.path(), options).unwrap();
    assert_eq!(all_entries(&log), vec![big, entry(2, 1, 10)]);
    assert_eq!(log.segment_count(), 2);
}

#[test]
fn command_payloads_are_slices_of_the_mapping() {
    let dir = common::test_dir();
    fill(dir.path(), 10, 200);
    let log = Log::open(dir.path(), small_options()).unwrap();
    let command = |log: &Log| {
        (1..=10)
            .find_map(
                |i| match log.entries(i, i + 1, usize::MAX).unwrap().remove(0).payload {
                    EntryPayload::Command(b) => Some(b),
                    _ => None,
                },
            )
            .unwrap()
    };
    let (a, b) = (command(&log), command(&log));
    assert_eq!(
        a.as_ptr(),
        b.as_ptr(),
        "two reads share the mapped bytes instead of copying"
    );
}

#[test]
fn a_torn_state_slot_falls_back_to_the_previous_hard_state() {
    let dir = common::test_dir();
    let first = HardState {
        term: 3,
        vote: Some(2),
        commit: 0,
    };
    let second = HardState {
        term: 4,
        vote: Some(3),
        commit: 0,
    };
    let mut log = Log::open(dir.path(), small_options()).unwrap();
    log.set_hard_state(first).unwrap();
    log.sync().unwrap();
    let before = fs::read(dir.path().join("state")).unwrap();
    log.set_hard_state(second).unwrap();
    drop(log);
    let after = fs::read(dir.path().join("state")).unwrap();
    assert_eq!(
        Log::open(dir.path(), small_options()).unwrap().hard_state(),
        second
    );
    // Tear the newest slot: keep only its first 20 bytes written.
    let changed = (0..after.len()).find(|&i| before[i] != after[i]).unwrap();
    let slot_start = changed - changed % (16 * 1024);
    let mut torn = after.clone();
    torn[slot_start + 20..slot_start + 16 * 1024]
        .copy_from_slice(&before[slot_start + 20..slot_start + 16 * 1024]);
    fs::write(dir.path().join("state"), &torn).unwrap();
    assert_eq!(
        Log::open(dir.path(), small_options()).unwrap().hard_state(),
        first
    );
}

#[test]
fn unsynced_updates_never_overwrite_the_durable_slot() {
    let dir = common::test_dir();
    let mut log = Log::open(dir.path(), small_options()).unwrap();
    let durable = HardState {
        term: 7,
        vote: Some(1),
        commit: 0,
    };
    log.set_hard_state(durable).unwrap();
    log.sync().unwrap();
    let image = fs::read(dir.path().join("state")).unwrap();
    let durable_slot = (0..2)
        .find(|s| {
            raft_log::format::decode_state_slot(&image[s * 16 * 1024..])
                .is_some_and(|d| d.1.hard_state == durable)
        })
        .unwrap();
    for step in 0..40u64 {
        // Unforced (commit-only) writes with syncs that force nothing of the state, so must
        // not make their slot "durable"; then forced (term) writes without a sync.
        let term = if step < 30 { 7 } else { step };
        log.set_hard_state(HardState {
            term,
            vote: Some(1),
            commit: step + 1,
        })
        .unwrap();
        if step % 2 == 0 && step < 30 {
            let next = log.last_index() + 1;
            log.append(&[common::entry(next, 1, 10)]).unwrap();
            log.sync().unwrap();
        }
        let now = fs::read(dir.path().join("state")).unwrap();
        let range = durable_slot * 16 * 1024..(durable_slot + 1) * 16 * 1024;
        assert_eq!(
            now[range.clone()],
            image[range],
            "the durable slot was overwritten before a sync"
        );
    }
}

#[test]
fn compaction_deletes_whole_segments_and_survives_reopen() {
    let dir = common::test_dir();
    let written = fill(dir.path(), 60, 300);
    let mut log = Log::open(dir.path(), small_options()).unwrap();
    let before = log.segment_count();
    let meta = SnapshotMeta {
        index: 45,
        term: log.term(45).unwrap(),
        membership: raft_core::Membership::new_voters([1, 2, 3]),
    };
    log.compact(meta.clone()).unwrap();
    assert!(log.segment_count() < before);
    assert_eq!(log.first_index(), 46);
    assert_eq!(log.term(45), Ok(meta.term));
    drop(log);
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!(log.snapshot_meta(), meta);
    assert_eq!(all_entries(&log), written[45..]);
}

/// Compaction does not sync, and leaves every file in place until its state record is
/// durable: a crash that loses that record (here: the state file put back as it was, which
/// is all a power loss can do to an unsynced write) finds the old snapshot and every entry
/// after it, with no gap. Once synced, the covered files go and a reopen agrees.
#[test]
fn compaction_frees_no_file_before_its_state_is_durable() {
    let dir = common::test_dir();
    let written = fill(dir.path(), 60, 300);
    let syncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = syncs.clone();
    let options = Options {
        fault_hook: Some(Arc::new(move |p| {
            if p == raft_log::FaultPoint::Sync {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        })),
        ..small_options()
    };
    let mut log = Log::open(dir.path(), options).unwrap();
    log.sync().unwrap();
    let files_before = common::segment_files(dir.path());
    let state_before = std::fs::read(dir.path().join("state")).unwrap();
    let syncs_before = syncs.load(std::sync::atomic::Ordering::Relaxed);
    let meta = SnapshotMeta {
        index: 45,
        term: log.term(45).unwrap(),
        membership: raft_core::Membership::new_voters([1, 2, 3]),
    };
    log.compact(meta.clone()).unwrap();
    assert_eq!(
        syncs.load(std::sync::atomic::Ordering::Relaxed),
        syncs_before,
        "compaction syncs nothing"
    );
    assert_eq!(log.first_index(), 46);
    assert!(log.retiring_count() > 0);
    assert_eq!(common::segment_files(dir.path()), files_before);
    drop(log);

    // The compaction's state write lost: the old state, every segment, no gap.
    let state_after = std::fs::read(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("state"), &state_before).unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!(log.snapshot_meta().index, 0);
    assert_eq!(all_entries(&log), written);
    drop(log);

    // The compaction's state write kept (a crash after it reached the disk, before the
    // files went): open drops the covered segments itself.
    std::fs::write(dir.path().join("state"), &state_after).unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!(log.snapshot_meta(), meta);
    assert_eq!(all_entries(&log), written[45..]);
    assert!(common::segment_files(dir.path()).len() < files_before.len());
    drop(log);

    // The normal course: the next sync makes it durable and retires the files.
    let mut log = Log::open(dir.path(), small_options()).unwrap();
    let index = 50;
    let meta = SnapshotMeta {
        index,
        term: log.term(index).unwrap(),
        membership: raft_core::Membership::new_voters([1, 2, 3]),
    };
    let files = common::segment_files(dir.path()).len();
    log.compact(meta.clone()).unwrap();
    log.sync().unwrap();
    assert_eq!(log.retiring_count(), 0);
    assert!(common::segment_files(dir.path()).len() <= files);
    drop(log);
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!(log.snapshot_meta(), meta);
    assert_eq!(all_entries(&log), written[50..]);
}

#[test]
fn sync_handle_syncs_from_another_thread() {
    let dir = common::test_dir();
    let mut log = Log::open(dir.path(), small_options()).unwrap();
    let handle = log.sync_handle();
    let syncer = std::thread::spawn(move || {
        for _ in 0..50 {
            handle.sync().unwrap();
        }
    });
    for i in 1..=200 {
        log.append(&[entry(i, 1, 50)]).unwrap();
    }
    syncer.join().unwrap();
    log.sync_handle().sync().unwrap();
    assert!(log.sync_count() >= 1);
    drop(log);
    assert_eq!(
        Log::open(dir.path(), small_options()).unwrap().last_index(),
        200
    );
}

#[test]
fn spare_segments_are_used_and_a_leftover_spare_is_cleaned_up() {
    let dir = common::test_dir();
    let mut log = Log::open(dir.path(), small_options()).unwrap();
    for i in 1..=200 {
        log.append(&[entry(i, 1, 100)]).unwrap();
        if i % 20 == 0 {
            // Give the background thread a moment, so later rolls find a spare ready.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    log.sync().unwrap();
    assert!(log.segment_count() > 3);
    drop(log);
    // A spare left behind (the thread's work, or a crash in the middle of it) is ours.
    fs::write(dir.path().join("spare-7.tmp"), b"half made").unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert!(log.unknown_files().is_empty());
    assert!(!dir.path().join("spare-7.tmp").exists());
    assert_eq!(all_entries(&log).len(), 200);
    for seg in segment_files(dir.path()) {
        assert_eq!(fs::metadata(&seg).unwrap().len(), 4096, "{}", seg.display());
    }
}

#[test]
fn many_fast_rolls_keep_every_segment_named_by_its_header() {
    // Rolls faster than the spare thread can keep up with, then a check of every file.
    let dir = common::test_dir();
    let written: Vec<Entry> = (1..=1500).map(|i| entry(i, 1, 1500)).collect();
    let mut log = Log::open(dir.path(), small_options()).unwrap();
    for batch in written.chunks(3) {
        log.append(batch).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    for seg in segment_files(dir.path()) {
        let image = fs::read(&seg).unwrap();
        let header = raft_log::format::SegmentHeader::decode(&image).unwrap();
        let name: u64 = seg.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        assert_eq!(header.first_index, name, "{}", seg.display());
    }
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert!(all_entries(&log) == written);
}

#[test]
fn a_hole_before_valid_records_fails_open_unless_point_in_time_recovery_is_asked() {
    let dir = common::test_dir();
    let written = fill(dir.path(), 80, 100);
    let last = segment_files(dir.path()).last().unwrap().clone();
    let mut image = fs::read(&last).unwrap();
    // Zero one batch in the middle of the tail, as an out-of-order page writeback might.
    let found = batches(&image);
    let hole = &found[found.len() - 3];
    let (from, to) = (hole.start, hole.end);
    let lost: usize = found[found.len() - 3..].iter().map(|b| b.count).sum();
    image[from..to].fill(0);
    fs::write(&last, &image).unwrap();
    match Log::open(dir.path(), small_options()) {
        Err(LogError::Corrupt { path, offset, .. }) => {
            assert_eq!((path, offset as usize), (last.clone(), from))
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert_eq!(
        fs::read(&last).unwrap(),
        image,
        "a failed open changed nothing"
    );
    let options = raft_log::Options {
        recovery_point_in_time: true,
        ..small_options()
    };
    let log = Log::open(dir.path(), options).unwrap();
    assert_prefix(&log, &written);
    assert_eq!(log.last_index() as usize, written.len() - lost);
}

#[test]
fn the_log_moves_between_threads_and_sync_handles_are_shared() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync + Clone>() {}
    send::<Log>();
    send_sync::<raft_log::SyncHandle>();
}
