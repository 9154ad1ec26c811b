//! On-disk framing: segment headers, entry records and hard-state slots.
//!
//! Every multi-byte integer is little-endian. Records start at 8-byte aligned offsets so
//! that recovery can look for a valid record after a bad one without trying every byte.

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, HardState, Index, Membership, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};

/// Bytes before the first record of a segment.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Identifies a segment file; the version follows it in the header.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RAFTLOG1";
/// Version of the segments this code writes. Version 1 (CRC over `len ‖ payload`, no seed)
/// is still read; see [`RecordKey`].
pub const SEGMENT_VERSION: u32 = 2;
/// Bytes of a record's frame before its payload: length (u32) and CRC32 (u32).
pub const RECORD_HEADER_BYTES: usize = 8;
/// Records start at multiples of this.
pub const RECORD_ALIGN_BYTES: usize = 8;

/// Size of each of the two hard-state slots in the state file.
pub const STATE_SLOT_BYTES: usize = 16 * 1024;
/// Bytes of a slot's frame before its payload: magic, CRC, sequence number, length, reserved.
pub const STATE_SLOT_HEADER_BYTES: usize = 24;
const STATE_MAGIC: [u8; 4] = *b"RST1";

/// `n` rounded up to the record alignment.
pub fn align_up(n: usize) -> usize {
    n.div_ceil(RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES
}

/// Bytes a record with a payload of `payload_bytes` occupies, padding included.
pub fn record_bytes(payload_bytes: usize) -> usize {
    align_up(RECORD_HEADER_BYTES + payload_bytes)
}

/// How the records of one segment are checksummed, from the segment's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKey {
    /// Segment version 1: `crc32(len ‖ payload)`.
    V1,
    /// Segment version 2: `crc32(payload) ^ seed ^ len`: one pass over contiguous bytes,
    /// from a hasher cloned per record (each fresh `crc32fast` hasher re-runs CPU feature
    /// detection, a third of a small record's CRC cost), still covering the length. The
    /// seed is derived from the segment's epoch and first index, so a record left in a
    /// recycled file by its earlier life fails the check of the segment it now is.
    V2 {
        /// CRC32 of the segment's epoch and first index, mixed into every record's CRC.
        seed: u32,
    },
}

impl Default for RecordKey {
    /// Version 2 with seed 0, for records that belong to no segment (benchmarks, tests).
    fn default() -> Self {
        RecordKey::V2 { seed: 0 }
    }
}

/// The fixed header of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// [`SEGMENT_VERSION`] when written by this code; 1 for older segments.
    pub version: u32,
    /// Incremented by every snapshot install; segments of an older epoch are stale.
    pub epoch: u64,
    /// Index of the segment's first record.
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

    /// The checksum key of this segment's records.
    pub fn record_key(&self) -> RecordKey {
        match self.version {
            1 => RecordKey::V1,
            _ => {
                let mut ident = [0u8; 16];
                ident[..8].copy_from_slice(&self.epoch.to_le_bytes());
                ident[8..].copy_from_slice(&self.first_index.to_le_bytes());
                RecordKey::V2 {
                    seed: crc32fast::hash(&ident),
                }
            }
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
        let version = u32_at(buf, 8);
        if !(1..=SEGMENT_VERSION).contains(&version) {
            return Err("unsupported segment version (written by a newer raft-log?)");
        }
        if u32_at(buf, 12) != segment_header_crc(buf) {
            return Err("segment header CRC mismatch");
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

/// Appends `entry` to `out` as one framed record (length, CRC, postcard payload, padding)
/// under [`RecordKey::default`]. Returns the payload's length.
pub fn encode_record(entry: &Entry, out: &mut Vec<u8>) -> Result<usize, postcard::Error> {
    let start = out.len();
    let parts = encode_record_keyed(entry, out, RecordKey::default(), usize::MAX)?;
    if parts.borrowed {
        let EntryPayload::Command(data) = &entry.payload else {
            unreachable!("only commands are borrowed")
        };
        out.extend_from_slice(data);
        out.resize(start + parts.record_bytes, 0);
    }
    Ok(parts.payload_bytes)
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

/// The CRC of a record whose payload is `parts` concatenated, under `key`; `fresh` is a
/// new hasher (or a clone of one).
#[inline]
fn record_crc(fresh: crc32fast::Hasher, key: RecordKey, len: u32, parts: &[&[u8]]) -> u32 {
    let mut h = fresh;
    if key == RecordKey::V1 {
        h.update(&len.to_le_bytes());
    }
    for part in parts {
        h.update(part);
    }
    match key {
        RecordKey::V1 => h.finalize(),
        RecordKey::V2 { seed } => h.finalize() ^ seed ^ len,
    }
}

/// Command payloads at least this long are not copied into the encoding buffer: the record
/// is written with `pwritev` straight from the entry's `Bytes` (see [`encode_record_keyed`]).
/// Below a page, an extra iovec per entry is not clearly cheaper than the copy.
pub const VECTORED_MIN_BYTES: usize = 4096;

/// How one record was encoded by [`encode_record_keyed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordParts {
    /// Bytes appended to the buffer: the whole record, or its frame header and the payload's
    /// prefix when `borrowed`.
    pub head_bytes: usize,
    /// The command's bytes follow the head, taken from the entry itself, then `pad` zeroes.
    pub borrowed: bool,
    /// Zero bytes after the payload that align the record to 8 bytes.
    pub pad: usize,
    /// The record's size on disk, padding included.
    pub record_bytes: usize,
    /// The encoded entry's size, without the frame header and padding.
    pub payload_bytes: usize,
}

/// Encodes records under one key; holds a fresh hasher to clone for each record.
#[derive(Clone)]
pub struct RecordEncoder {
    key: RecordKey,
    fresh: crc32fast::Hasher,
}

impl RecordEncoder {
    /// An encoder for records of the segment `key` describes.
    pub fn new(key: RecordKey) -> RecordEncoder {
        RecordEncoder {
            key,
            fresh: crc32fast::Hasher::new(),
        }
    }

    /// The segment key its records are checked against.
    pub fn key(&self) -> RecordKey {
        self.key
    }

    #[inline]
    fn crc(&self, len: u32, parts: &[&[u8]]) -> u32 {
        record_crc(self.fresh.clone(), self.key, len, parts)
    }

    /// See [`encode_record_keyed`].
    #[inline]
    pub fn encode(
        &self,
        entry: &Entry,
        out: &mut Vec<u8>,
        borrow_min_bytes: usize,
    ) -> Result<RecordParts, postcard::Error> {
        let start = out.len();
        let parts = lay_out(entry, out, borrow_min_bytes)?;
        self.seal(&mut out[start..], parts, borrowed_data(entry, parts));
        Ok(parts)
    }

    /// Appends the records of `entries` to `out` and where each starts and how it was
    /// encoded to `records`; returns whether any record borrows its command's bytes (see
    /// [`encode_record_keyed`]). Stops at the first entry that does not encode or whose
    /// payload is above `payload_bytes_max`; the records before it stay in `out`.
    ///
    /// Each record's CRC is computed a couple of records after it was laid out, interleaved
    /// with the laying out of the next ones. Computed right after laying the record out, the
    /// CRC's first loads span the prefix's byte stores and the copy's vector stores, which
    /// the CPU cannot forward to a load, so every record waited for its stores to reach the
    /// cache; computed in a second pass over the batch, the CRCs' serial fold chains have
    /// nothing to overlap with. Thread CPU per 100-byte record, same run: 27 ns in two
    /// passes, 23-24 ns lagged by 1 to 8 records.
    pub fn encode_batch(
        &self,
        entries: &[Entry],
        out: &mut Vec<u8>,
        records: &mut Vec<(usize, RecordParts)>,
        borrow_min_bytes: usize,
        payload_bytes_max: u64,
    ) -> Result<bool, BatchError> {
        let first = records.len();
        records.reserve(entries.len());
        let mut any_borrowed = false;
        let mut result = Ok(());
        for e in entries {
            let start = out.len();
            let parts = match lay_out(e, out, borrow_min_bytes) {
                Ok(parts) => parts,
                Err(error) => {
                    out.truncate(start);
                    result = Err(BatchError::Encode {
                        index: e.index,
                        error,
                    });
                    break;
                }
            };
            if parts.payload_bytes as u64 > payload_bytes_max {
                out.truncate(start);
                result = Err(BatchError::TooLarge {
                    index: e.index,
                    payload_bytes: parts.payload_bytes as u64,
                });
                break;
            }
            any_borrowed |= parts.borrowed;
            records.push((start, parts));
            // The CRC of the record laid out `SEAL_LAG_RECORDS` before this one.
            let laid_out = records.len() - first;
            if laid_out > SEAL_LAG_RECORDS {
                let i = laid_out - 1 - SEAL_LAG_RECORDS;
                let (start, parts) = records[first + i];
                self.seal(&mut out[start..], parts, borrowed_data(&entries[i], parts));
            }
        }
        let laid_out = records.len() - first;
        let from = laid_out.saturating_sub(SEAL_LAG_RECORDS);
        for (&(start, parts), e) in records[first + from..].iter().zip(&entries[from..]) {
            self.seal(&mut out[start..], parts, borrowed_data(e, parts));
        }
        result.map(|()| any_borrowed)
    }

    /// Computes the CRC of a laid-out record for this encoder's key and stores it in its
    /// header. `head` starts with the record's head in the buffer; `data` is the borrowed
    /// bytes, if any. Also re-keys a record to another segment's key (a batch that rolled
    /// over into a new segment).
    #[inline(always)]
    pub fn seal(&self, head: &mut [u8], parts: RecordParts, data: &[u8]) {
        let len = parts.payload_bytes as u32;
        let crc = if let (RecordKey::V2 { seed }, false) = (self.key, parts.borrowed) {
            // The hot path, without the generic one's loop over parts.
            let mut h = self.fresh.clone();
            h.update(&head[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + parts.payload_bytes]);
            h.finalize() ^ seed ^ len
        } else if parts.borrowed {
            self.crc(len, &[&head[RECORD_HEADER_BYTES..parts.head_bytes], data])
        } else {
            // One pass over the contiguous payload.
            self.crc(
                len,
                &[&head[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + parts.payload_bytes]],
            )
        };
        head[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// How many records behind the one being laid out [`RecordEncoder::encode_batch`] computes
/// CRCs: far enough that the record's stores have reached the cache, near enough that it
/// is still in it (see there).
const SEAL_LAG_RECORDS: usize = 2;

/// Why [`RecordEncoder::encode_batch`] stopped.
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

/// The command bytes a record laid out as `parts` leaves out of the buffer.
#[inline]
fn borrowed_data(entry: &Entry, parts: RecordParts) -> &[u8] {
    match (&entry.payload, parts.borrowed) {
        (EntryPayload::Command(data), true) => data,
        _ => &[],
    }
}

/// Appends the record of `entry` under `key` to `out`. A command of at least
/// `borrow_min_bytes` is left out of `out`: the record on disk is then
/// `out[head] ++ data ++ zeroes(pad)`, one copy fewer. Encoding many records, a
/// [`RecordEncoder`] is cheaper.
pub fn encode_record_keyed(
    entry: &Entry,
    out: &mut Vec<u8>,
    key: RecordKey,
    borrow_min_bytes: usize,
) -> Result<RecordParts, postcard::Error> {
    RecordEncoder::new(key).encode(entry, out, borrow_min_bytes)
}

/// Appends the record of `entry` to `out` with a zero CRC, for [`RecordEncoder::seal`] to
/// fill in (see [`encode_record_keyed`] for `borrow_min_bytes`). Noops and commands, the hot
/// path, are encoded by hand (postcard's generic serializer cost ~60 ns an entry); the
/// `same_bytes_as_postcard` tests hold the two encodings equal.
#[inline(always)]
fn lay_out(
    entry: &Entry,
    out: &mut Vec<u8>,
    borrow_min_bytes: usize,
) -> Result<RecordParts, postcard::Error> {
    let start = out.len();
    let data: &[u8] = match &entry.payload {
        EntryPayload::Noop => &[],
        EntryPayload::Command(data) => data,
        EntryPayload::Membership(_) => {
            // Rare: through postcard, into a buffer of its own so that an error leaves
            // `out` as it was.
            let payload = postcard::to_stdvec(entry)?;
            out.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
            out.extend_from_slice(&payload);
            let payload_bytes = payload.len();
            let len =
                u32::try_from(payload_bytes).map_err(|_| postcard::Error::SerializeBufferFull)?;
            out[start..start + 4].copy_from_slice(&len.to_le_bytes());
            let record_bytes = record_bytes(payload_bytes);
            out.resize(start + record_bytes, 0);
            return Ok(RecordParts {
                head_bytes: record_bytes,
                borrowed: false,
                pad: 0,
                record_bytes,
                payload_bytes,
            });
        }
    };
    let borrowed = data.len() >= borrow_min_bytes;
    let copied_bytes = if borrowed { 0 } else { data.len() };
    // The frame header, the longest prefix, the copied bytes, then an 8-byte zero store that
    // pads the record to its alignment.
    out.reserve(RECORD_HEADER_BYTES + PREFIX_BYTES_MAX + copied_bytes + RECORD_ALIGN_BYTES);
    // The prefix postcard writes for `Entry` before a command's bytes (index, term, variant
    // and, for a command, the bytes' length, all varints), the bytes and the padding, stored
    // straight into the reserved capacity: with `push` and `extend_from_slice` every byte
    // paid for a capacity check and the copy went through a length update.
    //
    // SAFETY: `reserve` made room for the bytes written below past `start`: the 8-byte
    // header, at most `PREFIX_BYTES_MAX` prefix bytes, `copied_bytes` bytes, and the 8 zero
    // bytes after them. `set_len` covers only bytes written: the header, the prefix, the
    // copy and the padding (at most 7 bytes, all inside the zero store).
    let prefix_bytes = unsafe {
        let base = out.as_mut_ptr().add(start);
        let mut at = base.add(RECORD_HEADER_BYTES);
        at = put_varint(at, entry.index);
        at = put_varint(at, entry.term);
        if matches!(entry.payload, EntryPayload::Noop) {
            at = put_varint(at, NOOP_VARIANT);
        } else {
            at = put_varint(at, COMMAND_VARIANT);
            at = put_varint(at, data.len() as u64);
        }
        let prefix_bytes = at.offset_from(base) as usize - RECORD_HEADER_BYTES;
        std::ptr::copy_nonoverlapping(data.as_ptr(), at, copied_bytes);
        std::ptr::write_unaligned(at.add(copied_bytes).cast::<[u8; 8]>(), [0; 8]);
        prefix_bytes
    };
    let payload_bytes = prefix_bytes + data.len();
    let len = u32::try_from(payload_bytes).map_err(|_| postcard::Error::SerializeBufferFull)?;
    let record_bytes = record_bytes(payload_bytes);
    let pad = record_bytes - RECORD_HEADER_BYTES - payload_bytes;
    let head_bytes = if borrowed {
        RECORD_HEADER_BYTES + prefix_bytes
    } else {
        record_bytes
    };
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[..4].copy_from_slice(&len.to_le_bytes());
    // SAFETY: as above; the header's 8 bytes are inside the reserved room.
    unsafe {
        std::ptr::write_unaligned(out.as_mut_ptr().add(start).cast(), header);
        out.set_len(start + head_bytes);
    }
    Ok(RecordParts {
        head_bytes,
        borrowed,
        pad,
        record_bytes,
        payload_bytes,
    })
}

/// Why no record could be read at an offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// A zero length field: the end of written data, if everything after it is zero too.
    Zero,
    /// The frame runs past the end of the buffer.
    Short,
    /// The length field exceeds the configured maximum.
    TooLarge,
    /// The CRC does not match the length and payload.
    Crc,
    /// The CRC matched but the payload is not a valid entry.
    Decode,
    /// The padding after the payload is not zero (the CRC does not cover it).
    Padding,
}

impl RecordError {
    /// The reason in words, for logs and `LogError::Corrupt`.
    pub fn describe(self) -> &'static str {
        match self {
            RecordError::Zero => "zero length field followed by non-zero bytes",
            RecordError::Short => "record runs past the end of the segment",
            RecordError::TooLarge => "record length above entry_bytes_max",
            RecordError::Crc => "record CRC mismatch",
            RecordError::Decode => "record payload is not a valid entry",
            RecordError::Padding => "record padding is not zero",
        }
    }
}

/// A record located and CRC-checked in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordFrame {
    /// The entry's log index.
    pub index: Index,
    /// The entry's term.
    pub term: Term,
    /// Offset of the payload in the buffer.
    pub payload_offset: usize,
    /// Length of the payload (the encoded entry).
    pub payload_bytes: usize,
    /// Offset just past the record's padding: where the next record starts.
    pub end_offset: usize,
}

/// Reads and CRC-checks the record at `offset` of `buf`, decoding only its index and term.
/// Never panics, whatever `buf` holds.
pub fn read_frame(
    buf: &[u8],
    offset: usize,
    payload_bytes_max: usize,
    key: RecordKey,
) -> Result<RecordFrame, RecordError> {
    let header = offset
        .checked_add(RECORD_HEADER_BYTES)
        .and_then(|end| buf.get(offset..end))
        .ok_or(RecordError::Short)?;
    let len = u32_at(header, 0) as usize;
    if len == 0 {
        return Err(RecordError::Zero);
    }
    if len > payload_bytes_max {
        return Err(RecordError::TooLarge);
    }
    let payload_offset = offset + RECORD_HEADER_BYTES;
    let payload = buf
        .get(payload_offset..payload_offset + len)
        .ok_or(RecordError::Short)?;
    if record_crc(crc32fast::Hasher::new(), key, len as u32, &[payload]) != u32_at(header, 4) {
        return Err(RecordError::Crc);
    }
    let end_offset = offset + record_bytes(len);
    let padding = buf
        .get(payload_offset + len..end_offset.min(buf.len()))
        .unwrap_or(&[]);
    if padding.iter().any(|&b| b != 0) {
        return Err(RecordError::Padding);
    }
    let ((index, term), _) =
        postcard::take_from_bytes::<(Index, Term)>(payload).map_err(|_| RecordError::Decode)?;
    Ok(RecordFrame {
        index,
        term,
        payload_offset,
        payload_bytes: len,
        end_offset,
    })
}

/// The index a record at `offset` would hold, read without checking its CRC: a cheap filter
/// before [`read_frame`] when looking through bytes that are mostly not records.
pub fn peek_index(buf: &[u8], offset: usize) -> Option<Index> {
    let payload = buf.get(offset.checked_add(RECORD_HEADER_BYTES)?..)?;
    let end = payload.len().min(VARINT_BYTES_MAX);
    postcard::take_from_bytes::<Index>(&payload[..end])
        .ok()
        .map(|(index, _)| index)
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

    #[test]
    fn record_round_trips_and_borrows_command_bytes() {
        let entries = [
            Entry {
                index: 7,
                term: 3,
                payload: EntryPayload::Command(Bytes::from_static(b"hello")),
            },
            Entry {
                index: 8,
                term: 3,
                payload: EntryPayload::Noop,
            },
            Entry {
                index: 9,
                term: 4,
                payload: EntryPayload::Membership(Membership::new_voters([1, 2, 3])),
            },
        ];
        let mut buf = Vec::new();
        for e in &entries {
            encode_record(e, &mut buf).unwrap();
        }
        let backing = Bytes::from(buf);
        let mut offset = 0;
        for e in &entries {
            let frame = read_frame(&backing, offset, 1 << 20, RecordKey::default()).unwrap();
            assert_eq!((frame.index, frame.term), (e.index, e.term));
            assert_eq!(frame.end_offset % RECORD_ALIGN_BYTES, 0);
            let payload =
                &backing[frame.payload_offset..frame.payload_offset + frame.payload_bytes];
            let decoded = decode_entry(payload, Some(&backing)).unwrap();
            assert_eq!(&decoded, e);
            // The postcard encoding of the borrowed mirror must equal `Entry`'s own.
            assert_eq!(postcard::to_stdvec(e).unwrap(), payload);
            offset = frame.end_offset;
        }
        assert_eq!(
            read_frame(&backing, offset, 1 << 20, RecordKey::default()),
            Err(RecordError::Short)
        );
    }

    #[test]
    fn record_parts_equal_the_whole_record() {
        let keys = [
            RecordKey::V1,
            RecordKey::default(),
            SegmentHeader::new(3, 77).record_key(),
        ];
        for len in [
            0,
            1,
            VECTORED_MIN_BYTES - 1,
            VECTORED_MIN_BYTES,
            1000,
            70_000,
        ] {
            for (index, term) in [(1, 0), (300, 5), (u64::MAX, u64::MAX)] {
                for key in keys {
                    let entry = Entry {
                        index,
                        term,
                        payload: EntryPayload::Command(Bytes::from(vec![0xAB; len])),
                    };
                    let mut whole = Vec::new();
                    encode_record_keyed(&entry, &mut whole, key, usize::MAX).unwrap();
                    let mut parts = vec![9u8; 3];
                    let p =
                        encode_record_keyed(&entry, &mut parts, key, VECTORED_MIN_BYTES).unwrap();
                    let mut joined = parts[3..3 + p.head_bytes].to_vec();
                    if p.borrowed {
                        joined.extend_from_slice(&vec![0xAB; len]);
                        joined.extend(std::iter::repeat_n(0u8, p.pad));
                    }
                    assert_eq!(joined, whole, "len {len} index {index}");
                    assert_eq!(p.record_bytes, whole.len());
                    assert_eq!(p.borrowed, len >= VECTORED_MIN_BYTES);
                    let frame = read_frame(&whole, 0, 1 << 20, key).unwrap();
                    assert_eq!((frame.index, frame.term), (index, term));
                    // Another segment's key rejects the record.
                    for other in keys.into_iter().filter(|&k| k != key) {
                        assert_eq!(read_frame(&whole, 0, 1 << 20, other), Err(RecordError::Crc));
                    }
                    // Re-keying gives what encoding under the other key gives.
                    for other in keys {
                        let mut rekeyed = parts[3..3 + p.head_bytes].to_vec();
                        RecordEncoder::new(other).seal(&mut rekeyed, p, &vec![0xAB; len]);
                        let mut direct = Vec::new();
                        encode_record_keyed(&entry, &mut direct, other, VECTORED_MIN_BYTES)
                            .unwrap();
                        assert_eq!(rekeyed, direct);
                    }
                }
            }
        }
    }

    #[test]
    fn a_batch_encodes_as_its_records_one_by_one() {
        let entry = |index: Index, i: usize| Entry {
            index,
            term: 1 + index / 5,
            payload: match i % 6 {
                0 => EntryPayload::Noop,
                1 => EntryPayload::Membership(Membership::new_voters([1, 2, 3])),
                2 => EntryPayload::Command(Bytes::from(vec![i as u8; VECTORED_MIN_BYTES + i])),
                _ => EntryPayload::Command(Bytes::from(vec![i as u8; (i * 37) % 300])),
            },
        };
        for key in [
            RecordKey::V1,
            RecordKey::default(),
            SegmentHeader::new(3, 77).record_key(),
        ] {
            // Lengths around the seal lag, from an index whose varint grows mid-batch.
            for count in [0, 1, 2, 3, 4, 5, 17] {
                let entries: Vec<Entry> = (0..count).map(|i| entry(125 + i as Index, i)).collect();
                let encoder = RecordEncoder::new(key);
                let mut one_by_one = vec![7u8; 5];
                let mut expected = Vec::new();
                for e in &entries {
                    let start = one_by_one.len();
                    let parts = encoder
                        .encode(e, &mut one_by_one, VECTORED_MIN_BYTES)
                        .unwrap();
                    expected.push((start, parts));
                }
                let (mut out, mut records) = (vec![7u8; 5], Vec::new());
                let any_borrowed = encoder
                    .encode_batch(
                        &entries,
                        &mut out,
                        &mut records,
                        VECTORED_MIN_BYTES,
                        u64::MAX,
                    )
                    .unwrap();
                assert_eq!(out, one_by_one, "{key:?} {count}");
                assert_eq!(records, expected);
                assert_eq!(any_borrowed, records.iter().any(|(_, p)| p.borrowed));
            }
        }
    }

    #[test]
    fn a_batch_stops_at_an_entry_too_large_and_keeps_the_records_before_it() {
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
        let encoder = RecordEncoder::new(RecordKey::default());
        let (mut out, mut records) = (Vec::new(), Vec::new());
        let err = encoder
            .encode_batch(&entries, &mut out, &mut records, usize::MAX, 1000)
            .unwrap_err();
        assert!(
            matches!(err, BatchError::TooLarge { index: 3, payload_bytes } if payload_bytes > 3000),
            "{err:?}"
        );
        assert_eq!(records.len(), 2);
        let (start, parts) = records[1];
        assert_eq!(out.len(), start + parts.record_bytes);
        // The records kept are whole, with their CRCs.
        let mut at = 0;
        for e in &entries[..2] {
            let frame = read_frame(&out, at, 1 << 20, RecordKey::default()).unwrap();
            assert_eq!(frame.index, e.index);
            at = frame.end_offset;
        }
        assert_eq!(at, out.len());
    }

    #[test]
    fn version_1_headers_and_records_still_read() {
        let header = SegmentHeader {
            version: 1,
            epoch: 2,
            first_index: 5,
        };
        let decoded = SegmentHeader::decode(&header.encode()).unwrap();
        assert_eq!(decoded, header);
        assert_eq!(decoded.record_key(), RecordKey::V1);
        // A version-1 record: crc32(len ‖ payload), written out by hand.
        let entry = Entry {
            index: 5,
            term: 2,
            payload: EntryPayload::Command(Bytes::from_static(b"old")),
        };
        let payload = postcard::to_stdvec(&entry).unwrap();
        let mut record = (payload.len() as u32).to_le_bytes().to_vec();
        let mut h = crc32fast::Hasher::new();
        h.update(&record);
        h.update(&payload);
        record.extend_from_slice(&h.finalize().to_le_bytes());
        record.extend_from_slice(&payload);
        record.resize(record_bytes(payload.len()), 0);
        let frame = read_frame(&record, 0, 1 << 20, RecordKey::V1).unwrap();
        assert_eq!(frame.index, 5);
        let mut encoded = Vec::new();
        encode_record_keyed(&entry, &mut encoded, RecordKey::V1, usize::MAX).unwrap();
        assert_eq!(encoded, record);
        let mut future = SegmentHeader::new(0, 1).encode();
        future[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert!(SegmentHeader::decode(&future).is_err());
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
