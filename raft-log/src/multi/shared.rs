//! A multi-group log shared by the groups of one runtime. raft-core's `RawNode<S>` owns its
//! store, so each group's node gets an owned [`SharedGroup`] (implementing
//! [`LogStore`](raft_core::LogStore) and [`LogWriter`](raft_core::LogWriter)) over the same
//! [`MultiLog`], and the runtime syncs once for all of them ([`SharedMultiLog::sync`])
//! before it reports their Readies persisted.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::LogError;

use super::store::{GroupHandle, LogAccess, LogAccessMut};
use super::{GroupId, MultiLog};

/// A [`MultiLog`] behind a lock, cheap to clone: one per runtime, handed out per group.
#[derive(Clone)]
pub struct SharedMultiLog {
    log: Arc<Mutex<MultiLog>>,
}

/// One group's log in a [`SharedMultiLog`], owned by that group's node. Its writes share the
/// log's frames and syncs with every other group's; they are durable at the next
/// [`SharedMultiLog::sync`]. Each call holds the lock for its own length.
///
/// The group must stay in the log while a node holds this: reading the state of a removed
/// group is a host bug and panics.
pub type SharedGroup = GroupHandle<SharedMultiLog>;

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
        self.lock().has_group(group).then(|| GroupHandle {
            log: self.clone(),
            group,
        })
    }

    /// Makes every group's writes so far durable, with one `fdatasync` ([`MultiLog::sync`]).
    pub fn sync(&self) -> Result<(), LogError> {
        self.lock().sync()
    }
}

impl LogAccess for SharedMultiLog {
    fn with_log<T>(&self, f: impl FnOnce(&MultiLog) -> T) -> T {
        f(&self.lock())
    }
}

impl LogAccessMut for SharedMultiLog {
    fn with_log_mut<T>(&mut self, f: impl FnOnce(&mut MultiLog) -> T) -> T {
        f(&mut self.lock())
    }
}

impl SharedGroup {
    /// The shared log this group is part of.
    pub fn shared(&self) -> &SharedMultiLog {
        &self.log
    }
}
