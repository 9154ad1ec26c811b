//! Roles and elections (§5.2): randomized election timeouts, PreVote (dissertation §9.6),
//! the check-quorum lease that makes voters ignore disruptive candidates (§4.2.3), and the
//! transitions between follower, candidate and leader.

use std::collections::BTreeSet;

use crate::membership::VoteResult;
use crate::message::MessageBody;
use crate::mutant::{self, Mutant};
use crate::progress::Progress;
use crate::storage::LogStore;
use crate::types::{EntryPayload, Index, NodeId, Role, Term};

use super::RawNode;

impl<S: LogStore> RawNode<S> {
    pub(super) fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_timeout = self.rng.range(
            self.config.election_timeout_ticks_min as u64,
            self.config.election_timeout_ticks_max as u64,
        ) as u32;
    }

    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(
            term >= self.term,
            "term going backwards: {} -> {term}",
            self.term
        );
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        if self.role == Role::Leader {
            self.step_down_as_leader();
        }
        if self.leader != leader {
            self.reads.fail_forwarded();
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.reset_election_timer();
    }

    fn step_down_as_leader(&mut self) {
        self.progress.clear();
        self.transfer = None;
        self.uncommitted.clear();
        self.needs_broadcast = false;
        self.fail_leader_reads();
    }

    /// A message from the current term's leader: follow it.
    pub(super) fn accept_leader(&mut self, leader: NodeId) {
        if self.role != Role::Follower || self.leader != Some(leader) {
            self.become_follower(self.term, Some(leader));
        }
        self.election_elapsed = 0;
    }

    /// Whether this node has heard from a leader recently enough that it must not help elect
    /// another (check-quorum's lease; with lease reads also the first election timeout after a
    /// restart, since a restarted node cannot know whose lease it had promised).
    pub(super) fn in_leader_lease(&self) -> bool {
        if !self.config.check_quorum {
            return false;
        }
        let min = self.config.election_timeout_ticks_min;
        (self.leader.is_some() && self.election_elapsed < min)
            || (self.config.lease_read && self.ticks < min as u64)
    }

    pub(super) fn campaign(&mut self, pre_vote: bool, leadership_transfer: bool) {
        let term = if pre_vote {
            self.reads.fail_forwarded();
            self.role = Role::PreCandidate;
            self.leader = None;
            self.votes.clear();
            self.reset_election_timer();
            self.term + 1
        } else {
            self.reads.fail_forwarded();
            self.term += 1;
            self.vote = Some(self.id);
            self.role = Role::Candidate;
            self.leader = None;
            self.votes.clear();
            self.reset_election_timer();
            self.term
        };
        self.votes.insert(self.id, true);
        if self.poll() == VoteResult::Won {
            if pre_vote {
                self.campaign(false, leadership_transfer);
            } else {
                self.become_leader();
            }
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        let membership = self.membership();
        let voters: Vec<NodeId> = membership
            .voters
            .iter()
            .chain(membership.voters_outgoing.iter())
            .copied()
            .filter(|&v| v != self.id)
            .collect();
        let mut seen = BTreeSet::new();
        for voter in voters {
            if !seen.insert(voter) {
                continue;
            }
            self.send_with_term(
                voter,
                term,
                MessageBody::RequestVote {
                    pre_vote,
                    last_log_index,
                    last_log_term,
                    leadership_transfer,
                },
            );
        }
    }

    fn poll(&self) -> VoteResult {
        self.membership()
            .vote_result(|id| self.votes.get(&id).copied())
    }

    fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        assert_eq!(
            self.vote,
            Some(self.id),
            "a leader has voted for itself in its term"
        );
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.transfer = None;
        self.reads.on_become_leader();
        let next = self.log.last_index() + 1;
        self.progress = self
            .membership()
            .nodes()
            .into_iter()
            .filter(|&id| id != self.id)
            .map(|id| (id, Progress::new(next)))
            .collect();
        // §5.4.2 / §8: a new leader cannot count replicas of older terms' entries; its no-op
        // commits them, and tells it the commit index for reads.
        let noop = self.append_leader_entry(EntryPayload::Noop);
        self.term_start_index = noop.index;
        self.maybe_commit();
    }

    pub(super) fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        last_index: Index,
        last_term: Term,
    ) {
        let up_to_date = (last_term, last_index) >= (self.log.last_term(), self.log.last_index())
            || mutant::active(Mutant::VoteWithoutLogCheck);
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && term > self.term);
        if can_vote && up_to_date {
            if !pre_vote {
                self.vote = Some(from);
                self.election_elapsed = 0;
            }
            // A granted pre-vote answers in the term it was asked for.
            self.send_with_term(
                from,
                term,
                MessageBody::RequestVoteResponse {
                    pre_vote,
                    granted: true,
                },
            );
        } else {
            self.send(
                from,
                MessageBody::RequestVoteResponse {
                    pre_vote,
                    granted: false,
                },
            );
        }
    }

    pub(super) fn handle_vote_response(&mut self, from: NodeId, pre_vote: bool, granted: bool) {
        let expected = if pre_vote {
            Role::PreCandidate
        } else {
            Role::Candidate
        };
        if self.role != expected {
            return;
        }
        self.votes.insert(from, granted);
        match self.poll() {
            VoteResult::Won if pre_vote => self.campaign(false, false),
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => self.become_follower(self.term, None),
            VoteResult::Pending => {}
        }
    }
}
