//! The snapshot a leader sends a follower that needs entries its log no longer holds.
//!
//! The core decides it, so that a host only streams the bytes of the snapshot the message
//! names (openraft keeps the last built snapshot's metadata in its state the same way;
//! raft-rs asks its `Storage::snapshot`). Candidates are the snapshots the host reported
//! built ([`RawNode::on_snapshot_built`]), the last one installed from a leader, and the
//! log's compaction point, which is a snapshot for hosts that compact only at their
//! snapshots (`MemLog` hosts, the simulation without a margin). A host that compacts below
//! its snapshots (raft-node keeps a trailing margin of entries) reports each snapshot before
//! it compacts past the previous one, so the newest candidate is always one it holds.

use crate::mutant::{self, Mutant};
use crate::storage::LogStore;
use crate::types::SnapshotMeta;

use super::{RawNode, SnapshotError};

impl<S: LogStore> RawNode<S> {
    /// Reports that the host holds a snapshot of the state machine at `meta.index`, written
    /// with `meta` (from [`snapshot_meta_at`](Self::snapshot_meta_at) when it was taken), that
    /// it can send to followers. A leader sends the newest snapshot it knows of, as an
    /// `InstallSnapshot` carrying exactly that metadata.
    ///
    /// A snapshot no newer than one already known (or than the log's compaction point) is
    /// ignored. One the core cannot check against its log (beyond its last entry) or whose
    /// term or configuration disagrees with the log's is refused: sending it could install
    /// a wrong configuration on a follower.
    pub fn on_snapshot_built(&mut self, meta: SnapshotMeta) -> Result<(), SnapshotError> {
        let compacted_through = self.log.first_index() - 1;
        if meta.index <= self.snapshot_sendable.index.max(compacted_through) {
            return Ok(());
        }
        let Some(expected) = self.snapshot_meta_at(meta.index) else {
            return Err(SnapshotError::NotInLog {
                index: meta.index,
                first_index: self.log.first_index(),
                last_index: self.log.last_index(),
            });
        };
        if expected != meta {
            return Err(SnapshotError::Disagrees {
                reported: Box::new(meta),
                log: Box::new(expected),
            });
        }
        self.snapshot_sendable = meta;
        Ok(())
    }

    /// The snapshot a leader sends a follower behind its log now: the newest reported or
    /// installed one, or the log's compaction point if that is newer.
    pub fn snapshot_to_send(&self) -> SnapshotMeta {
        let compacted = self.log.snapshot_meta();
        if compacted.index > self.snapshot_sendable.index
            || mutant::active(Mutant::SnapshotAtCompactionPoint)
        {
            compacted
        } else {
            self.snapshot_sendable.clone()
        }
    }
}
