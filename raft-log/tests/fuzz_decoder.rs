//! Fuzzing of the decoders under `cargo test` (proptest): whatever the bytes, decoding
//! returns a value or an error and never panics, and opening a log whose last segment holds
//! arbitrary bytes returns a log or a typed error.

mod common;

use bytes::Bytes;
use proptest::prelude::*;
use raft_core::LogStore;
use raft_log::format::{
    decode_entry, decode_state_slot, encode_batch, entry_payload, lay_out_entry, read_batch,
    BatchKey, SegmentHeader, SEGMENT_HEADER_BYTES,
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
        let (mut offsets, mut runs) = (Vec::new(), Vec::new());
        if let Ok(frame) = read_batch(&buf, offset, 1 << 20, BatchKey::default(), &mut offsets, &mut runs) {
            prop_assert!(frame.end_offset <= buf.len() + 7);
            let backing = Bytes::from(buf.clone());
            for &at in &offsets {
                let range = entry_payload(&buf, at as usize, 1 << 20).unwrap();
                let _ = decode_entry(&backing[range.clone()], Some(&backing));
                let _ = decode_entry(&buf[range], None);
            }
        }
        let _ = entry_payload(&buf, offset, 1 << 20);
        let _ = decode_entry(&buf, None);
        let _ = decode_state_slot(&buf);
        let _ = SegmentHeader::decode(&buf);
        let _ = raft_log::format::peek_batch(&buf, offset);
    }

    #[test]
    fn mutated_batches_are_rejected(
        index in 1u64..1_000_000,
        term in 0u64..1000,
        data in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..5),
        flips in proptest::collection::vec((any::<usize>(), 0u8..8), 1..4),
    ) {
        let entries: Vec<raft_core::Entry> = data
            .into_iter()
            .enumerate()
            .map(|(i, d)| raft_core::Entry { index: index + i as u64, term: term + i as u64 / 2, payload: raft_core::EntryPayload::Command(d.into()) })
            .collect();
        let mut buf = Vec::new();
        encode_batch(&entries, BatchKey::default(), &mut buf).unwrap();
        let (mut offsets, mut runs) = (Vec::new(), Vec::new());
        let frame = read_batch(&buf, 0, 1 << 20, BatchKey::default(), &mut offsets, &mut runs).unwrap();
        prop_assert_eq!(frame.count as usize, entries.len());
        for (e, &at) in entries.iter().zip(&offsets) {
            let range = entry_payload(&buf, at as usize, 1 << 20).unwrap();
            prop_assert_eq!(&decode_entry(&buf[range], None).unwrap(), e);
        }
        let len = buf.len();
        let flips: std::collections::BTreeSet<(usize, u8)> = flips.into_iter().map(|(at, bit)| (at % len, bit)).collect();
        for (at, bit) in flips {
            buf[at] ^= 1 << bit;
        }
        // CRC32 detects every burst of up to 32 bits, so up to three flips never pass.
        prop_assert!(read_batch(&buf, 0, 1 << 20, BatchKey::default(), &mut offsets, &mut runs).is_err());
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
            for batch in entries.chunks(4) {
                log.append(batch).unwrap();
            }
            log.sync().unwrap();
        }
        let path = common::segment_files(dir.path()).pop().unwrap();
        let mut image = std::fs::read(&path).unwrap();
        let key = SegmentHeader::decode(&image).unwrap().batch_key();
        // Keep a few batches, then overwrite with the arbitrary bytes.
        let mut at = SEGMENT_HEADER_BYTES;
        let (mut offsets, mut runs) = (Vec::new(), Vec::new());
        for _ in 0..keep {
            match read_batch(&image, at, 1 << 20, key, &mut offsets, &mut runs) {
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
        let mut whole = Vec::new();
        let p = lay_out_entry(&entry, &mut whole, usize::MAX).unwrap();
        let postcard = postcard::to_stdvec(&entry).unwrap();
        prop_assert_eq!(&whole[..4], &(postcard.len() as u32).to_le_bytes()[..]);
        prop_assert_eq!(&whole[4..], &postcard[..]);
        prop_assert_eq!(p.entry_bytes, whole.len());
        let mut parts = Vec::new();
        let p = lay_out_entry(&entry, &mut parts, raft_log::format::VECTORED_MIN_BYTES).unwrap();
        parts.extend_from_slice(raft_log::format::borrowed_data(&entry, p));
        prop_assert_eq!(parts, whole);
    }
}
