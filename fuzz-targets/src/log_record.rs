//! raft-log's decoders on arbitrary bytes: the segment header, the batch records after it
//! (as they are and with their CRCs made to match, so that mutations reach the header,
//! term-run and entry checks), the entries in them, and the state file's slots. The entries
//! of a decoded batch re-encode (through the hand-written, `unsafe` entry encoder) to a
//! batch that decodes to them again.

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, HardState, Membership, SnapshotMeta};
use raft_log::format::StateRecord;
use raft_log::format::{
    borrowed_data, decode_entry, decode_state_slot, encode_batch, encode_state_slot,
    encode_truncation, entry_payload, lay_out_entries, peek_batch, put_batch_head, read_batch,
    seal_batch, BatchKey, SegmentHeader, SEGMENT_HEADER_BYTES, STATE_SLOT_HEADER_BYTES,
};

/// Batches read from one input at most.
const RECORDS_MAX: usize = 4096;
/// Payload bytes an entry may announce (the inputs are small).
const PAYLOAD_BYTES_MAX: usize = 1 << 20;

/// Runs one input.
pub fn run(data: &[u8]) {
    let header = SegmentHeader::decode(data);
    let key = header.map_or(BatchKey::default(), |h| h.batch_key());
    let start = if header.is_ok() {
        SEGMENT_HEADER_BYTES
    } else {
        0
    };
    let backing = Bytes::copy_from_slice(data);
    records(&backing, start, key);
    // The same bytes with every batch's CRC made to match.
    let mut fixed = data.to_vec();
    fix_batch_crcs(&mut fixed, start, key);
    records(&Bytes::from(fixed), start, key);
    let _ = decode_state_slot(data);
    let mut slot = data.to_vec();
    if slot.len() >= STATE_SLOT_HEADER_BYTES {
        let len = u32::from_le_bytes(slot[16..20].try_into().expect("4 bytes")) as usize;
        if let Some(end) = STATE_SLOT_HEADER_BYTES
            .checked_add(len)
            .filter(|&e| e <= slot.len())
        {
            let mut h = crc32fast::Hasher::new();
            h.update(&slot[8..end]);
            let crc = h.finalize();
            slot[4..8].copy_from_slice(&crc.to_le_bytes());
            if let Some((seq, record)) = decode_state_slot(&slot) {
                // A record decoded from a long input may not fit a slot: then it is refused.
                if let Ok(image) = encode_state_slot(seq, &record) {
                    assert_eq!(decode_state_slot(&image), Some((seq, record)));
                }
            }
        }
    }
}

/// Reads batches from `start` the way recovery does, until one is not a batch.
fn records(buf: &Bytes, start: usize, key: BatchKey) {
    let mut offset = start;
    let (mut offsets, mut runs) = (Vec::new(), Vec::new());
    for _ in 0..RECORDS_MAX {
        let _ = peek_batch(buf, offset);
        offsets.clear();
        runs.clear();
        let Ok(frame) = read_batch(buf, offset, PAYLOAD_BYTES_MAX, key, &mut offsets, &mut runs)
        else {
            return;
        };
        assert!(frame.end_offset > offset, "a batch of no length");
        assert_eq!(offsets.len(), frame.count as usize);
        let mut entries = Vec::new();
        for (i, &at) in offsets.iter().enumerate() {
            let range =
                entry_payload(buf, at as usize, PAYLOAD_BYTES_MAX).expect("checked by the batch");
            // The batch checks each entry's index and term; the rest may not decode.
            if let Ok(entry) = decode_entry(&buf[range.clone()], Some(buf)) {
                assert_eq!(entry.index, frame.first_index + i as u64);
                assert_eq!(decode_entry(&buf[range], None).as_ref(), Ok(&entry));
                entries.push(entry);
            }
        }
        if entries.len() == offsets.len() && !entries.is_empty() {
            round_trip(&entries, key);
        }
        offset = frame.end_offset;
    }
}

/// Entries encode to a batch (copied, or borrowed and sealed in pieces) that reads back as
/// the same entries.
fn round_trip(entries: &[Entry], key: BatchKey) {
    let mut whole = Vec::new();
    encode_batch(entries, key, &mut whole).expect("decoded entries encode");
    for borrow_min_bytes in [usize::MAX, 0] {
        let (mut body, mut parts) = (Vec::new(), Vec::new());
        lay_out_entries(entries, &mut body, &mut parts, borrow_min_bytes, u64::MAX)
            .expect("decoded entries lay out");
        let mut joined = Vec::new();
        for (e, &(start, p)) in entries.iter().zip(&parts) {
            joined.extend_from_slice(&body[start..start + p.head_bytes]);
            joined.extend_from_slice(borrowed_data(e, p));
        }
        let mut batch = Vec::new();
        put_batch_head(&mut batch, entries, joined.len());
        seal_batch(&mut batch, key, &[&joined]);
        batch.extend_from_slice(&joined);
        batch.resize(whole.len(), 0);
        assert_eq!(batch, whole);
    }
    let (mut offsets, mut runs) = (Vec::new(), Vec::new());
    let frame = read_batch(&whole, 0, PAYLOAD_BYTES_MAX, key, &mut offsets, &mut runs)
        .expect("our batch reads");
    assert_eq!(frame.count as usize, entries.len());
    for (e, &at) in entries.iter().zip(&offsets) {
        let range = entry_payload(&whole, at as usize, PAYLOAD_BYTES_MAX).expect("in bounds");
        assert_eq!(decode_entry(&whole[range], None).as_ref(), Ok(e));
    }
}

/// Sets each batch's CRC to what its bytes give under `key`.
fn fix_batch_crcs(buf: &mut [u8], start: usize, key: BatchKey) {
    let mut offset = start;
    for _ in 0..RECORDS_MAX {
        let Some((total_len, _, _)) = peek_batch(buf, offset) else {
            return;
        };
        let Some(end) = offset.checked_add(total_len).filter(|&e| e <= buf.len()) else {
            return;
        };
        if total_len < 8 {
            return;
        }
        let crc = crc32fast::hash(&buf[offset + 8..end]) ^ key.seed ^ total_len as u32;
        buf[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
        offset += raft_log::format::align_up(total_len);
    }
}

/// Seeds: a segment header followed by batches of every payload kind and a truncation
/// record, a bare batch, and state slots.
pub fn seeds() -> Vec<Vec<u8>> {
    let header = SegmentHeader::new(1, 5);
    let key = header.batch_key();
    let entries = [
        Entry {
            index: 5,
            term: 1,
            payload: EntryPayload::Noop,
        },
        Entry {
            index: 6,
            term: 1,
            payload: EntryPayload::Command(Bytes::from_static(b"a command")),
        },
        Entry {
            index: 7,
            term: 2,
            payload: EntryPayload::Membership(Membership::new_voters([1, 2, 3])),
        },
        Entry {
            index: 8,
            term: u64::MAX,
            payload: EntryPayload::Command(Bytes::from(vec![7u8; 300])),
        },
    ];
    let mut segment = header.encode().to_vec();
    encode_batch(&entries[..2], key, &mut segment).expect("a seed encodes");
    encode_batch(&entries[2..], key, &mut segment).expect("a seed encodes");
    segment.extend_from_slice(&encode_truncation(8, key));
    let mut bare = Vec::new();
    encode_batch(&entries[1..3], BatchKey::default(), &mut bare).expect("a seed encodes");
    let record = StateRecord {
        hard_state: HardState {
            term: 3,
            vote: Some(2),
            commit: 7,
        },
        snapshot: SnapshotMeta {
            index: 4,
            term: 1,
            membership: Membership::new_voters([1, 2, 3]),
        },
        epoch: 1,
    };
    vec![
        segment.clone(),
        segment[..SEGMENT_HEADER_BYTES + 40].to_vec(),
        bare,
        encode_state_slot(9, &record).expect("a seed encodes"),
        encode_state_slot(1, &StateRecord::default()).expect("a seed encodes"),
    ]
}
