//! A multi-group log shared by the groups of one runtime. raft-core's `RawNode<S>` owns its
//! store, so each group's node gets an owned [`SharedGroup`] (implementing [`LogStore`] and
//! [`LogWriter`]) over the same [`MultiLog`], and the runtime syncs once for all of them
//! ([`SharedMultiLog::sync`]) before it reports their Readies persisted.

use std::sync::{Arc, Mutex, MutexGuard};

use raft_core::{Entry, HardState, Index, LogStore, LogWriter, SnapshotMeta, StorageError, Term};

use crate::error::LogError;

use super::{GroupId, MultiLog};

/// A [`MultiLog`] behind a lock, cheap to clone: one per runtime, handed out per group.
#[derive(Clone)]
pub struct SharedMultiLog {
    log: Arc<Mutex<MultiLog>>,
}

/// One group's log in a [`SharedMultiLog`], owned by that group's node. Its writes share the
/// log's frames and syncs with every other group's; they are durable at the next
/// [`SharedMultiLog::sync`].
///
/// The group must stay in the log while a node holds this: reading the state of a removed
/// group is a host bug and panics.
#[derive(Clone)]
pub struct SharedGroup {
    log: SharedMultiLog,
    group: GroupId,
}

impl SharedMultiLog {
    /// Shares `log`.
    pub fn new(log: MultiLog) -> SharedMultiLog {
        SharedMultiLog {
            log: Arc::new(Mutex::new(log)),
        }
    }

    /// The log itself, for what is not per group (creating and removing groups, syncing).
    /// Held only for one call's length by the group handles.
    pub fn lock(&self) -> MutexGuard<'_, MultiLog> {
        // A panic while the lock was held may have left the index and the frame apart:
        // nothing may write after it.
        self.log
            .lock()
            .expect("multi-group log lock poisoned by a panic while writing it")
    }

    /// The handle of a held group, or `None`.
    pub fn group(&self, group: GroupId) -> Option<SharedGroup> {
        self.lock().has_group(group).then(|| SharedGroup {
            log: self.clone(),
            group,
        })
    }

    /// Makes every group's writes so far durable, with one `fdatasync` ([`MultiLog::sync`]).
    pub fn sync(&self) -> Result<(), LogError> {
        self.lock().sync()
    }
}

impl SharedGroup {
    /// The group's ID.
    pub fn id(&self) -> GroupId {
        self.group
    }

    /// The shared log this group is part of.
    pub fn shared(&self) -> &SharedMultiLog {
        &self.log
    }

    /// Runs `f` on the group's view; panics if the group was removed (see the type's docs).
    fn read<T>(&self, f: impl FnOnce(super::GroupView<'_>) -> T) -> T {
        let log = self.log.lock();
        let view = log.group(self.group).unwrap_or_else(|| {
            panic!(
                "group {} was removed from the multi-group log while its node still reads it",
                self.group
            )
        });
        f(view)
    }
}

impl LogStore for SharedGroup {
    fn hard_state(&self) -> HardState {
        self.read(|g| g.hard_state())
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.read(|g| g.snapshot_meta())
    }

    fn first_index(&self) -> Index {
        self.read(|g| g.first_index())
    }

    fn last_index(&self) -> Index {
        self.read(|g| g.last_index())
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.log.lock().term(self.group, index)
    }

    fn entries(
        &self,
        low: Index,
        high: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.log.lock().entries(self.group, low, high, max_bytes)
    }
}

impl LogWriter for SharedGroup {
    type Error = LogError;

    fn append_entries(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        self.log.lock().append(self.group, entries)
    }

    fn write_hard_state(&mut self, hard_state: HardState) -> Result<(), LogError> {
        self.log.lock().set_hard_state(self.group, hard_state)
    }

    fn install_snapshot_meta(&mut self, meta: SnapshotMeta) -> Result<(), LogError> {
        self.log.lock().install_snapshot(self.group, meta)
    }

    fn compact_to(&mut self, meta: SnapshotMeta) -> Result<(), LogError> {
        self.log.lock().compact(self.group, meta)
    }
}
