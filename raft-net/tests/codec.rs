//! The frame codec: round trips for every message kind, and the decoder fed arbitrary bytes
//! (the fuzz target run under `cargo test`).

use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use raft_core::{
    ConflictHint, Entry, EntryPayload, Membership, Message, MessageBody, SnapshotMeta,
};
use raft_net::frame::{encode_frame, FrameDecoder, FrameError, FORMAT_VERSION};
use raft_net::message_codec::{
    decode_message, decode_message_in, decode_message_slice, encode_message, SegmentedBuf,
    ZERO_COPY_BYTES_MIN,
};
use raft_net::message_reader::{MessageReader, READ_CHUNK_BYTES};
use raft_net::wire::{Hello, HelloReply, SnapshotFrame};
use tokio_util::codec::Decoder;

fn membership() -> impl Strategy<Value = Membership> {
    (
        btree_set(any::<u64>(), 0..5),
        btree_set(any::<u64>(), 0..5),
        btree_set(any::<u64>(), 0..3),
    )
        .prop_map(|(voters, voters_outgoing, learners)| Membership {
            voters,
            voters_outgoing,
            learners,
        })
}

fn entry() -> impl Strategy<Value = Entry> {
    let payload = prop_oneof![
        Just(EntryPayload::Noop),
        vec(any::<u8>(), 0..300).prop_map(|v| EntryPayload::Command(Bytes::from(v))),
        membership().prop_map(EntryPayload::Membership),
    ];
    (any::<u64>(), any::<u64>(), payload).prop_map(|(index, term, payload)| Entry {
        index,
        term,
        payload,
    })
}

fn body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (any::<bool>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(pre_vote, last_log_index, last_log_term, leadership_transfer)| {
                MessageBody::RequestVote {
                    pre_vote,
                    last_log_index,
                    last_log_term,
                    leadership_transfer,
                }
            }
        ),
        (any::<bool>(), any::<bool>())
            .prop_map(|(pre_vote, granted)| MessageBody::RequestVoteResponse { pre_vote, granted }),
        (any::<u64>(), any::<u64>(), vec(entry(), 0..6), any::<u64>()).prop_map(
            |(prev_log_index, prev_log_term, entries, leader_commit)| MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            }
        ),
        (
            any::<u64>(),
            proptest::option::of((proptest::option::of(any::<u64>()), any::<u64>()))
        )
            .prop_map(|(index, reject)| MessageBody::AppendEntriesResponse {
                index,
                reject: reject.map(|(term, index)| ConflictHint { term, index }),
            }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(commit, read_seq)| MessageBody::Heartbeat { commit, read_seq }),
        any::<u64>().prop_map(|read_seq| MessageBody::HeartbeatResponse { read_seq }),
        (any::<u64>(), any::<u64>(), membership()).prop_map(|(index, term, membership)| {
            MessageBody::InstallSnapshot {
                meta: SnapshotMeta {
                    index,
                    term,
                    membership,
                },
            }
        }),
        any::<u64>().prop_map(|ctx| MessageBody::ReadIndex { ctx }),
        (any::<u64>(), proptest::option::of(any::<u64>()))
            .prop_map(|(ctx, index)| MessageBody::ReadIndexResponse { ctx, index }),
        Just(MessageBody::TimeoutNow),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (any::<u64>(), any::<u64>(), any::<u64>(), body()).prop_map(|(from, to, term, body)| Message {
        from,
        to,
        term,
        body,
    })
}

/// Feed `wire` to the transport's message reader in reads of at most `step` bytes, as a
/// socket would, decoding after each read; then signal EOF. The messages, and the first
/// error.
fn read_all(max: usize, wire: &[u8], step: usize) -> (Vec<Message>, Option<FrameError>) {
    let mut reader = MessageReader::new(max, &[]);
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        loop {
            match reader.decode(&mut out, usize::MAX) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => return (out, Some(e)),
            }
        }
        if at == wire.len() {
            return (out, reader.finish().err());
        }
        let mut room = match reader.read_buf() {
            Ok(room) => room,
            Err(e) => return (out, Some(e)),
        };
        let n = step.min(room.remaining_mut()).min(wire.len() - at);
        room.put_slice(&wire[at..at + n]);
        at += n;
    }
}

/// Decode everything in `buf`, as the transport's reader would, then signal EOF.
fn drain<T: serde::de::DeserializeOwned>(
    dec: &mut FrameDecoder<T>,
    buf: &mut BytesMut,
) -> (Vec<T>, Option<FrameError>) {
    let mut out = Vec::new();
    loop {
        match dec.decode(buf) {
            Ok(Some(v)) => out.push(v),
            Ok(None) => break,
            Err(e) => return (out, Some(e)),
        }
    }
    match dec.decode_eof(buf) {
        Ok(Some(v)) => out.push(v),
        Ok(None) => {}
        Err(e) => return (out, Some(e)),
    }
    (out, None)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// decode(encode(m)) == m, also when the bytes arrive split at arbitrary points.
    #[test]
    fn message_round_trip(msgs in vec(message(), 1..8), split in any::<prop::sample::Index>()) {
        let mut wire = BytesMut::new();
        for m in &msgs {
            encode_frame(m, &mut wire, 1 << 20).unwrap();
        }
        let cut = split.index(wire.len() + 1);
        // The transport's message reader (hand-written decoder, zero-copy).
        let (got, err) = read_all(1 << 20, &wire, cut.max(1));
        prop_assert!(err.is_none(), "{err:?}");
        prop_assert_eq!(&got, &msgs);
        // The generic serde decoder agrees.
        let mut buf = BytesMut::from(&wire[..cut]);
        let mut dec = FrameDecoder::<Message>::new(1 << 20);
        let mut got = Vec::new();
        while let Some(m) = dec.decode(&mut buf).unwrap() {
            got.push(m);
        }
        buf.extend_from_slice(&wire[cut..]);
        let (rest, err) = drain(&mut dec, &mut buf);
        prop_assert!(err.is_none(), "{err:?}");
        got.extend(rest);
        prop_assert_eq!(got, msgs);
    }

    /// Fuzz target: arbitrary bytes never panic the decoder; it yields frames or one clean
    /// error, and never buffers past the declared maximum.
    #[test]
    fn decoder_survives_arbitrary_bytes(bytes in vec(any::<u8>(), 0..2048), max in 1usize..4096) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut dec = FrameDecoder::<Message>::new(max);
        let _ = drain(&mut dec, &mut buf);
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = drain(&mut FrameDecoder::<SnapshotFrame>::new(max), &mut buf);
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = drain(&mut FrameDecoder::<Hello>::new(max), &mut buf);
        for step in [1, 7, bytes.len().max(1)] {
            let (_, err) = read_all(max, &bytes, step);
            let (_, whole_err) = read_all(max, &bytes, usize::MAX);
            // The same bytes, read in any pieces: the same outcome.
            prop_assert_eq!(err.map(|e| e.to_string()), whole_err.map(|e| e.to_string()));
        }
    }

    /// The hand-written encoder writes exactly the bytes of the serde path, large payloads
    /// included, across any number of messages in one batch.
    #[test]
    fn message_encoder_agrees_with_postcard(msgs in vec(message(), 1..6), big in 0usize..3) {
        let mut msgs = msgs;
        for (i, m) in msgs.iter_mut().enumerate().take(big) {
            // Some payloads above the zero-copy threshold.
            if let MessageBody::AppendEntries { entries, .. } = &mut m.body {
                entries.push(Entry {
                    index: i as u64,
                    term: 1,
                    payload: EntryPayload::Command(Bytes::from(vec![i as u8; ZERO_COPY_BYTES_MIN + i])),
                });
            }
        }
        let mut expected = BytesMut::new();
        let mut out = SegmentedBuf::with_capacity(16);
        for m in &msgs {
            let a = encode_frame(m, &mut expected, 1 << 20).unwrap();
            let before = out.len();
            let b = encode_message(m, &mut out, 1 << 20).unwrap();
            prop_assert_eq!(a, b);
            prop_assert_eq!(out.len() - before, b);
        }
        let got: Vec<u8> = out.finish().iter().flat_map(|s| s.iter().copied()).collect();
        prop_assert_eq!(&got[..], &expected[..]);
        let too_large = matches!(
            encode_message(&msgs[0], &mut out, 0),
            Err(FrameError::TooLarge { .. })
        );
        prop_assert!(too_large);
    }

    /// The hand-written message decoder accepts exactly what postcard accepts, with the
    /// same result, on arbitrary bodies and on bodies derived from real messages.
    #[test]
    fn message_decoder_agrees_with_postcard(
        m in message(),
        noise in vec(any::<u8>(), 0..64),
        flip in any::<prop::sample::Index>(),
        mode in 0u8..3,
    ) {
        let mut body = postcard::to_allocvec(&m).unwrap();
        match mode {
            0 => {}
            1 => { let i = flip.index(body.len()); body[i] ^= 0x5a; }
            _ => body = noise,
        }
        let serde = postcard::take_from_bytes::<Message>(&body)
            .ok()
            .filter(|(_, rest)| rest.is_empty())
            .map(|(m, _)| m);
        let mut framed = vec![FORMAT_VERSION];
        framed.extend_from_slice(&body);
        let in_place = decode_message_slice(&framed).ok();
        let owner = Bytes::from(framed);
        let fast = decode_message(owner.clone()).ok();
        let sliced = decode_message_in(&owner, &owner[..], 0).ok();
        prop_assert_eq!(&fast, &serde);
        prop_assert_eq!(&sliced, &serde);
        prop_assert_eq!(in_place, serde);
    }

    /// The reader gives the same messages whether frames fit a read chunk or need an
    /// allocation of their own, fed whole, one byte per read, or in arbitrary pieces.
    #[test]
    fn reader_agrees_whatever_the_read_pattern(
        msgs in vec(message(), 1..8),
        big in 0usize..3,
        piece in 1usize..300,
    ) {
        let mut msgs = msgs;
        for (i, m) in msgs.iter_mut().enumerate().take(big) {
            if let MessageBody::AppendEntries { entries, .. } = &mut m.body {
                entries.push(Entry {
                    index: i as u64,
                    term: 1,
                    // Past a read chunk for i = 1, 2.
                    payload: EntryPayload::Command(Bytes::from(vec![7; i * READ_CHUNK_BYTES + 1])),
                });
            }
        }
        let mut wire = BytesMut::new();
        for m in &msgs {
            encode_frame(m, &mut wire, 1 << 20).unwrap();
        }
        for step in [wire.len(), 1, piece] {
            let (got, err) = read_all(1 << 20, &wire, step);
            prop_assert!(err.is_none(), "{err:?}");
            prop_assert_eq!(&got, &msgs, "fed {} bytes at a time", step);
        }
    }

    /// Same, with a well-formed header and version so the fuzzing reaches postcard.
    #[test]
    fn decoder_survives_arbitrary_bodies(body in vec(any::<u8>(), 0..512), version_ok in any::<bool>()) {
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32 + 1);
        buf.put_u8(if version_ok { FORMAT_VERSION } else { FORMAT_VERSION + 1 });
        buf.extend_from_slice(&body);
        let (_, err) = drain(&mut FrameDecoder::<Message>::new(4096), &mut buf);
        if !version_ok {
            prop_assert!(matches!(err, Some(FrameError::BadVersion(_))), "{err:?}");
        }
        let mut buf2 = BytesMut::new();
        buf2.put_u32(body.len() as u32 + 1);
        buf2.put_u8(FORMAT_VERSION);
        buf2.extend_from_slice(&body);
        let _ = drain(&mut FrameDecoder::<SnapshotFrame>::new(4096), &mut buf2);
    }

    /// A valid frame cut short reports `Truncated` at EOF.
    #[test]
    fn truncated_frames_are_reported(m in message(), cut in any::<prop::sample::Index>()) {
        let mut wire = BytesMut::new();
        encode_frame(&m, &mut wire, 1 << 20).unwrap();
        let cut = 1 + cut.index(wire.len() - 1);
        let mut buf = BytesMut::from(&wire[..cut]);
        let (got, err) = drain(&mut FrameDecoder::<Message>::new(1 << 20), &mut buf);
        prop_assert!(got.is_empty());
        prop_assert!(matches!(err, Some(FrameError::Truncated { .. })), "{err:?}");
    }
}

#[test]
fn handshake_and_snapshot_frames_round_trip() {
    let frames = vec![
        SnapshotFrame::Offer {
            snapshot_id: 1,
            group: 0,
            meta: SnapshotMeta::default(),
            total_bytes: 10,
        },
        SnapshotFrame::Resume {
            snapshot_id: 1,
            offset: 4,
        },
        SnapshotFrame::Chunk {
            snapshot_id: 1,
            offset: 4,
            crc32: 9,
            data: Bytes::from_static(b"abcdef"),
        },
        SnapshotFrame::Done { snapshot_id: 1 },
        SnapshotFrame::Abort {
            snapshot_id: 1,
            reason: "no".into(),
        },
    ];
    let mut buf = BytesMut::new();
    for f in &frames {
        encode_frame(f, &mut buf, 1024).unwrap();
    }
    assert_eq!(
        drain(&mut FrameDecoder::<SnapshotFrame>::new(1024), &mut buf).0,
        frames
    );
    let reply = HelloReply::Reject {
        reason: "wrong cluster".into(),
    };
    encode_frame(&reply, &mut buf, 1024).unwrap();
    assert_eq!(
        drain(&mut FrameDecoder::<HelloReply>::new(1024), &mut buf).0,
        vec![reply]
    );
}

#[test]
fn large_payloads_are_sliced_small_ones_copied() {
    let big = Bytes::from(vec![7u8; ZERO_COPY_BYTES_MIN]);
    let small = Bytes::from(vec![8u8; 100]);
    let m = Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::AppendEntries {
            prev_log_index: 0,
            prev_log_term: 0,
            entries: [big, small]
                .into_iter()
                .enumerate()
                .map(|(i, p)| Entry {
                    index: i as u64 + 1,
                    term: 3,
                    payload: EntryPayload::Command(p),
                })
                .collect(),
            leader_commit: 0,
        },
    };
    let mut framed = vec![FORMAT_VERSION];
    framed.extend_from_slice(&postcard::to_allocvec(&m).unwrap());
    let frame = Bytes::from(framed);
    let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
    let got = decode_message(frame.clone()).unwrap();
    assert_eq!(got, m);
    let MessageBody::AppendEntries { entries, .. } = got.body else {
        unreachable!()
    };
    let ptr = |e: &Entry| match &e.payload {
        EntryPayload::Command(b) => b.as_ptr() as usize,
        _ => unreachable!(),
    };
    assert!(
        range.contains(&ptr(&entries[0])),
        "large payload was copied"
    );
    assert!(
        !range.contains(&ptr(&entries[1])),
        "small payload pins the frame"
    );
}
