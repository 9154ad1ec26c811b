//! The multi-group log with interleaved groups: reads before and after writing, freeing
//! segments only when no group needs them, truncation of the newest segment at every byte
//! of its unsynced tail, bit flips in sealed and newest segments, refused operations.

mod common;

use std::path::Path;

use common::multi::*;
use raft_core::{HardState, LogStore, LogWriter, MemLog, SnapshotMeta};
use raft_log::multi::frame::SEGMENT_HEADER_BYTES;
use raft_log::{LogError, MultiLog};

fn open(dir: &Path) -> MultiLog {
    MultiLog::open(dir, small_options()).unwrap()
}

/// Appends `count` entries of `len` bytes to `group` in both the log and the model.
fn append(log: &mut MultiLog, model: &mut Model, group: u64, count: u64, len: usize) {
    let mem = model.get_mut(&group).unwrap();
    let from = mem.last_index() + 1;
    let entries: Vec<_> = (from..from + count)
        .map(|i| entry(group, i, 1, len))
        .collect();
    log.append(group, &entries).unwrap();
    mem.append(&entries);
}

fn create(log: &mut MultiLog, model: &mut Model, group: u64) {
    log.create_group(group, SnapshotMeta::default()).unwrap();
    model.insert(group, MemLog::with_snapshot(SnapshotMeta::default()));
}

fn compact_all(log: &mut MultiLog, model: &mut Model, group: u64) {
    let mem = model.get_mut(&group).unwrap();
    let index = mem.last_index();
    let meta = SnapshotMeta {
        index,
        term: mem.term(index).unwrap(),
        membership: Default::default(),
    };
    log.compact(group, meta.clone()).unwrap();
    mem.compact(meta);
}

#[test]
fn interleaved_groups_read_back_before_and_after_writing_and_reopening() {
    let dir = test_dir();
    let mut log = open(dir.path());
    let mut model = Model::new();
    for g in [3, 1, 2] {
        create(&mut log, &mut model, g);
    }
    for round in 0..20 {
        for g in [1, 2, 3] {
            append(&mut log, &mut model, g, 1 + (round + g) % 4, 100);
        }
        // Read from the frame being built, then from the mapping once written.
        assert_matches(&log, &model, &format!("round {round} pending"));
        if round % 3 == 0 {
            log.sync().unwrap();
        }
        assert_matches(&log, &model, &format!("round {round}"));
    }
    let syncs = log.sync_count();
    log.sync().unwrap();
    assert!(log.sync_count() <= syncs + 1);
    drop(log);
    let log = open(dir.path());
    assert_matches(&log, &model, "reopened");
}

#[test]
fn the_storage_traits_work_per_group_and_a_conflicting_suffix_is_replaced() {
    let dir = test_dir();
    let mut log = open(dir.path());
    log.create_group(7, SnapshotMeta::default()).unwrap();
    log.create_group(8, SnapshotMeta::default()).unwrap();
    let mut mem = MemLog::new();
    {
        let mut g = log.group_mut(7).unwrap();
        let first: Vec<_> = (1..=6).map(|i| entry(7, i, 1, 50)).collect();
        g.append_entries(&first).unwrap();
        mem.append(&first);
        // A new leader's entries conflict from index 4 on.
        let second: Vec<_> = (4..=5).map(|i| entry(7, i, 2, 50)).collect();
        g.append_entries(&second).unwrap();
        mem.append(&second);
        let hs = HardState {
            term: 2,
            vote: Some(1),
            commit: 5,
        };
        g.write_hard_state(hs).unwrap();
        mem.set_hard_state(hs);
        let meta = SnapshotMeta {
            index: 2,
            term: 1,
            membership: Default::default(),
        };
        g.compact_to(meta.clone()).unwrap();
        mem.compact(meta);
    }
    log.group_mut(8)
        .unwrap()
        .append_entries(&[entry(8, 1, 1, 10)])
        .unwrap();
    log.sync().unwrap();
    drop(log);
    let log = open(dir.path());
    let g = log.group(7).unwrap();
    assert_eq!((g.first_index(), g.last_index()), (3, 5));
    assert_eq!(g.term(5), Ok(2));
    assert!(g.entries(3, 6, usize::MAX).unwrap() == mem.all_entries());
    assert_eq!(g.hard_state(), mem.hard_state());
    assert_eq!(log.last_index(8).unwrap(), 1);
}

#[test]
fn compacting_one_group_never_frees_a_segment_another_still_needs() {
    let dir = test_dir();
    let mut log = open(dir.path());
    let mut model = Model::new();
    create(&mut log, &mut model, 1);
    create(&mut log, &mut model, 2);
    // Group 2 writes a little at the start and then keeps it.
    append(&mut log, &mut model, 2, 5, 300);
    for round in 0..200 {
        append(&mut log, &mut model, 1, 8, 500);
        compact_all(&mut log, &mut model, 1);
        log.sync().unwrap();
        if round % 50 == 0 {
            drop(log);
            log = open(dir.path());
            assert_matches(&log, &model, &format!("round {round}"));
        }
    }
    let segments = segment_files(dir.path());
    assert!(
        segments.len() > 10,
        "group 2 should pin every segment: {} held",
        segments.len()
    );
    assert!(segments[0].ends_with(format!("{:020}.wal", 1)));
    assert_matches(&log, &model, "group 2 pins the old segments");
    // Once group 2 compacts too, every old segment goes at the next sync.
    compact_all(&mut log, &mut model, 2);
    log.sync().unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert_eq!(log.segment_count(), 1);
    drop(log);
    let log = open(dir.path());
    assert_matches(&log, &model, "after freeing");
    // Removing a group frees what it held, too.
    let mut log = log;
    append(&mut log, &mut model, 2, 5, 300);
    for _ in 0..40 {
        append(&mut log, &mut model, 1, 8, 500);
        compact_all(&mut log, &mut model, 1);
        log.sync().unwrap();
    }
    assert!(log.segment_count() > 3);
    log.remove_group(2).unwrap();
    model.remove(&2);
    log.sync().unwrap();
    assert_eq!(log.segment_count(), 1);
    drop(log);
    assert_matches(&open(dir.path()), &model, "after removing group 2");
}

/// A log whose newest segment has a synced part and then frames written but not synced:
/// the directory, the model after each frame and where each frame ends.
struct Tail {
    dir: tempfile::TempDir,
    newest: std::path::PathBuf,
    synced: (u64, Model),
    frames: Vec<(u64, Model)>,
}

fn log_with_unsynced_tail() -> Tail {
    let dir = test_dir();
    let mut log = open(dir.path());
    let mut model = Model::new();
    for g in 1..=4 {
        create(&mut log, &mut model, g);
    }
    for i in 0..60 {
        append(&mut log, &mut model, 1 + i % 4, 1 + i % 3, 150);
    }
    compact_all(&mut log, &mut model, 2);
    log.sync().unwrap();
    let (newest, synced_at) = log.write_position();
    let synced = (synced_at, model.clone());
    let mut frames = Vec::new();
    for i in 0..6u64 {
        let g = 1 + (i * 3) % 4;
        append(&mut log, &mut model, g, 1 + i % 2, 40 + 20 * i as usize);
        match i {
            1 => {
                let from = model[&3].last_index() - 2;
                log.truncate_suffix(3, from).unwrap();
                model.get_mut(&3).unwrap().truncate_suffix(from);
            }
            3 => {
                let hs = HardState {
                    term: 1,
                    vote: Some(2),
                    commit: 4,
                };
                log.set_hard_state(4, hs).unwrap();
                model.get_mut(&4).unwrap().set_hard_state(hs);
            }
            4 => compact_all(&mut log, &mut model, 1),
            _ => {}
        }
        log.flush().unwrap();
        let (path, end) = log.write_position();
        assert_eq!(path, newest, "the tail must stay in one segment");
        frames.push((end, model.clone()));
    }
    drop(log);
    Tail {
        dir,
        newest,
        synced,
        frames,
    }
}

/// The model a crash that kept the newest segment's bytes (`bytes`) up to `cut` must
/// recover: every frame whose bytes survive (its zero padding needs no surviving).
fn expected_at<'a>(tail: &'a Tail, bytes: &[u8], cut: u64) -> &'a Model {
    tail.frames
        .iter()
        .rev()
        .find(|(end, _)| *end <= cut || bytes[cut as usize..*end as usize].iter().all(|&b| b == 0))
        .map_or(&tail.synced.1, |(_, m)| m)
}

#[test]
fn a_tail_cut_at_every_byte_recovers_the_frames_before_the_cut() {
    let tail = log_with_unsynced_tail();
    let bytes = std::fs::read(&tail.newest).unwrap();
    let end = tail.frames.last().unwrap().0;
    let name = tail.newest.file_name().unwrap();
    for cut in tail.synced.0..=end {
        let copy = test_dir();
        copy_segments(tail.dir.path(), copy.path());
        let mut damaged = bytes.clone();
        damaged[cut as usize..].fill(0);
        std::fs::write(copy.path().join(name), &damaged).unwrap();
        let log = MultiLog::open(copy.path(), small_options())
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_matches(
            &log,
            expected_at(&tail, &bytes, cut),
            &format!("cut at {cut}"),
        );
        drop(log);
        // The cut was zeroed: the log reopens the same and appends after it.
        let mut log = open(copy.path());
        let mut model = expected_at(&tail, &bytes, cut).clone();
        append(&mut log, &mut model, 1, 2, 80);
        log.sync().unwrap();
        drop(log);
        assert_matches(
            &open(copy.path()),
            &model,
            &format!("cut at {cut}, appended"),
        );
    }
}

#[test]
fn a_flipped_bit_in_the_newest_segment_is_a_torn_tail_only_in_its_last_frame() {
    let tail = log_with_unsynced_tail();
    let bytes = std::fs::read(&tail.newest).unwrap();
    let name = tail.newest.file_name().unwrap();
    let last_start = tail.frames[tail.frames.len() - 2].0;
    let end = tail.frames.last().unwrap().0;
    for at in SEGMENT_HEADER_BYTES as u64..end {
        let copy = test_dir();
        copy_segments(tail.dir.path(), copy.path());
        let mut damaged = bytes.clone();
        damaged[at as usize] ^= 1 << (at % 8);
        std::fs::write(copy.path().join(name), &damaged).unwrap();
        let result = MultiLog::open(copy.path(), small_options());
        if at >= last_start {
            let log = result.unwrap_or_else(|e| panic!("flip at {at} in the last frame: {e}"));
            assert_matches(
                &log,
                expected_at(&tail, &bytes, last_start),
                &format!("flip at {at}"),
            );
        } else {
            match result {
                Err(LogError::Corrupt { path, offset, .. }) => {
                    assert_eq!(path.file_name().unwrap(), name, "flip at {at}");
                    assert!(offset <= at, "flip at {at} reported at {offset}");
                }
                Err(e) => panic!("flip at {at}: wrong error {e}"),
                Ok(_) => panic!("flip at {at} mid-log went unnoticed"),
            }
        }
    }
}

#[test]
fn a_flipped_bit_anywhere_in_a_sealed_segment_is_corruption_naming_it() {
    let dir = test_dir();
    let mut log = open(dir.path());
    let mut model = Model::new();
    for g in 1..=3 {
        create(&mut log, &mut model, g);
    }
    while log.segment_count() < 3 {
        for g in 1..=3 {
            append(&mut log, &mut model, g, 2, 200);
        }
        log.sync().unwrap();
    }
    drop(log);
    let sealed = segment_files(dir.path())[1].clone();
    let bytes = std::fs::read(&sealed).unwrap();
    // The sealed part: up to the end of the last non-zero byte (the seal's frame).
    let used = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    let name = sealed.file_name().unwrap();
    // Every byte of the header, checkpoint and first frames, then a stride over the rest
    // (bounded: each flip is a copy and an open).
    let flips = (0..used.min(2048)).chain((2048..used).step_by(61));
    for at in flips {
        let copy = test_dir();
        copy_segments(dir.path(), copy.path());
        let mut damaged = bytes.clone();
        damaged[at] ^= 1 << (at % 8);
        std::fs::write(copy.path().join(name), &damaged).unwrap();
        match MultiLog::open(copy.path(), small_options()) {
            Err(LogError::Corrupt { path, offset, .. }) => {
                assert_eq!(path.file_name().unwrap(), name, "flip at {at}");
                assert!(offset <= at as u64, "flip at {at} reported at {offset}");
            }
            Err(e) => panic!("flip at {at}: wrong error {e}"),
            Ok(_) => panic!("flip at {at} in a sealed segment went unnoticed"),
        }
    }
    assert_matches(&open(dir.path()), &model, "undamaged");
}

#[test]
fn bad_operations_are_refused_and_change_nothing() {
    let dir = test_dir();
    let mut log = open(dir.path());
    let mut model = Model::new();
    create(&mut log, &mut model, 1);
    append(&mut log, &mut model, 1, 5, 10);
    compact_all(&mut log, &mut model, 1);
    append(&mut log, &mut model, 1, 3, 10);
    let gap = [entry(1, 20, 1, 10)];
    let into_snapshot = [entry(1, 5, 1, 10)];
    let backwards = [entry(1, 9, 0, 10)];
    let too_large = [entry(1, 9, 1, small_options().entry_bytes_max + 1)];
    for bad in [&gap[..], &into_snapshot, &backwards, &too_large] {
        assert!(log.append(1, bad).is_err());
    }
    assert!(
        log.append(9, &[entry(9, 1, 1, 1)]).is_err(),
        "unknown group"
    );
    assert!(log.truncate_suffix(1, 5).is_err(), "inside the snapshot");
    let wrong_term = SnapshotMeta {
        index: 7,
        term: 5,
        membership: Default::default(),
    };
    assert!(log.compact(1, wrong_term).is_err());
    assert!(log.create_group(1, SnapshotMeta::default()).is_err());
    for g in 2..=small_options().groups_max as u64 {
        create(&mut log, &mut model, g);
    }
    assert!(
        log.create_group(100, SnapshotMeta::default()).is_err(),
        "groups_max"
    );
    assert_matches(&log, &model, "after refusals");
    log.sync().unwrap();
    drop(log);
    assert_matches(&open(dir.path()), &model, "reopened");
    // The directory is locked while open.
    let _held = open(dir.path());
    assert!(matches!(
        MultiLog::open(dir.path(), small_options()),
        Err(LogError::Locked { .. })
    ));
}

#[test]
fn a_missing_segment_a_group_needs_is_reported() {
    let dir = test_dir();
    let mut log = open(dir.path());
    let mut model = Model::new();
    create(&mut log, &mut model, 1);
    while log.segment_count() < 4 {
        append(&mut log, &mut model, 1, 4, 400);
        log.sync().unwrap();
    }
    drop(log);
    // Losing the oldest segment: replay starts at the next one's checkpoint, and group 1's
    // entries there do not join its snapshot.
    let files = segment_files(dir.path());
    std::fs::remove_file(&files[0]).unwrap();
    let err = MultiLog::open(dir.path(), small_options())
        .err()
        .expect("refused");
    assert!(
        matches!(&err, LogError::Corrupt { reason, .. } if reason.contains("missing")),
        "{err}"
    );
}

/// Group 1 keeps its few entries in the first segment while group 2 fills many: the
/// segments from the first on are all needed.
fn log_pinned_by_group_1(dir: &Path) -> (MultiLog, Model) {
    let mut log = open(dir);
    let mut model = Model::new();
    create(&mut log, &mut model, 1);
    create(&mut log, &mut model, 2);
    append(&mut log, &mut model, 1, 3, 100);
    while log.segment_count() < 5 {
        append(&mut log, &mut model, 2, 8, 500);
        compact_all(&mut log, &mut model, 2);
        log.sync().unwrap();
    }
    (log, model)
}

#[test]
fn a_lost_middle_segment_is_reported_even_when_no_entry_after_it_shows_the_gap() {
    let dir = test_dir();
    let (log, _) = log_pinned_by_group_1(dir.path());
    drop(log);
    // Group 1's entries are all in segment 1; without the free marks, replay would start
    // after the gap, find group 1 empty and delete segment 1 as stale.
    let files = segment_files(dir.path());
    std::fs::remove_file(&files[1]).unwrap();
    let err = MultiLog::open(dir.path(), small_options())
        .err()
        .expect("a lost segment must be refused");
    match &err {
        LogError::Corrupt { path, reason, .. } => {
            assert_eq!(path, &files[1], "{err}");
            assert!(reason.contains("missing"), "{err}");
        }
        other => panic!("wrong error {other}"),
    }
    assert!(files[0].exists(), "nothing is deleted on corruption");
}

#[test]
fn segments_left_behind_a_gap_by_an_interrupted_free_are_removed() {
    let dir = test_dir();
    let (mut log, mut model) = log_pinned_by_group_1(dir.path());
    let files = segment_files(dir.path());
    let kept: Vec<(std::path::PathBuf, Vec<u8>)> = [1, 3]
        .iter()
        .map(|&i| (files[i].clone(), std::fs::read(&files[i]).unwrap()))
        .collect();
    // Group 1 lets go: the sync frees every segment but the newest.
    compact_all(&mut log, &mut model, 1);
    log.sync().unwrap();
    assert_eq!(log.segment_count(), 1);
    drop(log);
    // A crash that made only some of the unlinks durable: segments 2 and 4 come back.
    for (path, bytes) in &kept {
        std::fs::write(path, bytes).unwrap();
    }
    let mut log = open(dir.path());
    assert_matches(&log, &model, "after an interrupted free");
    assert!(
        !kept[0].0.exists(),
        "the segment behind the gap is removed at open"
    );
    log.sync().unwrap();
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "the rest goes at the first sync"
    );
    drop(log);
    assert_matches(&open(dir.path()), &model, "reopened");
}

#[test]
fn a_crash_between_sealing_a_segment_and_starting_the_next_resumes_in_a_new_one() {
    let dir = test_dir();
    let mut log = open(dir.path());
    let mut model = Model::new();
    create(&mut log, &mut model, 1);
    create(&mut log, &mut model, 2);
    log.sync().unwrap();
    // One entry per append, so the append that rolls writes nothing to the sealed segment.
    let mut before_roll = model.clone();
    let mut i = 0;
    while log.segment_count() < 2 {
        before_roll = model.clone();
        append(&mut log, &mut model, 1 + i % 2, 1, 300);
        i += 1;
    }
    drop(log);
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2);
    std::fs::remove_file(&files[1]).unwrap();
    let sealed = std::fs::read(&files[0]).unwrap();
    let mut log = open(dir.path());
    assert_matches(&log, &before_roll, "reopened after the sealed segment");
    assert_eq!(
        std::fs::read(&files[0]).unwrap(),
        sealed,
        "a sealed segment is never written again"
    );
    let mut model = before_roll;
    append(&mut log, &mut model, 2, 3, 100);
    log.sync().unwrap();
    drop(log);
    assert_matches(&open(dir.path()), &model, "appended in the new segment");
}

#[test]
fn a_crash_that_loses_a_new_segments_checkpoint_loses_no_group_state() {
    let dir = test_dir();
    let mut log = open(dir.path());
    let mut model = Model::new();
    create(&mut log, &mut model, 1);
    create(&mut log, &mut model, 2);
    // Group 2's state lives only in records (and checkpoints): it holds no entry.
    append(&mut log, &mut model, 2, 3, 100);
    compact_all(&mut log, &mut model, 2);
    let hs = HardState {
        term: 1,
        vote: Some(2),
        commit: 3,
    };
    log.set_hard_state(2, hs).unwrap();
    model.get_mut(&2).unwrap().set_hard_state(hs);
    log.sync().unwrap();
    // One entry per append, so the append that rolls writes nothing to the sealed segment.
    let mut before_roll = model.clone();
    while log.segment_count() < 2 {
        before_roll = model.clone();
        append(&mut log, &mut model, 1, 1, 300);
    }
    drop(log);
    // The crash hit while the new segment's checkpoint was being synced: only its header
    // is left.
    let newest = segment_files(dir.path())[1].clone();
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[SEGMENT_HEADER_BYTES..].fill(0);
    std::fs::write(&newest, &bytes).unwrap();
    let mut log = open(dir.path());
    assert_matches(&log, &before_roll, "reopened after the lost checkpoint");
    // Group 1 lets go of the old segments; the one kept must hold group 2's state.
    let mut model = before_roll;
    append(&mut log, &mut model, 1, 2, 100);
    compact_all(&mut log, &mut model, 1);
    log.sync().unwrap();
    assert_eq!(log.segment_count(), 1, "the old segments are freed");
    drop(log);
    assert_matches(&open(dir.path()), &model, "after freeing");
}

#[test]
fn syncs_move_small_pinning_groups_forward_but_never_a_group_that_needs_several_records() {
    let dir = test_dir();
    let options = rewrite_options();
    let mut log = MultiLog::open(dir.path(), options.clone()).unwrap();
    let mut model = Model::new();
    for g in 1..=3 {
        create(&mut log, &mut model, g);
    }
    // Group 1's entries need several records (more than a frame): moving them could be cut
    // by a crash, so they stay. Group 2's fit one record and move.
    append(&mut log, &mut model, 1, 20, 1000);
    append(&mut log, &mut model, 2, 3, 100);
    for _ in 0..60 {
        append(&mut log, &mut model, 3, 6, 500);
        compact_all(&mut log, &mut model, 3);
        log.sync().unwrap();
    }
    let files = segment_files(dir.path());
    assert!(
        files[0].ends_with(format!("{:020}.wal", 1)),
        "group 1 pins segment 1"
    );
    assert!(files.len() > options.segments_held_max);
    drop(log);
    let mut log = MultiLog::open(dir.path(), options.clone()).unwrap();
    assert_matches(&log, &model, "group 1 pinning");
    // Once group 1 compacts, only where group 2 was moved to (and after) is kept.
    compact_all(&mut log, &mut model, 1);
    log.sync().unwrap();
    assert!(
        log.segment_count() <= options.segments_held_max + 1,
        "{} segments held: group 2 was never moved forward",
        log.segment_count()
    );
    drop(log);
    assert_matches(
        &MultiLog::open(dir.path(), options).unwrap(),
        &model,
        "after group 1 let go",
    );
}
