//! One write-ahead log for many Raft groups (the raft-engine model): entries, hard states,
//! truncations and compactions of every group go, as records, into the same segment files,
//! and one [`MultiLog::sync`] (one `fdatasync`) makes a whole group-commit batch of many
//! groups durable.
//!
//! # Layout of a directory
//! - `LOCK`: held with `flock` while a [`MultiLog`] is open.
//! - `{seq:020}.wal`: segments numbered from 1, each a header and frames of records (see
//!   [`frame`]). One frame, one CRC, is normally one group-commit batch.
//!
//! # Use by a multi-group runtime
//! [`MultiLog::group_mut`] lends one group's [`LogWriter`](raft_core::LogWriter) for a call;
//! a runtime whose `RawNode`s own their stores shares the log as a [`SharedMultiLog`] and
//! gives each node a [`SharedGroup`], then writes every group's Ready and syncs once.
//!
//! # State in memory
//! Each group keeps its own index: the segment and offset of every entry it holds, with its
//! term, plus its hard state and snapshot (compaction point). Reads go through the segments'
//! read-only mappings (commands come back as slices of them) or, for records not yet written,
//! the frame being built.
//!
//! # Freeing segments
//! Every new segment starts with a checkpoint: one group-state record (hard state and
//! snapshot) per group, so a group's state never depends on an older segment. A segment is
//! therefore needed only while some group still holds an entry in it; after a sync, the
//! oldest segments that no group needs are deleted (a prefix: one group that keeps old
//! entries keeps every newer segment too). A compaction of one group never loses another's
//! entries. A group that never compacts would keep every later segment, so once more than
//! `segments_held_max` are held, a sync first re-appends the entries of the (small) groups
//! that pin the oldest one (raft-engine's rewrite). Before deleting, the sync writes a free mark (the first segment kept); with the
//! oldest segment held that every segment header records, recovery tells a segment freed
//! on purpose from a lost one.
//!
//! # Recovery
//! Open replays every frame of every segment in order, rebuilding every group. A segment
//! other than the newest ends with a seal record and was synced before the next one was
//! started: anything wrong in it is [`LogError::Corrupt`] with path and offset. In the newest,
//! a bad frame with no valid frame after it is a torn tail: it is cut off (zeroed) and
//! logged. Open checks that every group's entries start right after its snapshot (a missing
//! segment would leave a gap) and then syncs what it recovered.
//!
//! # Durability
//! Every operation is applied in memory at once and encoded into the current frame; the frame
//! is written (`pwrite`) when it is full, by [`MultiLog::flush`] or by [`MultiLog::sync`],
//! which also syncs. Nothing is durable before a sync returns. Truncations are records like
//! the rest (nothing is overwritten), so they need no sync of their own.

pub mod frame;
mod frame_ops;
mod group;
mod options;
mod recover;
mod shared;
mod store;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use raft_core::{Entry, EntryBytesLimit, HardState, Index, SnapshotMeta, StorageError, Term};

use crate::error::LogError;
use crate::format::{self, EntryParts};

use frame::FrameBuilder;
pub use frame::GroupId;
use group::Group;
pub use options::MultiOptions;
pub use shared::{SharedGroup, SharedMultiLog};
pub use store::{GroupHandle, GroupLog, GroupView, LogAccess, LogAccessMut};

/// One segment file.
struct Segment {
    seq: u64,
    path: PathBuf,
    file: File,
    /// Read-only shared mapping of the whole file; command payloads are slices of it.
    map: Bytes,
    capacity: u64,
    seed: u32,
}

/// A write-ahead log shared by many Raft groups. See the module documentation.
pub struct MultiLog {
    dir: PathBuf,
    options: MultiOptions,
    /// Held for its `flock`, released when the log is dropped.
    _lock: File,
    dir_file: File,
    /// Oldest first, consecutive sequence numbers; the last is the one written to.
    segments: VecDeque<Segment>,
    /// Where the next frame goes in the newest segment.
    write_offset: u64,
    /// Records not yet written, in the frame they will be written as.
    frame: FrameBuilder,
    groups: BTreeMap<GroupId, Group>,
    /// The newest segment has writes not yet synced.
    dirty: bool,
    /// A write or sync failed: the disk no longer matches memory.
    poisoned: bool,
    /// Something may have freed a segment since the last look.
    maybe_freed: bool,
    sync_count: u64,
    unknown_files: Vec<PathBuf>,
    /// Encoding buffers reused across appends.
    scratch: Vec<u8>,
    parts: Vec<(usize, EntryParts)>,
}

impl MultiLog {
    /// Opens (or creates) the log in `dir`, recovering every group. See the module
    /// documentation for what recovery checks.
    pub fn open(dir: impl AsRef<Path>, options: MultiOptions) -> Result<MultiLog, LogError> {
        recover::open(dir.as_ref(), options)
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &MultiOptions {
        &self.options
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The groups held, in order.
    pub fn group_ids(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    /// Number of groups held.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Whether `group` is held.
    pub fn has_group(&self, group: GroupId) -> bool {
        self.groups.contains_key(&group)
    }

    /// Number of segment files held.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Syncs that flushed something since open.
    pub fn sync_count(&self) -> u64 {
        self.sync_count
    }

    /// Files in the directory the log does not know; reported at open, never deleted.
    pub fn unknown_files(&self) -> &[PathBuf] {
        &self.unknown_files
    }

    /// The newest segment's path and where its written frames end (after
    /// [`MultiLog::flush`]), for crash tests that cut the file.
    #[doc(hidden)]
    pub fn write_position(&self) -> (PathBuf, u64) {
        let seg = self.segments.back().expect("a segment is always open");
        (seg.path.clone(), self.write_offset)
    }

    /// A read-only view of one group, implementing [`raft_core::LogStore`].
    pub fn group(&self, group: GroupId) -> Option<GroupView<'_>> {
        self.groups
            .contains_key(&group)
            .then_some(GroupHandle { log: self, group })
    }

    /// A writable view of one group, implementing [`raft_core::LogWriter`]; its writes
    /// share this log's frames and syncs with every other group's.
    pub fn group_mut(&mut self, group: GroupId) -> Option<GroupLog<'_>> {
        self.groups
            .contains_key(&group)
            .then_some(GroupHandle { log: self, group })
    }

    fn get(&self, group: GroupId) -> Result<&Group, LogError> {
        self.groups
            .get(&group)
            .ok_or_else(|| LogError::Invalid(format!("no group {group} in the log")))
    }

    fn check_usable(&self) -> Result<(), LogError> {
        if self.poisoned {
            Err(LogError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Adds a group whose log starts after `snapshot` (all-zero for an empty log), with the
    /// hard state a node bootstrapped from it has: the snapshot's term, no vote, committed
    /// up to the snapshot.
    pub fn create_group(&mut self, group: GroupId, snapshot: SnapshotMeta) -> Result<(), LogError> {
        self.check_usable()?;
        if self.groups.contains_key(&group) {
            return Err(LogError::Invalid(format!("group {group} already exists")));
        }
        if self.groups.len() >= self.options.groups_max {
            return Err(LogError::Invalid(format!(
                "cannot create group {group}: the log holds groups_max {} groups",
                self.options.groups_max
            )));
        }
        let hard_state = HardState {
            term: snapshot.term,
            vote: None,
            commit: snapshot.index,
        };
        let body = frame::encode_group_state(&hard_state, &snapshot).map_err(state_too_large)?;
        self.put_record(frame::RecordKind::GroupState, group, &[&body])?;
        self.groups.insert(group, Group::new(hard_state, snapshot));
        Ok(())
    }

    /// Removes a group and everything it holds; its segments are freed once no other group
    /// needs them.
    pub fn remove_group(&mut self, group: GroupId) -> Result<(), LogError> {
        self.check_usable()?;
        self.get(group)?;
        self.put_record(frame::RecordKind::Remove, group, &[])?;
        self.groups.remove(&group);
        self.maybe_freed = true;
        Ok(())
    }

    /// The group's hard state.
    pub fn hard_state(&self, group: GroupId) -> Result<HardState, LogError> {
        Ok(self.get(group)?.hard_state)
    }

    /// The group's latest snapshot metadata (its compaction point).
    pub fn snapshot_meta(&self, group: GroupId) -> Result<SnapshotMeta, LogError> {
        Ok(self.get(group)?.snapshot.clone())
    }

    /// The group's first held index (`snapshot.index + 1`).
    pub fn first_index(&self, group: GroupId) -> Result<Index, LogError> {
        Ok(self.get(group)?.first_index)
    }

    /// The group's last held index, or its snapshot's index when it holds no entry.
    pub fn last_index(&self, group: GroupId) -> Result<Index, LogError> {
        Ok(self.get(group)?.last_index())
    }

    /// The term of the group's entry at `index` (or of its snapshot at its index).
    pub fn term(&self, group: GroupId, index: Index) -> Result<Term, StorageError> {
        self.groups
            .get(&group)
            .ok_or_else(|| StorageError::Io(format!("no group {group} in the log")))?
            .term(index)
    }

    /// The group's entries in `low..high`, at most `max_bytes` of them but at least one (see
    /// [`EntryBytesLimit`]).
    pub fn entries(
        &self,
        group: GroupId,
        low: Index,
        high: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let g = self
            .groups
            .get(&group)
            .ok_or_else(|| StorageError::Io(format!("no group {group} in the log")))?;
        if low < g.first_index {
            return Err(StorageError::Compacted);
        }
        if high > g.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        let mut out = Vec::with_capacity(high.saturating_sub(low).min(1024) as usize);
        let mut limit = EntryBytesLimit::new(max_bytes);
        for index in low..high {
            let loc = g.loc(index).ok_or(StorageError::Unavailable)?;
            let entry = self.read_entry(index, loc)?;
            if !limit.take(&entry) {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn read_entry(&self, index: Index, loc: group::EntryLoc) -> Result<Entry, StorageError> {
        let front = self.segments.front().expect("a segment is always open").seq;
        let seg = loc
            .segment
            .checked_sub(front)
            .and_then(|i| self.segments.get(i as usize))
            .ok_or_else(|| StorageError::Io(format!("entry {index}: segment freed")))?;
        let newest = seg.seq == self.segments.back().expect("open").seq;
        let bad = |what: &str| {
            StorageError::Io(format!(
                "{} at byte offset {}: entry {index} {what}",
                seg.path.display(),
                loc.offset
            ))
        };
        let entry = if newest && u64::from(loc.offset) >= self.write_offset {
            // Not written yet: in the frame being built.
            let buf = self.frame.bytes();
            let at = (u64::from(loc.offset) - self.write_offset) as usize;
            let range = format::entry_payload(buf, at, self.options.entry_bytes_max)
                .map_err(|e| bad(e.describe()))?;
            format::decode_entry(&buf[range], None).map_err(|e| bad(e.describe()))?
        } else {
            let range =
                format::entry_payload(&seg.map, loc.offset as usize, self.options.entry_bytes_max)
                    .map_err(|e| bad(e.describe()))?;
            format::decode_entry(&seg.map[range], Some(&seg.map)).map_err(|e| bad(e.describe()))?
        };
        if entry.index != index || entry.term != loc.term {
            return Err(bad("does not match the index"));
        }
        Ok(entry)
    }

    /// Appends `entries` to `group`, first dropping every held entry at or after
    /// `entries[0].index` (a conflicting suffix; the drop is recorded, so replay gives the
    /// same log). Durable at the next [`MultiLog::sync`].
    pub fn append(&mut self, group: GroupId, entries: &[Entry]) -> Result<(), LogError> {
        self.check_usable()?;
        let g = self.get(group)?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= g.snapshot.index || first.index > g.last_index() + 1 {
            return Err(LogError::Invalid(format!(
                "group {group}: append at {} leaves a gap or rewrites the snapshot \
                 (snapshot {}, last {})",
                first.index,
                g.snapshot.index,
                g.last_index()
            )));
        }
        let prev_term = g.term(first.index - 1).unwrap_or(0);
        let mut term = prev_term;
        for (i, e) in entries.iter().enumerate() {
            if e.index != first.index + i as Index || e.term < term {
                return Err(LogError::Invalid(format!(
                    "group {group}: entry {} (term {}) breaks the run of indexes or terms",
                    e.index, e.term
                )));
            }
            term = e.term;
        }
        let truncates = first.index <= g.last_index();
        frame_ops::append(self, group, entries)?;
        if truncates {
            self.maybe_freed = true;
        }
        Ok(())
    }

    /// Drops `group`'s entries at or after `from` (recorded, so replay drops them too).
    pub fn truncate_suffix(&mut self, group: GroupId, from: Index) -> Result<(), LogError> {
        self.check_usable()?;
        let g = self.get(group)?;
        if from <= g.snapshot.index {
            return Err(LogError::Invalid(format!(
                "group {group}: cannot truncate at {from}, inside the snapshot at {}",
                g.snapshot.index
            )));
        }
        if from > g.last_index() {
            return Ok(());
        }
        self.put_record(frame::RecordKind::Truncate, group, &[&from.to_le_bytes()])?;
        self.groups.get_mut(&group).expect("checked").truncate(from);
        self.maybe_freed = true;
        Ok(())
    }

    /// Records `group`'s hard state (durable at the next sync; unchanged ones are skipped).
    pub fn set_hard_state(
        &mut self,
        group: GroupId,
        hard_state: HardState,
    ) -> Result<(), LogError> {
        self.check_usable()?;
        if self.get(group)?.hard_state == hard_state {
            return Ok(());
        }
        let body = frame::encode_hard_state(&hard_state).map_err(state_too_large)?;
        self.put_record(frame::RecordKind::HardState, group, &[&body])?;
        self.groups.get_mut(&group).expect("checked").hard_state = hard_state;
        Ok(())
    }

    /// Drops `group`'s entries up to `meta.index`, a local snapshot's point (which must be
    /// held, with `meta.term` its term); an older point than the group's is ignored. Frees
    /// segments, after the next sync, that no group needs any more.
    pub fn compact(&mut self, group: GroupId, meta: SnapshotMeta) -> Result<(), LogError> {
        self.check_usable()?;
        let g = self.get(group)?;
        if meta.index <= g.snapshot.index {
            return Ok(());
        }
        if meta.index > g.last_index() || g.term(meta.index) != Ok(meta.term) {
            return Err(LogError::Invalid(format!(
                "group {group}: compaction to {} (term {}) does not match the log \
                 (last {}, term there {:?})",
                meta.index,
                meta.term,
                g.last_index(),
                g.term(meta.index)
            )));
        }
        let body = frame::encode_snapshot_meta(&meta).map_err(state_too_large)?;
        self.put_record(frame::RecordKind::Compact, group, &[&body])?;
        self.groups.get_mut(&group).expect("checked").compact(meta);
        self.maybe_freed = true;
        Ok(())
    }

    /// Replaces `group`'s whole log with a snapshot received from its leader (its commit
    /// index rises to the snapshot's).
    pub fn install_snapshot(&mut self, group: GroupId, meta: SnapshotMeta) -> Result<(), LogError> {
        self.check_usable()?;
        self.get(group)?;
        let body = frame::encode_snapshot_meta(&meta).map_err(state_too_large)?;
        self.put_record(frame::RecordKind::Install, group, &[&body])?;
        self.groups.get_mut(&group).expect("checked").install(meta);
        self.maybe_freed = true;
        Ok(())
    }

    /// Writes the records not yet written (one frame), without syncing.
    pub fn flush(&mut self) -> Result<(), LogError> {
        self.check_usable()?;
        frame_ops::flush(self)
    }

    /// Makes everything so far durable: writes the pending frame and syncs the newest
    /// segment (one `fdatasync` for every group's writes), then deletes the oldest segments
    /// no group needs any more.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.check_usable()?;
        if self.segments.len() > self.options.segments_held_max {
            frame_ops::rewrite_oldest(self)?;
        }
        let mut free_below = None;
        if self.maybe_freed {
            self.maybe_freed = false;
            let needed = frame_ops::first_needed(self);
            if needed > self.segments.front().expect("open").seq {
                // Marked, and synced with this batch, before the files go: recovery then
                // tells a segment freed on purpose from one that was lost.
                self.put_record(frame::RecordKind::FreeBelow, 0, &[&needed.to_le_bytes()])?;
                free_below = Some(needed);
            }
        }
        frame_ops::flush(self)?;
        if self.dirty {
            let seg = self.segments.back().expect("open");
            if let Err(e) = seg.file.sync_data() {
                self.poisoned = true;
                return Err(LogError::io(&seg.path, e));
            }
            self.dirty = false;
            self.sync_count += 1;
        }
        match free_below {
            Some(below) => frame_ops::free_segments(self, below),
            None => Ok(()),
        }
    }

    fn put_record(
        &mut self,
        kind: frame::RecordKind,
        group: GroupId,
        body: &[&[u8]],
    ) -> Result<(), LogError> {
        let bytes = frame::RECORD_HEADER_BYTES + body.iter().map(|b| b.len()).sum::<usize>();
        frame_ops::make_room(self, bytes)?;
        self.frame.put_record(kind, group, body);
        Ok(())
    }
}

fn state_too_large(bytes: usize) -> LogError {
    LogError::StateTooLarge {
        bytes,
        slot_bytes: frame::STATE_BODY_BYTES_MAX,
    }
}

/// A shared mapping of a whole file, for `Bytes` to own.
struct MapOwner(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn map_file(file: &File, path: &Path) -> Result<Bytes, LogError> {
    // SAFETY: the mapping is read-only and the log never shrinks a mapped file, so every
    // mapped page stays backed. Other processes are kept out by the lock file.
    let map =
        unsafe { memmap2::MmapOptions::new().map(file) }.map_err(|e| LogError::io(path, e))?;
    Ok(Bytes::from_owner(MapOwner(Arc::new(map))))
}

impl Drop for MultiLog {
    /// Writes the pending frame (best effort, no sync), as a process that exits without
    /// syncing leaves its writes in the page cache: dropping never loses more than a crash.
    fn drop(&mut self) {
        if !self.poisoned {
            let _ = frame_ops::flush(self);
        }
    }
}
