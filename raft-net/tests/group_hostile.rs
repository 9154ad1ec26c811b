//! Hostile multi-group frames: an oversized coalesced batch, an unknown frame kind, a
//! truncated entry, another node's message inside a group frame, a group frame sent to a
//! single-group node. Each closes its own connection, counted by kind, while a good peer's
//! groups keep flowing on theirs.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::StreamExt;
use raft_net::frame::{encode_frame, FrameDecoder};
use raft_net::group_codec::{EXTENDED_MARK, KIND_GROUP_MESSAGE, KIND_HEARTBEATS};
use raft_net::wire::{HelloReply, Lane, SnapshotFrame};
use raft_net::{
    ConnErrorKind, Envelope, GroupHeartbeat, GroupIncoming, GroupSnapshotStores, Transport,
    FORMAT_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::codec::FramedRead;

mod common;

use common::harness::*;
use common::meta;

/// A frame: length, version, `body`.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
    f.push(FORMAT_VERSION);
    f.extend_from_slice(body);
    f
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn beat(seq: u64) -> Vec<GroupHeartbeat> {
    (1..=3)
        .map(|group| GroupHeartbeat {
            group,
            term: 1,
            commit: seq,
            read_seq: seq,
        })
        .collect()
}

/// The good peer sends one round of heartbeats for three groups; it must arrive whole.
async fn good_round(
    a: &raft_net::TransportHandle,
    seq: &mut u64,
    b_rx: &mut mpsc::Receiver<GroupIncoming>,
) {
    a.send_heartbeats(2, beat(*seq)).unwrap();
    match timeout(Duration::from_secs(10), b_rx.recv()).await.unwrap() {
        Some(GroupIncoming::Frames { from: 1, frames }) => {
            assert_eq!(frames, vec![Envelope::Heartbeats(beat(*seq))])
        }
        other => panic!("{other:?}"),
    }
    *seq += 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_group_frames_close_only_their_connection() {
    let no_stores: GroupSnapshotStores = Arc::new(|_| None);
    let mut cb = config(2);
    cb.peers.insert(9, "127.0.0.1:9".parse().unwrap()); // a peer identity for raw clients
    let (tx, mut b_rx) = mpsc::channel(64);
    let b = Transport::start_groups(cb, no_stores.clone(), tx)
        .await
        .unwrap();
    let (tx, _a_rx) = mpsc::channel::<GroupIncoming>(64);
    let a = Transport::start_groups(config(1), no_stores, tx)
        .await
        .unwrap();
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    let addr = b.local_addr();
    // The good peer's heartbeats for three groups, numbered; every round must arrive.
    let mut seq = 0;
    good_round(&a, &mut seq, &mut b_rx).await;
    let before = b.stats();

    let mut over = vec![EXTENDED_MARK, KIND_HEARTBEATS];
    varint(
        raft_net::group::HEARTBEATS_PER_FRAME_MAX as u64 + 1,
        &mut over,
    );
    let mut message_of_another_node = vec![EXTENDED_MARK, KIND_GROUP_MESSAGE, 5];
    message_of_another_node.extend_from_slice(&[7, 2, 1, 9]); // from 7, to 2, term 1, TimeoutNow
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // An oversized batch: one entry over the maximum, refused before allocation.
        ("oversized batch", frame(&over)),
        // A malformed tag: a kind this version does not know.
        ("unknown kind", frame(&[EXTENDED_MARK, 77, 1, 2, 3])),
        // Two heartbeats announced, one and a half present.
        (
            "truncated entry",
            frame(&[EXTENDED_MARK, KIND_HEARTBEATS, 2, 1, 1, 1, 1, 2, 1]),
        ),
        // A group frame whose message claims another sender.
        ("stray sender", frame(&message_of_another_node)),
    ];
    for (what, bytes) in &cases {
        let (mut s, reply) = raw_handshake(addr, &hello(9, 2, Lane::Messages)).await;
        assert!(matches!(reply, HelloReply::Accept { .. }), "{what}");
        s.write_all(bytes).await.unwrap();
        closed_by_server(&mut s).await;
        good_round(&a, &mut seq, &mut b_rx).await;
    }
    // A snapshot of a group node 2 does not host: refused with the reason.
    let (mut s, _) = raw_handshake(addr, &hello(9, 2, Lane::Snapshots)).await;
    let mut buf = BytesMut::new();
    let offer = SnapshotFrame::Offer {
        snapshot_id: 1,
        group: 42,
        meta: meta(5),
        total_bytes: 100,
    };
    encode_frame(&offer, &mut buf, 1 << 20).unwrap();
    s.write_all(&buf).await.unwrap();
    let mut rd = FramedRead::new(&mut s, FrameDecoder::<SnapshotFrame>::new(1 << 20));
    match timeout(Duration::from_secs(10), rd.next()).await.unwrap() {
        Some(Ok(SnapshotFrame::Abort { reason, .. })) => {
            assert!(reason.contains("group 42"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    drop(rd);
    closed_by_server(&mut s).await;
    good_round(&a, &mut seq, &mut b_rx).await;

    wait_until("the snapshot refusal to be counted", || {
        b.stats().errors(ConnErrorKind::Snapshot) > before.errors(ConnErrorKind::Snapshot)
    })
    .await;
    let after = b.stats();
    let delta = |k| after.errors(k) - before.errors(k);
    assert_eq!(delta(ConnErrorKind::FrameTooLarge), 1, "{after:?}");
    assert_eq!(delta(ConnErrorKind::Decode), 2, "{after:?}");
    assert_eq!(delta(ConnErrorKind::Protocol), 1, "{after:?}");
    assert_eq!(delta(ConnErrorKind::Snapshot), 1, "{after:?}");
    // The good peer was never disturbed: one connection, no errors, no drops.
    let sa = a.stats();
    assert_eq!(sa.connects, 1, "{sa:?}");
    assert!(sa.connection_errors.is_empty(), "{sa:?}");
    assert_eq!(sa.messages_dropped, 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_frame_to_a_single_group_node_closes_that_connection() {
    let mut cb = config(2);
    cb.peers.insert(9, "127.0.0.1:9".parse().unwrap());
    let (b, mut b_rx) = start(cb).await;
    let (a, _a_rx) = start(config(1)).await;
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    a.send(heartbeat(1, 2, 0)).unwrap();
    assert_eq!(seq_of(b_rx.recv().await.unwrap()), 0);

    let mut body = vec![EXTENDED_MARK, KIND_GROUP_MESSAGE, 5];
    body.extend_from_slice(&[9, 2, 1, 9]); // from 9, to 2, term 1, TimeoutNow
    let (mut s, _) = raw_handshake(b.local_addr(), &hello(9, 2, Lane::Messages)).await;
    let mut wire = BytesMut::new();
    wire.put_slice(&frame(&body));
    s.write_all(&wire).await.unwrap();
    closed_by_server(&mut s).await;
    wait_until("the refusal to be counted", || {
        b.stats().errors(ConnErrorKind::Protocol) == 1
    })
    .await;
    a.send(heartbeat(1, 2, 1)).unwrap();
    assert_eq!(seq_of(b_rx.recv().await.unwrap()), 1);
    assert_eq!(a.stats().connects, 1);
    a.shutdown().await;
    b.shutdown().await;
}
