//! The node's consensus state for status views.

use crate::membership::Membership;
use crate::progress::ProgressState;
use crate::storage::LogStore;
use crate::types::{Index, NodeId, Role, Term};

use super::RawNode;

/// A snapshot of the node's consensus state, for status views.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// Whom it voted for in `term`.
    pub vote: Option<NodeId>,
    /// The leader it follows, if known.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: Index,
    /// Applied index (as reported by the host).
    pub applied: Index,
    /// Highest index reported durable.
    pub persisted: Index,
    /// First index held in the log.
    pub first_index: Index,
    /// Last index held in the log.
    pub last_index: Index,
    /// Last index covered by the latest snapshot.
    pub snapshot_index: Index,
    /// The configuration in force.
    pub membership: Membership,
    /// The leader's view of each follower (empty on other roles).
    pub peers: Vec<PeerStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// The leader's view of one follower.
pub struct PeerStatus {
    /// The follower.
    pub id: NodeId,
    /// Highest index known to match the leader's log.
    pub match_index: Index,
    /// Next index to send.
    pub next_index: Index,
    /// `probe`, `replicate` or `snapshot`.
    pub state: &'static str,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
}

impl<S: LogStore> RawNode<S> {
    /// The consensus state and, on a leader, each follower's progress: the status view.
    pub fn status(&self) -> Status {
        let peers = self
            .progress
            .iter()
            .map(|(&id, p)| PeerStatus {
                id,
                match_index: p.match_index,
                next_index: p.next_index,
                state: match p.state {
                    ProgressState::Probe => "probe",
                    ProgressState::Replicate => "replicate",
                    ProgressState::Snapshot { .. } => "snapshot",
                },
                recent_active: p.recent_active,
            })
            .collect();
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            commit: self.commit,
            applied: self.applied,
            persisted: self.persistence.persisted_index(),
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            snapshot_index: self.log.snapshot_meta().index,
            membership: self.membership().clone(),
            peers,
        }
    }
}
