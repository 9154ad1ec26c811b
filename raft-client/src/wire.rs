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
    /// The proposing leader's wall-clock time, Unix milliseconds, stamped when it built the
    /// entry (never by a client or a follower). The key-value state machine's clock is the
    /// largest stamp applied so far: expiry is decided from it, never from the clock of
    /// the node applying the entry, so every replica expires the same keys at the same
    /// index. 0 for an unstamped entry, which leaves the clock where it is.
    pub stamp_ms: u64,
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
        #[serde(deserialize_with = "flat::batch_commands")]
        commands: Vec<KvCommand>,
    },
    /// SET with options (and GETSET: `get`, [`Expiry::Persist`]). Answers `Ok`, or
    /// `Value(None)` when the condition kept it from writing; with `get`, `Value(old)`
    /// either way.
    SetWith {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// NX / XX.
        condition: SetCondition,
        /// GET: answer the value the key held before.
        get: bool,
        /// EX / PX / EXAT / PXAT / KEEPTTL ([`Expiry::Persist`] when none is given).
        expiry: Expiry,
    },
    /// SETNX: sets `key` only if it is absent; answers 1 or 0.
    SetNx {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// MSETNX: sets every pair only if none of the keys exists; answers 1 or 0.
    MSetNx {
        /// `(key, value)` pairs.
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// GETDEL: answers the value and removes the key.
    GetDel {
        /// The key.
        key: Bytes,
    },
    /// GETEX: answers the value and sets (or with [`Expiry::Persist`], removes) its time
    /// to live; [`Expiry::Keep`] is a plain GET through the log.
    GetEx {
        /// The key.
        key: Bytes,
        /// The new time to live.
        expiry: Expiry,
    },
    /// APPEND: answers the new length.
    Append {
        /// The key.
        key: Bytes,
        /// Bytes appended.
        value: Bytes,
    },
    /// SETRANGE: overwrites from `offset` (zero-padded); answers the new length.
    SetRange {
        /// The key.
        key: Bytes,
        /// Where the bytes go.
        offset: u64,
        /// The bytes.
        value: Bytes,
    },
    /// INCRBYFLOAT: `by` is the client's decimal text, parsed on apply; answers the new
    /// value as stored (`Value`).
    IncrByFloat {
        /// The key.
        key: Bytes,
        /// The increment, as text.
        by: Bytes,
    },
    /// RENAME (answers `Ok`) and RENAMENX (`nx`: answers 1 or 0).
    Rename {
        /// The old name.
        from: Bytes,
        /// The new name.
        to: Bytes,
        /// Only if `to` does not exist.
        nx: bool,
    },
    /// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT: answers 1 if the time to live was set.
    Expire {
        /// The key.
        key: Bytes,
        /// [`Expiry::In`] or [`Expiry::At`]; the others are malformed.
        when: Expiry,
        /// NX / XX / GT / LT.
        condition: ExpireCondition,
    },
    /// PERSIST: answers 1 if a time to live was removed.
    Persist {
        /// The key.
        key: Bytes,
    },
    /// FLUSHALL / FLUSHDB: removes every key.
    FlushAll,
    /// A transaction (MULTI ... EXEC): if every watched key still has the version given
    /// (see [`KvCommand::Versions`]; 0 = absent), every command is applied in order in
    /// this one entry and the answer is `Batch` (an error of one command is its own answer,
    /// the others still apply, as in Redis); otherwise nothing is applied and the answer is
    /// [`KvResponse::Aborted`]. May sit in a `Batch`; holds neither a `Batch` nor an `Exec`.
    Exec {
        /// WATCH guards: `(key, version)`.
        watches: Vec<(Bytes, u64)>,
        /// The queued commands.
        #[serde(deserialize_with = "flat::exec_commands")]
        commands: Vec<KvCommand>,
    },
    /// The leader's expiry entry: removes up to `keys_max` keys whose time to live ran out by
    /// the entry's stamp, earliest first; answers how many.
    Sweep {
        /// Keys removed at most.
        keys_max: u32,
    },
    /// STRLEN.
    Strlen {
        /// The key.
        key: Bytes,
    },
    /// GETRANGE (inclusive, negative counts from the end); a missing key is "".
    GetRange {
        /// The key.
        key: Bytes,
        /// First byte.
        start: i64,
        /// Last byte.
        end: i64,
    },
    /// TTL (seconds) or PTTL (`millis`): -2 if absent, -1 without a time to live.
    Ttl {
        /// The key.
        key: Bytes,
        /// Milliseconds rather than seconds.
        millis: bool,
    },
    /// EXPIRETIME / PEXPIRETIME: the Unix time the key expires at; -2, -1 as TTL.
    ExpireTime {
        /// The key.
        key: Bytes,
        /// Milliseconds rather than seconds.
        millis: bool,
    },
    /// TYPE: `Text("string")` or `Text("none")`.
    Type {
        /// The key.
        key: Bytes,
    },
    /// KEYS: every key matching the glob `pattern` (Redis' rules), in key order.
    Keys {
        /// The pattern.
        pattern: Bytes,
    },
    /// SCAN. The cursor is 0 to start; each answer's cursor is where the next call goes
    /// on, 0 at the end. It is derived from the keys themselves (see the key-value state
    /// machine), so any node continues another's scan.
    Scan {
        /// 0, or a cursor an earlier SCAN answered.
        cursor: u64,
        /// MATCH.
        pattern: Option<Bytes>,
        /// COUNT: keys examined (a hint, as in Redis).
        count: u64,
        /// TYPE.
        type_name: Option<Bytes>,
    },
    /// DBSIZE.
    DbSize,
    /// The version of each key (the log index that last changed it; 0 if absent), for
    /// WATCH.
    Versions {
        /// The keys.
        keys: Vec<Bytes>,
    },
}

/// SET's NX / XX.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetCondition {
    /// Always write.
    Always,
    /// NX: only if the key is absent.
    IfAbsent,
    /// XX: only if the key exists.
    IfPresent,
}

/// EXPIRE's NX / XX / GT / LT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireCondition {
    /// Always set.
    Always,
    /// NX: only if the key has no time to live.
    Nx,
    /// XX: only if it has one.
    Xx,
    /// GT: only if the new expiry is later (none counts as infinitely late).
    Gt,
    /// LT: only if the new expiry is earlier.
    Lt,
    /// XX and LT together: only if it has one and the new one is earlier.
    XxLt,
}

/// When a key expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    /// Keep the key's current time to live (KEEPTTL).
    Keep,
    /// No time to live.
    Persist,
    /// This many milliseconds after the applying entry's time (EX, PX): the state
    /// machine's clock, the leader's stamps (see [`LogCommand::stamp_ms`]).
    In(u64),
    /// At this Unix time, in milliseconds (EXAT, PXAT).
    At(u64),
}

/// Postcard variant indexes of [`KvCommand::encoded_flushes`]'s containers (tested).
const VARIANT_BATCH: u8 = 8;
const VARIANT_FLUSH_ALL: u8 = 20;
const VARIANT_EXEC: u8 = 21;

/// Commands in one [`KvCommand::Batch`] at most.
pub const BATCH_COMMANDS_MAX: usize = 1024;

impl KvCommand {
    /// Whether the command only reads, so that it can be served by ReadIndex instead of the log.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            KvCommand::Get { .. }
                | KvCommand::MGet { .. }
                | KvCommand::Exists { .. }
                | KvCommand::Strlen { .. }
                | KvCommand::GetRange { .. }
                | KvCommand::Ttl { .. }
                | KvCommand::ExpireTime { .. }
                | KvCommand::Type { .. }
                | KvCommand::Keys { .. }
                | KvCommand::Scan { .. }
                | KvCommand::DbSize
                | KvCommand::Versions { .. }
        )
    }

    /// Keys the command names (a pair counts once), which `request_keys_max` bounds; a
    /// batch or transaction counts its members'.
    pub fn key_count(&self) -> usize {
        match self {
            KvCommand::MGet { keys }
            | KvCommand::Exists { keys }
            | KvCommand::Del { keys }
            | KvCommand::Versions { keys } => keys.len(),
            KvCommand::MSet { pairs } | KvCommand::MSetNx { pairs } => pairs.len(),
            KvCommand::Rename { .. } => 2,
            KvCommand::Batch { commands } => commands.iter().map(KvCommand::key_count).sum(),
            KvCommand::Exec { watches, commands } => {
                watches.len() + commands.iter().map(KvCommand::key_count).sum::<usize>()
            }
            KvCommand::FlushAll
            | KvCommand::Sweep { .. }
            | KvCommand::Keys { .. }
            | KvCommand::Scan { .. }
            | KvCommand::DbSize => 0,
            _ => 1,
        }
    }

    /// Whether the command removes every key (FLUSHALL), alone or inside a batch or a
    /// transaction: it needs the admin role.
    pub fn flushes(&self) -> bool {
        match self {
            KvCommand::FlushAll => true,
            KvCommand::Batch { commands } | KvCommand::Exec { commands, .. } => {
                commands.iter().any(KvCommand::flushes)
            }
            _ => false,
        }
    }

    /// [`flushes`](Self::flushes) of an encoded command, decoding only what can be one:
    /// postcard puts the variant's index first, so a plain write is told apart by one byte.
    pub fn encoded_flushes(op: &[u8]) -> bool {
        match op.first() {
            Some(&(VARIANT_BATCH | VARIANT_FLUSH_ALL | VARIANT_EXEC)) => {
                KvCommand::decode(op).is_some_and(|c| c.flushes())
            }
            _ => false,
        }
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
    /// A status reply (TYPE's `string`).
    Text(String),
    /// KEYS' answer.
    Keys(Vec<Bytes>),
    /// SCAN's answer.
    Scan {
        /// Where the next call goes on; 0 when the scan is complete.
        cursor: u64,
        /// Keys found.
        keys: Vec<Bytes>,
    },
    /// The versions of keys ([`KvCommand::Versions`]).
    Versions(Vec<u64>),
    /// A transaction not applied because a watched key changed (EXEC's nil).
    Aborted,
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

/// Decoding of the commands inside a `Batch` or `Exec` and of the answers inside a
/// `Batch`, bounded in depth. Derived decoding of a `Batch` inside a `Batch` recursed once
/// per level: a 2 MiB op of nested batches, proposed by any client, overflowed the stack of
/// every node that applied it, on every restart. A flag per thread says which containers
/// the decoder is inside: a `Batch` may hold an `Exec` (a pipelined transaction), an `Exec`
/// holds neither, so decoding never goes deeper than two levels and a nested one is refused
/// as malformed. Answers nest as deep (a batch's transaction answers a `Batch`), no deeper.
mod flat {
    use std::cell::Cell;

    use serde::{de::Error, Deserialize, Deserializer};

    use super::{KvCommand, KvResponse};

    thread_local! {
        static IN_BATCH: Cell<bool> = const { Cell::new(false) };
        static IN_EXEC: Cell<bool> = const { Cell::new(false) };
        static RESPONSE_DEPTH: Cell<u8> = const { Cell::new(0) };
    }

    /// Resets a flag when the container's members are decoded (or failed to).
    struct Leave(&'static std::thread::LocalKey<Cell<bool>>);

    impl Drop for Leave {
        fn drop(&mut self) {
            self.0.with(|f| f.set(false));
        }
    }

    fn enter<E: Error>(
        flag: &'static std::thread::LocalKey<Cell<bool>>,
        refused_inside: &[&'static std::thread::LocalKey<Cell<bool>>],
    ) -> Result<Leave, E> {
        if refused_inside.iter().any(|f| f.with(Cell::get)) {
            return Err(E::custom(
                "a batch or transaction nested where it may not be",
            ));
        }
        flag.with(|f| f.set(true));
        Ok(Leave(flag))
    }

    pub(super) fn batch_commands<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<KvCommand>, D::Error> {
        let _leave = enter::<D::Error>(&IN_BATCH, &[&IN_BATCH, &IN_EXEC])?;
        Vec::<KvCommand>::deserialize(d)
    }

    pub(super) fn exec_commands<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<KvCommand>, D::Error> {
        let _leave = enter::<D::Error>(&IN_EXEC, &[&IN_EXEC])?;
        Vec::<KvCommand>::deserialize(d)
    }

    /// Answers nest at most this deep (a transaction's inside a batch's).
    const RESPONSE_DEPTH_MAX: u8 = 2;

    struct Up;

    impl Drop for Up {
        fn drop(&mut self) {
            RESPONSE_DEPTH.with(|d| d.set(d.get() - 1));
        }
    }

    pub(super) fn responses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<KvResponse>, D::Error> {
        if RESPONSE_DEPTH.with(Cell::get) >= RESPONSE_DEPTH_MAX {
            return Err(D::Error::custom("answers nested too deep"));
        }
        RESPONSE_DEPTH.with(|d| d.set(d.get() + 1));
        let _up = Up;
        Vec::<KvResponse>::deserialize(d)
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
    /// INCRBYFLOAT on a value, or with an increment, that is not a finite decimal number.
    #[error("value is not a valid float")]
    NotAFloat,
    /// INCRBYFLOAT's result would not be finite.
    #[error("increment would produce NaN or Infinity")]
    NotFinite,
    /// RENAME of a key that does not exist.
    #[error("no such key")]
    NoSuchKey,
    /// SETRANGE or APPEND past [`STRING_BYTES_MAX`].
    #[error("string exceeds maximum allowed size (proto-max-bulk-len)")]
    StringTooLong,
    /// A time to live that overflows once added to the clock.
    #[error("invalid expire time in '{0}' command")]
    InvalidExpireTime(String),
}

/// Longest string value SETRANGE and APPEND build (Redis' `proto-max-bulk-len`).
pub const STRING_BYTES_MAX: u64 = 512 << 20;

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
    pub term: u64,
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
    /// Milliseconds since the leader last heard from it; `None` if never since it led.
    pub last_contact_ms: Option<u64>,
    /// Entries the leader holds beyond `match_index` (its last index minus the match).
    pub match_lag: u64,
    /// The latest heartbeat round trip to it, in microseconds; `None` before one completes.
    pub rtt_us: Option<u64>,
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
    fn a_flush_is_found_alone_in_a_batch_or_in_a_transaction() {
        let flush = KvCommand::FlushAll;
        let set = KvCommand::Set {
            key: Bytes::from("k"),
            value: Bytes::from("v"),
        };
        let exec = KvCommand::Exec {
            watches: vec![],
            commands: vec![set.clone(), flush.clone()],
        };
        let batch = KvCommand::Batch {
            commands: vec![set.clone(), exec.clone()],
        };
        assert_eq!(flush.encode()[0], VARIANT_FLUSH_ALL);
        assert_eq!(exec.encode()[0], VARIANT_EXEC);
        assert_eq!(batch.encode()[0], VARIANT_BATCH);
        for c in [&flush, &exec, &batch] {
            assert!(KvCommand::encoded_flushes(&c.encode()), "{c:?}");
        }
        assert!(!KvCommand::encoded_flushes(&set.encode()));
        assert!(!KvCommand::encoded_flushes(
            &KvCommand::Batch {
                commands: vec![set]
            }
            .encode()
        ));
    }

    #[test]
    fn a_transaction_may_sit_in_a_batch_but_nothing_nests_deeper() {
        let get = KvCommand::Get {
            key: Bytes::from("k"),
        };
        let exec = |commands| KvCommand::Exec {
            watches: vec![(Bytes::from("k"), 3)],
            commands,
        };
        let batch = |commands| KvCommand::Batch { commands };
        let ok = batch(vec![get.clone(), exec(vec![get.clone()])]);
        assert_eq!(KvCommand::decode(&ok.encode()), Some(ok));
        for refused in [
            exec(vec![exec(vec![get.clone()])]),
            exec(vec![batch(vec![get.clone()])]),
            batch(vec![batch(vec![get.clone()])]),
            batch(vec![exec(vec![batch(vec![get.clone()])])]),
        ] {
            assert_eq!(KvCommand::decode(&refused.encode()), None, "{refused:?}");
        }
        // A failed decode leaves nothing behind: the next one is judged afresh.
        let single = exec(vec![get.clone()]);
        assert_eq!(KvCommand::decode(&single.encode()), Some(single));
        let answer = KvResponse::Batch(vec![
            KvResponse::Ok,
            KvResponse::Batch(vec![KvResponse::Int(1)]),
            KvResponse::Aborted,
        ]);
        assert_eq!(KvResponse::decode(&answer.encode()), Some(answer));
        let deep = KvResponse::Batch(vec![KvResponse::Batch(vec![KvResponse::Batch(vec![])])]);
        assert_eq!(KvResponse::decode(&deep.encode()), None);
        let after = KvResponse::Batch(vec![KvResponse::Batch(vec![])]);
        assert_eq!(KvResponse::decode(&after.encode()), Some(after));
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
