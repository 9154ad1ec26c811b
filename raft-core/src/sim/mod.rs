//! A deterministic simulation of whole clusters under faults: the safety net of the project.
//!
//! One seed fixes everything: the cluster's size and settings, the fault rates, every random
//! choice of network, disk and clients. [`run_seed`] drives 3- or 5-node clusters (plus two
//! spare nodes for membership changes) through message loss, duplication, reordering and delay,
//! partitions (symmetric, one-way, single node, bridge), crashes that lose every write not yet
//! synced (with a torn last write), pauses, membership changes, leadership transfers, snapshots
//! and compaction, while clients read and write a few registers. Membership faults: some
//! seeds walk the voters by single-server changes that keep returning to an even count (where
//! an addition and a removal from one configuration have disjoint majorities), new leaders
//! change the membership at once, a leader may be isolated just after appending a change (so
//! it reaches a minority), and a change may be followed by a *split along membership
//! knowledge*: the leader keeps a bare majority of its new configuration, chosen away from
//! nodes holding a configuration entry it lacks and from those entries' voters, and everyone
//! else (the nodes the change removed among them) is cut off, messages in flight included,
//! for a few election timeouts. After every step the
//! [`checker`] verifies Raft's safety properties and the client history; after the faults heal,
//! a leader must emerge, every replica must catch up and every new request must succeed.
//!
//! `cargo xtask sim --seed N` replays one seed.
//!
//! [`SimOptions::mutant`] runs the core with a deliberate bug ([`crate::mutant::Mutant`]);
//! `tests/mutants.rs` checks that each is caught within 1,000 seeds, and
//! `cargo xtask sim --mutant NAME --seed N` replays a mutant's failing seed.

pub mod checker;
pub mod kv;

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;

use crate::config::Config;
use crate::membership::{ConfChange, Membership};
use crate::message::{Message, MessageBody};
use crate::mutant::Mutant;
use crate::ready::ReadError;
use crate::rng::SplitMix64;
use crate::storage::{LogStore, MemLog};
use crate::types::{Entry, EntryPayload, HardState, Index, NodeId, Role, SnapshotMeta, Term};
use crate::{ProposeError, RawNode};

use checker::Checker;
use kv::{Kv, Write};

/// How long one seed runs.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The seed: it fixes the whole run.
    pub seed: u64,
    /// Steps (ticks) with faults injected.
    pub fault_steps: u64,
    /// Steps after every fault has healed, in which the cluster must recover.
    pub heal_steps: u64,
    /// A deliberate bug to run the core with, to show that the simulation catches it.
    pub mutant: Option<Mutant>,
}

impl SimOptions {
    /// 5,000 fault steps then 1,000 healing steps.
    pub fn new(seed: u64) -> Self {
        SimOptions {
            seed,
            fault_steps: 5000,
            heal_steps: 1000,
            mutant: None,
        }
    }
}

/// What happened in one seed.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Leaders seen (new term or new node).
    pub elections: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Partitions made.
    pub partitions: u64,
    /// Process pauses.
    pub pauses: u64,
    /// Membership changes accepted by a leader.
    pub membership_changes: u64,
    /// Leadership transfers started.
    pub transfers: u64,
    /// Snapshots taken (and logs compacted).
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Writes acknowledged.
    pub writes_ok: u64,
    /// Reads served.
    pub reads_ok: u64,
    /// Operations refused (to be retried).
    pub ops_failed: u64,
    /// Operations whose outcome the client never learned.
    pub ops_unknown: u64,
    /// Messages sent (before loss).
    pub messages_sent: u64,
    /// Highest commit index reached.
    pub commit_max: Index,
}

#[derive(Clone, Debug)]
/// The outcome of one seed.
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Steps run.
    pub steps: u64,
    /// Violations found (empty when the seed passed).
    pub violations: Vec<String>,
    /// What happened.
    pub stats: Stats,
    /// The settings and fault rates the seed drew.
    pub params: String,
}

/// Fault rates and settings, drawn from the seed.
#[derive(Clone, Debug)]
struct Params {
    nodes: u64,
    loss: f64,
    duplication: f64,
    delay_ticks_max: u64,
    crash_rate: f64,
    partition_rate: f64,
    pause_rate: f64,
    membership_rate: f64,
    transfer_rate: f64,
    /// Chance that a newly elected leader crashes within a few ticks, before its first
    /// entries spread: the Figure 8 situation.
    new_leader_crash: f64,
    /// Chance that a newly elected leader is cut off at once, so its first entries stay its
    /// own (the other half of the Figure 8 situation).
    new_leader_isolation: f64,
    /// Chance, each time a leader's commit index advances, that it is cut off at once.
    commit_isolation: f64,
    /// Chance that a newly elected leader asks for a membership change at once, before an
    /// entry of its term has committed (the core must refuse: the 2015 single-server-change
    /// bug is a leader that does not).
    new_leader_membership: f64,
    /// Chance that a leader which has just appended a membership change is cut off a step or
    /// two later, so that the change reaches only a minority: the other half of that bug.
    membership_isolation: f64,
    /// Chance, each time a leader appends a membership change, that the network splits at
    /// once along the new configuration: the leader keeps a bare majority of the new voters,
    /// everyone else (the nodes the change removes among them) is cut off from that side,
    /// messages in flight included, for a few election timeouts. When the change came too
    /// early, the other side may still hold a majority of an older configuration.
    membership_split: f64,
    /// Chance of that split when some node holds a configuration entry the leader lacks.
    stale_config_split: f64,
    /// Chance that a membership change is one step of a walk that keeps returning to an
    /// even number of voters by single-server changes, rather than drawn uniformly.
    even_walk: f64,
    sync_delay_ticks_max: u64,
    snapshot_interval_entries: u64,
    clients: usize,
    pre_vote: bool,
    check_quorum: bool,
    lease_read: bool,
    inflight_messages_max: usize,
    append_entries_max: usize,
}

impl Params {
    fn election_timeout_ticks_min(&self) -> u32 {
        (10 + 2 * (self.sync_delay_ticks_max + self.delay_ticks_max)) as u32
    }

    /// Long enough for a request to survive one leader change.
    fn op_timeout_steps(&self) -> u64 {
        100 + 4 * self.election_timeout_ticks_min() as u64
    }

    fn draw(rng: &mut SplitMix64) -> Params {
        let permille = |rng: &mut SplitMix64, max: u64| rng.range(0, max + 1) as f64 / 1000.0;
        let lease_read = rng.chance(0.25);
        let pre_vote = rng.chance(0.8);
        let check_quorum = lease_read || rng.chance(0.8);
        // Without pre-vote or check-quorum, a removed server that never learns of its
        // removal keeps disrupting the cluster with vote requests (dissertation §4.2.3):
        // plain Raft is only run on a fixed membership.
        let membership = pre_vote || check_quorum;
        // Some seeds are about membership: frequent single-server changes on an even number
        // of voters, each new leader changing at once, and the network cut around changes.
        let membership_focus = membership && rng.chance(0.3);
        let rate = |rng: &mut SplitMix64, zero: f64, max: u64| {
            if rng.chance(zero) {
                0.0
            } else {
                permille(rng, max)
            }
        };
        let focused =
            |rng: &mut SplitMix64, min: u64, max: u64| rng.range(min, max + 1) as f64 / 1000.0;
        Params {
            nodes: if rng.chance(0.5) { 3 } else { 5 },
            loss: permille(rng, 300),
            duplication: permille(rng, 100),
            delay_ticks_max: rng.range(1, 6),
            crash_rate: permille(rng, 20),
            partition_rate: permille(rng, 10),
            pause_rate: permille(rng, 3),
            membership_rate: match (membership, membership_focus) {
                (false, _) => 0.0,
                (true, false) => permille(rng, 5),
                (true, true) => focused(rng, 5, 15),
            },
            transfer_rate: permille(rng, 4),
            new_leader_crash: rate(rng, 0.25, 500),
            new_leader_isolation: rate(rng, 0.25, 500),
            commit_isolation: rate(rng, 0.25, 50),
            new_leader_membership: if membership_focus {
                focused(rng, 800, 1000)
            } else {
                rate(rng, 0.25, 800)
            },
            membership_isolation: if membership_focus {
                focused(rng, 500, 900)
            } else {
                rate(rng, 0.25, 600)
            },
            membership_split: rate(rng, 0.25, 600),
            stale_config_split: if membership_focus {
                1.0
            } else if rng.chance(0.25) {
                0.0
            } else {
                focused(rng, 300, 1000)
            },
            even_walk: if membership_focus {
                focused(rng, 1000, 1000)
            } else {
                rate(rng, 0.25, 1000)
            },
            // A quarter of the seeds run on a slow disk, so acknowledgements race syncs.
            sync_delay_ticks_max: if rng.chance(0.25) {
                rng.range(4, 16)
            } else {
                rng.range(0, 4)
            },
            snapshot_interval_entries: rng.range(10, 300),
            clients: rng.range(2, 6) as usize,
            pre_vote,
            check_quorum,
            lease_read,
            inflight_messages_max: rng.range(1, 9) as usize,
            // Small batches make followers catch up in steps, which is when commit rules and
            // elections race (the Figure 8 situation).
            append_entries_max: match rng.range(0, 10) {
                0..=2 => 1,
                3..=4 => rng.range(2, 5),
                _ => rng.range(1, 65),
            } as usize,
        }
    }
}

/// Steps after healing before every new request must succeed.
const SETTLE_STEPS: u64 = 300;
/// Steps at the end in which clients start nothing new, so every replica can catch up.
const QUIESCE_STEPS: u64 = 150;
const KEYS: u64 = 4;
/// Extra steps allowed, after the heal phase, for every replica to catch up.
const CATCH_UP_STEPS_MAX: u64 = 3000;
const READIES_PER_EVENT_MAX: usize = 64;

// ----- network ---------------------------------------------------------------------------

struct Packet {
    at: u64,
    seq: u64,
    message: Message,
    snapshot: Option<Arc<Kv>>,
}

impl PartialEq for Packet {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Packet {}
impl PartialOrd for Packet {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Packet {
    // BinaryHeap is a max-heap: reverse, so the earliest packet comes first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Network {
    in_flight: BinaryHeap<Packet>,
    seq: u64,
    /// Directed links that drop everything.
    blocked: BTreeSet<(NodeId, NodeId)>,
    loss: f64,
    duplication: f64,
    delay_ticks_max: u64,
}

impl Network {
    fn send(
        &mut self,
        rng: &mut SplitMix64,
        now: u64,
        message: Message,
        snapshot: Option<Arc<Kv>>,
        stats: &mut Stats,
    ) {
        stats.messages_sent += 1;
        if self.blocked.contains(&(message.from, message.to)) || rng.chance(self.loss) {
            return;
        }
        let copies = if rng.chance(self.duplication) { 2 } else { 1 };
        for _ in 0..copies {
            self.seq += 1;
            self.in_flight.push(Packet {
                at: now + rng.range(1, self.delay_ticks_max + 1),
                seq: self.seq,
                message: message.clone(),
                snapshot: snapshot.clone(),
            });
        }
    }

    fn pop_due(&mut self, now: u64) -> Option<Packet> {
        if self.in_flight.peek().is_some_and(|p| p.at <= now) {
            self.in_flight.pop()
        } else {
            None
        }
    }
}

// ----- nodes -----------------------------------------------------------------------------

/// A write the node made to its store that a crash may lose until it is synced.
#[derive(Clone)]
enum DiskOp {
    HardState(HardState),
    Append(Vec<Entry>),
    InstallSnapshot(SnapshotMeta, Arc<Kv>),
    Compact(SnapshotMeta, Arc<Kv>),
}

struct Disk {
    log: MemLog,
    snapshot_data: Arc<Kv>,
}

impl Disk {
    fn apply(&mut self, op: &DiskOp) {
        match op {
            DiskOp::HardState(hs) => self.log.set_hard_state(*hs),
            DiskOp::Append(entries) => self.log.append(entries),
            DiskOp::InstallSnapshot(meta, data) => {
                self.log.install_snapshot(meta.clone());
                self.snapshot_data = data.clone();
            }
            DiskOp::Compact(meta, data) => {
                self.log.compact(meta.clone());
                self.snapshot_data = data.clone();
            }
        }
    }
}

struct PendingSync {
    due: u64,
    journal_upto: usize,
    seq: u64,
    messages: Vec<Message>,
}

enum Outcome {
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

struct SimNode {
    id: NodeId,
    raw: Option<RawNode<MemLog>>,
    incarnation: u64,
    durable: Disk,
    journal: Vec<DiskOp>,
    syncs: VecDeque<PendingSync>,
    kv: Kv,
    snapshot_data: Arc<Kv>,
    incoming_snapshots: VecDeque<(Index, Term, Arc<Kv>)>,
    pending_writes: BTreeMap<Index, (Term, u64)>,
    pending_reads: BTreeMap<u64, u8>,
    paused_until: u64,
    /// Ticks that elapsed while the process was paused, delivered when it resumes.
    ticks_owed: u64,
    restart_at: u64,
    /// This node's disk: on slow-disk seeds some nodes are slow and some fast, so a leader's
    /// own sync can finish after its followers' acknowledgements.
    sync_delay_ticks_max: u64,
    last_seen: (Term, Index, Index),
}

/// What a node's event needs from the world.
struct Ctx<'a> {
    step: u64,
    rng: &'a mut SplitMix64,
    net: &'a mut Network,
    checker: &'a mut Checker,
    stats: &'a mut Stats,
    completions: &'a mut Vec<(u64, Outcome)>,
    /// Set when a leader's commit index advanced during the event.
    leader_committed: bool,
    params: &'a Params,
}

impl SimNode {
    fn config(&self, seed: u64, params: &Params) -> Config {
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

    fn alive(&self) -> bool {
        self.raw.is_some()
    }

    fn running(&self, step: u64) -> bool {
        self.raw.is_some() && self.paused_until <= step
    }

    fn crash(&mut self, rng: &mut SplitMix64) {
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

    fn restart(&mut self, seed: u64, params: &Params, checker: &mut Checker, step: u64) {
        self.incarnation += 1;
        let log = self.durable.log.clone();
        checker.on_durable_hard_state(step, self.id, log.hard_state());
        if log.snapshot_meta().index != self.durable.snapshot_data.applied {
            checker.fail(
                step,
                format!("node {}: durable snapshot meta and data disagree", self.id),
            );
        }
        match RawNode::new(self.config(seed, params), log) {
            Ok(raw) => self.raw = Some(raw),
            Err(e) => checker.fail(step, format!("node {} cannot restart: {e}", self.id)),
        }
        self.kv = (*self.durable.snapshot_data).clone();
        self.snapshot_data = self.durable.snapshot_data.clone();
        self.last_seen = (0, 0, 0);
    }

    /// Carries out every Ready the node has, as a host would.
    fn drive(&mut self, ctx: &mut Ctx) {
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
                self.journal
                    .push(DiskOp::InstallSnapshot(meta.clone(), data.clone()));
                self.kv = (*data).clone();
                self.snapshot_data = data;
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
                let snapshot = matches!(m.body, MessageBody::InstallSnapshot { .. })
                    .then(|| self.snapshot_data.clone());
                ctx.net.send(ctx.rng, ctx.step, m, snapshot, ctx.stats);
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

            // Compaction: snapshot the state machine every so many applied entries.
            let snapshot_index = raw.storage().snapshot_meta().index;
            if self.kv.applied >= snapshot_index + ctx.params.snapshot_interval_entries
                && self.kv.applied == raw.applied_index()
            {
                let index = self.kv.applied;
                let meta = SnapshotMeta {
                    index,
                    term: raw.log_term(index).expect("applied entry is in the log"),
                    membership: raw.applied_membership().clone(),
                };
                let data = Arc::new(self.kv.clone());
                raw.storage_mut().compact(meta.clone());
                self.journal.push(DiskOp::Compact(meta, data.clone()));
                self.snapshot_data = data;
                ctx.stats.snapshots_taken += 1;
            }
        }
        self.answer_pending_if_removed(ctx);
    }

    /// A node removed from the cluster stops receiving entries, so what it still has pending
    /// may never be applied here: it answers "outcome unknown" at once, as a real node must,
    /// and the client retries elsewhere with the same request.
    fn answer_pending_if_removed(&mut self, ctx: &mut Ctx) {
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
    fn complete_syncs(&mut self, ctx: &mut Ctx) {
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

// ----- clients ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum OpKind {
    Write { key: u8, value: u64 },
    Read { key: u8 },
}

struct OpInFlight {
    op_id: u64,
    kind: OpKind,
    invoked: u64,
    /// The highest log position of any operation completed before this one was invoked.
    required: Index,
    deadline: u64,
}

struct Client {
    current: Option<OpInFlight>,
    target: NodeId,
    next_action_at: u64,
}

// ----- the world -------------------------------------------------------------------------

struct World {
    seed: u64,
    step: u64,
    rng: SplitMix64,
    params: Params,
    nodes: BTreeMap<NodeId, SimNode>,
    net: Network,
    clients: Vec<Client>,
    checker: Checker,
    stats: Stats,
    next_op_id: u64,
    completed_max: Index,
    completed_max_before_step: Index,
    faults_on: bool,
    heal_step: u64,
    end_step: u64,
    last_leader: Option<(Term, NodeId)>,
    scheduled_crash: Option<(u64, NodeId)>,
    /// A node to cut off at a given step.
    /// A node to cut off at a given step, for so many steps.
    scheduled_isolation: Option<(u64, NodeId, u64)>,
    isolation_ends_at: Option<u64>,
    /// Prints every event to stderr (`SIM_TRACE=1`), for replaying one seed by hand.
    trace: bool,
}

fn describe(m: &Message) -> String {
    let body = match &m.body {
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => format!(
            "Append prev={prev_log_index}/{prev_log_term} n={} [{}] commit={leader_commit}",
            entries.len(),
            entries
                .iter()
                .map(|e| format!("{}/{}", e.index, e.term))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        other => format!("{other:?}"),
    };
    format!("{}->{} t{} {body}", m.from, m.to, m.term)
}

impl World {
    fn new(opts: &SimOptions) -> World {
        let mut rng = SplitMix64::new(opts.seed);
        let params = Params::draw(&mut rng);
        let initial = Membership::new_voters(1..=params.nodes);
        let mut nodes = BTreeMap::new();
        // Two spare nodes start empty and join through membership changes.
        for id in 1..=params.nodes + 2 {
            let log = if id <= params.nodes {
                MemLog::with_snapshot(SnapshotMeta {
                    membership: initial.clone(),
                    ..Default::default()
                })
            } else {
                MemLog::new()
            };
            let empty = Arc::new(Kv::default());
            let mut node = SimNode {
                id,
                raw: None,
                incarnation: 0,
                durable: Disk {
                    log,
                    snapshot_data: empty.clone(),
                },
                journal: Vec::new(),
                syncs: VecDeque::new(),
                kv: Kv::default(),
                snapshot_data: empty,
                incoming_snapshots: VecDeque::new(),
                pending_writes: BTreeMap::new(),
                pending_reads: BTreeMap::new(),
                paused_until: 0,
                ticks_owed: 0,
                restart_at: 0,
                sync_delay_ticks_max: if params.sync_delay_ticks_max > 3 && rng.chance(0.5) {
                    rng.range(0, 2)
                } else {
                    params.sync_delay_ticks_max
                },
                last_seen: (0, 0, 0),
            };
            let mut scratch = Checker::default();
            node.restart(opts.seed, &params, &mut scratch, 0);
            nodes.insert(id, node);
        }
        let clients = (0..params.clients)
            .map(|_| Client {
                current: None,
                target: rng.range(1, params.nodes + 1),
                next_action_at: 0,
            })
            .collect();
        World {
            seed: opts.seed,
            step: 0,
            net: Network {
                in_flight: BinaryHeap::new(),
                seq: 0,
                blocked: BTreeSet::new(),
                loss: params.loss,
                duplication: params.duplication,
                delay_ticks_max: params.delay_ticks_max,
            },
            rng,
            params,
            nodes,
            clients,
            checker: Checker::default(),
            stats: Stats::default(),
            next_op_id: 1,
            completed_max: 0,
            completed_max_before_step: 0,
            faults_on: true,
            heal_step: opts.fault_steps,
            end_step: opts.fault_steps + opts.heal_steps,
            last_leader: None,
            scheduled_crash: None,
            scheduled_isolation: None,
            isolation_ends_at: None,
            trace: std::env::var_os("SIM_TRACE").is_some(),
        }
    }

    /// Runs `f` on one node with the world's context, then settles client completions.
    fn with_node(&mut self, id: NodeId, f: impl FnOnce(&mut SimNode, &mut Ctx)) {
        let mut completions = Vec::new();
        let leader_committed;
        {
            let node = self.nodes.get_mut(&id).expect("known node");
            let mut ctx = Ctx {
                step: self.step,
                rng: &mut self.rng,
                net: &mut self.net,
                checker: &mut self.checker,
                stats: &mut self.stats,
                completions: &mut completions,
                leader_committed: false,
                params: &self.params,
            };
            f(node, &mut ctx);
            leader_committed = ctx.leader_committed;
        }
        if leader_committed && self.faults_on && self.rng.chance(self.params.commit_isolation) {
            // Cut the leader off right after it commits: what it sent last is lost too.
            self.isolate(id);
        }
        for (op_id, outcome) in completions {
            self.complete(op_id, outcome);
        }
    }

    fn run(&mut self) {
        while self.step < self.end_step && self.checker.violations.is_empty() {
            self.step_once();
        }
        // Slow settings (one entry per message, a slow disk) may need longer to catch every
        // replica up; the bound is still finite.
        while self.checker.violations.is_empty()
            && self.step < self.end_step + CATCH_UP_STEPS_MAX
            && !self.caught_up()
        {
            self.step_once();
        }
        if self.checker.violations.is_empty() {
            self.final_checks();
        }
    }

    fn caught_up(&self) -> bool {
        let Some(leader) = self.current_leader() else {
            return false;
        };
        let raw = self.nodes[&leader].raw.as_ref().expect("alive");
        let commit = raw.commit_index();
        commit == raw.last_index()
            && raw.membership().nodes().iter().all(|id| {
                self.nodes[id]
                    .raw
                    .as_ref()
                    .is_some_and(|r| r.applied_index() == commit)
            })
    }

    fn step_once(&mut self) {
        {
            self.step += 1;
            if self.step == self.heal_step + 1 {
                self.heal();
            }
            if self.faults_on {
                self.inject_faults();
            }
            // A resumed process first catches up on the ticks its clock counted while it was
            // stopped, as a host driving ticks from a monotonic clock must (lease reads depend
            // on it), before it handles anything else.
            for id in self.nodes.keys().copied().collect::<Vec<_>>() {
                let node = &self.nodes[&id];
                if node.running(self.step) && node.ticks_owed > 0 {
                    self.with_node(id, |n, ctx| {
                        for _ in 0..std::mem::take(&mut n.ticks_owed) {
                            n.raw.as_mut().expect("running").tick();
                        }
                        n.drive(ctx);
                    });
                }
            }
            while let Some(packet) = self.net.pop_due(self.step) {
                self.deliver(packet);
            }
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for &id in &ids {
                if self.nodes[&id].running(self.step) {
                    self.with_node(id, |n, ctx| {
                        n.raw.as_mut().expect("running").tick();
                        n.drive(ctx);
                    });
                } else if self.nodes[&id].alive() {
                    self.nodes.get_mut(&id).expect("known").ticks_owed += 1;
                }
            }
            for &id in &ids {
                if self.nodes[&id].running(self.step) {
                    self.with_node(id, |n, ctx| n.complete_syncs(ctx));
                }
                let node = &self.nodes[&id];
                if !node.alive() && node.restart_at <= self.step {
                    let (seed, step) = (self.seed, self.step);
                    let params = self.params.clone();
                    let node = self.nodes.get_mut(&id).expect("known");
                    node.restart(seed, &params, &mut self.checker, step);
                }
            }
            self.track_leader();
            self.run_clients();
            self.completed_max_before_step = self.completed_max;
        }
    }

    fn track_leader(&mut self) {
        let leader = self
            .nodes
            .values()
            .filter_map(|n| {
                n.raw
                    .as_ref()
                    .filter(|r| r.is_leader())
                    .map(|r| (r.term(), n.id))
            })
            .max();
        if leader.is_some() && leader != self.last_leader {
            self.stats.elections += 1;
            self.last_leader = leader;
            let id = leader.map(|(_, id)| id).expect("checked");
            if self.faults_on && self.rng.chance(self.params.new_leader_crash) {
                let at = self.step + self.rng.range(0, 8);
                self.scheduled_crash = Some((at, id));
            }
            if self.faults_on && self.rng.chance(self.params.new_leader_isolation) {
                self.isolate(id);
            }
            if self.faults_on
                && self.params.membership_rate > 0.0
                && self.rng.chance(self.params.new_leader_membership)
            {
                self.change_membership();
            }
        }
    }

    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.running(self.step))
            .filter_map(|n| {
                n.raw
                    .as_ref()
                    .filter(|r| r.is_leader())
                    .map(|r| (r.term(), n.id))
            })
            .max()
            .map(|(_, id)| id)
    }

    fn deliver(&mut self, packet: Packet) {
        let m = &packet.message;
        if self.net.blocked.contains(&(m.from, m.to)) {
            return;
        }
        let Some(node) = self.nodes.get_mut(&m.to) else {
            return;
        };
        if !node.alive() {
            return;
        }
        if node.paused_until > self.step {
            // A stopped process's socket buffers hold the message until it resumes.
            let at = node.paused_until;
            self.net.in_flight.push(Packet { at, ..packet });
            return;
        }
        if self.trace {
            eprintln!("{} deliver {}", self.step, describe(&packet.message));
        }
        let trace = self.trace;
        let step = self.step;
        self.with_node(packet.message.to, |n, ctx| {
            if let (MessageBody::InstallSnapshot { meta }, Some(data)) =
                (&packet.message.body, &packet.snapshot)
            {
                if n.incoming_snapshots.len() >= 4 {
                    n.incoming_snapshots.pop_front();
                }
                n.incoming_snapshots
                    .push_back((meta.index, meta.term, data.clone()));
            }
            let raw = n.raw.as_mut().expect("alive");
            if let Err(e) = raw.step(packet.message) {
                ctx.checker
                    .fail(ctx.step, format!("node {}: step failed: {e}", n.id));
            }
            n.drive(ctx);
            if trace {
                if let Some(r) = n.raw.as_ref() {
                    eprintln!(
                        "{step}   node {} {:?} t{} commit={} last={}/{:?} persisted={}",
                        n.id,
                        r.role(),
                        r.term(),
                        r.commit_index(),
                        r.last_index(),
                        r.log_term(r.last_index()),
                        r.persisted_index()
                    );
                }
            }
        });
    }

    // ----- faults ----------------------------------------------------------------------

    fn random_node(&mut self, filter: impl Fn(&SimNode) -> bool) -> Option<NodeId> {
        let ids: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| filter(n))
            .map(|n| n.id)
            .collect();
        if ids.is_empty() {
            return None;
        }
        Some(ids[self.rng.range(0, ids.len() as u64) as usize])
    }

    /// Cuts `id` off from everyone for a while. Messages in flight are dropped on delivery too.
    fn isolate(&mut self, id: NodeId) {
        let steps = self.rng.range(5, 80);
        self.isolate_for(id, steps);
    }

    /// Cuts `id` off from everyone for `steps`.
    fn isolate_for(&mut self, id: NodeId, steps: u64) {
        for other in self.nodes.keys().copied().collect::<Vec<_>>() {
            if other != id {
                self.net.blocked.insert((id, other));
                self.net.blocked.insert((other, id));
            }
        }
        self.isolation_ends_at = Some(self.step + steps);
        self.stats.partitions += 1;
    }

    fn crash_node(&mut self, id: NodeId, restart_in: u64) {
        let step = self.step;
        let node = self.nodes.get_mut(&id).expect("known");
        if !node.alive() {
            return;
        }
        node.crash(&mut self.rng);
        node.restart_at = step + restart_in;
        self.stats.crashes += 1;
        if self.trace {
            let log = &node.durable.log;
            eprintln!(
                "{step} CRASH node {id}: durable last {}/{:?} hs {:?}",
                log.last_index(),
                log.term(log.last_index()),
                log.hard_state()
            );
        }
    }

    fn inject_faults(&mut self) {
        let step = self.step;
        if self.isolation_ends_at.is_some_and(|at| at <= step) {
            self.isolation_ends_at = None;
            self.net.blocked.clear();
        }
        if let Some((at, id, steps)) = self.scheduled_isolation {
            if at <= step {
                self.scheduled_isolation = None;
                self.isolate_for(id, steps);
            }
        }
        if let Some((at, id)) = self.scheduled_crash {
            if at <= step {
                self.scheduled_crash = None;
                let restart_in = self.rng.range(5, 60);
                self.crash_node(id, restart_in);
            }
        }
        if self.rng.chance(self.params.crash_rate) {
            // The leader is crashed more often than its share.
            let target = if self.rng.chance(0.5) {
                self.current_leader()
            } else {
                self.random_node(|n| n.alive())
            };
            if let Some(id) = target {
                let restart_in = self.rng.range(5, 150);
                self.crash_node(id, restart_in);
            }
        }
        if self.rng.chance(self.params.partition_rate) {
            self.partition();
        }
        if self.rng.chance(0.004) {
            self.net.blocked.clear();
        }
        if self.rng.chance(self.params.pause_rate) {
            if let Some(id) = self.random_node(|n| n.alive()) {
                let until = step + self.rng.range(5, 60);
                self.nodes.get_mut(&id).expect("known").paused_until = until;
                self.stats.pauses += 1;
            }
        }
        if self.rng.chance(self.params.membership_rate) {
            self.change_membership();
        }
        if self.rng.chance(self.params.transfer_rate) {
            if let Some(leader) = self.current_leader() {
                let voters: Vec<NodeId> = self.nodes[&leader]
                    .raw
                    .as_ref()
                    .expect("alive")
                    .membership()
                    .voters
                    .iter()
                    .copied()
                    .collect();
                let to = voters[self.rng.range(0, voters.len() as u64) as usize];
                if self
                    .nodes
                    .get_mut(&leader)
                    .and_then(|n| n.raw.as_mut())
                    .expect("alive")
                    .transfer_leader(to)
                    .is_ok()
                {
                    self.stats.transfers += 1;
                }
                self.with_node(leader, |n, ctx| n.drive(ctx));
            }
        }
    }

    fn partition(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let n = ids.len() as u64;
        self.stats.partitions += 1;
        let cut = |blocked: &mut BTreeSet<(NodeId, NodeId)>, a: NodeId, b: NodeId| {
            blocked.insert((a, b));
            blocked.insert((b, a));
        };
        match self.rng.range(0, 5) {
            0 => self.net.blocked.clear(),
            1 => {
                // Isolate one node (often the leader).
                let victim = if self.rng.chance(0.5) {
                    self.current_leader().unwrap_or(ids[0])
                } else {
                    ids[self.rng.range(0, n) as usize]
                };
                self.net.blocked.clear();
                for &other in &ids {
                    if other != victim {
                        cut(&mut self.net.blocked, victim, other);
                    }
                }
            }
            2 => {
                // Two random sides.
                self.net.blocked.clear();
                let side: Vec<bool> = ids.iter().map(|_| self.rng.chance(0.5)).collect();
                for (i, &a) in ids.iter().enumerate() {
                    for (j, &b) in ids.iter().enumerate() {
                        if side[i] != side[j] {
                            self.net.blocked.insert((a, b));
                        }
                    }
                }
            }
            3 => {
                // One-way: a stops hearing b, while b still hears a.
                let a = ids[self.rng.range(0, n) as usize];
                let b = ids[self.rng.range(0, n) as usize];
                if a != b {
                    self.net.blocked.insert((b, a));
                }
            }
            _ => {
                // A bridge: two sides that cannot talk, and one node that talks to both.
                self.net.blocked.clear();
                let bridge = ids[self.rng.range(0, n) as usize];
                let side: Vec<bool> = ids.iter().map(|_| self.rng.chance(0.5)).collect();
                for (i, &a) in ids.iter().enumerate() {
                    for (j, &b) in ids.iter().enumerate() {
                        if side[i] != side[j] && a != bridge && b != bridge {
                            self.net.blocked.insert((a, b));
                        }
                    }
                }
            }
        }
    }

    fn change_membership(&mut self) {
        let Some(leader) = self.current_leader() else {
            return;
        };
        let m = self.nodes[&leader]
            .raw
            .as_ref()
            .expect("alive")
            .membership()
            .clone();
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        let spares: Vec<NodeId> = all.iter().copied().filter(|&id| !m.contains(id)).collect();
        let learners: Vec<NodeId> = m.learners.iter().copied().collect();
        let voters: Vec<NodeId> = m.voters.iter().copied().collect();
        let pick = |rng: &mut SplitMix64, v: &[NodeId]| v[rng.range(0, v.len() as u64) as usize];
        if !m.is_joint() && self.rng.chance(self.params.even_walk) {
            // Single-server changes that keep returning to an even number of voters, where an
            // addition and a removal from the same configuration have disjoint majorities.
            let add_learner = !spares.is_empty() && (learners.is_empty() || self.rng.chance(0.2));
            let change = if voters.len() % 2 == 0 {
                if !learners.is_empty() && self.rng.chance(0.5) {
                    ConfChange::AddVoter(pick(&mut self.rng, &learners))
                } else if add_learner && self.rng.chance(0.3) {
                    ConfChange::AddLearner(pick(&mut self.rng, &spares))
                } else if voters.len() > 3 {
                    ConfChange::Remove(pick(&mut self.rng, &voters))
                } else {
                    return;
                }
            } else if add_learner {
                ConfChange::AddLearner(pick(&mut self.rng, &spares))
            } else if !learners.is_empty() {
                ConfChange::AddVoter(pick(&mut self.rng, &learners))
            } else if voters.len() > 3 {
                ConfChange::Remove(pick(&mut self.rng, &voters))
            } else {
                return;
            };
            self.propose_membership(leader, &[change]);
            return;
        }
        let changes = match self.rng.range(0, 5) {
            0 if !spares.is_empty() => vec![ConfChange::AddLearner(pick(&mut self.rng, &spares))],
            1 if !learners.is_empty() => vec![ConfChange::AddVoter(pick(&mut self.rng, &learners))],
            2 if voters.len() > 3 => vec![ConfChange::Remove(pick(&mut self.rng, &voters))],
            3 if !spares.is_empty() => {
                // Replace a voter: two voters change, so this goes through joint consensus.
                vec![
                    ConfChange::AddVoter(pick(&mut self.rng, &spares)),
                    ConfChange::Remove(pick(&mut self.rng, &voters)),
                ]
            }
            4 if !learners.is_empty() => vec![ConfChange::Remove(pick(&mut self.rng, &learners))],
            _ => return,
        };
        self.propose_membership(leader, &changes);
    }

    /// Asks `leader` to change the membership, and may cut the network around the change.
    fn propose_membership(&mut self, leader: NodeId, changes: &[ConfChange]) {
        let raw = self
            .nodes
            .get_mut(&leader)
            .and_then(|n| n.raw.as_mut())
            .expect("alive");
        if raw.change_membership(changes).is_ok() {
            self.stats.membership_changes += 1;
            // A change while some node holds a configuration this leader never saw is where
            // single-server changes can go wrong: split the network along that knowledge.
            let stale = self.nodes_holding_unknown_config(leader);
            let split = if stale.is_empty() {
                self.params.membership_split
            } else {
                self.params.stale_config_split
            };
            if self.rng.chance(split) {
                self.split_along_membership(leader, &stale);
            } else if self.rng.chance(self.params.membership_isolation) {
                let at = self.step + self.rng.range(0, 3);
                let steps = self.cut_steps();
                self.scheduled_isolation = Some((at, leader, steps));
            }
        }
        self.with_node(leader, |n, ctx| n.drive(ctx));
    }

    /// Splits the network in two along membership knowledge: `leader` with a bare majority
    /// of each half of its latest configuration against everyone else. The majority is drawn
    /// at random, first among the nodes that hold no configuration entry the leader lacks, so
    /// that nodes holding an earlier leader's uncommitted change end up on the other side,
    /// with the nodes the leader's change removed. The cut lasts a few election timeouts, long
    /// enough for the other side to elect a leader of its own if it can.
    fn split_along_membership(&mut self, leader: NodeId, lacked: &BTreeSet<NodeId>) {
        let m = self.nodes[&leader]
            .raw
            .as_ref()
            .expect("alive")
            .membership()
            .clone();
        // Voters of the configurations the leader does not know: kept off its side if it
        // can do without them, so that the other side may hold a majority of them.
        let stale_voters: BTreeSet<NodeId> = lacked
            .iter()
            .filter_map(|id| self.nodes[id].raw.as_ref())
            .flat_map(|r| {
                let m = r.membership();
                m.voters
                    .union(&m.voters_outgoing)
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        let rank = |id: &NodeId| (lacked.contains(id), stale_voters.contains(id));
        let mut side = BTreeSet::from([leader]);
        for half in [&m.voters, &m.voters_outgoing]
            .into_iter()
            .filter(|h| !h.is_empty())
        {
            let mut others: Vec<NodeId> = half
                .iter()
                .copied()
                .filter(|id| !side.contains(id))
                .collect();
            while side.iter().filter(|id| half.contains(id)).count() <= half.len() / 2 {
                let best = others.iter().map(rank).min().expect("a majority exists");
                let pool: Vec<usize> = (0..others.len())
                    .filter(|&i| rank(&others[i]) == best)
                    .collect();
                let i = pool[self.rng.range(0, pool.len() as u64) as usize];
                side.insert(others.swap_remove(i));
            }
        }
        let steps = self.cut_steps();
        self.cut_between(&side, steps);
    }

    /// The nodes whose latest configuration entry is not in `leader`'s log: an earlier
    /// leader's change that never reached a majority (or a later one).
    fn nodes_holding_unknown_config(&self, leader: NodeId) -> BTreeSet<NodeId> {
        let raw = self.nodes[&leader].raw.as_ref().expect("alive");
        self.nodes
            .values()
            .filter(|n| {
                n.raw.as_ref().is_some_and(|r| {
                    let (index, term) = latest_config_entry(r);
                    index >= raw.first_index() && raw.log_term(index) != Some(term)
                })
            })
            .map(|n| n.id)
            .collect()
    }

    /// Replaces every cut link by a partition between `side` and the rest, until `steps` from
    /// now. Messages in flight across it are dropped on delivery.
    fn cut_between(&mut self, side: &BTreeSet<NodeId>, steps: u64) {
        self.net.blocked.clear();
        for &a in self.nodes.keys() {
            for &b in self.nodes.keys() {
                if side.contains(&a) != side.contains(&b) {
                    self.net.blocked.insert((a, b));
                }
            }
        }
        if self.trace {
            eprintln!(
                "{} SPLIT {side:?} from the rest for {steps} steps",
                self.step
            );
        }
        self.isolation_ends_at = Some(self.step + steps);
        self.stats.partitions += 1;
    }

    /// How long a cut made around a membership change lasts: a few election timeouts.
    fn cut_steps(&mut self) -> u64 {
        let timeout = self.params.election_timeout_ticks_min() as u64;
        self.rng.range(2 * timeout, 8 * timeout)
    }

    fn heal(&mut self) {
        self.faults_on = false;
        self.net.blocked.clear();
        self.net.loss = 0.0;
        self.net.duplication = 0.0;
        let step = self.step;
        for node in self.nodes.values_mut() {
            node.paused_until = node.paused_until.min(step);
            node.restart_at = node.restart_at.min(step);
        }
    }

    // ----- clients ---------------------------------------------------------------------

    fn run_clients(&mut self) {
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

    fn random_member(&mut self) -> NodeId {
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

    fn invoke(&mut self, c: usize) {
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

    fn completions_failed(&mut self, op_id: u64) {
        self.complete(op_id, Outcome::Failed { leader: None });
    }

    fn complete(&mut self, op_id: u64, outcome: Outcome) {
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

    fn final_checks(&mut self) {
        let step = self.step;
        if std::env::var_os("SIM_DEBUG").is_some() {
            for n in self.nodes.values() {
                if let Some(r) = n.raw.as_ref() {
                    eprintln!("{:?}", r.status());
                }
            }
        }
        self.checker.check_acked_writes(step);
        let Some(leader) = self.current_leader() else {
            self.checker
                .fail(step, "liveness: no leader after the faults healed".into());
            return;
        };
        let raw = self.nodes[&leader].raw.as_ref().expect("alive");
        let (commit, last, members) = (
            raw.commit_index(),
            raw.last_index(),
            raw.membership().nodes(),
        );
        if commit != last {
            self.checker.fail(
                step,
                format!(
                    "liveness: leader {leader} still has uncommitted entries ({commit} < {last})"
                ),
            );
        }
        let want = &self.nodes[&leader].kv;
        for id in members {
            let node = &self.nodes[&id];
            let Some(raw) = node.raw.as_ref() else {
                continue;
            };
            if raw.applied_index() != commit || node.kv.registers != want.registers {
                let what = format!(
                    "liveness: member {id} has applied {} (leader {leader} committed {commit}) or diverges",
                    raw.applied_index()
                );
                self.checker.fail(step, what);
            }
        }
    }
}

/// The index and term of the latest configuration entry `raw` holds (that of its snapshot when
/// its log holds none).
fn latest_config_entry(raw: &RawNode<MemLog>) -> (Index, Term) {
    let log = raw.storage();
    log.all_entries()
        .iter()
        .rev()
        .find(|e| matches!(e.payload, EntryPayload::Membership(_)))
        .map_or_else(
            || {
                let meta = log.snapshot_meta();
                (meta.index, meta.term)
            },
            |e| (e.index, e.term),
        )
}

/// Runs one seed to the end (or its first violation).
pub fn run_seed(opts: &SimOptions) -> SeedReport {
    let mut world = World::new(opts);
    let params = format!("{:?}", world.params);
    crate::mutant::with(opts.mutant, || world.run());
    SeedReport {
        seed: opts.seed,
        steps: world.step,
        violations: world.checker.violations,
        stats: world.stats,
        params,
    }
}

/// Runs one seed, turning a panic (a failed assertion in the core) into a violation.
pub fn run_seed_caught(opts: &SimOptions) -> SeedReport {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_seed(opts))) {
        Ok(report) => report,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            SeedReport {
                seed: opts.seed,
                steps: 0,
                violations: vec![format!("panic: {what}")],
                stats: Stats::default(),
                params: String::new(),
            }
        }
    }
}

/// The outcome of many seeds.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Seeds run.
    pub seeds: u64,
    /// Steps run, over all seeds.
    pub steps: u64,
    /// Failing seeds with their first violations.
    pub failures: Vec<SeedReport>,
}

impl Summary {
    /// Violations found, over all seeds.
    pub fn violations(&self) -> usize {
        self.failures.iter().map(|r| r.violations.len()).sum()
    }

    /// The line `cargo xtask sim` ends with.
    pub fn line(&self) -> String {
        format!(
            "sim: seeds={} steps={} violations={}",
            self.seeds,
            self.steps,
            self.violations()
        )
    }
}

/// Runs `count` seeds from `first` on `threads` threads. `on_failure` is called for each
/// failing seed as soon as it fails.
pub fn run_seeds(
    first: u64,
    count: u64,
    threads: usize,
    template: &SimOptions,
    on_failure: &(dyn Fn(&SeedReport) + Sync),
) -> Summary {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    let next = AtomicU64::new(0);
    let summary = Mutex::new(Summary::default());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let opts = SimOptions {
                    seed: first + i,
                    ..template.clone()
                };
                let report = run_seed_caught(&opts);
                if !report.violations.is_empty() {
                    on_failure(&report);
                }
                let mut s = summary.lock().expect("no panics while holding the lock");
                s.seeds += 1;
                s.steps += report.steps;
                if !report.violations.is_empty() {
                    s.failures.push(report);
                }
            });
        }
    });
    let mut summary = summary.into_inner().expect("threads joined");
    summary.failures.sort_by_key(|r| r.seed);
    summary
}
