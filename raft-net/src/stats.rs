//! Counters the host can poll. Relaxed atomics: they are statistics, not synchronisation.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a connection was closed or refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConnErrorKind {
    /// Could not connect (refused, unreachable, timed out).
    Connect,
    /// Read or write failed, or the peer closed the connection.
    Io,
    /// A frame's length prefix exceeded `frame_bytes_max`.
    FrameTooLarge,
    /// The connection closed in the middle of a frame.
    Truncated,
    /// A frame had a bad version byte or an undecodable body.
    Decode,
    /// Wrong cluster ID or node ID, on either side.
    HandshakeRejected,
    /// No handshake within `handshake_timeout_ms` (slowloris).
    HandshakeTimeout,
    /// No complete frame within `idle_timeout_ms`, or a write stalled that long.
    IdleTimeout,
    /// A well-formed frame that breaks the protocol (wrong sender, unexpected frame).
    Protocol,
    /// Refused because `inbound_connections_max` connections were open.
    ConnectionLimit,
    /// A snapshot chunk or whole snapshot failed its CRC, or was out of place or too large.
    Snapshot,
    /// Refused because `handshakes_pending_max` handshakes were in progress, or
    /// `handshakes_pending_per_source_max` from the same address.
    HandshakeLimit,
    /// The TLS handshake failed (no or a bad certificate, not signed by the cluster CA, ...).
    Tls,
}

impl ConnErrorKind {
    /// Every kind, in declaration order (the index of each counter).
    pub const ALL: [ConnErrorKind; 13] = [
        ConnErrorKind::Connect,
        ConnErrorKind::Io,
        ConnErrorKind::FrameTooLarge,
        ConnErrorKind::Truncated,
        ConnErrorKind::Decode,
        ConnErrorKind::HandshakeRejected,
        ConnErrorKind::HandshakeTimeout,
        ConnErrorKind::IdleTimeout,
        ConnErrorKind::Protocol,
        ConnErrorKind::ConnectionLimit,
        ConnErrorKind::Snapshot,
        ConnErrorKind::HandshakeLimit,
        ConnErrorKind::Tls,
    ];
}

#[derive(Default)]
pub(crate) struct Stats {
    pub messages_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub messages_unencodable: AtomicU64,
    pub connects: AtomicU64,
    pub reconnects: AtomicU64,
    pub snapshots_sent: AtomicU64,
    pub snapshots_received: AtomicU64,
    pub snapshot_bytes_sent: AtomicU64,
    pub snapshot_bytes_received: AtomicU64,
    pub conn_errors: [AtomicU64; ConnErrorKind::ALL.len()],
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn conn_error(&self, kind: ConnErrorKind) {
        self.conn_errors[kind as usize].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            messages_sent: self.messages_sent.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            messages_received: self.messages_received.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            messages_dropped: self.messages_dropped.load(Relaxed),
            messages_unencodable: self.messages_unencodable.load(Relaxed),
            connects: self.connects.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            snapshots_sent: self.snapshots_sent.load(Relaxed),
            snapshots_received: self.snapshots_received.load(Relaxed),
            snapshot_bytes_sent: self.snapshot_bytes_sent.load(Relaxed),
            snapshot_bytes_received: self.snapshot_bytes_received.load(Relaxed),
            connection_errors: ConnErrorKind::ALL
                .iter()
                .map(|&k| (k, self.conn_errors[k as usize].load(Relaxed)))
                .filter(|&(_, n)| n > 0)
                .collect(),
        }
    }
}

/// A point-in-time copy of the transport's counters, summed over all peers.
/// Bytes count whole frames (length prefix included).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Messages written to peers.
    pub messages_sent: u64,
    /// Bytes written on the message lane.
    pub bytes_sent: u64,
    /// Messages received and handed to the host.
    pub messages_received: u64,
    /// Bytes read on the message lane.
    pub bytes_received: u64,
    /// Oldest messages dropped because a peer's queue was full.
    pub messages_dropped: u64,
    /// Messages that could not be encoded within `frame_bytes_max` and were dropped.
    pub messages_unencodable: u64,
    /// Outbound connections established (both lanes).
    pub connects: u64,
    /// Outbound connections established after a previous one to the same peer and lane.
    pub reconnects: u64,
    /// Snapshots the receiver confirmed whole.
    pub snapshots_sent: u64,
    /// Snapshots received whole and handed to the host.
    pub snapshots_received: u64,
    /// Bytes written on the snapshot lane.
    pub snapshot_bytes_sent: u64,
    /// Bytes read on the snapshot lane.
    pub snapshot_bytes_received: u64,
    /// Closed or refused connections by reason; reasons never seen are absent.
    pub connection_errors: BTreeMap<ConnErrorKind, u64>,
}

impl StatsSnapshot {
    /// Connection errors of one kind.
    pub fn errors(&self, kind: ConnErrorKind) -> u64 {
        self.connection_errors.get(&kind).copied().unwrap_or(0)
    }
}
