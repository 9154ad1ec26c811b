//! Snapshot install end to end, against a raw loopback copy of the same bytes, in the same
//! run: the ratio is what the install path costs over the hardware.
//!
//! - `lane_install`: what raft-node does to install a snapshot on a follower. The sender
//!   reads its snapshot file with every chunk CRC verified ([`SnapshotReader`]) and hands
//!   the body to raft-net's snapshot lane (`TransportHandle::send_snapshot`: CRC32-checked
//!   chunk frames on a connection of their own); the receiver takes the assembled
//!   `Incoming::Snapshot` and writes it through the snapshot store (chunk CRCs, digest,
//!   fsync, rename, directory fsync).
//! - `raw_tcp_copy_fsync`: read the same bytes from a plain file, write them to a loopback
//!   TCP socket, read them on the other side, write them to a file and fsync it.
//! - `raw_tcp_transfer_only` and `lane_transfer_only`: the network halves alone (bytes in
//!   memory to bytes in memory), to tell the transport's share from the disk's.
//!
//! `RAFT_SNAPSHOT_BENCH_MIB` sets the body size (default 64). The sender's file was just
//! written, so both read it from the page cache.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft_net::{Incoming, Transport, TransportConfig};
use raft_snapshot::{SnapshotReader, StateDigest};

mod common;
use common::{body, body_bytes, meta, store, write_fsync, WRITE_PIECE_BYTES};

/// One install must finish within this, or the bench fails rather than hangs.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The snapshot with `index`, once the lane delivered it whole and CRC-checked.
async fn receive(rx: &mut tokio::sync::mpsc::Receiver<Incoming>, index: u64) -> Bytes {
    tokio::time::timeout(INSTALL_TIMEOUT, async {
        loop {
            match rx.recv().await.expect("transport open") {
                Incoming::Snapshot { meta: m, data, .. } if m.index == index => break data,
                _ => continue,
            }
        }
    })
    .await
    .expect("snapshot arrived in time")
}

fn benches(c: &mut Criterion) {
    let len = body_bytes(512);
    let body = body(len, 7);
    let dir = tempfile::tempdir().unwrap();
    let mib = len >> 20;

    // The sender's files: a snapshot and a plain file holding the same body.
    let sender = store(&dir.path().join("sender"));
    let mut writer = sender.begin(meta(1)).unwrap();
    for piece in body.chunks(WRITE_PIECE_BYTES) {
        writer.write_all(piece).unwrap();
    }
    let snapshot = writer.finish(StateDigest(0)).unwrap();
    let raw_path = dir.path().join("raw-source");
    write_fsync(&raw_path, &body);
    let body_copy = Bytes::from(body);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (a, b, mut b_rx) = rt.block_on(async {
        let config = |id| {
            let mut cfg = TransportConfig::new(id, 9, "127.0.0.1:0".parse().unwrap());
            cfg.snapshot_bytes_max = 1 << 30;
            cfg
        };
        let (a, _a_rx) = Transport::start(config(1)).await.unwrap();
        let (b, b_rx) = Transport::start(config(2)).await.unwrap();
        a.add_peer(2, b.local_addr());
        b.add_peer(1, a.local_addr());
        // The sender never receives: dropping its channel is harmless.
        (a, b, b_rx)
    });
    let receiver = store(&dir.path().join("receiver"));

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let raw_out = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut raw_in, _) = listener.accept().unwrap();
    raw_out.set_nodelay(true).unwrap();
    let raw_copy = dir.path().join("raw-copy");

    let mut group = c.benchmark_group("install_over_loopback");
    group
        .throughput(Throughput::Bytes(len as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    // Criterion runs the two one after the other: on a shared machine, compare the ratio of
    // one run, and repeat the run before trusting it.
    group.bench_function(BenchmarkId::new("raw_tcp_copy_fsync", mib), |bench| {
        bench.iter(|| {
            let source = &raw_path;
            std::thread::scope(|s| {
                let mut out = &raw_out;
                s.spawn(move || {
                    let mut file = File::open(source).unwrap();
                    let mut piece = vec![0u8; WRITE_PIECE_BYTES];
                    loop {
                        let n = file.read(&mut piece).unwrap();
                        if n == 0 {
                            break;
                        }
                        out.write_all(&piece[..n]).unwrap();
                    }
                });
                let mut received = vec![0u8; len];
                raw_in.read_exact(&mut received).unwrap();
                write_fsync(&raw_copy, &received);
            })
        })
    });
    let mut index = 1;
    // The network halves alone (no file read, no file write), to tell where the time goes.
    let mut received = vec![0u8; len];
    let source = &body_copy;
    group.bench_function(BenchmarkId::new("raw_tcp_transfer_only", mib), |bench| {
        bench.iter(|| {
            std::thread::scope(|s| {
                let mut out = &raw_out;
                s.spawn(move || {
                    for piece in source.chunks(WRITE_PIECE_BYTES) {
                        out.write_all(piece).unwrap();
                    }
                });
                raw_in.read_exact(&mut received).unwrap();
            })
        })
    });
    group.bench_function(BenchmarkId::new("lane_transfer_only", mib), |bench| {
        bench.iter(|| {
            index += 1;
            let done = a.send_snapshot(2, meta(index), source.clone()).unwrap();
            rt.block_on(async {
                let got = receive(&mut b_rx, index).await;
                tokio::time::timeout(INSTALL_TIMEOUT, done)
                    .await
                    .expect("sender told in time")
                    .expect("sender alive")
                    .expect("sent");
                got
            })
        })
    });
    group.bench_function(BenchmarkId::new("lane_install", mib), |bench| {
        bench.iter(|| {
            index += 1;
            let mut reader = SnapshotReader::open(&snapshot.path).unwrap();
            let mut data = Vec::with_capacity(reader.header().body_bytes as usize);
            reader.read_to_end(&mut data).unwrap();
            let done = a.send_snapshot(2, meta(index), Bytes::from(data)).unwrap();
            let data = rt.block_on(async {
                let got = receive(&mut b_rx, index).await;
                tokio::time::timeout(INSTALL_TIMEOUT, done)
                    .await
                    .expect("sender told in time")
                    .expect("sender alive")
                    .expect("sent");
                got
            });
            let mut writer = receiver.begin(meta(index)).unwrap();
            for piece in data.chunks(WRITE_PIECE_BYTES) {
                writer.write_all(piece).unwrap();
            }
            writer.finish(StateDigest::of(&data)).unwrap()
        })
    });
    group.finish();
    rt.block_on(async {
        a.shutdown().await;
        b.shutdown().await;
    });
}

criterion_group!(install, benches);
criterion_main!(install);
