//! What the snapshot benches share: the body, its metadata, a store, and the raw baseline's
//! write.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use raft_core::rng::SplitMix64;
use raft_core::{Membership, SnapshotMeta};
use raft_snapshot::{SnapshotStore, SnapshotStoreConfig};

/// The raw baseline writes in pieces of this size, as the store does.
pub const WRITE_PIECE_BYTES: usize = 1 << 20;

/// The body size, from `RAFT_SNAPSHOT_BENCH_MIB` (default 64), at most `mib_max`.
pub fn body_bytes(mib_max: usize) -> usize {
    std::env::var("RAFT_SNAPSHOT_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(64)
        .clamp(1, mib_max)
        << 20
}

/// `len` pseudo-random bytes (incompressible, like a real state's encoding).
pub fn body(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term: 1,
        membership: Membership::new_voters([1, 2, 3]),
    }
}

pub fn store(dir: &Path) -> SnapshotStore {
    let config = SnapshotStoreConfig {
        snapshots_kept_max: 1,
        ..Default::default()
    };
    SnapshotStore::open(dir, config).unwrap().0
}

/// The raw baseline: plain writes of the same bytes into a new file, then fsync.
pub fn write_fsync(path: &Path, bytes: &[u8]) {
    let mut file = File::create(path).unwrap();
    for piece in bytes.chunks(WRITE_PIECE_BYTES) {
        file.write_all(piece).unwrap();
    }
    file.sync_all().unwrap();
}
