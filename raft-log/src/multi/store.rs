//! raft-core's storage contract for one group of a multi-group log, written once for every
//! way of holding the log: [`GroupHandle`] over a borrowed log ([`GroupView`], reads), a
//! mutably borrowed one ([`GroupLog`], also writes) or a shared one
//! ([`SharedGroup`](super::SharedGroup)). A multi-group runtime hands one to each group's node
//! while it drives it, and syncs the shared log once for all of them.

use raft_core::{Entry, HardState, Index, LogStore, LogWriter, SnapshotMeta, StorageError, Term};

use crate::error::LogError;

use super::group::Group;
use super::{GroupId, MultiLog};

/// How a [`GroupHandle`] reaches its [`MultiLog`]: a borrow, or a lock held for one call.
pub trait LogAccess {
    /// Runs `f` on the log.
    fn with_log<T>(&self, f: impl FnOnce(&MultiLog) -> T) -> T;
}

/// A [`LogAccess`] that may also write the log.
pub trait LogAccessMut: LogAccess {
    /// Runs `f` on the log, writably.
    fn with_log_mut<T>(&mut self, f: impl FnOnce(&mut MultiLog) -> T) -> T;
}

impl LogAccess for &MultiLog {
    fn with_log<T>(&self, f: impl FnOnce(&MultiLog) -> T) -> T {
        f(self)
    }
}

impl LogAccess for &mut MultiLog {
    fn with_log<T>(&self, f: impl FnOnce(&MultiLog) -> T) -> T {
        f(self)
    }
}

impl LogAccessMut for &mut MultiLog {
    fn with_log_mut<T>(&mut self, f: impl FnOnce(&mut MultiLog) -> T) -> T {
        f(self)
    }
}

/// One group of a [`MultiLog`] reached through `L`: implements [`LogStore`], and
/// [`LogWriter`] when `L` may write. Writes are durable at the log's next [`MultiLog::sync`].
///
/// The group must stay in the log while the handle lives: reading the state of a removed
/// group is a host bug and panics.
#[derive(Clone, Copy)]
pub struct GroupHandle<L> {
    pub(super) log: L,
    pub(super) group: GroupId,
}

/// Read access to one group of a [`MultiLog`], from [`MultiLog::group`].
pub type GroupView<'a> = GroupHandle<&'a MultiLog>;

/// Read and write access to one group of a [`MultiLog`], from [`MultiLog::group_mut`].
pub type GroupLog<'a> = GroupHandle<&'a mut MultiLog>;

impl<L> GroupHandle<L> {
    /// The group's ID.
    pub fn id(&self) -> GroupId {
        self.group
    }
}

impl<L: LogAccess> GroupHandle<L> {
    /// Runs `f` on the group's state; panics if the group was removed (see the type's docs).
    fn read<T>(&self, f: impl FnOnce(&MultiLog, &Group) -> T) -> T {
        self.log.with_log(|log| {
            let state = log.groups.get(&self.group).unwrap_or_else(|| {
                panic!(
                    "group {} was removed from the multi-group log while a handle to it was held",
                    self.group
                )
            });
            f(log, state)
        })
    }
}

impl GroupLog<'_> {
    /// A read-only view of the same group.
    pub fn view(&self) -> GroupView<'_> {
        GroupHandle {
            log: &*self.log,
            group: self.group,
        }
    }
}

impl<L: LogAccessMut> GroupHandle<L> {
    /// Drops the entries at or after `from` ([`MultiLog::truncate_suffix`]).
    pub fn truncate_suffix(&mut self, from: Index) -> Result<(), LogError> {
        let group = self.group;
        self.log
            .with_log_mut(|log| log.truncate_suffix(group, from))
    }
}

impl<L: LogAccess> LogStore for GroupHandle<L> {
    fn hard_state(&self) -> HardState {
        self.read(|_, g| g.hard_state)
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.read(|_, g| g.snapshot.clone())
    }

    fn first_index(&self) -> Index {
        self.read(|_, g| g.first_index)
    }

    fn last_index(&self) -> Index {
        self.read(|_, g| g.last_index())
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.read(|_, g| g.term(index))
    }

    fn entries(
        &self,
        low: Index,
        high: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read(|log, _| log.entries(self.group, low, high, max_bytes))
    }
}

impl<L: LogAccessMut> LogWriter for GroupHandle<L> {
    type Error = LogError;

    fn append_entries(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        let group = self.group;
        self.log.with_log_mut(|log| log.append(group, entries))
    }

    fn write_hard_state(&mut self, hard_state: HardState) -> Result<(), LogError> {
        let group = self.group;
        self.log
            .with_log_mut(|log| log.set_hard_state(group, hard_state))
    }

    fn install_snapshot_meta(&mut self, meta: SnapshotMeta) -> Result<(), LogError> {
        let group = self.group;
        self.log
            .with_log_mut(|log| log.install_snapshot(group, meta))
    }

    fn compact_to(&mut self, meta: SnapshotMeta) -> Result<(), LogError> {
        let group = self.group;
        self.log.with_log_mut(|log| log.compact(group, meta))
    }
}
