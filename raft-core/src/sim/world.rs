//! The simulated world: nodes, network, clients and the checker, advanced one step (tick) at a
//! time; every random choice comes from the seed.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;

use crate::membership::Membership;
use crate::message::{Message, MessageBody};
use crate::rng::SplitMix64;
use crate::storage::{LogStore, MemLog};
use crate::types::{Index, NodeId, SnapshotMeta, Term};

use super::checker::Checker;
use super::clients::Client;
use super::kv::Kv;
use super::network::{Network, Packet};
use super::node::{Ctx, Disk, SimNode, Snapshot};
use super::params::Params;
use super::{SimOptions, Stats};

/// Extra steps allowed, after the heal phase, for every replica to catch up.
const CATCH_UP_STEPS_MAX: u64 = 3000;

pub(super) struct World {
    pub(super) seed: u64,
    pub(super) step: u64,
    pub(super) rng: SplitMix64,
    pub(super) params: Params,
    pub(super) nodes: BTreeMap<NodeId, SimNode>,
    pub(super) net: Network,
    pub(super) clients: Vec<Client>,
    pub(super) checker: Checker,
    pub(super) stats: Stats,
    pub(super) next_op_id: u64,
    pub(super) completed_max: Index,
    pub(super) completed_max_before_step: Index,
    pub(super) faults_on: bool,
    pub(super) heal_step: u64,
    pub(super) end_step: u64,
    pub(super) last_leader: Option<(Term, NodeId)>,
    pub(super) scheduled_crash: Option<(u64, NodeId)>,
    /// A node to cut off at a given step.
    /// A node to cut off at a given step, for so many steps.
    pub(super) scheduled_isolation: Option<(u64, NodeId, u64)>,
    pub(super) isolation_ends_at: Option<u64>,
    /// Prints every event to stderr (`SIM_TRACE=1`), for replaying one seed by hand.
    pub(super) trace: bool,
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
    pub(super) fn new(opts: &SimOptions) -> World {
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
            let empty = Snapshot {
                meta: log.snapshot_meta(),
                data: Arc::new(Kv::default()),
            };
            let mut node = SimNode {
                id,
                raw: None,
                incarnation: 0,
                durable: Disk {
                    log,
                    snapshot: empty.clone(),
                },
                journal: Vec::new(),
                syncs: VecDeque::new(),
                kv: Kv::default(),
                snapshot: empty,
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
    pub(super) fn with_node(&mut self, id: NodeId, f: impl FnOnce(&mut SimNode, &mut Ctx)) {
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

    pub(super) fn run(&mut self) {
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

    pub(super) fn caught_up(&self) -> bool {
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

    pub(super) fn step_once(&mut self) {
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

    pub(super) fn track_leader(&mut self) {
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

    pub(super) fn current_leader(&self) -> Option<NodeId> {
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

    pub(super) fn deliver(&mut self, packet: Packet) {
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

    pub(super) fn final_checks(&mut self) {
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
