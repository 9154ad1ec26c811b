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
//! - [`kv::KvStateMachine`]: a small deterministic example state machine.
//!
//! ```
//! use raft_snapshot::kv::{KvCommand, KvStateMachine};
//! use raft_snapshot::{restore_state_machine, SnapshotSource, SnapshotStore, StateMachine};
//! # let dir = std::env::temp_dir().join(format!("raft-snapshot-doc-{}", std::process::id()));
//! let (store, _report) = SnapshotStore::open(&dir, Default::default()).unwrap();
//! let mut sm = KvStateMachine::new();
//! sm.apply(1, &KvCommand::Put { key: b"k".to_vec(), value: b"v".to_vec() }.encode());
//! let meta = raft_core::SnapshotMeta { index: 1, term: 1, ..Default::default() };
//! store.write_snapshot(meta, &sm.freeze()).unwrap();
//!
//! let latest = store.open_latest().unwrap().snapshot.unwrap();
//! let mut restored = KvStateMachine::new();
//! restore_state_machine(latest, &mut restored).unwrap();
//! assert_eq!(restored.digest(), sm.digest());
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

#![deny(missing_docs)]

pub mod digest;
pub mod error;
pub mod format;
pub mod kv;
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
