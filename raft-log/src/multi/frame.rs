//! On-disk framing of the multi-group log: segment headers, frames and records.
//!
//! Every multi-byte integer is little-endian. A segment is a header followed by frames, each
//! the records of one write (normally one group-commit batch of many groups) under one CRC:
//!
//! ```text
//! segment = header (32 bytes) | frame* | zeroes
//! header  = magic "RAFTMLG1" | version u32 | crc u32 | seq u64 | base u64
//! frame   = total_len u32 | crc u32 | record_count u32 | reserved u32 | record* | zero padding to 8
//! record  = kind u8 | group u64 | body_len u32 | body
//! crc     = crc32(frame[8..total_len]) ^ seed(seq) ^ total_len
//! ```
//!
//! Record bodies by kind: entries `count u32 | entry*`, each entry as the single-group log
//! lays it out (`len u32 | postcard(Entry)`, [`format::lay_out_entry`]); a hard state,
//! compaction point, installed snapshot or group state (create/checkpoint) as postcard of
//! `HardState`, `SnapshotMeta`, `SnapshotMeta`, `(HardState, SnapshotMeta)`; a truncation as
//! the first dropped index `u64`; a group removal and a segment seal with no body; a free
//! mark as the sequence number `u64` below which segments are no longer needed (written and
//! synced before they are deleted). The seal is the last record of every segment but the
//! newest, so a sealed segment that stops early is known to be damaged rather than torn.
//!
//! Every segment starts with a checkpoint: one group-state record per group, then a
//! checkpoint-end record, written and synced before any other record goes into the segment.
//! A newest segment whose checkpoint did not end was cut short by a crash while it was
//! being started, and holds nothing else.
//!
//! A header's `base` is the oldest segment the log held when the segment was created: with
//! the free marks after it, recovery knows which older segments were freed on purpose, so a
//! missing one that was not is an error rather than a silent loss.

use raft_core::{HardState, SnapshotMeta};

use crate::format::{self, RecordError};

/// Names a Raft group within one multi-group log.
pub type GroupId = u64;

/// Bytes before a segment's first frame.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Identifies a multi-group segment file (distinct from the single-group log's).
pub const SEGMENT_MAGIC: [u8; 8] = *b"RAFTMLG1";
/// Version of the segments this code writes and reads.
pub const SEGMENT_VERSION: u32 = 1;
/// Bytes of a frame's fixed header: total length, CRC, record count, reserved.
pub const FRAME_HEADER_BYTES: usize = 16;
/// Bytes of a record's header: kind, group, body length.
pub const RECORD_HEADER_BYTES: usize = 13;
/// Bytes of an entries record's count field.
pub const ENTRY_COUNT_BYTES: usize = 4;
/// Longest body of a hard-state, snapshot or group-state record. It bounds the checkpoint
/// every new segment starts with (one group-state record per group).
pub const STATE_BODY_BYTES_MAX: usize = 1024;

/// What a record does to its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// Entries of consecutive indexes; held entries at or after the first are dropped.
    Entries = 1,
    /// The group's hard state.
    HardState = 2,
    /// Entries at or after the index are dropped.
    Truncate = 3,
    /// Entries up to the snapshot's index are dropped (a local snapshot was taken).
    Compact = 4,
    /// The whole log is replaced by a snapshot received from the leader.
    Install = 5,
    /// The group's hard state and snapshot: written when it is created and, for every
    /// group, at the start of each segment (the checkpoint older segments are freed by).
    GroupState = 6,
    /// The group is gone.
    Remove = 7,
    /// The segment ends here; the next one continues the log.
    Seal = 8,
    /// Segments below the sequence number in the body are no longer needed (group 0).
    FreeBelow = 9,
    /// The checkpoint a segment starts with is complete (group 0, no body).
    CheckpointEnd = 10,
}

impl RecordKind {
    fn from_u8(b: u8) -> Option<RecordKind> {
        Some(match b {
            1 => RecordKind::Entries,
            2 => RecordKind::HardState,
            3 => RecordKind::Truncate,
            4 => RecordKind::Compact,
            5 => RecordKind::Install,
            6 => RecordKind::GroupState,
            7 => RecordKind::Remove,
            8 => RecordKind::Seal,
            9 => RecordKind::FreeBelow,
            10 => RecordKind::CheckpointEnd,
            _ => return None,
        })
    }
}

/// Bytes a seal record takes; every segment keeps room for one.
pub const SEAL_BYTES: usize = RECORD_HEADER_BYTES;

/// The checksum seed of segment `seq`'s frames: a frame copied into another segment fails.
pub fn segment_seed(seq: u64) -> u32 {
    let mut ident = [0u8; 16];
    ident[..8].copy_from_slice(&seq.to_le_bytes());
    ident[8..].copy_from_slice(b"multilog");
    crc32fast::hash(&ident)
}

/// A segment header for segment `seq`, created while `base` was the oldest segment held.
pub fn encode_segment_header(seq: u64, base: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut out = [0u8; SEGMENT_HEADER_BYTES];
    out[0..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&seq.to_le_bytes());
    out[24..32].copy_from_slice(&base.to_le_bytes());
    let crc = header_crc(&out);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The sequence number and base in a segment header, or why the header is invalid.
pub fn decode_segment_header(buf: &[u8]) -> Result<(u64, u64), &'static str> {
    let buf = buf
        .get(..SEGMENT_HEADER_BYTES)
        .ok_or("file shorter than a segment header")?;
    if buf[0..8] != SEGMENT_MAGIC {
        return Err("bad multi-group segment magic");
    }
    if u32_at(buf, 12) != header_crc(buf) {
        return Err("segment header CRC mismatch");
    }
    if u32_at(buf, 8) != SEGMENT_VERSION {
        return Err("unsupported multi-group segment version (this raft-log reads version 1)");
    }
    let (seq, base) = (u64_at(buf, 16), u64_at(buf, 24));
    if base == 0 || base > seq {
        return Err("segment header's base is not a segment before it");
    }
    Ok((seq, base))
}

fn header_crc(buf: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[0..12]);
    h.update(&buf[16..SEGMENT_HEADER_BYTES]);
    h.finalize()
}

pub(crate) fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// A frame being built: records are appended, then [`FrameBuilder::seal`] fills the header.
#[derive(Debug)]
pub struct FrameBuilder {
    buf: Vec<u8>,
    records: u32,
}

impl Default for FrameBuilder {
    fn default() -> Self {
        FrameBuilder {
            buf: vec![0; FRAME_HEADER_BYTES],
            records: 0,
        }
    }
}

impl FrameBuilder {
    /// Whether no record has been added since the last reset.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes so far, header included, padding not.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// The bytes so far (header not yet filled in).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Starts over with an empty frame.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.buf.resize(FRAME_HEADER_BYTES, 0);
        self.records = 0;
    }

    /// Appends a whole record.
    pub fn put_record(&mut self, kind: RecordKind, group: GroupId, body: &[&[u8]]) {
        let body_len: usize = body.iter().map(|b| b.len()).sum();
        self.buf.push(kind as u8);
        self.buf.extend_from_slice(&group.to_le_bytes());
        self.buf.extend_from_slice(&(body_len as u32).to_le_bytes());
        for part in body {
            self.buf.extend_from_slice(part);
        }
        self.records += 1;
    }

    /// Fills the header (length, count, CRC under `seed`) and pads to 8 bytes; returns the
    /// frame's bytes, ready to write.
    pub fn seal(&mut self, seed: u32) -> &[u8] {
        let total_len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&total_len.to_le_bytes());
        self.buf[8..12].copy_from_slice(&self.records.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[8..]) ^ seed ^ total_len;
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        self.buf.resize(format::align_up(self.buf.len()), 0);
        &self.buf
    }
}

/// A frame located and CRC-checked in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Offset of its header.
    pub offset: usize,
    /// Offset just past its last record.
    pub records_end: usize,
    /// Records it holds.
    pub record_count: u32,
    /// Offset just past its padding: where the next frame starts.
    pub end_offset: usize,
}

/// Reads and checks the frame at `offset` of `buf` (CRC and padding; the records are
/// checked as they are decoded). Never panics, whatever `buf` holds.
pub fn read_frame(buf: &[u8], offset: usize, seed: u32) -> Result<Frame, RecordError> {
    let len_end = offset.checked_add(4).ok_or(RecordError::Short)?;
    let total_len = buf
        .get(offset..len_end)
        .map(|b| u32_at(b, 0) as usize)
        .ok_or(RecordError::Short)?;
    if total_len == 0 {
        return Err(RecordError::Zero);
    }
    if total_len < FRAME_HEADER_BYTES {
        return Err(RecordError::Decode);
    }
    let end = offset.checked_add(total_len).ok_or(RecordError::Short)?;
    let frame = buf.get(offset..end).ok_or(RecordError::Short)?;
    let crc = crc32fast::hash(&frame[8..]) ^ seed ^ total_len as u32;
    if crc != u32_at(frame, 4) {
        return Err(RecordError::Crc);
    }
    let end_offset = offset + format::align_up(total_len);
    let padding = buf.get(end..end_offset.min(buf.len())).unwrap_or(&[]);
    if padding.iter().any(|&b| b != 0) {
        return Err(RecordError::Padding);
    }
    Ok(Frame {
        offset,
        records_end: end,
        record_count: u32_at(frame, 8),
        end_offset,
    })
}

/// One record of a frame, as found by [`records`].
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// What it does.
    pub kind: RecordKind,
    /// Whose it is.
    pub group: GroupId,
    /// Its body.
    pub body: &'a [u8],
    /// Offset of the body in the buffer the frame was read from.
    pub body_offset: usize,
}

/// The records of a checked frame, in order; `Err((offset, reason))` for a malformed one.
pub fn records(buf: &[u8], frame: Frame) -> Result<Vec<Record<'_>>, (usize, &'static str)> {
    let mut out = Vec::with_capacity(frame.record_count.min(1 << 16) as usize);
    let mut at = frame.offset + FRAME_HEADER_BYTES;
    for _ in 0..frame.record_count {
        let header = buf
            .get(at..at + RECORD_HEADER_BYTES)
            .filter(|_| at + RECORD_HEADER_BYTES <= frame.records_end)
            .ok_or((at, "record header runs past its frame"))?;
        let kind = RecordKind::from_u8(header[0]).ok_or((at, "unknown record kind"))?;
        let group = u64_at(header, 1);
        let body_len = u32_at(header, 9) as usize;
        let body_offset = at + RECORD_HEADER_BYTES;
        let body_end = body_offset
            .checked_add(body_len)
            .filter(|&e| e <= frame.records_end)
            .ok_or((at, "record body runs past its frame"))?;
        out.push(Record {
            kind,
            group,
            body: &buf[body_offset..body_end],
            body_offset,
        });
        at = body_end;
    }
    if at != frame.records_end {
        return Err((at, "bytes after the frame's last record"));
    }
    Ok(out)
}

/// postcard of a hard state, bounded by [`STATE_BODY_BYTES_MAX`] (`Err` holds its size).
pub fn encode_hard_state(hs: &HardState) -> Result<Vec<u8>, usize> {
    bounded(postcard::to_stdvec(hs))
}

/// postcard of a snapshot's metadata, bounded like [`encode_hard_state`].
pub fn encode_snapshot_meta(meta: &SnapshotMeta) -> Result<Vec<u8>, usize> {
    bounded(postcard::to_stdvec(meta))
}

/// postcard of a group's state, bounded like [`encode_hard_state`].
pub fn encode_group_state(hs: &HardState, meta: &SnapshotMeta) -> Result<Vec<u8>, usize> {
    bounded(postcard::to_stdvec(&(hs, meta)))
}

fn bounded(encoded: Result<Vec<u8>, postcard::Error>) -> Result<Vec<u8>, usize> {
    match encoded {
        Ok(v) if v.len() <= STATE_BODY_BYTES_MAX => Ok(v),
        Ok(v) => Err(v.len()),
        Err(_) => Err(usize::MAX),
    }
}

/// Decodes a body that must be exactly one postcard value.
pub fn decode_body<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Option<T> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((value, [])) => Some(value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_frame(seed: u32) -> Vec<u8> {
        let mut f = FrameBuilder::default();
        f.put_record(RecordKind::Truncate, 7, &[&9u64.to_le_bytes()]);
        f.put_record(
            RecordKind::HardState,
            3,
            &[&encode_hard_state(&HardState::default()).unwrap()],
        );
        f.put_record(RecordKind::Remove, 1 << 40, &[]);
        f.seal(seed).to_vec()
    }

    #[test]
    fn a_frame_round_trips_and_other_segments_reject_it() {
        let seed = segment_seed(5);
        let buf = sample_frame(seed);
        assert_eq!(buf.len() % 8, 0);
        let frame = read_frame(&buf, 0, seed).unwrap();
        assert_eq!((frame.record_count, frame.end_offset), (3, buf.len()));
        let recs = records(&buf, frame).unwrap();
        assert_eq!(
            recs.iter().map(|r| (r.kind, r.group)).collect::<Vec<_>>(),
            vec![
                (RecordKind::Truncate, 7),
                (RecordKind::HardState, 3),
                (RecordKind::Remove, 1 << 40)
            ]
        );
        assert_eq!(recs[0].body, 9u64.to_le_bytes());
        assert_eq!(read_frame(&buf, 0, segment_seed(6)), Err(RecordError::Crc));
    }

    #[test]
    fn every_bit_flip_of_a_frame_is_caught() {
        let seed = segment_seed(1);
        let buf = sample_frame(seed);
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                read_frame(&bad, 0, seed).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn segment_headers_round_trip_and_reject_flips() {
        let h = encode_segment_header(42, 40);
        assert_eq!(decode_segment_header(&h), Ok((42, 40)));
        for bit in 0..SEGMENT_HEADER_BYTES * 8 {
            let mut bad = h;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_segment_header(&bad).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn oversized_state_bodies_are_refused() {
        let meta = SnapshotMeta {
            index: 1,
            term: 1,
            membership: raft_core::Membership::new_voters((1..300).map(|i| i << 40)),
        };
        assert!(encode_snapshot_meta(&meta).is_err());
    }
}
