//! The transport's configuration: every limit and timeout is a named field with its unit.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::addr::PeerAddr;

use raft_core::NodeId;

use crate::frame::DEFAULT_FRAME_BYTES_MAX;

/// Configuration of one node's transport.
///
/// ```
/// let mut cfg = raft_net::TransportConfig::new(1, 0xC1, "127.0.0.1:0".parse().unwrap());
/// cfg.peers.insert(2, "127.0.0.1:7002".parse().unwrap());
/// cfg.snapshot_bytes_per_sec_max = 50 * 1024 * 1024;
/// assert_eq!(cfg.frame_bytes_max, 16 * 1024 * 1024);
/// ```
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node's ID (never 0).
    pub node_id: NodeId,
    /// Connections from another cluster are refused at the handshake (a random 128-bit
    /// value: without TLS it is what keeps strangers off the peer port).
    pub cluster_id: u128,
    /// Where to accept connections; port 0 picks an ephemeral port
    /// (see [`crate::TransportHandle::local_addr`]).
    pub listen_addr: SocketAddr,
    /// The nodes this one talks to. Inbound connections are accepted only from these IDs.
    /// A host name is resolved again on every connection attempt.
    pub peers: HashMap<NodeId, PeerAddr>,
    /// Largest frame (version byte + body) read or written; checked before allocating.
    pub frame_bytes_max: usize,
    /// Per-peer outbound queue bound, in frames (a message, or a coalesced heartbeat
    /// frame of many groups); when full the oldest queued frame is dropped.
    pub queue_messages_max: usize,
    /// Per-peer outbound queue bound, in bytes of memory its frames hold (see
    /// [`crate::Envelope::queued_bytes`]: command payloads, shared with the log, are not
    /// counted); the oldest queued frames are dropped to make room (one frame larger than
    /// this is still queued, alone).
    pub queue_bytes_max: usize,
    /// Bound of the channel delivering [`crate::Incoming`] to the host, in items (each a
    /// batch of messages, or a snapshot). When it is full the readers stop reading, and TCP
    /// pushes back on the senders.
    pub incoming_batches_max: usize,
    /// Most messages in one [`crate::Incoming::Messages`] batch. A reader hands over every
    /// whole frame one read brought in, up to this many, with one channel send.
    pub incoming_batch_messages_max: usize,
    /// A batch is written out once it has grown to this many bytes.
    pub write_batch_bytes_max: usize,
    /// `send` writes a message to the socket itself, saving the hand-off to the peer's
    /// writer task, when nothing is queued or being written and the connection's last write
    /// ended at least this long ago. Sends closer together than this are queued and go out
    /// together in one write by the writer task. `u64::MAX` turns direct writes off.
    pub direct_write_idle_us_min: u64,
    /// Time allowed to connect and to complete the handshake, in both directions.
    pub handshake_timeout_ms: u64,
    /// A connection on which no complete frame arrived (or no write completed) for this
    /// long is closed (an inbound message connection within 1-2x this, as its timer is
    /// re-armed lazily). Outbound connections with nothing to send close after it too.
    pub idle_timeout_ms: u64,
    /// First reconnection delay; doubled per failed attempt, with jitter.
    pub backoff_min_ms: u64,
    /// Largest reconnection delay.
    pub backoff_max_ms: u64,
    /// Inbound connections open at once (both lanes, handshaking or not).
    pub inbound_connections_max: usize,
    /// Inbound connections still in their handshake (TLS and Hello), at most; more are
    /// closed at once. Below `inbound_connections_max`, so that silent sockets cannot take
    /// every slot.
    pub handshakes_pending_max: usize,
    /// Of those, from one source IP address: a host opening many silent connections is
    /// refused more without keeping the real peers from connecting.
    pub handshakes_pending_per_source_max: usize,
    /// TLS on both lanes (mutual, against the cluster's CA, each peer's node ID bound to
    /// its certificate: see [`crate::tls`]); plain TCP when `None`.
    pub tls: Option<crate::tls::TransportTls>,
    /// Snapshot bytes per chunk frame (must fit in `frame_bytes_max`).
    pub snapshot_chunk_bytes: usize,
    /// Snapshot streaming rate limit per peer, in bytes per second; 0 means unlimited.
    /// Chunks shrink under a low limit so one is sent at least every `idle_timeout_ms / 4`.
    pub snapshot_bytes_per_sec_max: u64,
    /// Largest snapshot file accepted from a peer. It is written to `snapshot_store` as it
    /// arrives (never held in memory); an offer larger than the free space there is refused
    /// too.
    pub snapshot_bytes_max: u64,
    /// Snapshot transfers (of different groups) to one peer at once, each on its own
    /// snapshot connection; more wait, oldest request first. `snapshot_bytes_per_sec_max`
    /// is shared out evenly: each transfer paces at that rate divided by this.
    pub snapshot_transfers_per_peer_max: usize,
    /// Connection attempts for one snapshot before the host is told it failed.
    pub snapshot_attempts_max: u32,
    /// Where snapshots received from peers are assembled, checked and installed
    /// (see [`crate::Incoming::Snapshot`]); `None` refuses every offer.
    pub snapshot_store: Option<raft_snapshot::SnapshotStore>,
}

impl TransportConfig {
    /// A configuration with the defaults below and no peers.
    pub fn new(node_id: NodeId, cluster_id: u128, listen_addr: SocketAddr) -> Self {
        TransportConfig {
            node_id,
            cluster_id,
            listen_addr,
            peers: HashMap::new(),
            frame_bytes_max: DEFAULT_FRAME_BYTES_MAX,
            queue_messages_max: 4096,
            queue_bytes_max: 64 * 1024 * 1024,
            incoming_batches_max: 64,
            incoming_batch_messages_max: 512,
            write_batch_bytes_max: 256 * 1024,
            direct_write_idle_us_min: 5,
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 30_000,
            backoff_min_ms: 10,
            backoff_max_ms: 5_000,
            inbound_connections_max: 256,
            handshakes_pending_max: 64,
            handshakes_pending_per_source_max: 8,
            tls: None,
            snapshot_chunk_bytes: 1024 * 1024,
            snapshot_bytes_per_sec_max: 0,
            // raft-snapshot's default `body_bytes_max`: the disk, not memory, bounds it now.
            snapshot_bytes_max: 64 << 30,
            snapshot_attempts_max: 10,
            snapshot_transfers_per_peer_max: 2,
            snapshot_store: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node_id 0 is reserved".into());
        }
        if self.peers.contains_key(&self.node_id) {
            return Err("peers must not contain this node".into());
        }
        if self.queue_messages_max == 0
            || self.queue_bytes_max == 0
            || self.incoming_batches_max == 0
            || self.incoming_batch_messages_max == 0
        {
            return Err("queue bounds must be positive".into());
        }
        if self.frame_bytes_max < 64 || self.frame_bytes_max > u32::MAX as usize {
            return Err("frame_bytes_max must be in 64..=u32::MAX".into());
        }
        // A chunk frame adds a few dozen bytes of header to the data.
        if self.snapshot_chunk_bytes == 0
            || self.snapshot_chunk_bytes + 64 > self.frame_bytes_max
            || self.snapshot_chunk_bytes > raft_snapshot::TRANSFER_CHUNK_BYTES_MAX
        {
            return Err("snapshot_chunk_bytes must be positive, fit in frame_bytes_max and be at most raft-snapshot's TRANSFER_CHUNK_BYTES_MAX".into());
        }
        if self.backoff_min_ms == 0 || self.backoff_min_ms > self.backoff_max_ms {
            return Err("need 0 < backoff_min_ms <= backoff_max_ms".into());
        }
        if self.handshake_timeout_ms == 0 || self.idle_timeout_ms == 0 {
            return Err("timeouts must be positive".into());
        }
        if self.handshakes_pending_max == 0 || self.handshakes_pending_per_source_max == 0 {
            return Err("handshake bounds must be positive".into());
        }
        if self.inbound_connections_max == 0
            || self.snapshot_attempts_max == 0
            || self.snapshot_transfers_per_peer_max == 0
        {
            return Err(
                "inbound_connections_max, snapshot_attempts_max and snapshot_transfers_per_peer_max must be positive".into(),
            );
        }
        Ok(())
    }
}

/// Reconnection delay for the `attempt`-th consecutive failure (0-based): exponential,
/// capped, with jitter in `[delay/2, delay]` from a hash of the node, peer and attempt,
/// so that nodes restarted together do not reconnect in lockstep, without global randomness.
pub fn backoff_ms(cfg: &TransportConfig, peer: NodeId, attempt: u32) -> u64 {
    let exp = cfg
        .backoff_min_ms
        .saturating_mul(1u64 << attempt.min(32))
        .min(cfg.backoff_max_ms);
    let half = exp / 2;
    half + splitmix64(cfg.node_id ^ peer.rotate_left(32) ^ u64::from(attempt)) % (exp - half + 1)
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let cfg = TransportConfig::new(1, 1, "127.0.0.1:0".parse().unwrap());
        for attempt in 0..64 {
            let d = backoff_ms(&cfg, 2, attempt);
            let exp = (10u64 << attempt.min(32)).min(5_000);
            assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d}");
        }
        let a: Vec<_> = (0..8).map(|i| backoff_ms(&cfg, 2, i + 8)).collect();
        let b: Vec<_> = (0..8).map(|i| backoff_ms(&cfg, 3, i + 8)).collect();
        assert_ne!(a, b);
    }
}
