//! On-disk framing: segment headers, batch records and hard-state slots.
//!
//! Every multi-byte integer is little-endian. A segment holds batch records, each the
//! entries of one append (or the part of it that fit the segment) under one CRC:
//!
//! ```text
//! batch  = header | term runs | entries | zero padding to 8 bytes
//! header = total_len u32 | crc u32 | first_index u64 | count u32 | run_count u32   (24 bytes)
//! run    = first_index u64 | term u64                                               (16 bytes)
//! entry  = len u32 | postcard(Entry)
//! crc    = crc32(batch[8..total_len]) ^ seed ^ total_len
//! ```
//!
//! `total_len` counts from the header's first byte to the last entry's last byte. The seed
//! is derived from the segment's epoch and first index, so a batch left in a recycled file
//! by its earlier life fails the check of the segment it now is. A record with `count` 0 is
//! a truncation: written right after the batch holding `first_index` (strictly inside it),
//! it drops that batch's entries from `first_index` on (see `Log::truncate_suffix`).
//! Batches start at 8-byte aligned offsets so that recovery can look for a valid one after
//! a bad one without trying every byte.

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, HardState, Index, Membership, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};

/// Bytes before the first batch of a segment.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Identifies a segment file; the version follows it in the header.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RAFTLOG1";
/// Version of the segments this code writes and reads: 3, batch records. Versions 1 and 2
/// (one record per entry) are refused; nothing written by them was deployed.
pub const SEGMENT_VERSION: u32 = 3;
/// Bytes of a batch's fixed header: total length, CRC, first index, count, run count.
pub const BATCH_HEADER_BYTES: usize = 24;
/// Bytes of one term run in a batch: its first index and its term.
pub const TERM_RUN_BYTES: usize = 16;
/// Bytes of an entry's length field inside a batch.
pub const ENTRY_LEN_BYTES: usize = 4;
/// Batches start at multiples of this.
pub const BATCH_ALIGN_BYTES: usize = 8;
/// Zero bytes every write leaves after its last batch when the file past it may hold
/// records of an earlier life (a recycled segment): where recovery sees the data end.
pub const END_MARKER_BYTES: usize = 8;
/// Bytes of a truncation record (a batch header with no entries), padding included.
pub const TRUNCATION_BYTES: usize = BATCH_HEADER_BYTES;

/// Size of each of the two hard-state slots in the state file.
pub const STATE_SLOT_BYTES: usize = 16 * 1024;
/// Bytes of a slot's frame before its payload: magic, CRC, sequence number, length, reserved.
pub const STATE_SLOT_HEADER_BYTES: usize = 24;
const STATE_MAGIC: [u8; 4] = *b"RST1";

/// `n` rounded up to the batch alignment.
pub fn align_up(n: usize) -> usize {
    n.div_ceil(BATCH_ALIGN_BYTES) * BATCH_ALIGN_BYTES
}

/// Bytes of a batch's header and term runs.
pub fn batch_head_bytes(run_count: usize) -> usize {
    BATCH_HEADER_BYTES + run_count * TERM_RUN_BYTES
}

/// Bytes a batch with `run_count` term runs and `entry_bytes` of entries (length fields
/// included) occupies, padding included.
pub fn batch_bytes(run_count: usize, entry_bytes: usize) -> usize {
    align_up(batch_head_bytes(run_count) + entry_bytes)
}

/// Number of runs of equal terms in `entries`.
pub fn term_run_count(entries: &[Entry]) -> usize {
    match entries.first() {
        None => 0,
        Some(first) => {
            let mut term = first.term;
            let mut runs = 1;
            for e in entries {
                if e.term != term {
                    term = e.term;
                    runs += 1;
                }
            }
            runs
        }
    }
}

/// The checksum seed of one segment's batches, from the segment's header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchKey {
    /// CRC32 of the segment's epoch and first index, mixed into every batch's CRC. Seed 0
    /// (the default) is for batches that belong to no segment (benchmarks, tests).
    pub seed: u32,
}

/// The fixed header of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// [`SEGMENT_VERSION`].
    pub version: u32,
    /// Incremented by every snapshot install; segments of an older epoch are stale.
    pub epoch: u64,
    /// Index of the segment's first entry.
    pub first_index: Index,
}

impl SegmentHeader {
    /// A header of the current version.
    pub fn new(epoch: u64, first_index: Index) -> SegmentHeader {
        SegmentHeader {
            version: SEGMENT_VERSION,
            epoch,
            first_index,
        }
    }

    /// The checksum key of this segment's batches.
    pub fn batch_key(&self) -> BatchKey {
        let mut ident = [0u8; 16];
        ident[..8].copy_from_slice(&self.epoch.to_le_bytes());
        ident[8..].copy_from_slice(&self.first_index.to_le_bytes());
        BatchKey {
            seed: crc32fast::hash(&ident),
        }
    }

    /// The header's bytes as written at the start of the segment file.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        out[24..32].copy_from_slice(&self.first_index.to_le_bytes());
        let crc = segment_header_crc(&out);
        out[12..16].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a header, or says why it is invalid.
    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, &'static str> {
        let buf = buf
            .get(..SEGMENT_HEADER_BYTES)
            .ok_or("file shorter than a segment header")?;
        if buf[0..8] != SEGMENT_MAGIC {
            return Err("bad segment magic");
        }
        if u32_at(buf, 12) != segment_header_crc(buf) {
            return Err("segment header CRC mismatch");
        }
        let version = u32_at(buf, 8);
        if version != SEGMENT_VERSION {
            return Err("unsupported segment version (this raft-log reads version 3 only)");
        }
        Ok(SegmentHeader {
            version,
            epoch: u64_at(buf, 16),
            first_index: u64_at(buf, 24),
        })
    }
}

fn segment_header_crc(buf: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[0..12]);
    h.update(&buf[16..SEGMENT_HEADER_BYTES]);
    h.finalize()
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// postcard's variant indexes of `EntryPayload`.
const NOOP_VARIANT: u64 = 0;
const COMMAND_VARIANT: u64 = 1;
/// Longest postcard varint of a u64.
const VARINT_BYTES_MAX: usize = 10;

/// Longest prefix postcard writes before a command's bytes: index, term, variant, length.
const PREFIX_BYTES_MAX: usize = 4 * VARINT_BYTES_MAX;

/// Stores postcard's unsigned varint (LEB128) of `v` at `at`; returns the address after it.
///
/// # Safety
/// `at` must be valid for writes of `VARINT_BYTES_MAX` bytes.
#[inline(always)]
unsafe fn put_varint(mut at: *mut u8, mut v: u64) -> *mut u8 {
    while v >= 0x80 {
        at.write(v as u8 | 0x80);
        at = at.add(1);
        v >>= 7;
    }
    at.write(v as u8);
    at.add(1)
}

/// Command payloads at least this long are not copied into the encoding buffer: the batch
/// is written with `pwritev` straight from the entry's `Bytes` (see [`lay_out_entry`]).
/// Below a page, an extra iovec per entry is not clearly cheaper than the copy.
pub const VECTORED_MIN_BYTES: usize = 4096;

/// How one entry was laid out by [`lay_out_entry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryParts {
    /// Bytes appended to the buffer: the whole entry (length field and payload), or its
    /// length field and the payload's prefix when `borrowed`.
    pub head_bytes: usize,
    /// The command's bytes follow the head, taken from the entry itself.
    pub borrowed: bool,
    /// The entry's size in the batch: length field and payload.
    pub entry_bytes: usize,
    /// The encoded entry's size (postcard), without the length field.
    pub payload_bytes: usize,
}

/// Why [`lay_out_entries`] stopped.
#[derive(Debug, PartialEq)]
pub enum BatchError {
    /// The entry at `index` does not encode.
    Encode {
        /// The entry's index.
        index: Index,
        /// postcard's reason.
        error: postcard::Error,
    },
    /// The entry at `index` encodes to a payload above the maximum.
    TooLarge {
        /// The entry's index.
        index: Index,
        /// Its encoded size.
        payload_bytes: u64,
    },
}

/// The command bytes an entry laid out as `parts` leaves out of the buffer.
#[inline]
pub fn borrowed_data(entry: &Entry, parts: EntryParts) -> &[u8] {
    match (&entry.payload, parts.borrowed) {
        (EntryPayload::Command(data), true) => data,
        _ => &[],
    }
}

/// Appends the entries of `entries` to `out` (length field and postcard payload each, no
/// batch header) and where each starts and how it was laid out to `parts`; returns whether
/// any entry borrows its command's bytes (see [`lay_out_entry`]). Stops at the first entry
/// that does not encode or whose payload is above `payload_bytes_max`; the entries before
/// it stay in `out`.
pub fn lay_out_entries(
    entries: &[Entry],
    out: &mut Vec<u8>,
    parts: &mut Vec<(usize, EntryParts)>,
    borrow_min_bytes: usize,
    payload_bytes_max: u64,
) -> Result<bool, BatchError> {
    parts.reserve(entries.len());
    let mut any_borrowed = false;
    for e in entries {
        let start = out.len();
        let p = lay_out_entry(e, out, borrow_min_bytes).map_err(|error| BatchError::Encode {
            index: e.index,
            error,
        })?;
        if p.payload_bytes as u64 > payload_bytes_max {
            out.truncate(start);
            return Err(BatchError::TooLarge {
                index: e.index,
                payload_bytes: p.payload_bytes as u64,
            });
        }
        any_borrowed |= p.borrowed;
        parts.push((start, p));
    }
    Ok(any_borrowed)
}

/// Appends `entry` to `out` as a batch holds it: `len u32 | postcard(entry)`. A command of
/// at least `borrow_min_bytes` is left out of `out`: the entry in the batch is then
/// `out[head] ++ data`, one copy fewer. Noops and commands, the hot path, are encoded by
/// hand (postcard's generic serializer cost ~60 ns an entry); the `same_bytes_as_postcard`
/// tests hold the two encodings equal. On error `out` is as it was.
#[inline(always)]
pub fn lay_out_entry(
    entry: &Entry,
    out: &mut Vec<u8>,
    borrow_min_bytes: usize,
) -> Result<EntryParts, postcard::Error> {
    let start = out.len();
    let data: &[u8] = match &entry.payload {
        EntryPayload::Noop => &[],
        EntryPayload::Command(data) => data,
        EntryPayload::Membership(_) => {
            // Rare: through postcard, into a buffer of its own so that an error leaves
            // `out` as it was.
            let payload = postcard::to_stdvec(entry)?;
            let len =
                u32::try_from(payload.len()).map_err(|_| postcard::Error::SerializeBufferFull)?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&payload);
            let entry_bytes = ENTRY_LEN_BYTES + payload.len();
            return Ok(EntryParts {
                head_bytes: entry_bytes,
                borrowed: false,
                entry_bytes,
                payload_bytes: payload.len(),
            });
        }
    };
    let borrowed = data.len() >= borrow_min_bytes;
    let copied_bytes = if borrowed { 0 } else { data.len() };
    out.reserve(ENTRY_LEN_BYTES + PREFIX_BYTES_MAX + copied_bytes);
    // The prefix postcard writes for `Entry` before a command's bytes (index, term, variant
    // and, for a command, the bytes' length, all varints) and the bytes, stored straight
    // into the reserved capacity: with `push` and `extend_from_slice` every byte paid for a
    // capacity check and the copy went through a length update.
    //
    // SAFETY: `reserve` made room for the bytes written below past `start`: the 4-byte
    // length, at most `PREFIX_BYTES_MAX` prefix bytes and `copied_bytes` bytes. `set_len`
    // covers only bytes written.
    let prefix_bytes = unsafe {
        let base = out.as_mut_ptr().add(start);
        let mut at = base.add(ENTRY_LEN_BYTES);
        at = put_varint(at, entry.index);
        at = put_varint(at, entry.term);
        if matches!(entry.payload, EntryPayload::Noop) {
            at = put_varint(at, NOOP_VARIANT);
        } else {
            at = put_varint(at, COMMAND_VARIANT);
            at = put_varint(at, data.len() as u64);
        }
        let prefix_bytes = at.offset_from(base) as usize - ENTRY_LEN_BYTES;
        std::ptr::copy_nonoverlapping(data.as_ptr(), at, copied_bytes);
        prefix_bytes
    };
    let payload_bytes = prefix_bytes + data.len();
    let len = u32::try_from(payload_bytes).map_err(|_| postcard::Error::SerializeBufferFull)?;
    let entry_bytes = ENTRY_LEN_BYTES + payload_bytes;
    let head_bytes = if borrowed {
        ENTRY_LEN_BYTES + prefix_bytes
    } else {
        entry_bytes
    };
    // SAFETY: as above; the length's 4 bytes are inside the reserved room.
    unsafe {
        std::ptr::write_unaligned(out.as_mut_ptr().add(start).cast(), len.to_le_bytes());
        out.set_len(start + head_bytes);
    }
    Ok(EntryParts {
        head_bytes,
        borrowed,
        entry_bytes,
        payload_bytes,
    })
}

/// Appends a batch's header and term runs for `entries` to `out`, with `total_len` set for
/// `entry_bytes` bytes of entries and the CRC left zero for [`seal_batch`]. Returns the
/// header's length. `entries` must be non-empty, of consecutive indexes.
pub fn put_batch_head(out: &mut Vec<u8>, entries: &[Entry], entry_bytes: usize) -> usize {
    let runs = term_run_count(entries);
    let head_bytes = batch_head_bytes(runs);
    let total_len = head_bytes + entry_bytes;
    out.reserve(head_bytes);
    out.extend_from_slice(&(total_len as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&entries[0].index.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&(runs as u32).to_le_bytes());
    let mut term = None;
    for e in entries {
        if term != Some(e.term) {
            term = Some(e.term);
            out.extend_from_slice(&e.index.to_le_bytes());
            out.extend_from_slice(&e.term.to_le_bytes());
        }
    }
    head_bytes
}

/// Computes the CRC of a batch whose bytes are `head` (header and runs, as
/// [`put_batch_head`] wrote them) followed by `body` (the entries, in pieces) and stores it
/// in `head`.
pub fn seal_batch(head: &mut [u8], key: BatchKey, body: &[&[u8]]) {
    let total_len = u32_at(head, 0);
    let mut h = crc32fast::Hasher::new();
    h.update(&head[8..]);
    for part in body {
        h.update(part);
    }
    let crc = h.finalize() ^ key.seed ^ total_len;
    head[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends `entries` (non-empty, consecutive indexes) to `out` as one whole batch under
/// `key`, padding included, every command's bytes copied. Returns the batch's size.
pub fn encode_batch(
    entries: &[Entry],
    key: BatchKey,
    out: &mut Vec<u8>,
) -> Result<usize, BatchError> {
    let start = out.len();
    let mut body = Vec::new();
    let mut parts = Vec::new();
    lay_out_entries(entries, &mut body, &mut parts, usize::MAX, u64::MAX)?;
    let head_bytes = put_batch_head(out, entries, body.len());
    seal_batch(&mut out[start..start + head_bytes], key, &[&body]);
    out.extend_from_slice(&body);
    out.resize(start + align_up(head_bytes + body.len()), 0);
    Ok(out.len() - start)
}

/// A truncation record under `key`: the entries from `first_index` on of the batch just
/// before it are dropped.
pub fn encode_truncation(first_index: Index, key: BatchKey) -> [u8; TRUNCATION_BYTES] {
    let mut out = [0u8; TRUNCATION_BYTES];
    out[0..4].copy_from_slice(&(TRUNCATION_BYTES as u32).to_le_bytes());
    out[8..16].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32fast::hash(&out[8..]) ^ key.seed ^ TRUNCATION_BYTES as u32;
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Why no batch could be read at an offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// A zero length field: the end of written data, if everything after it is zero too.
    Zero,
    /// The batch runs past the end of the buffer.
    Short,
    /// An entry's length exceeds the configured maximum.
    TooLarge,
    /// The CRC does not match the batch's bytes.
    Crc,
    /// The CRC matched but the header, term runs or entries are inconsistent.
    Decode,
    /// The padding after the batch is not zero (the CRC does not cover it).
    Padding,
}

impl RecordError {
    /// The reason in words, for logs and `LogError::Corrupt`.
    pub fn describe(self) -> &'static str {
        match self {
            RecordError::Zero => "zero length field followed by non-zero bytes",
            RecordError::Short => "batch runs past the end of the segment",
            RecordError::TooLarge => "entry length above entry_bytes_max",
            RecordError::Crc => "batch CRC mismatch",
            RecordError::Decode => "batch header, term runs or entries inconsistent",
            RecordError::Padding => "batch padding is not zero",
        }
    }
}

/// A batch located and CRC-checked in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchFrame {
    /// Index of its first entry; for a truncation record, the first index it drops.
    pub first_index: Index,
    /// Entries it holds; 0 for a truncation record.
    pub count: u32,
    /// Offset just past the batch's padding: where the next batch starts.
    pub end_offset: usize,
}

/// Reads and checks the batch at `offset` of `buf`: CRC, header, term runs, and every
/// entry's length and (decoded from its payload) index and term. Appends where each entry
/// (its length field) starts to `entry_offsets` and the batch's term runs to `runs`; on
/// error both are left as they were. Never panics, whatever `buf` holds.
pub fn read_batch(
    buf: &[u8],
    offset: usize,
    entry_bytes_max: usize,
    key: BatchKey,
    entry_offsets: &mut Vec<u32>,
    runs: &mut Vec<(Index, Term)>,
) -> Result<BatchFrame, RecordError> {
    let (offsets_before, runs_before) = (entry_offsets.len(), runs.len());
    let result = read_batch_into(buf, offset, entry_bytes_max, key, entry_offsets, runs);
    if result.is_err() {
        entry_offsets.truncate(offsets_before);
        runs.truncate(runs_before);
    }
    result
}

fn read_batch_into(
    buf: &[u8],
    offset: usize,
    entry_bytes_max: usize,
    key: BatchKey,
    entry_offsets: &mut Vec<u32>,
    runs: &mut Vec<(Index, Term)>,
) -> Result<BatchFrame, RecordError> {
    let len_field = offset
        .checked_add(4)
        .and_then(|end| buf.get(offset..end))
        .ok_or(RecordError::Short)?;
    let total_len = u32_at(len_field, 0) as usize;
    if total_len == 0 {
        return Err(RecordError::Zero);
    }
    let end = offset
        .checked_add(total_len.max(BATCH_HEADER_BYTES))
        .ok_or(RecordError::Short)?;
    let batch = buf.get(offset..end).ok_or(RecordError::Short)?;
    if total_len < BATCH_HEADER_BYTES {
        return Err(RecordError::Decode);
    }
    let crc = crc32fast::hash(&batch[8..]) ^ key.seed ^ total_len as u32;
    if crc != u32_at(batch, 4) {
        return Err(RecordError::Crc);
    }
    let end_offset = offset + align_up(total_len);
    let padding = buf.get(end..end_offset.min(buf.len())).unwrap_or(&[]);
    if padding.iter().any(|&b| b != 0) {
        return Err(RecordError::Padding);
    }
    let first_index = u64_at(batch, 8);
    let count = u32_at(batch, 16);
    let run_count = u32_at(batch, 20) as usize;
    if count == 0 {
        // A truncation record.
        if run_count != 0 || total_len != BATCH_HEADER_BYTES {
            return Err(RecordError::Decode);
        }
        return Ok(BatchFrame {
            first_index,
            count,
            end_offset,
        });
    }
    let last_index = first_index
        .checked_add(u64::from(count) - 1)
        .ok_or(RecordError::Decode)?;
    if run_count == 0 || run_count > count as usize {
        return Err(RecordError::Decode);
    }
    let entries_at = run_count
        .checked_mul(TERM_RUN_BYTES)
        .map(|r| r + BATCH_HEADER_BYTES)
        .filter(|&e| e <= total_len)
        .ok_or(RecordError::Decode)?;
    let runs_from = runs.len();
    let mut prev: Option<(Index, Term)> = None;
    for r in 0..run_count {
        let at = BATCH_HEADER_BYTES + r * TERM_RUN_BYTES;
        let run = (u64_at(batch, at), u64_at(batch, at + 8));
        let in_order = match prev {
            None => run.0 == first_index,
            Some((index, term)) => run.0 > index && run.1 > term && run.0 <= last_index,
        };
        if !in_order {
            return Err(RecordError::Decode);
        }
        runs.push(run);
        prev = Some(run);
    }
    let batch_runs = &runs[runs_from..];
    let mut run = 0;
    let mut at = entries_at;
    for i in 0..u64::from(count) {
        let index = first_index + i;
        if batch_runs
            .get(run + 1)
            .is_some_and(|&(start, _)| start == index)
        {
            run += 1;
        }
        let len = batch
            .get(at..at + ENTRY_LEN_BYTES)
            .map(|b| u32_at(b, 0) as usize)
            .ok_or(RecordError::Decode)?;
        if len > entry_bytes_max {
            return Err(RecordError::TooLarge);
        }
        let payload = batch
            .get(at + ENTRY_LEN_BYTES..at + ENTRY_LEN_BYTES + len)
            .ok_or(RecordError::Decode)?;
        let ((held_index, held_term), _) =
            postcard::take_from_bytes::<(Index, Term)>(payload).map_err(|_| RecordError::Decode)?;
        if (held_index, held_term) != (index, batch_runs[run].1) {
            return Err(RecordError::Decode);
        }
        entry_offsets.push(u32::try_from(offset + at).map_err(|_| RecordError::Short)?);
        at += ENTRY_LEN_BYTES + len;
    }
    if at != total_len || run + 1 != run_count {
        return Err(RecordError::Decode);
    }
    Ok(BatchFrame {
        first_index,
        count,
        end_offset,
    })
}

/// The header fields of a batch at `offset` read without checking its CRC: `(total_len,
/// first_index, count)`. A cheap filter before [`read_batch`] when looking through bytes
/// that are mostly not batches.
pub fn peek_batch(buf: &[u8], offset: usize) -> Option<(usize, Index, u32)> {
    let header = buf.get(offset..offset.checked_add(BATCH_HEADER_BYTES)?)?;
    Some((
        u32_at(header, 0) as usize,
        u64_at(header, 8),
        u32_at(header, 16),
    ))
}

/// Where the payload of the entry whose length field is at `offset` lies in `buf`, for a
/// lookup through the index of entry offsets: the batch's CRC was checked when it was
/// recovered (or it was written by this process), so only the bounds are.
pub fn entry_payload(
    buf: &[u8],
    offset: usize,
    entry_bytes_max: usize,
) -> Result<std::ops::Range<usize>, RecordError> {
    let len = buf
        .get(
            offset
                ..offset
                    .checked_add(ENTRY_LEN_BYTES)
                    .ok_or(RecordError::Short)?,
        )
        .map(|b| u32_at(b, 0) as usize)
        .ok_or(RecordError::Short)?;
    if len > entry_bytes_max {
        return Err(RecordError::TooLarge);
    }
    let from = offset + ENTRY_LEN_BYTES;
    let to = from.checked_add(len).filter(|&to| to <= buf.len());
    to.map(|to| from..to).ok_or(RecordError::Short)
}

/// Mirrors `EntryPayload` with the command's bytes borrowed, so decoding copies nothing.
#[derive(Deserialize)]
enum PayloadRef<'a> {
    Noop,
    Command(&'a [u8]),
    Membership(Membership),
}

#[derive(Deserialize)]
struct EntryRef<'a> {
    index: Index,
    term: Term,
    #[serde(borrow)]
    payload: PayloadRef<'a>,
}

/// Decodes a full entry from a CRC-checked payload. When `backing` is given, `payload` must
/// lie inside it, and a command's bytes become a slice of `backing` instead of a copy.
pub fn decode_entry(payload: &[u8], backing: Option<&Bytes>) -> Result<Entry, RecordError> {
    let (entry, rest) =
        postcard::take_from_bytes::<EntryRef<'_>>(payload).map_err(|_| RecordError::Decode)?;
    if !rest.is_empty() {
        return Err(RecordError::Decode);
    }
    let payload = match entry.payload {
        PayloadRef::Noop => EntryPayload::Noop,
        PayloadRef::Command(data) => EntryPayload::Command(match backing {
            Some(backing) => backing.slice_ref(data),
            None => Bytes::copy_from_slice(data),
        }),
        PayloadRef::Membership(m) => EntryPayload::Membership(m),
    };
    Ok(Entry {
        index: entry.index,
        term: entry.term,
        payload,
    })
}

/// What the state file records: everything that is not an entry but must survive a crash.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// The newest snapshot's metadata (index, term, membership); the log starts after it.
    pub snapshot: SnapshotMeta,
    /// The segment epoch in force; segments of older epochs predate the last snapshot install.
    pub epoch: u64,
}

/// Encodes `record` with sequence number `seq` as one slot image (header and payload).
pub fn encode_state_slot(seq: u64, record: &StateRecord) -> Result<Vec<u8>, usize> {
    let payload = postcard::to_stdvec(record).map_err(|_| usize::MAX)?;
    if STATE_SLOT_HEADER_BYTES + payload.len() > STATE_SLOT_BYTES {
        return Err(payload.len());
    }
    let mut out = vec![0u8; STATE_SLOT_HEADER_BYTES];
    out[0..4].copy_from_slice(&STATE_MAGIC);
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes one slot; `None` when it is empty, torn or otherwise invalid.
pub fn decode_state_slot(slot: &[u8]) -> Option<(u64, StateRecord)> {
    let header = slot.get(..STATE_SLOT_HEADER_BYTES)?;
    if header[0..4] != STATE_MAGIC {
        return None;
    }
    let len = u32_at(header, 16) as usize;
    let payload = slot.get(STATE_SLOT_HEADER_BYTES..STATE_SLOT_HEADER_BYTES.checked_add(len)?)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&header[8..]);
    h.update(payload);
    if h.finalize() != u32_at(header, 4) {
        return None;
    }
    let record: StateRecord = postcard::from_bytes(payload).ok()?;
    Some((u64_at(header, 8), record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: Index, term: Term, kind: usize) -> Entry {
        Entry {
            index,
            term,
            payload: match kind % 4 {
                0 => EntryPayload::Noop,
                1 => EntryPayload::Membership(Membership::new_voters([1, 2, 3])),
                2 => {
                    EntryPayload::Command(Bytes::from(vec![kind as u8; VECTORED_MIN_BYTES + kind]))
                }
                _ => EntryPayload::Command(Bytes::from(vec![kind as u8; (kind * 37) % 300])),
            },
        }
    }

    type ReadAll = (BatchFrame, Vec<u32>, Vec<(Index, Term)>);

    fn read_all(buf: &[u8], key: BatchKey) -> Result<ReadAll, RecordError> {
        let (mut offsets, mut runs) = (Vec::new(), Vec::new());
        read_batch(buf, 0, 1 << 20, key, &mut offsets, &mut runs).map(|f| (f, offsets, runs))
    }

    #[test]
    fn a_batch_with_term_runs_round_trips_and_borrows_command_bytes() {
        let key = SegmentHeader::new(3, 77).batch_key();
        // Terms 2, 2, 3, 5, 5, 5, 9 from an index whose varint grows mid-batch.
        let terms = [2, 2, 3, 5, 5, 5, 9];
        let entries: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| entry(125 + i as Index, t, i))
            .collect();
        let mut buf = Vec::new();
        let size = encode_batch(&entries, key, &mut buf).unwrap();
        assert_eq!((size, size % BATCH_ALIGN_BYTES), (buf.len(), 0));
        let backing = Bytes::from(buf);
        let (frame, offsets, runs) = read_all(&backing, key).unwrap();
        assert_eq!((frame.first_index, frame.count), (125, 7));
        assert_eq!(frame.end_offset, backing.len());
        assert_eq!(runs, vec![(125, 2), (127, 3), (128, 5), (131, 9)]);
        for (e, &at) in entries.iter().zip(&offsets) {
            let range = entry_payload(&backing, at as usize, 1 << 20).unwrap();
            let decoded = decode_entry(&backing[range.clone()], Some(&backing)).unwrap();
            assert_eq!(&decoded, e);
            // The postcard encoding of the borrowed mirror must equal `Entry`'s own.
            assert_eq!(postcard::to_stdvec(e).unwrap(), &backing[range]);
        }
        // Another segment's key rejects the batch.
        assert_eq!(
            read_all(&backing, BatchKey::default()),
            Err(RecordError::Crc)
        );
    }

    #[test]
    fn entries_laid_out_borrowed_equal_the_whole_batch() {
        let key = SegmentHeader::new(1, 5).batch_key();
        for count in [1, 2, 3, 5, 17] {
            let entries: Vec<Entry> = (0..count)
                .map(|i| entry(5 + i as Index, 1 + i as Term / 4, i))
                .collect();
            let mut whole = Vec::new();
            encode_batch(&entries, key, &mut whole).unwrap();
            let (mut body, mut parts) = (vec![9u8; 3], Vec::new());
            let any_borrowed = lay_out_entries(
                &entries,
                &mut body,
                &mut parts,
                VECTORED_MIN_BYTES,
                u64::MAX,
            )
            .unwrap();
            assert_eq!(any_borrowed, parts.iter().any(|(_, p)| p.borrowed));
            let mut joined = Vec::new();
            for (e, &(start, p)) in entries.iter().zip(&parts) {
                joined.extend_from_slice(&body[start..start + p.head_bytes]);
                joined.extend_from_slice(borrowed_data(e, p));
                assert_eq!(p.entry_bytes, ENTRY_LEN_BYTES + p.payload_bytes);
            }
            let mut head = Vec::new();
            let head_bytes = put_batch_head(&mut head, &entries, joined.len());
            seal_batch(&mut head, key, &[&joined]);
            head.extend_from_slice(&joined);
            head.resize(batch_bytes(term_run_count(&entries), joined.len()), 0);
            assert_eq!(head, whole, "{count} entries, head {head_bytes}");
        }
    }

    #[test]
    fn every_bit_flip_of_a_batch_is_caught() {
        let entries: Vec<Entry> = (0..4)
            .map(|i| entry(9 + i as Index, 2 + i as Term / 2, 3))
            .collect();
        let mut buf = Vec::new();
        encode_batch(&entries, BatchKey::default(), &mut buf).unwrap();
        read_all(&buf, BatchKey::default()).unwrap();
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                read_all(&bad, BatchKey::default()).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn a_truncation_record_reads_as_a_batch_of_no_entries() {
        let key = SegmentHeader::new(2, 40).batch_key();
        let record = encode_truncation(44, key);
        let (frame, offsets, runs) = read_all(&record, key).unwrap();
        assert_eq!(
            (frame.first_index, frame.count, frame.end_offset),
            (44, 0, TRUNCATION_BYTES)
        );
        assert!(offsets.is_empty() && runs.is_empty());
        assert_eq!(
            read_all(&record, BatchKey::default()),
            Err(RecordError::Crc)
        );
    }

    #[test]
    fn inconsistent_headers_with_good_crcs_are_refused_and_leave_the_outputs_alone() {
        let entries: Vec<Entry> = (0..3)
            .map(|i| entry(1 + i as Index, 1 + i as Term, 3))
            .collect();
        let mut good = Vec::new();
        encode_batch(&entries, BatchKey::default(), &mut good).unwrap();
        let total_len = u32_at(&good, 0) as usize;
        let reseal = |buf: &mut Vec<u8>| {
            let crc = crc32fast::hash(&buf[8..total_len]) ^ total_len as u32;
            buf[4..8].copy_from_slice(&crc.to_le_bytes());
        };
        for (at, value) in [(8usize, 2u64), (16, 2), (16, 4), (20, 2), (24, 2), (48, 1)] {
            let mut bad = good.clone();
            if at == 16 || at == 20 {
                bad[at..at + 4].copy_from_slice(&(value as u32).to_le_bytes());
            } else {
                bad[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            reseal(&mut bad);
            let (mut offsets, mut runs) = (vec![7], vec![(1, 1)]);
            let got = read_batch(
                &bad,
                0,
                1 << 20,
                BatchKey::default(),
                &mut offsets,
                &mut runs,
            );
            assert!(got.is_err(), "field at {at} = {value} accepted: {got:?}");
            assert_eq!((offsets, runs), (vec![7], vec![(1, 1)]));
        }
        // An entry above the maximum.
        let (mut offsets, mut runs) = (Vec::new(), Vec::new());
        assert_eq!(
            read_batch(&good, 0, 3, BatchKey::default(), &mut offsets, &mut runs),
            Err(RecordError::TooLarge)
        );
    }

    #[test]
    fn laying_out_stops_at_an_entry_too_large_and_keeps_the_entries_before_it() {
        let sizes = [10, 20, 3000, 30, 40];
        let entries: Vec<Entry> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Entry {
                index: 1 + i as Index,
                term: 1,
                payload: EntryPayload::Command(Bytes::from(vec![0xCD; n])),
            })
            .collect();
        let (mut out, mut parts) = (Vec::new(), Vec::new());
        let err = lay_out_entries(&entries, &mut out, &mut parts, usize::MAX, 1000).unwrap_err();
        assert!(
            matches!(err, BatchError::TooLarge { index: 3, payload_bytes } if payload_bytes > 3000),
            "{err:?}"
        );
        assert_eq!(parts.len(), 2);
        let (start, p) = parts[1];
        assert_eq!(out.len(), start + p.entry_bytes);
    }

    #[test]
    fn other_versions_are_refused() {
        let mut old = SegmentHeader::new(0, 1);
        assert_eq!(SegmentHeader::decode(&old.encode()), Ok(old));
        for version in [1, 2, 4] {
            old.version = version;
            assert!(
                SegmentHeader::decode(&old.encode()).is_err(),
                "version {version}"
            );
        }
    }

    #[test]
    fn state_slot_round_trips_and_rejects_flips() {
        let record = StateRecord {
            hard_state: HardState {
                term: 5,
                vote: Some(2),
                commit: 9,
            },
            snapshot: SnapshotMeta {
                index: 3,
                term: 2,
                membership: Membership::new_voters([1, 2]),
            },
            epoch: 1,
        };
        let image = encode_state_slot(42, &record).unwrap();
        assert_eq!(decode_state_slot(&image), Some((42, record)));
        for bit in 0..image.len() * 8 {
            let mut bad = image.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                decode_state_slot(&bad),
                None,
                "flip of bit {bit} went unnoticed"
            );
        }
    }
}
