//! On-disk framing: segment headers, entry records and hard-state slots.
//!
//! Every multi-byte integer is little-endian. Records start at 8-byte aligned offsets so
//! that recovery can look for a valid record after a bad one without trying every byte.

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, HardState, Index, Membership, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};

/// Bytes before the first record of a segment.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Identifies a segment file and its format version.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RAFTLOG1";
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

/// The fixed header of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Incremented by every snapshot install; segments of an older epoch are stale.
    pub epoch: u64,
    /// Index of the segment's first record.
    pub first_index: Index,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&1u32.to_le_bytes());
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
        if u32_at(buf, 8) != 1 {
            return Err("unsupported segment version");
        }
        if u32_at(buf, 12) != segment_header_crc(buf) {
            return Err("segment header CRC mismatch");
        }
        Ok(SegmentHeader {
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

/// Appends `entry` to `out` as one framed record (length, CRC, postcard payload, padding).
/// Returns the payload's length.
pub fn encode_record(entry: &Entry, out: &mut Vec<u8>) -> Result<usize, postcard::Error> {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    encode_payload(entry, out)?;
    let payload_bytes = out.len() - start - RECORD_HEADER_BYTES;
    let len = u32::try_from(payload_bytes).map_err(|_| postcard::Error::SerializeBufferFull)?;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = record_crc(&out[start..start + 4], &out[start + RECORD_HEADER_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + record_bytes(payload_bytes), 0);
    Ok(payload_bytes)
}

/// postcard's variant indexes of `EntryPayload`.
const NOOP_VARIANT: u64 = 0;
const COMMAND_VARIANT: u64 = 1;

/// Appends postcard's unsigned varint (LEB128) of `v`.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends the postcard encoding of `entry`. Noops and commands, the hot path, are written
/// by hand (postcard's generic serializer cost ~60 ns an entry, most of a small append);
/// the `same_bytes_as_postcard` tests hold the two encodings equal.
fn encode_payload(entry: &Entry, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    match &entry.payload {
        EntryPayload::Noop => {
            put_varint(out, entry.index);
            put_varint(out, entry.term);
            put_varint(out, NOOP_VARIANT);
        }
        EntryPayload::Command(data) => {
            out.reserve(40 + data.len());
            put_varint(out, entry.index);
            put_varint(out, entry.term);
            put_varint(out, COMMAND_VARIANT);
            put_varint(out, data.len() as u64);
            out.extend_from_slice(data);
        }
        EntryPayload::Membership(_) => {
            let taken = std::mem::take(out);
            *out = postcard::to_extend(entry, taken)?;
        }
    }
    Ok(())
}

/// Command payloads at least this long are not copied into the encoding buffer: the record
/// is written with `pwritev` straight from the entry's `Bytes` (see [`encode_record_parts`]).
/// Below a page, an extra iovec per entry is not clearly cheaper than the copy.
pub const VECTORED_MIN_BYTES: usize = 4096;

/// How one record was encoded by [`encode_record_parts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordParts {
    /// Bytes appended to the buffer: the whole record, or its frame header and the payload's
    /// prefix when `borrowed`.
    pub head_bytes: usize,
    /// The command's bytes follow the head, taken from the entry itself, then `pad` zeroes.
    pub borrowed: bool,
    pub pad: usize,
    /// The record's size on disk, padding included.
    pub record_bytes: usize,
    pub payload_bytes: usize,
}

/// Like [`encode_record`], but for a large command leaves the command's bytes out of `out`:
/// the record on disk is `out[head] ++ data ++ zeroes(pad)`. Same bytes, one copy fewer.
pub fn encode_record_parts(
    entry: &Entry,
    out: &mut Vec<u8>,
) -> Result<RecordParts, postcard::Error> {
    let data = match &entry.payload {
        EntryPayload::Command(data) if data.len() >= VECTORED_MIN_BYTES => data,
        _ => {
            let start = out.len();
            let payload_bytes = encode_record(entry, out)?;
            return Ok(RecordParts {
                head_bytes: out.len() - start,
                borrowed: false,
                pad: 0,
                record_bytes: out.len() - start,
                payload_bytes,
            });
        }
    };
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    // The prefix postcard writes for `Entry` before a command's bytes: index, term, variant
    // and the bytes' length, all varints.
    put_varint(out, entry.index);
    put_varint(out, entry.term);
    put_varint(out, COMMAND_VARIANT);
    put_varint(out, data.len() as u64);
    let prefix = start + RECORD_HEADER_BYTES..out.len();
    let payload_bytes = prefix.len() + data.len();
    let len = u32::try_from(payload_bytes).map_err(|_| postcard::Error::SerializeBufferFull)?;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&out[prefix.clone()]);
    h.update(data);
    out[start + 4..start + 8].copy_from_slice(&h.finalize().to_le_bytes());
    let record_bytes = record_bytes(payload_bytes);
    Ok(RecordParts {
        head_bytes: out.len() - start,
        borrowed: true,
        pad: record_bytes - RECORD_HEADER_BYTES - payload_bytes,
        record_bytes,
        payload_bytes,
    })
}

fn record_crc(len: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(payload);
    h.finalize()
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
    pub index: Index,
    pub term: Term,
    /// Offset of the payload in the buffer.
    pub payload_offset: usize,
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
    if record_crc(&header[0..4], payload) != u32_at(header, 4) {
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
    pub hard_state: HardState,
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
            let frame = read_frame(&backing, offset, 1 << 20).unwrap();
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
            read_frame(&backing, offset, 1 << 20),
            Err(RecordError::Short)
        );
    }

    #[test]
    fn record_parts_equal_the_whole_record() {
        for len in [
            0,
            1,
            VECTORED_MIN_BYTES - 1,
            VECTORED_MIN_BYTES,
            1000,
            70_000,
        ] {
            for (index, term) in [(1, 0), (300, 5), (u64::MAX, u64::MAX)] {
                let entry = Entry {
                    index,
                    term,
                    payload: EntryPayload::Command(Bytes::from(vec![0xAB; len])),
                };
                let mut whole = Vec::new();
                encode_record(&entry, &mut whole).unwrap();
                let mut parts = vec![9u8; 3];
                let p = encode_record_parts(&entry, &mut parts).unwrap();
                let mut joined = parts[3..3 + p.head_bytes].to_vec();
                if p.borrowed {
                    joined.extend_from_slice(&vec![0xAB; len]);
                    joined.extend(std::iter::repeat_n(0u8, p.pad));
                }
                assert_eq!(joined, whole, "len {len} index {index}");
                assert_eq!(p.record_bytes, whole.len());
                assert_eq!(p.borrowed, len >= VECTORED_MIN_BYTES);
            }
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
