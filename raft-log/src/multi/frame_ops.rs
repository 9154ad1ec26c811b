//! The write path: encoding appends into frames, writing frames, starting segments (with
//! their checkpoint) and freeing the segments no group needs.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use raft_core::{Entry, Index};
use tracing::info;

use crate::error::LogError;
use crate::format::{self, BatchError};

use super::frame::{
    self, RecordKind, ENTRY_COUNT_BYTES, FRAME_HEADER_BYTES, RECORD_HEADER_BYTES, SEAL_BYTES,
    SEGMENT_HEADER_BYTES,
};
use super::group::EntryLoc;
use super::{map_file, GroupId, MultiLog, Segment};

/// Name of segment `seq`.
pub(super) fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// The sequence number in a segment's name.
pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Encodes `entries` (validated by the caller) as records of `group`, cut so that each fits
/// a frame, and indexes them.
pub(super) fn append(
    log: &mut MultiLog,
    group: GroupId,
    entries: &[Entry],
) -> Result<(), LogError> {
    let mut scratch = std::mem::take(&mut log.scratch);
    let mut parts = std::mem::take(&mut log.parts);
    scratch.clear();
    parts.clear();
    let laid_out = format::lay_out_entries(
        entries,
        &mut scratch,
        &mut parts,
        usize::MAX,
        log.options.entry_bytes_max as u64,
    );
    let result = match laid_out {
        Err(BatchError::TooLarge {
            index,
            payload_bytes,
        }) => Err(LogError::EntryTooLarge {
            index,
            bytes: payload_bytes,
            entry_bytes_max: log.options.entry_bytes_max as u64,
        }),
        Err(BatchError::Encode { index, error }) => Err(LogError::Invalid(format!(
            "group {group}: entry {index} does not encode: {error}"
        ))),
        Ok(_) => append_laid_out(log, group, entries, &scratch, &parts),
    };
    log.scratch = scratch;
    log.parts = parts;
    result
}

fn append_laid_out(
    log: &mut MultiLog,
    group: GroupId,
    entries: &[Entry],
    scratch: &[u8],
    parts: &[(usize, format::EntryParts)],
) -> Result<(), LogError> {
    let chunk_bytes_max =
        log.options.frame_bytes_max - FRAME_HEADER_BYTES - RECORD_HEADER_BYTES - ENTRY_COUNT_BYTES;
    let first_index = entries[0].index;
    let mut locs = Vec::with_capacity(entries.len());
    let mut from = 0;
    while from < entries.len() {
        // As many entries as fit one frame (at least one: options guarantee it fits).
        let start = parts[from].0;
        let mut to = from + 1;
        while to < entries.len() && parts[to].0 + parts[to].1.entry_bytes - start <= chunk_bytes_max
        {
            to += 1;
        }
        let end = parts[to - 1].0 + parts[to - 1].1.entry_bytes;
        let count = ((to - from) as u32).to_le_bytes();
        make_room(log, RECORD_HEADER_BYTES + ENTRY_COUNT_BYTES + end - start)?;
        let seg = log.segments.back().expect("open").seq;
        // Where the chunk's bytes land in the segment.
        let body_at =
            log.write_offset + (log.frame.len() + RECORD_HEADER_BYTES + ENTRY_COUNT_BYTES) as u64;
        log.frame
            .put_record(RecordKind::Entries, group, &[&count, &scratch[start..end]]);
        for (i, &(at, _)) in parts[from..to].iter().enumerate() {
            locs.push(EntryLoc {
                segment: seg,
                offset: u32::try_from(body_at + (at - start) as u64)
                    .expect("segments are below 2 GiB"),
                term: entries[from + i].term,
            });
        }
        from = to;
    }
    log.groups
        .get_mut(&group)
        .expect("validated")
        .append(first_index as Index, locs);
    Ok(())
}

/// Makes room in the current frame for a record of `bytes`: writes the frame if the record
/// would take it past `frame_bytes_max`, starts a new segment if it would not fit this one
/// (keeping room for the seal).
pub(super) fn make_room(log: &mut MultiLog, bytes: usize) -> Result<(), LogError> {
    if log.frame.len() + bytes > log.options.frame_bytes_max {
        flush(log)?;
    }
    let capacity = log.segments.back().expect("open").capacity;
    if log.write_offset + room_needed(log.frame.len() + bytes) > capacity {
        roll(log)?;
        if log.frame.len() + bytes > log.options.frame_bytes_max {
            flush(log)?;
        }
        let capacity = log.segments.back().expect("open").capacity;
        if log.write_offset + room_needed(log.frame.len() + bytes) > capacity {
            // Options make this unreachable; if it is not, part of an append may already be
            // in the frame while the group's index lacks it: nothing may follow.
            log.poisoned = true;
            return Err(LogError::Invalid(format!(
                "a record of {bytes} bytes does not fit a fresh segment of {capacity} bytes"
            )));
        }
    }
    Ok(())
}

/// Segment bytes a frame of `frame_bytes` needs: itself, padded, and room for a frame
/// holding only the seal after it (the seal may have to go in a frame of its own).
fn room_needed(frame_bytes: usize) -> u64 {
    (format::align_up(frame_bytes) + format::align_up(FRAME_HEADER_BYTES + SEAL_BYTES)) as u64
}

/// Writes the pending frame, if any.
pub(super) fn flush(log: &mut MultiLog) -> Result<(), LogError> {
    if log.frame.is_empty() {
        return Ok(());
    }
    let seg = log.segments.back().expect("open");
    let bytes = log.frame.seal(seg.seed);
    if let Err(e) = seg.file.write_all_at(bytes, log.write_offset) {
        log.poisoned = true;
        return Err(LogError::io(&seg.path, e));
    }
    log.write_offset += bytes.len() as u64;
    log.frame.reset();
    log.dirty = true;
    Ok(())
}

/// Seals the newest segment (its last record, written and synced) and starts the next one.
pub(super) fn roll(log: &mut MultiLog) -> Result<(), LogError> {
    // `make_room` left room for the seal, in this frame or one of its own.
    log.frame.put_record(RecordKind::Seal, 0, &[]);
    flush(log)?;
    let seg = log.segments.back().expect("open");
    if let Err(e) = seg.file.sync_data() {
        log.poisoned = true;
        return Err(LogError::io(&seg.path, e));
    }
    log.dirty = false;
    start_segment(log)
}

/// Starts the segment after the newest (or the first one) with a checkpoint of every
/// group's state. The newest segment, if any, must be sealed already.
pub(super) fn start_segment(log: &mut MultiLog) -> Result<(), LogError> {
    let seq = log.segments.back().map_or(1, |s| s.seq + 1);
    let base = log.segments.front().map_or(seq, |s| s.seq);
    let seg = create_segment(log, seq, base)?;
    log.segments.push_back(seg);
    log.write_offset = SEGMENT_HEADER_BYTES as u64;
    write_checkpoint(log)
}

/// Creates segment `seq`: sized, header written and synced, directory synced.
fn create_segment(log: &mut MultiLog, seq: u64, base: u64) -> Result<Segment, LogError> {
    let path = log.dir.join(segment_name(seq));
    let fail = |log: &mut MultiLog, e| {
        log.poisoned = true;
        LogError::io(&path, e)
    };
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => return Err(fail(log, e)),
    };
    let capacity = log.options.segment_bytes;
    let header = frame::encode_segment_header(seq, base);
    if let Err(e) = file
        .set_len(capacity)
        .and_then(|()| file.write_all_at(&header, 0))
        .and_then(|()| file.sync_all())
        .and_then(|()| log.dir_file.sync_all())
    {
        return Err(fail(log, e));
    }
    let map = map_file(&file, &path)?;
    Ok(Segment {
        seq,
        path,
        file,
        map,
        capacity,
        seed: frame::segment_seed(seq),
    })
}

/// One group-state record per group at the start of the newest segment, so that no
/// group's state depends on an older segment, then the checkpoint's end; synced before
/// anything else goes into the segment, so that a segment holding any other record that
/// survived a crash has its whole checkpoint too (older segments are freed trusting it).
fn write_checkpoint(log: &mut MultiLog) -> Result<(), LogError> {
    let ids: Vec<GroupId> = log.groups.keys().copied().collect();
    for id in ids {
        let g = &log.groups[&id];
        let body = frame::encode_group_state(&g.hard_state, &g.snapshot)
            .expect("state bodies were bounded when written");
        let bytes = RECORD_HEADER_BYTES + body.len();
        if log.frame.len() + bytes > log.options.frame_bytes_max {
            flush(log)?;
        }
        // `MultiOptions::validate` sized segments for a whole checkpoint.
        debug_assert!(
            log.write_offset + room_needed(log.frame.len() + bytes)
                <= log.segments.back().expect("open").capacity
        );
        log.frame.put_record(RecordKind::GroupState, id, &[&body]);
    }
    if log.frame.len() + RECORD_HEADER_BYTES > log.options.frame_bytes_max {
        flush(log)?;
    }
    log.frame.put_record(RecordKind::CheckpointEnd, 0, &[]);
    flush(log)?;
    let seg = log.segments.back().expect("open");
    if let Err(e) = seg.file.sync_data() {
        log.poisoned = true;
        return Err(LogError::io(&seg.path, e));
    }
    log.dirty = false;
    Ok(())
}

/// Re-appends in the newest segment the entries of the groups that hold some in the oldest,
/// smallest first and at most `rewrite_entries_max` in all, so that a later sync can free
/// it. Replay reads the copy as an append at the group's first index, which replaces the
/// entries it held by the same ones. Only a group whose entries fit one record is moved: a
/// crash keeps all of a record or none, but of a copy cut into several records it could
/// keep the first, whose append drops the held entries after it (possibly committed).
pub(super) fn rewrite_oldest(log: &mut MultiLog) -> Result<(), LogError> {
    let record_bytes_max =
        log.options.frame_bytes_max - FRAME_HEADER_BYTES - RECORD_HEADER_BYTES - ENTRY_COUNT_BYTES;
    let (mut laid_out, mut parts) = (Vec::new(), Vec::new());
    let oldest = log.segments.front().expect("open").seq;
    let mut pinning: Vec<(usize, GroupId)> = log
        .groups
        .iter()
        .filter(|(_, g)| g.oldest_segment() == Some(oldest))
        .map(|(&id, g)| (g.locs.len(), id))
        .collect();
    pinning.sort_unstable();
    let mut budget = log.options.rewrite_entries_max;
    for (count, id) in pinning {
        if count > budget {
            break;
        }
        let g = &log.groups[&id];
        // Read at most about one record's worth: a group too large to move costs every sync
        // no more than that while it pins the oldest segment.
        let entries = log
            .entries(id, g.first_index, g.last_index() + 1, record_bytes_max)
            .map_err(|e| LogError::Invalid(format!("moving group {id} forward: {e}")))?;
        if entries.len() < count {
            continue;
        }
        laid_out.clear();
        parts.clear();
        // Nothing is borrowed (`usize::MAX`), so every byte of the record body is laid out.
        let fits = format::lay_out_entries(
            &entries,
            &mut laid_out,
            &mut parts,
            usize::MAX,
            log.options.entry_bytes_max as u64,
        )
        .is_ok_and(|_| laid_out.len() <= record_bytes_max);
        if !fits {
            continue;
        }
        budget -= count;
        append(log, id, &entries)?;
        log.maybe_freed = true;
    }
    Ok(())
}

/// The oldest segment some group holds an entry in (the newest when none does): every
/// segment before it can go, since the checkpoint at its start holds every group's state.
pub(super) fn first_needed(log: &MultiLog) -> u64 {
    let newest = log.segments.back().expect("open").seq;
    log.groups
        .values()
        .filter_map(|g| g.oldest_segment())
        .min()
        .unwrap_or(newest)
        .min(newest)
}

/// Deletes the segments before `below`. Called right after a sync that made durable the
/// records that freed them, the free mark naming `below`, and (in an older sync) the
/// checkpoint at the start of segment `below`.
pub(super) fn free_segments(log: &mut MultiLog, below: u64) -> Result<(), LogError> {
    let mut freed = 0;
    while log.segments.front().is_some_and(|s| s.seq < below) {
        let seg = log.segments.pop_front().expect("checked");
        if let Err(e) = std::fs::remove_file(&seg.path) {
            log.poisoned = true;
            return Err(LogError::io(&seg.path, e));
        }
        info!(path = %seg.path.display(), "freed a multi-group log segment no group needs");
        freed += 1;
    }
    if freed > 0 {
        if let Err(e) = log.dir_file.sync_all() {
            log.poisoned = true;
            return Err(LogError::io(&log.dir, e));
        }
    }
    Ok(())
}
