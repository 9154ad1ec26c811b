//! A node's view of the cluster, as the `Status` request answers it.

use raft_core::{Index, NodeId, Term};
use serde::{Deserialize, Serialize};

use crate::{AntiEntropyStatus, DigestInfo};

/// A node's view of the consensus state and of its log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This node.
    pub id: NodeId,
    /// `Follower`, `PreCandidate`, `Candidate` or `Leader`.
    pub role: String,
    /// Current term.
    pub term: Term,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// The leader's client address, if known.
    pub leader_addr: Option<String>,
    /// Highest index known committed.
    pub commit_index: Index,
    /// Highest index applied to the state machine.
    pub applied_index: Index,
    /// Highest index durable on this node.
    pub persisted_index: Index,
    /// First index held in the log.
    pub first_index: Index,
    /// Last index held in the log.
    pub last_index: Index,
    /// Index of this node's newest state-machine snapshot (taken or installed). The log
    /// keeps a trailing margin below it, so `first_index` may be well below it.
    pub snapshot_index: Index,
    /// The log's storage and its layout (for a disk log, its segments).
    pub storage: String,
    /// Voters of the configuration in force.
    pub voters: Vec<NodeId>,
    /// Learners of the configuration in force.
    pub learners: Vec<NodeId>,
    /// Elections this node started.
    pub elections: u64,
    /// The leader's view of each follower (empty on followers).
    pub peers: Vec<PeerInfo>,
    /// This node's most recent state digests, taken at every multiple of
    /// `digest_interval_entries`, oldest first (a bounded window).
    pub digests: Vec<DigestInfo>,
    /// What the leader found comparing every replica's digests (empty on followers).
    pub anti_entropy: AntiEntropyStatus,
    /// This node's HTTP address (status page, `/status`, `/metrics`), if it serves HTTP.
    pub http_addr: Option<String>,
    /// The latest leaders this node saw, oldest first (a bounded window).
    pub leader_changes: Vec<LeaderChange>,
    /// Requests served here so far, for rates and mean latencies over an interval.
    pub load: LoadCounters,
    /// Estimated bytes of the state machine's keys and values (0 if it does not say).
    pub memory_used_bytes: u64,
    /// The bound on `memory_used_bytes` (`kv_memory_bytes_max`; 0 if none).
    pub memory_bytes_max: u64,
    /// The node's software version (`raft-node --version`).
    pub version: String,
    /// Every member (voters and learners) with the client address this node knows for it,
    /// so that one node's answer leads to all (`raft-node status --cluster`).
    pub members: Vec<MemberAddr>,
}

/// A member and where its clients connect.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddr {
    /// The member.
    pub id: NodeId,
    /// Its client address (native protocol and RESP), if this node knows it.
    pub client_addr: Option<String>,
}

/// A leader this node learned of (or the loss of one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderChange {
    /// The term it happened in.
    pub term: Term,
    /// The new leader; `None` when the node lost its leader.
    pub leader: Option<NodeId>,
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// Monotonic counters of requests served by one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadCounters {
    /// Writes proposed on this node (as leader) and applied.
    pub writes: u64,
    /// Sum of those writes' proposal-to-apply latencies, in microseconds.
    pub write_latency_us_sum: u64,
    /// Reads served here.
    pub reads: u64,
}

/// The leader's view of one follower.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The follower.
    pub id: NodeId,
    /// Highest index known replicated there.
    pub match_index: Index,
    /// Next index to send.
    pub next_index: Index,
    /// Replication state (`probe`, `replicate`, `snapshot`).
    pub state: String,
    /// Heard from within the last election timeout.
    pub active: bool,
    /// Milliseconds since the leader last heard from it; `None` if never since it led.
    pub last_contact_ms: Option<u64>,
    /// Entries the leader holds beyond `match_index` (its last index minus the match).
    pub match_lag: u64,
    /// The latest heartbeat round trip to it, in microseconds; `None` before one completes.
    pub rtt_us: Option<u64>,
}
