//! One group's in-memory index: where each of its entries lies, its hard state and its
//! snapshot. The same operations serve the write path (after validation) and replay.

use std::collections::VecDeque;

use raft_core::{HardState, Index, SnapshotMeta, StorageError, Term};

/// Where one entry lies: its segment, the offset of its length field, and its term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryLoc {
    pub segment: u64,
    pub offset: u32,
    pub term: Term,
}

/// One group's log as the multi-group log tracks it.
#[derive(Clone, Debug)]
pub(crate) struct Group {
    pub hard_state: HardState,
    pub snapshot: SnapshotMeta,
    /// Index of `locs[0]`: `snapshot.index + 1`, except during replay, where entries whose
    /// earlier neighbours lie in freed segments may start later (a later compaction record
    /// closes the gap; open checks that one did).
    pub first_index: Index,
    pub locs: VecDeque<EntryLoc>,
}

impl Group {
    pub fn new(hard_state: HardState, snapshot: SnapshotMeta) -> Group {
        Group {
            hard_state,
            first_index: snapshot.index + 1,
            snapshot,
            locs: VecDeque::new(),
        }
    }

    pub fn last_index(&self) -> Index {
        self.first_index + self.locs.len() as Index - 1
    }

    pub fn loc(&self, index: Index) -> Option<EntryLoc> {
        let i = index.checked_sub(self.first_index)?;
        self.locs.get(usize::try_from(i).ok()?).copied()
    }

    pub fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if index < self.snapshot.index {
            return Err(StorageError::Compacted);
        }
        self.loc(index)
            .map(|l| l.term)
            .ok_or(StorageError::Unavailable)
    }

    /// Adds entries starting at `first`, dropping held ones at or after it. A start past the
    /// end or before the held entries (only in replay) drops every held entry.
    pub fn append(&mut self, first: Index, locs: impl IntoIterator<Item = EntryLoc>) {
        if first < self.first_index || first > self.last_index() + 1 {
            self.locs.clear();
            self.first_index = first;
        } else {
            self.locs.truncate((first - self.first_index) as usize);
        }
        self.locs.extend(locs);
    }

    /// Drops entries at or after `from`.
    pub fn truncate(&mut self, from: Index) {
        if from <= self.first_index {
            self.locs.clear();
            self.first_index = self.first_index.min(from.max(self.snapshot.index + 1));
        } else if from <= self.last_index() {
            self.locs.truncate((from - self.first_index) as usize);
        }
    }

    /// Records a snapshot up to `meta.index` and drops the entries it covers. Older
    /// snapshots than the one held are ignored.
    pub fn compact(&mut self, meta: SnapshotMeta) {
        if meta.index < self.snapshot.index {
            return;
        }
        let covered = (meta.index + 1).saturating_sub(self.first_index);
        let drop = usize::try_from(covered)
            .unwrap_or(usize::MAX)
            .min(self.locs.len());
        self.locs.drain(..drop);
        self.first_index = self.first_index.max(meta.index + 1);
        if self.locs.is_empty() {
            self.first_index = meta.index + 1;
        }
        self.snapshot = meta;
    }

    /// Replaces the whole log with `meta`.
    pub fn install(&mut self, meta: SnapshotMeta) {
        self.locs.clear();
        self.first_index = meta.index + 1;
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.snapshot = meta;
    }

    /// Lowest segment holding an entry of this group.
    pub fn oldest_segment(&self) -> Option<u64> {
        self.locs.front().map(|l| l.segment)
    }
}
