//! What a leader appends on its own: proposals, bounded by the bytes proposed and not yet
//! committed, and membership changes (§4 of the dissertation: one voter at a time, or joint
//! consensus), each appended to its log and broadcast with the next Ready.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::membership::{ConfChange, Membership};
use crate::mutant::{self, Mutant};
use crate::storage::LogStore;
use crate::types::{Entry, EntryPayload, Index, Role};

use super::{ChangeError, ProposalId, ProposeError, RawNode};

/// Bytes an entry counts for the uncommitted bound beyond its command.
const PROPOSAL_OVERHEAD_BYTES: usize = 24;

/// The leader's proposals not yet committed, for `Config::uncommitted_bytes_max`: a leader
/// that cannot commit (no quorum) stops taking proposals rather than grow its log forever.
#[derive(Debug, Default)]
pub(super) struct Uncommitted {
    /// (index, bytes counted), in log order.
    entries: VecDeque<(Index, usize)>,
    /// The sum of `entries`' bytes.
    bytes: usize,
}

impl Uncommitted {
    /// Whether a proposal of `entry_bytes` fits under `bytes_max`. The first one always
    /// fits, so that an entry larger than the bound can still be proposed alone.
    pub(super) fn admits(&self, entry_bytes: usize, bytes_max: usize) -> bool {
        self.bytes == 0 || self.bytes + entry_bytes <= bytes_max
    }

    pub(super) fn push(&mut self, index: Index, entry_bytes: usize) {
        self.entries.push_back((index, entry_bytes));
        self.bytes += entry_bytes;
    }

    /// Entries up to `index` committed: their bytes no longer count.
    pub(super) fn release_through(&mut self, index: Index) {
        while self.entries.front().is_some_and(|&(i, _)| i <= index) {
            let (_, bytes) = self.entries.pop_front().expect("checked");
            self.bytes -= bytes;
        }
    }

    /// Leadership lost: whatever was proposed is no longer this node's to count.
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

impl<S: LogStore> RawNode<S> {
    /// Proposes an application command. On success the command is appended to the leader's log;
    /// it is committed once an entry with the returned index and term is applied.
    pub fn propose(&mut self, command: Bytes) -> Result<ProposalId, ProposeError> {
        self.check_can_append()?;
        let entry_bytes = PROPOSAL_OVERHEAD_BYTES + command.len();
        if !self
            .uncommitted
            .admits(entry_bytes, self.config.uncommitted_bytes_max)
        {
            return Err(ProposeError::Busy);
        }
        let id = self.append_leader_entry(EntryPayload::Command(command));
        self.uncommitted.push(id.index, entry_bytes);
        Ok(id)
    }

    fn check_can_append(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        Ok(())
    }

    /// Changes the membership. A change of at most one voter is made in one step; anything
    /// larger goes through a joint configuration (C_old,new, then C_new appended automatically
    /// once the joint one commits).
    pub fn change_membership(&mut self, changes: &[ConfChange]) -> Result<ProposalId, ChangeError> {
        self.check_can_append().map_err(|e| match e {
            ProposeError::NotLeader { leader } => ChangeError::NotLeader { leader },
            _ => ChangeError::TransferInProgress,
        })?;
        if self.commit < self.term_start_index
            && !mutant::active(Mutant::MembershipChangeBeforeTermCommit)
        {
            return Err(ChangeError::NotReady);
        }
        let (latest_index, current) = self.configs.latest();
        if latest_index > self.commit || current.is_joint() {
            return Err(ChangeError::ChangeInProgress);
        }
        let target = current
            .apply_changes(changes)
            .map_err(ChangeError::Invalid)?;
        let next = if current.voter_difference(&target) <= 1 {
            target
        } else {
            Membership {
                voters: target.voters,
                voters_outgoing: current.voters.clone(),
                learners: target.learners,
            }
        };
        Ok(self.append_leader_entry(EntryPayload::Membership(next)))
    }

    /// Appends an entry of the leader's term, to go out with the next Ready.
    pub(super) fn append_leader_entry(&mut self, payload: EntryPayload) -> ProposalId {
        let id = ProposalId {
            index: self.log.last_index() + 1,
            term: self.term,
        };
        self.append_to_log(vec![Entry {
            index: id.index,
            term: id.term,
            payload,
        }]);
        self.needs_broadcast = true;
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_admits_a_first_proposal_of_any_size_and_frees_bytes_on_commit() {
        let mut u = Uncommitted::default();
        assert!(u.admits(1000, 100), "alone, even past the bound");
        u.push(5, 60);
        assert!(u.admits(40, 100));
        assert!(!u.admits(41, 100));
        u.push(6, 40);
        u.release_through(4);
        assert!(!u.admits(1, 100), "nothing committed yet");
        u.release_through(5);
        assert!(u.admits(60, 100) && !u.admits(61, 100));
        u.clear();
        assert!(u.admits(1000, 100));
    }
}
