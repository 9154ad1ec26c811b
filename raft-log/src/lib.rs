//! A segmented, memory-mapped write-ahead log implementing [`raft_core::LogStore`] on disk.
//!
//! # Layout of a log directory
//! - `LOCK`: held with `flock` while a [`Log`] is open, so two processes never share a log.
//! - `state`: two 16 KiB slots, each `magic | crc32 | seq | len | postcard(StateRecord)`,
//!   holding the hard state, the latest snapshot's metadata (with its membership) and the
//!   segment epoch. Writes alternate so that the newest *durable* slot is never overwritten;
//!   open takes the valid slot with the highest sequence number.
//! - `{first_index:020}.seg`: preallocated segment files (default 64 MiB). A 32-byte header
//!   (magic, version 3, CRC, epoch, first index) is followed by 8-byte aligned batch records,
//!   one per append (or per segment an append spans): a header (length, CRC, first index,
//!   count, term runs) and the entries, each `len u32 | postcard(Entry)`, under one CRC
//!   seeded from the segment's epoch and first index (see [`format`](mod@format)). A truncation inside a
//!   batch is a header-only record after it. New segments are filled with real zeroes (see
//!   [`Options::segment_zero_fill`]) by a background thread one segment ahead of need, as
//!   `spare-{n}.tmp`, then renamed in place.
//! - `recycle-{n}.tmp`: up to two segment files freed by compaction, kept to become the next
//!   segments instead of new files (no zero-filling, and the disk overwrites blocks it has
//!   already written). A reused file still holds batches of its earlier life after the new
//!   ones; they fail the new segment's seeded CRC, and every write leaves 8 zero bytes after
//!   its last batch, so recovery sees where the data ends. Sealing a reused
//!   segment zeroes its tail. Removed on open and on close.

//! # Durability
//! Appends and hard-state updates are positioned writes (`pwritev`; large commands go
//! straight from their `Bytes`) that become durable at the next [`Log::sync`] or
//! [`SyncHandle::sync`] (group commit: one `fdatasync` per dirty file, normally only the
//! active segment; a hard state that changed only its commit index is not forced, see
//! [`Options::sync_commit_index`]). Truncation and snapshot install sync before they
//! return, because what they remove must never come back after a crash. Compaction does
//! not (it is durable with the next sync, like an append): the files it frees are deleted
//! or recycled only after that sync, so a crash before it finds every entry still there. Sealed
//! segments are synced when the next segment is started, so a bad record in a sealed segment
//! is corruption. Open flushes what it recovered, since it may have been read back from the
//! page cache of a process that died before syncing it.
//!
//! # Recovery
//! A batch is the unit of recovery. Only the tail of the last segment may be torn: a zero,
//! short or CRC-bad batch there with no valid batch after it is cut off whole (logged with
//! file and offset) and the cut region zeroed; zeroes followed only by bytes that are not
//! batches of this segment are the end of a reused segment's data and left as they are.
//! Anything else is [`LogError::Corrupt`] with the file and byte offset, and nothing is
//! deleted. Entries are found through an in-memory index of their offsets, built by the scan;
//! reads check an entry's bounds and index, not its batch's CRC again. Known-stale files (segments of an older epoch, or wholly covered by the
//! snapshot) are removed; unknown files are reported by [`Log::unknown_files`] and kept.
//!
//! # Zero-copy reads
//! A `Command` payload returned by [`LogStore::entries`](raft_core::LogStore::entries) is a `Bytes` slice of the segment's
//! read-only mapping, not a copy. The bytes stay valid after compaction frees the segment
//! (a segment whose mapping still has slices out is deleted, which the mapping survives,
//! rather than reused), but a truncated entry's bytes are overwritten in place by later
//! appends: do not keep entries past a `truncate_suffix` (or conflicting `append`) that
//! removes them.

//! # Many groups, one log
//! [`MultiLog`] (module [`multi`]) is a separate write-ahead log for many Raft groups in
//! one directory of its own: every group's records share its segments and its syncs. Its
//! format is its own (`RAFTMLG1` segments); the single-group [`Log`] is unchanged.

#![deny(missing_docs)]

mod error;
pub mod format;
mod log;
pub mod multi;
mod spare;
mod sync;

pub use error::LogError;
pub use log::{Log, Options};
pub use multi::{GroupLog, GroupView, MultiLog, MultiOptions, SharedGroup, SharedMultiLog};
pub use sync::{FaultHook, FaultPoint, SyncHandle};
