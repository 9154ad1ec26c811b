//! The core's view of the log: the host's [`LogStore`] overlaid with entries (and a snapshot)
//! that the core has accepted but not yet handed to the host in a [`Ready`](crate::Ready).

use crate::storage::{LogStore, StorageError};
use crate::types::{Entry, Index, SnapshotMeta, Term};

pub(crate) struct RaftLog<S> {
    pub(crate) store: S,
    /// A snapshot accepted from the leader and not yet handed out. While set, it replaces
    /// everything the store holds.
    pending_snapshot: Option<SnapshotMeta>,
    /// Entries not yet handed out, contiguous. They shadow every stored entry at or after
    /// `unstable[0].index`.
    unstable: Vec<Entry>,
}

impl<S: LogStore> RaftLog<S> {
    pub(crate) fn new(store: S) -> Self {
        RaftLog {
            store,
            pending_snapshot: None,
            unstable: Vec::new(),
        }
    }

    pub(crate) fn snapshot_meta(&self) -> SnapshotMeta {
        match &self.pending_snapshot {
            Some(meta) => meta.clone(),
            None => self.store.snapshot_meta(),
        }
    }

    pub(crate) fn first_index(&self) -> Index {
        match &self.pending_snapshot {
            Some(meta) => meta.index + 1,
            None => self.store.first_index(),
        }
    }

    pub(crate) fn last_index(&self) -> Index {
        if let Some(last) = self.unstable.last() {
            return last.index;
        }
        match &self.pending_snapshot {
            Some(meta) => meta.index,
            None => self.store.last_index(),
        }
    }

    /// Last index held in the store (and not shadowed), so the range reads start from there.
    fn stored_end(&self) -> Index {
        // One past the last stored entry that is still visible.
        let store_next = if self.pending_snapshot.is_some() {
            self.first_index()
        } else {
            self.store.last_index() + 1
        };
        match self.unstable.first() {
            Some(first) => first.index.min(store_next),
            None => store_next,
        }
    }

    pub(crate) fn term(&self, index: Index) -> Result<Term, StorageError> {
        if let Some(first) = self.unstable.first() {
            if index >= first.index {
                return self
                    .unstable
                    .get((index - first.index) as usize)
                    .map(|e| e.term)
                    .ok_or(StorageError::Unavailable);
            }
        }
        if let Some(meta) = &self.pending_snapshot {
            return if index == meta.index {
                Ok(meta.term)
            } else if index < meta.index {
                Err(StorageError::Compacted)
            } else {
                Err(StorageError::Unavailable)
            };
        }
        if index > self.store.last_index() {
            return Err(StorageError::Unavailable);
        }
        self.store.term(index)
    }

    pub(crate) fn last_term(&self) -> Term {
        self.term(self.last_index())
            .expect("the term of the last index is always known")
    }

    /// Whether the entry at `index` has `term`.
    pub(crate) fn matches(&self, index: Index, term: Term) -> bool {
        self.term(index).map(|t| t == term).unwrap_or(false)
    }

    /// Entries in `low..high`, about `max_bytes` at most (at least one).
    pub(crate) fn entries(
        &self,
        low: Index,
        high: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        if low >= high {
            return Ok(Vec::new());
        }
        if low < self.first_index() {
            return Err(StorageError::Compacted);
        }
        if high > self.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        let split = self.stored_end();
        let mut out = if low < split {
            self.store.entries(low, high.min(split), max_bytes)?
        } else {
            Vec::new()
        };
        let mut bytes: usize = out.iter().map(Entry::size_bytes).sum();
        let reached_split = out
            .last()
            .map(|e| e.index + 1 == split)
            .unwrap_or(low >= split);
        if high > split && reached_split {
            let first = self.unstable[0].index;
            let from = (low.max(split) - first) as usize;
            let to = (high - first) as usize;
            // Reserve once rather than grow one push at a time (a hot path on the leader).
            out.reserve((to - from).min(1024));
            for entry in &self.unstable[from..to] {
                bytes += entry.size_bytes();
                if !out.is_empty() && bytes > max_bytes {
                    break;
                }
                out.push(entry.clone());
            }
        }
        Ok(out)
    }

    /// Appends entries after dropping every entry at or after `entries[0].index`.
    /// Returns the index truncated from, if the append cut off existing entries.
    pub(crate) fn append(&mut self, entries: Vec<Entry>) -> Option<Index> {
        let first = entries.first()?.index;
        let last = self.last_index();
        assert!(
            first >= self.first_index() && first <= last + 1,
            "append at {first} leaves a gap (log {}..={last})",
            self.first_index()
        );
        let truncated = (first <= last).then_some(first);
        match self.unstable.first().map(|e| e.index) {
            Some(unstable_first) if first >= unstable_first => {
                self.unstable.truncate((first - unstable_first) as usize);
                self.unstable.extend(entries);
            }
            _ => self.unstable = entries,
        }
        truncated
    }

    /// Replaces the whole log by a snapshot.
    pub(crate) fn restore(&mut self, meta: SnapshotMeta) {
        self.unstable.clear();
        self.pending_snapshot = Some(meta);
    }

    /// Hands out what the host must write: a snapshot to install first, then entries.
    pub(crate) fn take_unstable(&mut self) -> (Option<SnapshotMeta>, Vec<Entry>) {
        (
            self.pending_snapshot.take(),
            std::mem::take(&mut self.unstable),
        )
    }

    pub(crate) fn has_unstable(&self) -> bool {
        self.pending_snapshot.is_some() || !self.unstable.is_empty()
    }
}
