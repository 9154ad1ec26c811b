//! Tunables of the multi-group log and their limits.

use crate::error::LogError;
use crate::format::align_up;

use super::frame::{
    ENTRY_COUNT_BYTES, FRAME_HEADER_BYTES, RECORD_HEADER_BYTES, SEAL_BYTES, SEGMENT_HEADER_BYTES,
    STATE_BODY_BYTES_MAX,
};

/// Record offsets are kept as `u32`.
const SEGMENT_BYTES_LIMIT: u64 = 1 << 31;

/// How a [`MultiLog`](super::MultiLog) is sized. Every bound is checked by
/// [`MultiOptions::validate`] when the log is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiOptions {
    /// Size of each segment file. It must hold the checkpoint a segment starts with (one
    /// group-state record per group, at most `groups_max`) and then one largest frame.
    pub segment_bytes: u64,
    /// Largest frame: a write of more records is cut into several frames (still one
    /// `fdatasync`), so this bounds one write call and the buffer it is built in.
    pub frame_bytes_max: usize,
    /// Largest encoded entry (postcard), as in the single-group log.
    pub entry_bytes_max: usize,
    /// Most groups the log holds at once; creating one more is refused.
    pub groups_max: usize,
    /// Segments held before a sync moves forward the entries of the groups that pin the
    /// oldest one (re-appends them in the newest), so that it can be freed: a cold group
    /// that never compacts would otherwise keep every segment after its entries on disk.
    pub segments_held_max: usize,
    /// Most entries one sync moves forward. A group holding more is never moved (it must
    /// compact to free old segments: moving it would cost more than it frees).
    pub rewrite_entries_max: usize,
}

impl Default for MultiOptions {
    fn default() -> Self {
        MultiOptions {
            segment_bytes: 64 << 20,
            frame_bytes_max: 4 << 20,
            entry_bytes_max: 1 << 20,
            groups_max: 10_000,
            segments_held_max: 16,
            rewrite_entries_max: 64 << 10,
        }
    }
}

impl MultiOptions {
    /// Worst-case bytes of the checkpoint a segment starts with.
    pub fn checkpoint_bytes_max(&self) -> u64 {
        let record = (RECORD_HEADER_BYTES + STATE_BODY_BYTES_MAX) as u64;
        let per_frame = ((self.frame_bytes_max - FRAME_HEADER_BYTES) as u64 / record).max(1);
        let frames = (self.groups_max as u64).div_ceil(per_frame).max(1);
        self.groups_max as u64 * record
            + RECORD_HEADER_BYTES as u64
            + frames * (FRAME_HEADER_BYTES as u64 + 8)
    }

    /// Checks the bounds against each other.
    pub fn validate(&self) -> Result<(), LogError> {
        let entry_frame = align_up(
            FRAME_HEADER_BYTES
                + RECORD_HEADER_BYTES
                + ENTRY_COUNT_BYTES
                + 4
                + self.entry_bytes_max
                + SEAL_BYTES,
        );
        let state_frame = FRAME_HEADER_BYTES + RECORD_HEADER_BYTES + STATE_BODY_BYTES_MAX;
        if self.entry_bytes_max == 0 || self.groups_max == 0 {
            return Err(LogError::Options(
                "entry_bytes_max and groups_max must be positive".into(),
            ));
        }
        if self.segments_held_max < 2 {
            return Err(LogError::Options(format!(
                "segments_held_max {} must be at least 2 (the oldest and the newest)",
                self.segments_held_max
            )));
        }
        if self.frame_bytes_max < entry_frame.max(state_frame) {
            return Err(LogError::Options(format!(
                "frame_bytes_max {} is below one largest entry's frame ({entry_frame} bytes)",
                self.frame_bytes_max
            )));
        }
        let needed = SEGMENT_HEADER_BYTES as u64
            + self.checkpoint_bytes_max()
            + align_up(self.frame_bytes_max + SEAL_BYTES) as u64
            + align_up(FRAME_HEADER_BYTES + SEAL_BYTES) as u64;
        if self.segment_bytes < needed || self.segment_bytes > SEGMENT_BYTES_LIMIT {
            return Err(LogError::Options(format!(
                "segment_bytes {} must be between {needed} (header, a checkpoint of \
                 groups_max {} groups, one largest frame) and {SEGMENT_BYTES_LIMIT}",
                self.segment_bytes, self.groups_max
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_bounds_are_refused() {
        MultiOptions::default().validate().unwrap();
        for bad in [
            MultiOptions {
                groups_max: 100_000,
                ..MultiOptions::default()
            },
            MultiOptions {
                frame_bytes_max: 1000,
                ..MultiOptions::default()
            },
            MultiOptions {
                segment_bytes: 4 << 30,
                ..MultiOptions::default()
            },
            MultiOptions {
                groups_max: 0,
                ..MultiOptions::default()
            },
            MultiOptions {
                segments_held_max: 1,
                ..MultiOptions::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
