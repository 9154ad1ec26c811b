//! The frames exchanged besides raft-core's `Message`, all postcard-encoded in
//! [`crate::frame`] frames. Public so that tests and tools can speak the protocol.
//!
//! A connection starts with the dialer's [`Hello`] and the acceptor's [`HelloReply`]. On a
//! [`Lane::Messages`] connection both ends then send only `raft_core::Message` frames: the
//! acceptor sends its own messages for the dialer there rather than dialling a second
//! connection (when both dialled, both keep the one the lower node ID dialled). On a [`Lane::Snapshots`] connection the two exchange
//! [`SnapshotFrame`]s: `Offer` → `Resume` → `Chunk`… → `Done` (or `Abort`).

use bytes::Bytes;
use raft_core::{NodeId, SnapshotMeta};
use serde::{Deserialize, Serialize};

/// Handshake frames are tiny; anything longer is hostile.
pub const HANDSHAKE_FRAME_BYTES_MAX: usize = 1024;
/// A reject reason is cut to this many bytes so the reply fits in a handshake frame.
pub const REJECT_REASON_BYTES_MAX: usize = 512;

/// What a connection carries, so snapshots never queue behind (or ahead of) messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lane {
    Messages,
    Snapshots,
}

/// Sent by the dialer as its first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub cluster_id: u128,
    pub from: NodeId,
    pub to: NodeId,
    pub lane: Lane,
}

/// The acceptor's answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// The dialer reached the node it meant to (its ID here) of the cluster it named.
    Accept { node_id: NodeId },
    /// Refused: `reason` says why when the dialer proved it knows the cluster ID, and is
    /// only [`crate::REFUSED`] otherwise.
    Reject { reason: String },
}

/// The snapshot lane's frames.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotFrame {
    /// Sender → receiver: a snapshot of `total_bytes` whose bytes have CRC32 `crc32`.
    Offer {
        snapshot_id: u64,
        meta: SnapshotMeta,
        total_bytes: u64,
        crc32: u32,
    },
    /// Receiver → sender: send from `offset`, the bytes it already holds and verified
    /// (non-zero when resuming the same snapshot after a reconnect).
    Resume { snapshot_id: u64, offset: u64 },
    /// Sender → receiver: `data` belongs at `offset`; `crc32` covers `data`.
    Chunk {
        snapshot_id: u64,
        offset: u64,
        crc32: u32,
        data: Bytes,
    },
    /// Receiver → sender: every byte arrived and the whole-snapshot CRC matched.
    Done { snapshot_id: u64 },
    /// Receiver → sender: refused (too large, corrupt); the sender should not retry as is.
    Abort { snapshot_id: u64, reason: String },
}
