//! raft-core's storage contract for one group of a multi-group log: [`GroupView`] reads
//! ([`LogStore`]), [`GroupLog`] also writes ([`LogWriter`]). A multi-group runtime hands one
//! to each group's node while it drives it, and syncs the shared log once for all of them.

use raft_core::{Entry, HardState, Index, LogStore, LogWriter, SnapshotMeta, StorageError, Term};

use crate::error::LogError;

use super::group::Group;
use super::{GroupId, MultiLog};

/// Read access to one group of a [`MultiLog`], from [`MultiLog::group`].
#[derive(Clone, Copy)]
pub struct GroupView<'a> {
    pub(super) log: &'a MultiLog,
    pub(super) group: GroupId,
}

/// Read and write access to one group of a [`MultiLog`], from [`MultiLog::group_mut`].
/// Writes are durable at the log's next [`MultiLog::sync`].
pub struct GroupLog<'a> {
    pub(super) log: &'a mut MultiLog,
    pub(super) group: GroupId,
}

impl GroupView<'_> {
    /// The group's ID.
    pub fn id(&self) -> GroupId {
        self.group
    }

    fn state(&self) -> &Group {
        // The view was made for a held group and borrows the log, so it is still held.
        &self.log.groups[&self.group]
    }
}

impl GroupLog<'_> {
    /// The group's ID.
    pub fn id(&self) -> GroupId {
        self.group
    }

    /// A read-only view of the same group.
    pub fn view(&self) -> GroupView<'_> {
        GroupView {
            log: self.log,
            group: self.group,
        }
    }

    /// Drops the entries at or after `from` ([`MultiLog::truncate_suffix`]).
    pub fn truncate_suffix(&mut self, from: Index) -> Result<(), LogError> {
        self.log.truncate_suffix(self.group, from)
    }
}

impl LogStore for GroupView<'_> {
    fn hard_state(&self) -> HardState {
        self.state().hard_state
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.state().snapshot.clone()
    }

    fn first_index(&self) -> Index {
        self.state().first_index
    }

    fn last_index(&self) -> Index {
        self.state().last_index()
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.state().term(index)
    }

    fn entries(
        &self,
        low: Index,
        high: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.log.entries(self.group, low, high, max_bytes)
    }
}

impl LogStore for GroupLog<'_> {
    fn hard_state(&self) -> HardState {
        self.view().hard_state()
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.view().snapshot_meta()
    }

    fn first_index(&self) -> Index {
        self.view().first_index()
    }

    fn last_index(&self) -> Index {
        self.view().last_index()
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.view().term(index)
    }

    fn entries(
        &self,
        low: Index,
        high: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.view().entries(low, high, max_bytes)
    }
}

impl LogWriter for GroupLog<'_> {
    type Error = LogError;

    fn append_entries(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        self.log.append(self.group, entries)
    }

    fn write_hard_state(&mut self, hard_state: HardState) -> Result<(), LogError> {
        self.log.set_hard_state(self.group, hard_state)
    }

    fn install_snapshot_meta(&mut self, meta: SnapshotMeta) -> Result<(), LogError> {
        self.log.install_snapshot(self.group, meta)
    }

    fn compact_to(&mut self, meta: SnapshotMeta) -> Result<(), LogError> {
        self.log.compact(self.group, meta)
    }
}
