//! Client requests on the runtime task: proposals and reads with their deadlines, batched
//! ReadIndex rounds, and requests parked while no leader is known.

use std::time::Duration;

use bytes::Bytes;
use raft_core::{Index, ProposeError, ReadError, Term};
use raft_proto::{NodeError, NodeId};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::store::NodeStore;

use super::{Command, HostedMachine, ReadAnswer, ReadReply, Reply, Runtime};

pub(super) struct PendingWrite {
    pub(super) term: Term,
    pub(super) reply: Reply,
    pub(super) started: Instant,
}

pub(super) struct PendingRead {
    op: Bytes,
    pub(super) reply: ReadReply,
    deadline: Instant,
}

impl<S: NodeStore, M: HostedMachine> Runtime<S, M> {
    pub(super) fn leader_error(&self, leader: Option<NodeId>) -> NodeError {
        NodeError::NotLeader {
            leader,
            leader_addr: leader.and_then(|l| self.client_addrs.get(&l).cloned()),
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.config.request_timeout_ms)
    }

    pub(super) fn unavailable(&self, what: &str) -> NodeError {
        NodeError::Unavailable(format!(
            "{what} not confirmed by a majority within {} ms: {}",
            self.config.request_timeout_ms,
            self.quorum_situation()
        ))
    }

    /// Proposes the machine's upkeep entry on a leader (see `HostedMachine::housekeeping`).
    pub(super) fn propose_housekeeping(&mut self) {
        if !self.raw.is_leader() {
            return;
        }
        let term = self.raw.term();
        if self
            .housekeeping_in_flight
            .is_some_and(|(index, t)| t == term && self.sm.applied_index() < index)
        {
            return;
        }
        let Some(data) = self.sm.housekeeping() else {
            return;
        };
        match self.raw.propose(data) {
            Ok(id) => self.housekeeping_in_flight = Some((id.index, id.term)),
            Err(e) => tracing::debug!(error = ?e, "housekeeping proposal refused"),
        }
    }

    pub(super) fn fail_command(&self, cmd: Command, err: NodeError) {
        match cmd {
            Command::Propose { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Command::Read { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Command::Admin(_, reply) => {
                let _ = reply.send(Err(err));
            }
            Command::Status(_) => {}
        }
    }

    fn park(&mut self, deadline: Instant, cmd: Command) {
        if let Some(situation) = self.leaderless_without_quorum() {
            self.fail_command(cmd, NodeError::Unavailable(situation));
        } else if self.waiting.len() >= self.config.requests_waiting_max {
            self.fail_command(cmd, NodeError::Busy);
        } else {
            self.waiting.push_back((deadline, cmd));
        }
    }

    pub(super) fn on_command(&mut self, cmd: Command) {
        if matches!(cmd, Command::Propose { .. } | Command::Read { .. }) {
            self.work_inputs_this_iteration += 1;
        }
        let deadline = self.deadline();
        self.dispatch(cmd, deadline);
    }

    pub(super) fn dispatch(&mut self, cmd: Command, deadline: Instant) {
        match cmd {
            Command::Propose { data, reply } => self.propose(data, reply, deadline),
            Command::Read {
                op,
                linearizable,
                reply,
            } => self.read(op, linearizable, reply, deadline),
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Admin(op, reply) => self.admin(op, reply, deadline),
        }
    }

    fn propose(&mut self, data: Bytes, reply: Reply, deadline: Instant) {
        if self.pending_writes.len() >= self.config.proposals_in_flight_max {
            Metrics::add(&self.metrics.proposals_busy, 1);
            let _ = reply.send(Err(NodeError::Busy));
            return;
        }
        match self.raw.propose(data.clone()) {
            Ok(id) => {
                Metrics::add(&self.metrics.proposals, 1);
                self.pending_writes.insert(
                    id.index,
                    PendingWrite {
                        term: id.term,
                        reply,
                        started: Instant::now(),
                    },
                );
                self.write_deadlines
                    .push_back((deadline, id.index, id.term));
            }
            Err(ProposeError::NotLeader {
                leader: Some(leader),
            }) if leader != self.raw.id() => {
                let _ = reply.send(Err(self.leader_error(Some(leader))));
            }
            Err(ProposeError::NotLeader { .. } | ProposeError::TransferInProgress) => {
                self.park(deadline, Command::Propose { data, reply });
            }
            Err(ProposeError::Busy) => {
                Metrics::add(&self.metrics.proposals_busy, 1);
                let _ = reply.send(Err(NodeError::Busy));
            }
        }
    }

    /// The answer to a read at the current applied index.
    fn read_answer(&self, op: &[u8]) -> ReadAnswer {
        match self.sm.view() {
            Some(view) => ReadAnswer::View(view),
            None => ReadAnswer::Bytes(self.sm.query(op)),
        }
    }

    fn read(&mut self, op: Bytes, linearizable: bool, reply: ReadReply, deadline: Instant) {
        if !linearizable {
            Metrics::add(&self.metrics.reads, 1);
            let _ = reply.send(Ok(self.read_answer(&op)));
            return;
        }
        if self.pending_reads.len() >= self.config.reads_in_flight_max {
            let _ = reply.send(Err(NodeError::Busy));
            return;
        }
        // Only queued here: the round that serves it starts after every input of this
        // iteration is in (`start_read_round`), so reads arriving together share it.
        let id = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.pending_reads.insert(
            id,
            PendingRead {
                op,
                reply,
                deadline,
            },
        );
        self.read_deadlines.push_back((deadline, id));
        self.read_batch.push(id);
    }

    /// Starts a ReadIndex round for every queued read, unless one is in flight (see
    /// `read_batch` for why that keeps reads linearizable).
    pub(super) fn start_read_round(&mut self) {
        if !self.read_batch.should_start() {
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        let err = match self.raw.read_index(ctx) {
            Ok(()) => {
                self.read_batch.start(ctx, self.ticks);
                return;
            }
            Err(e) => e,
        };
        for id in self.read_batch.take_queued() {
            let Some(p) = self.pending_reads.remove(&id) else {
                continue;
            };
            self.finish_read(p, Err(err));
        }
    }

    /// Answers a read from its round's outcome, or parks it to be asked again when
    /// leadership is in doubt (its deadline stays).
    pub(super) fn finish_read(&mut self, p: PendingRead, result: Result<Index, ReadError>) {
        match result {
            Ok(index) => {
                debug_assert!(self.raw.applied_index() >= index);
                Metrics::add(&self.metrics.reads, 1);
                let _ = p.reply.send(Ok(self.read_answer(&p.op)));
            }
            Err(ReadError::Busy) => {
                let _ = p.reply.send(Err(NodeError::Busy));
            }
            Err(_) => {
                let cmd = Command::Read {
                    op: p.op,
                    linearizable: true,
                    reply: p.reply,
                };
                self.park(p.deadline, cmd);
            }
        }
    }
}
