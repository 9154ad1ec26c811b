//! Many groups over one transport: messages of every group and coalesced heartbeats share
//! one connection per pair of nodes, in order per group; single- and multi-group
//! transports interoperate on group 0; snapshots of several groups stream side by side
//! with the messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, Message, MessageBody};
use raft_net::{
    ConnErrorKind, Envelope, GroupHeartbeat, GroupHeartbeatResponse, GroupIncoming,
    GroupSnapshotStores, Incoming, Transport, TransportConfig, TransportHandle,
};
use raft_snapshot::SnapshotStore;
use tokio::sync::mpsc;
use tokio::time::timeout;

mod common;

use common::harness::*;
use common::{chunks, file_bytes, meta, snapshot_file, store};

fn no_stores() -> GroupSnapshotStores {
    Arc::new(|_| None)
}

async fn start_groups(
    cfg: TransportConfig,
    stores: GroupSnapshotStores,
) -> (TransportHandle, mpsc::Receiver<GroupIncoming>) {
    let (tx, rx) = mpsc::channel(64);
    let h = Transport::start_groups(cfg, stores, tx).await.unwrap();
    (h, rx)
}

async fn next(rx: &mut mpsc::Receiver<GroupIncoming>) -> GroupIncoming {
    timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("delivery stalled")
        .expect("transport gone")
}

fn append(group: u64, i: u64) -> Message {
    Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::AppendEntries {
            prev_log_index: i,
            prev_log_term: 3,
            entries: (0..4)
                .map(|k| Entry {
                    index: i + 1 + k,
                    term: 3,
                    payload: EntryPayload::Command(Bytes::from(vec![group as u8; 100])),
                })
                .collect(),
            leader_commit: i,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_groups_share_one_connection_in_order_per_group() {
    const GROUPS: u64 = 64;
    const HEARTBEAT_GROUPS: u64 = 10_000;
    const ROUNDS: u64 = 20;
    let (a, mut a_rx) = start_groups(config(1), no_stores()).await;
    let (b, mut b_rx) = start_groups(config(2), no_stores()).await;
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    let beats = |round: u64| -> Vec<GroupHeartbeat> {
        (1..=HEARTBEAT_GROUPS)
            .map(|group| GroupHeartbeat {
                group,
                term: 3,
                commit: round,
                read_seq: round,
            })
            .collect()
    };
    for round in 0..ROUNDS {
        for group in 1..=GROUPS {
            a.send_group(group, append(group, round * 4)).unwrap();
        }
        a.send_heartbeats(2, beats(round)).unwrap();
    }
    // Node 2 answers every coalesced frame with one coalesced frame, on the same connection.
    let mut next_index: HashMap<u64, u64> = HashMap::new();
    let (mut appends, mut heartbeat_frames, mut heartbeats) = (0, 0, 0);
    while appends < GROUPS * ROUNDS || heartbeats < HEARTBEAT_GROUPS * ROUNDS {
        let GroupIncoming::Frames { from: 1, frames } = next(&mut b_rx).await else {
            panic!("unexpected delivery");
        };
        for frame in frames {
            match frame {
                Envelope::Message { group, message } => {
                    assert_eq!(message.from, 1);
                    let MessageBody::AppendEntries { prev_log_index, .. } = message.body else {
                        panic!("unexpected {message:?}");
                    };
                    let expected = next_index.entry(group).or_insert(0);
                    assert_eq!(prev_log_index, *expected, "group {group} out of order");
                    *expected += 4;
                    appends += 1;
                }
                Envelope::Heartbeats(beats) => {
                    // 10,000 groups fit one frame: one frame per tick.
                    assert_eq!(beats.len() as u64, HEARTBEAT_GROUPS);
                    assert_eq!(beats[0].read_seq, heartbeat_frames);
                    heartbeat_frames += 1;
                    heartbeats += beats.len() as u64;
                    let answers = beats
                        .iter()
                        .map(|h| GroupHeartbeatResponse {
                            group: h.group,
                            term: h.term,
                            read_seq: h.read_seq,
                        })
                        .collect();
                    b.send_heartbeat_responses(1, answers).unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(heartbeat_frames, ROUNDS);
    assert_eq!(next_index.len() as u64, GROUPS);
    let mut answered = 0;
    while answered < HEARTBEAT_GROUPS * ROUNDS {
        let GroupIncoming::Frames { from: 2, frames } = next(&mut a_rx).await else {
            panic!("unexpected delivery");
        };
        for frame in frames {
            let Envelope::HeartbeatResponses(answers) = frame else {
                panic!("unexpected {frame:?}");
            };
            answered += answers.len() as u64;
        }
    }
    let (sa, sb) = (a.stats(), b.stats());
    // One connection for everything, both ways: node 1 dialled it, node 2 answered on it.
    assert_eq!(sa.connects, 1, "{sa:?}");
    assert_eq!(sb.connects, 0, "{sb:?}");
    assert!(sa.connection_errors.is_empty() && sb.connection_errors.is_empty());
    assert_eq!(sa.messages_dropped, 0);
    // Each tick's 10,000 heartbeats cost about 6 bytes a group on the wire, not a frame
    // (and 5 bytes of framing) each.
    let per_beat = sb.bytes_sent as f64 / (HEARTBEAT_GROUPS * ROUNDS) as f64;
    assert!(per_beat < 8.0, "{per_beat} bytes per heartbeat response");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_and_multi_group_transports_interoperate_on_group_zero() {
    let (single, mut single_rx) = start(config(1)).await;
    let (multi, mut multi_rx) = start_groups(config(2), no_stores()).await;
    single.add_peer(2, multi.local_addr());
    multi.add_peer(1, single.local_addr());

    single.send(heartbeat(1, 2, 7)).unwrap();
    match next(&mut multi_rx).await {
        GroupIncoming::Frames { from: 1, frames } => assert_eq!(
            frames,
            vec![Envelope::Message {
                group: 0,
                message: heartbeat(1, 2, 7)
            }]
        ),
        other => panic!("{other:?}"),
    }
    multi.send(heartbeat(2, 1, 8)).unwrap();
    assert_eq!(
        seq_of(
            timeout(Duration::from_secs(10), single_rx.recv())
                .await
                .unwrap()
                .unwrap()
        ),
        8
    );
    // Another group's message is no message to a single-group node: it closes the
    // connection (counted), and the next group-0 message arrives on a new one.
    multi.send_group(5, heartbeat(2, 1, 9)).unwrap();
    wait_until("the refused frame to be counted", || {
        single.stats().errors(ConnErrorKind::Protocol) == 1
    })
    .await;
    let mut delivered = None;
    for seq in 10..1000 {
        // The first sends may be written to the closing connection and lost with it.
        multi.send(heartbeat(2, 1, seq)).unwrap();
        if let Ok(Some(got)) = timeout(Duration::from_millis(50), single_rx.recv()).await {
            delivered = Some(got);
            break;
        }
    }
    match delivered {
        Some(Incoming::Messages(batch)) => assert!(batch.iter().all(|m| m.from == 2)),
        other => panic!("{other:?}"),
    }
    single.shutdown().await;
    multi.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_of_several_groups_stream_beside_the_messages() {
    const GROUPS: u64 = 4;
    let dir = tempfile::tempdir().unwrap();
    let stores: HashMap<u64, SnapshotStore> = (1..=GROUPS)
        .map(|g| (g, store(&dir.path().join(format!("b{g}")))))
        .collect();
    let stores: GroupSnapshotStores = Arc::new(move |g| stores.get(&g).cloned());
    let mut ca = config(1);
    ca.snapshot_chunk_bytes = 64 * 1024;
    ca.snapshot_transfers_per_peer_max = 2;
    let (a, _a_rx) = start_groups(ca, no_stores()).await;
    let (b, mut b_rx) = start_groups(config(2), stores).await;
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());

    let files: Vec<_> = (1..=GROUPS)
        .map(|g| {
            snapshot_file(
                &dir.path().join(format!("a{g}")),
                meta(10 + g),
                400_000,
                50_000,
            )
        })
        .collect();
    let mut done = Vec::new();
    for (g, file) in (1..=GROUPS).zip(&files) {
        done.push(a.send_group_snapshot(2, g, chunks(file)).unwrap());
    }
    // A group with no store on node 2 is refused, and does not hold up the others.
    let refused = a.send_group_snapshot(2, 99, chunks(&files[0])).unwrap();
    let mut seq = 0;
    let mut received = HashMap::new();
    let mut messages = 0;
    while received.len() < GROUPS as usize {
        a.send_group(1 + seq % GROUPS, heartbeat(1, 2, seq))
            .unwrap();
        seq += 1;
        let Ok(Some(item)) = timeout(Duration::from_millis(20), b_rx.recv()).await else {
            assert!(seq < 5_000, "snapshots stalled");
            continue;
        };
        match item {
            GroupIncoming::Snapshot {
                from: 1,
                group,
                meta: m,
                file,
            } => {
                assert_eq!(m, meta(10 + group));
                assert_eq!(file_bytes(&file), file_bytes(&files[group as usize - 1]));
                assert!(received.insert(group, ()).is_none());
            }
            GroupIncoming::Frames { frames, .. } => messages += frames.len(),
            other => panic!("{other:?}"),
        }
    }
    for d in done {
        assert_eq!(
            timeout(Duration::from_secs(10), d).await.unwrap().unwrap(),
            Ok(())
        );
    }
    let why = timeout(Duration::from_secs(10), refused)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&why, Err(raft_net::SnapshotSendError::Refused(r)) if r.contains("group 99")),
        "{why:?}"
    );
    assert!(messages > 0);
    assert_eq!(a.stats().snapshots_sent, GROUPS);
    assert_eq!(b.stats().snapshots_received, GROUPS);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_bounded_in_bytes_and_drops_whole_frames() {
    // Peer 2 at an address nobody listens on: nothing drains node 1's queue.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = down.local_addr().unwrap();
    drop(down);
    let mut c = config(1);
    c.peers.insert(2, addr.into());
    c.queue_bytes_max = 400_000;
    let (a, _a_rx) = start_groups(c, no_stores()).await;
    let beats: Vec<_> = (1..=1000)
        .map(|group| GroupHeartbeat {
            group,
            term: 1,
            commit: 100_000,
            read_seq: 1,
        })
        .collect();
    let frame_bytes = Envelope::Heartbeats(beats.clone()).queued_bytes();
    for _ in 0..50 {
        a.send_heartbeats(2, beats.clone()).unwrap();
    }
    let fit = 400_000 / frame_bytes;
    assert_eq!(a.queued(2), fit, "{frame_bytes} bytes a frame");
    // Whole frames are dropped, and each counts its 1,000 heartbeats.
    assert_eq!(a.stats().messages_dropped, (50 - fit as u64) * 1000);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_transfer_at_a_time_snapshots_arrive_in_request_order() {
    let dir = tempfile::tempdir().unwrap();
    let stores: HashMap<u64, SnapshotStore> = (1..=3)
        .map(|g| (g, store(&dir.path().join(format!("b{g}")))))
        .collect();
    let stores: GroupSnapshotStores = Arc::new(move |g| stores.get(&g).cloned());
    let mut ca = config(1);
    ca.snapshot_chunk_bytes = 16 * 1024;
    ca.snapshot_transfers_per_peer_max = 1;
    let (a, _a_rx) = start_groups(ca, no_stores()).await;
    let (b, mut b_rx) = start_groups(config(2), stores).await;
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    let mut done = Vec::new();
    for g in [3, 1, 2] {
        let file = snapshot_file(&dir.path().join(format!("a{g}")), meta(g), 200_000, 50_000);
        done.push(a.send_group_snapshot(2, g, chunks(&file)).unwrap());
    }
    let mut order = Vec::new();
    while order.len() < 3 {
        match next(&mut b_rx).await {
            GroupIncoming::Snapshot { group, .. } => order.push(group),
            other => panic!("{other:?}"),
        }
    }
    // One slot: each transfer ran alone, the oldest request first.
    assert_eq!(order, vec![3, 1, 2]);
    for d in done {
        assert_eq!(
            timeout(Duration::from_secs(10), d).await.unwrap().unwrap(),
            Ok(())
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}
