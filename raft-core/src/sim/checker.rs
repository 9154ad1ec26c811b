//! The safety properties checked after every simulation step.
//!
//! The checker keeps a *reference log*: every committed entry any node applies extends it or
//! must agree with it. Against it, it checks:
//! - election safety: at most one leader per term;
//! - log matching: two logs holding an entry with the same index and term hold the same
//!   entry, preceded by the same term (so, by induction, the same prefix);
//! - leader completeness: a new leader of term T holds every entry committed in terms < T;
//! - state-machine safety: no two nodes apply different entries at one index, and a node's
//!   commit index always points at the reference entry (committed entries never change);
//! - monotonicity: term never decreases on a node, even across crashes (checked on the durable
//!   hard state), a durable vote never changes within a term, commit and applied never decrease
//!   within one incarnation;
//! - client history: every acknowledged write is in the reference log at its index and term;
//!   every operation is placed at a log position (writes at their index, reads at the applied
//!   index they were served from) that is at least that of every operation completed before it
//!   was invoked, and every read returns the reference value at its position. Ordering
//!   operations by position then gives a linearization, so a history that passes is
//!   linearizable.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use crate::types::{Entry, EntryPayload, HardState, Index, NodeId, Term};

use super::kv::{Kv, Write};

fn payload_hash(payload: &EntryPayload) -> u64 {
    // DefaultHasher::new() uses fixed keys, so hashes are the same in every run.
    let mut h = DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

#[derive(Default)]
/// Checks Raft's safety properties and the client history as the simulation runs.
pub struct Checker {
    /// What went wrong, with the step it was seen at (at most 16).
    pub violations: Vec<String>,
    leaders: BTreeMap<Term, NodeId>,
    /// (index, term) -> (term of the entry before it, payload hash).
    entries_seen: BTreeMap<(Index, Term), (Term, u64)>,
    /// reference[i - 1] = (term, payload hash) of committed entry i.
    reference: Vec<(Term, u64)>,
    /// key -> (index, value) of each committed write, in index order.
    writes_by_key: BTreeMap<u8, Vec<(Index, u64)>>,
    /// node -> (term, vote) of its last durable hard state.
    durable_hard_state: BTreeMap<NodeId, HardState>,
    /// term -> highest commit index its leader reached.
    commit_by_term: BTreeMap<Term, Index>,
    /// Acknowledged writes: index -> (term, op id).
    acked_writes: BTreeMap<Index, (Term, u64)>,
}

impl Checker {
    /// Records a violation.
    pub fn fail(&mut self, step: u64, what: String) {
        if self.violations.len() < 16 {
            self.violations.push(format!("step {step}: {what}"));
        }
    }

    /// How many committed entries the reference log holds.
    pub fn reference_len(&self) -> Index {
        self.reference.len() as Index
    }

    /// The term of reference entry `index`, if known.
    pub fn reference_term(&self, index: Index) -> Option<Term> {
        index
            .checked_sub(1)
            .and_then(|i| self.reference.get(i as usize))
            .map(|r| r.0)
    }

    /// A node acts as leader of `term`: checks election safety and leader completeness.
    pub fn on_leader(
        &mut self,
        step: u64,
        term: Term,
        node: NodeId,
        holds: impl Fn(Index) -> Option<Term>,
        snapshot_index: Index,
    ) {
        match self.leaders.get(&term) {
            Some(&other) if other != node => {
                self.fail(
                    step,
                    format!("two leaders in term {term}: {other} and {node}"),
                );
                return;
            }
            Some(_) => return,
            None => {
                self.leaders.insert(term, node);
            }
        }
        // Every entry committed in an earlier term must be in the new leader's log; by log
        // matching it is enough to check the highest one.
        let upto = self
            .commit_by_term
            .range(..term)
            .map(|(_, &c)| c)
            .max()
            .unwrap_or(0);
        if upto == 0 || upto <= snapshot_index || upto > self.reference_len() {
            return;
        }
        let want = self.reference[(upto - 1) as usize].0;
        if holds(upto) != Some(want) {
            self.fail(
                step,
                format!("leader completeness: node {node} leads term {term} without committed entry {upto} (term {want})"),
            );
        }
    }

    /// The leader of `term` has committed up to `commit`.
    pub fn on_leader_commit(&mut self, term: Term, commit: Index) {
        let c = self.commit_by_term.entry(term).or_insert(0);
        *c = (*c).max(commit);
    }

    /// Entries a node is about to write, `prev_term` being the term of the entry before them.
    pub fn on_append(
        &mut self,
        step: u64,
        node: NodeId,
        prev_term: Option<Term>,
        entries: &[Entry],
    ) {
        let mut prev = prev_term;
        for e in entries {
            let hash = payload_hash(&e.payload);
            if let Some(p) = prev {
                match self.entries_seen.get(&(e.index, e.term)) {
                    Some(&(seen_prev, seen_hash)) if seen_prev != p || seen_hash != hash => {
                        self.fail(step, format!("log matching: node {node} holds a different entry {}/{} (or a different predecessor)", e.index, e.term));
                    }
                    Some(_) => {}
                    None => {
                        self.entries_seen.insert((e.index, e.term), (p, hash));
                    }
                }
            }
            prev = Some(e.term);
        }
    }

    /// A node applies a committed entry.
    pub fn on_apply(&mut self, step: u64, node: NodeId, entry: &Entry) {
        let hash = payload_hash(&entry.payload);
        let len = self.reference_len();
        if entry.index <= len {
            let (term, h) = self.reference[(entry.index - 1) as usize];
            if term != entry.term || h != hash {
                self.fail(
                    step,
                    format!("state machine safety: node {node} applies {}/{} where {}/{term} was applied", entry.index, entry.term, entry.index),
                );
            }
        } else if entry.index == len + 1 {
            self.reference.push((entry.term, hash));
            if let EntryPayload::Command(data) = &entry.payload {
                if let Some(w) = Write::decode(data) {
                    self.writes_by_key
                        .entry(w.key)
                        .or_default()
                        .push((entry.index, w.value));
                }
            }
        } else {
            self.fail(
                step,
                format!(
                    "node {node} applies {} beyond the reference log ({len})",
                    entry.index
                ),
            );
        }
    }

    /// A node's commit index must name the reference entry at that index.
    pub fn on_commit(
        &mut self,
        step: u64,
        node: NodeId,
        commit: Index,
        term_at_commit: Option<Term>,
    ) {
        if let (Some(want), Some(got)) = (self.reference_term(commit), term_at_commit) {
            if want != got {
                self.fail(step, format!("committed entry changed: node {node} has {commit}/{got}, reference {commit}/{want}"));
            }
        }
    }

    /// A node's hard state became durable: term and vote must never go back.
    pub fn on_durable_hard_state(&mut self, step: u64, node: NodeId, hs: HardState) {
        if let Some(prev) = self.durable_hard_state.get(&node).copied() {
            if hs.term < prev.term {
                self.fail(
                    step,
                    format!(
                        "node {node}: durable term went back {} -> {}",
                        prev.term, hs.term
                    ),
                );
            } else if hs.term == prev.term && prev.vote.is_some() && hs.vote != prev.vote {
                self.fail(
                    step,
                    format!(
                        "node {node}: durable vote changed in term {}: {:?} -> {:?}",
                        hs.term, prev.vote, hs.vote
                    ),
                );
            }
        }
        self.durable_hard_state.insert(node, hs);
    }

    /// The value of register `key` after applying the reference log up to `index`.
    pub fn value_at(&self, key: u8, index: Index) -> Option<u64> {
        let writes = self.writes_by_key.get(&key)?;
        let pos = writes.partition_point(|&(i, _)| i <= index);
        pos.checked_sub(1).map(|p| writes[p].1)
    }

    /// The state the reference log gives at `index`, for checking snapshots.
    pub fn state_at(&self, index: Index) -> BTreeMap<u8, u64> {
        self.writes_by_key
            .keys()
            .filter_map(|&k| self.value_at(k, index).map(|v| (k, v)))
            .collect()
    }

    /// A node installs snapshot data: it must equal the reference state at its index.
    pub fn on_snapshot_installed(&mut self, step: u64, node: NodeId, kv: &Kv) {
        if kv.applied > self.reference_len() {
            self.fail(
                step,
                format!(
                    "node {node} installs a snapshot at {} beyond the reference log",
                    kv.applied
                ),
            );
        } else if kv.registers != self.state_at(kv.applied) {
            self.fail(
                step,
                format!(
                    "node {node} installs a snapshot at {} that differs from the reference state",
                    kv.applied
                ),
            );
        }
    }

    /// A client was told its write committed at `index` in `term`.
    pub fn on_write_acked(&mut self, step: u64, index: Index, term: Term, op_id: u64) {
        match self.reference_term(index) {
            Some(t) if t == term => {
                self.acked_writes.insert(index, (term, op_id));
            }
            other => self.fail(
                step,
                format!(
                    "write {op_id} acknowledged at {index}/{term} but the reference has {other:?}"
                ),
            ),
        }
    }

    /// Every acknowledged write is still in the reference log (run at the end).
    pub fn check_acked_writes(&mut self, step: u64) {
        let lost: Vec<_> = self
            .acked_writes
            .iter()
            .filter(|(&i, &(t, _))| self.reference_term(i) != Some(t))
            .map(|(&i, &(t, op))| (i, t, op))
            .collect();
        for (i, t, op) in lost {
            self.fail(step, format!("acknowledged write {op} at {i}/{t} lost"));
        }
    }
}
