//! The commands and answers of the built-in key-value state machine: a client encodes an
//! operation once and the node stores exactly those bytes as a [`LogCommand`]'s `op`.
//!
//! [`LogCommand`]: crate::LogCommand

use bytes::Bytes;
use serde::{Deserialize, Serialize};

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
    /// machine's clock, the leader's stamps (see
    /// [`LogCommand::stamp_ms`](crate::LogCommand::stamp_ms)).
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
