//! The transport seam: what the runtime needs of the network.
//!
//! The runtime only calls [`PeerTransport::send`] (never blocking: a message that cannot be
//! queued is dropped, which Raft tolerates as loss) and reads [`Inbound`] items from one
//! bounded channel. [`crate::transport_net::NetTransport`] implements it with raft-net;
//! a test or an embedding can implement it with anything that delivers messages.

use raft_core::Message;
use raft_snapshot::{SnapshotChunks, SnapshotFile};

use crate::metrics::Metrics;

/// What a transport delivers to the runtime.
#[derive(Debug)]
pub enum Inbound {
    /// A protocol message.
    Message(Message),
    /// Protocol messages from one peer, in order (raft-net delivers what one read brought in).
    Messages(Vec<Message>),
    /// A snapshot file received whole, checked (every chunk CRC, the body digest) and
    /// installed in the node's snapshot store, delivered before the `InstallSnapshot` message
    /// that names it by `(meta.index, meta.term)`. A transport with a separate snapshot lane
    /// (raft-net) delivers the file there and the message on the message lane once the file
    /// is in.
    Snapshot {
        /// The snapshot's metadata.
        meta: raft_core::SnapshotMeta,
        /// The installed file.
        file: SnapshotFile,
    },
}

/// How the runtime sends to peers.
pub trait PeerTransport: Send + Sync + 'static {
    /// Queues `msg` for `msg.to`; drops it when the peer's queue is full or unknown.
    fn send(&self, msg: Message);
    /// Sends an `InstallSnapshot` message with the snapshot file `chunks` was opened on
    /// (streamed from it, never read whole). The receiver must get both before it steps the
    /// message. `Err` when it could not be queued.
    fn send_snapshot(&self, msg: Message, chunks: SnapshotChunks) -> Result<(), String>;
    /// Copies the transport's own counters into `metrics`, for transports that keep them
    /// themselves. Called from the runtime about once a second.
    fn refresh_metrics(&self, _metrics: &Metrics) {}
}
