//! Counters and histograms for `GET /metrics` (Prometheus text format), updated with relaxed
//! atomics from the runtime and the servers.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use raft_proto::{AntiEntropyStatus, PeerInfo};

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
    /// 1 while this node knows a leader.
    pub has_leader: AtomicU64,
    /// Leaders this node has seen take over.
    pub leader_changes: AtomicU64,
    /// Writes appended here (as leader) and not yet applied.
    pub proposals_pending: AtomicU64,
    /// Per peer: messages and bytes written to its message connection.
    pub peer_sent: Mutex<BTreeMap<u64, (u64, u64)>>,
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

    /// The exposition of every series (OpenMetrics text, which Prometheus reads), each
    /// labelled `node`; `peers` is the leader's view of its followers (empty elsewhere),
    /// for the per-peer replication series.
    pub fn render(self: &Arc<Self>, node_id: u64, peers: &[PeerInfo]) -> String {
        let mut registry = Registry::with_labels(
            [(Cow::Borrowed("node"), Cow::Owned(node_id.to_string()))].into_iter(),
        );
        registry.register_collector(Box::new(Scrape {
            metrics: self.clone(),
            peers: peers.to_vec(),
        }));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// One scrape: the counters as they are now, read by prometheus-client's encoder.
#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    peers: Vec<PeerInfo>,
}

/// A series' name (without unit or `_total`), help, unit and value.
type Series<'a> = (&'a str, &'a str, Option<Unit>, u64);

fn counter(enc: &mut DescriptorEncoder, (name, help, unit, v): Series) -> fmt::Result {
    enc.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    v: V,
) -> fmt::Result {
    enc.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?
        .encode_gauge(&v)
}

/// A gauge or counter with one sample per `(label value, value)`.
fn family<V: EncodeGaugeValue + EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    (name, help, unit, kind): (&str, &str, Option<Unit>, MetricType),
    label: &'static str,
    samples: impl IntoIterator<Item = (String, V)>,
) -> fmt::Result {
    let is_counter = matches!(kind, MetricType::Counter);
    let mut m = enc.encode_descriptor(name, help, unit.as_ref(), kind)?;
    for (value_of_label, v) in samples {
        let labels = [(label, value_of_label)];
        let mut sample = m.encode_family(&labels)?;
        if is_counter {
            sample.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        } else {
            sample.encode_gauge(&v)?;
        }
    }
    Ok(())
}

fn histogram(enc: &mut DescriptorEncoder, name: &str, help: &str, h: &Histogram) -> fmt::Result {
    let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_US
        .iter()
        .zip(&h.buckets)
        .map(|(bound, n)| (*bound as f64 / 1e6, n.load(Ordering::Relaxed)))
        .collect();
    let count = h.count();
    let counted: u64 = buckets.iter().map(|(_, n)| n).sum();
    // f64::MAX is prometheus-client's +Inf bucket.
    buckets.push((f64::MAX, count.saturating_sub(counted)));
    enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum_us() as f64 / 1e6, count, &buckets, None)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let m = &*self.metrics;
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let e = &mut enc;
        gauge(e, "raft_term", "Current term.", None, v(&m.term))?;
        gauge(
            e,
            "raft_is_leader",
            "1 on the leader.",
            None,
            v(&m.is_leader),
        )?;
        gauge(
            e,
            "raft_has_leader",
            "1 while this node knows a leader.",
            None,
            v(&m.has_leader),
        )?;
        counter(
            e,
            (
                "raft_leader_changes",
                "Leaders this node has seen take over (a new leader, or the same after a loss).",
                None,
                v(&m.leader_changes),
            ),
        )?;
        counter(
            e,
            (
                "raft_elections",
                "Elections started here.",
                None,
                v(&m.elections),
            ),
        )?;
        gauge(
            e,
            "raft_commit_index",
            "Commit index.",
            None,
            v(&m.commit_index),
        )?;
        gauge(
            e,
            "raft_applied_index",
            "Applied index.",
            None,
            v(&m.applied_index),
        )?;
        gauge(
            e,
            "raft_last_index",
            "Last log index.",
            None,
            v(&m.last_index),
        )?;
        gauge(
            e,
            "raft_proposals_pending",
            "Writes appended here (as leader) and not yet applied.",
            None,
            v(&m.proposals_pending),
        )?;
        counter(
            e,
            (
                "raft_proposals",
                "Proposals appended.",
                None,
                v(&m.proposals),
            ),
        )?;
        counter(
            e,
            (
                "raft_proposals_failed",
                "Proposals answered with an error.",
                None,
                v(&m.proposals_failed),
            ),
        )?;
        counter(
            e,
            (
                "raft_proposals_busy",
                "Proposals refused by back-pressure.",
                None,
                v(&m.proposals_busy),
            ),
        )?;
        counter(e, ("raft_reads", "Reads served.", None, v(&m.reads)))?;
        counter(
            e,
            (
                "raft_net_sent",
                "Peer bytes sent (messages and snapshots).",
                Some(Unit::Bytes),
                v(&m.bytes_sent),
            ),
        )?;
        counter(
            e,
            (
                "raft_net_received",
                "Peer bytes received (messages and snapshots).",
                Some(Unit::Bytes),
                v(&m.bytes_received),
            ),
        )?;
        counter(
            e,
            (
                "raft_net_messages_sent",
                "Peer messages sent.",
                None,
                v(&m.messages_sent),
            ),
        )?;
        counter(
            e,
            (
                "raft_net_messages_received",
                "Peer messages received.",
                None,
                v(&m.messages_received),
            ),
        )?;
        counter(
            e,
            (
                "raft_net_messages_dropped",
                "Peer messages dropped (full queue, no connection).",
                None,
                v(&m.messages_dropped),
            ),
        )?;
        counter(e, ("raft_syncs", "Log syncs.", None, v(&m.syncs)))?;
        counter(
            e,
            (
                "raft_snapshots_taken",
                "Snapshots written by this node.",
                None,
                v(&m.snapshots_taken),
            ),
        )?;
        counter(
            e,
            (
                "raft_snapshots_installed",
                "Snapshots installed from the leader.",
                None,
                v(&m.snapshots_installed),
            ),
        )?;
        counter(
            e,
            (
                "raft_snapshots_sent",
                "Snapshots sent to followers.",
                None,
                v(&m.snapshots_sent),
            ),
        )?;
        counter(
            e,
            (
                "raft_state_digests",
                "State digests taken at multiples of digest_interval_entries.",
                None,
                v(&m.digests_taken),
            ),
        )?;
        counter(
            e,
            (
                "raft_state_digests_skipped",
                "Digest points skipped because the previous digest was still being computed.",
                None,
                v(&m.digests_skipped),
            ),
        )?;
        counter(e, ("raft_http_connections_refused", "HTTP connections refused because the total or per-source connection cap was reached.", None, v(&m.http_connections_refused)))?;
        counter(
            e,
            (
                "raft_http_timeouts",
                "HTTP connections closed by the idle, request-head or response-write timeout.",
                None,
                v(&m.http_timeouts),
            ),
        )?;
        counter(e, ("raft_replica_divergence", "Replicas found (by the leader, per index) with a state digest differing from the majority's.", None, v(&m.replica_divergence)))?;
        let diverged: Vec<(String, u64)> = m
            .replica_diverged
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(peer, v)| (peer.to_string(), *v))
            .collect();
        family(e, ("raft_replica_diverged", "1 if the replica's latest compared state digest differs from the majority's (leader only).", None, MetricType::Gauge), "peer", diverged)?;
        gauge(
            e,
            "raft_client_connections",
            "Client connections open on the client port.",
            None,
            v(&m.client_connections),
        )?;
        family(
            e,
            (
                "raft_client_disconnects",
                "Client connections closed or refused by a limit.",
                None,
                MetricType::Counter,
            ),
            "reason",
            DisconnectReason::ALL
                .iter()
                .zip(&m.client_disconnects)
                .map(|(r, n)| (r.label().to_string(), v(n))),
        )?;
        // The leader's view of each follower.
        let peers = &self.peers;
        let per_peer = |f: &dyn Fn(&PeerInfo) -> Option<f64>| -> Vec<(String, f64)> {
            peers
                .iter()
                .filter_map(|p| Some((p.id.to_string(), f(p)?)))
                .collect()
        };
        family(
            e,
            (
                "raft_peer_match_lag_entries",
                "Entries the leader holds beyond the follower's match index (leader only).",
                None,
                MetricType::Gauge,
            ),
            "peer",
            per_peer(&|p| Some(p.match_lag as f64)),
        )?;
        family(
            e,
            (
                "raft_peer_rtt",
                "Latest heartbeat round trip to the follower (leader only).",
                Some(Unit::Seconds),
                MetricType::Gauge,
            ),
            "peer",
            per_peer(&|p| p.rtt_us.map(|us| us as f64 / 1e6)),
        )?;
        family(
            e,
            (
                "raft_peer_last_contact",
                "Time since the leader last heard from the follower (leader only).",
                Some(Unit::Seconds),
                MetricType::Gauge,
            ),
            "peer",
            per_peer(&|p| p.last_contact_ms.map(|ms| ms as f64 / 1e3)),
        )?;
        let sent: Vec<(u64, (u64, u64))> = m
            .peer_sent
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(&p, &s)| (p, s))
            .collect();
        family(
            e,
            (
                "raft_peer_sent_messages",
                "Messages sent to the peer on its message connection.",
                None,
                MetricType::Counter,
            ),
            "peer",
            sent.iter().map(|(p, (n, _))| (p.to_string(), *n)),
        )?;
        family(
            e,
            (
                "raft_peer_sent",
                "Bytes sent to the peer on its message connection (snapshot streams not included).",
                Some(Unit::Bytes),
                MetricType::Counter,
            ),
            "peer",
            sent.iter().map(|(p, (_, b))| (p.to_string(), *b)),
        )?;
        histogram(
            e,
            "raft_proposal_latency",
            "Time from proposal to apply on the leader.",
            &m.proposal_latency,
        )?;
        histogram(
            e,
            "raft_fsync_latency",
            "Duration of a log sync.",
            &m.fsync_latency,
        )?;
        histogram(e, "raft_storage_write_block", "Time the runtime task was blocked in the log writes (append, hard state) of one Ready.", &m.storage_write_block)?;
        histogram(
            e,
            "raft_storage_compact_block",
            "Time the runtime task was blocked in one log compaction or snapshot installation.",
            &m.storage_compact_block,
        )?;
        let build = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("crate", env!("CARGO_PKG_NAME")),
        ];
        enc.encode_descriptor(
            "raft_build",
            "The build this node runs: its version in the labels, value 1.",
            None,
            MetricType::Info,
        )?
        .encode_info(&build)?;
        crate::process_metrics::encode(&mut enc)
    }
}
