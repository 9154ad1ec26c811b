//! The simulated clients: each keeps one read or write of a few registers in flight against a
//! node, retries elsewhere when refused, and has every outcome checked against the log.

use crate::ready::ReadError;
use crate::types::{Index, NodeId};
use crate::ProposeError;

use super::kv::Write;
use super::node::Outcome;
use super::world::World;

/// Steps after healing before every new request must succeed.
const SETTLE_STEPS: u64 = 300;
/// Steps at the end in which clients start nothing new, so every replica can catch up.
const QUIESCE_STEPS: u64 = 150;
/// Registers the clients read and write: few, so operations collide.
const KEYS: u64 = 4;

#[derive(Clone, Copy)]
pub(super) enum OpKind {
    Write { key: u8, value: u64 },
    Read { key: u8 },
}

pub(super) struct OpInFlight {
    pub(super) op_id: u64,
    pub(super) kind: OpKind,
    pub(super) invoked: u64,
    /// The highest log position of any operation completed before this one was invoked.
    pub(super) required: Index,
    pub(super) deadline: u64,
}

pub(super) struct Client {
    pub(super) current: Option<OpInFlight>,
    pub(super) target: NodeId,
    pub(super) next_action_at: u64,
}

impl World {
    pub(super) fn run_clients(&mut self) {
        let quiescing = self.step + QUIESCE_STEPS >= self.end_step;
        for c in 0..self.clients.len() {
            if let Some(op) = &self.clients[c].current {
                if self.step >= op.deadline {
                    if op.invoked >= self.heal_step + SETTLE_STEPS {
                        let what = format!(
                            "liveness: operation {} invoked at step {} after healing timed out",
                            op.op_id, op.invoked
                        );
                        self.checker.fail(self.step, what);
                    }
                    self.clients[c].current = None;
                    self.stats.ops_unknown += 1;
                    self.clients[c].target = self.random_member();
                }
                continue;
            }
            if quiescing || self.step < self.clients[c].next_action_at {
                continue;
            }
            self.invoke(c);
        }
    }

    pub(super) fn random_member(&mut self) -> NodeId {
        let members: Vec<NodeId> = match self.current_leader() {
            Some(l) => self.nodes[&l]
                .raw
                .as_ref()
                .expect("alive")
                .membership()
                .nodes()
                .into_iter()
                .collect(),
            None => self.nodes.keys().copied().collect(),
        };
        members[self.rng.range(0, members.len() as u64) as usize]
    }

    pub(super) fn invoke(&mut self, c: usize) {
        let op_id = self.next_op_id;
        self.next_op_id += 1;
        let key = self.rng.range(0, KEYS) as u8;
        let kind = if self.rng.chance(0.6) {
            OpKind::Write { key, value: op_id }
        } else {
            OpKind::Read { key }
        };
        let target = self.clients[c].target;
        if self.trace {
            let what = match kind {
                OpKind::Write { key, value } => format!("write {key}={value}"),
                OpKind::Read { key } => format!("read {key}"),
            };
            eprintln!(
                "{} client {c} op {op_id}: {what} at node {target}",
                self.step
            );
        }
        self.clients[c].current = Some(OpInFlight {
            op_id,
            kind,
            invoked: self.step,
            required: self.completed_max_before_step,
            deadline: self.step + self.params.op_timeout_steps(),
        });
        let node = self.nodes.get_mut(&target).expect("known");
        if node.paused_until > self.step {
            return; // no answer until the deadline
        }
        let Some(raw) = node.raw.as_mut() else {
            self.complete(op_id, Outcome::Failed { leader: None });
            return;
        };
        let outcome = match kind {
            OpKind::Write { key, value } => match raw.propose(Write { op_id, key, value }.encode())
            {
                Ok(id) => {
                    if let Some((_, replaced)) =
                        node.pending_writes.insert(id.index, (id.term, op_id))
                    {
                        self.completions_failed(replaced);
                    }
                    None
                }
                Err(ProposeError::NotLeader { leader }) => Some(Outcome::Failed { leader }),
                Err(_) => Some(Outcome::Failed { leader: None }),
            },
            OpKind::Read { key } => match raw.read_index(op_id) {
                Ok(()) => {
                    node.pending_reads.insert(op_id, key);
                    None
                }
                Err(ReadError::NotLeader { leader }) => Some(Outcome::Failed { leader }),
                Err(_) => Some(Outcome::Failed { leader: None }),
            },
        };
        match outcome {
            Some(outcome) => self.complete(op_id, outcome),
            None => self.with_node(target, |n, ctx| n.drive(ctx)),
        }
    }

    pub(super) fn completions_failed(&mut self, op_id: u64) {
        self.complete(op_id, Outcome::Failed { leader: None });
    }

    pub(super) fn complete(&mut self, op_id: u64, outcome: Outcome) {
        let Some(c) = self
            .clients
            .iter()
            .position(|c| c.current.as_ref().is_some_and(|op| op.op_id == op_id))
        else {
            return; // timed out already: its outcome stays unknown
        };
        let op = self.clients[c].current.take().expect("found");
        let step = self.step;
        if self.trace {
            let what = match &outcome {
                Outcome::WriteOk { index, term } => format!("ok at {index}/{term}"),
                Outcome::ReadOk { value, served } => format!("read {value:?} at {served}"),
                Outcome::Failed { leader } => format!("failed (leader hint {leader:?})"),
                Outcome::Unknown => "unknown".to_string(),
            };
            eprintln!("{step} op {op_id}: {what}");
        }
        match (outcome, op.kind) {
            (Outcome::WriteOk { index, term }, OpKind::Write { .. }) => {
                self.checker.on_write_acked(step, index, term, op_id);
                if index <= op.required {
                    self.checker.fail(step, format!("real time: write {op_id} at {index} but an operation at {} completed before it began", op.required));
                }
                self.completed_max = self.completed_max.max(index);
                self.stats.writes_ok += 1;
            }
            (Outcome::ReadOk { value, served }, OpKind::Read { key }) => {
                if served < op.required {
                    self.checker.fail(step, format!("stale read: read {op_id} served at {served} but an operation at {} completed before it began", op.required));
                } else if served > self.checker.reference_len() {
                    self.checker.fail(
                        step,
                        format!("read {op_id} served at {served}, beyond every applied entry"),
                    );
                } else if value != self.checker.value_at(key, served) {
                    self.checker.fail(step, format!("read {op_id} of key {key} returned {value:?}, the log gives {:?} at {served}", self.checker.value_at(key, served)));
                }
                self.completed_max = self.completed_max.max(served);
                self.stats.reads_ok += 1;
            }
            (Outcome::Unknown, _) => {
                self.stats.ops_unknown += 1;
                self.clients[c].target = self.random_member();
            }
            (Outcome::Failed { leader }, _) => {
                self.stats.ops_failed += 1;
                self.clients[c].target = match leader {
                    Some(l) => l,
                    None => self.random_member(),
                };
            }
            _ => self.checker.fail(
                step,
                format!("sim: operation {op_id} completed with the wrong kind of outcome"),
            ),
        }
        self.clients[c].next_action_at = step + self.rng.range(0, 3);
    }
}
