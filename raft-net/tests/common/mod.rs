//! Snapshot files for the transport tests: a sender's store with one file, a receiver's
//! empty store, and the bytes of a file to compare.
#![allow(dead_code)] // Each test file uses its own part.

pub mod harness;

use std::io::Write;
use std::path::Path;

use raft_core::{Membership, SnapshotMeta};
use raft_snapshot::{
    SnapshotChunks, SnapshotFile, SnapshotStore, SnapshotStoreConfig, StateDigest,
};

pub fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term: 2,
        membership: Membership::new_voters([1, 2]),
    }
}

/// A store in `dir` (created), with the default chunking.
pub fn store(dir: &Path) -> SnapshotStore {
    SnapshotStore::open(dir, SnapshotStoreConfig::default())
        .unwrap()
        .0
}

/// A snapshot at `meta` whose body is `body_bytes` of a fixed pattern, written into a store
/// at `dir` with `chunk_bytes` per body chunk.
pub fn snapshot_file(
    dir: &Path,
    meta: SnapshotMeta,
    body_bytes: usize,
    chunk_bytes: u32,
) -> SnapshotFile {
    let config = SnapshotStoreConfig {
        chunk_bytes,
        ..Default::default()
    };
    let (store, _) = SnapshotStore::open(dir, config).unwrap();
    let body: Vec<u8> = (0..body_bytes).map(|i| (i * 31 % 251) as u8).collect();
    let mut writer = store.begin(meta).unwrap();
    writer.write_all(&body).unwrap();
    writer.finish(StateDigest::of(&body)).unwrap()
}

/// `file` opened for sending.
pub fn chunks(file: &SnapshotFile) -> SnapshotChunks {
    SnapshotChunks::open(file, 0, 1 << 20).unwrap()
}

pub fn file_bytes(file: &SnapshotFile) -> Vec<u8> {
    std::fs::read(&file.path).unwrap()
}
