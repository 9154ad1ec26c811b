//! The transport over loopback: delivery in order, reconnection, host names, full queues
//! and idle connections. Hostile connections are in `transport_hostile.rs`, snapshots in
//! `transport_snapshot.rs`; the shared harness is `common/harness.rs`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, Message, MessageBody};
use raft_net::{ConnErrorKind, Incoming, TransportHandle};
use tokio::time::timeout;

mod common;

use common::harness::*;

/// The one-million-message test. Debug builds run it too: small messages, sent in windows
/// so that no drop can happen, and every one checked for order.
async fn deliver_in_order(n: u64) {
    let mut ca = config(1);
    ca.queue_messages_max = 65_536;
    let (a, _a_rx) = start(ca).await;
    let (b, mut b_rx) = start(config(2)).await;
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    let started = Instant::now();
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            while seq < n {
                // Stay below the queue bound: the test is about order, not drops.
                if a.queued(2) > 32_768 {
                    tokio::task::yield_now().await;
                    continue;
                }
                for _ in 0..1024.min(n - seq) {
                    a.send(heartbeat(1, 2, seq)).unwrap();
                    seq += 1;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for expected in 0..n {
        let got = timeout(Duration::from_secs(10), b_rx.recv())
            .await
            .expect("delivery stalled")
            .unwrap();
        assert_eq!(seq_of(got), expected);
    }
    sender.await.unwrap();
    let elapsed = started.elapsed();
    let (sa, sb) = (a.stats(), b.stats());
    println!(
        "{n} messages in order in {elapsed:?} ({:.0} msg/s); sent {} B, received {} B",
        n as f64 / elapsed.as_secs_f64(),
        sa.bytes_sent,
        sb.bytes_received
    );
    assert_eq!(sa.messages_dropped, 0);
    assert_eq!(sa.messages_sent, n);
    assert_eq!(sb.messages_received, n);
    assert_eq!(sa.bytes_sent, sb.bytes_received);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_million_messages_in_order() {
    deliver_in_order(1_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_peer_is_reconnected_and_delivery_resumes() {
    let (a, _a_rx) = start(config(1)).await;
    let (b, mut b_rx) = start(config(2)).await;
    let b_addr = b.local_addr();
    a.add_peer(2, b_addr);
    b.add_peer(1, a.local_addr());
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            for seq in 0.. {
                if a.send(heartbeat(1, 2, seq)).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut last = None;
    for _ in 0..50 {
        let seq = seq_of(b_rx.recv().await.unwrap());
        assert!(last.is_none_or(|l| seq > l));
        last = Some(seq);
    }
    b.shutdown().await;
    drop(b_rx);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Same address: the listener sets SO_REUSEADDR.
    let mut cb = config(2);
    cb.listen_addr = b_addr;
    cb.peers.insert(1, a.local_addr().into());
    let (b2, mut b2_rx) = start(cb).await;
    let first = seq_of(
        timeout(Duration::from_secs(10), b2_rx.recv())
            .await
            .unwrap()
            .unwrap(),
    );
    assert!(first > last.unwrap());
    let mut prev = first;
    for _ in 0..50 {
        let seq = seq_of(b2_rx.recv().await.unwrap());
        assert!(seq > prev, "out of order: {seq} after {prev}");
        prev = seq;
    }
    let stats = a.stats();
    assert!(stats.reconnects >= 1, "{stats:?}");
    sender.abort();
    a.shutdown().await;
    b2.shutdown().await;
}

/// A peer named by host name is reached: the name is resolved at each connection attempt,
/// so attempts made before the peer listens fail and a later one gets through. A name that
/// does not resolve is a counted connect failure, and the node keeps serving its others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_named_by_host_name_are_resolved_at_each_attempt() {
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = down.local_addr().unwrap().port();
    drop(down);
    let mut ca = config(1);
    ca.peers
        .insert(2, format!("localhost:{port}").parse().unwrap());
    // A 64-byte label breaks DNS's 63-byte limit: it fails in the local resolver, so this
    // test sends no query off the machine.
    ca.peers
        .insert(3, format!("{}:7003", "a".repeat(64)).parse().unwrap());
    let (a, _a_rx) = start(ca).await;
    a.send(heartbeat(1, 3, 0)).unwrap();
    wait_until("the unresolvable peer's failures", || {
        a.stats().errors(ConnErrorKind::Connect) >= 1
    })
    .await;
    let mut cb = config(2);
    cb.listen_addr = format!("127.0.0.1:{port}").parse().unwrap();
    cb.peers.insert(1, a.local_addr().into());
    let (b, mut b_rx) = start(cb).await;
    let mut got = None;
    for seq in 0..200 {
        a.send(heartbeat(1, 2, seq)).unwrap();
        if let Ok(Some(m)) = timeout(Duration::from_millis(50), b_rx.recv()).await {
            got = Some(seq_of(m));
            break;
        }
    }
    assert!(got.is_some(), "nothing arrived through localhost:{port}");
    a.shutdown().await;
    b.shutdown().await;
}

/// Node 1 with peer 2 at an address nobody listens on (yet): its queue fills and nothing
/// drains it. Returns that address, for starting peer 2 there later.
async fn sender_to_a_peer_that_is_down(
    queue_messages_max: usize,
) -> (TransportHandle, Inbox, std::net::SocketAddr) {
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = down.local_addr().unwrap();
    drop(down);
    let mut c = config(1);
    c.queue_messages_max = queue_messages_max;
    c.peers.insert(2, addr.into());
    let (handle, inbox) = start(c).await;
    (handle, inbox, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_the_oldest_and_counts() {
    let (a, _rx, _) = sender_to_a_peer_that_is_down(10).await;
    let started = Instant::now();
    for seq in 0..100 {
        a.send(heartbeat(1, 2, seq)).unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "send must not block"
    );
    assert_eq!(a.queued(2), 10);
    assert_eq!(a.stats().messages_dropped, 90);
    wait_until("a connect error", || {
        a.stats().errors(ConnErrorKind::Connect) > 0
    })
    .await;
    assert_eq!(
        a.send(heartbeat(1, 3, 0)),
        Err(raft_net::SendError::UnknownPeer(3))
    );
    a.shutdown().await;
}

/// Dropping the oldest must leave the newest whole, large payloads included. Once the peer
/// comes up, exactly the newest `queue_messages_max` messages arrive, in order and intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_full_queue_the_newest_messages_arrive_intact() {
    let (a, _a_rx, addr) = sender_to_a_peer_that_is_down(10).await;
    let append = |seq: u64| Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::AppendEntries {
            prev_log_index: seq,
            prev_log_term: 1,
            entries: vec![Entry {
                index: seq + 1,
                term: 1,
                // Every third one large enough to travel as its own segment.
                payload: EntryPayload::Command(Bytes::from(vec![
                    seq as u8;
                    if seq % 3 == 0 {
                        3000
                    } else {
                        50
                    }
                ])),
            }],
            leader_commit: 0,
        },
    };
    for seq in 0..100 {
        a.send(append(seq)).unwrap();
    }
    assert_eq!(a.queued(2), 10);
    assert_eq!(a.stats().messages_dropped, 90);
    let mut cb = config(2);
    cb.listen_addr = addr;
    cb.peers.insert(1, a.local_addr().into());
    let (b, mut b_rx) = start(cb).await;
    for seq in 90..100 {
        let got = timeout(Duration::from_secs(10), b_rx.recv())
            .await
            .expect("the queued messages arrive")
            .unwrap();
        assert_eq!(got, Incoming::Messages(vec![append(seq)]));
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed_and_reopened_on_demand() {
    let mut ca = config(1);
    ca.idle_timeout_ms = 150;
    let (a, _a_rx) = start(ca).await;
    let (b, mut b_rx) = start(config(2)).await;
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    a.send(heartbeat(1, 2, 0)).unwrap();
    assert_eq!(seq_of(b_rx.recv().await.unwrap()), 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    a.send(heartbeat(1, 2, 1)).unwrap();
    assert_eq!(seq_of(b_rx.recv().await.unwrap()), 1);
    let s = a.stats();
    assert_eq!((s.connects, s.reconnects), (2, 1), "{s:?}");
    a.shutdown().await;
    b.shutdown().await;
}
