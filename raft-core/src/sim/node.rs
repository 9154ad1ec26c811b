//! One simulated node: a `RawNode` over an in-memory log, hosted as a real host would (the
//! `Ready` contract), with a disk whose unsynced writes a crash may lose or tear.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::config::Config;
use crate::message::{Message, MessageBody};
use crate::ready::ReadError;
use crate::rng::SplitMix64;
use crate::storage::{LogStore, MemLog};
use crate::types::{Entry, EntryPayload, HardState, Index, NodeId, Role, SnapshotMeta, Term};
use crate::RawNode;

use super::checker::Checker;
use super::kv::{Kv, Write};
use super::network::Network;
use super::params::Params;
use super::Stats;

/// Readies a node handles at most per event, so a bug that keeps producing work cannot hang
/// the run.
const READIES_PER_EVENT_MAX: usize = 64;

/// The newest snapshot a node holds (as raft-node's snapshot store keeps it): the state at
/// `meta.index`. The log's compaction point lies at or below it.
#[derive(Clone)]
pub(super) struct Snapshot {
    pub(super) meta: SnapshotMeta,
    pub(super) data: Arc<Kv>,
}

/// A write the node made to its store that a crash may lose until it is synced.
#[derive(Clone)]
pub(super) enum DiskOp {
    HardState(HardState),
    Append(Vec<Entry>),
    /// A leader's snapshot replaces the log and becomes the node's snapshot.
    InstallSnapshot(Snapshot),
    /// A snapshot of the node's own state is written.
    Snapshot(Snapshot),
    /// The log drops its entries through the compaction point `meta`.
    Compact(SnapshotMeta),
}

pub(super) struct Disk {
    pub(super) log: MemLog,
    pub(super) snapshot: Snapshot,
}

impl Disk {
    pub(super) fn apply(&mut self, op: &DiskOp) {
        match op {
            DiskOp::HardState(hs) => self.log.set_hard_state(*hs),
            DiskOp::Append(entries) => self.log.append(entries),
            DiskOp::InstallSnapshot(snapshot) => {
                self.log.install_snapshot(snapshot.meta.clone());
                self.snapshot = snapshot.clone();
            }
            DiskOp::Snapshot(snapshot) => self.snapshot = snapshot.clone(),
            DiskOp::Compact(meta) => self.log.compact(meta.clone()),
        }
    }
}

pub(super) struct PendingSync {
    pub(super) due: u64,
    pub(super) journal_upto: usize,
    pub(super) seq: u64,
    pub(super) messages: Vec<Message>,
}

pub(super) enum Outcome {
    /// The node can no longer tell (it left the cluster): the client retries elsewhere.
    Unknown,
    WriteOk {
        index: Index,
        term: Term,
    },
    ReadOk {
        value: Option<u64>,
        served: Index,
    },
    Failed {
        leader: Option<NodeId>,
    },
}

pub(super) struct SimNode {
    pub(super) id: NodeId,
    pub(super) raw: Option<RawNode<MemLog>>,
    pub(super) incarnation: u64,
    pub(super) durable: Disk,
    pub(super) journal: Vec<DiskOp>,
    pub(super) syncs: VecDeque<PendingSync>,
    pub(super) kv: Kv,
    pub(super) snapshot: Snapshot,
    pub(super) incoming_snapshots: VecDeque<(Index, Term, Arc<Kv>)>,
    pub(super) pending_writes: BTreeMap<Index, (Term, u64)>,
    pub(super) pending_reads: BTreeMap<u64, u8>,
    pub(super) paused_until: u64,
    /// Ticks that elapsed while the process was paused, delivered when it resumes.
    pub(super) ticks_owed: u64,
    pub(super) restart_at: u64,
    /// This node's disk: on slow-disk seeds some nodes are slow and some fast, so a leader's
    /// own sync can finish after its followers' acknowledgements.
    pub(super) sync_delay_ticks_max: u64,
    pub(super) last_seen: (Term, Index, Index),
}

/// What a node's event needs from the world.
pub(super) struct Ctx<'a> {
    pub(super) step: u64,
    pub(super) rng: &'a mut SplitMix64,
    pub(super) net: &'a mut Network,
    pub(super) checker: &'a mut Checker,
    pub(super) stats: &'a mut Stats,
    pub(super) completions: &'a mut Vec<(u64, Outcome)>,
    /// Set when a leader's commit index advanced during the event.
    pub(super) leader_committed: bool,
    pub(super) params: &'a Params,
}

impl SimNode {
    pub(super) fn config(&self, seed: u64, params: &Params) -> Config {
        let mut c = Config::new(self.id);
        c.seed = seed ^ (self.id << 48) ^ (self.incarnation << 32);
        c.pre_vote = params.pre_vote;
        c.check_quorum = params.check_quorum;
        c.lease_read = params.lease_read;
        c.inflight_messages_max = params.inflight_messages_max;
        c.append_entries_max = params.append_entries_max;
        // As in production, the election timeout must dwarf a round of sync + round trip, or
        // elections can split forever.
        c.election_timeout_ticks_min = params.election_timeout_ticks_min();
        c.election_timeout_ticks_max = 2 * c.election_timeout_ticks_min;
        c
    }

    pub(super) fn alive(&self) -> bool {
        self.raw.is_some()
    }

    pub(super) fn running(&self, step: u64) -> bool {
        self.raw.is_some() && self.paused_until <= step
    }

    pub(super) fn crash(&mut self, rng: &mut SplitMix64) {
        self.raw = None;
        // Whatever was written but not synced may or may not have reached the disk, in order,
        // and the last write may be torn part-way.
        let journal = std::mem::take(&mut self.journal);
        let kept = rng.range(0, journal.len() as u64 + 1) as usize;
        for op in &journal[..kept] {
            self.durable.apply(op);
        }
        if let Some(DiskOp::Append(entries)) = journal.get(kept) {
            if entries.len() > 1 && rng.chance(0.5) {
                let torn = rng.range(1, entries.len() as u64) as usize;
                self.durable
                    .apply(&DiskOp::Append(entries[..torn].to_vec()));
            }
        }
        self.syncs.clear();
        self.ticks_owed = 0;
        self.pending_writes.clear();
        self.pending_reads.clear();
        self.incoming_snapshots.clear();
        self.kv = Kv::default();
    }

    pub(super) fn restart(&mut self, seed: u64, params: &Params, checker: &mut Checker, step: u64) {
        self.incarnation += 1;
        let log = self.durable.log.clone();
        checker.on_durable_hard_state(step, self.id, log.hard_state());
        let snapshot = self.durable.snapshot.clone();
        if snapshot.meta.index != snapshot.data.applied
            || snapshot.meta.index < log.snapshot_meta().index
        {
            checker.fail(
                step,
                format!(
                    "node {}: durable snapshot at {} (data at {}) does not cover the log's compaction point {}",
                    self.id,
                    snapshot.meta.index,
                    snapshot.data.applied,
                    log.snapshot_meta().index
                ),
            );
        }
        match RawNode::new(self.config(seed, params), log) {
            Ok(mut raw) => {
                // As raft-node does at start: the snapshot it holds is the one to send.
                if let Err(e) = raw.on_snapshot_built(snapshot.meta.clone()) {
                    checker.fail(
                        step,
                        format!("node {}: its durable snapshot is refused: {e}", self.id),
                    );
                }
                self.raw = Some(raw);
            }
            Err(e) => checker.fail(step, format!("node {} cannot restart: {e}", self.id)),
        }
        // The state machine restarts from the snapshot, which may be ahead of the log's
        // compaction point: the entries between are handed out again and skipped.
        self.kv = (*snapshot.data).clone();
        self.snapshot = snapshot;
        self.last_seen = (0, 0, 0);
    }

    /// Carries out every Ready the node has, as a host would.
    pub(super) fn drive(&mut self, ctx: &mut Ctx) {
        for _ in 0..READIES_PER_EVENT_MAX {
            let Some(raw) = self.raw.as_mut() else { return };
            if !raw.has_ready() {
                break;
            }
            let ready = raw.ready();
            let raw = self.raw.as_mut().expect("alive");
            if raw.role() == Role::Leader {
                let (term, id, first) = (raw.term(), self.id, raw.first_index());
                let r: &RawNode<MemLog> = raw;
                ctx.checker.on_leader(
                    ctx.step,
                    term,
                    id,
                    |i| r.log_term(i),
                    first.saturating_sub(1),
                );
            }

            if let Some(meta) = &ready.snapshot {
                let pos = self
                    .incoming_snapshots
                    .iter()
                    .position(|(i, t, _)| *i == meta.index && *t == meta.term);
                let Some(pos) = pos else {
                    ctx.checker.fail(
                        ctx.step,
                        format!(
                            "sim: node {} has no data for snapshot {}",
                            self.id, meta.index
                        ),
                    );
                    return;
                };
                let data = self.incoming_snapshots.remove(pos).expect("found").2;
                ctx.checker.on_snapshot_installed(ctx.step, self.id, &data);
                raw.storage_mut().install_snapshot(meta.clone());
                let snapshot = Snapshot {
                    meta: meta.clone(),
                    data,
                };
                self.journal.push(DiskOp::InstallSnapshot(snapshot.clone()));
                self.kv = (*snapshot.data).clone();
                self.snapshot = snapshot;
                ctx.stats.snapshots_installed += 1;
            }
            if let Some(first) = ready.entries.first() {
                let prev_term = raw.storage().term(first.index - 1).ok();
                ctx.checker
                    .on_append(ctx.step, self.id, prev_term, &ready.entries);
                raw.storage_mut().append(&ready.entries);
                self.journal.push(DiskOp::Append(ready.entries.clone()));
            }
            if let Some(hs) = ready.hard_state {
                raw.storage_mut().set_hard_state(hs);
                self.journal.push(DiskOp::HardState(hs));
            }
            for m in ready.messages {
                let mut data = None;
                if let MessageBody::InstallSnapshot { meta } = &m.body {
                    // The host streams the snapshot the core named, and only that one.
                    if *meta != self.snapshot.meta {
                        ctx.checker.fail(
                            ctx.step,
                            format!(
                                "node {} is asked to send a snapshot at {}/{} but holds {}/{}",
                                self.id,
                                meta.index,
                                meta.term,
                                self.snapshot.meta.index,
                                self.snapshot.meta.term
                            ),
                        );
                        return;
                    }
                    data = Some(self.snapshot.data.clone());
                }
                ctx.net.send(ctx.rng, ctx.step, m, data, ctx.stats);
            }
            if ready.seq > 0 {
                let due = ctx.step + ctx.rng.range(0, self.sync_delay_ticks_max + 1);
                let due = due.max(self.syncs.back().map_or(0, |s| s.due));
                self.syncs.push_back(PendingSync {
                    due,
                    journal_upto: self.journal.len(),
                    seq: ready.seq,
                    messages: ready.messages_after_persist,
                });
            }

            for entry in &ready.committed_entries {
                ctx.checker.on_apply(ctx.step, self.id, entry);
                if entry.index <= self.kv.applied {
                    // Restored from a snapshot ahead of the log's compaction point.
                    continue;
                }
                let write = match &entry.payload {
                    EntryPayload::Command(data) => Write::decode(data),
                    _ => None,
                };
                self.kv.apply(entry.index, write);
                if let Some((term, op)) = self.pending_writes.remove(&entry.index) {
                    let outcome = if term == entry.term {
                        Outcome::WriteOk {
                            index: entry.index,
                            term,
                        }
                    } else {
                        Outcome::Failed {
                            leader: raw.leader(),
                        }
                    };
                    ctx.completions.push((op, outcome));
                }
            }
            if let Some(last) = ready.committed_entries.last() {
                raw.advance_applied(last.index);
                // Writes at or below an installed snapshot can no longer be told apart.
                let stale: Vec<Index> = self
                    .pending_writes
                    .range(..=last.index)
                    .map(|(&i, _)| i)
                    .collect();
                for i in stale {
                    self.pending_writes.remove(&i);
                }
            }
            for rs in ready.read_states {
                if let Some(key) = self.pending_reads.remove(&rs.ctx) {
                    let outcome = match rs.result {
                        Ok(index) => {
                            assert!(self.kv.applied >= index, "read released before apply");
                            Outcome::ReadOk {
                                value: self.kv.get(key),
                                served: self.kv.applied,
                            }
                        }
                        Err(ReadError::NotLeader { leader }) => Outcome::Failed { leader },
                        Err(_) => Outcome::Failed { leader: None },
                    };
                    ctx.completions.push((rs.ctx, outcome));
                }
            }

            // Per-incarnation monotonicity and the commit index's entry.
            let (term, commit, applied) = (raw.term(), raw.commit_index(), raw.applied_index());
            let (t0, c0, a0) = self.last_seen;
            if term < t0 || commit < c0 || applied < a0 {
                ctx.checker.fail(
                    ctx.step,
                    format!(
                        "node {}: (term, commit, applied) went back from {:?} to {:?}",
                        self.id,
                        (t0, c0, a0),
                        (term, commit, applied)
                    ),
                );
            }
            self.last_seen = (term, commit, applied);
            ctx.stats.commit_max = ctx.stats.commit_max.max(commit);
            ctx.checker
                .on_commit(ctx.step, self.id, commit, raw.log_term(commit));
            if raw.is_leader() {
                ctx.checker.on_leader_commit(term, commit);
                ctx.leader_committed |= commit > c0;
            }

            // Snapshot the state machine every so many applied entries, then compact the log
            // through the snapshot less the trailing margin (as raft-node does).
            if self.kv.applied >= self.snapshot.meta.index + ctx.params.snapshot_interval_entries
                && self.kv.applied == raw.applied_index()
            {
                let index = self.kv.applied;
                let meta = raw
                    .snapshot_meta_at(index)
                    .expect("the applied entry is in the log");
                debug_assert_eq!(&meta.membership, raw.applied_membership());
                let snapshot = Snapshot {
                    meta: meta.clone(),
                    data: Arc::new(self.kv.clone()),
                };
                self.journal.push(DiskOp::Snapshot(snapshot.clone()));
                self.snapshot = snapshot;
                if let Err(e) = raw.on_snapshot_built(meta) {
                    ctx.checker.fail(
                        ctx.step,
                        format!("node {}: its snapshot at {index} is refused: {e}", self.id),
                    );
                }
                let through = index.saturating_sub(ctx.params.snapshot_log_margin_entries);
                if through > raw.storage().snapshot_meta().index {
                    let meta = raw
                        .snapshot_meta_at(through)
                        .expect("the log holds the compaction point");
                    raw.storage_mut().compact(meta.clone());
                    self.journal.push(DiskOp::Compact(meta));
                }
                ctx.stats.snapshots_taken += 1;
            }
        }
        self.answer_pending_if_removed(ctx);
    }

    /// A node removed from the cluster stops receiving entries, so what it still has pending
    /// may never be applied here: it answers "outcome unknown" at once, as a real node must,
    /// and the client retries elsewhere with the same request.
    pub(super) fn answer_pending_if_removed(&mut self, ctx: &mut Ctx) {
        let Some(raw) = self.raw.as_ref() else { return };
        if raw.membership().contains(self.id) {
            return;
        }
        for (_, (_, op)) in std::mem::take(&mut self.pending_writes) {
            ctx.completions.push((op, Outcome::Unknown));
        }
        for (op, _) in std::mem::take(&mut self.pending_reads) {
            ctx.completions.push((op, Outcome::Unknown));
        }
    }

    /// Completes the syncs that are due: the journal up to them becomes durable, and the
    /// messages that waited for it go out.
    pub(super) fn complete_syncs(&mut self, ctx: &mut Ctx) {
        let mut any = false;
        while self.syncs.front().is_some_and(|s| s.due <= ctx.step) {
            let sync = self.syncs.pop_front().expect("checked");
            for op in self.journal.drain(..sync.journal_upto) {
                self.durable.apply(&op);
            }
            for later in self.syncs.iter_mut() {
                later.journal_upto -= sync.journal_upto;
            }
            ctx.checker
                .on_durable_hard_state(ctx.step, self.id, self.durable.log.hard_state());
            for m in sync.messages {
                ctx.net.send(ctx.rng, ctx.step, m, None, ctx.stats);
            }
            if let Some(raw) = self.raw.as_mut() {
                raw.on_persisted(sync.seq);
            }
            any = true;
        }
        if any {
            self.drive(ctx);
        }
    }
}
