//! State-machine snapshots, log compaction policy, snapshot transfer and anti-entropy
//! digests.
//!
//! - [`StateMachine`]: what applications implement (deterministic `apply`, `snapshot`,
//!   `restore`, `digest`, and `freeze` for snapshots off the apply path).
//! - [`SnapshotStore`]: a directory of checksummed snapshot files written atomically
//!   ([`SnapshotWriter`]), read with verification ([`SnapshotReader`]), the newest
//!   `snapshots_kept_max` kept, corrupt ones quarantined and skipped
//!   ([`SnapshotStore::open_latest`]). The file format is described in [`mod@format`].
//! - [`SnapshotChunks`] and [`SnapshotAssembler`]: the file side of installing a snapshot
//!   on a follower, chunk by chunk, resumable, installed atomically; raft-net's snapshot
//!   lane carries the chunks.
//! - [`SnapshotPolicy`] and [`SnapshotTrigger`]: when to snapshot and how far to compact.
//! - [`StateDigest`], [`DigestReport`], [`compare_digests`], [`DigestLedger`]: anti-entropy.
//!
//! `examples/kv` is a small deterministic state machine of this contract, written to a
//! store and restored (`cargo run -p raft-snapshot --example kv`); raft-node's key-value
//! machine is the full one.

#![deny(missing_docs)]

pub mod digest;
pub mod error;
pub mod format;
pub mod policy;
pub mod state_machine;
pub mod store;
pub mod transfer;

pub use digest::{
    compare_digests, DigestCompareError, DigestComparison, DigestHasher, DigestLedger,
    DigestReport, DigestVerdict, StateDigest,
};
pub use error::{CorruptKind, SnapshotError};
pub use format::SnapshotHeader;
pub use policy::{SnapshotPolicy, SnapshotTrigger};
pub use state_machine::{RestoreError, SnapshotSource, StateMachine};
pub use store::{
    restore_state_machine, OpenLatest, OpenReport, SnapshotFile, SnapshotReader, SnapshotStore,
    SnapshotStoreConfig, SnapshotWriter,
};
pub use transfer::{
    AssemblyProgress, SnapshotAssembler, SnapshotChunks, TransferChunk, TRANSFER_CHUNK_BYTES_MAX,
};
