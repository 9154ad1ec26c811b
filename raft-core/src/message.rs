//! The messages nodes exchange. Transports carry them; the core produces and consumes them.

use serde::{Deserialize, Serialize};

use crate::types::{Entry, Index, NodeId, SnapshotMeta, Term};

/// A message from one node to another. `term` is the sender's current term, except for
/// pre-vote requests and their answers, which carry the term the pre-candidate would take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// The sender's term (for pre-votes, the term it would take).
    pub term: Term,
    /// What the message says.
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
/// The protocol's messages (Raft §5, plus pre-vote, reads and transfer).
pub enum MessageBody {
    /// Ask for a vote, or (with `pre_vote`) ask whether a vote would be granted.
    RequestVote {
        /// A pre-vote asks without the voter recording anything.
        pre_vote: bool,
        /// The candidate's last log index.
        last_log_index: Index,
        /// The term of the candidate's last entry.
        last_log_term: Term,
        /// Set by a leadership-transfer target: voters then ignore their leader lease.
        leadership_transfer: bool,
    },
    /// The answer to a `RequestVote`.
    RequestVoteResponse {
        /// Answers a pre-vote.
        pre_vote: bool,
        /// Whether the vote (or pre-vote) is granted.
        granted: bool,
    },
    /// Replicates entries following `prev_log_index` (§5.3).
    AppendEntries {
        /// Index of the entry just before `entries`.
        prev_log_index: Index,
        /// Term of that entry: the follower accepts only if it holds it with this term.
        prev_log_term: Term,
        /// Entries to append, contiguous; may be empty (a probe).
        entries: Vec<Entry>,
        /// The leader's commit index.
        leader_commit: Index,
    },
    /// The answer to an `AppendEntries` or `InstallSnapshot`.
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
        /// Echoed back to confirm leadership for reads issued before this round.
        read_seq: u64,
    },
    /// The answer to a `Heartbeat` (also sent to a stale leader to tell it the newer term).
    HeartbeatResponse {
        /// The `read_seq` of the heartbeat answered.
        read_seq: u64,
    },
    /// Replaces the follower's state with a snapshot. The snapshot's bytes travel beside
    /// this message; the core deals in its metadata alone.
    InstallSnapshot {
        /// What the snapshot covers.
        meta: SnapshotMeta,
    },
    /// A follower forwards a linearizable read to its leader.
    ReadIndex {
        /// The follower's identifier for the read.
        ctx: u64,
    },
    /// The leader's answer: the read may be served once the follower has applied `index`.
    /// `index` is `None` when the leader could not confirm it (it is stepping down).
    ReadIndexResponse {
        /// The follower's identifier for the read.
        ctx: u64,
        /// The read index, or `None` if refused.
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
