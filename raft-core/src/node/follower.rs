//! The follower's side of replication (§5.3, §7): accepting AppendEntries (never truncating
//! on a stale or duplicated message), answering a mismatch with a conflict hint so the leader
//! backs up in few round trips, and installing a snapshot from the leader.

use crate::message::{ConflictHint, MessageBody};
use crate::storage::LogStore;
use crate::types::{Entry, Index, NodeId, SnapshotMeta, Term};

use super::{Error, RawNode, CONFLICT_SCAN_ENTRIES_MAX};

impl<S: LogStore> RawNode<S> {
    pub(super) fn handle_append(
        &mut self,
        from: NodeId,
        prev: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        leader_commit: Index,
    ) -> Result<(), Error> {
        if prev < self.commit {
            // Everything up to our commit index already matches the leader.
            let index = self.commit;
            self.send(
                from,
                MessageBody::AppendEntriesResponse {
                    index,
                    reject: None,
                },
            );
            return Ok(());
        }
        if self.log.matches(prev, prev_term) {
            let last_new = prev + entries.len() as Index;
            // Skip entries already held with the same term: a stale or duplicated message must
            // never truncate the log (§5.3; etcd's findConflict).
            let conflict = entries
                .iter()
                .position(|e| !self.log.matches(e.index, e.term));
            if let Some(pos) = conflict {
                let mut entries = entries;
                let tail = entries.split_off(pos);
                assert!(
                    tail[0].index > self.commit,
                    "conflict with a committed entry"
                );
                self.append_to_log(tail);
            }
            let commit = leader_commit.min(last_new);
            if commit > self.commit {
                self.commit_to(commit);
            }
            self.send(
                from,
                MessageBody::AppendEntriesResponse {
                    index: last_new,
                    reject: None,
                },
            );
            return Ok(());
        }
        let hint = self.conflict_hint(prev)?;
        self.send(
            from,
            MessageBody::AppendEntriesResponse {
                index: prev,
                reject: Some(hint),
            },
        );
        Ok(())
    }

    /// Where the leader should look next after an AppendEntries at `prev` did not match: past
    /// the end of this log, or the first index of the conflicting term (above the commit).
    fn conflict_hint(&self, prev: Index) -> Result<ConflictHint, Error> {
        let last = self.log.last_index();
        if prev > last {
            return Ok(ConflictHint {
                term: None,
                index: last + 1,
            });
        }
        let term = self.log.term(prev)?;
        let floor = (self.commit + 1).max(self.log.first_index());
        let mut first = prev;
        let mut scanned = 0;
        while first > floor
            && scanned < CONFLICT_SCAN_ENTRIES_MAX
            && self.log.term(first - 1) == Ok(term)
        {
            first -= 1;
            scanned += 1;
        }
        Ok(ConflictHint {
            term: Some(term),
            index: first,
        })
    }

    pub(super) fn handle_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) {
        if meta.index <= self.commit {
            let index = self.commit;
            self.send(
                from,
                MessageBody::AppendEntriesResponse {
                    index,
                    reject: None,
                },
            );
            return;
        }
        let index = meta.index;
        if self.log.matches(meta.index, meta.term) {
            // Figure 13, step 6: the log already holds the snapshot's last entry, so keep the
            // entries after it and commit up to it; they are applied from the log.
            self.commit_to(meta.index);
        } else {
            self.configs.reset(meta.index, meta.membership.clone());
            self.snapshot_sendable = meta.clone();
            self.log.restore(meta);
            self.commit = index;
            self.applied = index;
            self.apply_handed_out = index;
            self.persistence.clamp(index);
            self.on_membership_changed();
        }
        self.send(
            from,
            MessageBody::AppendEntriesResponse {
                index,
                reject: None,
            },
        );
    }
}
