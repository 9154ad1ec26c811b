//! The transport over loopback carrying snapshots: rate-limited beside messages, resumed
//! from the verified offset after a reconnect, refused when the file check fails or the
//! size is over the limit.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use raft_core::{Membership, Message, MessageBody, SnapshotMeta};
use raft_net::frame::{encode_frame, FrameDecoder};
use raft_net::wire::{Hello, HelloReply, Lane, SnapshotFrame};
use raft_net::{ConnErrorKind, Incoming, Transport, TransportConfig, TransportHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::FramedRead;

mod common;

use common::harness::*;

fn snapshot_bytes(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

use common::{chunks, file_bytes, meta, snapshot_file};

/// A transport that receives snapshots into a store under `dir`.
fn receiver_config(id: u64, dir: &std::path::Path) -> TransportConfig {
    let mut c = config(id);
    c.snapshot_store = Some(common::store(&dir.join(format!("received-{id}"))));
    c
}

/// The next snapshot `rx` delivers (messages skipped): who sent it, its metadata and the
/// installed file's bytes.
async fn next_snapshot(rx: &mut Inbox) -> (u64, SnapshotMeta, Vec<u8>) {
    loop {
        match timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Incoming::Snapshot { from, meta, file } => break (from, meta, file_bytes(&file)),
            Incoming::Messages(_) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_streams_rate_limited_beside_unstarved_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = config(1);
    ca.snapshot_chunk_bytes = 64 * 1024;
    ca.snapshot_bytes_per_sec_max = 4 * 1024 * 1024;
    let (a, _a_rx) = start(ca).await;
    let (b, mut b_rx) = start(receiver_config(2, dir.path())).await;
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    let file = snapshot_file(
        &dir.path().join("a"),
        meta(10),
        2 * 1024 * 1024 + 123,
        100_000,
    );
    let started = Instant::now();
    let done = a.send_snapshot(2, chunks(&file)).unwrap();
    // While the snapshot streams (~0.5 s at 4 MiB/s), messages still get through.
    let mut worst = Duration::ZERO;
    let mut seq = 0;
    let snapshot = loop {
        let sent = Instant::now();
        a.send(heartbeat(1, 2, seq)).unwrap();
        seq += 1;
        let got = timeout(Duration::from_secs(10), b_rx.recv())
            .await
            .unwrap()
            .unwrap();
        match got {
            Incoming::Messages(_) => worst = worst.max(sent.elapsed()),
            Incoming::Snapshot { from, meta, file } => break (from, meta, file_bytes(&file)),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let took = started.elapsed();
    assert_eq!(snapshot, (1, meta(10), file_bytes(&file)));
    assert_eq!(done.await.unwrap(), Ok(()));
    assert!(
        took >= Duration::from_millis(400),
        "rate limit ignored: {took:?}"
    );
    // Messages queued behind the snapshot would all arrive after it: a few round trips
    // completing while it streams shows they interleave. How many fit in ~0.5 s, and each
    // one's latency, depend on the machine's load, so neither is asserted (both failed
    // under load); the worst latency is printed for a person reading the output.
    assert!(
        seq >= 3,
        "only {seq} messages during the snapshot (worst latency {worst:?})"
    );
    eprintln!("{seq} messages during the snapshot, worst latency {worst:?}");
    assert_eq!(a.stats().snapshots_sent, 1);
    assert_eq!(b.stats().snapshots_received, 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_resumes_from_the_verified_offset_after_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mut b_rx) = start(receiver_config(2, dir.path())).await;
    b.add_peer(1, "127.0.0.1:9".parse::<SocketAddr>().unwrap());
    let addr = b.local_addr();
    let file = snapshot_file(&dir.path().join("a"), meta(7), 300_000, 50_000);
    let data = Bytes::from(file_bytes(&file));
    let chunk = 64 * 1024;
    let offer = SnapshotFrame::Offer {
        snapshot_id: 5,
        group: 0,
        meta: meta(7),
        total_bytes: data.len() as u64,
    };
    let chunk_at = |offset: usize, corrupt: bool| {
        let end = (offset + chunk).min(data.len());
        let d = data.slice(offset..end);
        SnapshotFrame::Chunk {
            snapshot_id: 5,
            offset: offset as u64,
            crc32: crc32fast::hash(&d) ^ corrupt as u32,
            data: d,
        }
    };
    async fn connect(addr: SocketAddr) -> (TcpStream, FrameDecoder<SnapshotFrame>) {
        let (s, reply) = raw_handshake(addr, &hello(1, 2, Lane::Snapshots)).await;
        assert!(matches!(reply, HelloReply::Accept { .. }));
        (s, FrameDecoder::new(1 << 20))
    }
    async fn send(s: &mut TcpStream, f: &SnapshotFrame) {
        let mut buf = BytesMut::new();
        encode_frame(f, &mut buf, 1 << 20).unwrap();
        s.write_all(&buf).await.unwrap();
    }
    async fn recv(s: &mut TcpStream, d: FrameDecoder<SnapshotFrame>) -> SnapshotFrame {
        let mut rd = FramedRead::new(s, d);
        timeout(Duration::from_secs(5), rd.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }

    // First connection: two chunks, then the connection drops.
    let (mut s, d) = connect(addr).await;
    send(&mut s, &offer).await;
    assert_eq!(
        recv(&mut s, d).await,
        SnapshotFrame::Resume {
            snapshot_id: 5,
            offset: 0
        }
    );
    send(&mut s, &chunk_at(0, false)).await;
    send(&mut s, &chunk_at(chunk, false)).await;
    drop(s);
    // Second: resumes at 2 chunks; a corrupt chunk closes it without losing verified bytes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (mut s, d) = connect(addr).await;
    send(&mut s, &offer).await;
    assert_eq!(
        recv(&mut s, d).await,
        SnapshotFrame::Resume {
            snapshot_id: 5,
            offset: 2 * chunk as u64
        }
    );
    send(&mut s, &chunk_at(2 * chunk, true)).await;
    closed_by_server(&mut s).await;
    assert_eq!(b.stats().errors(ConnErrorKind::Snapshot), 1);
    // Third: resumes at the same offset and finishes.
    let (mut s, d) = connect(addr).await;
    send(&mut s, &offer).await;
    assert_eq!(
        recv(&mut s, d).await,
        SnapshotFrame::Resume {
            snapshot_id: 5,
            offset: 2 * chunk as u64
        }
    );
    let mut offset = 2 * chunk;
    while offset < data.len() {
        send(&mut s, &chunk_at(offset, false)).await;
        offset += chunk;
    }
    assert_eq!(
        recv(&mut s, FrameDecoder::new(1 << 20)).await,
        SnapshotFrame::Done { snapshot_id: 5 }
    );
    assert_eq!(next_snapshot(&mut b_rx).await, (1, meta(7), data.to_vec()));
    assert_eq!(b.stats().snapshot_bytes_received, data.len() as u64);
    b.shutdown().await;
}

/// Bytes that are not this snapshot's file (a damaged sender, or a hostile one with valid
/// chunk CRCs) fail the whole-file check: refused, nothing installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_failing_the_whole_file_check_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mut b_rx) = start(receiver_config(2, dir.path())).await;
    b.add_peer(1, "127.0.0.1:9".parse::<SocketAddr>().unwrap());
    let file = snapshot_file(&dir.path().join("a"), meta(7), 100_000, 10_000);
    let mut data = file_bytes(&file);
    let last = data.len() - 1;
    data[last] ^= 1; // in the last body chunk: its stored CRC no longer matches
    let (mut s, reply) = raw_handshake(b.local_addr(), &hello(1, 2, Lane::Snapshots)).await;
    assert!(matches!(reply, HelloReply::Accept { .. }));
    let mut buf = BytesMut::new();
    let offer = SnapshotFrame::Offer {
        snapshot_id: 1,
        group: 0,
        meta: meta(7),
        total_bytes: data.len() as u64,
    };
    encode_frame(&offer, &mut buf, 1 << 20).unwrap();
    let d = Bytes::from(data);
    encode_frame(
        &SnapshotFrame::Chunk {
            snapshot_id: 1,
            offset: 0,
            crc32: crc32fast::hash(&d),
            data: d,
        },
        &mut buf,
        1 << 20,
    )
    .unwrap();
    s.write_all(&buf).await.unwrap();
    let mut rd = FramedRead::new(&mut s, FrameDecoder::<SnapshotFrame>::new(1 << 20));
    let mut replies = Vec::new();
    while let Ok(Some(Ok(f))) = timeout(Duration::from_secs(5), rd.next()).await {
        replies.push(f);
    }
    assert!(
        matches!(&replies[..], [SnapshotFrame::Resume { offset: 0, .. }, SnapshotFrame::Abort { reason, .. }] if reason.contains("check")),
        "{replies:?}"
    );
    assert!(timeout(Duration::from_millis(200), b_rx.recv())
        .await
        .is_err());
    let store = common::store(&dir.path().join("received-2"));
    assert_eq!(store.list().unwrap(), vec![]);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_snapshot_is_refused_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _a_rx) = start(config(1)).await;
    let mut cb = receiver_config(2, dir.path());
    cb.snapshot_bytes_max = 1000;
    let (b, _b_rx) = start(cb).await;
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    let file = snapshot_file(&dir.path().join("a"), meta(1), 5000, 1000);
    let done = a.send_snapshot(2, chunks(&file)).unwrap();
    let outcome = timeout(Duration::from_secs(5), done)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&outcome, Err(raft_net::SnapshotSendError::Refused(r)) if r.contains("snapshot_bytes_max")),
        "{outcome:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// The real sender against a scripted receiver that drops the first connection after one
/// chunk: the sender reconnects, is told the verified offset, and resumes from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_sender_resumes_from_the_offset_the_receiver_holds() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut ca = config(1);
    ca.snapshot_chunk_bytes = 32 * 1024;
    ca.peers.insert(2, listener.local_addr().unwrap().into());
    let (a, _a_rx) = start(ca).await;
    let file = snapshot_file(&dir.path().join("a"), meta(3), 100_000, 8192);
    let data = file_bytes(&file);
    let done = a.send_snapshot(2, chunks(&file)).unwrap();

    async fn accept(
        listener: &tokio::net::TcpListener,
    ) -> FramedRead<TcpStream, FrameDecoder<SnapshotFrame>> {
        let (s, _) = listener.accept().await.unwrap();
        let mut rd = FramedRead::new(s, FrameDecoder::<Hello>::new(1024));
        let h = rd.next().await.unwrap().unwrap();
        assert_eq!(h, hello(1, 2, Lane::Snapshots));
        let mut buf = BytesMut::new();
        encode_frame(&HelloReply::Accept { node_id: 2 }, &mut buf, 1024).unwrap();
        rd.get_mut().write_all(&buf).await.unwrap();
        rd.map_decoder(|d| d.retype(1 << 20))
    }
    async fn reply(rd: &mut FramedRead<TcpStream, FrameDecoder<SnapshotFrame>>, f: SnapshotFrame) {
        let mut buf = BytesMut::new();
        encode_frame(&f, &mut buf, 1 << 20).unwrap();
        rd.get_mut().write_all(&buf).await.unwrap();
    }
    let mut received = BytesMut::new();
    // First connection: accept one chunk, then vanish.
    let mut rd = accept(&listener).await;
    let SnapshotFrame::Offer {
        snapshot_id,
        group: 0,
        total_bytes,
        meta: offered,
    } = rd.next().await.unwrap().unwrap()
    else {
        panic!("expected an offer");
    };
    assert_eq!((total_bytes, offered), (data.len() as u64, meta(3)));
    reply(
        &mut rd,
        SnapshotFrame::Resume {
            snapshot_id,
            offset: 0,
        },
    )
    .await;
    match rd.next().await.unwrap().unwrap() {
        SnapshotFrame::Chunk {
            offset: 0,
            data: d,
            crc32,
            ..
        } => {
            assert_eq!(crc32, crc32fast::hash(&d));
            received.extend_from_slice(&d);
        }
        other => panic!("{other:?}"),
    }
    drop(rd);
    // Second connection: the sender must resume where the receiver says it stands.
    let mut rd = accept(&listener).await;
    assert!(
        matches!(rd.next().await.unwrap().unwrap(), SnapshotFrame::Offer { snapshot_id: id, .. } if id == snapshot_id)
    );
    reply(
        &mut rd,
        SnapshotFrame::Resume {
            snapshot_id,
            offset: received.len() as u64,
        },
    )
    .await;
    while received.len() < data.len() {
        match rd.next().await.unwrap().unwrap() {
            SnapshotFrame::Chunk {
                offset, data: d, ..
            } => {
                assert_eq!(
                    offset,
                    received.len() as u64,
                    "did not resume at the held offset"
                );
                received.extend_from_slice(&d);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(received.to_vec(), data);
    reply(&mut rd, SnapshotFrame::Done { snapshot_id }).await;
    assert_eq!(
        timeout(Duration::from_secs(5), done)
            .await
            .unwrap()
            .unwrap(),
        Ok(())
    );
    let s = a.stats();
    assert_eq!((s.snapshots_sent, s.reconnects), (1, 1), "{s:?}");
    // Sent bytes also count what the first connection swallowed before it dropped.
    assert!(
        s.snapshot_bytes_sent >= data.len() as u64 + 32 * 1024,
        "{s:?}"
    );
    a.shutdown().await;
}

/// The real sender and the real receiver, the snapshot connection cut midway by a proxy:
/// the transfer resumes from the receiver's offset (each byte is received once) and the
/// file installed is the sender's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_cut_midway_resumes_from_the_receivers_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mut b_rx) = start(receiver_config(2, dir.path())).await;
    let file = snapshot_file(&dir.path().join("a"), meta(9), 4 << 20, 1 << 20);
    let total = file_bytes(&file).len() as u64;
    // The proxy forwards the first connection's first `cut_bytes` only, then closes both
    // ends; later connections pass whole.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut ca = config(1);
    ca.snapshot_chunk_bytes = 256 * 1024;
    ca.peers.insert(2, proxy.local_addr().unwrap().into());
    let (a, _a_rx) = start(ca).await;
    b.add_peer(1, a.local_addr());
    let target = b.local_addr();
    let cut_bytes = total / 2;
    let proxy_task = tokio::spawn(async move {
        for n in 0..10 {
            let (mut inbound, _) = proxy.accept().await.unwrap();
            let mut outbound = TcpStream::connect(target).await.unwrap();
            tokio::spawn(async move {
                if n > 0 {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    return;
                }
                let (mut ir, mut iw) = inbound.split();
                let (mut or, mut ow) = outbound.split();
                let forward = async {
                    let mut left = cut_bytes;
                    let mut buf = vec![0u8; 64 * 1024];
                    while left > 0 {
                        let n = ir.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        let n = n.min(left as usize);
                        ow.write_all(&buf[..n]).await.unwrap();
                        left -= n as u64;
                    }
                };
                tokio::select! {
                    _ = forward => {}
                    _ = tokio::io::copy(&mut or, &mut iw) => {}
                }
            });
        }
    });
    let done = a.send_snapshot(2, chunks(&file)).unwrap();
    assert_eq!(
        next_snapshot(&mut b_rx).await,
        (1, meta(9), file_bytes(&file))
    );
    assert_eq!(
        timeout(Duration::from_secs(10), done)
            .await
            .unwrap()
            .unwrap(),
        Ok(())
    );
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.reconnects, 1, "{sa:?}");
    // Restarting would have received the first part twice. (The sender's count says less:
    // it includes whatever the socket buffers swallowed before the cut was noticed.)
    assert_eq!(sb.snapshot_bytes_received, total, "{sb:?}");
    proxy_task.abort();
    a.shutdown().await;
    b.shutdown().await;
}

/// Large payloads take the zero-copy paths (vectored write, sliced decode) and must arrive
/// intact, including when writes are cut short by a full socket buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_small_payloads_arrive_intact() {
    use raft_core::{Entry, EntryPayload};
    let mut ca = config(1);
    ca.queue_messages_max = 1000;
    let (a, _a_rx) = start(ca).await;
    let (b, mut b_rx) = start(config(2)).await;
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    let msg = |i: u64| Message {
        from: 1,
        to: 2,
        term: 4,
        body: MessageBody::AppendEntries {
            prev_log_index: i,
            prev_log_term: 4,
            entries: [64 * 1024 + i as usize, 100, 3000, 0]
                .into_iter()
                .enumerate()
                .map(|(k, len)| Entry {
                    index: i * 4 + k as u64,
                    term: 4,
                    payload: EntryPayload::Command(snapshot_bytes(len).slice(0..len)),
                })
                .chain([Entry {
                    index: 0,
                    term: 0,
                    payload: EntryPayload::Membership(Membership::new_voters([1, 2, 3])),
                }])
                .collect(),
            leader_commit: i,
        },
    };
    for i in 0..300 {
        a.send(msg(i)).unwrap();
    }
    for i in 0..300 {
        let got = timeout(Duration::from_secs(10), b_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Incoming::Messages(vec![msg(i)]), "message {i}");
    }
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.bytes_sent, sb.bytes_received);
    assert_eq!(sa.messages_dropped, 0);
    a.shutdown().await;
    b.shutdown().await;
}

/// A rate limit so low that a full chunk would take longer than the idle timeout: chunks
/// shrink, and the receiver never mistakes the pacing for a dead connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_snapshot_is_not_taken_for_an_idle_connection() {
    let mut ca = config(1);
    ca.idle_timeout_ms = 200;
    ca.snapshot_bytes_per_sec_max = 100_000;
    ca.snapshot_chunk_bytes = 40_000; // 0.4 s apart at this rate, were they not shrunk
    let dir = tempfile::tempdir().unwrap();
    let mut cb = receiver_config(2, dir.path());
    cb.idle_timeout_ms = 200;
    let (a, _a_rx) = start(ca).await;
    let (b, mut b_rx) = start(cb).await;
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    let file = snapshot_file(&dir.path().join("a"), meta(4), 50_000, 10_000); // ~0.5 s at 100 kB/s
    let done = a.send_snapshot(2, chunks(&file)).unwrap();
    assert_eq!(
        next_snapshot(&mut b_rx).await,
        (1, meta(4), file_bytes(&file))
    );
    assert_eq!(done.await.unwrap(), Ok(()));
    assert_eq!(b.stats().errors(ConnErrorKind::IdleTimeout), 0);
    a.shutdown().await;
    b.shutdown().await;
}

/// A burst arrives in batches: every whole frame a read brought in, never more than
/// `incoming_batch_messages_max` and never an empty batch, in order, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_are_delivered_in_bounded_batches() {
    const N: u64 = 4000;
    let mut ca = config(1);
    ca.queue_messages_max = N as usize;
    let mut cb = config(2);
    cb.incoming_batch_messages_max = 8;
    // Room for the whole burst, so the reader delivers it all before the host reads.
    cb.incoming_batches_max = N as usize;
    let (a, _a_rx) = start(ca).await;
    let (b, mut b_rx) = Transport::start(cb).await.unwrap();
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    for seq in 0..N {
        a.send(heartbeat(1, 2, seq)).unwrap();
    }
    wait_until("the burst to arrive", || b.stats().messages_received == N).await;
    let (mut next, mut batches, mut largest) = (0u64, 0u64, 0usize);
    while next < N {
        let Some(Incoming::Messages(batch)) =
            timeout(Duration::from_secs(10), b_rx.recv()).await.unwrap()
        else {
            panic!("expected a batch");
        };
        assert!(
            !batch.is_empty() && batch.len() <= 8,
            "batch of {}",
            batch.len()
        );
        largest = largest.max(batch.len());
        batches += 1;
        for m in batch {
            assert_eq!(m, heartbeat(1, 2, next), "lost or reordered message");
            next += 1;
        }
    }
    // Sent in one burst, the frames came in many per read.
    assert_eq!(largest, 8, "no read carried more than one frame");
    assert!(batches < N, "{batches} batches for {N} messages");
    assert_eq!(a.stats().bytes_sent, b.stats().bytes_received);
    a.shutdown().await;
    b.shutdown().await;
}

/// With every send on an idle connection written by the caller, sends written directly,
/// sends queued behind them, and direct writes the socket only half took (the receiving
/// host is not reading, so the socket fills) all arrive intact and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_queued_writes_keep_order_even_when_the_socket_fills() {
    const BIG: usize = 1 << 20;
    let mut ca = config(1);
    ca.direct_write_idle_us_min = 0;
    ca.queue_messages_max = 10_000;
    let mut cb = config(2);
    cb.incoming_batches_max = 1;
    cb.incoming_batch_messages_max = 1;
    let (a, _a_rx) = start(ca).await;
    let (b, mut b_rx) = start(cb).await;
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    let append = |seq: u64, len: usize| Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::AppendEntries {
            prev_log_index: seq,
            prev_log_term: 1,
            entries: vec![raft_core::Entry {
                index: seq + 1,
                term: 1,
                payload: raft_core::EntryPayload::Command(Bytes::from(vec![seq as u8; len])),
            }],
            leader_commit: 0,
        },
    };
    // Singles with pauses (direct), bursts (one direct, the rest queued), and megabyte
    // messages that no loopback socket buffer takes in one write.
    let mut sent = Vec::new();
    for round in 0..60u64 {
        let len = if round % 10 == 9 { BIG } else { 100 };
        for _ in 0..(round % 4 + 1) {
            let m = append(sent.len() as u64, len);
            a.send(m.clone()).unwrap();
            sent.push(m);
        }
        if round % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Only now does the host start reading.
    for (i, want) in sent.iter().enumerate() {
        let got = timeout(Duration::from_secs(10), b_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Incoming::Messages(vec![want.clone()]), "message {i}");
    }
    // The writer counts a batch once its write returned, which may be after the receiver
    // delivered it.
    wait_until("every message counted as sent", || {
        a.stats().messages_sent == sent.len() as u64
    })
    .await;
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.messages_dropped, 0);
    wait_until("byte counts to agree", || {
        a.stats().bytes_sent == b.stats().bytes_received
    })
    .await;
    assert_eq!(sb.connection_errors.values().sum::<u64>(), 0);
    a.shutdown().await;
    b.shutdown().await;
}

/// Request/response over one connection: the node that did not dial answers on the
/// connection it accepted rather than dialling its own, so replies travel with the
/// requests (and TCP's acknowledgements ride on them). When the dialler restarts, the
/// answering node dials the new one itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_ride_the_connection_the_peer_dialled() {
    let (a, mut a_rx) = start(config(1)).await;
    let (b, mut b_rx) = start(config(2)).await;
    let a_addr = a.local_addr();
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a_addr);
    for seq in 0..200 {
        a.send(heartbeat(1, 2, seq)).unwrap();
        let got = timeout(Duration::from_secs(10), b_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seq_of(got), seq);
        b.send(heartbeat(2, 1, seq)).unwrap();
        let got = timeout(Duration::from_secs(10), a_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seq_of(got), seq);
    }
    assert_eq!(a.stats().connects, 1);
    assert_eq!(
        b.stats().connects,
        0,
        "node 2 dialled a connection of its own"
    );
    assert_eq!(a.stats().bytes_sent, b.stats().bytes_received);
    assert_eq!(b.stats().bytes_sent, a.stats().bytes_received);

    // The dialler restarts at the same address: node 2's link is gone with it, and node
    // 2's next message makes it dial.
    a.shutdown().await;
    drop(a_rx);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut ca = config(1);
    ca.listen_addr = a_addr;
    ca.peers.insert(2, b.local_addr().into());
    let (a2, mut a2_rx) = start(ca).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 1000;
    let first = loop {
        assert!(
            Instant::now() < deadline,
            "node 2 never reached the restarted node 1"
        );
        b.send(heartbeat(2, 1, seq)).unwrap();
        seq += 1;
        if let Ok(Some(got)) = timeout(Duration::from_millis(50), a2_rx.recv()).await {
            break seq_of(got);
        }
    };
    assert!(first >= 1000);
    assert!(b.stats().connects >= 1);
    a2.shutdown().await;
    b.shutdown().await;
}

/// Both nodes dial at once: every message still arrives exactly once in each direction,
/// and the two settle on one connection (the one node 1 dialled when both got through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_settle_on_one_connection() {
    const N: u64 = 2000;
    let (a, mut a_rx) = start(config(1)).await;
    let (b, mut b_rx) = start(config(2)).await;
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    let sender = |h: TransportHandle, from: u64, to: u64| {
        tokio::spawn(async move {
            for seq in 0..N {
                h.send(heartbeat(from, to, seq)).unwrap();
                if seq % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let (sa, sb) = (sender(a.clone(), 1, 2), sender(b.clone(), 2, 1));
    // Across the switch from node 2's connection to node 1's, messages sent before and
    // after may arrive interleaved (as across any reconnect); none is lost or repeated.
    async fn all_once(rx: &mut Inbox) {
        let mut seen = vec![false; N as usize];
        for _ in 0..N {
            let got = timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            let seq = seq_of(got) as usize;
            assert!(!seen[seq], "message {seq} twice");
            seen[seq] = true;
        }
    }
    all_once(&mut b_rx).await;
    all_once(&mut a_rx).await;
    sa.await.unwrap();
    sb.await.unwrap();
    assert_eq!(a.stats().messages_dropped + b.stats().messages_dropped, 0);
    // Settled on one connection, both ways (node 1's, or node 2's if node 1 adopted it
    // before dialling), and no further dialling.
    let (a_port, b_port) = (a.local_addr().port(), b.local_addr().port());
    wait_until("the two connections to become one", || {
        established_to(a_port) + established_to(b_port) == 1
    })
    .await;
    let a_connects = a.stats().connects;
    a.send(heartbeat(1, 2, 7)).unwrap();
    let got = timeout(Duration::from_secs(10), b_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seq_of(got), 7);
    assert_eq!(a.stats().connects, a_connects);
    let b_connects = b.stats().connects;
    b.send(heartbeat(2, 1, 7)).unwrap();
    let got = timeout(Duration::from_secs(10), a_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seq_of(got), 7);
    assert_eq!(b.stats().connects, b_connects);
    a.shutdown().await;
    b.shutdown().await;
}

/// Established loopback TCP connections whose remote end is `port`, from the kernel's table
/// (each connection is listed once per end; only the dialler's end has the listener's
/// port as its remote port).
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields[2].rsplit(':').next().unwrap();
            u16::from_str_radix(remote_port, 16) == Ok(port) && fields[3] == "01"
        })
        .count()
}
