//! The log itself: its state, reads, truncation and compaction. Opening and recovery are in
//! `recover`, the write path in `append`, file helpers in `files`, tunables in `options`.

mod append;
mod files;
mod options;
mod recover;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use raft_core::{
    Entry, EntryBytesLimit, HardState, Index, LogStore, LogWriter, SnapshotMeta, StorageError, Term,
};
use tracing::{info, warn};

use crate::error::LogError;
use crate::format::{
    self, decode_state_slot, encode_state_slot, read_batch, BatchError, BatchKey, EntryParts,
    RecordError, SegmentHeader, StateRecord, END_MARKER_BYTES, SEGMENT_HEADER_BYTES,
    STATE_SLOT_BYTES, TRUNCATION_BYTES, VECTORED_MIN_BYTES,
};
use crate::spare::{is_spare_name, zero_fill, Preparer};
use crate::sync::{FaultHook, FaultPoint, FileRef, Shared, SyncHandle};

use files::*;
// The multi-group log locks its directory the same way.
pub(crate) use files::{lock_dir, preallocate, write_zeroes};
pub use options::Options;

pub(crate) const LOCK_FILE: &str = "LOCK";
const STATE_FILE: &str = "state";
const SEGMENT_SUFFIX: &str = ".seg";
/// Digits of the zero-padded first index in a segment's name, so names sort by index.
const SEGMENT_NAME_DIGITS: usize = 20;
/// Segment files are sized in whole pages.
const PAGE_BYTES: u64 = 4096;
/// Bytes of zeroes written per call when erasing a truncated region.
const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// How often, and how far apart, a held lock is tried again before `Locked` is returned.
const LOCK_RETRIES: u32 = 5;
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);
/// Upper bound on `segment_bytes` and `entry_bytes_max`: record offsets are kept as `u32`.
const SEGMENT_BYTES_LIMIT: u64 = 1 << 31;
/// Segments freed by compaction wait under these names to be reused (see `Log::retire`).
const RECYCLE_PREFIX: &str = "recycle-";
const RECYCLE_SUFFIX: &str = ".tmp";
/// Freed segment files kept for reuse; more are deleted. Two cover a compaction that frees
/// one segment while the previous one is still waiting.
const RECYCLED_FILES_MAX: usize = 2;

fn is_recycle_name(name: &str) -> bool {
    name.strip_prefix(RECYCLE_PREFIX)
        .and_then(|rest| rest.strip_suffix(RECYCLE_SUFFIX))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Where one batch record lies in a segment, for truncation.
#[derive(Clone, Copy, Debug)]
struct BatchSpan {
    /// Index of the batch's first entry.
    first_index: Index,
    /// Offset of its header.
    start: u32,
    /// Offset just past its padding.
    end: u32,
}

/// One segment file: batches of consecutive indexes starting at `first_index`.
struct Segment {
    first_index: Index,
    /// How its batches are checksummed (from its header).
    key: BatchKey,
    file: Arc<FileRef>,
    /// Read-only shared mapping of the whole (preallocated) file; command payloads handed
    /// out by reads are slices of it.
    map: Bytes,
    /// The mapping `map` (and every slice of it handed out) keeps alive: when this is the
    /// last reference, nobody holds bytes of the file and it may be reused.
    map_owner: Arc<memmap2::Mmap>,
    capacity: u64,
    /// Where the next batch goes. Everything from here to `capacity` is zero on disk,
    /// unless `stale_tail`. At least `TRUNCATION_BYTES` stay free after every batch, room
    /// for the truncation record that `truncate_suffix` may write after it.
    write_offset: u64,
    /// The file is a recycled one: past `write_offset` it may hold batches of its earlier
    /// life (which fail this segment's CRC key) behind `END_MARKER_BYTES` zeroes. Only the
    /// last segment can have one: sealing zeroes it.
    stale_tail: bool,
    /// `offsets[i]` is where the entry of index `first_index + i` (its length field) starts.
    offsets: Vec<u32>,
    /// The batches holding the entries, in file order (truncation records left out).
    batches: Vec<BatchSpan>,
}

impl Segment {
    fn next_index(&self) -> Index {
        self.first_index + self.offsets.len() as Index
    }
}

/// A segmented, memory-mapped write-ahead log. See the crate documentation.
pub struct Log {
    options: Options,
    /// Held for its `flock`, released when the log is dropped.
    _lock: File,
    shared: Arc<Shared>,
    state_file: Arc<FileRef>,
    /// Sequence number of the last state slot written.
    state_seq: u64,
    state: StateRecord,
    segments: Vec<Segment>,
    /// `(first index, term)` of each run of equal terms, covering the held entries.
    term_runs: Vec<(Index, Term)>,
    last_index: Index,
    unknown_files: Vec<PathBuf>,
    /// Encoding buffer reused across appends: the entries, laid out.
    buf: Vec<u8>,
    /// Where in `buf` each entry of the current append starts, and how it was laid out.
    parts: Vec<(usize, EntryParts)>,
    /// A batch's header and term runs, reused across writes.
    head: Vec<u8>,
    /// Prepares zero-filled spare segments; started on first need.
    preparer: Option<Preparer>,
    /// Segment files freed by compaction, waiting to be reused by `roll`.
    recycled: Vec<PathBuf>,
    /// Numbers the names of recycled files.
    recycle_seq: u64,
    /// Segments compaction dropped, each with the sequence number of the state write that
    /// recorded that compaction, in order. A file is deleted or recycled only once that
    /// state is durable (see `retire_durable`), so compaction itself never waits for a sync.
    retiring: Vec<(u64, Segment)>,
}

impl Log {
    /// Drops term runs wholly before the first held entry.
    fn trim_term_runs(&mut self) {
        let first = self.first_index();
        let keep_from = self
            .term_runs
            .partition_point(|&(start, _)| start <= first)
            .saturating_sub(1);
        self.term_runs.drain(..keep_from);
    }

    /// A handle that syncs this log from another thread; see [`SyncHandle`] for the guarantee.
    pub fn sync_handle(&self) -> SyncHandle {
        SyncHandle {
            shared: self.shared.clone(),
        }
    }

    /// Makes everything appended and set so far durable: one `fdatasync` of each file
    /// written since the last sync (normally only the active segment, plus the state file if
    /// the hard state changed, plus the directory if a segment was created or deleted).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.shared.sync()?;
        self.retire_durable()
    }

    /// Syncs that flushed something since open, for tests and metrics.
    pub fn sync_count(&self) -> u64 {
        self.shared.sync_count()
    }

    /// Files in the directory the log does not know; reported at open, never deleted.
    pub fn unknown_files(&self) -> &[PathBuf] {
        &self.unknown_files
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Whether the background thread is idle (the next spare segment is ready, or none is
    /// needed). For benchmarks that want to time the steady state apart from the one-off
    /// zero-filling of the next segment.
    #[doc(hidden)]
    pub fn spare_idle(&self) -> bool {
        self.preparer.as_ref().is_none_or(Preparer::idle)
    }

    /// Number of segment files held.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn write_state(&mut self, force: bool) -> Result<(), LogError> {
        let seq = self.state_seq + 1;
        let image =
            encode_state_slot(seq, &self.state).map_err(|bytes| LogError::StateTooLarge {
                bytes,
                slot_bytes: STATE_SLOT_BYTES - format::STATE_SLOT_HEADER_BYTES,
            })?;
        debug_assert_eq!(decode_state_slot(&image).map(|d| d.0), Some(seq));
        let shared = &self.shared;
        let file = &self.state_file;
        shared
            .write_state_slot(file, seq, force, |slot| {
                shared.fault(FaultPoint::Write)?;
                file.file
                    .write_all_at(&image, (slot * STATE_SLOT_BYTES) as u64)
            })
            .map_err(|e| LogError::io(&file.path, e))?;
        self.state_seq = seq;
        Ok(())
    }

    /// Replaces the state record, restoring the old one in memory if the write fails.
    fn update_state(&mut self, update: impl FnOnce(&mut StateRecord)) -> Result<(), LogError> {
        let old = self.state.clone();
        update(&mut self.state);
        if self.state == old {
            return Ok(());
        }
        let new = &self.state;
        let commit_only = new.snapshot == old.snapshot
            && new.epoch == old.epoch
            && new.hard_state.term == old.hard_state.term
            && new.hard_state.vote == old.hard_state.vote;
        let force = self.options.sync_commit_index || !commit_only;
        self.write_state(force).inspect_err(|_| self.state = old)
    }

    /// Records the hard state; durable after the next sync. Unchanged values write nothing.
    pub fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), LogError> {
        self.shared.check_poisoned()?;
        self.update_state(|s| s.hard_state = hard_state)
    }

    /// Files kept for reuse, for tests.
    #[doc(hidden)]
    pub fn recycled_count(&self) -> usize {
        self.recycled.len()
    }

    /// Segment files dropped by compaction and still on disk because the compaction is not
    /// durable yet, for tests.
    #[doc(hidden)]
    pub fn retiring_count(&self) -> usize {
        self.retiring.len()
    }

    fn shared_dir(&self) -> PathBuf {
        self.state_file
            .path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default()
    }

    /// Drops every entry at or after `index`. Durable when it returns: it syncs, because a
    /// later hard state (say a commit index) may reach the disk before the next sync's log
    /// data, and must never meet the stale entries again.
    pub fn truncate_suffix(&mut self, index: Index) -> Result<(), LogError> {
        self.shared.check_poisoned()?;
        if index <= self.state.snapshot.index {
            return Err(LogError::Invalid(format!(
                "cannot truncate at {index}, inside the snapshot ending at {}",
                self.state.snapshot.index
            )));
        }
        if index > self.last_index {
            return Ok(());
        }
        let position = self.segment_position(index).ok_or_else(|| {
            LogError::Invalid(format!("index {index} is not held in any segment"))
        })?;
        let result = self
            .truncate_from(position, index)
            .and_then(|()| self.shared.sync());
        if result.is_err() {
            // Memory and disk may now disagree on where the log ends.
            self.shared.poison();
        }
        result
    }

    fn truncate_from(&mut self, position: usize, index: Index) -> Result<(), LogError> {
        while self.segments.len() > position + 1 {
            let seg = self.segments.pop().expect("non-empty");
            fs::remove_file(&seg.file.path).map_err(|e| LogError::io(&seg.file.path, e))?;
            self.shared.mark_dir_dirty();
        }
        let seg = self.segments.last_mut().expect("position is held");
        let rel = (index - seg.first_index) as usize;
        // The batch holding `index`: the last one starting at or before it (a truncation
        // record after a batch shortens it, and the batches after that record start at the
        // index it names, so that batch is still the one).
        let b = seg
            .batches
            .partition_point(|span| span.first_index <= index)
            .checked_sub(1)
            .expect("the first batch starts at the segment's first index");
        let span = seg.batches[b];
        if span.first_index == index {
            // At a batch boundary: erase that batch and everything after it.
            let cut = u64::from(span.start);
            write_zeroes(&self.shared, &seg.file, cut, seg.write_offset)?;
            seg.batches.truncate(b);
            seg.write_offset = cut;
        } else {
            // Inside a batch, whose CRC covers all of it: erase what follows the batch and
            // write a truncation record after it, so that the entries before `index` (which
            // may be committed) are never rewritten. Every batch leaves room for one.
            let cut = u64::from(span.end);
            write_zeroes(&self.shared, &seg.file, cut, seg.write_offset)?;
            let record = format::encode_truncation(index, seg.key);
            debug_assert!(cut + (TRUNCATION_BYTES as u64) <= seg.capacity);
            let marker = if seg.stale_tail {
                (seg.capacity - cut - TRUNCATION_BYTES as u64).min(END_MARKER_BYTES as u64) as usize
            } else {
                0
            };
            static MARKER: [u8; END_MARKER_BYTES] = [0; END_MARKER_BYTES];
            write_vectored_at(&self.shared, &seg.file, &[&record, &MARKER[..marker]], cut)?;
            seg.batches.truncate(b + 1);
            seg.write_offset = cut + TRUNCATION_BYTES as u64;
        }
        seg.offsets.truncate(rel);
        self.shared.mark_dirty(&seg.file);
        self.last_index = index - 1;
        let keep = self.term_runs.partition_point(|&(start, _)| start < index);
        self.term_runs.truncate(keep);
        Ok(())
    }

    /// Records that a snapshot covers everything up to `meta.index` and drops those entries;
    /// whole segments are deleted (or kept for reuse), a partly covered one is kept.
    /// `meta.index` must be held with term `meta.term`.
    ///
    /// It does not sync: the compaction is durable after the next sync, like an append, and
    /// the files of the dropped segments stay on disk until then (they are deleted or
    /// recycled by the first `sync`, compaction or segment roll after it), so a crash never
    /// leaves a gap. The cost on the caller is one state-slot write.
    pub fn compact(&mut self, meta: SnapshotMeta) -> Result<(), LogError> {
        self.shared.check_poisoned()?;
        if meta.index <= self.state.snapshot.index {
            return Ok(());
        }
        if meta.index > self.last_index {
            return Err(LogError::Invalid(format!(
                "compaction to {} beyond the last entry {}",
                meta.index, self.last_index
            )));
        }
        let held = self
            .term(meta.index)
            .map_err(|e| LogError::Invalid(e.to_string()))?;
        if held != meta.term {
            return Err(LogError::Invalid(format!(
                "snapshot term {} disagrees with the log's term {held} at {}",
                meta.term, meta.index
            )));
        }
        let index = meta.index;
        self.update_state(|s| s.snapshot = meta)?;
        // Every later state record carries this snapshot too, so once any state at or past
        // this sequence number is durable, so is the compaction.
        let seq = self.state_seq;
        let covered = self
            .segments
            .iter()
            .skip(1)
            .take_while(|s| s.first_index <= index + 1)
            .count();
        for seg in self.segments.drain(..covered) {
            self.retiring.push((seq, seg));
        }
        self.trim_term_runs();
        // Those of earlier compactions may be durable by now.
        self.retire_durable()
    }

    /// Replaces the whole log by a snapshot received from a leader: every entry is dropped
    /// and `meta` recorded; the commit index rises to at least `meta.index`. Durable when it
    /// returns. Old segments are invalidated by bumping the epoch before they are deleted, so
    /// a crash in between cannot resurrect them.
    pub fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), LogError> {
        self.shared.check_poisoned()?;
        let index = meta.index;
        self.update_state(|s| {
            s.hard_state.commit = s.hard_state.commit.max(meta.index);
            s.snapshot = meta;
            s.epoch += 1;
        })?;
        self.shared.sync()?;
        self.term_runs.clear();
        self.last_index = index;
        while let Some(seg) = self.segments.pop() {
            self.shared.mark_dir_dirty();
            fs::remove_file(&seg.file.path).map_err(|e| LogError::io(&seg.file.path, e))?;
        }
        // The synced state covers every earlier compaction too.
        self.retire_durable()
    }

    /// Position in `segments` of the segment holding `index`.
    fn segment_position(&self, index: Index) -> Option<usize> {
        let position = self
            .segments
            .partition_point(|s| s.first_index <= index)
            .checked_sub(1)?;
        (index < self.segments[position].next_index()).then_some(position)
    }

    fn read_entry(&self, index: Index) -> Result<Entry, StorageError> {
        let position = self
            .segment_position(index)
            .ok_or_else(|| StorageError::Io(format!("index {index} is not in any segment")))?;
        let seg = &self.segments[position];
        let offset = seg.offsets[(index - seg.first_index) as usize] as usize;
        let bad = |reason: &str| {
            StorageError::Io(format!(
                "{} at byte {offset}: {reason}",
                seg.file.path.display()
            ))
        };
        let range = format::entry_payload(&seg.map, offset, self.options.entry_bytes_max as usize)
            .map_err(|e| bad(e.describe()))?;
        let entry =
            format::decode_entry(&seg.map[range], Some(&seg.map)).map_err(|e| bad(e.describe()))?;
        if entry.index != index {
            return Err(bad("entry holds another index"));
        }
        Ok(entry)
    }
}

impl LogStore for Log {
    fn hard_state(&self) -> HardState {
        self.state.hard_state
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.state.snapshot.clone()
    }

    fn first_index(&self) -> Index {
        self.state.snapshot.index + 1
    }

    fn last_index(&self) -> Index {
        self.last_index
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        let snapshot = &self.state.snapshot;
        if index == snapshot.index {
            return Ok(snapshot.term);
        }
        if index < snapshot.index {
            return Err(StorageError::Compacted);
        }
        if index > self.last_index {
            return Err(StorageError::Unavailable);
        }
        let run = self.term_runs.partition_point(|&(start, _)| start <= index);
        run.checked_sub(1)
            .map(|r| self.term_runs[r].1)
            .ok_or_else(|| StorageError::Io(format!("no term known for index {index}")))
    }

    fn entries(
        &self,
        low: Index,
        high: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        if low <= self.state.snapshot.index {
            return Err(StorageError::Compacted);
        }
        if high > self.last_index + 1 {
            return Err(StorageError::Unavailable);
        }
        let mut out = Vec::new();
        let mut limit = EntryBytesLimit::new(max_bytes);
        for index in low..high {
            let entry = self.read_entry(index)?;
            if !limit.take(&entry) {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }
}

/// The write half of raft-core's storage contract, with raft-log's own error type.
impl LogWriter for Log {
    type Error = LogError;

    fn append_entries(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        self.append(entries)
    }

    fn write_hard_state(&mut self, hard_state: HardState) -> Result<(), LogError> {
        self.set_hard_state(hard_state)
    }

    fn install_snapshot_meta(&mut self, meta: SnapshotMeta) -> Result<(), LogError> {
        self.install_snapshot(meta)
    }

    fn compact_to(&mut self, meta: SnapshotMeta) -> Result<(), LogError> {
        self.compact(meta)
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // Stop the spare thread before the lock is released, so that no other process can
        // open the directory while it still writes there.
        self.preparer.take();
        for path in &self.recycled {
            let _ = fs::remove_file(path);
        }
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.shared_dir())
            .field("snapshot_index", &self.state.snapshot.index)
            .field("last_index", &self.last_index)
            .field("segments", &self.segments.len())
            .finish()
    }
}
