//! Anti-entropy: the leader checks that every replica holds the same state.
//!
//! Every node digests its state machine at each log index that is a multiple of
//! `digest_interval_entries` (the runtime freezes the state on the apply path, which is O(1),
//! and hashes the frozen copy on a blocking thread). A multiple of a fixed number is the same
//! index on every node, whereas snapshot indexes are not: a snapshot is triggered after an
//! apply *batch*, and batch boundaries differ from node to node. Each node keeps its latest
//! [`DIGESTS_KEPT_MAX`] digests and shows them in its status.
//!
//! The leader pulls every member's status over the native protocol once per
//! [`POLL_INTERVAL_MS`] (the same request `raft-node status` sends; raft-core's messages
//! are left alone) and feeds the digests to a [`DivergenceMonitor`], which compares each index
//! once every voter reported it (or, for a voter that never does because it skipped the
//! index, once a majority did and [`ROUNDS_WAIT_MAX`] rounds passed). A replica whose digest
//! differs from the majority's raises the alarm: an error log line,
//! `raft_replica_divergence_total` and `raft_replica_diverged{peer=...}` in `/metrics`, and
//! `anti_entropy.divergent` in `/status`, RESP `INFO` and `raft-node status`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use raft_client::{Client, ClientConfig};
use raft_core::{Index, NodeId};
use raft_proto::{AntiEntropyStatus, DigestInfo, DivergentReplica, NodeStatus};
use raft_snapshot::{compare_digests, DigestLedger, DigestReport, DigestVerdict, StateDigest};
use tokio::sync::watch;

use crate::auth::InternalClient;
use crate::metrics::Metrics;
use crate::runtime::NodeHandle;

/// Digests a node keeps (and reports) at most.
pub const DIGESTS_KEPT_MAX: usize = 16;
/// How often the leader pulls its members' digests.
pub const POLL_INTERVAL_MS: u64 = 1_000;
/// How long one member may take to answer a pull.
const POLL_TIMEOUT_MS: u64 = 500;
/// Rounds an index waits for every voter before a majority's reports are compared alone.
pub const ROUNDS_WAIT_MAX: u64 = 3;
/// Indexes the monitor holds reports for at most.
const INDEXES_KEPT_MAX: usize = 4 * DIGESTS_KEPT_MAX;
/// Members polled at most (a bound on one round's work; clusters are far smaller).
const MEMBERS_POLLED_MAX: usize = 64;

/// The digest as status views print it.
pub fn digest_hex(digest: StateDigest) -> String {
    digest.to_string()
}

/// The inverse of [`digest_hex`]; `None` for anything else.
pub fn parse_digest(hex: &str) -> Option<StateDigest> {
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(hex, 16).ok().map(StateDigest)
}

/// The reports a status carries.
pub fn reports_of(status: &NodeStatus) -> Vec<DigestReport> {
    status
        .digests
        .iter()
        .take(DIGESTS_KEPT_MAX)
        .filter_map(|d| {
            Some(DigestReport {
                node: status.id,
                index: d.index,
                digest: parse_digest(&d.digest)?,
            })
        })
        .collect()
}

/// A node's recorded digests as the status shows them.
pub fn digest_infos<'a>(
    digests: impl Iterator<Item = &'a (Index, StateDigest)>,
) -> Vec<DigestInfo> {
    digests
        .map(|&(index, digest)| DigestInfo {
            index,
            digest: digest_hex(digest),
        })
        .collect()
}

/// The leader's comparison of digests across rounds of reports: pure, so it is tested
/// without processes. The reports waiting to be compared sit in raft-snapshot's
/// [`DigestLedger`] (bounded in indexes and in reports per index, a node's latest word
/// replacing its earlier one); this type adds when an index is ready and what a verdict
/// means for each node.
#[derive(Debug)]
pub struct DivergenceMonitor {
    round: u64,
    /// Reports of indexes not compared yet; the newest `INDEXES_KEPT_MAX` indexes.
    ledger: DigestLedger,
    /// The round each index held by `ledger` was first reported in.
    first_seen_round: BTreeMap<Index, u64>,
    /// Indexes already compared, so that later reports for them are not compared again.
    compared: BTreeSet<Index>,
    /// The latest comparison that included each node: `(index, divergence if any)`.
    latest: BTreeMap<NodeId, (Index, Option<DivergentReplica>)>,
    status: AntiEntropyStatus,
}

impl Default for DivergenceMonitor {
    fn default() -> Self {
        DivergenceMonitor {
            round: 0,
            // Every polled member and the leader itself report for one index.
            ledger: DigestLedger::new(INDEXES_KEPT_MAX, MEMBERS_POLLED_MAX + 1),
            first_seen_round: BTreeMap::new(),
            compared: BTreeSet::new(),
            latest: BTreeMap::new(),
            status: AntiEntropyStatus::default(),
        }
    }
}

impl DivergenceMonitor {
    /// An empty monitor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one round of reports (every member that answered, the leader included) and
    /// compares each index that is ready. Returns the divergences found in this round.
    pub fn observe_round(
        &mut self,
        voters: &[NodeId],
        reports: &[DigestReport],
    ) -> Vec<DivergentReplica> {
        self.round += 1;
        for r in reports {
            if !self.compared.contains(&r.index) && self.ledger.record(*r) {
                self.first_seen_round.entry(r.index).or_insert(self.round);
            }
        }
        // The ledger dropped its oldest indexes to make room: forget when they were seen.
        let ledger = &self.ledger;
        self.first_seen_round
            .retain(|&index, _| ledger.reports(index).is_some());
        let quorum = voters.len() / 2 + 1;
        let ready: Vec<Index> = self
            .ledger
            .indexes()
            .filter(|&index| {
                let reported = self.ledger.reports(index).unwrap_or_default();
                let voters_reported = voters
                    .iter()
                    .filter(|&&v| reported.iter().any(|r| r.node == v))
                    .count();
                let waited = self.round - self.first_seen_round.get(&index).copied().unwrap_or(0);
                reported.len() >= 2
                    && (voters_reported == voters.len()
                        || (voters_reported >= quorum && waited >= ROUNDS_WAIT_MAX))
            })
            .collect();
        let mut found = Vec::new();
        for index in ready {
            let mut reports = self.ledger.take(index).expect("listed above");
            // Judged and reported in node order, whatever order the members answered in.
            reports.sort_unstable_by_key(|r| r.node);
            self.first_seen_round.remove(&index);
            self.compared.insert(index);
            found.extend(self.compare(&reports));
        }
        // Forget compared indexes older than anything still waiting or recently compared.
        while self.compared.len() > INDEXES_KEPT_MAX {
            self.compared.pop_first();
        }
        self.status.divergent = self
            .latest
            .values()
            .filter_map(|(_, d)| d.clone())
            .collect();
        found
    }

    /// Judges the reports of one index (one per node, as the ledger keeps them).
    fn compare(&mut self, reports: &[DigestReport]) -> Vec<DivergentReplica> {
        let Ok(comparison) = compare_digests(reports) else {
            return Vec::new();
        };
        let index = comparison.index;
        self.status.comparisons += 1;
        self.status.compared_index = self.status.compared_index.max(index);
        let (majority, suspects): (Option<StateDigest>, Vec<NodeId>) = match &comparison.verdict {
            DigestVerdict::Consistent { .. } => (None, Vec::new()),
            DigestVerdict::Divergent {
                majority,
                divergent,
            } => (Some(*majority), divergent.clone()),
            // Nobody can be told right: every node is suspect.
            DigestVerdict::NoMajority => (None, reports.iter().map(|r| r.node).collect()),
        };
        let mut found = Vec::new();
        for r in reports {
            let divergence = suspects.contains(&r.node).then(|| DivergentReplica {
                node: r.node,
                index,
                digest: digest_hex(r.digest),
                majority_digest: majority.map(digest_hex),
            });
            if let Some(d) = &divergence {
                self.status.divergence_total += 1;
                found.push(d.clone());
            }
            let newer = self.latest.get(&r.node).is_none_or(|(i, _)| *i <= index);
            if newer {
                self.latest.insert(r.node, (index, divergence));
            }
        }
        found
    }

    /// What status views show.
    pub fn status(&self) -> AntiEntropyStatus {
        self.status.clone()
    }

    /// `(node, 1 if its latest compared digest diverged else 0)` for every node compared.
    pub fn diverged_gauges(&self) -> BTreeMap<NodeId, u64> {
        self.latest
            .iter()
            .map(|(&n, (_, d))| (n, u64::from(d.is_some())))
            .collect()
    }
}

/// Publishes the monitor's view to the metrics, which `/metrics` and the status read.
fn publish(metrics: &Metrics, monitor: &DivergenceMonitor) {
    let status = monitor.status();
    Metrics::set(&metrics.replica_divergence, status.divergence_total);
    *metrics.anti_entropy.lock().expect("not poisoned") = status;
    *metrics.replica_diverged.lock().expect("not poisoned") = monitor.diverged_gauges();
}

/// The leader's poll loop; on other nodes it only waits. Ends at shutdown.
pub async fn run(
    handle: NodeHandle,
    client_addrs: HashMap<NodeId, String>,
    internal: InternalClient,
    mut shutdown: watch::Receiver<bool>,
) {
    let clients: HashMap<NodeId, Client> = client_addrs
        .iter()
        .filter(|(&id, _)| id != handle.id)
        .take(MEMBERS_POLLED_MAX)
        .map(|(&id, addr)| {
            let mut config = ClientConfig::new([addr.clone()]);
            config.request_timeout_ms = POLL_TIMEOUT_MS;
            config.attempt_timeout_ms = POLL_TIMEOUT_MS;
            config.connect_timeout_ms = POLL_TIMEOUT_MS;
            config.attempts_max = 1;
            internal.apply(&mut config);
            (id, Client::new(config))
        })
        .collect();
    let mut monitor: Option<DivergenceMonitor> = None;
    let mut leader_term = 0;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)) => {}
        }
        let Ok(own) = handle.status().await else {
            continue;
        };
        if own.role != "Leader" {
            if monitor.take().is_some() {
                publish(&handle.metrics, &DivergenceMonitor::new());
            }
            continue;
        }
        if own.term != leader_term {
            // A new term of leadership starts a fresh comparison.
            leader_term = own.term;
            monitor = None;
        }
        let monitor = monitor.get_or_insert_with(DivergenceMonitor::new);
        let mut reports = reports_of(&own);
        let members = own.voters.iter().chain(own.learners.iter());
        let polls = members.filter(|&&id| id != own.id).filter_map(|id| {
            let client = clients.get(id)?;
            Some(async move { client.status().await.ok() })
        });
        for status in futures::future::join_all(polls).await.into_iter().flatten() {
            reports.extend(reports_of(&status));
        }
        for d in monitor.observe_round(&own.voters, &reports) {
            tracing::error!(
                replica = d.node,
                index = d.index,
                digest = %d.digest,
                majority = ?d.majority_digest,
                "replica divergence: this replica's state digest differs from the majority's"
            );
        }
        publish(&handle.metrics, monitor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(node: NodeId, index: Index, digest: u128) -> DigestReport {
        DigestReport {
            node,
            index,
            digest: StateDigest(digest),
        }
    }

    #[test]
    fn healthy_replicas_raise_nothing() {
        let mut m = DivergenceMonitor::new();
        let found = m.observe_round(&[1, 2, 3], &[r(1, 10, 7), r(2, 10, 7), r(3, 10, 7)]);
        assert!(found.is_empty());
        let s = m.status();
        assert_eq!(
            (s.compared_index, s.comparisons, s.divergence_total),
            (10, 1, 0)
        );
        assert!(s.divergent.is_empty());
        assert_eq!(m.diverged_gauges().values().sum::<u64>(), 0);
    }

    #[test]
    fn the_minority_replica_is_named_once_per_index() {
        let mut m = DivergenceMonitor::new();
        let round = [r(1, 10, 7), r(2, 10, 7), r(3, 10, 9)];
        let found = m.observe_round(&[1, 2, 3], &round);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].node, 3);
        assert_eq!(found[0].majority_digest, Some(digest_hex(StateDigest(7))));
        // The same reports again (the next poll) are not counted twice.
        assert!(m.observe_round(&[1, 2, 3], &round).is_empty());
        assert_eq!(m.status().divergence_total, 1);
        assert_eq!(m.diverged_gauges()[&3], 1);
        assert_eq!(m.diverged_gauges()[&1], 0);
    }

    #[test]
    fn an_index_waits_for_every_voter_then_for_a_majority() {
        let mut m = DivergenceMonitor::new();
        // Only the leader and one follower so far: a premature verdict would suspect both.
        assert!(m
            .observe_round(&[1, 2, 3], &[r(1, 10, 7), r(3, 10, 9)])
            .is_empty());
        assert_eq!(m.status().comparisons, 0);
        let found = m.observe_round(&[1, 2, 3], &[r(1, 10, 7), r(2, 10, 7), r(3, 10, 9)]);
        assert_eq!(found.iter().map(|d| d.node).collect::<Vec<_>>(), vec![3]);
        // Node 2 never reports index 20 (it skipped it): compared after the wait, by the
        // two that did, and they agree.
        let two = [r(1, 20, 5), r(3, 20, 5)];
        for _ in 0..=ROUNDS_WAIT_MAX {
            assert_eq!(m.status().compared_index, 10);
            m.observe_round(&[1, 2, 3], &two);
        }
        assert_eq!(m.status().compared_index, 20);
        assert!(m.status().divergent.is_empty(), "node 3 agreed at 20");
    }

    #[test]
    fn no_majority_suspects_everyone_and_memory_is_bounded() {
        let mut m = DivergenceMonitor::new();
        let found = m.observe_round(&[1, 2], &[r(1, 4, 1), r(2, 4, 2)]);
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|d| d.majority_digest.is_none()));
        for i in 0..1_000u64 {
            m.observe_round(&[1, 2, 3], &[r(1, 100 + i, 1)]);
        }
        assert!(m.ledger.indexes().count() <= INDEXES_KEPT_MAX);
        assert!(m.first_seen_round.len() <= INDEXES_KEPT_MAX);
        assert!(m.compared.len() <= INDEXES_KEPT_MAX);
    }

    #[test]
    fn digests_round_trip_through_hex() {
        let d = StateDigest(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(parse_digest(&digest_hex(d)), Some(d));
        assert_eq!(parse_digest("xyz"), None);
    }
}
