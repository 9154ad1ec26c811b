//! Opening a multi-group log: finding its segments, replaying their frames into every
//! group's index, cutting a torn tail, and checking what was rebuilt.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use raft_core::{HardState, Index, SnapshotMeta, Term};
use tracing::warn;

use crate::error::LogError;
use crate::format::{self, RecordError};
use crate::log::{lock_dir, LOCK_FILE};

use super::frame::{self, Frame, Record, RecordKind, SEGMENT_HEADER_BYTES};
use super::frame_ops::{self, parse_segment_name};
use super::group::{EntryLoc, Group};
use super::{map_file, GroupId, MultiLog, MultiOptions, Segment};

/// Bytes of zeroes written per call when erasing a torn tail.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

pub(super) fn open(dir: &Path, options: MultiOptions) -> Result<MultiLog, LogError> {
    options.validate()?;
    fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
    let lock = lock_dir(dir)?;
    let dir_file = File::open(dir).map_err(|e| LogError::io(dir, e))?;
    let (mut seqs, unknown_files) = list_dir(dir)?;
    seqs.sort_unstable();
    // Segments are freed oldest first; a crash in the middle of that may leave an older one
    // behind a gap. Replay starts after the last gap; the free marks replayed then say
    // whether the segments before it were freed on purpose.
    let run_start = seqs
        .windows(2)
        .rposition(|w| w[1] != w[0] + 1)
        .map_or(0, |i| i + 1);
    let stale: Vec<u64> = seqs.drain(..run_start).collect();

    let mut log = MultiLog {
        dir: dir.to_owned(),
        options,
        _lock: lock,
        dir_file,
        segments: VecDeque::new(),
        write_offset: 0,
        frame: Default::default(),
        groups: BTreeMap::new(),
        dirty: false,
        poisoned: false,
        maybe_freed: true,
        sync_count: 0,
        unknown_files,
        scratch: Vec::new(),
        parts: Vec::new(),
    };
    let mut replay = Replay::default();
    let count = seqs.len();
    let mut sealed_last = false;
    for (i, &seq) in seqs.iter().enumerate() {
        let newest = i + 1 == count;
        let path = dir.join(frame_ops::segment_name(seq));
        let Some((seg, end, sealed)) = replay_segment(&mut log, &mut replay, seq, &path, newest)?
        else {
            continue;
        };
        log.segments.push_back(seg);
        log.write_offset = end;
        sealed_last = sealed;
    }
    check_freed(&log, &replay, &stale)?;
    check_groups(&log, &replay)?;
    for seq in stale {
        let path = dir.join(frame_ops::segment_name(seq));
        warn!(path = %path.display(), "removing a segment left behind a gap by an interrupted free");
        fs::remove_file(&path).map_err(|e| LogError::io(&path, e))?;
    }
    if log.segments.is_empty() || sealed_last {
        frame_ops::start_segment(&mut log)?;
    } else {
        // What was recovered may have been read back from the page cache of a process that
        // died before syncing it: make it durable before anything builds on it.
        let seg = log.segments.back().expect("non-empty");
        seg.file
            .sync_data()
            .map_err(|e| LogError::io(&seg.path, e))?;
    }
    log.dir_file.sync_all().map_err(|e| LogError::io(dir, e))?;
    Ok(log)
}

/// What replay tracks beside the groups: where each group's entries were first seen, to
/// name a place in the error if they do not join its snapshot, and the highest segment
/// below which every segment was freed on purpose (headers' bases and free marks).
#[derive(Default)]
struct Replay {
    entries_from: BTreeMap<GroupId, (PathBuf, usize)>,
    free_below: u64,
}

/// Replays one segment; returns it, where its frames end and whether it is sealed, or
/// `None` for a newest segment whose header never became durable (removed).
fn replay_segment(
    log: &mut MultiLog,
    replay: &mut Replay,
    seq: u64,
    path: &Path,
    newest: bool,
) -> Result<Option<(Segment, u64, bool)>, LogError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| LogError::io(path, e))?;
    let capacity = file.metadata().map_err(|e| LogError::io(path, e))?.len();
    let seed = frame::segment_seed(seq);
    if capacity < SEGMENT_HEADER_BYTES as u64 {
        if newest {
            warn!(path = %path.display(), "removing a newest segment created by a crashed roll");
            fs::remove_file(path).map_err(|e| LogError::io(path, e))?;
            return Ok(None);
        }
        return Err(LogError::corrupt(
            path,
            0,
            "segment shorter than its header",
        ));
    }
    let map = map_file(&file, path)?;
    match frame::decode_segment_header(&map) {
        Ok((s, base)) if s == seq => replay.free_below = replay.free_below.max(base),
        Ok((s, _)) => {
            return Err(LogError::corrupt(
                path,
                16,
                format!("header names segment {s}, the file name {seq}"),
            ))
        }
        Err(reason) => {
            // A roll writes and syncs the header before any frame: a newest segment with a
            // bad header and no valid frame is one whose creation was cut short.
            if newest && valid_frame_after(&map, SEGMENT_HEADER_BYTES, seed).is_none() {
                warn!(path = %path.display(), reason, "removing a newest segment created by a crashed roll");
                drop(map);
                fs::remove_file(path).map_err(|e| LogError::io(path, e))?;
                return Ok(None);
            }
            return Err(LogError::corrupt(path, 0, reason));
        }
    }
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut sealed = false;
    let mut checkpoint_done = false;
    loop {
        if sealed {
            break;
        }
        let frame = match frame::read_frame(&map, offset, seed) {
            Ok(frame) => frame,
            Err(error) => {
                if !newest {
                    return Err(LogError::corrupt(
                        path,
                        offset as u64,
                        format!("{} in a sealed segment", describe(error)),
                    ));
                }
                if let Some(at) = valid_frame_after(&map, offset + 8, seed) {
                    return Err(LogError::corrupt(
                        path,
                        offset as u64,
                        format!(
                            "{}, followed by a valid frame at {at}: not a torn tail",
                            describe(error)
                        ),
                    ));
                }
                cut_tail(&file, &map, path, offset)?;
                break;
            }
        };
        sealed = apply_frame(log, replay, &map, frame, seq, path, &mut checkpoint_done)?;
        offset = frame.end_offset;
    }
    if !checkpoint_done {
        if !newest {
            return Err(LogError::corrupt(
                path,
                offset as u64,
                "segment ends before its checkpoint does",
            ));
        }
        // Only a crash while the segment was being started leaves this, and then the segment
        // holds nothing but part of a checkpoint of states the older segments hold too.
        warn!(path = %path.display(), "removing a newest segment whose checkpoint a crash cut short");
        drop(map);
        fs::remove_file(path).map_err(|e| LogError::io(path, e))?;
        return Ok(None);
    }
    Ok(Some((
        Segment {
            seq,
            path: path.to_owned(),
            file,
            map,
            capacity,
            seed,
        },
        offset as u64,
        sealed,
    )))
}

fn describe(error: RecordError) -> &'static str {
    match error {
        RecordError::Zero => "frames end before the seal",
        RecordError::Short => "frame runs past the end of the segment",
        RecordError::Crc => "frame CRC mismatch",
        other => other.describe(),
    }
}

/// Offset of the first valid frame at an 8-aligned offset from `from` on, if any.
fn valid_frame_after(map: &[u8], from: usize, seed: u32) -> Option<usize> {
    let end = nonzero_end(map);
    let mut at = format::align_up(from);
    while at < end {
        if frame::read_frame(map, at, seed).is_ok() {
            return Some(at);
        }
        at += format::BATCH_ALIGN_BYTES;
    }
    None
}

/// Offset just past the last non-zero byte.
fn nonzero_end(bytes: &[u8]) -> usize {
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(4096);
        let chunk = &bytes[start..end];
        if chunk.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return start + chunk.iter().rposition(|&b| b != 0).expect("non-zero") + 1;
        }
        end = start;
    }
    0
}

/// Zeroes a torn tail from `offset` on, so that later frames are followed by zeroes.
fn cut_tail(file: &File, map: &[u8], path: &Path, offset: usize) -> Result<(), LogError> {
    let end = nonzero_end(map);
    if end <= offset {
        return Ok(());
    }
    warn!(path = %path.display(), offset, bytes = end - offset, "cutting a torn tail");
    let zeroes = vec![0u8; ZERO_CHUNK_BYTES.min(end - offset)];
    let mut at = offset;
    while at < end {
        let n = zeroes.len().min(end - at);
        file.write_all_at(&zeroes[..n], at as u64)
            .map_err(|e| LogError::io(path, e))?;
        at += n;
    }
    Ok(())
}

/// Applies one frame's records; returns whether it ended with the seal. `checkpoint_done`
/// tracks whether the segment's checkpoint has ended.
fn apply_frame(
    log: &mut MultiLog,
    replay: &mut Replay,
    map: &[u8],
    frame: Frame,
    seq: u64,
    path: &Path,
    checkpoint_done: &mut bool,
) -> Result<bool, LogError> {
    let records = frame::records(map, frame)
        .map_err(|(at, reason)| LogError::corrupt(path, at as u64, reason))?;
    let count = records.len();
    for (i, record) in records.into_iter().enumerate() {
        let at = (record.body_offset - frame::RECORD_HEADER_BYTES) as u64;
        match (record.kind, *checkpoint_done) {
            (RecordKind::CheckpointEnd, false) => {
                *checkpoint_done = true;
                continue;
            }
            (RecordKind::GroupState, false) | (_, true) => {}
            (kind, false) => {
                return Err(LogError::corrupt(
                    path,
                    at,
                    format!("{kind:?} record before the segment's checkpoint ends"),
                ))
            }
        }
        if record.kind == RecordKind::CheckpointEnd {
            return Err(LogError::corrupt(path, at, "a second checkpoint end"));
        }
        if record.kind == RecordKind::Seal {
            if i + 1 != count {
                return Err(LogError::corrupt(
                    path,
                    record.body_offset as u64,
                    "records after a segment's seal",
                ));
            }
            return Ok(true);
        }
        apply_record(log, replay, map, record, seq, path)?;
    }
    Ok(false)
}

fn apply_record(
    log: &mut MultiLog,
    replay: &mut Replay,
    map: &[u8],
    record: Record<'_>,
    seq: u64,
    path: &Path,
) -> Result<(), LogError> {
    let at = (record.body_offset - frame::RECORD_HEADER_BYTES) as u64;
    let bad = |reason: &str| {
        LogError::corrupt(
            path,
            at,
            format!(
                "{:?} record of group {}: {reason}",
                record.kind, record.group
            ),
        )
    };
    let id = record.group;
    if record.kind == RecordKind::FreeBelow {
        let below: [u8; 8] = record
            .body
            .try_into()
            .map_err(|_| bad("free mark body is not 8 bytes"))?;
        let below = u64::from_le_bytes(below);
        if below > seq {
            return Err(bad("free mark past its own segment"));
        }
        replay.free_below = replay.free_below.max(below);
        return Ok(());
    }
    if record.kind == RecordKind::Remove {
        log.groups.remove(&id);
        replay.entries_from.remove(&id);
        return Ok(());
    }
    if !log.groups.contains_key(&id) && log.groups.len() >= log.options.groups_max {
        return Err(LogError::Options(format!(
            "{} holds more groups than groups_max {}",
            log.dir.display(),
            log.options.groups_max
        )));
    }
    // A group whose earlier records were in freed segments starts from defaults; the
    // checkpoint of the first segment kept, or its creation, sets its state.
    let group = log
        .groups
        .entry(id)
        .or_insert_with(|| Group::new(HardState::default(), SnapshotMeta::default()));
    match record.kind {
        RecordKind::Entries => {
            let (first, locs) =
                decode_entries(map, record, seq, log.options.entry_bytes_max).map_err(&bad)?;
            if first <= group.snapshot.index {
                return Err(bad("entries inside the group's snapshot"));
            }
            if first < group.first_index || first > group.last_index() + 1 || group.locs.is_empty()
            {
                replay
                    .entries_from
                    .insert(id, (path.to_owned(), record.body_offset));
            }
            group.append(first, locs);
        }
        RecordKind::HardState => {
            group.hard_state = frame::decode_body::<HardState>(record.body)
                .ok_or_else(|| bad("undecodable hard state"))?;
        }
        RecordKind::Truncate => {
            let from: [u8; 8] = record
                .body
                .try_into()
                .map_err(|_| bad("truncation body is not 8 bytes"))?;
            group.truncate(Index::from_le_bytes(from));
        }
        RecordKind::Compact => {
            let meta = frame::decode_body::<SnapshotMeta>(record.body)
                .ok_or_else(|| bad("undecodable snapshot metadata"))?;
            group.compact(meta);
        }
        RecordKind::Install => {
            let meta = frame::decode_body::<SnapshotMeta>(record.body)
                .ok_or_else(|| bad("undecodable snapshot metadata"))?;
            group.install(meta);
        }
        RecordKind::GroupState => {
            let (hs, meta) = frame::decode_body::<(HardState, SnapshotMeta)>(record.body)
                .ok_or_else(|| bad("undecodable group state"))?;
            group.compact(meta);
            group.hard_state = hs;
        }
        RecordKind::Remove
        | RecordKind::Seal
        | RecordKind::FreeBelow
        | RecordKind::CheckpointEnd => {
            unreachable!("handled above")
        }
    }
    if group.locs.is_empty() {
        replay.entries_from.remove(&id);
    }
    Ok(())
}

/// The entries of an entries record: their first index and locations.
fn decode_entries(
    map: &[u8],
    record: Record<'_>,
    seq: u64,
    entry_bytes_max: usize,
) -> Result<(Index, Vec<EntryLoc>), &'static str> {
    let count = record
        .body
        .get(..frame::ENTRY_COUNT_BYTES)
        .map(|b| frame::u32_at(b, 0))
        .filter(|&c| c > 0)
        .ok_or("no entry count")?;
    let body_end = record.body_offset + record.body.len();
    let mut at = record.body_offset + frame::ENTRY_COUNT_BYTES;
    let mut locs = Vec::with_capacity(count.min(1 << 16) as usize);
    let mut first = None;
    let mut prev_term: Term = 0;
    for i in 0..count {
        let range = format::entry_payload(&map[..body_end], at, entry_bytes_max)
            .map_err(|e| e.describe())?;
        let ((index, term), _) = postcard::take_from_bytes::<(Index, Term)>(&map[range.clone()])
            .map_err(|_| "undecodable entry")?;
        let first = *first.get_or_insert(index);
        if index != first + Index::from(i) || term < prev_term {
            return Err("entries out of order");
        }
        prev_term = term;
        locs.push(EntryLoc {
            segment: seq,
            offset: u32::try_from(at).map_err(|_| "offset beyond 4 GiB")?,
            term,
        });
        at = range.end;
    }
    if at != body_end {
        return Err("bytes after the record's last entry");
    }
    Ok((first.expect("count > 0"), locs))
}

/// Every segment from the last one freed on purpose on must be there: replay starts after
/// the last gap, so a gap at or after that point is a lost segment. `stale` are the
/// segments found before the gap (sorted).
fn check_freed(log: &MultiLog, replay: &Replay, stale: &[u64]) -> Result<(), LogError> {
    let Some(first) = log.segments.front() else {
        return Ok(());
    };
    if first.seq <= replay.free_below {
        return Ok(());
    }
    let mut missing = replay.free_below;
    while stale.binary_search(&missing).is_ok() {
        missing += 1;
    }
    Err(LogError::corrupt(
        log.dir.join(frame_ops::segment_name(missing)),
        0,
        format!(
            "segment {missing} is missing, but the log freed only the segments before {}: \
             a segment it needs is missing",
            replay.free_below
        ),
    ))
}

/// Every group's entries must start right after its snapshot: a gap means a segment it
/// needed is missing.
fn check_groups(log: &MultiLog, replay: &Replay) -> Result<(), LogError> {
    for (id, g) in &log.groups {
        if !g.locs.is_empty() && g.first_index != g.snapshot.index + 1 {
            let (path, offset) = replay
                .entries_from
                .get(id)
                .cloned()
                .unwrap_or_else(|| (log.dir.clone(), 0));
            return Err(LogError::corrupt(
                path,
                offset as u64,
                format!(
                    "group {id}: entries start at {} but its snapshot ends at {}: \
                     a segment it needs is missing",
                    g.first_index, g.snapshot.index
                ),
            ));
        }
    }
    Ok(())
}

fn list_dir(dir: &Path) -> Result<(Vec<u64>, Vec<PathBuf>), LogError> {
    let mut seqs = Vec::new();
    let mut unknown = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| LogError::io(dir, e))? {
        let entry = entry.map_err(|e| LogError::io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        match parse_segment_name(&name) {
            Some(seq) => seqs.push(seq),
            None if name == LOCK_FILE => {}
            None => {
                warn!(path = %entry.path().display(), "unknown file in a multi-group log directory");
                unknown.push(entry.path());
            }
        }
    }
    Ok((seqs, unknown))
}
