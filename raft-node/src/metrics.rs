//! Counters and histograms for `GET /metrics` (Prometheus text format), updated with relaxed
//! atomics from the runtime and the servers.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use raft_client::wire::AntiEntropyStatus;

/// Upper bounds of the latency buckets, in microseconds.
const LATENCY_BUCKETS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe_us(&self, us: u64) {
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|&b| us <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Records the wall time elapsed since `start`.
    pub fn observe_since(&self, start: std::time::Instant) {
        self.observe_us(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Their sum, in microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Ordering::Relaxed)
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Every metric a node exports.
#[derive(Debug, Default)]
#[allow(missing_docs)]
pub struct Metrics {
    pub term: AtomicU64,
    pub is_leader: AtomicU64,
    pub elections: AtomicU64,
    pub commit_index: AtomicU64,
    pub applied_index: AtomicU64,
    pub last_index: AtomicU64,
    pub proposals: AtomicU64,
    pub proposals_failed: AtomicU64,
    pub proposals_busy: AtomicU64,
    pub reads: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub syncs: AtomicU64,
    pub snapshots_taken: AtomicU64,
    pub snapshots_installed: AtomicU64,
    pub snapshots_sent: AtomicU64,
    pub digests_taken: AtomicU64,
    pub digests_skipped: AtomicU64,
    /// HTTP connections refused at accept (over the total or per-source cap).
    pub http_connections_refused: AtomicU64,
    /// HTTP connections closed by a timeout (idle, request head, response write).
    pub http_timeouts: AtomicU64,
    /// Divergent (replica, index) pairs the leader found (see [`crate::anti_entropy`]).
    pub replica_divergence: AtomicU64,
    /// The leader's anti-entropy view, written by its poll loop, read by the status.
    pub anti_entropy: Mutex<AntiEntropyStatus>,
    /// Per replica: 1 if its latest compared digest diverged, else 0 (leader only).
    pub replica_diverged: Mutex<BTreeMap<u64, u64>>,
    pub proposal_latency: Histogram,
    pub fsync_latency: Histogram,
    /// Time the runtime task spends in the log's write calls of one Ready (append and hard
    /// state): while it is in them, nothing else on the node moves.
    pub storage_write_block: Histogram,
    /// Time the runtime task spends in log compaction and snapshot installation.
    pub storage_compact_block: Histogram,
    /// Client connections open on the client port.
    pub client_connections: AtomicU64,
    /// Client connections closed or refused by a limit, by [`DisconnectReason`].
    pub client_disconnects: [AtomicU64; DisconnectReason::ALL.len()],
}

/// Why the node closed (or refused) a client connection: the `reason` label of
/// `raft_client_disconnects_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// No first byte (or TLS/AUTH) within `handshake_timeout_ms`.
    HandshakeTimeout,
    /// No request under way for `idle_timeout_ms`.
    IdleTimeout,
    /// A request started and not completed within `read_timeout_ms`.
    ReadTimeout,
    /// A reply not taken by the client within `write_timeout_ms`.
    WriteTimeout,
    /// Replies held for the client past `output_buffer_bytes_max`.
    OutputBuffer,
    /// Input held for the client past `query_buffer_bytes_max`.
    QueryBuffer,
    /// A malformed request or one past a request bound.
    ProtocolError,
    /// Closed while idle to make room for a new connection when every slot was taken.
    Evicted,
    /// Refused at accept: `connections_max` reached with nothing idle to close.
    RefusedTotal,
    /// Refused at accept: `connections_per_source_max` reached with nothing idle to close.
    RefusedPerSource,
}

impl DisconnectReason {
    /// Every reason, in the order of [`Metrics::client_disconnects`].
    pub const ALL: [DisconnectReason; 10] = [
        DisconnectReason::HandshakeTimeout,
        DisconnectReason::IdleTimeout,
        DisconnectReason::ReadTimeout,
        DisconnectReason::WriteTimeout,
        DisconnectReason::OutputBuffer,
        DisconnectReason::QueryBuffer,
        DisconnectReason::ProtocolError,
        DisconnectReason::Evicted,
        DisconnectReason::RefusedTotal,
        DisconnectReason::RefusedPerSource,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            DisconnectReason::HandshakeTimeout => "handshake_timeout",
            DisconnectReason::IdleTimeout => "idle_timeout",
            DisconnectReason::ReadTimeout => "read_timeout",
            DisconnectReason::WriteTimeout => "write_timeout",
            DisconnectReason::OutputBuffer => "output_buffer",
            DisconnectReason::QueryBuffer => "query_buffer",
            DisconnectReason::ProtocolError => "protocol_error",
            DisconnectReason::Evicted => "evicted",
            DisconnectReason::RefusedTotal => "refused_total",
            DisconnectReason::RefusedPerSource => "refused_per_source",
        }
    }
}

impl Metrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets a gauge.
    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    /// Counts a client connection closed or refused for `reason`.
    pub fn client_disconnect(&self, reason: DisconnectReason) {
        let i = DisconnectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is listed");
        self.client_disconnects[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Client connections closed or refused for `reason` so far.
    pub fn client_disconnects_for(&self, reason: DisconnectReason) -> u64 {
        let i = DisconnectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is listed");
        self.client_disconnects[i].load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, node_id: u64) -> String {
        let mut out = String::new();
        let g = |out: &mut String, name: &str, kind: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{node_id}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        };
        g(&mut out, "raft_term", "gauge", "Current term.", &self.term);
        g(
            &mut out,
            "raft_is_leader",
            "gauge",
            "1 on the leader.",
            &self.is_leader,
        );
        g(
            &mut out,
            "raft_elections_total",
            "counter",
            "Elections started here.",
            &self.elections,
        );
        g(
            &mut out,
            "raft_commit_index",
            "gauge",
            "Commit index.",
            &self.commit_index,
        );
        g(
            &mut out,
            "raft_applied_index",
            "gauge",
            "Applied index.",
            &self.applied_index,
        );
        g(
            &mut out,
            "raft_last_index",
            "gauge",
            "Last log index.",
            &self.last_index,
        );
        g(
            &mut out,
            "raft_proposals_total",
            "counter",
            "Proposals appended.",
            &self.proposals,
        );
        g(
            &mut out,
            "raft_proposals_failed_total",
            "counter",
            "Proposals answered with an error.",
            &self.proposals_failed,
        );
        g(
            &mut out,
            "raft_proposals_busy_total",
            "counter",
            "Proposals refused by back-pressure.",
            &self.proposals_busy,
        );
        g(
            &mut out,
            "raft_reads_total",
            "counter",
            "Reads served.",
            &self.reads,
        );
        g(
            &mut out,
            "raft_net_bytes_sent_total",
            "counter",
            "Peer bytes sent.",
            &self.bytes_sent,
        );
        g(
            &mut out,
            "raft_net_bytes_received_total",
            "counter",
            "Peer bytes received.",
            &self.bytes_received,
        );
        g(
            &mut out,
            "raft_net_messages_sent_total",
            "counter",
            "Peer messages sent.",
            &self.messages_sent,
        );
        g(
            &mut out,
            "raft_net_messages_received_total",
            "counter",
            "Peer messages received.",
            &self.messages_received,
        );
        g(
            &mut out,
            "raft_net_messages_dropped_total",
            "counter",
            "Peer messages dropped (full queue, no connection).",
            &self.messages_dropped,
        );
        g(
            &mut out,
            "raft_syncs_total",
            "counter",
            "Log syncs.",
            &self.syncs,
        );
        g(
            &mut out,
            "raft_snapshots_taken_total",
            "counter",
            "Snapshots written by this node.",
            &self.snapshots_taken,
        );
        g(
            &mut out,
            "raft_snapshots_installed_total",
            "counter",
            "Snapshots installed from the leader.",
            &self.snapshots_installed,
        );
        g(
            &mut out,
            "raft_snapshots_sent_total",
            "counter",
            "Snapshots sent to followers.",
            &self.snapshots_sent,
        );
        g(
            &mut out,
            "raft_state_digests_total",
            "counter",
            "State digests taken at multiples of digest_interval_entries.",
            &self.digests_taken,
        );
        g(
            &mut out,
            "raft_state_digests_skipped_total",
            "counter",
            "Digest points skipped because the previous digest was still being computed.",
            &self.digests_skipped,
        );
        g(
            &mut out,
            "raft_http_connections_refused_total",
            "counter",
            "HTTP connections refused because the total or per-source connection cap was reached.",
            &self.http_connections_refused,
        );
        g(
            &mut out,
            "raft_http_timeouts_total",
            "counter",
            "HTTP connections closed by the idle, request-head or response-write timeout.",
            &self.http_timeouts,
        );
        g(
            &mut out,
            "raft_replica_divergence_total",
            "counter",
            "Replicas found (by the leader, per index) with a state digest differing from the majority's.",
            &self.replica_divergence,
        );
        let _ = writeln!(
            out,
            "# HELP raft_replica_diverged 1 if the replica's latest compared state digest differs from the majority's (leader only).\n# TYPE raft_replica_diverged gauge"
        );
        for (peer, v) in self.replica_diverged.lock().expect("not poisoned").iter() {
            let _ = writeln!(
                out,
                "raft_replica_diverged{{node=\"{node_id}\",peer=\"{peer}\"}} {v}"
            );
        }
        g(
            &mut out,
            "raft_client_connections",
            "gauge",
            "Client connections open on the client port.",
            &self.client_connections,
        );
        let _ = writeln!(
            out,
            "# HELP raft_client_disconnects_total Client connections closed or refused by a limit.\n# TYPE raft_client_disconnects_total counter"
        );
        for (reason, v) in DisconnectReason::ALL.iter().zip(&self.client_disconnects) {
            let _ = writeln!(
                out,
                "raft_client_disconnects_total{{node=\"{node_id}\",reason=\"{}\"}} {}",
                reason.label(),
                v.load(Ordering::Relaxed)
            );
        }
        self.proposal_latency.render(
            "raft_proposal_latency_seconds",
            "Time from proposal to apply on the leader.",
            &mut out,
        );
        self.fsync_latency.render(
            "raft_fsync_latency_seconds",
            "Duration of a log sync.",
            &mut out,
        );
        self.storage_write_block.render(
            "raft_storage_write_block_seconds",
            "Time the runtime task was blocked in the log writes (append, hard state) of one Ready.",
            &mut out,
        );
        self.storage_compact_block.render(
            "raft_storage_compact_block_seconds",
            "Time the runtime task was blocked in one log compaction or snapshot installation.",
            &mut out,
        );
        out
    }
}
