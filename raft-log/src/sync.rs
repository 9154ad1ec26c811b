//! Group commit: the set of files written since the last sync, and the thread-safe sync.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::LogError;

/// Where an injected fault strikes (see [`Options::fault_hook`](crate::Options::fault_hook)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    /// A positioned write of records, a state slot or zeroes.
    Write,
    /// Preallocating a new segment file.
    Allocate,
    /// An `fdatasync`.
    Sync,
}

/// A test hook called before each write, allocation and sync; an `Err` it returns is used as
/// the result of the system call, which is then not made.
pub type FaultHook = Arc<dyn Fn(FaultPoint) -> io::Result<()> + Send + Sync>;

/// An open file and its path, shared between the log and the sync handles.
#[derive(Debug)]
pub(crate) struct FileRef {
    pub path: PathBuf,
    pub file: File,
}

#[derive(Default)]
struct Dirty {
    files: Vec<Arc<FileRef>>,
    dir: bool,
    /// Sequence numbers held by the two state slots.
    slot_seqs: [u64; 2],
    /// The highest state sequence number known durable; its slot is never overwritten.
    durable_seq: u64,
    /// A state write that the next sync must force to disk is pending.
    state_pending: bool,
}

pub(crate) struct Shared {
    dir: FileRef,
    /// Serialises syncs, so that a sync never returns while an earlier one that took its
    /// files is still flushing them.
    sync_lock: Mutex<()>,
    dirty: Mutex<Dirty>,
    poisoned: AtomicBool,
    syncs: AtomicU64,
    pub fault_hook: Option<FaultHook>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind, never a broken invariant
    // that a later caller could trip over, so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn new(
        dir: FileRef,
        slot_seqs: [u64; 2],
        durable_seq: u64,
        fault_hook: Option<FaultHook>,
    ) -> Shared {
        Shared {
            dir,
            sync_lock: Mutex::new(()),
            dirty: Mutex::new(Dirty {
                slot_seqs,
                durable_seq,
                ..Dirty::default()
            }),
            poisoned: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            fault_hook,
        }
    }

    pub fn fault(&self, point: FaultPoint) -> io::Result<()> {
        match &self.fault_hook {
            Some(hook) => hook(point),
            None => Ok(()),
        }
    }

    pub fn check_poisoned(&self) -> Result<(), LogError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(LogError::Poisoned);
        }
        Ok(())
    }

    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    pub fn mark_dirty(&self, file: &Arc<FileRef>) {
        let mut dirty = lock(&self.dirty);
        if !dirty.files.iter().any(|f| Arc::ptr_eq(f, file)) {
            dirty.files.push(file.clone());
        }
    }

    /// Makes the next sync flush the state file and count its slots as durable.
    pub fn mark_state_dirty(&self, state_file: &Arc<FileRef>) {
        let mut dirty = lock(&self.dirty);
        dirty.state_pending = true;
        if !dirty.files.iter().any(|f| Arc::ptr_eq(f, state_file)) {
            dirty.files.push(state_file.clone());
        }
    }

    pub fn mark_dir_dirty(&self) {
        lock(&self.dirty).dir = true;
    }

    /// Writes a state slot image with `write`, choosing the slot that does not hold the
    /// newest durable record, and remembers `seq` as that slot's content. With `force` the
    /// next sync flushes the state file; without, the write reaches the disk whenever the
    /// kernel writes it back (or with the next forced one).
    pub fn write_state_slot(
        &self,
        state_file: &Arc<FileRef>,
        seq: u64,
        force: bool,
        write: impl FnOnce(usize) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut dirty = lock(&self.dirty);
        let target = if dirty.slot_seqs[0] == dirty.durable_seq {
            1
        } else {
            0
        };
        debug_assert!(
            dirty.durable_seq == 0 || dirty.slot_seqs[target] != dirty.durable_seq,
            "overwriting the durable slot"
        );
        // Whatever happens to the write, the slot no longer reliably holds its old record.
        dirty.slot_seqs[target] = seq;
        if let Err(e) = write(target) {
            // Sequence 0 is never valid, so a sync cannot mistake the torn slot for durable.
            dirty.slot_seqs[target] = 0;
            return Err(e);
        }
        if force {
            dirty.state_pending = true;
            if !dirty.files.iter().any(|f| Arc::ptr_eq(f, state_file)) {
                dirty.files.push(state_file.clone());
            }
        }
        Ok(())
    }

    /// Whether the next sync has anything to flush (or must report poisoning).
    pub fn sync_needed(&self) -> bool {
        if self.poisoned.load(Ordering::Acquire) {
            return true;
        }
        let dirty = lock(&self.dirty);
        !dirty.files.is_empty() || dirty.dir
    }

    /// The highest state sequence number known durable: every state write up to it
    /// survives a crash.
    pub fn durable_state_seq(&self) -> u64 {
        lock(&self.dirty).durable_seq
    }

    /// Number of successful syncs that flushed at least one file.
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    pub fn sync(&self) -> Result<(), LogError> {
        let _serial = lock(&self.sync_lock);
        self.check_poisoned()?;
        let (files, dir, seqs_before, state_synced) = {
            let mut dirty = lock(&self.dirty);
            (
                std::mem::take(&mut dirty.files),
                std::mem::take(&mut dirty.dir),
                dirty.slot_seqs,
                std::mem::take(&mut dirty.state_pending),
            )
        };
        if files.is_empty() && !dir {
            return Ok(());
        }
        for f in &files {
            if let Err(e) = self
                .fault(FaultPoint::Sync)
                .and_then(|()| f.file.sync_data())
            {
                // After a failed fsync the kernel may have dropped the dirty pages and a retry
                // would report success for data that is gone: refuse to go on.
                self.poison();
                return Err(LogError::io(&f.path, e));
            }
        }
        if dir {
            if let Err(e) = self
                .fault(FaultPoint::Sync)
                .and_then(|()| self.dir.file.sync_all())
            {
                self.poison();
                return Err(LogError::io(&self.dir.path, e));
            }
        }
        let mut dirty = lock(&self.dirty);
        // Unforced state writes are not flushed, so they must not count as durable: their
        // slot may still be overwritten.
        let seqs_before = if state_synced { seqs_before } else { [0, 0] };
        for (before, now) in seqs_before.into_iter().zip(dirty.slot_seqs) {
            // A slot unchanged across the flush held the same record before it began.
            if now == before && before > dirty.durable_seq {
                dirty.durable_seq = before;
            }
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A cloneable handle that makes the log durable from another thread.
///
/// Guarantee: when [`SyncHandle::sync`] returns `Ok`, every append, truncation, hard-state
/// and snapshot update whose call on the [`Log`](crate::Log) *returned before `sync` was
/// called* is durable (for a hard state that changed only its commit index, see
/// [`Options::sync_commit_index`](crate::Options::sync_commit_index); its data and the directory entries of files it created are flushed).
/// Writes that run concurrently with the call may or may not be included. Syncs from several
/// handles are serialised. A failed sync poisons the log: every later write or sync returns
/// [`LogError::Poisoned`].
#[derive(Clone)]
pub struct SyncHandle {
    pub(crate) shared: Arc<Shared>,
}

impl SyncHandle {
    /// Flushes every file written before this call (one `fdatasync` per dirty file, usually
    /// just the active segment).
    pub fn sync(&self) -> Result<(), LogError> {
        self.shared.sync()
    }

    /// Whether [`SyncHandle::sync`] would flush anything now: `false` when every write issued
    /// so far is already durable, or is a hard state whose only change is its commit index
    /// (written unforced). A caller may then treat those writes as durable without a sync.
    /// `true` after a failed sync, so that the caller hears of it from `sync`.
    pub fn sync_needed(&self) -> bool {
        self.shared.sync_needed()
    }
}

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHandle")
            .field("dir", &self.shared.dir.path)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use raft_core::{Entry, EntryPayload, HardState};

    use crate::{Log, Options};

    #[test]
    fn sync_needed_only_for_writes_that_must_be_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), Options::default()).unwrap();
        let handle = log.sync_handle();
        log.sync().unwrap();
        assert!(!handle.sync_needed(), "nothing written since the sync");
        let entry = |index| Entry {
            index,
            term: 1,
            payload: EntryPayload::Noop,
        };
        log.append(&[entry(1)]).unwrap();
        assert!(handle.sync_needed(), "an appended entry");
        handle.sync().unwrap();
        assert!(!handle.sync_needed());
        let hs = HardState {
            term: 1,
            vote: Some(1),
            commit: 0,
        };
        log.set_hard_state(hs).unwrap();
        assert!(handle.sync_needed(), "a new term and vote");
        handle.sync().unwrap();
        log.set_hard_state(HardState { commit: 1, ..hs }).unwrap();
        assert!(
            !handle.sync_needed(),
            "a commit-only change is written unforced"
        );
    }
}
