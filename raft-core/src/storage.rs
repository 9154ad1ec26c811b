//! The storage contract: [`LogStore`], how the core reads the log, and [`LogWriter`], how
//! the host writes it; [`MemLog`] implements both in memory (raft-log on disk).
//!
//! The core only *reads* through [`LogStore`]. The host *writes*: after taking a
//! [`Ready`] it must apply the Ready's snapshot, entries and hard state to the
//! store ([`LogWriter::write_ready`]) before it calls into the node again (making them
//! durable may happen later; see [`RawNode::on_persisted`](crate::RawNode::on_persisted)).

use std::fmt;

use crate::ready::Ready;
use crate::types::{Entry, HardState, Index, SnapshotMeta, Term};

/// Why a read from the log failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageError {
    /// The index lies before the first retained entry: a snapshot replaced it.
    Compacted,
    /// The index lies after the last entry.
    Unavailable,
    /// The store could not read its own data (a failed read, a corrupt record).
    Io(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Compacted => write!(f, "log index compacted into a snapshot"),
            StorageError::Unavailable => write!(f, "log index beyond the last entry"),
            StorageError::Io(reason) => write!(f, "log read failed: {reason}"),
        }
    }
}

impl std::error::Error for StorageError {}

/// Read access to a node's log, hard state and latest snapshot metadata.
///
/// Invariants an implementation keeps:
/// - `first_index() == snapshot_meta().index + 1`;
/// - `last_index() >= snapshot_meta().index` (equal when the log holds no entry);
/// - `term(snapshot_meta().index) == Ok(snapshot_meta().term)`.
pub trait LogStore {
    /// The hard state last written, as a restarted node must resume from.
    fn hard_state(&self) -> HardState;
    /// Metadata of the latest snapshot; all-zero when there has been none.
    fn snapshot_meta(&self) -> SnapshotMeta;
    /// The first index still held as an entry.
    fn first_index(&self) -> Index;
    /// The last index held, or the snapshot's index when no entry follows it.
    fn last_index(&self) -> Index;
    /// The term of the entry at `index`, for `index` in `first_index()-1 ..= last_index()`.
    fn term(&self, index: Index) -> Result<Term, StorageError>;
    /// Entries in `low..high`, stopping early once `max_bytes` is exceeded but always returning
    /// at least one entry when `low < high` (the rule [`EntryBytesLimit`] keeps).
    fn entries(
        &self,
        low: Index,
        high: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError>;
}

/// Write access to a node's log: what the host does with a [`Ready`]'s writes, and the
/// compaction after a snapshot. Writes need not be durable on return; the host makes them
/// durable (its own sync) before it reports them with
/// [`RawNode::on_persisted`](crate::RawNode::on_persisted).
///
/// A failed write is an `Err` of the store's own error type, so a host sees what went wrong
/// (a full disk, a poisoned log) rather than a flattened message; after one the host must not
/// call into the node again with that store.
pub trait LogWriter: LogStore {
    /// Why a write failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Appends `entries`, first dropping every held entry at or after `entries[0].index`.
    fn append_entries(&mut self, entries: &[Entry]) -> Result<(), Self::Error>;
    /// Records the hard state.
    fn write_hard_state(&mut self, hard_state: HardState) -> Result<(), Self::Error>;
    /// Replaces the whole log with a snapshot received from the leader.
    fn install_snapshot_meta(&mut self, meta: SnapshotMeta) -> Result<(), Self::Error>;
    /// Drops the entries a local snapshot at `meta.index` covers, keeping those after it.
    /// `meta` comes from [`RawNode::snapshot_meta_at`](crate::RawNode::snapshot_meta_at).
    fn compact_to(&mut self, meta: SnapshotMeta) -> Result<(), Self::Error>;

    /// Writes everything a [`Ready`] asks to persist, in the order the contract requires: the
    /// snapshot (which replaces the whole log), then the entries, then the hard state.
    fn write_ready(&mut self, ready: &Ready) -> Result<(), Self::Error> {
        if let Some(meta) = &ready.snapshot {
            self.install_snapshot_meta(meta.clone())?;
        }
        if !ready.entries.is_empty() {
            self.append_entries(&ready.entries)?;
        }
        if let Some(hard_state) = ready.hard_state {
            self.write_hard_state(hard_state)?;
        }
        Ok(())
    }
}

/// The byte bound of [`LogStore::entries`] and of every batch the core reads: entries are
/// taken while their total stays within `bytes_max`, but the first is always taken, so that
/// an entry larger than the bound still goes out alone. The one place the rule is written.
#[derive(Clone, Copy, Debug)]
pub struct EntryBytesLimit {
    bytes_max: usize,
    bytes: usize,
    taken: usize,
}

impl EntryBytesLimit {
    /// A batch of at most `bytes_max` bytes (at least one entry).
    pub fn new(bytes_max: usize) -> Self {
        EntryBytesLimit {
            bytes_max,
            bytes: 0,
            taken: 0,
        }
    }

    /// Counts `entry` into the batch; returns whether it belongs in it. Once it returns
    /// `false` the batch is complete: stop there (a later, smaller entry must not follow).
    pub fn take(&mut self, entry: &Entry) -> bool {
        self.bytes = self.bytes.saturating_add(entry.size_bytes());
        if self.taken > 0 && self.bytes > self.bytes_max {
            return false;
        }
        self.taken += 1;
        true
    }

    /// Copies entries of `from` into `out` while the bound allows; returns whether every
    /// entry of `from` fitted.
    pub fn take_from(&mut self, from: &[Entry], out: &mut Vec<Entry>) -> bool {
        // Reserve once rather than grow one push at a time (a hot path on the leader), but
        // bounded: the byte limit may stop the copy long before the end.
        out.reserve(from.len().min(1024));
        for entry in from {
            if !self.take(entry) {
                return false;
            }
            out.push(entry.clone());
        }
        true
    }
}

/// A log kept in memory: for tests, the simulation and embedded single-process use.
#[derive(Clone, Debug, Default)]
pub struct MemLog {
    hard_state: HardState,
    snapshot: SnapshotMeta,
    /// `entries[i].index == snapshot.index + 1 + i`.
    entries: Vec<Entry>,
}

impl MemLog {
    /// An empty log with no configuration (a node that will be added to a cluster later).
    pub fn new() -> Self {
        Self::default()
    }

    /// A log that starts from `meta`, as on a node bootstrapped with an initial configuration.
    pub fn with_snapshot(meta: SnapshotMeta) -> Self {
        MemLog {
            hard_state: HardState {
                term: meta.term,
                vote: None,
                commit: meta.index,
            },
            snapshot: meta,
            entries: Vec::new(),
        }
    }

    /// Writes everything a [`Ready`] asks to persist ([`LogWriter::write_ready`], which
    /// cannot fail in memory). The one way an in-memory host persists a `Ready`, so that none
    /// of them forgets a part.
    pub fn persist(&mut self, ready: &Ready) {
        match self.write_ready(ready) {
            Ok(()) => {}
            Err(never) => match never {},
        }
    }

    /// Writes the hard state.
    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// Appends `entries`, first dropping every held entry at or after `entries[0].index`.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        assert!(
            first.index > self.snapshot.index && first.index <= self.last_index() + 1,
            "append at {} leaves a gap or rewrites the snapshot (snapshot {}, last {})",
            first.index,
            self.snapshot.index,
            self.last_index()
        );
        self.entries
            .truncate((first.index - self.snapshot.index - 1) as usize);
        self.entries.extend_from_slice(entries);
    }

    /// Drops every entry at or after `index`.
    pub fn truncate_suffix(&mut self, index: Index) {
        assert!(
            index > self.snapshot.index,
            "cannot truncate into the snapshot"
        );
        let keep = (index - self.snapshot.index - 1) as usize;
        self.entries.truncate(keep.min(self.entries.len()));
    }

    /// Records that a snapshot covers up to `meta.index` and drops the entries it covers,
    /// keeping those after it. `meta.index` must be held in the log.
    pub fn compact(&mut self, meta: SnapshotMeta) {
        if meta.index <= self.snapshot.index {
            return;
        }
        assert!(
            meta.index <= self.last_index(),
            "compacting beyond the last entry"
        );
        assert_eq!(
            self.term(meta.index),
            Ok(meta.term),
            "snapshot term disagrees with the log"
        );
        let drop = (meta.index - self.snapshot.index) as usize;
        self.entries.drain(..drop);
        self.snapshot = meta;
    }

    /// Replaces the whole log with a snapshot received from the leader.
    pub fn install_snapshot(&mut self, meta: SnapshotMeta) {
        self.entries.clear();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.snapshot = meta;
    }

    /// Every entry held, for tests and invariant checks.
    pub fn all_entries(&self) -> &[Entry] {
        &self.entries
    }
}

impl LogStore for MemLog {
    fn hard_state(&self) -> HardState {
        self.hard_state
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.snapshot.clone()
    }

    fn first_index(&self) -> Index {
        self.snapshot.index + 1
    }

    fn last_index(&self) -> Index {
        self.snapshot.index + self.entries.len() as Index
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if index < self.snapshot.index {
            return Err(StorageError::Compacted);
        }
        self.entries
            .get((index - self.snapshot.index - 1) as usize)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable)
    }

    fn entries(
        &self,
        low: Index,
        high: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        if low <= self.snapshot.index {
            return Err(StorageError::Compacted);
        }
        if high > self.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        let start = (low - self.snapshot.index - 1) as usize;
        let end = (high - self.snapshot.index - 1) as usize;
        let mut out = Vec::new();
        EntryBytesLimit::new(max_bytes).take_from(&self.entries[start..end], &mut out);
        Ok(out)
    }
}

impl LogWriter for MemLog {
    type Error = std::convert::Infallible;

    fn append_entries(&mut self, entries: &[Entry]) -> Result<(), Self::Error> {
        self.append(entries);
        Ok(())
    }

    fn write_hard_state(&mut self, hard_state: HardState) -> Result<(), Self::Error> {
        self.set_hard_state(hard_state);
        Ok(())
    }

    fn install_snapshot_meta(&mut self, meta: SnapshotMeta) -> Result<(), Self::Error> {
        self.install_snapshot(meta);
        Ok(())
    }

    fn compact_to(&mut self, meta: SnapshotMeta) -> Result<(), Self::Error> {
        self.compact(meta);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryPayload;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            payload: EntryPayload::Noop,
        }
    }

    #[test]
    fn append_truncates_conflicting_suffix_and_compact_keeps_tail() {
        let mut log = MemLog::new();
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        log.append(&[entry(2, 2)]);
        assert_eq!(log.last_index(), 2);
        assert_eq!(log.term(2), Ok(2));
        log.append(&[entry(3, 2), entry(4, 2)]);
        log.compact(SnapshotMeta {
            index: 2,
            term: 2,
            membership: Default::default(),
        });
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.term(2), Ok(2));
        assert_eq!(log.term(1), Err(StorageError::Compacted));
        assert_eq!(log.term(5), Err(StorageError::Unavailable));
        assert_eq!(
            log.entries(3, 5, 0).unwrap().len(),
            1,
            "max_bytes 0 still yields one entry"
        );
        assert_eq!(log.entries(3, 5, usize::MAX).unwrap().len(), 2);
    }

    fn command(index: Index, len: usize) -> Entry {
        Entry {
            index,
            term: 1,
            payload: EntryPayload::Command(vec![0; len].into()),
        }
    }

    #[test]
    fn the_byte_limit_takes_one_entry_at_least_and_stops_for_good_past_the_bound() {
        let (big, small) = (command(1, 100), command(2, 0));
        let mut limit = EntryBytesLimit::new(10);
        assert!(limit.take(&big), "the first entry always goes");
        assert!(
            !limit.take(&small),
            "past the bound, even a small entry stops the batch"
        );

        let entries = [command(1, 10), command(2, 10), command(3, 10)];
        let one = entries[0].size_bytes();
        let mut out = Vec::new();
        assert!(!EntryBytesLimit::new(2 * one).take_from(&entries, &mut out));
        assert_eq!(out.len(), 2, "exactly at the bound fits");
        out.clear();
        assert!(EntryBytesLimit::new(usize::MAX).take_from(&entries, &mut out));
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn write_ready_installs_the_snapshot_then_appends_then_writes_the_hard_state() {
        let mut log = MemLog::new();
        log.append(&[entry(1, 1), entry(2, 1)]);
        let ready = Ready {
            seq: 1,
            snapshot: Some(SnapshotMeta {
                index: 5,
                term: 2,
                membership: Default::default(),
            }),
            entries: vec![entry(6, 2)],
            hard_state: Some(HardState {
                term: 2,
                vote: Some(3),
                commit: 5,
            }),
            ..Default::default()
        };
        log.persist(&ready);
        assert_eq!((log.first_index(), log.last_index()), (6, 6));
        assert_eq!(log.term(5), Ok(2));
        assert_eq!(log.hard_state(), ready.hard_state.unwrap());
    }
}
