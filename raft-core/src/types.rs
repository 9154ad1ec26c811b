//! The values the protocol is made of: identifiers, log entries, hard state, snapshot metadata.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::membership::Membership;

/// A node's identifier, unique within a cluster. `0` is never a valid ID.
pub type NodeId = u64;
/// A Raft term. Terms start at 0 on a fresh node; the first election makes term 1.
pub type Term = u64;
/// A log index. Real entries start at index 1; index 0 is the empty log's sentinel.
pub type Index = u64;

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Appended by every new leader, so that it can commit an entry of its own term (§5.4.2)
    /// and learn the commit index of its predecessors.
    Noop,
    /// An application command, opaque to the protocol.
    Command(Bytes),
    /// A configuration. It takes effect on a node as soon as it is appended to its log,
    /// not when it commits (Raft dissertation §4.1).
    Membership(Membership),
}

/// One record of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, from 1.
    pub index: Index,
    /// Term of the leader that created it.
    pub term: Term,
    /// What it carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// Bytes this entry counts against message and batch limits: the payload plus a fixed
    /// overhead for index, term and framing, so that empty entries are not free.
    pub fn size_bytes(&self) -> usize {
        const ENTRY_OVERHEAD_BYTES: usize = 24;
        ENTRY_OVERHEAD_BYTES
            + match &self.payload {
                EntryPayload::Noop => 0,
                EntryPayload::Command(data) => data.len(),
                EntryPayload::Membership(m) => 8 * m.node_count(),
            }
    }
}

/// The state that must be durable before a node sends anything that depends on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// The commit index this node knew of. Persisting it is an optimisation (a restarted node
    /// can apply up to it at once); it is clamped to the durable log on restart.
    pub commit: Index,
}

/// Describes a snapshot: the state machine after applying every entry up to `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last log index the snapshot covers.
    pub index: Index,
    /// The term of the entry at `index`.
    pub term: Term,
    /// The configuration in force at `index`.
    pub membership: Membership,
}

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Campaigning in a pre-vote round: the term has not been incremented yet.
    PreCandidate,
    /// Campaigning for the current term, having voted for itself.
    Candidate,
    /// Leads the current term.
    Leader,
}
