//! Per-node protocol settings. Every queue and batch in the core is bounded by a field here.

use crate::types::NodeId;

/// Settings of one node. [`Config::new`] gives production defaults for a 100 ms tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's ID. Never 0.
    pub id: NodeId,
    /// Seeds the node's own random generator (election timeouts). Give each node a different
    /// seed; the same seed replays the same choices.
    pub seed: u64,
    /// A follower that hears nothing from a leader for a randomized number of ticks in
    /// `election_timeout_ticks_min..election_timeout_ticks_max` starts an election.
    pub election_timeout_ticks_min: u32,
    /// Upper bound (exclusive) of the randomized election timeout.
    pub election_timeout_ticks_max: u32,
    /// A leader sends heartbeats this often. Must be well below the election timeout.
    pub heartbeat_interval_ticks: u32,
    /// Run a pre-vote round before incrementing the term, so a node that was partitioned
    /// away cannot disrupt a healthy leader when it returns (dissertation §9.6).
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps down, and
    /// followers ignore vote requests while they hear from a leader.
    pub check_quorum: bool,
    /// Serve linearizable reads from a leader lease instead of a heartbeat round. Safe only if
    /// every node's tick rate is within `lease_ticks_margin` ticks per election timeout of every
    /// other's (bounded clock drift); off by default. Requires `check_quorum`. The host must
    /// drive ticks from a monotonic clock and, after any stall (a paused process, a long GC),
    /// deliver the ticks it missed before any other input: a leader whose clock stood still
    /// would otherwise serve reads from a lease that already expired. A leader that starts a
    /// leadership transfer gives up its lease for the rest of its term.
    pub lease_read: bool,
    /// Ticks by which the leader's lease is shortened to absorb clock drift.
    pub lease_ticks_margin: u32,
    /// At most this many entries in one AppendEntries message.
    pub append_entries_max: usize,
    /// At most about this many bytes of entries in one AppendEntries message (one entry is
    /// always sent, however large).
    pub append_bytes_max: usize,
    /// AppendEntries messages in flight to one follower before the leader waits for acks.
    pub inflight_messages_max: usize,
    /// Bytes of proposed but uncommitted entries the leader accepts before refusing new
    /// proposals with [`ProposeError::Busy`](crate::ProposeError::Busy).
    pub uncommitted_bytes_max: usize,
    /// Linearizable reads waiting for confirmation or apply, per node.
    pub pending_reads_max: usize,
    /// At most about this many bytes of committed entries handed out for apply in one Ready.
    pub apply_batch_bytes_max: usize,
}

/// A setting that cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid raft config: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Defaults for node `id`: election timeout 10-20 ticks, heartbeat every 2 ticks, pre-vote
    /// and check-quorum on, lease reads off.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            seed: id,
            election_timeout_ticks_min: 10,
            election_timeout_ticks_max: 20,
            heartbeat_interval_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            lease_read: false,
            lease_ticks_margin: 2,
            append_entries_max: 1024,
            append_bytes_max: 1 << 20,
            inflight_messages_max: 256,
            uncommitted_bytes_max: 64 << 20,
            pending_reads_max: 65_536,
            apply_batch_bytes_max: 4 << 20,
        }
    }

    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |why: &str| Err(ConfigError(why.to_string()));
        if self.id == 0 {
            return fail("id: 0 is reserved");
        }
        if self.heartbeat_interval_ticks == 0 {
            return fail("heartbeat_interval_ticks must be at least 1");
        }
        if self.election_timeout_ticks_min <= self.heartbeat_interval_ticks {
            return fail("election_timeout_ticks_min must exceed heartbeat_interval_ticks");
        }
        if self.election_timeout_ticks_max <= self.election_timeout_ticks_min {
            return fail("election_timeout_ticks_max must exceed election_timeout_ticks_min");
        }
        if self.lease_read && !self.check_quorum {
            return fail("lease_read needs check_quorum");
        }
        if self.lease_read && self.lease_ticks_margin >= self.election_timeout_ticks_min {
            return fail("lease_ticks_margin must be below election_timeout_ticks_min");
        }
        if self.append_entries_max == 0 || self.inflight_messages_max == 0 {
            return fail("append_entries_max and inflight_messages_max must be at least 1");
        }
        if self.pending_reads_max == 0 {
            return fail("pending_reads_max must be at least 1");
        }
        Ok(())
    }
}
