//! What the node's inputs return when they refuse: errors, and the identity of a proposal.

use crate::config::ConfigError;
use crate::membership::MembershipError;
use crate::storage::StorageError;
use crate::types::{Index, NodeId, SnapshotMeta, Term};

/// Why the node could not be created or could not read its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The configuration is invalid.
    Config(ConfigError),
    /// The log could not be read.
    Storage(StorageError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(e) => e.fmt(f),
            Error::Storage(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Storage(e)
    }
}

/// Identifies an appended entry: it is committed if and only if the entry applied at `index`
/// has `term`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProposalId {
    /// Log index of the entry.
    pub index: Index,
    /// Term of the entry.
    pub term: Term,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// Why a proposal was refused. Nothing was appended.
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader` is where to retry, if known.
    /// This node is not the leader.
    NotLeader {
        /// Where to retry, if known.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is under way; retry at the new leader.
    TransferInProgress,
    /// Too many bytes are proposed and not yet committed; retry later.
    Busy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// Why a membership change was refused. Nothing was appended.
pub enum ChangeError {
    /// This node is not the leader.
    NotLeader {
        /// Where to retry, if known.
        leader: Option<NodeId>,
    },
    /// The leader has not yet committed an entry of its own term. Changing membership before
    /// that can lose a committed configuration (the single-server-change bug).
    NotReady,
    /// A previous change has not been committed yet (at most one in flight).
    ChangeInProgress,
    /// A leadership transfer is under way.
    TransferInProgress,
    /// The change itself is invalid.
    Invalid(MembershipError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// Why a leadership transfer was refused.
pub enum TransferError {
    /// This node is not the leader.
    NotLeader {
        /// Where to retry, if known.
        leader: Option<NodeId>,
    },
    /// The target is not a voter of the current configuration.
    NotAVoter,
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// Why a snapshot the host reported ([`RawNode::on_snapshot_built`](crate::RawNode::on_snapshot_built))
/// will not be sent to followers.
pub enum SnapshotError {
    /// The node cannot check it: the log does not hold the entry at its index.
    NotInLog {
        /// The snapshot's index.
        index: Index,
        /// The first index the log holds.
        first_index: Index,
        /// The last index the log holds.
        last_index: Index,
    },
    /// Its term or configuration differs from the log's at its index.
    Disagrees {
        /// What the host reported.
        reported: Box<SnapshotMeta>,
        /// What the log records at that index.
        log: Box<SnapshotMeta>,
    },
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::NotInLog {
                index,
                first_index,
                last_index,
            } => write!(
                f,
                "snapshot at index {index} cannot be checked: the log holds {first_index}..={last_index}"
            ),
            SnapshotError::Disagrees { reported, log } => write!(
                f,
                "snapshot at index {} records term {} and {:?}, the log term {} and {:?}",
                reported.index, reported.term, reported.membership, log.term, log.membership
            ),
        }
    }
}

impl std::error::Error for SnapshotError {}
