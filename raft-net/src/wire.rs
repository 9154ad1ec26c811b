//! The frames exchanged besides raft-core's `Message`, all postcard-encoded in
//! [`crate::frame`] frames. Public so that tests and tools can speak the protocol.
//!
//! A connection starts with the dialer's [`Hello`] and the acceptor's [`HelloReply`]. On a
//! [`Lane::Messages`] connection both ends then send only `raft_core::Message` frames: the
//! acceptor sends its own messages for the dialer there rather than dialling a second
//! connection (when both dialled, both keep the one the lower node ID dialled). On a [`Lane::Snapshots`] connection the two exchange
//! [`SnapshotFrame`]s: `Offer` → `Resume` → `Chunk`… → `Done` (or `Abort`), one transfer
//! (of one group) per connection; a peer's several groups' transfers run on connections of
//! their own, side by side.

use bytes::Bytes;
use raft_core::{NodeId, SnapshotMeta};

use crate::group::GroupId;
use serde::{Deserialize, Serialize};

/// Handshake frames are tiny; anything longer is hostile.
pub const HANDSHAKE_FRAME_BYTES_MAX: usize = 1024;
/// A reject reason is cut to this many bytes so the reply fits in a handshake frame.
pub const REJECT_REASON_BYTES_MAX: usize = 512;

/// What a connection carries, so snapshots never queue behind (or ahead of) messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lane {
    /// Raft messages, batched, both ways.
    Messages,
    /// Snapshot transfers ([`SnapshotFrame`]).
    Snapshots,
}

/// Sent by the dialer as its first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The cluster the dialer belongs to; another cluster's node refuses it.
    pub cluster_id: u128,
    /// The dialer's node ID.
    pub from: NodeId,
    /// The node the dialer means to reach.
    pub to: NodeId,
    /// What the connection will carry.
    pub lane: Lane,
}

/// The acceptor's answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// The dialer reached the node it meant to (its ID here) of the cluster it named.
    Accept {
        /// The acceptor's node ID.
        node_id: NodeId,
    },
    /// Refused: `reason` says why when the dialer proved it knows the cluster ID, and is
    /// only [`crate::REFUSED`] otherwise.
    Reject {
        /// Why, or only [`crate::REFUSED`].
        reason: String,
    },
}

/// The snapshot lane's frames.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotFrame {
    /// Sender → receiver: a snapshot file of `total_bytes` (raft-snapshot's format: it
    /// checks itself, header CRC, chunk CRCs and body digest, so no whole-file CRC here).
    Offer {
        /// Identifies this snapshot across reconnects.
        snapshot_id: u64,
        /// The group it belongs to (0 on a single-group transport, which refuses others).
        group: GroupId,
        /// Its index, term and membership.
        meta: SnapshotMeta,
        /// The file's length.
        total_bytes: u64,
    },
    /// Receiver → sender: send from `offset`, the bytes it already holds and verified
    /// (non-zero when resuming the same snapshot after a reconnect, or after a restart of
    /// the receiver: its partial file is kept).
    Resume {
        /// The offered snapshot.
        snapshot_id: u64,
        /// Bytes already held.
        offset: u64,
    },
    /// Sender → receiver: `data` belongs at `offset`; `crc32` covers `data`.
    Chunk {
        /// The snapshot the chunk belongs to.
        snapshot_id: u64,
        /// Where `data` goes in it.
        offset: u64,
        /// CRC32 of `data`.
        crc32: u32,
        /// The bytes.
        data: Bytes,
    },
    /// Receiver → sender: every byte arrived, the whole file checked out and is installed.
    Done {
        /// The completed snapshot.
        snapshot_id: u64,
    },
    /// Receiver → sender: refused (too large, corrupt); the sender should not retry as is.
    Abort {
        /// The refused snapshot.
        snapshot_id: u64,
        /// Why.
        reason: String,
    },
}
