//! The storage seam: what the runtime needs of a log beyond raft-core's storage contract
//! ([`LogStore`](raft_core::LogStore) to read, [`LogWriter`] to write, each store with its own error type).
//!
//! Writes happen on the runtime task (they only reach the OS page cache or memory); the
//! durability barrier is a [`SyncJob`] the runtime runs on its sync thread, off the task that
//! owns the protocol. raft-log's `Log` implements it in [`crate::store_log`] (the default,
//! `storage = "disk"`); `raft_core::MemLog` implements it below for `storage = "memory"`,
//! where nothing is durable and a restarted node comes back empty (unsafe under the same ID:
//! it may vote twice in a term).

use raft_core::{HardState, LogWriter, MemLog, SnapshotMeta};

/// Makes every write issued before the job was created durable. Runs on the sync thread.
/// It fails with the store's own error, as the writes do (`raft_log::LogError` on disk).
pub type SyncJob<E> = Box<dyn FnOnce() -> Result<(), E> + Send>;

/// A log the node can write and make durable. The writes are raft-core's [`LogWriter`]; a
/// failed one reaches the runtime as the store's own error (`raft_log::LogError` on disk).
/// `compact_to` must not block on the disk: like the other writes it need not be durable
/// on return (it is with the next sync).
pub trait NodeStore: LogWriter + Send + 'static {
    /// A job that makes the writes issued so far durable.
    fn sync_job(&mut self) -> SyncJob<Self::Error>;
    /// Whether a sync job would have anything to flush now. `false` only when every write
    /// issued so far is durable or need not be (a commit-only hard state change), so the
    /// runtime may count them durable without handing a job to the sync thread.
    fn sync_needed(&self) -> bool {
        true
    }
    /// Short description for status views (`"memory"`, `"raft-log: 3 segments"`).
    fn describe(&self) -> String;
    /// Whether the log survives a restart. A node on a volatile log starts empty, so it
    /// must not restore state-machine snapshots left by an earlier run either.
    fn is_durable(&self) -> bool;
}

/// At start, with the state machine restored from a snapshot file of this node at
/// `snapshot.index`: if the log recovered ends before that index (its unsynced tail was lost
/// in a crash, or it was truncated), makes the snapshot the log's starting point, as if the
/// leader had sent it. Returns whether it did.
///
/// Safe because the file was built from this node's own applied state, and only committed
/// entries are applied: everything up to `snapshot.index` is committed, so the entries the
/// log still holds before it are not needed, and the node resumes after the snapshot (the
/// leader sends it the rest). Without this, the core refuses a snapshot beyond its log
/// (`SnapshotError::NotInLog`), so the node could send none to a lagging follower until it
/// took its next one. A hard state left in an older term than the snapshot's moves to the
/// snapshot's term, with no vote: the node must not campaign in a term its log is ahead of.
pub fn adopt_snapshot_ahead_of_log<S: NodeStore>(
    store: &mut S,
    snapshot: &SnapshotMeta,
) -> Result<bool, S::Error> {
    if snapshot.index <= store.last_index() {
        return Ok(false);
    }
    let hard_state = store.hard_state();
    if hard_state.term < snapshot.term {
        store.write_hard_state(HardState {
            term: snapshot.term,
            vote: None,
            commit: hard_state.commit,
        })?;
    }
    store.install_snapshot_meta(snapshot.clone())?;
    Ok(true)
}

impl NodeStore for MemLog {
    fn sync_job(&mut self) -> SyncJob<Self::Error> {
        Box::new(|| Ok(()))
    }

    fn sync_needed(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        "memory (not durable)".to_string()
    }

    fn is_durable(&self) -> bool {
        false
    }
}
