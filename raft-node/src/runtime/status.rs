//! What the runtime observes and reports: role and leader changes, the quorum situation
//! when no leader can be elected, peer contact times, and the node's status view.

use std::time::Duration;

use raft_core::{MessageBody, Role};
use raft_proto::{LeaderChange, LoadCounters, MemberAddr, NodeId, NodeStatus, PeerInfo};
use tokio::time::Instant;

use crate::anti_entropy::digest_infos;
use crate::metrics::Metrics;
use crate::store::NodeStore;

use super::{HostedMachine, Runtime};

/// Leader changes a node keeps (and reports in its status) at most.
pub const LEADER_CHANGES_KEPT_MAX: usize = 32;

/// One peer's contact times, as the status view shows them.
#[derive(Default)]
pub(super) struct PeerTiming {
    heard_at: Option<Instant>,
    /// The heartbeat being timed: its `read_seq` and when it left. One at a time per peer;
    /// a heartbeat whose answer is lost is replaced after [`RTT_PROBE_STALE_MS`].
    probe: Option<(u64, Instant)>,
    rtt_us: Option<u64>,
}

/// A timed heartbeat unanswered this long is given up, so that a lost answer does not
/// stop round-trip measurement.
const RTT_PROBE_STALE_MS: u64 = 5_000;

impl PeerTiming {
    pub(super) fn on_send(&mut self, read_seq: u64, now: Instant) {
        let stale = self.probe.is_some_and(|(_, at)| {
            now.duration_since(at) > Duration::from_millis(RTT_PROBE_STALE_MS)
        });
        if self.probe.is_none() || stale {
            self.probe = Some((read_seq, now));
        }
    }

    pub(super) fn on_receive(&mut self, body: &MessageBody, now: Instant) {
        self.heard_at = Some(now);
        if let MessageBody::HeartbeatResponse { read_seq } = body {
            if let Some((seq, at)) = self.probe {
                if seq == *read_seq {
                    self.rtt_us =
                        Some(u64::try_from(now.duration_since(at).as_micros()).unwrap_or(u64::MAX));
                    self.probe = None;
                }
            }
        }
    }
}

impl<S: NodeStore, M: HostedMachine> Runtime<S, M> {
    /// Ticks within which a peer heard from counts as reachable: two election timeouts, as
    /// a live peer without a leader sends a (pre-)vote request at least once per timeout.
    fn reachable_ticks_max(&self) -> u64 {
        2 * u64::from(self.config.election_timeout_ticks_max.max(1))
    }

    /// The voters this node heard from recently (itself included), the number of voters,
    /// and how many make a majority.
    fn voters_reachable(&self) -> (Vec<NodeId>, usize, usize) {
        let voters = &self.raw.membership().voters;
        let recent = self.reachable_ticks_max();
        let reachable: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|&v| {
                v == self.raw.id()
                    || self
                        .peer_heard_tick
                        .get(&v)
                        .copied()
                        .flatten()
                        .is_some_and(|t| self.ticks.saturating_sub(t) <= recent)
            })
            .collect();
        (reachable, voters.len(), voters.len() / 2 + 1)
    }

    /// The quorum situation in words, for errors: "no leader: 1 of 3 voters reachable ...".
    pub(super) fn quorum_situation(&self) -> String {
        let (reachable, voters, needed) = self.voters_reachable();
        let heard = format!(
            "{} of {voters} voters reachable from node {} ({reachable:?}; a majority is {needed})",
            reachable.len(),
            self.raw.id()
        );
        match self.raw.leader() {
            None => format!("no leader: {heard}"),
            Some(l) if l == self.raw.id() => format!("leader without a majority: {heard}"),
            Some(l) => format!("leader is node {l}; {heard}"),
        }
    }

    /// Why no leader can be elected, once none has been known for two election timeouts
    /// and fewer voters than a majority are reachable: a request then fails at once with
    /// the situation instead of waiting out its deadline. During an ordinary election
    /// (a majority reachable, or the loss recent) requests wait as before.
    pub(super) fn leaderless_without_quorum(&self) -> Option<String> {
        let lost = self.leader_lost_tick?;
        if self.ticks.saturating_sub(lost) < self.reachable_ticks_max() {
            return None;
        }
        let (reachable, _, needed) = self.voters_reachable();
        (reachable.len() < needed).then(|| self.quorum_situation())
    }

    /// Keeps `NodeHandle::leader` current and logs losing and finding the leader at WARN
    /// (a follower's log otherwise says only `leader=None`).
    fn observe_leader(&mut self) {
        let leader = self.raw.leader();
        // Only while leaderless is the situation computed (and the lock taken).
        if leader.is_none() || self.no_quorum_set {
            let situation = self.leaderless_without_quorum();
            self.no_quorum_set = situation.is_some();
            *self.no_quorum.lock().expect("not poisoned") = situation;
        }
        let before = self.leader_seen.load(std::sync::atomic::Ordering::Relaxed);
        if leader.unwrap_or(0) == before {
            return;
        }
        self.leader_seen
            .store(leader.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        let id = self.raw.id();
        let term = self.raw.term();
        match leader {
            None => {
                self.leader_lost_tick = Some(self.ticks);
                self.leader_before_loss = Some(before);
                if before != id {
                    tracing::warn!(
                        id,
                        term,
                        lost = before,
                        "lost the leader (node {before}); requests wait for an election, and \
                         fail at once while fewer than a majority of voters are reachable"
                    );
                }
            }
            Some(l) => {
                let lost = self.leader_lost_tick.take();
                let without_ms = lost.map_or(0, |t| {
                    self.ticks
                        .saturating_sub(t)
                        .saturating_mul(self.config.tick_interval_ms)
                });
                if self.leader_before_loss.take().is_some() {
                    let who = if l == id {
                        "this node, elected".to_string()
                    } else {
                        format!("node {l}")
                    };
                    tracing::warn!(id, term, leader = l, without_ms, "found the leader: {who}");
                } else {
                    tracing::info!(id, term, leader = l, "leader is node {l}");
                }
            }
        }
    }

    pub(super) fn observe(&mut self) {
        let role = self.raw.role();
        if role != self.last_role {
            // A pre-vote round that fails leaves the term alone; only real elections count.
            if role == Role::Candidate {
                Metrics::add(&self.metrics.elections, 1);
            }
            tracing::info!(
                id = self.raw.id(),
                term = self.raw.term(),
                ?role,
                leader = ?self.raw.leader(),
                "role changed"
            );
            self.last_role = role;
        }
        let leader = self.raw.leader();
        if leader != self.last_leader {
            self.last_leader = leader;
            if leader.is_some() {
                Metrics::add(&self.metrics.leader_changes, 1);
            }
            if self.leader_changes.len() == LEADER_CHANGES_KEPT_MAX {
                self.leader_changes.pop_front();
            }
            self.leader_changes.push_back(LeaderChange {
                term: self.raw.term(),
                leader,
                at_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            });
        }
        self.observe_leader();
        let m = &self.metrics;
        Metrics::set(&m.term, self.raw.term());
        Metrics::set(&m.is_leader, u64::from(role == Role::Leader));
        Metrics::set(&m.has_leader, u64::from(leader.is_some()));
        Metrics::set(&m.proposals_pending, self.pending_writes.len() as u64);
        Metrics::set(&m.commit_index, self.raw.commit_index());
        Metrics::set(&m.applied_index, self.raw.applied_index());
        Metrics::set(&m.last_index, self.raw.last_index());
    }

    pub(super) fn status(&self) -> NodeStatus {
        let s = self.raw.status();
        let memory = self.sm.memory_bytes();
        NodeStatus {
            id: s.id,
            role: format!("{:?}", s.role),
            term: s.term,
            leader: s.leader,
            leader_addr: s.leader.and_then(|l| self.client_addrs.get(&l).cloned()),
            commit_index: s.commit,
            applied_index: s.applied,
            persisted_index: s.persisted,
            first_index: s.first_index,
            last_index: s.last_index,
            snapshot_index: self.snapshot_index_latest,
            storage: self.raw.storage().describe(),
            voters: s.membership.voters.iter().copied().collect(),
            learners: s.membership.learners.iter().copied().collect(),
            elections: self
                .metrics
                .elections
                .load(std::sync::atomic::Ordering::Relaxed),
            peers: s
                .peers
                .iter()
                .map(|p| {
                    let timing = self.peer_timing.get(&p.id);
                    PeerInfo {
                        id: p.id,
                        match_index: p.match_index,
                        next_index: p.next_index,
                        state: p.state.to_string(),
                        active: p.recent_active,
                        last_contact_ms: timing
                            .and_then(|t| t.heard_at)
                            .map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)),
                        match_lag: s.last_index.saturating_sub(p.match_index),
                        rtt_us: timing.and_then(|t| t.rtt_us),
                    }
                })
                .collect(),
            digests: digest_infos(self.digests.iter()),
            anti_entropy: self
                .metrics
                .anti_entropy
                .lock()
                .expect("not poisoned")
                .clone(),
            http_addr: self.config.http_addr.clone(),
            leader_changes: self.leader_changes.iter().cloned().collect(),
            load: LoadCounters {
                writes: self.metrics.proposal_latency.count(),
                write_latency_us_sum: self.metrics.proposal_latency.sum_us(),
                reads: self
                    .metrics
                    .reads
                    .load(std::sync::atomic::Ordering::Relaxed),
            },
            memory_used_bytes: memory.0,
            memory_bytes_max: memory.1,
            version: env!("CARGO_PKG_VERSION").to_string(),
            members: s
                .membership
                .voters
                .iter()
                .chain(s.membership.learners.iter())
                .map(|&id| MemberAddr {
                    id,
                    client_addr: self.client_addrs.get(&id).cloned(),
                })
                .collect(),
        }
    }
}
