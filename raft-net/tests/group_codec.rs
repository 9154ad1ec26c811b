//! The multi-group frames: group-tagged messages and coalesced heartbeats round-trip
//! through the encoder and the message lane's reader (fed in reads of any size), their
//! predicted length is exact, group 0 keeps the single-group frame, a single-group reader
//! refuses the others, and arbitrary bytes decode to frames or one clean error.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use raft_core::{Entry, EntryPayload, Message, MessageBody};
use raft_net::frame::{encode_frame, FrameError};
use raft_net::group::HEARTBEATS_PER_FRAME_MAX;
use raft_net::group_codec::{decode_envelope, encode_envelope, envelope_len};
use raft_net::message_codec::{SegmentedBuf, ZERO_COPY_BYTES_MIN};
use raft_net::message_reader::MessageReader;
use raft_net::{Envelope, GroupHeartbeat, GroupHeartbeatResponse};

const FRAME_BYTES_MAX: usize = 1 << 22;

fn body() -> impl Strategy<Value = MessageBody> {
    let entry = (
        any::<u64>(),
        any::<u64>(),
        prop_oneof![
            Just(0usize),
            1..300usize,
            // Large enough to leave in a segment of its own, and be sliced on receipt.
            ZERO_COPY_BYTES_MIN..ZERO_COPY_BYTES_MIN + 100
        ],
    )
        .prop_map(|(index, term, len)| Entry {
            index,
            term,
            payload: if len == 0 {
                EntryPayload::Noop
            } else {
                EntryPayload::Command(Bytes::from(vec![index as u8; len]))
            },
        });
    prop_oneof![
        (any::<u64>(), any::<u64>(), vec(entry, 0..5), any::<u64>()).prop_map(
            |(prev_log_index, prev_log_term, entries, leader_commit)| MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            }
        ),
        (any::<u64>(), any::<u64>())
            .prop_map(|(commit, read_seq)| MessageBody::Heartbeat { commit, read_seq }),
        any::<u64>().prop_map(|index| MessageBody::AppendEntriesResponse {
            index,
            reject: None
        }),
        (any::<bool>(), any::<u64>(), any::<u64>()).prop_map(|(pre_vote, i, t)| {
            MessageBody::RequestVote {
                pre_vote,
                last_log_index: i,
                last_log_term: t,
                leadership_transfer: false,
            }
        }),
        Just(MessageBody::TimeoutNow),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    // Group IDs of every varint length, 0 (the single-group frame) among them.
    let group = prop_oneof![Just(0u64), 1..200u64, any::<u64>()];
    prop_oneof![
        (
            group.clone(),
            1..u64::MAX,
            1..u64::MAX,
            any::<u64>(),
            body()
        )
            .prop_map(|(group, from, to, term, body)| Envelope::Message {
                group,
                message: Message {
                    from,
                    to,
                    term,
                    body,
                },
            }),
        vec(
            (group.clone(), any::<u64>(), any::<u64>(), any::<u64>()),
            1..200
        )
        .prop_map(|v| Envelope::Heartbeats(
            v.into_iter()
                .map(|(group, term, commit, read_seq)| GroupHeartbeat {
                    group,
                    term,
                    commit,
                    read_seq,
                })
                .collect()
        )),
        vec((group, any::<u64>(), any::<u64>()), 1..200).prop_map(|v| {
            Envelope::HeartbeatResponses(
                v.into_iter()
                    .map(|(group, term, read_seq)| GroupHeartbeatResponse {
                        group,
                        term,
                        read_seq,
                    })
                    .collect(),
            )
        }),
    ]
}

/// Feed `wire` to a reader in reads of at most `step` bytes, decoding envelopes.
fn read_all(wire: &[u8], step: usize) -> Result<Vec<Envelope>, FrameError> {
    let mut reader = MessageReader::new(FRAME_BYTES_MAX, &[]);
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        while !reader.decode_envelopes(&mut out, usize::MAX)? {}
        if at == wire.len() {
            reader.finish()?;
            return Ok(out);
        }
        let mut dst = reader.read_buf()?;
        let n = step.min(dst.remaining_mut()).min(wire.len() - at);
        dst.put_slice(&wire[at..at + n]);
        at += n;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn envelopes_round_trip_through_the_reader(
        envs in vec(envelope(), 1..12),
        step in prop_oneof![1..64usize, 1000..200_000usize],
    ) {
        let mut out = SegmentedBuf::with_capacity(1024);
        for env in &envs {
            let n = encode_envelope(env, &mut out, FRAME_BYTES_MAX).unwrap();
            prop_assert_eq!(n, envelope_len(env));
        }
        let wire = out.finish().concat();
        prop_assert_eq!(read_all(&wire, step).unwrap(), envs);
    }

    #[test]
    fn group_zero_messages_keep_the_single_group_frame(env in envelope()) {
        let mut out = SegmentedBuf::with_capacity(1024);
        encode_envelope(&env, &mut out, FRAME_BYTES_MAX).unwrap();
        let wire = out.finish().concat();
        let mut reader = MessageReader::new(FRAME_BYTES_MAX, &wire);
        let mut msgs = Vec::new();
        let single = reader.decode(&mut msgs, usize::MAX);
        match env {
            Envelope::Message { group: 0, message } => {
                let mut plain = BytesMut::new();
                encode_frame(&message, &mut plain, FRAME_BYTES_MAX).unwrap();
                prop_assert_eq!(&wire[..], &plain[..]);
                prop_assert!(single.is_ok());
                prop_assert_eq!(msgs, vec![message]);
            }
            // Another group's frame, or a coalesced one: a single-group reader refuses it.
            _ => prop_assert!(matches!(single, Err(FrameError::NotSingleGroup)), "{single:?}"),
        }
    }

    #[test]
    fn arbitrary_bodies_decode_or_fail_cleanly(body in vec(any::<u8>(), 0..256)) {
        let mut data = vec![raft_net::FORMAT_VERSION, 0];
        data.extend_from_slice(&body);
        if let Ok(env) = decode_envelope(Bytes::from(data)) {
            // Whatever decodes re-encodes and decodes to itself.
            let mut out = SegmentedBuf::with_capacity(256);
            encode_envelope(&env, &mut out, FRAME_BYTES_MAX).unwrap();
            let wire = Bytes::from(out.finish().concat());
            prop_assert_eq!(decode_envelope(wire.slice(4..)).unwrap(), env);
        }
    }
}

#[test]
fn a_full_coalesced_frame_round_trips_and_one_more_is_refused() {
    let beats: Vec<_> = (0..HEARTBEATS_PER_FRAME_MAX as u64)
        .map(|g| GroupHeartbeat {
            group: g + 1,
            term: 3,
            commit: 1000 + g,
            read_seq: 9,
        })
        .collect();
    let env = Envelope::Heartbeats(beats.clone());
    let mut out = SegmentedBuf::with_capacity(1024);
    encode_envelope(&env, &mut out, FRAME_BYTES_MAX).unwrap();
    let wire = out.finish().concat();
    assert_eq!(read_all(&wire, 65_536).unwrap(), vec![env]);

    let mut more = beats;
    more.push(more[0]);
    let mut out = SegmentedBuf::with_capacity(1024);
    assert!(matches!(
        encode_envelope(&Envelope::Heartbeats(more), &mut out, FRAME_BYTES_MAX),
        Err(FrameError::TooManyHeartbeats { .. })
    ));
    assert!(out.is_empty());
}
