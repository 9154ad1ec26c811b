//! raft-log's decoders on arbitrary bytes: the segment header, the record frames after it
//! (as they are and with their CRCs made to match, so that mutations reach the payload
//! decoder), the entries in them, and the state file's slots. A decoded entry re-encodes
//! (through the hand-written, `unsafe` record encoder) to a record that decodes to it again.

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, HardState, Membership, SnapshotMeta};
use raft_log::format::StateRecord;
use raft_log::format::{
    decode_entry, decode_state_slot, encode_record_keyed, encode_state_slot, peek_index,
    read_frame, RecordError, RecordKey, SegmentHeader, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
    STATE_SLOT_HEADER_BYTES,
};

/// Records read from one input at most.
const RECORDS_MAX: usize = 4096;
/// Payload bytes a record may announce (the inputs are small).
const PAYLOAD_BYTES_MAX: usize = 1 << 20;

/// Runs one input.
pub fn run(data: &[u8]) {
    let header = SegmentHeader::decode(data);
    let key = header.map_or(RecordKey::default(), |h| h.record_key());
    let start = if header.is_ok() {
        SEGMENT_HEADER_BYTES
    } else {
        0
    };
    let backing = Bytes::copy_from_slice(data);
    records(&backing, start, key);
    // The same bytes with every record's CRC made to match, under both record versions.
    for key in [key, RecordKey::V1] {
        let mut fixed = data.to_vec();
        fix_record_crcs(&mut fixed, start, key);
        records(&Bytes::from(fixed), start, key);
    }
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

/// Reads records from `start` the way recovery does, until one is not a record.
fn records(buf: &Bytes, start: usize, key: RecordKey) {
    let mut offset = start;
    for _ in 0..RECORDS_MAX {
        let _ = peek_index(buf, offset);
        let frame = match read_frame(buf, offset, PAYLOAD_BYTES_MAX, key) {
            Ok(frame) => frame,
            Err(RecordError::Zero | RecordError::Short) => return,
            Err(_) => return,
        };
        assert!(frame.end_offset > offset, "a record of no length");
        let payload = &buf[frame.payload_offset..frame.payload_offset + frame.payload_bytes];
        if let Ok(entry) = decode_entry(payload, Some(buf)) {
            assert_eq!((entry.index, entry.term), (frame.index, frame.term));
            assert_eq!(decode_entry(payload, None).as_ref(), Ok(&entry));
            round_trip(&entry, key);
        }
        offset = frame.end_offset;
    }
}

/// An entry encodes to a record (copied or borrowed) that reads back as the same entry.
fn round_trip(entry: &Entry, key: RecordKey) {
    for borrow_min_bytes in [usize::MAX, 0] {
        let mut out = Vec::new();
        let parts = encode_record_keyed(entry, &mut out, key, borrow_min_bytes)
            .expect("a decoded entry encodes");
        if parts.borrowed {
            // A noop's empty data counts as borrowed at a threshold of 0.
            let data: &[u8] = match &entry.payload {
                EntryPayload::Command(data) => data,
                _ => &[],
            };
            out.extend_from_slice(data);
            out.resize(out.len() + parts.pad, 0);
        }
        assert_eq!(out.len(), parts.record_bytes);
        let frame = read_frame(&out, 0, PAYLOAD_BYTES_MAX, key).expect("our record reads");
        let payload = &out[frame.payload_offset..frame.payload_offset + frame.payload_bytes];
        assert_eq!(decode_entry(payload, None).as_ref(), Ok(entry));
    }
}

/// Sets each record's CRC to what its length and payload give under `key`.
fn fix_record_crcs(buf: &mut [u8], start: usize, key: RecordKey) {
    let mut offset = start;
    for _ in 0..RECORDS_MAX {
        let Some(header) = buf.get(offset..offset + RECORD_HEADER_BYTES) else {
            return;
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let payload = offset + RECORD_HEADER_BYTES;
        let Some(end) = payload
            .checked_add(len as usize)
            .filter(|&e| e <= buf.len())
        else {
            return;
        };
        if len == 0 {
            return;
        }
        let mut h = crc32fast::Hasher::new();
        if key == RecordKey::V1 {
            h.update(&len.to_le_bytes());
        }
        h.update(&buf[payload..end]);
        let crc = match key {
            RecordKey::V1 => h.finalize(),
            RecordKey::V2 { seed } => h.finalize() ^ seed ^ len,
        };
        buf[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
        offset += raft_log::format::record_bytes(len as usize);
    }
}

/// Seeds: a segment header followed by records of every payload kind, and state slots.
pub fn seeds() -> Vec<Vec<u8>> {
    let header = SegmentHeader::new(1, 5);
    let key = header.record_key();
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
    for e in &entries {
        encode_record_keyed(e, &mut segment, key, usize::MAX).expect("a seed encodes");
    }
    let mut bare = Vec::new();
    encode_record_keyed(&entries[1], &mut bare, RecordKey::default(), usize::MAX)
        .expect("a seed encodes");
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
