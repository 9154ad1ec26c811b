//! Linearizable reads and the leader lease (§6.4, dissertation §6.4.1).
//!
//! A read on the leader waits until an entry of its term has committed (it then knows the
//! commit index), records that index and is confirmed by a heartbeat round a quorum answers;
//! with lease reads, a round a quorum answered also extends a lease during which reads are
//! served without a round. A read on a follower is forwarded to the leader, which answers
//! with the index to wait for. [`Reads`] keeps every read in one of those stages; the
//! handlers on [`RawNode`] move them along.

use std::collections::VecDeque;

use crate::message::MessageBody;
use crate::mutant::{self, Mutant};
use crate::ready::{ReadError, ReadState};
use crate::storage::LogStore;
use crate::types::{Index, NodeId, Role};

use super::RawNode;

/// Heartbeat rounds remembered for lease accounting.
const HEARTBEAT_ROUNDS_TRACKED_MAX: usize = 1024;

/// A linearizable read waiting for its leadership confirmation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PendingRead {
    pub(super) ctx: u64,
    pub(super) origin: NodeId,
    /// The commit index when the read arrived: what the read must observe.
    pub(super) index: Index,
    /// The heartbeat round that confirms it.
    pub(super) seq: u64,
}

/// Every read this node holds, by stage, and the leader lease. The total is bounded by
/// `Config::pending_reads_max` (checked by the callers before a read is added).
#[derive(Debug, Default)]
pub(super) struct Reads {
    /// The latest heartbeat round this leader started (monotonic over the node's life).
    seq: u64,
    /// A read waits for a heartbeat round that has not been sent yet.
    broadcast_needed: bool,
    /// Rounds sent and not yet answered by a quorum: (round, tick it was sent at).
    heartbeat_rounds: VecDeque<(u64, u64)>,
    /// Reads may be served without a round before this tick.
    lease_until_tick: u64,
    /// Set once this leader started a transfer: a TimeoutNow may reach the target at any later
    /// moment, even after the transfer was abandoned, and the target's election bypasses the
    /// voters' lease, so this leader must not serve lease reads again in its term.
    lease_forfeited: bool,
    /// Leader: reads waiting for their heartbeat round.
    unconfirmed: VecDeque<PendingRead>,
    /// Leader: reads waiting for an entry of the leader's term to commit: (ctx, origin).
    awaiting_term_commit: VecDeque<(u64, NodeId)>,
    /// Reads of this node confirmed at an index, waiting for it to be applied: (ctx, index).
    awaiting_apply: Vec<(u64, Index)>,
    /// Follower: reads sent to the leader: (ctx, tick sent).
    forwarded: VecDeque<(u64, u64)>,
    /// Outcomes for the next Ready.
    states: Vec<ReadState>,
}

impl Reads {
    /// Reads held in every stage but the last (outcomes already decided are not counted).
    pub(super) fn pending(&self) -> usize {
        self.unconfirmed.len()
            + self.awaiting_term_commit.len()
            + self.awaiting_apply.len()
            + self.forwarded.len()
    }

    /// Whether a heartbeat round must go out with the next Ready.
    pub(super) fn broadcast_needed(&self) -> bool {
        self.broadcast_needed
    }

    /// Whether the next Ready has read outcomes, with the state machine applied to `applied`.
    pub(super) fn has_ready(&self, applied: Index) -> bool {
        !self.states.is_empty() || self.awaiting_apply.iter().any(|&(_, i)| i <= applied)
    }

    /// The outcomes for a Ready: the failed reads, then the confirmed ones `applied` covers.
    pub(super) fn take_ready(&mut self, applied: Index) -> Vec<ReadState> {
        let mut states = std::mem::take(&mut self.states);
        self.awaiting_apply.retain(|&(ctx, index)| {
            if index <= applied {
                states.push(ReadState {
                    ctx,
                    result: Ok(index),
                });
                false
            } else {
                true
            }
        });
        states
    }

    /// Starts a heartbeat round at `tick`; returns its sequence number.
    pub(super) fn start_round(&mut self, tick: u64) -> u64 {
        self.broadcast_needed = false;
        self.seq += 1;
        if self.heartbeat_rounds.len() >= HEARTBEAT_ROUNDS_TRACKED_MAX {
            self.heartbeat_rounds.pop_front();
        }
        self.heartbeat_rounds.push_back((self.seq, tick));
        self.seq
    }

    /// Whether a lease read may be served at `tick` (the caller checks `Config::lease_read`).
    pub(super) fn lease_valid(&self, tick: u64) -> bool {
        !self.lease_forfeited && tick < self.lease_until_tick
    }

    /// A new leader: no lease yet, no round outstanding.
    pub(super) fn on_become_leader(&mut self) {
        self.lease_until_tick = 0;
        self.lease_forfeited = false;
        self.heartbeat_rounds.clear();
    }

    /// A transfer started: no lease for the rest of the term.
    pub(super) fn forfeit_lease(&mut self) {
        self.lease_until_tick = 0;
        self.lease_forfeited = true;
    }

    /// Leadership lost: the lease and the rounds end; returns the reads the leader held
    /// unconfirmed, (ctx, origin), which must fail.
    pub(super) fn on_step_down(&mut self) -> Vec<(u64, NodeId)> {
        self.lease_until_tick = 0;
        self.broadcast_needed = false;
        self.heartbeat_rounds.clear();
        self.unconfirmed
            .drain(..)
            .map(|r| (r.ctx, r.origin))
            .chain(self.awaiting_term_commit.drain(..))
            .collect()
    }

    /// Takes the reads waiting for the leader's term-start commit.
    pub(super) fn take_awaiting_term_commit(&mut self) -> Vec<(u64, NodeId)> {
        self.awaiting_term_commit.drain(..).collect()
    }

    /// Takes the reads whose round `confirmed` covers, and the tick the latest round it
    /// covers was sent at (the start of the lease it earns).
    pub(super) fn confirm_through(&mut self, confirmed: u64) -> (Vec<PendingRead>, Option<u64>) {
        let mut reads = Vec::new();
        while self.unconfirmed.front().is_some_and(|r| r.seq <= confirmed) {
            reads.push(self.unconfirmed.pop_front().expect("checked"));
        }
        let mut round_tick = None;
        while self
            .heartbeat_rounds
            .front()
            .is_some_and(|&(seq, _)| seq <= confirmed)
        {
            round_tick = self.heartbeat_rounds.pop_front().map(|(_, tick)| tick);
        }
        (reads, round_tick)
    }

    /// Extends the lease to `until_tick`, unless forfeited; it never shrinks.
    pub(super) fn extend_lease(&mut self, until_tick: u64) {
        if !self.lease_forfeited {
            self.lease_until_tick = self.lease_until_tick.max(until_tick);
        }
    }

    /// Fails every read forwarded to a leader (this node no longer follows it).
    pub(super) fn fail_forwarded(&mut self) {
        for (ctx, _) in self.forwarded.drain(..) {
            self.states.push(ReadState {
                ctx,
                result: Err(ReadError::LeadershipLost),
            });
        }
    }

    /// Times out the forwarded reads sent `deadline_ticks` or more before `tick`.
    pub(super) fn expire_forwarded(&mut self, tick: u64, deadline_ticks: u64) {
        while let Some(&(ctx, sent)) = self.forwarded.front() {
            if tick - sent < deadline_ticks {
                break;
            }
            self.forwarded.pop_front();
            self.states.push(ReadState {
                ctx,
                result: Err(ReadError::Timeout),
            });
        }
    }

    /// The leader's answer to a forwarded read; an answer to no read held is ignored.
    fn on_forwarded_answer(&mut self, ctx: u64, index: Option<Index>) {
        if let Some(pos) = self.forwarded.iter().position(|&(c, _)| c == ctx) {
            self.forwarded.remove(pos);
            match index {
                Some(index) => self.awaiting_apply.push((ctx, index)),
                None => self.states.push(ReadState {
                    ctx,
                    result: Err(ReadError::NotLeader { leader: None }),
                }),
            }
        }
    }
}

impl<S: LogStore> RawNode<S> {
    /// Asks for a linearizable read. Its outcome arrives as a [`ReadState`] with this `ctx`
    /// in a later [`Ready`](crate::Ready): on a follower the read is confirmed by the leader
    /// (§6.4).
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ReadError> {
        if self.reads.pending() >= self.config.pending_reads_max {
            return Err(ReadError::Busy);
        }
        if self.role == Role::Leader {
            self.leader_read(ctx, self.id);
            return Ok(());
        }
        match self.leader {
            Some(leader) => {
                self.send(leader, MessageBody::ReadIndex { ctx });
                self.reads.forwarded.push_back((ctx, self.ticks));
                Ok(())
            }
            None => Err(ReadError::NotLeader { leader: None }),
        }
    }

    /// A follower's forwarded read reached this node.
    pub(super) fn handle_read_index(&mut self, from: NodeId, ctx: u64) {
        if self.role == Role::Leader && self.reads.pending() < self.config.pending_reads_max {
            self.leader_read(ctx, from);
        } else {
            self.send(from, MessageBody::ReadIndexResponse { ctx, index: None });
        }
    }

    /// The leader answered a read this node forwarded.
    pub(super) fn handle_read_index_response(&mut self, ctx: u64, index: Option<Index>) {
        self.reads.on_forwarded_answer(ctx, index);
    }

    pub(super) fn leader_read(&mut self, ctx: u64, origin: NodeId) {
        if self.commit < self.term_start_index && !mutant::active(Mutant::ReadBeforeTermCommit) {
            // §6.4: until an entry of its term commits, the leader does not know the commit
            // index of its predecessors.
            self.reads.awaiting_term_commit.push_back((ctx, origin));
            return;
        }
        let lone_voter = {
            let m = self.membership();
            m.voters.len() == 1 && m.voters.contains(&self.id) && !m.is_joint()
        };
        let lease_valid = self.config.lease_read && self.reads.lease_valid(self.ticks);
        if lone_voter || lease_valid {
            let index = self.commit;
            self.confirm_read(ctx, origin, index);
            return;
        }
        self.reads.unconfirmed.push_back(PendingRead {
            ctx,
            origin,
            index: self.commit,
            seq: self.reads.seq + 1,
        });
        self.reads.broadcast_needed = true;
    }

    fn confirm_read(&mut self, ctx: u64, origin: NodeId, index: Index) {
        if origin == self.id {
            self.reads.awaiting_apply.push((ctx, index));
        } else {
            self.send(
                origin,
                MessageBody::ReadIndexResponse {
                    ctx,
                    index: Some(index),
                },
            );
        }
    }

    /// Confirms the reads whose heartbeat round a quorum has answered, and extends the lease.
    pub(super) fn process_read_acks(&mut self) {
        let confirmed = self.quorum_value(self.reads.seq, |p| p.read_seq_acked);
        let (reads, round_tick) = self.reads.confirm_through(confirmed);
        for r in reads {
            self.confirm_read(r.ctx, r.origin, r.index);
        }
        if let Some(tick) = round_tick {
            if self.config.lease_read {
                // Followers that answered this round will not vote for another node until
                // election_timeout_ticks_min after they received it, which is after it was sent.
                let lease_ticks = (self.config.election_timeout_ticks_min
                    - self.config.lease_ticks_margin) as u64;
                self.reads.extend_lease(tick + lease_ticks);
            }
        }
    }

    /// Fails the reads a leader held when it steps down: its own with `LeadershipLost`, the
    /// followers' with an empty answer.
    pub(super) fn fail_leader_reads(&mut self) {
        for (ctx, origin) in self.reads.on_step_down() {
            if origin == self.id {
                self.reads.states.push(ReadState {
                    ctx,
                    result: Err(ReadError::LeadershipLost),
                });
            } else {
                self.send(origin, MessageBody::ReadIndexResponse { ctx, index: None });
            }
        }
    }

    /// A forwarded read the leader has not answered within two election timeouts fails.
    pub(super) fn expire_forwarded_reads(&mut self) {
        let deadline_ticks = 2 * self.config.election_timeout_ticks_max as u64;
        self.reads.expire_forwarded(self.ticks, deadline_ticks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(ctx: u64, seq: u64) -> PendingRead {
        PendingRead {
            ctx,
            origin: 1,
            index: 10 + ctx,
            seq,
        }
    }

    #[test]
    fn a_round_confirms_the_reads_it_covers_and_reports_its_send_tick() {
        let mut r = Reads::default();
        assert_eq!(r.start_round(100), 1);
        r.unconfirmed.push_back(read(7, 2));
        r.broadcast_needed = true;
        assert_eq!(r.start_round(105), 2);
        assert!(!r.broadcast_needed(), "a round went out");
        r.unconfirmed.push_back(read(8, 3));
        assert_eq!(r.confirm_through(0), (vec![], None));
        assert_eq!(
            r.confirm_through(2),
            (vec![read(7, 2)], Some(105)),
            "round 2 covers round 1 too: the later tick counts"
        );
        assert_eq!(r.pending(), 1);
        assert_eq!(r.confirm_through(3), (vec![read(8, 3)], None));
    }

    #[test]
    fn the_lease_only_grows_and_a_forfeited_one_never_returns() {
        let mut r = Reads::default();
        assert!(!r.lease_valid(0), "no lease before a confirmed round");
        r.extend_lease(50);
        r.extend_lease(40);
        assert!(r.lease_valid(49) && !r.lease_valid(50));
        r.forfeit_lease();
        r.extend_lease(90);
        assert!(!r.lease_valid(10), "forfeited for the rest of the term");
        r.on_become_leader();
        r.extend_lease(90);
        assert!(r.lease_valid(89), "a new term starts without the forfeit");
    }

    #[test]
    fn tracked_rounds_are_bounded() {
        let mut r = Reads::default();
        for tick in 0..(HEARTBEAT_ROUNDS_TRACKED_MAX as u64 + 10) {
            r.start_round(tick);
        }
        assert_eq!(r.heartbeat_rounds.len(), HEARTBEAT_ROUNDS_TRACKED_MAX);
        assert_eq!(r.heartbeat_rounds.front(), Some(&(11, 10)));
    }

    #[test]
    fn confirmed_reads_wait_for_apply_and_failed_ones_come_first() {
        let mut r = Reads::default();
        r.awaiting_apply.push((1, 5));
        r.awaiting_apply.push((2, 9));
        r.forwarded.push_back((3, 0));
        r.fail_forwarded();
        assert!(r.has_ready(0), "the failed forwarded read");
        assert_eq!(
            r.take_ready(5),
            vec![
                ReadState {
                    ctx: 3,
                    result: Err(ReadError::LeadershipLost)
                },
                ReadState {
                    ctx: 1,
                    result: Ok(5)
                },
            ]
        );
        assert!(!r.has_ready(8));
        assert!(r.has_ready(9));
        assert_eq!(r.pending(), 1);
    }

    #[test]
    fn forwarded_reads_expire_in_order_and_answers_to_unknown_reads_are_ignored() {
        let mut r = Reads::default();
        r.forwarded.push_back((1, 10));
        r.forwarded.push_back((2, 20));
        r.expire_forwarded(29, 20);
        assert!(r.states.is_empty());
        r.expire_forwarded(30, 20);
        assert_eq!(
            r.take_ready(0),
            vec![ReadState {
                ctx: 1,
                result: Err(ReadError::Timeout)
            }]
        );
        r.on_forwarded_answer(1, Some(4));
        assert_eq!(r.pending(), 1, "read 1 was already answered");
        r.on_forwarded_answer(2, Some(4));
        assert_eq!(
            (r.forwarded.len(), r.awaiting_apply.clone()),
            (0, vec![(2, 4)])
        );
    }
}
