//! Segment files freed by compaction are reused: their earlier records must never be read
//! as entries, whatever a crash leaves behind; sealed reused segments keep the corruption
//! check; segments whose bytes are still held by readers are not reused; segments of an
//! older format version are refused.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{all_entries, entry, segment_files, segment_first_index, small_options};
use raft_core::{Entry, EntryPayload, LogStore, SnapshotMeta};
use raft_log::format::{read_batch, SegmentHeader, SEGMENT_HEADER_BYTES};
use raft_log::{Log, LogError};

const ENTRY_BYTES: usize = 100;

fn append_synced(log: &mut Log, entries: &[Entry]) {
    for batch in entries.chunks(3) {
        log.append(batch).unwrap();
        log.sync().unwrap();
    }
}

/// Compacts through `index` and makes it durable: the freed files are kept (on disk, under
/// their segment names) until the compaction's state is synced, then retired.
fn compact_to(log: &mut Log, index: u64) {
    let term = log.term(index).unwrap();
    log.compact(SnapshotMeta {
        index,
        term,
        membership: Default::default(),
    })
    .unwrap();
    assert!(log.retiring_count() > 0, "freed segments wait for the sync");
    log.sync().unwrap();
    assert_eq!(log.retiring_count(), 0, "retired by the sync");
}

fn records_end(image: &[u8]) -> usize {
    let key = SegmentHeader::decode(image).unwrap().batch_key();
    let mut at = SEGMENT_HEADER_BYTES;
    let (mut offsets, mut runs) = (Vec::new(), Vec::new());
    while let Ok(frame) = read_batch(image, at, 1 << 20, key, &mut offsets, &mut runs) {
        at = frame.end_offset;
    }
    at
}

/// A log whose last segment is a reused file holding a few new records and, after them,
/// records of its earlier life. Returns the entries written, the path of that segment, its
/// image before reuse and its image now.
struct Reused {
    written: Vec<Entry>,
    path: PathBuf,
    old_image: Vec<u8>,
    new_image: Vec<u8>,
}

fn reused_last_segment(dir: &Path) -> Reused {
    let mut log = Log::open(dir, small_options()).unwrap();
    let mut written: Vec<Entry> = (1..=150).map(|i| entry(i, 1, ENTRY_BYTES)).collect();
    append_synced(&mut log, &written);
    let segments = segment_files(dir);
    assert!(segments.len() >= 3, "the test wants several segments");
    let first = segments[0].clone();
    let old_image = fs::read(&first).unwrap();
    let old_inode = fs::metadata(&first).unwrap().ino();
    let second_first = segment_first_index(&segments[1]);
    compact_to(&mut log, second_first);
    assert_eq!(
        log.recycled_count(),
        1,
        "the freed segment is kept for reuse"
    );
    // Append until a segment is started, then a few entries more: they land in the reused
    // file, whose later part still holds the records of its first life.
    let segment_count = log.segment_count();
    let mut next = 151;
    while log.segment_count() == segment_count {
        let e = entry(next, 1, ENTRY_BYTES);
        append_synced(&mut log, std::slice::from_ref(&e));
        written.push(e);
        next += 1;
    }
    for _ in 0..2 {
        let e = entry(next, 1, ENTRY_BYTES);
        append_synced(&mut log, std::slice::from_ref(&e));
        written.push(e);
        next += 1;
    }
    assert_eq!(log.recycled_count(), 0, "the recycled file was used");
    drop(log);
    let path = segment_files(dir).pop().unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().ino(),
        old_inode,
        "the new segment is the old file"
    );
    let new_image = fs::read(&path).unwrap();
    let end = records_end(&new_image);
    assert!(
        new_image[end + 8..].iter().any(|&b| b != 0),
        "the reused file still holds earlier records after the new ones"
    );
    Reused {
        written,
        path,
        old_image,
        new_image,
    }
}

fn assert_prefix(log: &Log, written: &[Entry], at_least: u64) {
    let got = all_entries(log);
    let first = log.first_index() as usize;
    assert!(log.last_index() >= at_least, "synced entries were lost");
    assert!(
        got[..] == written[first - 1..first - 1 + got.len()],
        "recovered entries are not a prefix of the written ones"
    );
}

#[test]
fn a_reused_segment_reads_back_only_its_own_records() {
    let dir = common::test_dir();
    let reused = reused_last_segment(dir.path());
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!(log.last_index(), reused.written.len() as u64);
    assert_prefix(&log, &reused.written, reused.written.len() as u64);
    // A clean reopen leaves the earlier records alone (no cut, no rewrite of the file).
    drop(log);
    assert_eq!(fs::read(&reused.path).unwrap(), reused.new_image);
}

#[test]
fn a_write_into_a_reused_segment_torn_anywhere_is_cut_back_to_whole_records() {
    // A crash can leave the new bytes persisted only up to any point, with the file's
    // earlier contents after it. Every such point must give a prefix of what was written,
    // never an earlier record, and never a corruption error.
    let dir = common::test_dir();
    let reused = reused_last_segment(dir.path());
    let name_first = segment_first_index(&reused.path);
    let end = records_end(&reused.new_image);
    for cut in SEGMENT_HEADER_BYTES..=end + 8 {
        let mut image = reused.new_image[..cut].to_vec();
        image.extend_from_slice(&reused.old_image[cut..]);
        fs::write(&reused.path, &image).unwrap();
        let mut log =
            Log::open(dir.path(), small_options()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_prefix(&log, &reused.written, name_first - 1);
        if cut % 97 == 0 {
            // The log stays usable: append, reopen, read back.
            let next = log.last_index() + 1;
            let more: Vec<Entry> = (next..next + 5).map(|i| entry(i, 1, ENTRY_BYTES)).collect();
            append_synced(&mut log, &more);
            drop(log);
            let log = Log::open(dir.path(), small_options()).unwrap();
            assert_eq!(log.last_index(), next + 4);
            let got = all_entries(&log);
            assert!(got.ends_with(&more), "cut at {cut}");
        }
    }
}

#[test]
fn bit_flips_in_a_reused_last_segment_give_a_prefix_or_an_error() {
    let dir = common::test_dir();
    let reused = reused_last_segment(dir.path());
    let end = records_end(&reused.new_image);
    for bit in ((SEGMENT_HEADER_BYTES + 8) * 8..(end + 16) * 8).step_by(5) {
        let mut image = reused.new_image.clone();
        image[bit / 8] ^= 1 << (bit % 8);
        fs::write(&reused.path, &image).unwrap();
        match Log::open(dir.path(), small_options()) {
            Ok(log) => assert_prefix(&log, &reused.written, 0),
            Err(LogError::Corrupt { .. }) => {}
            Err(e) => panic!("bit {bit}: unexpected error {e}"),
        }
    }
}

#[test]
fn a_sealed_reused_segment_is_zero_after_its_records_and_flips_are_corruption() {
    let dir = common::test_dir();
    let mut reused = reused_last_segment(dir.path());
    {
        let mut log = Log::open(dir.path(), small_options()).unwrap();
        let segment_count = log.segment_count();
        let mut next = log.last_index() + 1;
        while log.segment_count() == segment_count {
            let e = entry(next, 1, ENTRY_BYTES);
            append_synced(&mut log, std::slice::from_ref(&e));
            reused.written.push(e);
            next += 1;
        }
    }
    let image = fs::read(&reused.path).unwrap();
    let end = records_end(&image);
    assert!(end > SEGMENT_HEADER_BYTES);
    assert!(
        image[end..].iter().all(|&b| b == 0),
        "sealing erased the earlier records"
    );
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!(
        all_entries(&log).len(),
        log.last_index() as usize + 1 - log.first_index() as usize
    );
    drop(log);
    let mut flipped = image.clone();
    flipped[end - 20] ^= 0x10;
    fs::write(&reused.path, &flipped).unwrap();
    match Log::open(dir.path(), small_options()) {
        Err(LogError::Corrupt { path, .. }) => assert_eq!(path, reused.path),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_segment_whose_bytes_are_held_is_deleted_not_reused() {
    let dir = common::test_dir();
    let mut log = Log::open(dir.path(), small_options()).unwrap();
    let written: Vec<Entry> = (1..=90)
        .map(|i| Entry {
            index: i,
            term: 1,
            payload: EntryPayload::Command(vec![i as u8; ENTRY_BYTES].into()),
        })
        .collect();
    append_synced(&mut log, &written);
    let held = log.entries(1, 2, usize::MAX).unwrap();
    let second_first = segment_first_index(&segment_files(dir.path())[1]);
    compact_to(&mut log, second_first);
    assert_eq!(
        log.recycled_count(),
        0,
        "a file with held bytes is not reused"
    );
    let next = log.last_index() + 1;
    let more: Vec<Entry> = (next..next + 90)
        .map(|i| Entry {
            index: i,
            term: 1,
            payload: EntryPayload::Command(vec![0xEE; ENTRY_BYTES].into()),
        })
        .collect();
    append_synced(&mut log, &more);
    assert_eq!(held, written[..1], "held bytes were not overwritten");
    drop(log);
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("recycle-")),
        "closing removes recycled files: {names:?}"
    );
}

#[test]
fn segments_of_an_older_version_are_refused_with_path_and_offset() {
    let dir = common::test_dir();
    let written: Vec<Entry> = (1..=60).map(|i| entry(i, 1, ENTRY_BYTES)).collect();
    {
        let mut log = Log::open(dir.path(), small_options()).unwrap();
        append_synced(&mut log, &written);
    }
    // Version 2 wrote one record per entry; this code reads version 3 batches only.
    let path = segment_files(dir.path())[0].clone();
    let mut image = fs::read(&path).unwrap();
    let old = SegmentHeader {
        version: 2,
        ..SegmentHeader::decode(&image).unwrap()
    };
    image[..SEGMENT_HEADER_BYTES].copy_from_slice(&old.encode());
    fs::write(&path, &image).unwrap();
    match Log::open(dir.path(), small_options()) {
        Err(LogError::Corrupt {
            path: p,
            offset,
            reason,
        }) => {
            assert_eq!((p, offset), (path.clone(), 0));
            assert!(reason.contains("version"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert_eq!(fs::read(&path).unwrap(), image, "nothing was changed");
}

#[test]
fn an_earlier_life_record_with_the_next_index_fails_the_segment_key() {
    // Indexes alone cannot tell a reused file's earlier records apart once a snapshot
    // install moved the log's indexes; the per-segment CRC seed does.
    let dir = common::test_dir();
    let reused = reused_last_segment(dir.path());
    let old_key = SegmentHeader::decode(&reused.old_image)
        .unwrap()
        .batch_key();
    let next = reused.written.len() as u64 + 1;
    let mut stale = Vec::new();
    raft_log::format::encode_batch(&[entry(next, 1, ENTRY_BYTES)], old_key, &mut stale).unwrap();
    let end = records_end(&reused.new_image);
    let mut image = reused.new_image.clone();
    image[end + 8..end + 8 + stale.len()].copy_from_slice(&stale);
    fs::write(&reused.path, &image).unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!(log.last_index(), next - 1);
    assert_prefix(&log, &reused.written, next - 1);
}

#[test]
fn with_reuse_off_compaction_deletes_freed_segments() {
    let dir = common::test_dir();
    let options = raft_log::Options {
        segment_reuse: false,
        ..small_options()
    };
    let mut log = Log::open(dir.path(), options).unwrap();
    let written: Vec<Entry> = (1..=150).map(|i| entry(i, 1, ENTRY_BYTES)).collect();
    append_synced(&mut log, &written);
    let before = segment_files(dir.path()).len();
    let second_first = segment_first_index(&segment_files(dir.path())[1]);
    compact_to(&mut log, second_first);
    assert_eq!(log.recycled_count(), 0);
    assert_eq!(segment_files(dir.path()).len(), before - 1);
    assert!(
        !fs::read_dir(dir.path()).unwrap().any(|d| d
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("recycle-")),
        "no file kept for reuse"
    );
}

#[test]
fn a_stale_tail_of_length_like_words_is_not_crc_checked_at_every_offset() {
    // Every aligned word after the data claims a 4 MiB record with zero padding and an
    // index in range. Checking each one's CRC would read ~4 MiB at ~500,000 offsets; the
    // chain check (the next record must continue the run) turns them away first.
    let dir = common::test_dir();
    let options = raft_log::Options {
        segment_bytes: 8 << 20,
        segment_zero_fill: false,
        ..raft_log::Options::default()
    };
    let written: Vec<Entry> = (1..=7).map(|i| entry(i, 1, ENTRY_BYTES)).collect();
    {
        let mut log = Log::open(dir.path(), options.clone()).unwrap();
        append_synced(&mut log, &written);
    }
    let path = segment_files(dir.path()).pop().unwrap();
    let mut image = fs::read(&path).unwrap();
    let end = records_end(&image);
    let word = [8u8, 0, 0x40, 0, 0xAA, 0xAA, 0xAA, 0xAA];
    for chunk in image[end + 8..].chunks_mut(8) {
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    fs::write(&path, &image).unwrap();
    let log = Log::open(dir.path(), options).unwrap();
    assert_eq!(log.last_index(), 7);
    assert!(all_entries(&log) == written);
}
