//! The state digests a node reports and the leader's comparison of them.

use raft_core::{Index, NodeId};
use serde::{Deserialize, Serialize};

/// One state digest a node recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestInfo {
    /// The log index the state was digested at (every entry up to it applied, none after).
    pub index: Index,
    /// The XXH3-128 digest of the state, 32 hex digits.
    pub digest: String,
}

/// The leader's anti-entropy view: replicas whose state digest differs from the majority's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AntiEntropyStatus {
    /// The highest index whose digests were compared.
    pub compared_index: Index,
    /// Indexes compared since this node became leader.
    pub comparisons: u64,
    /// Divergences found so far (one per replica and index), as in
    /// `raft_replica_divergence_total`.
    pub divergence_total: u64,
    /// The replicas diverged at the latest index compared for each, ascending by node.
    pub divergent: Vec<DivergentReplica>,
}

/// A replica whose digest differs from the majority at some index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DivergentReplica {
    /// The replica.
    pub node: NodeId,
    /// The index compared.
    pub index: Index,
    /// Its digest there.
    pub digest: String,
    /// The digest a strict majority of the replicas reported, if one did.
    pub majority_digest: Option<String>,
}
