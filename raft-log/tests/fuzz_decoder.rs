//! Fuzzing of the decoders under `cargo test` (proptest): whatever the bytes, decoding
//! returns a value or an error and never panics, and opening a log whose last segment holds
//! arbitrary bytes returns a log or a typed error.

mod common;

use bytes::Bytes;
use proptest::prelude::*;
use raft_core::LogStore;
use raft_log::format::{
    decode_entry, decode_state_slot, encode_record, read_frame, RecordKey, SegmentHeader,
    SEGMENT_HEADER_BYTES,
};
use raft_log::Log;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(buf in proptest::collection::vec(any::<u8>(), 0..512), offset in 0usize..600) {
        if let Ok(frame) = read_frame(&buf, offset, 1 << 20, RecordKey::default()) {
            prop_assert!(frame.end_offset <= buf.len() + 7);
            let payload = &buf[frame.payload_offset..frame.payload_offset + frame.payload_bytes];
            let backing = Bytes::from(buf.clone());
            let _ = decode_entry(&backing[frame.payload_offset..frame.payload_offset + frame.payload_bytes], Some(&backing));
            let _ = decode_entry(payload, None);
        }
        let _ = decode_entry(&buf, None);
        let _ = decode_state_slot(&buf);
        let _ = SegmentHeader::decode(&buf);
        let _ = raft_log::format::peek_index(&buf, offset);
        let _ = read_frame(&buf, offset, 1 << 20, RecordKey::V1);
    }

    #[test]
    fn mutated_records_are_rejected_or_decode_to_valid_entries(
        index in 1u64..1_000_000,
        term in 0u64..1000,
        data in proptest::collection::vec(any::<u8>(), 0..300),
        flips in proptest::collection::vec((any::<usize>(), 0u8..8), 1..4),
    ) {
        let entry = raft_core::Entry { index, term, payload: raft_core::EntryPayload::Command(data.into()) };
        let mut buf = Vec::new();
        encode_record(&entry, &mut buf).unwrap();
        let frame = read_frame(&buf, 0, 1 << 20, RecordKey::default()).unwrap();
        prop_assert_eq!(decode_entry(&buf[frame.payload_offset..frame.payload_offset + frame.payload_bytes], None).unwrap(), entry);
        let len = buf.len();
        let flips: std::collections::BTreeSet<(usize, u8)> = flips.into_iter().map(|(at, bit)| (at % len, bit)).collect();
        for (at, bit) in flips {
            buf[at] ^= 1 << bit;
        }
        // CRC32 detects every burst of up to 32 bits, so up to three flips never pass.
        prop_assert!(read_frame(&buf, 0, 1 << 20, RecordKey::default()).is_err());
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn a_last_segment_of_arbitrary_bytes_never_panics_open(tail in proptest::collection::vec(any::<u8>(), 0..600), keep in 0usize..40) {
        let dir = common::test_dir();
        {
            let mut log = Log::open(dir.path(), common::small_options()).unwrap();
            let entries: Vec<_> = (1..=40).map(|i| common::entry(i, 1, 30)).collect();
            log.append(&entries).unwrap();
            log.sync().unwrap();
        }
        let path = common::segment_files(dir.path()).pop().unwrap();
        let mut image = std::fs::read(&path).unwrap();
        let key = SegmentHeader::decode(&image).unwrap().record_key();
        // Keep a few records, then overwrite with the arbitrary bytes.
        let mut at = SEGMENT_HEADER_BYTES;
        for _ in 0..keep {
            match read_frame(&image, at, 1 << 20, key) {
                Ok(frame) => at = frame.end_offset,
                Err(_) => break,
            }
        }
        let end = (at + tail.len()).min(image.len());
        image[at..end].copy_from_slice(&tail[..end - at]);
        std::fs::write(&path, &image).unwrap();
        if let Ok(log) = Log::open(dir.path(), common::small_options()) {
            // Whatever was recovered reads back.
            if log.last_index() >= log.first_index() {
                log.entries(log.first_index(), log.last_index() + 1, usize::MAX).unwrap();
            }
        }
    }
}

fn arb_entry() -> impl Strategy<Value = raft_core::Entry> {
    use raft_core::{Entry, EntryPayload, Membership};
    let payload = prop_oneof![
        Just(EntryPayload::Noop),
        proptest::collection::vec(any::<u8>(), 0..6000)
            .prop_map(|d| EntryPayload::Command(d.into())),
        (
            proptest::collection::btree_set(any::<u64>(), 0..6),
            proptest::collection::btree_set(any::<u64>(), 0..3)
        )
            .prop_map(|(voters, learners)| EntryPayload::Membership(Membership {
                voters,
                voters_outgoing: Default::default(),
                learners,
            })),
    ];
    (any::<u64>(), any::<u64>(), payload).prop_map(|(index, term, payload)| Entry {
        index,
        term,
        payload,
    })
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn same_bytes_as_postcard(entry in arb_entry()) {
        let mut record = Vec::new();
        let payload_bytes = encode_record(&entry, &mut record).unwrap();
        let postcard = postcard::to_stdvec(&entry).unwrap();
        prop_assert_eq!(&record[8..8 + payload_bytes], &postcard[..]);
        let mut parts = Vec::new();
        let p = raft_log::format::encode_record_keyed(&entry, &mut parts, RecordKey::default(), raft_log::format::VECTORED_MIN_BYTES).unwrap();
        if p.borrowed {
            let raft_core::EntryPayload::Command(data) = &entry.payload else { unreachable!() };
            parts.extend_from_slice(data);
            parts.resize(p.record_bytes, 0);
        }
        prop_assert_eq!(parts, record);
    }
}
