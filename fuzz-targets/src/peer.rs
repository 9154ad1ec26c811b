//! What a node reads on its peer port, in the order a connection carries it: the handshake
//! ([`Hello`], and the dialler's [`HelloReply`]) through [`FrameDecoder`], then the message
//! lane through [`MessageReader`] (fed in reads of varying size, as a socket delivers) or
//! the snapshot lane's [`SnapshotFrame`]s. The hand-written message decoder must accept
//! exactly what postcard accepts and decode it to the same message, and a decoded message
//! re-encodes ([`encode_message`]) to the bytes `encode_frame` makes of it.

use bytes::{BufMut, Bytes, BytesMut};
use raft_core::{
    ConflictHint, Entry, EntryPayload, Membership, Message, MessageBody, SnapshotMeta,
};
use raft_net::frame::{decode_body, encode_frame, FrameDecoder, DEFAULT_FRAME_BYTES_MAX};
use raft_net::group_codec::{decode_envelope, encode_envelope};
use raft_net::message_codec::{decode_message, decode_message_slice, encode_message, SegmentedBuf};
use raft_net::message_reader::MessageReader;
use raft_net::wire::{Hello, HelloReply, Lane, SnapshotFrame, HANDSHAKE_FRAME_BYTES_MAX};
use serde::de::DeserializeOwned;
use tokio_util::codec::Decoder;

/// Frames read from one input at most.
const FRAMES_MAX: usize = 4096;
/// Messages per decode call, as the transport asks for (its batch bound).
const BATCH_MESSAGES_MAX: usize = 64;

/// Decodes frames of `T` until the input runs out or one is bad; returns what is left.
fn frames<T: DeserializeOwned>(decoder: &mut FrameDecoder<T>, buf: &mut BytesMut) -> bool {
    for _ in 0..FRAMES_MAX {
        match decoder.decode(buf) {
            Ok(Some(_)) => {}
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
    true
}

/// The message lane: `data` arrives in reads of `piece` bytes at most.
fn message_lane(pending: &[u8], data: &[u8], piece: usize) -> Vec<Message> {
    let mut reader = MessageReader::new(DEFAULT_FRAME_BYTES_MAX, pending);
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        loop {
            let before = out.len();
            match reader.decode(&mut out, before + BATCH_MESSAGES_MAX) {
                Ok(true) => break,
                Ok(false) => assert!(out.len() > before, "a full batch decoded nothing"),
                Err(_) => return out,
            }
        }
        if at == data.len() {
            let _ = reader.finish();
            return out;
        }
        let Ok(mut dst) = reader.read_buf() else {
            return out;
        };
        assert!(dst.remaining_mut() > 0, "no room to read into");
        let n = piece.min(dst.remaining_mut()).min(data.len() - at);
        dst.put_slice(&data[at..at + n]);
        at += n;
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    // An acceptor: the dialler's Hello, then (for the message lane) messages behind it.
    let mut buf = BytesMut::from(data);
    let mut hello = FrameDecoder::<Hello>::new(HANDSHAKE_FRAME_BYTES_MAX);
    if let Ok(Some(_)) = hello.decode(&mut buf) {
        let piece = 1 + usize::from(data[0]) * 61;
        let messages = message_lane(&buf[..buf.len().min(16)], &buf[buf.len().min(16)..], piece);
        for m in &messages {
            round_trip(m);
        }
        let mut snapshots = hello.retype::<SnapshotFrame>(DEFAULT_FRAME_BYTES_MAX);
        if frames(&mut snapshots, &mut buf) {
            let _ = snapshots.decode_eof(&mut buf);
        }
    }
    // A dialler reading the acceptor's reply, and each lane on its own.
    let mut buf = BytesMut::from(data);
    frames(
        &mut FrameDecoder::<HelloReply>::new(HANDSHAKE_FRAME_BYTES_MAX),
        &mut buf,
    );
    let mut buf = BytesMut::from(data);
    frames(
        &mut FrameDecoder::<SnapshotFrame>::new(DEFAULT_FRAME_BYTES_MAX),
        &mut buf,
    );
    for m in message_lane(&[], data, data.len().max(1)) {
        round_trip(&m);
    }
    // A multi-group node's message lane: every frame an envelope, which re-encodes to a
    // frame that decodes to it again.
    let mut reader = MessageReader::new(DEFAULT_FRAME_BYTES_MAX, data);
    let mut envelopes = Vec::new();
    loop {
        let max = envelopes.len() + BATCH_MESSAGES_MAX;
        if !matches!(reader.decode_envelopes(&mut envelopes, max), Ok(false)) {
            break;
        }
    }
    for env in envelopes.into_iter().take(FRAMES_MAX) {
        let mut out = SegmentedBuf::with_capacity(64);
        if encode_envelope(&env, &mut out, DEFAULT_FRAME_BYTES_MAX).is_ok() {
            let wire = Bytes::from(out.finish().concat());
            assert_eq!(decode_envelope(wire.slice(4..)).ok().as_ref(), Some(&env));
        }
    }
    // The whole input as one frame body: the hand-written decoder against postcard.
    let ours = decode_message_slice(data);
    let theirs = decode_body::<Message>(data);
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        _ => panic!("message decoders disagree: ours {ours:?}, postcard's {theirs:?}"),
    }
    let sliced = decode_message(Bytes::copy_from_slice(data));
    assert_eq!(sliced.ok(), ours.ok());
}

/// A decoded message encodes to the same bytes both ways, and those decode back to it.
fn round_trip(m: &Message) {
    let mut framed = BytesMut::new();
    if encode_frame(m, &mut framed, DEFAULT_FRAME_BYTES_MAX).is_err() {
        return;
    }
    let mut segmented = SegmentedBuf::with_capacity(64);
    encode_message(m, &mut segmented, DEFAULT_FRAME_BYTES_MAX).expect("fits like encode_frame");
    let joined: Vec<u8> = segmented.finish().concat();
    assert_eq!(
        joined,
        framed[..],
        "encode_message differs from encode_frame"
    );
    assert_eq!(decode_message_slice(&framed[4..]).ok().as_ref(), Some(m));
}

fn framed<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_frame(value, &mut buf, DEFAULT_FRAME_BYTES_MAX).expect("a seed encodes");
    buf.to_vec()
}

/// Seeds: a handshake followed by every kind of message (and by snapshot frames), and the
/// dialler's replies.
pub fn seeds() -> Vec<Vec<u8>> {
    let membership = Membership::new_voters([1, 2, 3]);
    let meta = SnapshotMeta {
        index: 40,
        term: 3,
        membership: membership.clone(),
    };
    let entry = |index, payload| Entry {
        index,
        term: 3,
        payload,
    };
    let bodies = vec![
        MessageBody::RequestVote {
            pre_vote: true,
            last_log_index: 9,
            last_log_term: 2,
            leadership_transfer: false,
        },
        MessageBody::RequestVoteResponse {
            pre_vote: false,
            granted: true,
        },
        MessageBody::AppendEntries {
            prev_log_index: 7,
            prev_log_term: 3,
            entries: vec![
                entry(8, EntryPayload::Noop),
                entry(9, EntryPayload::Command(Bytes::from_static(b"set k v"))),
                entry(10, EntryPayload::Membership(membership)),
            ],
            leader_commit: 7,
        },
        MessageBody::AppendEntriesResponse {
            index: 7,
            reject: Some(ConflictHint {
                term: Some(2),
                index: 5,
            }),
        },
        MessageBody::Heartbeat {
            commit: 7,
            read_seq: 3,
        },
        MessageBody::HeartbeatResponse { read_seq: 3 },
        MessageBody::InstallSnapshot { meta: meta.clone() },
        MessageBody::ReadIndex { ctx: 5 },
        MessageBody::ReadIndexResponse {
            ctx: 5,
            index: Some(9),
        },
        MessageBody::TimeoutNow,
    ];
    let hello = |lane| {
        framed(&Hello {
            cluster_id: 1,
            from: 2,
            to: 1,
            lane,
        })
    };
    let mut seeds = Vec::new();
    let mut all = hello(Lane::Messages);
    for body in bodies {
        let m = framed(&Message {
            from: 2,
            to: 1,
            term: 3,
            body,
        });
        let mut one = hello(Lane::Messages);
        one.extend_from_slice(&m);
        all.extend_from_slice(&m);
        seeds.push(one);
        // The bare body, for the decoders compared on the whole input.
        seeds.push(m[4..].to_vec());
    }
    seeds.push(all);
    let mut snapshot = hello(Lane::Snapshots);
    for f in [
        SnapshotFrame::Offer {
            snapshot_id: 1,
            group: 0,
            meta,
            total_bytes: 3,
        },
        SnapshotFrame::Resume {
            snapshot_id: 1,
            offset: 0,
        },
        SnapshotFrame::Chunk {
            snapshot_id: 1,
            offset: 0,
            crc32: 0x352441c2,
            data: Bytes::from_static(b"abc"),
        },
        SnapshotFrame::Done { snapshot_id: 1 },
        SnapshotFrame::Abort {
            snapshot_id: 1,
            reason: "too large".into(),
        },
    ] {
        snapshot.extend(framed(&f));
    }
    seeds.push(snapshot);
    seeds.push(framed(&HelloReply::Accept { node_id: 1 }));
    seeds.push(framed(&HelloReply::Reject {
        reason: "wrong cluster".into(),
    }));
    seeds
}
