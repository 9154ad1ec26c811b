//! The storage seam: what the runtime needs of a log beyond raft-core's storage contract
//! ([`LogStore`](raft_core::LogStore) to read, [`LogWriter`] to write, each store with its own error type).
//!
//! Writes happen on the runtime task (they only reach the OS page cache or memory); the
//! durability barrier is a [`SyncJob`] the runtime runs on its sync thread, off the task that
//! owns the protocol. raft-log's `Log` implements it in [`crate::store_log`] (the default,
//! `storage = "disk"`); `raft_core::MemLog` implements it below for `storage = "memory"`,
//! where nothing is durable and a restarted node comes back empty (unsafe under the same ID:
//! it may vote twice in a term).

use raft_core::{LogWriter, MemLog};

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
