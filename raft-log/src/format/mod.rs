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
//!
//! This file holds the sizes, the segment header and the batch key; `encode.rs` writes
//! batches and truncation records, `decode.rs` reads and checks them back, `state_slot.rs`
//! frames the hard-state file's slots. The tests here round-trip batches through both.

use raft_core::{Entry, Index};

mod decode;
mod encode;
mod state_slot;

pub use decode::{decode_entry, entry_payload, peek_batch, read_batch, BatchFrame, RecordError};
pub use encode::{
    borrowed_data, encode_batch, encode_truncation, lay_out_entries, lay_out_entry, put_batch_head,
    seal_batch, BatchError, EntryParts, VECTORED_MIN_BYTES,
};
pub use state_slot::{decode_state_slot, encode_state_slot, StateRecord};

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

// `#[inline]`: called per field from `decode.rs` and `state_slot.rs`, which may land in
// other codegen units than this file since the split.
#[inline]
fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

#[inline]
fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use raft_core::{EntryPayload, Membership, Term};

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
}
