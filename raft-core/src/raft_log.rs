//! The core's view of the log: the host's [`LogStore`] overlaid with entries (and a snapshot)
//! that the core has accepted but not yet handed to the host in a [`Ready`](crate::Ready).

use crate::storage::{EntryBytesLimit, LogStore, StorageError};
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
        let reached_split = out
            .last()
            .map(|e| e.index + 1 == split)
            .unwrap_or(low >= split);
        if high > split && reached_split {
            // The stored entries count against the same bound.
            let mut limit = EntryBytesLimit::new(max_bytes);
            let stored_fit = out.iter().all(|e| limit.take(e));
            debug_assert!(stored_fit, "the store returned more than the bound allows");
            let first = self.unstable[0].index;
            let from = (low.max(split) - first) as usize;
            let to = (high - first) as usize;
            limit.take_from(&self.unstable[from..to], &mut out);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemLog;
    use crate::types::EntryPayload;
    use bytes::Bytes;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            payload: EntryPayload::Noop,
        }
    }

    fn stored(terms: &[Term]) -> RaftLog<MemLog> {
        let mut store = MemLog::new();
        let entries: Vec<Entry> = (1..).zip(terms).map(|(i, &t)| entry(i, t)).collect();
        store.append(&entries);
        RaftLog::new(store)
    }

    fn indexes_terms(entries: &[Entry]) -> Vec<(Index, Term)> {
        entries.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn unstable_entries_shadow_the_store_from_their_first_index() {
        let mut log = stored(&[1, 1, 1, 1]);
        assert_eq!(
            log.append(vec![entry(3, 2), entry(4, 2), entry(5, 2)]),
            Some(3)
        );
        assert_eq!(
            (log.first_index(), log.last_index(), log.last_term()),
            (1, 5, 2)
        );
        assert_eq!(log.term(2), Ok(1));
        assert_eq!(log.term(4), Ok(2), "the unstable entry, not the stored one");
        assert_eq!(log.term(6), Err(StorageError::Unavailable));
        assert!(log.matches(3, 2) && !log.matches(3, 1));
        assert_eq!(
            indexes_terms(&log.entries(1, 6, usize::MAX).unwrap()),
            vec![(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]
        );
    }

    #[test]
    fn appending_inside_the_unstable_tail_truncates_it() {
        let mut log = stored(&[1]);
        assert_eq!(
            log.append(vec![entry(2, 1), entry(3, 1), entry(4, 1)]),
            None
        );
        assert_eq!(log.append(vec![entry(3, 3)]), Some(3));
        assert_eq!(log.last_index(), 3);
        let (snapshot, unstable) = log.take_unstable();
        assert!(snapshot.is_none());
        assert_eq!(indexes_terms(&unstable), vec![(2, 1), (3, 3)]);
        assert!(!log.has_unstable());
        assert_eq!(log.append(Vec::new()), None);
    }

    #[test]
    #[should_panic(expected = "leaves a gap")]
    fn an_append_past_the_end_is_a_bug() {
        let mut log = stored(&[1, 1]);
        log.append(vec![entry(4, 1)]);
    }

    #[test]
    fn a_pending_snapshot_replaces_everything_stored() {
        let mut log = stored(&[1, 1, 1]);
        log.restore(SnapshotMeta {
            index: 10,
            term: 4,
            membership: Default::default(),
        });
        assert_eq!(
            (log.first_index(), log.last_index(), log.last_term()),
            (11, 10, 4)
        );
        assert_eq!(log.term(10), Ok(4));
        assert_eq!(log.term(2), Err(StorageError::Compacted));
        assert_eq!(log.term(11), Err(StorageError::Unavailable));
        assert_eq!(log.entries(2, 4, usize::MAX), Err(StorageError::Compacted));
        log.append(vec![entry(11, 4)]);
        assert_eq!(
            indexes_terms(&log.entries(11, 12, usize::MAX).unwrap()),
            vec![(11, 4)]
        );
        let (snapshot, unstable) = log.take_unstable();
        assert_eq!(snapshot.map(|m| m.index), Some(10));
        assert_eq!(indexes_terms(&unstable), vec![(11, 4)]);
    }

    #[test]
    fn reads_stop_past_the_byte_bound_but_return_at_least_one_entry() {
        let big = |index| Entry {
            index,
            term: 1,
            payload: EntryPayload::Command(Bytes::from(vec![0u8; 100])),
        };
        let mut log = RaftLog::new(MemLog::new());
        log.append((1..=5).map(big).collect());
        let one = big(1).size_bytes();
        assert_eq!(log.entries(1, 6, 0).unwrap().len(), 1, "at least one");
        assert_eq!(log.entries(1, 6, 2 * one).unwrap().len(), 2);
        assert_eq!(log.entries(1, 6, 2 * one + 1).unwrap().len(), 2);
        assert_eq!(log.entries(3, 3, 0).unwrap().len(), 0, "an empty range");
        assert_eq!(
            log.entries(1, 7, usize::MAX),
            Err(StorageError::Unavailable)
        );
    }
}
