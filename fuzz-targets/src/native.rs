//! The native protocol as a node reads it: length-delimited frames (tokio-util's
//! `LengthDelimitedCodec` with [`FRAME_BYTES_MAX`]), each a postcard [`RequestFrame`]; the
//! ops they carry are applied to (proposals) or queried from (reads) a key-value state
//! machine, whose snapshot must then restore to the same digest. Frames are also decoded
//! as [`ResponseFrame`]s, what raft-client reads from a node.

use bytes::{Bytes, BytesMut};
use raft_node::kv::{log_command_at, KvLimits, KvStateMachine};
use raft_proto::{
    ExpireCondition, Expiry, KvCommand, KvResponse, LogCommand, Request, RequestFrame,
    ResponseFrame, Session, SetCondition, FRAME_BYTES_MAX,
};
use raft_snapshot::{SnapshotSource, StateMachine};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

/// Frames decoded from one input at most (each takes at least its 4-byte prefix anyway).
const FRAMES_MAX: usize = 4096;

fn limits() -> KvLimits {
    // Small, so that short inputs reach session eviction and the response cache's bound.
    KvLimits {
        session_expiry_entries: 8,
        sessions_max: 4,
        session_responses_max: 4,
        // Small, so that writes reach the memory bound and reads the reply bound.
        memory_bytes_max: 4 << 10,
        reply_bytes_max: 1 << 10,
        request_keys_max: 16,
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut codec = LengthDelimitedCodec::builder()
        .max_frame_length(FRAME_BYTES_MAX)
        .new_codec();
    let mut buf = BytesMut::from(data);
    let mut sm = KvStateMachine::new(limits());
    let mut index = 0;
    for _ in 0..FRAMES_MAX {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                index += 2;
                frame_body(&frame, &mut sm, index);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let _ = codec.decode_eof(&mut buf);
    // Whatever state the requests built, its snapshot restores to the same state.
    let mut bytes = Vec::new();
    sm.snapshot(&mut bytes).expect("a snapshot into memory");
    let mut restored = sm.empty_like();
    restored
        .restore(&mut &bytes[..])
        .expect("a snapshot restores");
    assert_eq!(restored.digest(), sm.digest());
}

fn frame_body(frame: &[u8], sm: &mut KvStateMachine, index: u64) {
    if let Ok(req) = postcard::from_bytes::<RequestFrame>(frame) {
        let again = postcard::to_allocvec(&req).expect("a request encodes");
        assert_eq!(
            postcard::from_bytes::<RequestFrame>(&again).ok(),
            Some(req.clone())
        );
        match req.body {
            Request::Propose { session, op } => {
                // A stamp from the index, not the clock: the same input, the same run.
                let response = sm.apply(index, &log_command_at(session, op, index * 97));
                assert_eq!(KvResponse::decode(&response.encode()), Some(response));
            }
            Request::Read { op, .. } => {
                let response = sm.query(&op);
                assert_eq!(KvResponse::decode(&response.encode()), Some(response));
            }
            _ => {}
        }
    }
    // The same bytes as a log entry's command, a bare op, and a node's answer.
    let _ = sm.apply(index + 1, frame);
    if let Some(cmd) = KvCommand::decode(frame) {
        assert_eq!(KvCommand::decode(&cmd.encode()), Some(cmd));
    }
    let _ = LogCommand::decode(frame);
    let _ = postcard::from_bytes::<ResponseFrame>(frame);
}

fn frame(req: &RequestFrame) -> Vec<u8> {
    let body = postcard::to_allocvec(req).expect("a request encodes");
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// Seeds: every request kind, with every key-value command, with and without a session.
pub fn seeds() -> Vec<Vec<u8>> {
    let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let commands = vec![
        KvCommand::Get { key: b("k") },
        KvCommand::MGet {
            keys: vec![b("a"), b("b")],
        },
        KvCommand::Exists { keys: vec![b("a")] },
        KvCommand::Set {
            key: b("k"),
            value: b("v"),
        },
        KvCommand::MSet {
            pairs: vec![(b("a"), b("1")), (b("b"), b("2"))],
        },
        KvCommand::Del { keys: vec![b("a")] },
        KvCommand::IncrBy {
            key: b("n"),
            by: i64::MAX,
        },
        KvCommand::Cas {
            key: b("k"),
            expected: Some(b("v")),
            new: None,
        },
        KvCommand::Batch {
            commands: vec![
                KvCommand::Set {
                    key: b("x"),
                    value: b("1"),
                },
                KvCommand::IncrBy { key: b("x"), by: 2 },
            ],
        },
        KvCommand::SetWith {
            key: b("t"),
            value: b("v"),
            condition: SetCondition::IfAbsent,
            get: true,
            expiry: Expiry::In(100),
        },
        KvCommand::Expire {
            key: b("k"),
            when: Expiry::At(500),
            condition: ExpireCondition::Gt,
        },
        KvCommand::SetRange {
            key: b("r"),
            offset: 10,
            value: b("x"),
        },
        KvCommand::IncrByFloat {
            key: b("f"),
            by: b("1.5"),
        },
        KvCommand::Sweep { keys_max: 4 },
        KvCommand::Scan {
            cursor: 0,
            pattern: Some(b("*")),
            count: 3,
            type_name: None,
        },
        KvCommand::Keys {
            pattern: b("[a-z]*"),
        },
        KvCommand::Exec {
            watches: vec![(b("k"), 0)],
            commands: vec![
                KvCommand::Append {
                    key: b("k"),
                    value: b("x"),
                },
                KvCommand::Rename {
                    from: b("k"),
                    to: b("j"),
                    nx: false,
                },
            ],
        },
    ];
    let session = |seq| Session {
        client_id: 7,
        seq,
        acked_below: seq.saturating_sub(1),
    };
    let mut seeds = Vec::new();
    let mut pipeline = Vec::new();
    for (i, cmd) in commands.iter().enumerate() {
        let seq = i as u64 + 1;
        let body = if cmd.is_read() {
            Request::Read {
                op: cmd.encode(),
                linearizable: i % 2 == 0,
            }
        } else {
            Request::Propose {
                session: (i % 2 == 0).then(|| session(seq)),
                op: cmd.encode(),
            }
        };
        let f = frame(&RequestFrame { id: seq, body });
        pipeline.extend_from_slice(&f);
        seeds.push(f);
    }
    seeds.push(pipeline);
    for body in [
        Request::Status,
        Request::TransferLeader { to: 2 },
        Request::AddLearner { id: 4 },
        Request::Promote { id: 4 },
        Request::RemoveNode { id: 4 },
    ] {
        seeds.push(frame(&RequestFrame { id: 1, body }));
    }
    seeds
}
