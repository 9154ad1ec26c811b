//! The storage seam: what the runtime needs of a log beyond raft-core's read-only
//! [`LogStore`].
//!
//! Writes happen on the runtime task (they only reach the OS page cache or memory); the
//! durability barrier is a [`SyncJob`] the runtime runs on its sync thread, off the task that
//! owns the protocol. raft-log's `Log` implements it in [`crate::store_log`] (the default,
//! `storage = "disk"`); `raft_core::MemLog` implements it below for `storage = "memory"`,
//! where nothing is durable and a restarted node comes back empty (unsafe under the same ID:
//! it may vote twice in a term).

use std::io;

use raft_core::{Entry, HardState, LogStore, MemLog, SnapshotMeta};

/// Makes every write issued before the job was created durable. Runs on the sync thread.
pub type SyncJob = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// A log the node can write and make durable.
pub trait NodeStore: LogStore + Send + 'static {
    /// Appends `entries`, first dropping every held entry at or after `entries[0].index`.
    fn append_entries(&mut self, entries: &[Entry]) -> io::Result<()>;
    /// Records the hard state (durable with the next sync).
    fn write_hard_state(&mut self, hard_state: HardState) -> io::Result<()>;
    /// Replaces the whole log with a snapshot received from the leader.
    fn install_snapshot_meta(&mut self, meta: SnapshotMeta) -> io::Result<()>;
    /// Drops entries covered by a local snapshot. Like the writes above it need not be
    /// durable on return (it is with the next sync); it must not block on the disk.
    fn compact_to(&mut self, meta: SnapshotMeta) -> io::Result<()>;
    /// A job that makes the writes issued so far durable.
    fn sync_job(&mut self) -> SyncJob;
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
    fn append_entries(&mut self, entries: &[Entry]) -> io::Result<()> {
        self.append(entries);
        Ok(())
    }

    fn write_hard_state(&mut self, hard_state: HardState) -> io::Result<()> {
        self.set_hard_state(hard_state);
        Ok(())
    }

    fn install_snapshot_meta(&mut self, meta: SnapshotMeta) -> io::Result<()> {
        self.install_snapshot(meta);
        Ok(())
    }

    fn compact_to(&mut self, meta: SnapshotMeta) -> io::Result<()> {
        self.compact(meta);
        Ok(())
    }

    fn sync_job(&mut self) -> SyncJob {
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
