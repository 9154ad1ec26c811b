//! The frames of the native protocol between a client and a raft-node: postcard-encoded,
//! each prefixed by its length as a 4-byte big-endian integer (tokio-util's
//! `LengthDelimitedCodec`), at most [`FRAME_BYTES_MAX`] bytes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{NodeId, NodeStatus, Session};

/// Largest frame either side accepts; a longer one closes that connection (and only it).
/// Below 16 MiB so that a frame's first byte is always 0: a node tells native connections
/// from RESP ones (which never start with 0) on the same port by that byte.
pub const FRAME_BYTES_MAX: usize = 8 << 20;

/// One request on a connection. `id` is echoed in the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Chosen by the client, echoed back.
    pub id: u64,
    /// What is asked.
    pub body: Request,
}

/// What a client asks of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Append `op` to the log and answer with the state machine's response once applied.
    Propose {
        /// The exactly-once session, if any.
        session: Option<Session>,
        /// The state machine's command.
        op: Bytes,
    },
    /// A read-only query of the state machine.
    Read {
        /// The query (for the built-in state machine, a read
        /// [`KvCommand`](crate::KvCommand)).
        op: Bytes,
        /// `true`: linearizable (ReadIndex). `false`: served from this node's replica as it
        /// is, possibly stale.
        linearizable: bool,
    },
    /// The node's view of the cluster.
    Status,
    /// Ask the leader to hand leadership to `to`.
    TransferLeader {
        /// A voter.
        to: NodeId,
    },
    /// Add `id` as a learner (non-voting).
    AddLearner {
        /// The new node.
        id: NodeId,
    },
    /// Make learner `id` a voter.
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Remove `id` from the cluster.
    RemoveNode {
        /// The member.
        id: NodeId,
    },
    /// Log this connection in as `user` (the `default` user when `None`); answered `Done`,
    /// or `Unauthenticated`. Sent first on a connection to a node that requires credentials;
    /// every later request on the connection has that user's role.
    Auth {
        /// The user.
        user: Option<String>,
        /// Their password.
        password: Password,
    },
}

/// A password on the wire; its bytes never appear in `Debug` output (logs, panics).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(pub Bytes);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

/// The answer to one [`RequestFrame`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The request's `id`.
    pub id: u64,
    /// The outcome.
    pub body: Response,
}

/// The outcome of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The state machine's response (for the built-in one, a postcard
    /// [`KvResponse`](crate::KvResponse)).
    Applied(Bytes),
    /// The node's status.
    Status(Box<NodeStatus>),
    /// An administrative request was accepted.
    Done,
    /// The request failed.
    Error(NodeError),
}

/// Why a node could not serve a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NodeError {
    /// Only the leader serves this; retry there.
    #[error("not the leader; leader is {leader:?} at {leader_addr:?}")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
        /// Its client address, if known.
        leader_addr: Option<String>,
    },
    /// Too many requests in flight: retry later.
    #[error("busy, retry")]
    Busy,
    /// No majority answered in time (no leader, or the leader lost its quorum). For a write,
    /// the outcome is unknown: retry with the same session to find out, exactly once.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request cannot succeed as asked.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// The connection has not authenticated (or its credentials were wrong).
    #[error("authentication failed: {0}")]
    Unauthenticated(String),
    /// The connection's user lacks the role this request needs.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}
