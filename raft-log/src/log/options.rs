//! `Options`: the log's tunables and their bounds.

use super::*;

/// Tunables of a [`Log`].
#[derive(Clone)]
pub struct Options {
    /// Size of each preallocated segment file. Default 64 MiB.
    pub segment_bytes: u64,
    /// Largest accepted encoded entry (postcard payload); larger appends are refused with
    /// [`LogError::EntryTooLarge`]. An entry that does not fit `segment_bytes` gets a segment
    /// of its own. Default 64 MiB.
    pub entry_bytes_max: u64,
    /// Whether a sync also forces a hard state that differs from the previous one only in
    /// its commit index. Default `false`: raft-core treats the persisted commit index as an
    /// optimisation and clamps it on restart, so a sync after a commit-only change costs one
    /// `fdatasync` (the segment) instead of two; the state write still reaches the disk with
    /// the kernel's writeback or the next forced state write. Term, vote and snapshot changes
    /// are always forced.
    pub sync_commit_index: bool,
    /// Fill new segments with real zeroes (on a background thread, one segment ahead of
    /// need) rather than only `posix_fallocate` them. On ext4 a write into fallocated
    /// (unwritten) blocks makes the following `fdatasync` also journal the extent
    /// conversion; measured here that costs more than writing the zeroes, for small and
    /// large syncs alike (see ARCHITECTURE.md). Default `true`.
    pub segment_zero_fill: bool,
    /// Keep up to two segment files freed by compaction and reuse them for new segments
    /// instead of creating (and zero-filling) new files. A reused file is overwritten in
    /// place: no zero-filling competes with appends for the disk, and the disk overwrites
    /// blocks it has already written, which on this machine's disk is much faster than
    /// writing new ones (see ARCHITECTURE.md). Default `true`.
    pub segment_reuse: bool,
    /// How open treats a bad record in the last segment that is followed by a valid one.
    /// `false` (default): as corruption, the open fails and nothing is deleted, because a
    /// flipped bit in synced data must not silently drop acknowledged entries. `true`: as a
    /// torn tail, cut there (logged). A power loss in the middle of an unsynced batch can
    /// leave such a hole when the disk wrote its pages out of order; an operator who knows
    /// that is what happened reopens with `true`.
    pub recovery_point_in_time: bool,
    /// Fault injection for tests; `None` in production.
    #[doc(hidden)]
    pub fault_hook: Option<FaultHook>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 64 << 20,
            entry_bytes_max: 64 << 20,
            sync_commit_index: false,
            segment_zero_fill: true,
            segment_reuse: true,
            recovery_point_in_time: false,
            fault_hook: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("segment_bytes", &self.segment_bytes)
            .field("entry_bytes_max", &self.entry_bytes_max)
            .field("sync_commit_index", &self.sync_commit_index)
            .field("segment_zero_fill", &self.segment_zero_fill)
            .field("segment_reuse", &self.segment_reuse)
            .field("recovery_point_in_time", &self.recovery_point_in_time)
            .field("fault_hook", &self.fault_hook.is_some())
            .finish()
    }
}

impl Options {
    pub(super) fn validate(&self) -> Result<(), LogError> {
        if self.segment_bytes < PAGE_BYTES || self.segment_bytes > SEGMENT_BYTES_LIMIT {
            return Err(LogError::Options(format!(
                "segment_bytes {} outside {PAGE_BYTES}..={SEGMENT_BYTES_LIMIT}",
                self.segment_bytes
            )));
        }
        if self.entry_bytes_max == 0 || self.entry_bytes_max > SEGMENT_BYTES_LIMIT - 2 * PAGE_BYTES
        {
            return Err(LogError::Options(format!(
                "entry_bytes_max {} outside 1..={}",
                self.entry_bytes_max,
                SEGMENT_BYTES_LIMIT - 2 * PAGE_BYTES
            )));
        }
        Ok(())
    }
}
