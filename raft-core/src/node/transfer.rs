//! Leadership transfer (§3.10 of the dissertation): the leader stops taking proposals, catches
//! the target up, then tells it to campaign at once (TimeoutNow). A transfer the target has
//! not completed within an election timeout is abandoned and the leader serves again.

use crate::message::MessageBody;
use crate::storage::LogStore;
use crate::types::{NodeId, Role};

use super::{RawNode, TransferError};

/// A leadership transfer under way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Transfer {
    /// The voter that is to take over.
    pub(super) target: NodeId,
    /// Ticks since the transfer started.
    elapsed_ticks: u32,
    /// TimeoutNow went out (once per transfer).
    pub(super) timeout_now_sent: bool,
}

impl Transfer {
    pub(super) fn new(target: NodeId) -> Self {
        Transfer {
            target,
            elapsed_ticks: 0,
            timeout_now_sent: false,
        }
    }

    /// Counts a tick; returns whether the transfer has now run `timeout_ticks` and is over.
    pub(super) fn tick(&mut self, timeout_ticks: u32) -> bool {
        self.elapsed_ticks += 1;
        self.elapsed_ticks >= timeout_ticks
    }
}

impl<S: LogStore> RawNode<S> {
    /// Hands leadership to `to` (§3.10): proposals are refused while the target catches up,
    /// then it is told to campaign at once. Any leader lease ends here.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.id {
            return Ok(());
        }
        if !self.membership().voters.contains(&to) || !self.progress.contains_key(&to) {
            return Err(TransferError::NotAVoter);
        }
        self.transfer = Some(Transfer::new(to));
        self.reads.forfeit_lease();
        self.maybe_send_timeout_now();
        if self.transfer.as_ref().is_some_and(|t| !t.timeout_now_sent) {
            self.send_append(to, true);
        }
        Ok(())
    }

    /// Counts a leader's tick against the transfer under way, abandoning it once it has taken
    /// an election timeout.
    pub(super) fn tick_transfer(&mut self) {
        let timeout_ticks = self.config.election_timeout_ticks_max;
        if self
            .transfer
            .as_mut()
            .is_some_and(|t| t.tick(timeout_ticks))
        {
            // The target did not take over in time: resume normal service.
            self.transfer = None;
        }
    }

    /// Sends TimeoutNow once the target holds the leader's whole log.
    pub(super) fn maybe_send_timeout_now(&mut self) {
        let last = self.log.last_index();
        let Some(transfer) = &self.transfer else {
            return;
        };
        if transfer.timeout_now_sent {
            return;
        }
        let target = transfer.target;
        if self
            .progress
            .get(&target)
            .is_some_and(|p| p.match_index == last)
        {
            if let Some(t) = &mut self.transfer {
                t.timeout_now_sent = true;
            }
            self.send(target, MessageBody::TimeoutNow);
        }
    }

    /// The target left the voters: the transfer cannot complete.
    pub(super) fn abandon_transfer_unless_voter(&mut self) {
        let voters = &self.membership().voters;
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| !voters.contains(&t.target))
        {
            self.transfer = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_expires_after_its_timeout_in_ticks() {
        let mut t = Transfer::new(3);
        assert!(!t.tick(3));
        assert!(!t.tick(3));
        assert!(t.tick(3));
        assert_eq!((t.target, t.timeout_now_sent), (3, false));
    }
}
