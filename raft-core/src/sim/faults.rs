//! The faults the world injects: crashes, partitions, pauses, isolation of new leaders,
//! membership changes (with the network cut along them) and leadership transfers.

use std::collections::BTreeSet;

use crate::membership::ConfChange;
use crate::rng::SplitMix64;
use crate::storage::{LogStore, MemLog};
use crate::types::{EntryPayload, Index, NodeId, Term};
use crate::RawNode;

use super::node::SimNode;
use super::world::World;

impl World {
    pub(super) fn random_node(&mut self, filter: impl Fn(&SimNode) -> bool) -> Option<NodeId> {
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
    pub(super) fn isolate(&mut self, id: NodeId) {
        let steps = self.rng.range(5, 80);
        self.isolate_for(id, steps);
    }

    /// Cuts `id` off from everyone for `steps`.
    pub(super) fn isolate_for(&mut self, id: NodeId, steps: u64) {
        for other in self.nodes.keys().copied().collect::<Vec<_>>() {
            if other != id {
                self.net.blocked.insert((id, other));
                self.net.blocked.insert((other, id));
            }
        }
        self.isolation_ends_at = Some(self.step + steps);
        self.stats.partitions += 1;
    }

    pub(super) fn crash_node(&mut self, id: NodeId, restart_in: u64) {
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

    pub(super) fn inject_faults(&mut self) {
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

    pub(super) fn partition(&mut self) {
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

    pub(super) fn change_membership(&mut self) {
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
    pub(super) fn propose_membership(&mut self, leader: NodeId, changes: &[ConfChange]) {
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
    pub(super) fn split_along_membership(&mut self, leader: NodeId, lacked: &BTreeSet<NodeId>) {
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
    pub(super) fn nodes_holding_unknown_config(&self, leader: NodeId) -> BTreeSet<NodeId> {
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
    pub(super) fn cut_between(&mut self, side: &BTreeSet<NodeId>, steps: u64) {
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
    pub(super) fn cut_steps(&mut self) -> u64 {
        let timeout = self.params.election_timeout_ticks_min() as u64;
        self.rng.range(2 * timeout, 8 * timeout)
    }

    pub(super) fn heal(&mut self) {
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
