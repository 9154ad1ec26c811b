//! A snapshot of several GiB crosses the snapshot lane into an empty store while the
//! process (sender and receiver both) holds a few chunks of it in memory, not the snapshot.
//!
//! The sender's file is sparse (a body of zeros, written as holes: only the header and the
//! chunk frames take disk space), so the test needs room for the received copy alone. That
//! goes to `/dev/shm` when it has room for it (the kernel's page cache either way: a tmpfs
//! spares the disk writes, which on a shared disk take minutes for GiBs), else to the
//! system's temporary directory; the test is skipped, saying so, if neither has room.
//!
//! The 3 GiB run takes about a minute on a shared 2-core machine, so it is `#[ignore]`d and
//! run by `.ci/run` (`cargo test -p raft-net --test snapshot_memory -- --ignored`);
//! `RAFT_NET_SNAPSHOT_TEST_MIB` sets its body size (default 3072, at most 16384). The same
//! check on a 256 MiB body (4x the bound) runs with the other tests.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use raft_net::{Incoming, Transport, TransportConfig};
use raft_snapshot::{
    DigestHasher, SnapshotChunks, SnapshotFile, SnapshotHeader, SnapshotStore, SnapshotStoreConfig,
    StateDigest,
};

mod common;

const CLUSTER: u128 = 0x5A;
/// Body chunk of the sender's file and the lane's chunk frames alike.
const CHUNK_BYTES: u32 = 1 << 20;
/// What the transfer may add to the process's peak RSS: a few chunks per side (frames being
/// encoded and decoded, one read ahead, one being written, the final check's buffers), with
/// room for the runtime's threads.
const RSS_GROWTH_BYTES_MAX: u64 = 64 << 20;

/// A snapshot file whose body is `body_bytes` of zeros, its payloads left as holes.
fn sparse_snapshot(dir: &Path, index: u64, body_bytes: u64) -> SnapshotFile {
    let zeros = vec![0u8; CHUNK_BYTES as usize];
    let mut digest = DigestHasher::new();
    let mut left = body_bytes;
    while left > 0 {
        let n = left.min(CHUNK_BYTES as u64) as usize;
        digest.update(&zeros[..n]);
        left -= n as u64;
    }
    let header = SnapshotHeader {
        meta: common::meta(index),
        state_digest: StateDigest(0),
        body_digest: digest.finish(),
        body_bytes,
        chunk_bytes: CHUNK_BYTES,
    };
    let path = dir.join(format!("snap-{index:020}-{:020}.snap", header.meta.term));
    let mut file = File::create(&path).unwrap();
    file.write_all(&header.encode()).unwrap();
    let full_crc = crc32fast::hash(&zeros);
    let mut left = body_bytes;
    while left > 0 {
        let n = left.min(CHUNK_BYTES as u64) as usize;
        let crc = if n == zeros.len() {
            full_crc
        } else {
            crc32fast::hash(&zeros[..n])
        };
        file.write_all(&(n as u32).to_le_bytes()).unwrap();
        file.write_all(&crc.to_le_bytes()).unwrap();
        file.seek(SeekFrom::Current(n as i64)).unwrap();
        left -= n as u64;
    }
    file.set_len(header.file_bytes()).unwrap();
    SnapshotFile {
        index,
        term: header.meta.term,
        path,
    }
}

/// `VmHWM` (peak resident set) of this process, in bytes.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in kB");
    kib << 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute and 3 GiB of /dev/shm: run by .ci/run"]
async fn a_multi_gib_snapshot_moves_with_memory_bounded_by_a_few_chunks() {
    let mib: u64 = std::env::var("RAFT_NET_SNAPSHOT_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3072)
        .clamp(64, 16384);
    moves_with_memory_bounded(mib).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_larger_than_the_bound_moves_with_memory_bounded_by_a_few_chunks() {
    moves_with_memory_bounded(256).await;
}

async fn moves_with_memory_bounded(mib: u64) {
    let body_bytes = mib << 20;
    let sender_dir = tempfile::tempdir().unwrap();
    let file = sparse_snapshot(sender_dir.path(), 40, body_bytes);
    let file_bytes = std::fs::metadata(&file.path).unwrap().len();
    // The received copy: where there is room for it and a margin.
    let needed = file_bytes + (256 << 20);
    let receiver_dir = ["/dev/shm", &std::env::temp_dir().display().to_string()]
        .into_iter()
        .filter(|d| Path::new(d).is_dir())
        .find_map(|d| {
            let dir = tempfile::tempdir_in(d).ok()?;
            let store = common::store(dir.path());
            (store.available_bytes().ok()? >= needed).then_some(dir)
        });
    let Some(receiver_dir) = receiver_dir else {
        eprintln!("skipped: no room for a {file_bytes}-byte snapshot in /dev/shm or the temp dir");
        return;
    };
    let config = SnapshotStoreConfig {
        snapshots_kept_max: 1,
        ..Default::default()
    };
    let (receiver_store, _) = SnapshotStore::open(receiver_dir.path(), config).unwrap();

    let mut ca = TransportConfig::new(1, CLUSTER, "127.0.0.1:0".parse().unwrap());
    ca.snapshot_chunk_bytes = CHUNK_BYTES as usize;
    let mut cb = TransportConfig::new(2, CLUSTER, "127.0.0.1:0".parse().unwrap());
    cb.snapshot_store = Some(receiver_store.clone());
    let (a, _a_rx) = Transport::start(ca).await.unwrap();
    let (b, mut b_rx) = Transport::start(cb).await.unwrap();
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());

    let before = peak_rss_bytes();
    let started = Instant::now();
    let done = a
        .send_snapshot(2, SnapshotChunks::open(&file, 0, 0).unwrap())
        .unwrap();
    let installed = tokio::time::timeout(Duration::from_secs(600), async {
        loop {
            if let Some(Incoming::Snapshot { from, meta, file }) = b_rx.recv().await {
                break (from, meta, file);
            }
        }
    })
    .await
    .expect("the snapshot arrived within 600 s");
    assert_eq!(done.await.unwrap(), Ok(()));
    let took = started.elapsed();
    let after = peak_rss_bytes();
    a.shutdown().await;
    b.shutdown().await;

    assert_eq!((installed.0, &installed.1), (1, &common::meta(40)));
    assert_eq!(receiver_store.list().unwrap(), vec![installed.2.clone()]);
    assert_eq!(
        std::fs::metadata(&installed.2.path).unwrap().len(),
        file_bytes
    );
    let growth = after.saturating_sub(before);
    eprintln!(
        "{mib} MiB body ({file_bytes} file bytes) in {took:.1?}: peak RSS {} MiB before, {} MiB after (+{} KiB)",
        before >> 20,
        after >> 20,
        growth >> 10
    );
    assert!(
        growth <= RSS_GROWTH_BYTES_MAX,
        "peak RSS grew by {growth} bytes moving a {file_bytes}-byte snapshot (bound {RSS_GROWTH_BYTES_MAX})"
    );
}
