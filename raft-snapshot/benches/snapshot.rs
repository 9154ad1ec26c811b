//! Snapshot write, read and install throughput, each beside a raw baseline doing the same
//! file IO without the format, in the same run: the ratio is what the format costs.
//!
//! `RAFT_SNAPSHOT_BENCH_MIB` sets the body size (default 64). Reads are from the page cache
//! (the file was just written), so they measure CPU cost: CRC32 and XXH3 versus a memcpy.

use std::fs::File;
use std::io::{Read, Write};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft_snapshot::{SnapshotChunks, SnapshotReader, StateDigest};

mod common;
use common::{body, body_bytes, meta, store, write_fsync, WRITE_PIECE_BYTES};

const TRANSFER_CHUNK_BYTES: usize = 1 << 20;

fn benches(c: &mut Criterion) {
    let len = body_bytes(4096);
    let body = body(len, 42);
    let dir = tempfile::tempdir().unwrap();
    let mib = len >> 20;

    let mut group = c.benchmark_group("write");
    group
        .throughput(Throughput::Bytes(len as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    let raw_path = dir.path().join("raw");
    group.bench_function(BenchmarkId::new("raw_write_fsync", mib), |b| {
        b.iter(|| write_fsync(&raw_path, &body))
    });
    let snapshots = store(&dir.path().join("snapshots"));
    let mut index = 0;
    group.bench_function(BenchmarkId::new("snapshot_write", mib), |b| {
        b.iter(|| {
            index += 1;
            let mut writer = snapshots.begin(meta(index)).unwrap();
            for piece in body.chunks(WRITE_PIECE_BYTES) {
                writer.write_all(piece).unwrap();
            }
            writer.finish(StateDigest(0)).unwrap()
        })
    });
    group.finish();

    // Fixtures for the read and install groups, also when a filter skipped the writes.
    write_fsync(&raw_path, &body);
    let snapshot = match snapshots.list().unwrap().pop() {
        Some(snapshot) => snapshot,
        None => {
            let mut writer = snapshots.begin(meta(1)).unwrap();
            writer.write_all(&body).unwrap();
            writer.finish(StateDigest(0)).unwrap()
        }
    };
    let mut buf = vec![0u8; WRITE_PIECE_BYTES];
    let mut group = c.benchmark_group("read");
    group
        .throughput(Throughput::Bytes(len as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.bench_function(BenchmarkId::new("raw_read", mib), |b| {
        b.iter(|| {
            let mut file = File::open(&raw_path).unwrap();
            let mut total = 0;
            loop {
                let n = file.read(&mut buf).unwrap();
                if n == 0 {
                    break total;
                }
                total += n;
            }
        })
    });
    group.bench_function(BenchmarkId::new("snapshot_read_verified", mib), |b| {
        b.iter(|| {
            let mut reader = SnapshotReader::open(&snapshot.path).unwrap();
            let mut total = 0;
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    break total;
                }
                total += n;
            }
        })
    });
    group.finish();

    // The file side of an install: chunk the sender's file, assemble, validate, fsync,
    // rename; against copying the same file and fsyncing it.
    let receiver = store(&dir.path().join("receiver"));
    let copy_path = dir.path().join("copy");
    let mut group = c.benchmark_group("install");
    group
        .throughput(Throughput::Bytes(len as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.bench_function(BenchmarkId::new("raw_copy_fsync", mib), |b| {
        b.iter(|| {
            let mut from = File::open(&snapshot.path).unwrap();
            let mut to = File::create(&copy_path).unwrap();
            std::io::copy(&mut from, &mut to).unwrap();
            to.sync_all().unwrap();
        })
    });
    group.bench_function(BenchmarkId::new("chunks_assemble_install", mib), |b| {
        b.iter(|| {
            let mut assembler = receiver.receive(meta(snapshot.index)).unwrap();
            for chunk in SnapshotChunks::open(&snapshot, 0, TRANSFER_CHUNK_BYTES).unwrap() {
                assembler.accept(&chunk.unwrap()).unwrap();
            }
            assembler.finish().unwrap()
        })
    });
    group.finish();
}

criterion_group!(snapshot, benches);
criterion_main!(snapshot);
