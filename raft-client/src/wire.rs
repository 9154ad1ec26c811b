//! The native protocol between [`Client`](crate::Client) and a raft-node: postcard-encoded
//! frames, each prefixed by its length as a 4-byte big-endian integer (tokio-util's
//! `LengthDelimitedCodec`), at most [`FRAME_BYTES_MAX`] bytes.
//!
//! The same types describe the log entries of the built-in key-value state machine
//! ([`LogCommand`], [`KvCommand`], [`KvResponse`]), so that a client can encode an
//! operation once and the node stores exactly those bytes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Largest frame either side accepts; a longer one closes that connection (and only it).
/// Below 16 MiB so that a frame's first byte is always 0: a node tells native connections
/// from RESP ones (which never start with 0) on the same port by that byte.
pub const FRAME_BYTES_MAX: usize = 8 << 20;

/// A node's identifier (the same as `raft_core::NodeId`).
pub type NodeId = u64;

/// Identifies a client's request for exactly-once application.
///
/// A client picks a random `client_id` and numbers its requests `seq = 1, 2, ...`. A retry
/// reuses the same `seq`. `acked_below` tells the state machine that every request below it
/// has been answered, so their cached responses can be dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Random, never 0.
    pub client_id: u64,
    /// This request's number, at least 1.
    pub seq: u64,
    /// Every request with `seq < acked_below` has been answered and will not be retried.
    pub acked_below: u64,
}

/// What the node puts in the log for one client write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCommand {
    /// `None` for clients without exactly-once (RESP, HTTP): a retry may apply twice.
    pub session: Option<Session>,
    /// The state machine's command (for the built-in one, a postcard [`KvCommand`]).
    pub op: Bytes,
}

impl LogCommand {
    /// The bytes stored in the log (postcard).
    pub fn encode(&self) -> Bytes {
        postcard::to_allocvec(self)
            .expect("a LogCommand always serializes")
            .into()
    }

    /// Reads what [`LogCommand::encode`] wrote; `None` for anything else. A hosted state
    /// machine decodes each applied command with this.
    pub fn decode(bytes: &[u8]) -> Option<LogCommand> {
        postcard::from_bytes(bytes).ok()
    }
}

/// A command of the built-in key-value state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// The value of `key`.
    Get {
        /// The key.
        key: Bytes,
    },
    /// The values of `keys`, in order.
    MGet {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// How many of `keys` exist (a key named twice counts twice, as in Redis).
    Exists {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// Sets `key` to `value`.
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Sets every pair, atomically.
    MSet {
        /// `(key, value)` pairs, applied in order.
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// Removes `keys`; answers how many existed.
    Del {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// Adds `by` to the decimal integer stored at `key` (0 if absent); answers the result.
    IncrBy {
        /// The key.
        key: Bytes,
        /// The increment (INCR is `by: 1`).
        by: i64,
    },
    /// Sets `key` to `new` (or removes it when `new` is `None`) only if its current value is
    /// `expected` (`None`: the key must be absent).
    Cas {
        /// The key.
        key: Bytes,
        /// The value the key must hold.
        expected: Option<Bytes>,
        /// The value to store.
        new: Option<Bytes>,
    },
    /// Several write commands applied in order in one log entry (a RESP pipeline's run of
    /// writes): one entry instead of many, the same result as applying them one by one.
    /// At most [`BATCH_COMMANDS_MAX`]; no nested batches.
    Batch {
        /// The commands, in order.
        #[serde(deserialize_with = "flat::commands")]
        commands: Vec<KvCommand>,
    },
}

/// Commands in one [`KvCommand::Batch`] at most.
pub const BATCH_COMMANDS_MAX: usize = 1024;

impl KvCommand {
    /// Whether the command only reads, so that it can be served by ReadIndex instead of the log.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            KvCommand::Get { .. } | KvCommand::MGet { .. } | KvCommand::Exists { .. }
        )
    }

    /// The postcard bytes the node stores.
    pub fn encode(&self) -> Bytes {
        postcard::to_allocvec(self)
            .expect("KvCommand always serializes")
            .into()
    }

    /// Decodes [`encode`](Self::encode)'s output.
    pub fn decode(bytes: &[u8]) -> Option<KvCommand> {
        postcard::from_bytes(bytes).ok()
    }
}

/// The answer of the built-in key-value state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResponse {
    /// A write without a value to return.
    Ok,
    /// GET's answer.
    Value(Option<Bytes>),
    /// MGET's answer.
    Values(Vec<Option<Bytes>>),
    /// DEL, EXISTS and INCRBY's answer.
    Int(i64),
    /// Compare-and-set's answer: whether it swapped, and the value the key holds now.
    Cas {
        /// Whether the value was replaced.
        swapped: bool,
        /// The key's value after the command.
        current: Option<Bytes>,
    },
    /// A batch's answers, one per command, in order.
    Batch(#[serde(deserialize_with = "flat::responses")] Vec<KvResponse>),
    /// The command was applied (or refused) deterministically with an error.
    Error(KvError),
}

impl KvResponse {
    /// The postcard bytes sent back to the client.
    pub fn encode(&self) -> Bytes {
        postcard::to_allocvec(self)
            .expect("KvResponse always serializes")
            .into()
    }

    /// Decodes [`encode`](Self::encode)'s output.
    pub fn decode(bytes: &[u8]) -> Option<KvResponse> {
        postcard::from_bytes(bytes).ok()
    }
}

/// Decoding of a batch's members, which are never batches themselves. Derived decoding of a
/// `Batch` inside a `Batch` recursed once per level: a 2 MiB op of nested batches, proposed
/// by any client, overflowed the stack of every node that applied it, on every restart.
/// These mirrors have no `Batch` variant, so a nested one is an unknown variant (the same
/// `Malformed` answer the state machine gave a nested batch before) and decoding never
/// goes deeper than one level. The variants are in the same order, so the bytes are the
/// same.
mod flat {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer};

    use super::{KvCommand, KvError, KvResponse};

    #[derive(Deserialize)]
    enum Command {
        Get {
            key: Bytes,
        },
        MGet {
            keys: Vec<Bytes>,
        },
        Exists {
            keys: Vec<Bytes>,
        },
        Set {
            key: Bytes,
            value: Bytes,
        },
        MSet {
            pairs: Vec<(Bytes, Bytes)>,
        },
        Del {
            keys: Vec<Bytes>,
        },
        IncrBy {
            key: Bytes,
            by: i64,
        },
        Cas {
            key: Bytes,
            expected: Option<Bytes>,
            new: Option<Bytes>,
        },
    }

    impl From<Command> for KvCommand {
        fn from(c: Command) -> KvCommand {
            match c {
                Command::Get { key } => KvCommand::Get { key },
                Command::MGet { keys } => KvCommand::MGet { keys },
                Command::Exists { keys } => KvCommand::Exists { keys },
                Command::Set { key, value } => KvCommand::Set { key, value },
                Command::MSet { pairs } => KvCommand::MSet { pairs },
                Command::Del { keys } => KvCommand::Del { keys },
                Command::IncrBy { key, by } => KvCommand::IncrBy { key, by },
                Command::Cas { key, expected, new } => KvCommand::Cas { key, expected, new },
            }
        }
    }

    #[derive(Deserialize)]
    enum Response {
        Ok,
        Value(Option<Bytes>),
        Values(Vec<Option<Bytes>>),
        Int(i64),
        Cas {
            swapped: bool,
            current: Option<Bytes>,
        },
        Batch(Nested),
        Error(KvError),
    }

    /// Where `Batch` stands, so that the variants after it keep their index; never decodes.
    enum Nested {}

    impl<'de> Deserialize<'de> for Nested {
        fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Nested, D::Error> {
            Err(serde::de::Error::custom("a batch inside a batch"))
        }
    }

    impl From<Response> for KvResponse {
        fn from(r: Response) -> KvResponse {
            match r {
                Response::Ok => KvResponse::Ok,
                Response::Value(v) => KvResponse::Value(v),
                Response::Values(v) => KvResponse::Values(v),
                Response::Int(n) => KvResponse::Int(n),
                Response::Cas { swapped, current } => KvResponse::Cas { swapped, current },
                Response::Batch(nested) => match nested {},
                Response::Error(e) => KvResponse::Error(e),
            }
        }
    }

    pub(super) fn commands<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<KvCommand>, D::Error> {
        let flat = Vec::<Command>::deserialize(d)?;
        Ok(flat.into_iter().map(KvCommand::from).collect())
    }

    pub(super) fn responses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<KvResponse>, D::Error> {
        let flat = Vec::<Response>::deserialize(d)?;
        Ok(flat.into_iter().map(KvResponse::from).collect())
    }
}

/// A deterministic error of the key-value state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// INCRBY on a value that is not a decimal i64.
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    /// INCRBY would overflow i64.
    #[error("increment or decrement would overflow")]
    Overflow,
    /// The request's `seq` is below the session's `acked_below`: its response was already
    /// delivered and dropped, so it cannot be answered again (it is not applied again either).
    #[error("request {seq} of client {client_id} was already acknowledged")]
    AlreadyAcknowledged {
        /// The client.
        client_id: u64,
        /// The request.
        seq: u64,
    },
    /// The client has too many unacknowledged requests cached.
    #[error("too many unacknowledged requests in this session")]
    SessionFull,
    /// The command's bytes did not decode.
    #[error("malformed command")]
    Malformed,
    /// A read-only command was sent as a write, or a write as a read.
    #[error("wrong kind of command for this request")]
    WrongKind,
    /// The write would grow the key-value state past the cluster's `kv_memory_bytes_max`
    /// (Redis' `maxmemory`); reads and deletes still work.
    #[error("command not allowed when used memory > 'maxmemory'")]
    OutOfMemory,
    /// The reply would carry more value bytes than the node's `reply_bytes_max`.
    #[error("reply of {bytes} bytes exceeds reply_bytes_max ({max}); ask for fewer keys")]
    ReplyTooLarge {
        /// Bytes of values the reply would carry.
        bytes: u64,
        /// The node's limit.
        max: u64,
    },
    /// The request names more keys than the node's `request_keys_max`.
    #[error("{keys} keys exceed request_keys_max ({max})")]
    TooManyKeys {
        /// Keys named.
        keys: u64,
        /// The node's limit.
        max: u64,
    },
}

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
        /// The query (for the built-in state machine, a read [`KvCommand`]).
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
    /// The state machine's response (for the built-in one, a postcard [`KvResponse`]).
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

/// A node's view of the consensus state and of its log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This node.
    pub id: NodeId,
    /// `Follower`, `PreCandidate`, `Candidate` or `Leader`.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// The leader's client address, if known.
    pub leader_addr: Option<String>,
    /// Highest index known committed.
    pub commit_index: u64,
    /// Highest index applied to the state machine.
    pub applied_index: u64,
    /// Highest index durable on this node.
    pub persisted_index: u64,
    /// First index held in the log.
    pub first_index: u64,
    /// Last index held in the log.
    pub last_index: u64,
    /// Index of this node's newest state-machine snapshot (taken or installed). The log
    /// keeps a trailing margin below it, so `first_index` may be well below it.
    pub snapshot_index: u64,
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

/// One state digest a node recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestInfo {
    /// The log index the state was digested at (every entry up to it applied, none after).
    pub index: u64,
    /// The XXH3-128 digest of the state, 32 hex digits.
    pub digest: String,
}

/// The leader's anti-entropy view: replicas whose state digest differs from the majority's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AntiEntropyStatus {
    /// The highest index whose digests were compared.
    pub compared_index: u64,
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
    pub index: u64,
    /// Its digest there.
    pub digest: String,
    /// The digest a strict majority of the replicas reported, if one did.
    pub majority_digest: Option<String>,
}

/// The leader's view of one follower.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The follower.
    pub id: NodeId,
    /// Highest index known replicated there.
    pub match_index: u64,
    /// Next index to send.
    pub next_index: u64,
    /// Replication state (`probe`, `replicate`, `snapshot`).
    pub state: String,
    /// Heard from within the last election timeout.
    pub active: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Batch` inside a `Batch`, `depth` deep, around one `Get`: postcard bytes a hostile
    /// client can send as a proposal's op.
    fn nested_batch(depth: usize) -> Vec<u8> {
        let mut op = Vec::with_capacity(2 * depth + 2);
        for _ in 0..depth {
            op.extend_from_slice(&[8, 1]);
        }
        op.extend_from_slice(&[0, 0]);
        op
    }

    #[test]
    fn deeply_nested_batches_do_not_overflow_the_stack() {
        let op = nested_batch(1_000_000);
        // A nested response: `Batch` is variant 5 of `KvResponse`.
        let mut response: Vec<u8> = [5, 1].repeat(1_000_000);
        response.push(0);
        // The runtime's threads have 2 MiB stacks; decode on one of that size.
        let refused = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                KvCommand::decode(&op).is_none()
                    && KvCommand::decode(&nested_batch(2)).is_none()
                    && KvCommand::decode(&nested_batch(1)).is_some()
                    && KvResponse::decode(&response).is_none()
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(refused);
    }

    #[test]
    fn flat_batches_round_trip() {
        let command = KvCommand::Batch {
            commands: vec![
                KvCommand::Set {
                    key: Bytes::from("k"),
                    value: Bytes::from("v"),
                },
                KvCommand::Cas {
                    key: Bytes::from("k"),
                    expected: None,
                    new: Some(Bytes::from("w")),
                },
                KvCommand::IncrBy {
                    key: Bytes::from("n"),
                    by: -3,
                },
            ],
        };
        assert_eq!(KvCommand::decode(&command.encode()), Some(command));
        let response = KvResponse::Batch(vec![
            KvResponse::Ok,
            KvResponse::Cas {
                swapped: true,
                current: Some(Bytes::from("w")),
            },
            KvResponse::Error(KvError::Overflow),
        ]);
        assert_eq!(KvResponse::decode(&response.encode()), Some(response));
        let after_batch = KvResponse::Error(KvError::NotAnInteger);
        assert_eq!(KvResponse::decode(&after_batch.encode()), Some(after_batch));
    }
}
