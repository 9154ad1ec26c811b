//! The messages nodes exchange. Transports carry them; the core produces and consumes them.

use serde::{Deserialize, Serialize};

use crate::types::{Entry, Index, NodeId, SnapshotMeta, Term};

/// A message from one node to another. `term` is the sender's current term, except for
/// pre-vote requests and their answers, which carry the term the pre-candidate would take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
}

/// Where a follower's log stops agreeing with the leader's, so the leader can skip a whole
/// term of entries per round trip instead of one entry (Raft §5.3, "fast backtracking").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictHint {
    /// The follower's term at the rejected `prev_log_index`, or `None` if its log is shorter.
    pub term: Option<Term>,
    /// The first index of `term` in the follower's log, or its `last_index + 1`.
    pub index: Index,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Ask for a vote, or (with `pre_vote`) ask whether a vote would be granted.
    RequestVote {
        pre_vote: bool,
        last_log_index: Index,
        last_log_term: Term,
        /// Set by a leadership-transfer target: voters then ignore their leader lease.
        leadership_transfer: bool,
    },
    RequestVoteResponse {
        pre_vote: bool,
        granted: bool,
    },
    AppendEntries {
        prev_log_index: Index,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: Index,
    },
    AppendEntriesResponse {
        /// On success: the last index known to match the leader's log and durable here.
        /// On rejection: the rejected `prev_log_index`.
        index: Index,
        /// `None` on success.
        reject: Option<ConflictHint>,
    },
    /// Keeps followers from campaigning, carries the commit index, and confirms leadership
    /// for reads: `read_seq` is echoed back by the follower.
    Heartbeat {
        /// `min(leader commit, follower match)`: never beyond what the follower holds.
        commit: Index,
        read_seq: u64,
    },
    HeartbeatResponse {
        read_seq: u64,
    },
    /// Replaces the follower's state with a snapshot. The snapshot's bytes travel beside
    /// this message; the core deals in its metadata alone.
    InstallSnapshot {
        meta: SnapshotMeta,
    },
    /// A follower forwards a linearizable read to its leader.
    ReadIndex {
        ctx: u64,
    },
    /// The leader's answer: the read may be served once the follower has applied `index`.
    /// `index` is `None` when the leader could not confirm it (it is stepping down).
    ReadIndexResponse {
        ctx: u64,
        index: Option<Index>,
    },
    /// From a leader to its transfer target: campaign now, without waiting for a timeout.
    TimeoutNow,
}

impl Message {
    /// Whether this message reads or changes a vote: such messages are exempt from the
    /// usual term handling in pre-vote and lease rules.
    pub fn is_vote_request(&self) -> bool {
        matches!(self.body, MessageBody::RequestVote { .. })
    }
}
