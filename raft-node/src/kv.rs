//! The built-in deterministic key-value state machine, with client sessions for
//! exactly-once writes, expiry decided by leader-stamped time, and per-key versions for
//! transactions.
//!
//! Every log command is a postcard [`LogCommand`]: an optional [`Session`], the postcard
//! [`KvCommand`] and the proposing leader's wall-clock stamp. For a command with a session
//! the state machine keeps the responses of the client's unacknowledged requests; a
//! duplicate `(client_id, seq)` gets the cached response and changes nothing. Sessions
//! expire by log index alone (a session idle for `session_expiry_entries` entries is dropped
//! when a later entry is applied), so every replica expires the same sessions at the same
//! index. The session table is part of the snapshot and of the digest.
//!
//! The limits in [`KvLimits`] take part in that determinism: every node of a cluster must
//! run with the same values.
//!
//! # Time and expiry
//! The state keeps a clock: the largest [`LogCommand::stamp_ms`] applied so far (the leader
//! stamps its wall-clock time into each entry it builds, [`log_command`]). Every decision
//! about time (a relative TTL's deadline, whether a key has expired, TTL's answer) is made
//! from that clock, never from the clock of the node applying or reading, so every replica
//! agrees at every index. A key whose deadline is at or before the clock is gone: reads on
//! any node answer as if it were absent (they compare against the state's clock, which is
//! the same on every node at the same index), and a write that touches it deletes it first
//! (an `expired` change). Keys nobody touches are deleted through the log: the leader, when
//! its own clock passes the earliest deadline in its applied state (an ordered index of
//! deadlines), proposes a [`KvCommand::Sweep`] entry, which deletes up to
//! [`SWEEP_KEYS_MAX`] keys due by its stamp, one in flight at a time
//! ([`crate::runtime::HostedMachine::housekeeping`]). So a key is readable until an entry
//! stamped at or after its deadline applies: on an idle cluster, within a tick or two of
//! the deadline; on a busy one, with the next entry.
//!
//! A leader clock that jumps *forward* by d advances the state's clock by d with its next
//! entry: keys due within d expire at once, early by up to d, on every replica alike, and
//! the clock never comes back (it is a maximum). Once the leader's clock is corrected
//! (or another node leads), the stamps are behind the state's clock and time stands still
//! for the state until the wall clock catches up: deadlines set meanwhile (relative to the
//! state's clock) are late by up to d. A leader clock that jumps *backward* by d changes
//! nothing at once (stamps below the clock are ignored) and stops the state's time for up
//! to d: keys expire late by up to d, never early. Both are the price of one clock all
//! replicas agree on; `docs/EXPIRY.md` says the same for users.
//!
//! # Versions
//! Each key keeps the log index that last changed it (written, its TTL changed, renamed to).
//! WATCH reads versions ([`KvCommand::Versions`], 0 for an absent key) and EXEC
//! ([`KvCommand::Exec`]) applies its commands only if every watched key still has the
//! version read, in one entry: all of them or none.
//!
//! # Layout
//! The state lives in persistent ordered maps (`imbl::OrdMap`, B-trees whose nodes are
//! shared between copies), so that [`StateMachine::freeze`] for a snapshot or a digest is
//! O(1) and the writes after it copy only the O(log n) nodes they touch. A plain `BTreeMap`
//! behind an `Arc` made the first write after every freeze copy the whole map on the apply
//! path: ~100 ms with 100,000 keys, a stall of every client of the node. The maps iterate in
//! key order, so the snapshot bytes and the digest are canonical. Besides the keys, two
//! derived indexes (rebuilt on restore, never stored): deadlines in time order, and keys in
//! the order of a fixed 64-bit hash, which SCAN walks: its cursor is the hash where the
//! next call starts, so it is the same on every node (a scan survives a leader change) and a
//! key present for the whole scan is returned at least once however keys come and go.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

use crate::changes::{ChangeSink, KeyChange, KeyEvent};
use crate::glob::Pattern;
use bytes::Bytes;
use raft_client::wire::{
    ExpireCondition, Expiry, KvCommand, KvError, KvResponse, LogCommand, Session, SetCondition,
    BATCH_COMMANDS_MAX, STRING_BYTES_MAX,
};
use raft_core::Index;
use raft_snapshot::{DigestHasher, RestoreError, SnapshotSource, StateDigest, StateMachine};
use serde::{Deserialize, Serialize};

/// Format 2: keys carry their version and deadline, the state its clock.
const SNAPSHOT_MAGIC: &[u8; 4] = b"RNK2";
const DIGEST_DOMAIN: &[u8] = b"raft-node kv state v2\0";
/// Largest snapshot body restored: a bound on the allocation a corrupt length could ask for.
const SNAPSHOT_BYTES_MAX: u64 = 4 << 30;
/// What one stored key costs beyond its key and value bytes, in the estimate of the
/// state's size that `kv_memory_bytes_max` bounds: two `Bytes` handles (32 bytes each), the
/// version and deadline, the B-tree's share per entry and the SCAN index's entry, rounded
/// up.
pub const KEY_OVERHEAD_BYTES: u64 = 160;
/// Bytes of values a read inside a logged batch may return. A constant, not a node's
/// `reply_bytes_max`: the answer is cached in the client's session, which is replicated
/// state, so every replica must reach the same answer.
pub const LOGGED_READ_REPLY_BYTES_MAX: usize = 16 << 20;
/// Keys one sweep entry deletes at most: bounds the work of one apply.
pub const SWEEP_KEYS_MAX: u32 = 1_000;
/// Keys one SCAN call examines at most, whatever its COUNT.
pub const SCAN_COUNT_MAX: u64 = 100_000;
/// What each key in a KEYS or SCAN reply counts for beyond its bytes, against the reply
/// bound (its RESP framing and handle).
const KEY_REPLY_OVERHEAD_BYTES: usize = 16;
/// The seed of the SCAN order's hash. Fixed forever: cursors handed out depend on it.
const SCAN_HASH_SEED: u64 = 0x5ca7_7e2d_0c0f_fee5;

/// Bounds of the session table. Cluster-wide constants: they decide which duplicates are
/// recognised, so they must agree on every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLimits {
    /// A session not used for this many log entries is dropped. Retries of a request must
    /// happen within this window to be recognised as duplicates.
    pub session_expiry_entries: u64,
    /// At most this many sessions; the least recently used is dropped to make room.
    pub sessions_max: usize,
    /// Cached responses per session (requests sent but not acknowledged).
    pub session_responses_max: usize,
    /// Estimated bytes of keys and values (see [`KEY_OVERHEAD_BYTES`]) past which a write
    /// that grows the state fails with [`KvError::OutOfMemory`]; decided on apply.
    pub memory_bytes_max: u64,
    /// Bytes of values one read's reply may carry. Local to each node (reads are not
    /// replicated), unlike the fields above.
    pub reply_bytes_max: usize,
    /// Keys one read may name. Local to each node, like `reply_bytes_max`.
    pub request_keys_max: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        let client = crate::limits::ClientLimits::default();
        KvLimits {
            session_expiry_entries: 1_000_000,
            sessions_max: 100_000,
            session_responses_max: 128,
            memory_bytes_max: client.kv_memory_bytes_max,
            reply_bytes_max: client.reply_bytes_max,
            request_keys_max: client.request_keys_max,
        }
    }
}

impl KvLimits {
    /// The defaults with the bounds `limits` sets.
    pub fn from_client_limits(limits: &crate::limits::ClientLimits) -> KvLimits {
        KvLimits {
            memory_bytes_max: limits.kv_memory_bytes_max,
            reply_bytes_max: limits.reply_bytes_max,
            request_keys_max: limits.request_keys_max,
            ..KvLimits::default()
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ClientSession {
    last_active_index: Index,
    acked_below: u64,
    responses: BTreeMap<u64, KvResponse>,
}

/// One stored key's value and metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Item {
    value: Bytes,
    /// The log index that last changed the key: WATCH's version.
    version: Index,
    /// The state clock's time (Unix ms) at which the key expires.
    expires_at_ms: Option<u64>,
}

/// The keys, with the clock that decides which are alive and the derived indexes reads
/// need. Cloning is O(1) (persistent maps): a [`KvView`] is one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Keyspace {
    /// The largest leader stamp applied (Unix ms).
    clock_ms: u64,
    #[serde(deserialize_with = "ord_map_from_entries")]
    map: OrdMap<Bytes, Item>,
    /// `(deadline, key)` of every key with one. Derived from `map`.
    #[serde(skip)]
    deadlines: OrdSet<(u64, Bytes)>,
    /// `(scan_hash(key), key)` of every key: SCAN's order. Derived from `map`.
    #[serde(skip)]
    by_hash: OrdSet<(u64, Bytes)>,
}

/// SCAN's order: a fixed hash, the same on every node and in every version.
fn scan_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, SCAN_HASH_SEED)
}

impl Keyspace {
    fn alive(&self, item: &Item) -> bool {
        item.expires_at_ms.is_none_or(|at| at > self.clock_ms)
    }

    /// The key's item if it exists and has not expired by the clock.
    fn live(&self, key: &[u8]) -> Option<&Item> {
        self.map.get(key).filter(|i| self.alive(i))
    }

    fn value(&self, key: &[u8]) -> Option<&Bytes> {
        self.live(key).map(|i| &i.value)
    }

    /// Keys stored and not expired.
    fn live_len(&self) -> usize {
        let due = self
            .deadlines
            .range(..(self.clock_ms.saturating_add(1), Bytes::new()))
            .count();
        self.map.len() - due
    }

    /// Rebuilds the derived indexes from `map` (after a restore).
    fn reindex(&mut self) {
        self.deadlines = self
            .map
            .iter()
            .filter_map(|(k, i)| i.expires_at_ms.map(|at| (at, k.clone())))
            .collect();
        self.by_hash = self.map.keys().map(|k| (scan_hash(k), k.clone())).collect();
    }
}

/// The replicated state. Ordered maps keep the serialisation canonical, which the digest
/// needs; persistent ones make a clone O(1) (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    applied_index: Index,
    space: Keyspace,
    #[serde(deserialize_with = "ord_map_from_entries")]
    sessions: OrdMap<u64, ClientSession>,
    /// `(last_active_index, client_id)` of every session: the expiry order. Derived from
    /// `sessions`, so it is rebuilt on restore rather than stored.
    #[serde(skip)]
    by_activity: OrdSet<(Index, u64)>,
    /// The estimated bytes of `map` (see [`KEY_OVERHEAD_BYTES`]). Derived, like
    /// `by_activity`, so every replica computes the same figure from the same entries.
    #[serde(skip)]
    used_bytes: u64,
    /// The keys the entry being applied changed so far; handed to the [`ChangeSink`] and
    /// emptied once the entry is applied, so it is empty between entries.
    #[serde(skip)]
    changes: Vec<KeyChange>,
}

/// The estimated bytes one entry costs.
fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    key.len() as u64 + value.len() as u64 + KEY_OVERHEAD_BYTES
}

impl State {
    /// Stores `value` under `key` with deadline `expires_at_ms`, at this entry's version,
    /// keeping `used_bytes` and the indexes in step.
    fn put(&mut self, key: Bytes, value: Bytes, expires_at_ms: Option<u64>) {
        let added = entry_bytes(&key, &value);
        let item = Item {
            value,
            version: self.applied_index,
            expires_at_ms,
        };
        if let Some(at) = expires_at_ms {
            self.space.deadlines.insert((at, key.clone()));
        }
        match self.space.map.insert(key.clone(), item) {
            Some(old) => {
                self.used_bytes -= entry_bytes(&key, &old.value);
                if let Some(at) = old.expires_at_ms.filter(|&at| Some(at) != expires_at_ms) {
                    self.space.deadlines.remove(&(at, key));
                }
            }
            None => {
                self.space.by_hash.insert((scan_hash(&key), key));
            }
        }
        self.used_bytes += added;
    }

    /// Removes `key` (expired or not), keeping the accounting in step.
    fn remove(&mut self, key: &Bytes) -> Option<Item> {
        let old = self.space.map.remove(key)?;
        self.used_bytes -= entry_bytes(key, &old.value);
        if let Some(at) = old.expires_at_ms {
            self.space.deadlines.remove(&(at, key.clone()));
        }
        self.space.by_hash.remove(&(scan_hash(key), key.clone()));
        Some(old)
    }

    /// Removes `key` if it is alive; its value.
    fn remove_live(&mut self, key: &Bytes) -> Option<Bytes> {
        self.space.live(key)?;
        self.remove(key).map(|i| i.value)
    }

    /// Changes the deadline of a live `key` (a new version).
    fn set_deadline(&mut self, key: &Bytes, expires_at_ms: Option<u64>) {
        let Some(item) = self.space.map.get(key) else {
            return;
        };
        let value = item.value.clone();
        self.put(key.clone(), value, expires_at_ms);
    }

    /// Deletes `key` if its deadline passed (an `expired` change), so the command touching
    /// it sees it absent, as Redis' lazy expiry does.
    fn reap(&mut self, key: &Bytes) {
        if self
            .space
            .map
            .get(key)
            .is_some_and(|i| !self.space.alive(i))
        {
            self.remove(key);
            self.changed(key, KeyEvent::Expired, None);
        }
    }

    /// Notes that the command being applied changed `key`.
    fn changed(&mut self, key: &Bytes, event: KeyEvent, value: Option<&Bytes>) {
        self.changes.push(KeyChange {
            key: key.clone(),
            event,
            value: value.cloned(),
        });
    }

    /// Bytes the state would grow by if every `(key, value)` were stored (0 if it shrinks).
    fn growth<'a>(&self, pairs: impl IntoIterator<Item = (&'a Bytes, &'a Bytes)>) -> u64 {
        let mut added = 0u64;
        let mut freed = 0u64;
        for (k, v) in pairs {
            added += entry_bytes(k, v);
            if let Some(old) = self.space.map.get(k) {
                freed += entry_bytes(k, &old.value);
            }
        }
        added.saturating_sub(freed)
    }

    /// Whether growing by `growth` bytes stays within `limits`: a write that does not grow
    /// the state always may, so a full store still takes deletes and overwrites in place.
    fn fits(&self, growth: u64, limits: &KvLimits) -> bool {
        growth == 0 || self.used_bytes.saturating_add(growth) <= limits.memory_bytes_max
    }

    /// Whether storing `value` under `key` fits.
    fn fits_pair(&self, key: &Bytes, value: &Bytes, limits: &KvLimits) -> bool {
        self.fits(self.growth([(key, value)]), limits)
    }

    /// The deadline `expiry` names for a key whose current one is `current`; an overflow
    /// is the command's error.
    fn deadline(
        &self,
        expiry: Expiry,
        current: Option<u64>,
        command: &str,
    ) -> Result<Option<u64>, KvError> {
        match expiry {
            Expiry::Keep => Ok(current),
            Expiry::Persist => Ok(None),
            Expiry::At(at) => Ok(Some(at)),
            Expiry::In(ms) => self
                .space
                .clock_ms
                .checked_add(ms)
                .map(Some)
                .ok_or_else(|| KvError::InvalidExpireTime(command.into())),
        }
    }

    /// Whether a deadline has passed already by the clock (the key is deleted, not stored).
    fn past(&self, deadline: Option<u64>) -> bool {
        deadline.is_some_and(|at| at <= self.space.clock_ms)
    }
}

/// Decodes an `OrdMap` entry by entry. imbl's own `Deserialize` first reserves a `Vec` of
/// the length the input claims: a 19-byte snapshot body claiming 2^33 keys asked for 128
/// GiB and aborted the node restoring it. Growing with the entries actually read bounds
/// the memory by the body's length.
fn ord_map_from_entries<'de, D, K, V>(d: D) -> Result<OrdMap<K, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    struct Entries<K, V>(std::marker::PhantomData<(K, V)>);

    impl<'de, K, V> serde::de::Visitor<'de> for Entries<K, V>
    where
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        type Value = OrdMap<K, V>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<OrdMap<K, V>, A::Error> {
            let mut map = OrdMap::new();
            while let Some((k, v)) = a.next_entry()? {
                map.insert(k, v);
            }
            Ok(map)
        }
    }

    d.deserialize_map(Entries(std::marker::PhantomData))
}

/// The key-value state machine. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct KvStateMachine {
    // Cloning is O(1): every map in it shares its nodes with the clone until written.
    state: State,
    limits: KvLimits,
    /// Where the key changes of each applied entry go, if anywhere.
    sink: Option<Arc<dyn ChangeSink>>,
}

/// A point-in-time copy of a [`KvStateMachine`], written out off the apply path.
#[derive(Clone, Debug)]
pub struct KvFrozen {
    state: State,
}

impl KvStateMachine {
    /// An empty state machine with the given limits.
    pub fn new(limits: KvLimits) -> Self {
        KvStateMachine {
            state: State::default(),
            limits,
            sink: None,
        }
    }

    /// Hands the key changes of every entry applied from now on to `sink`.
    pub fn with_change_sink(mut self, sink: Arc<dyn ChangeSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// An empty state machine with the same limits and change sink, to restore a snapshot
    /// into.
    pub fn empty_like(&self) -> Self {
        KvStateMachine {
            sink: self.sink.clone(),
            ..KvStateMachine::new(self.limits)
        }
    }

    /// Records that the log entry at `index` carried no command (a leader's no-op, a
    /// membership change), so that a snapshot taken right after it is labelled with that
    /// index. Every replica sees the same such entries, so digests still agree.
    pub fn skip_to(&mut self, index: Index) {
        if index > self.state.applied_index {
            self.state.applied_index = index;
        }
    }

    /// FAULT INJECTION, for tests only: stores a key no client wrote, so that this replica's
    /// state (and digest) differs from the others'. Reachable only through the runtime's
    /// `debug_corrupt_apply_at`.
    pub fn debug_corrupt(&mut self, index: Index) {
        self.state.put(
            Bytes::from_static(b"\0fault-injection"),
            Bytes::from(index.to_string()),
            None,
        );
    }

    /// Answers a read-only command from the current state, without touching sessions.
    pub fn query(&self, command: &[u8]) -> KvResponse {
        self.view().query_command(command)
    }

    /// A copy of the keys and values for reads served off the runtime task: O(1), it
    /// shares the map's nodes (see the module documentation).
    pub fn view(&self) -> KvView {
        KvView {
            space: self.state.space.clone(),
            reply_bytes_max: self.limits.reply_bytes_max,
            request_keys_max: self.limits.request_keys_max,
        }
    }

    /// The estimated bytes of keys and values, which `memory_bytes_max` bounds.
    pub fn used_bytes(&self) -> u64 {
        self.state.used_bytes
    }

    /// Keys stored (expired ones not yet deleted included).
    pub fn len(&self) -> usize {
        self.state.space.map.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.state.space.map.is_empty()
    }

    /// Sessions held.
    pub fn session_count(&self) -> usize {
        self.state.sessions.len()
    }

    /// The state's clock: the largest leader stamp applied (Unix ms).
    pub fn clock_ms(&self) -> u64 {
        self.state.space.clock_ms
    }

    /// The earliest deadline of any stored key, if one has one.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.state.space.deadlines.get_min().map(|(at, _)| *at)
    }

    /// The sweep entry a leader whose clock reads `now_ms` should propose, if a key's
    /// deadline has passed by it.
    pub fn sweep_due(&self, now_ms: u64) -> Option<Bytes> {
        let due = self.next_deadline_ms()? <= now_ms;
        due.then(|| {
            log_command_at(
                None,
                KvCommand::Sweep {
                    keys_max: SWEEP_KEYS_MAX,
                }
                .encode(),
                now_ms,
            )
        })
    }

    fn expire_sessions(state: &mut State, index: Index, limits: &KvLimits) {
        while let Some(&(last, client)) = state.by_activity.get_min() {
            if last.saturating_add(limits.session_expiry_entries) >= index {
                break;
            }
            state.by_activity.remove_min();
            state.sessions.remove(&client);
        }
    }

    fn apply_session(
        state: &mut State,
        index: Index,
        session: Session,
        op: &[u8],
        limits: &KvLimits,
    ) -> KvResponse {
        if !state.sessions.contains_key(&session.client_id) {
            while state.sessions.len() >= limits.sessions_max.max(1) {
                let Some((_, oldest)) = state.by_activity.remove_min() else {
                    break;
                };
                state.sessions.remove(&oldest);
            }
        }
        let entry = state.sessions.entry(session.client_id).or_default();
        state
            .by_activity
            .remove(&(entry.last_active_index, session.client_id));
        entry.last_active_index = index;
        state.by_activity.insert((index, session.client_id));
        if session.acked_below > entry.acked_below {
            entry.acked_below = session.acked_below;
            entry.responses = entry.responses.split_off(&session.acked_below);
        }
        if session.seq < entry.acked_below {
            return KvResponse::Error(KvError::AlreadyAcknowledged {
                client_id: session.client_id,
                seq: session.seq,
            });
        }
        if let Some(cached) = entry.responses.get(&session.seq) {
            return cached.clone();
        }
        if entry.responses.len() >= limits.session_responses_max {
            return KvResponse::Error(KvError::SessionFull);
        }
        let response = execute(state, op, limits);
        let entry = state
            .sessions
            .get_mut(&session.client_id)
            .expect("inserted above");
        entry.responses.insert(session.seq, response.clone());
        response
    }
}

/// The keys and values at one applied index, for reads served off the runtime task.
#[derive(Clone, Debug)]
pub struct KvView {
    space: Keyspace,
    reply_bytes_max: usize,
    request_keys_max: usize,
}

impl KvView {
    /// Answers a read command; a reply past `reply_bytes_max` or a request past
    /// `request_keys_max` is refused before any of it is built.
    pub fn read(&self, cmd: &KvCommand) -> KvResponse {
        read(
            &self.space,
            cmd,
            self.reply_bytes_max,
            self.request_keys_max,
        )
    }

    /// A live value by key (the value shares the stored bytes); `None` if absent or
    /// expired by the state's clock.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.space.value(key).cloned()
    }

    /// The state's clock at this view (Unix ms).
    pub fn clock_ms(&self) -> u64 {
        self.space.clock_ms
    }

    /// Decodes and answers an encoded read command.
    pub fn query_command(&self, command: &[u8]) -> KvResponse {
        match KvCommand::decode(command) {
            Some(cmd) if cmd.is_read() => self.read(&cmd),
            Some(_) => KvResponse::Error(KvError::WrongKind),
            None => KvResponse::Error(KvError::Malformed),
        }
    }
}

impl crate::runtime::MachineView for KvView {
    fn query(&self, op: &[u8]) -> Bytes {
        self.query_command(op).encode()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Redis' TTL rounding: milliseconds, or seconds rounded to nearest.
fn in_unit(ms: u64, millis: bool) -> i64 {
    let n = if millis {
        ms
    } else {
        ms.saturating_add(500) / 1000
    };
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn read(space: &Keyspace, cmd: &KvCommand, reply_bytes_max: usize, keys_max: usize) -> KvResponse {
    let keys = cmd.key_count();
    if keys > keys_max {
        return KvResponse::Error(KvError::TooManyKeys {
            keys: keys as u64,
            max: keys_max as u64,
        });
    }
    match cmd {
        KvCommand::Get { key } => {
            let value = space.value(key).cloned();
            let bytes = value.as_ref().map_or(0, Bytes::len);
            if bytes > reply_bytes_max {
                return too_large(bytes, reply_bytes_max);
            }
            KvResponse::Value(value)
        }
        KvCommand::MGet { keys } => {
            // Sizes first (lookups only), so an oversized reply is never built.
            let bytes: usize = keys
                .iter()
                .map(|k| space.value(k).map_or(0, Bytes::len))
                .sum();
            if bytes > reply_bytes_max {
                return too_large(bytes, reply_bytes_max);
            }
            KvResponse::Values(keys.iter().map(|k| space.value(k).cloned()).collect())
        }
        KvCommand::Exists { keys } => {
            KvResponse::Int(keys.iter().filter(|k| space.live(k).is_some()).count() as i64)
        }
        KvCommand::Strlen { key } => {
            KvResponse::Int(space.value(key).map_or(0, |v| v.len() as i64))
        }
        KvCommand::GetRange { key, start, end } => {
            let value = space.value(key).cloned().unwrap_or_default();
            let range = get_range(value.len(), *start, *end);
            if range.len() > reply_bytes_max {
                return too_large(range.len(), reply_bytes_max);
            }
            KvResponse::Value(Some(value.slice(range)))
        }
        KvCommand::Ttl { key, millis } => KvResponse::Int(match space.live(key) {
            None => -2,
            Some(Item {
                expires_at_ms: None,
                ..
            }) => -1,
            Some(Item {
                expires_at_ms: Some(at),
                ..
            }) => in_unit(at - space.clock_ms, *millis),
        }),
        KvCommand::ExpireTime { key, millis } => KvResponse::Int(match space.live(key) {
            None => -2,
            Some(Item {
                expires_at_ms: None,
                ..
            }) => -1,
            Some(Item {
                expires_at_ms: Some(at),
                ..
            }) => in_unit(*at, *millis),
        }),
        KvCommand::Type { key } => KvResponse::Text(
            if space.live(key).is_some() {
                "string"
            } else {
                "none"
            }
            .into(),
        ),
        KvCommand::Keys { pattern } => keys_matching(space, pattern, reply_bytes_max),
        KvCommand::Scan {
            cursor,
            pattern,
            count,
            type_name,
        } => scan(
            space,
            *cursor,
            pattern.as_deref(),
            *count,
            type_name.as_deref(),
            reply_bytes_max,
        ),
        KvCommand::DbSize => KvResponse::Int(space.live_len() as i64),
        KvCommand::Versions { keys } => KvResponse::Versions(
            keys.iter()
                .map(|k| space.live(k).map_or(0, |i| i.version))
                .collect(),
        ),
        _ => KvResponse::Error(KvError::WrongKind),
    }
}

/// GETRANGE's byte range of a value of `len` bytes, as Redis computes it.
fn get_range(len: usize, start: i64, end: i64) -> std::ops::Range<usize> {
    let len_i = len as i64;
    if start < 0 && end < 0 && start > end {
        return 0..0;
    }
    let mut start = if start < 0 { len_i + start } else { start };
    let mut end = if end < 0 { len_i + end } else { end };
    start = start.max(0);
    end = end.max(0);
    if end >= len_i {
        end = len_i - 1;
    }
    if len == 0 || start > end {
        return 0..0;
    }
    start as usize..end as usize + 1
}

/// KEYS: every live key matching, in key order; refused once the reply would pass
/// `reply_bytes_max` rather than built.
fn keys_matching(space: &Keyspace, pattern: &[u8], reply_bytes_max: usize) -> KvResponse {
    let pattern = Pattern::new(pattern);
    let prefix = Bytes::from(pattern.literal_prefix());
    let mut keys = Vec::new();
    let mut bytes = 0usize;
    for (k, item) in space.map.range(prefix.clone()..) {
        if !k.starts_with(&prefix) {
            break;
        }
        if !space.alive(item) || !pattern.matches(k) {
            continue;
        }
        bytes += k.len() + KEY_REPLY_OVERHEAD_BYTES;
        if bytes > reply_bytes_max {
            return KvResponse::Error(KvError::ReplyTooLarge {
                bytes: bytes as u64,
                max: reply_bytes_max as u64,
            });
        }
        keys.push(k.clone());
    }
    KvResponse::Keys(keys)
}

/// SCAN: walks keys in hash order from `cursor` (a hash), examining about `count` keys,
/// and answers the hash to go on from. A batch never ends between two keys of one hash,
/// so a key is never skipped, whatever was added or removed between calls.
fn scan(
    space: &Keyspace,
    cursor: u64,
    pattern: Option<&[u8]>,
    count: u64,
    type_name: Option<&[u8]>,
    reply_bytes_max: usize,
) -> KvResponse {
    let pattern = pattern.map(Pattern::new).filter(|p| !p.matches_all());
    let strings_wanted = type_name.is_none_or(|t| t.eq_ignore_ascii_case(b"string"));
    let count = count.clamp(1, SCAN_COUNT_MAX);
    let mut keys = Vec::new();
    let mut bytes = 0usize;
    let mut last_hash = None;
    let from = (cursor, Bytes::new());
    for (examined, (hash, key)) in (0u64..).zip(space.by_hash.range(from..)) {
        if last_hash.is_some_and(|h| h != *hash) && (examined >= count || bytes >= reply_bytes_max)
        {
            return KvResponse::Scan {
                cursor: *hash,
                keys,
            };
        }
        last_hash = Some(*hash);
        if !strings_wanted
            || space.live(key).is_none()
            || pattern.as_ref().is_some_and(|p| !p.matches(key))
        {
            continue;
        }
        bytes += key.len() + KEY_REPLY_OVERHEAD_BYTES;
        keys.push(key.clone());
    }
    KvResponse::Scan { cursor: 0, keys }
}

fn too_large(bytes: usize, max: usize) -> KvResponse {
    KvResponse::Error(KvError::ReplyTooLarge {
        bytes: bytes as u64,
        max: max as u64,
    })
}

fn execute(state: &mut State, op: &[u8], limits: &KvLimits) -> KvResponse {
    match KvCommand::decode(op) {
        Some(KvCommand::Batch { commands }) => {
            if commands.len() > BATCH_COMMANDS_MAX
                || commands
                    .iter()
                    .any(|c| matches!(c, KvCommand::Batch { .. }))
            {
                return KvResponse::Error(KvError::Malformed);
            }
            KvResponse::Batch(
                commands
                    .into_iter()
                    .map(|c| execute_one(state, c, limits))
                    .collect(),
            )
        }
        Some(cmd) => execute_one(state, cmd, limits),
        None => KvResponse::Error(KvError::Malformed),
    }
}

/// Parses a value or an increment as INCRBYFLOAT does: a finite decimal number, no
/// spaces, no NaN.
fn parse_float(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.len() > 5_000 || s.bytes().any(|c| c.is_ascii_whitespace()) {
        return None;
    }
    let x: f64 = s.parse().ok()?;
    (!x.is_nan()).then_some(x)
}

/// INCRBYFLOAT's text for `x`. Redis computes in 80-bit long doubles and prints 17
/// decimals with trailing zeros removed; here the sum is a 64-bit float rounded to 15
/// significant digits (where f64 has no binary noise) and printed without exponent or
/// trailing zeros: `10.5 + 0.1` is `10.6`, `0.1 + 0.2` is `0.3`, `5.0e3 + 2.0e2` is
/// `5200`, as in Redis.
fn format_float(x: f64) -> String {
    let rounded: f64 = format!("{x:.14e}").parse().unwrap_or(x);
    if rounded == 0.0 {
        return "0".into();
    }
    format!("{rounded}")
}

/// Keys a write touches, reaped first if their deadline passed.
fn write_keys(cmd: &KvCommand) -> Vec<&Bytes> {
    match cmd {
        KvCommand::Set { key, .. }
        | KvCommand::SetWith { key, .. }
        | KvCommand::SetNx { key, .. }
        | KvCommand::GetDel { key }
        | KvCommand::GetEx { key, .. }
        | KvCommand::Append { key, .. }
        | KvCommand::SetRange { key, .. }
        | KvCommand::IncrByFloat { key, .. }
        | KvCommand::IncrBy { key, .. }
        | KvCommand::Cas { key, .. }
        | KvCommand::Expire { key, .. }
        | KvCommand::Persist { key } => vec![key],
        KvCommand::MSet { pairs } | KvCommand::MSetNx { pairs } => {
            pairs.iter().map(|(k, _)| k).collect()
        }
        KvCommand::Del { keys } => keys.iter().collect(),
        KvCommand::Rename { from, to, .. } => vec![from, to],
        _ => Vec::new(),
    }
}

fn execute_one(state: &mut State, cmd: KvCommand, limits: &KvLimits) -> KvResponse {
    const OOM: KvResponse = KvResponse::Error(KvError::OutOfMemory);
    let err = KvResponse::Error;
    for key in write_keys(&cmd) {
        state.reap(key);
    }
    match cmd {
        KvCommand::Batch { .. } => KvResponse::Error(KvError::Malformed),
        cmd if cmd.is_read() => read(
            &state.space,
            &cmd,
            LOGGED_READ_REPLY_BYTES_MAX,
            // The node's request_keys_max bounded the request when it arrived.
            usize::MAX,
        ),
        KvCommand::Set { key, value } => {
            if !state.fits_pair(&key, &value, limits) {
                return OOM;
            }
            state.changed(&key, KeyEvent::Set, Some(&value));
            state.put(key, value, None);
            KvResponse::Ok
        }
        KvCommand::SetWith {
            key,
            value,
            condition,
            get,
            expiry,
        } => {
            let old = state.space.live(&key).cloned();
            let old_value = || KvResponse::Value(old.as_ref().map(|i| i.value.clone()));
            let allowed = match condition {
                SetCondition::Always => true,
                SetCondition::IfAbsent => old.is_none(),
                SetCondition::IfPresent => old.is_some(),
            };
            if !allowed {
                return if get {
                    old_value()
                } else {
                    KvResponse::Value(None)
                };
            }
            let deadline =
                match state.deadline(expiry, old.as_ref().and_then(|i| i.expires_at_ms), "set") {
                    Ok(d) => d,
                    Err(e) => return err(e),
                };
            if !state.fits_pair(&key, &value, limits) {
                return OOM;
            }
            state.changed(&key, KeyEvent::Set, Some(&value));
            if state.past(deadline) {
                state.remove(&key);
                state.changed(&key, KeyEvent::Del, None);
            } else {
                state.put(key.clone(), value, deadline);
                if deadline.is_some() && !matches!(expiry, Expiry::Keep) {
                    state.changed(&key, KeyEvent::Expire, None);
                }
            }
            if get {
                old_value()
            } else {
                KvResponse::Ok
            }
        }
        KvCommand::SetNx { key, value } => {
            if state.space.live(&key).is_some() {
                return KvResponse::Int(0);
            }
            if !state.fits_pair(&key, &value, limits) {
                return OOM;
            }
            state.changed(&key, KeyEvent::Set, Some(&value));
            state.put(key, value, None);
            KvResponse::Int(1)
        }
        KvCommand::MSet { pairs } => {
            // All or nothing, as in Redis: the growth of the whole command is checked (a key
            // named twice is counted twice, which only errs towards refusing).
            if !state.fits(state.growth(pairs.iter().map(|(k, v)| (k, v))), limits) {
                return OOM;
            }
            for (k, v) in pairs {
                state.changed(&k, KeyEvent::Set, Some(&v));
                state.put(k, v, None);
            }
            KvResponse::Ok
        }
        KvCommand::MSetNx { pairs } => {
            if pairs.iter().any(|(k, _)| state.space.live(k).is_some()) {
                return KvResponse::Int(0);
            }
            if !state.fits(state.growth(pairs.iter().map(|(k, v)| (k, v))), limits) {
                return OOM;
            }
            for (k, v) in pairs {
                state.changed(&k, KeyEvent::Set, Some(&v));
                state.put(k, v, None);
            }
            KvResponse::Int(1)
        }
        KvCommand::Del { keys } => {
            let mut removed = 0;
            for k in &keys {
                if state.remove_live(k).is_some() {
                    state.changed(k, KeyEvent::Del, None);
                    removed += 1;
                }
            }
            KvResponse::Int(removed)
        }
        KvCommand::GetDel { key } => {
            let old = state.remove_live(&key);
            if old.is_some() {
                state.changed(&key, KeyEvent::Del, None);
            }
            KvResponse::Value(old)
        }
        KvCommand::GetEx { key, expiry } => {
            let Some(item) = state.space.live(&key).cloned() else {
                return KvResponse::Value(None);
            };
            let deadline = match state.deadline(expiry, item.expires_at_ms, "getex") {
                Ok(d) => d,
                Err(e) => return err(e),
            };
            match expiry {
                Expiry::Keep => {}
                Expiry::Persist => {
                    if item.expires_at_ms.is_some() {
                        state.set_deadline(&key, None);
                        state.changed(&key, KeyEvent::Persist, None);
                    }
                }
                Expiry::In(_) | Expiry::At(_) => {
                    if state.past(deadline) {
                        state.remove(&key);
                        state.changed(&key, KeyEvent::Del, None);
                    } else {
                        state.set_deadline(&key, deadline);
                        state.changed(&key, KeyEvent::Expire, None);
                    }
                }
            }
            KvResponse::Value(Some(item.value))
        }
        KvCommand::Append { key, value } => {
            let old = state.space.live(&key).cloned();
            let old_len = old.as_ref().map_or(0, |i| i.value.len());
            let new_len = old_len as u64 + value.len() as u64;
            if new_len > STRING_BYTES_MAX {
                return err(KvError::StringTooLong);
            }
            if !state.fits(
                value.len() as u64
                    + if old.is_none() {
                        entry_bytes(&key, b"")
                    } else {
                        0
                    },
                limits,
            ) {
                return OOM;
            }
            let mut joined = Vec::with_capacity(new_len as usize);
            if let Some(i) = &old {
                joined.extend_from_slice(&i.value);
            }
            joined.extend_from_slice(&value);
            let joined = Bytes::from(joined);
            state.changed(&key, KeyEvent::Append, Some(&joined));
            state.put(key, joined, old.and_then(|i| i.expires_at_ms));
            KvResponse::Int(new_len as i64)
        }
        KvCommand::SetRange { key, offset, value } => {
            let old = state.space.live(&key).cloned();
            let old_len = old.as_ref().map_or(0, |i| i.value.len()) as u64;
            if value.is_empty() {
                return KvResponse::Int(old_len as i64);
            }
            let Some(end) = offset.checked_add(value.len() as u64) else {
                return err(KvError::StringTooLong);
            };
            if end > STRING_BYTES_MAX {
                return err(KvError::StringTooLong);
            }
            let new_len = end.max(old_len);
            let growth = new_len - old_len
                + if old.is_none() {
                    entry_bytes(&key, b"")
                } else {
                    0
                };
            if !state.fits(growth, limits) {
                return OOM;
            }
            let mut bytes = old.as_ref().map_or_else(Vec::new, |i| i.value.to_vec());
            bytes.resize(new_len as usize, 0);
            bytes[offset as usize..end as usize].copy_from_slice(&value);
            let bytes = Bytes::from(bytes);
            state.changed(&key, KeyEvent::SetRange, Some(&bytes));
            state.put(key, bytes, old.and_then(|i| i.expires_at_ms));
            KvResponse::Int(new_len as i64)
        }
        KvCommand::IncrBy { key, by } => {
            let old = state.space.live(&key).cloned();
            let current = match &old {
                None => 0,
                Some(i) => match std::str::from_utf8(&i.value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                {
                    Some(n) => n,
                    None => return err(KvError::NotAnInteger),
                },
            };
            let Some(next) = current.checked_add(by) else {
                return err(KvError::Overflow);
            };
            let value = Bytes::from(next.to_string());
            if !state.fits_pair(&key, &value, limits) {
                return OOM;
            }
            state.changed(&key, KeyEvent::IncrBy, Some(&value));
            state.put(key, value, old.and_then(|i| i.expires_at_ms));
            KvResponse::Int(next)
        }
        KvCommand::IncrByFloat { key, by } => {
            let old = state.space.live(&key).cloned();
            let current = match &old {
                None => 0.0,
                Some(i) => match parse_float(&i.value) {
                    Some(x) => x,
                    None => return err(KvError::NotAFloat),
                },
            };
            let Some(by) = parse_float(&by) else {
                return err(KvError::NotAFloat);
            };
            let next = current + by;
            if !next.is_finite() {
                return err(KvError::NotFinite);
            }
            let value = Bytes::from(format_float(next));
            if !state.fits_pair(&key, &value, limits) {
                return OOM;
            }
            state.changed(&key, KeyEvent::IncrByFloat, Some(&value));
            state.put(key, value.clone(), old.and_then(|i| i.expires_at_ms));
            KvResponse::Value(Some(value))
        }
        KvCommand::Cas { key, expected, new } => {
            let current = state.space.value(&key).cloned();
            if current != expected {
                return KvResponse::Cas {
                    swapped: false,
                    current,
                };
            }
            match &new {
                Some(v) => {
                    if !state.fits_pair(&key, v, limits) {
                        return OOM;
                    }
                    state.changed(&key, KeyEvent::Set, Some(v));
                    state.put(key, v.clone(), None);
                }
                None => {
                    if state.remove_live(&key).is_some() {
                        state.changed(&key, KeyEvent::Del, None);
                    }
                }
            };
            KvResponse::Cas {
                swapped: true,
                current: new,
            }
        }
        KvCommand::Rename { from, to, nx } => {
            let Some(item) = state.space.live(&from).cloned() else {
                return err(KvError::NoSuchKey);
            };
            if from == to {
                return if nx {
                    KvResponse::Int(0)
                } else {
                    KvResponse::Ok
                };
            }
            if nx && state.space.live(&to).is_some() {
                return KvResponse::Int(0);
            }
            let growth = (to.len() as u64).saturating_sub(from.len() as u64);
            let freed = state
                .space
                .map
                .get(&to)
                .map_or(0, |i| entry_bytes(&to, &i.value));
            if !state.fits(growth.saturating_sub(freed), limits) {
                return OOM;
            }
            state.remove(&from);
            state.changed(&from, KeyEvent::RenameFrom, None);
            state.changed(&to, KeyEvent::RenameTo, Some(&item.value));
            state.put(to, item.value, item.expires_at_ms);
            if nx {
                KvResponse::Int(1)
            } else {
                KvResponse::Ok
            }
        }
        KvCommand::Expire {
            key,
            when,
            condition,
        } => {
            if !matches!(when, Expiry::In(_) | Expiry::At(_)) {
                return err(KvError::Malformed);
            }
            let Some(item) = state.space.live(&key).cloned() else {
                return KvResponse::Int(0);
            };
            let deadline = match state.deadline(when, None, "expire") {
                Ok(Some(d)) => d,
                Ok(None) => return err(KvError::Malformed),
                Err(e) => return err(e),
            };
            let allowed = match (condition, item.expires_at_ms) {
                (ExpireCondition::Always, _) => true,
                (ExpireCondition::Nx, current) => current.is_none(),
                (ExpireCondition::Xx, current) => current.is_some(),
                // No deadline is an infinite one.
                (ExpireCondition::Gt, current) => current.is_some_and(|c| deadline > c),
                (ExpireCondition::Lt, current) => current.is_none_or(|c| deadline < c),
                (ExpireCondition::XxLt, current) => current.is_some_and(|c| deadline < c),
            };
            if !allowed {
                return KvResponse::Int(0);
            }
            if state.past(Some(deadline)) {
                state.remove(&key);
                state.changed(&key, KeyEvent::Del, None);
            } else {
                state.set_deadline(&key, Some(deadline));
                state.changed(&key, KeyEvent::Expire, None);
            }
            KvResponse::Int(1)
        }
        KvCommand::Persist { key } => match state.space.live(&key).and_then(|i| i.expires_at_ms) {
            Some(_) => {
                state.set_deadline(&key, None);
                state.changed(&key, KeyEvent::Persist, None);
                KvResponse::Int(1)
            }
            None => KvResponse::Int(0),
        },
        KvCommand::FlushAll => {
            // Every key's deletion is a change (Redis sends no per-key event for a flush):
            // a watcher of a prefix must see its keys go.
            let keys: Vec<(Bytes, bool)> = state
                .space
                .map
                .iter()
                .map(|(k, i)| (k.clone(), state.space.alive(i)))
                .collect();
            for (k, alive) in keys {
                let event = if alive {
                    KeyEvent::Del
                } else {
                    KeyEvent::Expired
                };
                state.changed(&k, event, None);
            }
            state.space.map = OrdMap::new();
            state.space.deadlines = OrdSet::new();
            state.space.by_hash = OrdSet::new();
            state.used_bytes = 0;
            KvResponse::Ok
        }
        KvCommand::Sweep { keys_max } => {
            let mut removed = 0;
            while removed < i64::from(keys_max.min(SWEEP_KEYS_MAX)) {
                let Some((at, key)) = state.space.deadlines.get_min().cloned() else {
                    break;
                };
                if at > state.space.clock_ms {
                    break;
                }
                state.remove(&key);
                state.changed(&key, KeyEvent::Expired, None);
                removed += 1;
            }
            KvResponse::Int(removed)
        }
        KvCommand::Exec { watches, commands } => {
            if commands.len() > BATCH_COMMANDS_MAX
                || commands
                    .iter()
                    .any(|c| matches!(c, KvCommand::Batch { .. } | KvCommand::Exec { .. }))
            {
                return err(KvError::Malformed);
            }
            let changed = watches
                .iter()
                .any(|(k, v)| state.space.live(k).map_or(0, |i| i.version) != *v);
            if changed {
                return KvResponse::Aborted;
            }
            KvResponse::Batch(
                commands
                    .into_iter()
                    .map(|c| execute_one(state, c, limits))
                    .collect(),
            )
        }
        // Every read was answered above.
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
        | KvCommand::Versions { .. } => err(KvError::WrongKind),
    }
}

/// Writes the state as a snapshot body, streamed: encoding it into one buffer first cost a
/// transient allocation the size of the whole state (~12 MiB at 100,000 keys) three times
/// per snapshot interval (the digest, the snapshot, the snapshot's own digest), on blocking
/// threads whose malloc arenas kept much of it. The body's length comes first in the format,
/// so the state is encoded twice: once to count its bytes (no memory written), once to
/// write them.
fn write_state(state: &State, w: &mut dyn Write) -> io::Result<()> {
    let body_bytes: usize =
        postcard::serialize_with_flavor(state, postcard::ser_flavors::Size::default())
            .map_err(io::Error::other)?;
    w.write_all(SNAPSHOT_MAGIC)?;
    w.write_all(&(body_bytes as u64).to_le_bytes())?;
    let mut out = CountingWriter {
        inner: io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, w),
        written_bytes: 0,
        error: None,
    };
    if let Err(e) = postcard::to_io(state, &mut out) {
        // postcard reports a failed write as its own error: give back the writer's.
        return Err(out.error.take().unwrap_or_else(|| io::Error::other(e)));
    }
    out.inner.flush()?;
    // The length written up front must be the length of what followed.
    assert_eq!(out.written_bytes, body_bytes as u64, "snapshot body length");
    Ok(())
}

/// Buffer between postcard's many small writes and the snapshot file or hasher.
const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// Keeps the first IO error of a write (postcard replaces it by its own error) and counts
/// the bytes written.
struct CountingWriter<W: Write> {
    inner: W,
    written_bytes: u64,
    error: Option<io::Error>,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.inner.write(buf) {
            Ok(n) => {
                self.written_bytes += n as u64;
                Ok(n)
            }
            Err(e) => {
                let kind = e.kind();
                self.error.get_or_insert(e);
                Err(kind.into())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn digest_state(state: &State) -> StateDigest {
    let mut hasher = DigestHasher::new();
    hasher.update(DIGEST_DOMAIN);
    // Writing into a hasher cannot fail.
    let _ = write_state(state, &mut hasher);
    hasher.finish()
}

impl SnapshotSource for KvStateMachine {
    fn snapshot(&self, writer: &mut dyn Write) -> io::Result<()> {
        write_state(&self.state, writer)
    }

    fn digest(&self) -> StateDigest {
        digest_state(&self.state)
    }
}

impl SnapshotSource for KvFrozen {
    fn snapshot(&self, writer: &mut dyn Write) -> io::Result<()> {
        write_state(&self.state, writer)
    }

    fn digest(&self) -> StateDigest {
        digest_state(&self.state)
    }
}

impl crate::runtime::HostedMachine for KvStateMachine {
    fn query(&self, op: &[u8]) -> Bytes {
        KvStateMachine::query(self, op).encode()
    }

    fn encode_response(response: &KvResponse) -> Bytes {
        response.encode()
    }

    fn skip_to(&mut self, index: Index) {
        KvStateMachine::skip_to(self, index);
    }

    fn empty_like(&self) -> Self {
        KvStateMachine::empty_like(self)
    }

    fn debug_corrupt(&mut self, index: Index) {
        KvStateMachine::debug_corrupt(self, index);
    }

    fn view(&self) -> Option<Arc<dyn crate::runtime::MachineView>> {
        Some(Arc::new(KvStateMachine::view(self)))
    }

    fn memory_bytes(&self) -> (u64, u64) {
        (self.used_bytes(), self.limits.memory_bytes_max)
    }

    fn housekeeping(&self) -> Option<Bytes> {
        self.sweep_due(crate::clock::now_ms())
    }
}

impl StateMachine for KvStateMachine {
    type Response = KvResponse;
    type Frozen = KvFrozen;

    fn apply(&mut self, index: Index, command: &[u8]) -> KvResponse {
        let limits = self.limits;
        let state = &mut self.state;
        state.applied_index = index;
        Self::expire_sessions(state, index, &limits);
        let Ok(cmd) = postcard::from_bytes::<LogCommand>(command) else {
            return KvResponse::Error(KvError::Malformed);
        };
        // The clock is the largest stamp seen: a leader whose clock is behind an earlier
        // one's does not turn time back (see the module documentation).
        state.space.clock_ms = state.space.clock_ms.max(cmd.stamp_ms);
        let response = match cmd.session {
            Some(session) if session.client_id != 0 => {
                Self::apply_session(state, index, session, &cmd.op, &limits)
            }
            _ => execute(state, &cmd.op, &limits),
        };
        if !state.changes.is_empty() {
            if let Some(sink) = &self.sink {
                sink.applied(index, &state.changes);
            }
            state.changes.clear();
        }
        response
    }

    fn applied_index(&self) -> Index {
        self.state.applied_index
    }

    fn freeze(&self) -> KvFrozen {
        KvFrozen {
            state: self.state.clone(),
        }
    }

    fn restore(&mut self, reader: &mut dyn Read) -> Result<(), RestoreError> {
        let malformed = |what: &str| RestoreError::Malformed(what.to_string());
        let mut header = [0u8; 12];
        reader.read_exact(&mut header)?;
        if &header[..4] != SNAPSHOT_MAGIC {
            return Err(malformed("bad magic"));
        }
        let len = u64::from_le_bytes(header[4..].try_into().expect("8 bytes"));
        if len > SNAPSHOT_BYTES_MAX {
            return Err(malformed("body length beyond the limit"));
        }
        let mut body = Vec::new();
        reader.take(len).read_to_end(&mut body)?;
        if body.len() as u64 != len {
            return Err(malformed("body shorter than its length"));
        }
        let mut probe = [0u8; 1];
        if reader.read(&mut probe)? != 0 {
            return Err(malformed("bytes after the body"));
        }
        let mut state: State =
            postcard::from_bytes(&body).map_err(|e| malformed(&format!("body: {e}")))?;
        state.by_activity = state
            .sessions
            .iter()
            .map(|(id, s)| (s.last_active_index, *id))
            .collect();
        state.used_bytes = state
            .space
            .map
            .iter()
            .map(|(k, i)| entry_bytes(k, &i.value))
            .sum();
        state.space.reindex();
        let index = state.applied_index;
        self.state = state;
        if let Some(sink) = &self.sink {
            sink.restored(index);
        }
        Ok(())
    }
}

/// Encodes a log command, as the node proposes it: stamped with this node's clock
/// ([`crate::clock::now_ms`]). Only a leader's proposals are accepted, so only leaders'
/// stamps reach the log; a follower forwards the client's op, and the leader stamps it.
pub fn log_command(session: Option<Session>, op: Bytes) -> Bytes {
    log_command_at(session, op, crate::clock::now_ms())
}

/// [`log_command`] with the stamp given (tests craft stamps with it).
pub fn log_command_at(session: Option<Session>, op: Bytes, stamp_ms: u64) -> Bytes {
    postcard::to_allocvec(&LogCommand {
        session,
        op,
        stamp_ms,
    })
    .expect("LogCommand always serializes")
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn cmd(session: Option<Session>, c: KvCommand) -> Bytes {
        log_command(session, c.encode())
    }

    fn session(client_id: u64, seq: u64) -> Option<Session> {
        Some(Session {
            client_id,
            seq,
            acked_below: seq,
        })
    }

    #[test]
    fn commands_behave_like_redis() {
        let mut sm = KvStateMachine::new(KvLimits::default());
        let set = |k: &str, v: &str| KvCommand::Set {
            key: b(k),
            value: b(v),
        };
        assert_eq!(sm.apply(1, &cmd(None, set("a", "1"))), KvResponse::Ok);
        let incr = KvCommand::IncrBy {
            key: b("a"),
            by: 41,
        };
        assert_eq!(sm.apply(2, &cmd(None, incr)), KvResponse::Int(42));
        let mset = KvCommand::MSet {
            pairs: vec![(b("b"), b("x")), (b("c"), b("y"))],
        };
        assert_eq!(sm.apply(3, &cmd(None, mset)), KvResponse::Ok);
        let incr_b = KvCommand::IncrBy { key: b("b"), by: 1 };
        assert_eq!(
            sm.apply(4, &cmd(None, incr_b)),
            KvResponse::Error(KvError::NotAnInteger)
        );
        let mget = KvCommand::MGet {
            keys: vec![b("a"), b("zz"), b("c")],
        };
        assert_eq!(
            sm.query(&mget.encode()),
            KvResponse::Values(vec![Some(b("42")), None, Some(b("y"))])
        );
        let exists = KvCommand::Exists {
            keys: vec![b("a"), b("a"), b("q")],
        };
        assert_eq!(sm.query(&exists.encode()), KvResponse::Int(2));
        let cas_fail = KvCommand::Cas {
            key: b("c"),
            expected: Some(b("nope")),
            new: Some(b("z")),
        };
        assert_eq!(
            sm.apply(5, &cmd(None, cas_fail)),
            KvResponse::Cas {
                swapped: false,
                current: Some(b("y"))
            }
        );
        let cas_ok = KvCommand::Cas {
            key: b("c"),
            expected: Some(b("y")),
            new: None,
        };
        assert_eq!(
            sm.apply(6, &cmd(None, cas_ok)),
            KvResponse::Cas {
                swapped: true,
                current: None
            }
        );
        let del = KvCommand::Del {
            keys: vec![b("a"), b("c"), b("b")],
        };
        assert_eq!(sm.apply(7, &cmd(None, del)), KvResponse::Int(2));
        let max = KvCommand::Set {
            key: b("m"),
            value: b(&i64::MAX.to_string()),
        };
        sm.apply(8, &cmd(None, max));
        let over = KvCommand::IncrBy { key: b("m"), by: 1 };
        assert_eq!(
            sm.apply(9, &cmd(None, over)),
            KvResponse::Error(KvError::Overflow)
        );
        assert_eq!(
            sm.apply(10, b"\xff\xff"),
            KvResponse::Error(KvError::Malformed)
        );
        assert_eq!(
            sm.query(
                &KvCommand::Set {
                    key: b("x"),
                    value: b("y")
                }
                .encode()
            ),
            KvResponse::Error(KvError::WrongKind)
        );
    }

    #[derive(Debug, Default)]
    struct Recorder(
        std::sync::Mutex<Vec<(Index, Vec<KeyChange>)>>,
        std::sync::Mutex<Vec<Index>>,
    );

    impl ChangeSink for Recorder {
        fn applied(&self, index: Index, changes: &[KeyChange]) {
            self.0.lock().unwrap().push((index, changes.to_vec()));
        }
        fn restored(&self, index: Index) {
            self.1.lock().unwrap().push(index);
        }
    }

    #[test]
    fn every_applied_change_reaches_the_sink_once_with_its_index() {
        let rec = Arc::new(Recorder::default());
        let mut sm = KvStateMachine::new(KvLimits::default()).with_change_sink(rec.clone());
        let set = |k: &str, v: &str| KvCommand::Set {
            key: b(k),
            value: b(v),
        };
        sm.apply(1, &cmd(None, set("a", "1")));
        sm.apply(
            2,
            &cmd(
                None,
                KvCommand::Del {
                    keys: vec![b("nope")],
                },
            ),
        );
        sm.apply(3, &cmd(None, KvCommand::IncrBy { key: b("n"), by: 2 }));
        // A duplicate of a session's request is answered from the session: no new change.
        sm.apply(
            4,
            &cmd(
                session(7, 1),
                KvCommand::Del {
                    keys: vec![b("a"), b("n")],
                },
            ),
        );
        sm.apply(
            5,
            &cmd(
                session(7, 1),
                KvCommand::Del {
                    keys: vec![b("a"), b("n")],
                },
            ),
        );
        let change = |k: &str, event, v: Option<&str>| KeyChange {
            key: b(k),
            event,
            value: v.map(b),
        };
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                (1, vec![change("a", KeyEvent::Set, Some("1"))]),
                (3, vec![change("n", KeyEvent::IncrBy, Some("2"))]),
                (
                    4,
                    vec![
                        change("a", KeyEvent::Del, None),
                        change("n", KeyEvent::Del, None)
                    ]
                ),
            ]
        );

        let mut snap = Vec::new();
        sm.freeze().snapshot(&mut snap).unwrap();
        let mut restored = sm.empty_like();
        restored.restore(&mut snap.as_slice()).unwrap();
        assert_eq!(*rec.1.lock().unwrap(), vec![5]);
    }

    #[test]
    fn a_batch_applies_in_order_in_one_entry() {
        let mut sm = KvStateMachine::new(KvLimits::default());
        let batch = KvCommand::Batch {
            commands: vec![
                KvCommand::Set {
                    key: b("n"),
                    value: b("5"),
                },
                KvCommand::IncrBy { key: b("n"), by: 2 },
                KvCommand::Get { key: b("n") },
                KvCommand::IncrBy { key: b("x"), by: 1 },
            ],
        };
        assert_eq!(
            sm.apply(1, &cmd(None, batch)),
            KvResponse::Batch(vec![
                KvResponse::Ok,
                KvResponse::Int(7),
                KvResponse::Value(Some(b("7"))),
                KvResponse::Int(1),
            ])
        );
        let nested = KvCommand::Batch {
            commands: vec![KvCommand::Batch { commands: vec![] }],
        };
        assert_eq!(
            sm.apply(2, &cmd(None, nested)),
            KvResponse::Error(KvError::Malformed)
        );
    }

    #[test]
    fn duplicate_request_is_answered_from_the_session_not_applied_twice() {
        let mut sm = KvStateMachine::new(KvLimits::default());
        let incr = || KvCommand::IncrBy { key: b("n"), by: 1 };
        assert_eq!(sm.apply(1, &cmd(session(7, 1), incr())), KvResponse::Int(1));
        // The retry lands at a later index, as it does after a leader change.
        assert_eq!(sm.apply(2, &cmd(session(7, 1), incr())), KvResponse::Int(1));
        assert_eq!(sm.apply(3, &cmd(session(7, 2), incr())), KvResponse::Int(2));
        // Another client's seq 1 is its own.
        assert_eq!(sm.apply(4, &cmd(session(8, 1), incr())), KvResponse::Int(3));
        // Once acknowledged, an old seq is refused rather than applied.
        assert_eq!(
            sm.apply(
                5,
                &cmd(
                    session(7, 1).map(|s| Session {
                        acked_below: 2,
                        ..s
                    }),
                    incr()
                )
            ),
            KvResponse::Error(KvError::AlreadyAcknowledged {
                client_id: 7,
                seq: 1
            })
        );
        assert_eq!(
            sm.query(&KvCommand::Get { key: b("n") }.encode()),
            KvResponse::Value(Some(b("3")))
        );
    }

    #[test]
    fn concurrent_unacknowledged_requests_are_each_cached() {
        let mut sm = KvStateMachine::new(KvLimits::default());
        let incr = || KvCommand::IncrBy { key: b("n"), by: 1 };
        let s = |seq| {
            Some(Session {
                client_id: 9,
                seq,
                acked_below: 1,
            })
        };
        assert_eq!(sm.apply(1, &cmd(s(2), incr())), KvResponse::Int(1));
        assert_eq!(sm.apply(2, &cmd(s(1), incr())), KvResponse::Int(2));
        assert_eq!(sm.apply(3, &cmd(s(2), incr())), KvResponse::Int(1));
        assert_eq!(sm.apply(4, &cmd(s(1), incr())), KvResponse::Int(2));
    }

    #[test]
    fn sessions_expire_by_log_index_and_by_count() {
        let limits = KvLimits {
            session_expiry_entries: 10,
            sessions_max: 2,
            session_responses_max: 2,
            ..KvLimits::default()
        };
        let mut sm = KvStateMachine::new(limits);
        let set = || KvCommand::Set {
            key: b("k"),
            value: b("v"),
        };
        sm.apply(1, &cmd(session(1, 1), set()));
        sm.apply(2, &cmd(session(2, 1), set()));
        assert_eq!(sm.session_count(), 2);
        // A third client evicts the least recently active.
        sm.apply(3, &cmd(session(3, 1), set()));
        assert_eq!(sm.session_count(), 2);
        assert!(!sm.state.sessions.contains_key(&1));
        // Nothing for more than 10 entries: both remaining sessions go.
        sm.apply(14, &cmd(None, set()));
        assert_eq!(sm.session_count(), 0);
        // Too many unacknowledged responses in one session.
        let s = |seq| {
            Some(Session {
                client_id: 5,
                seq,
                acked_below: 1,
            })
        };
        sm.apply(15, &cmd(s(1), set()));
        sm.apply(16, &cmd(s(2), set()));
        assert_eq!(
            sm.apply(17, &cmd(s(3), set())),
            KvResponse::Error(KvError::SessionFull)
        );
    }

    #[test]
    fn entries_without_commands_still_advance_the_snapshot_index() {
        let mut sm = KvStateMachine::new(KvLimits::default());
        let set = KvCommand::Set {
            key: b("k"),
            value: b("v"),
        };
        sm.apply(1, &cmd(None, set));
        // A leader's no-op at 2 and a membership change at 3.
        sm.skip_to(2);
        sm.skip_to(3);
        sm.skip_to(2);
        assert_eq!(sm.applied_index(), 3);
        let mut body = Vec::new();
        sm.freeze().snapshot(&mut body).unwrap();
        let mut restored = sm.empty_like();
        restored.restore(&mut body.as_slice()).unwrap();
        assert_eq!(restored.applied_index(), 3);
        assert_eq!(restored.digest(), sm.digest());
    }

    #[test]
    fn a_body_claiming_more_keys_than_it_holds_is_refused_without_reserving_them() {
        // Found by `cargo xtask fuzz --target snapshot`: applied index 0, then a map of
        // 2^33 pairs (postcard varint), then nothing. This allocated 128 GiB and aborted.
        let body = [0x00, 0x80, 0x80, 0x80, 0x80, 0x20];
        let mut snapshot = SNAPSHOT_MAGIC.to_vec();
        snapshot.extend_from_slice(&(body.len() as u64).to_le_bytes());
        snapshot.extend_from_slice(&body);
        let mut sm = KvStateMachine::new(KvLimits::default());
        assert!(matches!(
            sm.restore(&mut &snapshot[..]),
            Err(RestoreError::Malformed(_))
        ));
        let crash = b"RNK2\x07\0\0\0\0\0\0\0\x01\x80\x80\x80\x80\x08\0";
        assert!(KvStateMachine::new(KvLimits::default())
            .restore(&mut &crash[..])
            .is_err());
    }

    #[test]
    fn snapshot_restore_gives_equal_digest_and_keeps_sessions() {
        let mut sm = KvStateMachine::new(KvLimits::default());
        for i in 1..=50u64 {
            let c = KvCommand::IncrBy {
                key: b(&format!("k{}", i % 7)),
                by: i as i64,
            };
            sm.apply(i, &cmd(session(i % 3 + 1, i), c));
        }
        let frozen = sm.freeze();
        // Writes after the freeze do not leak into it.
        sm.apply(
            51,
            &cmd(
                None,
                KvCommand::Set {
                    key: b("late"),
                    value: b("x"),
                },
            ),
        );
        let mut body = Vec::new();
        frozen.snapshot(&mut body).unwrap();
        let mut restored = KvStateMachine::new(KvLimits::default());
        restored.restore(&mut body.as_slice()).unwrap();
        assert_eq!(restored.digest(), frozen.digest());
        assert_ne!(restored.digest(), sm.digest());
        assert_eq!(restored.applied_index(), 50);
        // The restored session still recognises a duplicate.
        let dup = KvCommand::IncrBy {
            key: b("k1"),
            by: 1000,
        };
        let original = restored.apply(52, &cmd(session(50 % 3 + 1, 50), dup));
        assert_eq!(
            original,
            KvResponse::Int((1..=50).filter(|i| i % 7 == 1).sum())
        );
        // A truncated body is refused.
        let mut fresh = KvStateMachine::new(KvLimits::default());
        assert!(fresh.restore(&mut &body[..body.len() - 1]).is_err());
    }

    /// Fills a machine with `keys` keys and a few sessions, enough for the maps to span many
    /// B-tree nodes.
    fn filled(keys: u64) -> KvStateMachine {
        let mut sm = KvStateMachine::new(KvLimits::default());
        for i in 1..=keys {
            let set = KvCommand::Set {
                key: b(&format!("key-{:08}", i.wrapping_mul(7919) % keys)),
                value: b(&format!("value-{i}")),
            };
            sm.apply(i, &cmd(session(i % 5 + 1, i), set));
        }
        sm
    }

    #[test]
    fn an_old_format_snapshot_is_refused_by_its_magic() {
        let mut body = Vec::new();
        filled(10).freeze().snapshot(&mut body).unwrap();
        body[..4].copy_from_slice(b"RNK1");
        assert!(matches!(
            KvStateMachine::new(KvLimits::default()).restore(&mut body.as_slice()),
            Err(RestoreError::Malformed(m)) if m == "bad magic"
        ));
    }

    #[test]
    fn writes_after_a_freeze_leave_the_frozen_copy_alone() {
        let mut sm = filled(3_000);
        let frozen = sm.freeze();
        let digest_at_freeze = frozen.digest();
        let mut body_at_freeze = Vec::new();
        frozen.snapshot(&mut body_at_freeze).unwrap();
        // Overwrite, delete and add keys all over the key space, and touch every session.
        for i in 3_001..=4_000u64 {
            let c = match i % 3 {
                0 => KvCommand::Set {
                    key: b(&format!("key-{:08}", i % 3_000)),
                    value: b("changed"),
                },
                1 => KvCommand::Del {
                    keys: vec![b(&format!("key-{:08}", (i * 13) % 3_000))],
                },
                _ => KvCommand::Set {
                    key: b(&format!("new-{i}")),
                    value: b("added"),
                },
            };
            sm.apply(i, &cmd(session(i % 5 + 1, i), c));
        }
        assert_ne!(sm.digest(), digest_at_freeze);
        assert_eq!(frozen.digest(), digest_at_freeze);
        let mut body = Vec::new();
        frozen.snapshot(&mut body).unwrap();
        assert_eq!(body, body_at_freeze);
        let mut restored = sm.empty_like();
        restored.restore(&mut body.as_slice()).unwrap();
        assert_eq!(restored.applied_index(), 3_000);
        assert_eq!(restored.len(), 3_000);
    }

    #[test]
    fn replicas_applying_the_same_log_agree_however_they_freeze() {
        // One replica freezes (and so shares nodes) at every 100th entry, the other never:
        // sharing must not change what the state is, nor its digest.
        let mut a = KvStateMachine::new(KvLimits::default());
        let mut b_sm = KvStateMachine::new(KvLimits::default());
        let mut frozen = Vec::new();
        for i in 1..=2_000u64 {
            let c = KvCommand::IncrBy {
                key: b(&format!("k{}", (i * 31) % 257)),
                by: i as i64,
            };
            let command = cmd(session(i % 9 + 1, i), c);
            assert_eq!(a.apply(i, &command), b_sm.apply(i, &command));
            if i % 100 == 0 {
                frozen.push(a.freeze());
            }
        }
        assert_eq!(a.digest(), b_sm.digest());
        assert_eq!(frozen.len(), 20);
    }

    #[test]
    fn a_failing_writer_gives_its_own_error_back() {
        struct FullAfter(usize);
        impl Write for FullAfter {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 < buf.len() {
                    return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
                }
                self.0 -= buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let sm = filled(3_000);
        let mut body = Vec::new();
        sm.freeze().snapshot(&mut body).unwrap();
        // Past the header, inside the body (which reaches the writer in 64 KiB pieces).
        let err = sm
            .freeze()
            .snapshot(&mut FullAfter(body.len() / 2))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(err.to_string(), "disk full");
    }

    #[test]
    fn writes_past_maxmemory_fail_with_oom_while_reads_and_deletes_go_on() {
        let limits = KvLimits {
            memory_bytes_max: 3 * (KEY_OVERHEAD_BYTES + 101),
            ..KvLimits::default()
        };
        let mut sm = KvStateMachine::new(limits);
        let value = Bytes::from(vec![b'v'; 100]);
        let set = |k: &str| KvCommand::Set {
            key: b(k),
            value: value.clone(),
        };
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(sm.apply(i as u64 + 1, &cmd(None, set(k))), KvResponse::Ok);
        }
        assert_eq!(sm.used_bytes(), 3 * (KEY_OVERHEAD_BYTES + 101));
        let oom = KvResponse::Error(KvError::OutOfMemory);
        assert_eq!(sm.apply(4, &cmd(None, set("d"))), oom);
        let mset = KvCommand::MSet {
            pairs: vec![(b("a"), b("x")), (b("e"), Bytes::from(vec![b'y'; 150]))],
        };
        // All or nothing: `a` shrinks but `e` is new, and the total still grows.
        assert_eq!(sm.apply(5, &cmd(None, mset)), oom);
        assert_eq!(
            sm.apply(6, &cmd(None, KvCommand::IncrBy { key: b("n"), by: 1 })),
            oom
        );
        // An overwrite in place of the same size does not grow the state.
        assert_eq!(sm.apply(7, &cmd(None, set("a"))), KvResponse::Ok);
        assert_eq!(
            sm.query(&KvCommand::Get { key: b("a") }.encode()),
            KvResponse::Value(Some(value.clone()))
        );
        let del = KvCommand::Del {
            keys: vec![b("a"), b("b")],
        };
        assert_eq!(sm.apply(8, &cmd(None, del)), KvResponse::Int(2));
        assert_eq!(sm.used_bytes(), KEY_OVERHEAD_BYTES + 101);
        assert_eq!(sm.apply(9, &cmd(None, set("d"))), KvResponse::Ok);
        // A restored replica counts the same bytes, and so decides the same way.
        let mut body = Vec::new();
        sm.freeze().snapshot(&mut body).unwrap();
        let mut restored = sm.empty_like();
        restored.restore(&mut body.as_slice()).unwrap();
        assert_eq!(restored.used_bytes(), sm.used_bytes());
        assert_eq!(restored.apply(10, &cmd(None, set("e"))), KvResponse::Ok);
        assert_eq!(restored.apply(11, &cmd(None, set("f"))), oom);
    }

    /// Applies commands one entry each, stamped with a clock the test moves.
    struct Driver {
        sm: KvStateMachine,
        index: Index,
        now_ms: u64,
    }

    impl Driver {
        fn new() -> Driver {
            Driver::with(KvStateMachine::new(KvLimits::default()))
        }

        fn with(sm: KvStateMachine) -> Driver {
            Driver {
                sm,
                index: 0,
                now_ms: 1_000_000,
            }
        }

        fn w(&mut self, c: KvCommand) -> KvResponse {
            self.index += 1;
            self.sm
                .apply(self.index, &log_command_at(None, c.encode(), self.now_ms))
        }

        fn r(&self, c: KvCommand) -> KvResponse {
            assert!(c.is_read(), "{c:?}");
            self.sm.view().read(&c)
        }

        fn get(&self, k: &str) -> Option<Bytes> {
            match self.r(KvCommand::Get { key: b(k) }) {
                KvResponse::Value(v) => v,
                other => panic!("{other:?}"),
            }
        }

        fn set(&mut self, k: &str, v: &str) {
            assert_eq!(
                self.w(KvCommand::Set {
                    key: b(k),
                    value: b(v)
                }),
                KvResponse::Ok
            );
        }

        fn ttl(&self, k: &str) -> i64 {
            match self.r(KvCommand::Ttl {
                key: b(k),
                millis: true,
            }) {
                KvResponse::Int(n) => n,
                other => panic!("{other:?}"),
            }
        }
    }

    fn set_with(k: &str, v: &str, condition: SetCondition, get: bool, expiry: Expiry) -> KvCommand {
        KvCommand::SetWith {
            key: b(k),
            value: b(v),
            condition,
            get,
            expiry,
        }
    }

    fn int(n: i64) -> KvResponse {
        KvResponse::Int(n)
    }

    fn val(v: &str) -> KvResponse {
        KvResponse::Value(Some(b(v)))
    }

    const NIL: KvResponse = KvResponse::Value(None);

    #[test]
    fn string_commands_behave_like_redis() {
        let mut d = Driver::new();
        use SetCondition::*;
        // SET NX / XX / GET.
        assert_eq!(
            d.w(set_with("a", "1", IfPresent, false, Expiry::Persist)),
            NIL
        );
        assert_eq!(d.get("a"), None);
        assert_eq!(
            d.w(set_with("a", "1", IfAbsent, false, Expiry::Persist)),
            KvResponse::Ok
        );
        assert_eq!(
            d.w(set_with("a", "2", IfAbsent, false, Expiry::Persist)),
            NIL
        );
        assert_eq!(
            d.w(set_with("a", "2", IfAbsent, true, Expiry::Persist)),
            val("1")
        );
        assert_eq!(
            d.w(set_with("a", "3", IfPresent, true, Expiry::Persist)),
            val("1")
        );
        assert_eq!(d.w(set_with("z", "3", Always, true, Expiry::Persist)), NIL);
        assert_eq!(d.get("a"), Some(b("3")));
        // SETNX, GETSET, GETDEL.
        let setnx = |k: &str, v: &str| KvCommand::SetNx {
            key: b(k),
            value: b(v),
        };
        assert_eq!(d.w(setnx("a", "x")), int(0));
        assert_eq!(d.w(setnx("n", "x")), int(1));
        assert_eq!(
            d.w(set_with("n", "y", Always, true, Expiry::Persist)),
            val("x")
        );
        assert_eq!(d.w(KvCommand::GetDel { key: b("n") }), val("y"));
        assert_eq!(d.w(KvCommand::GetDel { key: b("n") }), NIL);
        // APPEND, STRLEN, GETRANGE, SETRANGE.
        let append = |k: &str, v: &str| KvCommand::Append {
            key: b(k),
            value: b(v),
        };
        assert_eq!(d.w(append("s", "Hello")), int(5));
        assert_eq!(d.w(append("s", " World")), int(11));
        assert_eq!(d.r(KvCommand::Strlen { key: b("s") }), int(11));
        assert_eq!(d.r(KvCommand::Strlen { key: b("nope") }), int(0));
        let range = |start, end| KvCommand::GetRange {
            key: b("s"),
            start,
            end,
        };
        assert_eq!(d.r(range(0, 4)), val("Hello"));
        assert_eq!(d.r(range(-5, -1)), val("World"));
        assert_eq!(d.r(range(-3, 100)), val("rld"));
        assert_eq!(d.r(range(5, 3)), val(""));
        assert_eq!(d.r(range(-1, -5)), val(""));
        assert_eq!(
            d.r(KvCommand::GetRange {
                key: b("nope"),
                start: 0,
                end: -1
            }),
            val("")
        );
        let setrange = |k: &str, offset, v: &str| KvCommand::SetRange {
            key: b(k),
            offset,
            value: b(v),
        };
        assert_eq!(d.w(setrange("s", 6, "Redis")), int(11));
        assert_eq!(d.get("s"), Some(b("Hello Redis")));
        assert_eq!(d.w(setrange("p", 3, "x")), int(4));
        assert_eq!(d.get("p"), Some(Bytes::from_static(b"\0\0\0x")));
        assert_eq!(d.w(setrange("q", 3, "")), int(0));
        assert_eq!(d.get("q"), None);
        assert_eq!(
            d.w(setrange("q", STRING_BYTES_MAX, "x")),
            KvResponse::Error(KvError::StringTooLong)
        );
        // INCRBYFLOAT, formatted as Redis prints it.
        let incr = |k: &str, by: &str| KvCommand::IncrByFloat {
            key: b(k),
            by: b(by),
        };
        d.set("f", "10.50");
        assert_eq!(d.w(incr("f", "0.1")), val("10.6"));
        assert_eq!(d.w(incr("f", "-5")), val("5.6"));
        d.set("f", "5.0e3");
        assert_eq!(d.w(incr("f", "2.0e2")), val("5200"));
        assert_eq!(d.w(incr("g", "0.1")), val("0.1"));
        assert_eq!(d.w(incr("g", "0.2")), val("0.3"));
        assert_eq!(d.w(incr("g", "-0.3")), val("0"));
        assert_eq!(d.w(incr("s", "1")), KvResponse::Error(KvError::NotAFloat));
        assert_eq!(d.w(incr("g", "nan")), KvResponse::Error(KvError::NotAFloat));
        assert_eq!(d.w(incr("g", " 1")), KvResponse::Error(KvError::NotAFloat));
        d.set("big", "1e308");
        assert_eq!(
            d.w(incr("big", "1e308")),
            KvResponse::Error(KvError::NotFinite)
        );
        // MSETNX: all or nothing.
        let msetnx = |pairs: &[(&str, &str)]| KvCommand::MSetNx {
            pairs: pairs.iter().map(|(k, v)| (b(k), b(v))).collect(),
        };
        assert_eq!(d.w(msetnx(&[("m1", "1"), ("a", "x")])), int(0));
        assert_eq!(d.get("m1"), None);
        assert_eq!(d.w(msetnx(&[("m1", "1"), ("m2", "2")])), int(1));
        assert_eq!(d.get("m2"), Some(b("2")));
        // TYPE, EXISTS, DBSIZE, RENAME, RENAMENX.
        assert_eq!(
            d.r(KvCommand::Type { key: b("a") }),
            KvResponse::Text("string".into())
        );
        assert_eq!(
            d.r(KvCommand::Type { key: b("nope") }),
            KvResponse::Text("none".into())
        );
        let rename = |from: &str, to: &str, nx| KvCommand::Rename {
            from: b(from),
            to: b(to),
            nx,
        };
        assert_eq!(
            d.w(rename("nope", "x", false)),
            KvResponse::Error(KvError::NoSuchKey)
        );
        assert_eq!(d.w(rename("m1", "r", false)), KvResponse::Ok);
        assert_eq!((d.get("m1"), d.get("r")), (None, Some(b("1"))));
        assert_eq!(d.w(rename("r", "m2", true)), int(0));
        assert_eq!(d.w(rename("r", "r", false)), KvResponse::Ok);
        assert_eq!(d.w(rename("r", "m2", false)), KvResponse::Ok);
        assert_eq!(d.get("m2"), Some(b("1")));
        assert_eq!(d.w(rename("m2", "fresh", true)), int(1));
        let size = d.r(KvCommand::DbSize);
        let KvResponse::Keys(all) = d.r(KvCommand::Keys { pattern: b("*") }) else {
            panic!()
        };
        assert_eq!(size, int(all.len() as i64));
        assert_eq!(
            d.r(KvCommand::Exists {
                keys: vec![b("a"), b("a"), b("gone")]
            }),
            int(2)
        );
        // DEL of present and absent keys; FLUSHALL.
        assert_eq!(
            d.w(KvCommand::Del {
                keys: vec![b("a"), b("gone")]
            }),
            int(1)
        );
        assert_eq!(d.w(KvCommand::FlushAll), KvResponse::Ok);
        assert_eq!(d.r(KvCommand::DbSize), int(0));
        assert_eq!(d.sm.used_bytes(), 0);
        assert!(d.sm.is_empty());
    }

    #[test]
    fn keys_match_globs_and_refuse_a_reply_past_the_bound() {
        let limits = KvLimits {
            reply_bytes_max: 10 * (8 + KEY_REPLY_OVERHEAD_BYTES),
            ..KvLimits::default()
        };
        let mut d = Driver::with(KvStateMachine::new(limits));
        for i in 0..20 {
            d.set(&format!("user:{i:03}"), "v");
            d.set(&format!("item:{i:03}"), "v");
        }
        let keys = |p: &str| d.r(KvCommand::Keys { pattern: b(p) });
        assert_eq!(
            keys("user:00?"),
            KvResponse::Keys((0..10).map(|i| b(&format!("user:{i:03}"))).collect())
        );
        assert_eq!(
            keys("*:01[0-2]"),
            KvResponse::Keys(vec![
                b("item:010"),
                b("item:011"),
                b("item:012"),
                b("user:010"),
                b("user:011"),
                b("user:012")
            ])
        );
        assert!(matches!(
            keys("user:*"),
            KvResponse::Error(KvError::ReplyTooLarge { .. })
        ));
    }

    /// Every key SCAN returns, calling it until the cursor is 0, with `between` run
    /// between calls.
    fn full_scan(
        d: &mut Driver,
        count: u64,
        pattern: Option<&str>,
        mut between: impl FnMut(&mut Driver),
    ) -> Vec<Bytes> {
        let mut cursor = 0;
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            let KvResponse::Scan { cursor: next, keys } = d.r(KvCommand::Scan {
                cursor,
                pattern: pattern.map(b),
                count,
                type_name: None,
            }) else {
                panic!()
            };
            seen.extend(keys);
            if next == 0 {
                return seen;
            }
            assert_ne!(next, cursor);
            cursor = next;
            between(d);
        }
        panic!("the scan did not end");
    }

    #[test]
    fn scan_returns_every_key_present_throughout_whatever_changes_between_calls() {
        let mut d = Driver::new();
        for i in 0..500 {
            d.set(&format!("k{i}"), "v");
        }
        let all = full_scan(&mut d, 7, None, |_| {});
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 500);
        assert_eq!(all.len(), 500, "no churn, no duplicates");
        // Keys k0..k249 stay; the others are deleted and new ones added while scanning.
        let mut n = 0;
        let seen = full_scan(&mut d, 10, None, |d| {
            n += 1;
            d.w(KvCommand::Del {
                keys: vec![b(&format!("k{}", 250 + n % 250))],
            });
            d.set(&format!("new{n}"), "v");
        });
        for i in 0..250 {
            assert!(seen.contains(&b(&format!("k{i}"))), "k{i} missed");
        }
        // MATCH and TYPE filter; COUNT bounds the keys examined, not those returned.
        let matched = full_scan(&mut d, 50, Some("k1?"), |_| {});
        let mut matched: Vec<_> = matched.into_iter().collect();
        matched.sort();
        assert_eq!(
            matched,
            (10..20).map(|i| b(&format!("k{i}"))).collect::<Vec<_>>()
        );
        let none = d.r(KvCommand::Scan {
            cursor: 0,
            pattern: None,
            count: 1_000,
            type_name: Some(b("hash")),
        });
        assert!(matches!(none, KvResponse::Scan { keys, .. } if keys.is_empty()));
        // A cursor from one replica goes on on another (a leader change between calls).
        let mut other = Driver::new();
        for i in 0..500 {
            other.set(&format!("k{i}"), "v");
        }
        let first = d.r(KvCommand::Scan {
            cursor: 0,
            pattern: None,
            count: 3,
            type_name: None,
        });
        let KvResponse::Scan { cursor, .. } = first else {
            panic!()
        };
        let a = d.r(KvCommand::Scan {
            cursor,
            pattern: Some(b("k*")),
            count: 20,
            type_name: None,
        });
        let b_ = other.r(KvCommand::Scan {
            cursor,
            pattern: Some(b("k*")),
            count: 20,
            type_name: None,
        });
        let (KvResponse::Scan { keys: ka, .. }, KvResponse::Scan { keys: kb, .. }) = (a, b_) else {
            panic!()
        };
        let common: Vec<_> = ka.iter().filter(|k| kb.contains(k)).collect();
        assert!(!common.is_empty());
    }

    #[test]
    fn expiry_follows_the_stamped_clock_only() {
        let mut d = Driver::new();
        let t0 = d.now_ms;
        assert_eq!(
            d.w(set_with(
                "k",
                "v",
                SetCondition::Always,
                false,
                Expiry::In(300)
            )),
            KvResponse::Ok
        );
        assert_eq!(d.sm.clock_ms(), t0);
        assert_eq!(d.ttl("k"), 300);
        assert_eq!(
            d.r(KvCommand::Ttl {
                key: b("k"),
                millis: false
            }),
            int(0)
        );
        assert_eq!(
            d.r(KvCommand::ExpireTime {
                key: b("k"),
                millis: true
            }),
            int((t0 + 300) as i64)
        );
        assert_eq!(d.sm.next_deadline_ms(), Some(t0 + 300));
        // Time passes on the applier's wall clock but no entry says so: the key lives.
        assert_eq!(d.get("k"), Some(b("v")));
        assert_eq!(d.sm.sweep_due(t0 + 299), None);
        // An entry stamped at the deadline: the key reads as gone before any sweep.
        d.now_ms = t0 + 300;
        d.set("other", "x");
        assert_eq!(d.get("k"), None);
        assert_eq!(d.ttl("k"), -2);
        assert_eq!(d.r(KvCommand::Exists { keys: vec![b("k")] }), int(0));
        assert_eq!(d.r(KvCommand::DbSize), int(1));
        assert_eq!(d.sm.len(), 2, "still stored until swept");
        // The leader's sweep deletes it, stamped with the leader's time.
        let sweep = d.sm.sweep_due(t0 + 300).expect("due");
        d.index += 1;
        assert_eq!(d.sm.apply(d.index, &sweep), int(1));
        assert_eq!(d.sm.len(), 1);
        assert_eq!(d.sm.sweep_due(u64::MAX), None);
        // A leader whose clock went back: its stamps do not turn the state's clock back.
        d.now_ms = t0 - 10_000;
        d.set("late", "x");
        assert_eq!(d.sm.clock_ms(), t0 + 300);
        assert_eq!(
            d.w(set_with(
                "e",
                "v",
                SetCondition::Always,
                false,
                Expiry::In(1_000)
            )),
            KvResponse::Ok
        );
        assert_eq!(
            d.ttl("e"),
            1_000,
            "relative to the state's clock, not the stamp"
        );
        // A clock jump forward: the deadline passes at once, on every replica alike.
        d.now_ms = t0 + 1_000_000;
        d.set("jump", "x");
        assert_eq!(d.get("e"), None);
        // Absolute deadlines in the past delete at once.
        d.set("abs", "x");
        assert_eq!(
            d.w(set_with(
                "abs",
                "y",
                SetCondition::Always,
                true,
                Expiry::At(5)
            )),
            val("x")
        );
        assert_eq!(d.get("abs"), None);
    }

    #[test]
    fn expire_persist_and_getex_follow_redis_conditions() {
        let mut d = Driver::new();
        let t0 = d.now_ms;
        let expire = |k: &str, when, condition| KvCommand::Expire {
            key: b(k),
            when,
            condition,
        };
        use ExpireCondition::*;
        d.set("k", "v");
        assert_eq!(d.w(expire("nope", Expiry::In(1_000), Always)), int(0));
        assert_eq!(d.w(expire("k", Expiry::In(1_000), Xx)), int(0));
        assert_eq!(
            d.w(expire("k", Expiry::In(1_000), Gt)),
            int(0),
            "no TTL is infinite"
        );
        assert_eq!(d.w(expire("k", Expiry::In(1_000), Nx)), int(1));
        assert_eq!(d.w(expire("k", Expiry::In(2_000), Nx)), int(0));
        assert_eq!(d.w(expire("k", Expiry::In(2_000), Lt)), int(0));
        assert_eq!(d.w(expire("k", Expiry::In(2_000), Gt)), int(1));
        assert_eq!(d.w(expire("k", Expiry::In(500), XxLt)), int(1));
        assert_eq!(d.ttl("k"), 500);
        assert_eq!(d.w(expire("k", Expiry::At(t0 + 5_000), Xx)), int(1));
        assert_eq!(d.ttl("k"), 5_000);
        assert_eq!(
            d.w(expire("k", Expiry::Keep, Always)),
            KvResponse::Error(KvError::Malformed)
        );
        assert_eq!(
            d.w(expire("k", Expiry::In(u64::MAX), Always)),
            KvResponse::Error(KvError::InvalidExpireTime("expire".into()))
        );
        // KEEPTTL keeps it, a plain SET clears it, INCR keeps it.
        assert_eq!(
            d.w(set_with(
                "k",
                "w",
                SetCondition::Always,
                false,
                Expiry::Keep
            )),
            KvResponse::Ok
        );
        assert_eq!(d.ttl("k"), 5_000);
        d.w(KvCommand::IncrBy { key: b("c"), by: 1 });
        d.w(expire("c", Expiry::In(100), Always));
        d.w(KvCommand::IncrBy { key: b("c"), by: 1 });
        assert_eq!(d.ttl("c"), 100);
        d.set("k", "x");
        assert_eq!(d.ttl("k"), -1);
        // PERSIST.
        assert_eq!(d.w(KvCommand::Persist { key: b("k") }), int(0));
        d.w(expire("k", Expiry::In(100), Always));
        assert_eq!(d.w(KvCommand::Persist { key: b("k") }), int(1));
        assert_eq!(d.ttl("k"), -1);
        // GETEX.
        let getex = |expiry| KvCommand::GetEx {
            key: b("k"),
            expiry,
        };
        assert_eq!(d.w(getex(Expiry::In(700))), val("x"));
        assert_eq!(d.ttl("k"), 700);
        assert_eq!(d.w(getex(Expiry::Persist)), val("x"));
        assert_eq!(d.ttl("k"), -1);
        assert_eq!(
            d.w(KvCommand::GetEx {
                key: b("nope"),
                expiry: Expiry::In(1)
            }),
            NIL
        );
        // EXPIRE in the past deletes; RENAME carries the TTL.
        d.w(expire("k", Expiry::In(300), Always));
        assert_eq!(
            d.w(KvCommand::Rename {
                from: b("k"),
                to: b("k2"),
                nx: false
            }),
            KvResponse::Ok
        );
        assert_eq!(d.ttl("k2"), 300);
        assert_eq!(d.w(expire("k2", Expiry::At(0), Always)), int(1));
        assert_eq!(d.get("k2"), None);
        assert_eq!(d.sm.len(), 1, "only c is left");
    }

    #[test]
    fn a_transaction_applies_whole_or_not_at_all_by_watched_versions() {
        let mut d = Driver::new();
        d.set("a", "1");
        let versions = |d: &Driver, keys: &[&str]| match d.r(KvCommand::Versions {
            keys: keys.iter().map(|k| b(k)).collect(),
        }) {
            KvResponse::Versions(v) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(versions(&d, &["a", "b"]), vec![1, 0]);
        let watched = versions(&d, &["a", "b"]);
        let exec = |watched: &[u64]| KvCommand::Exec {
            watches: vec![(b("a"), watched[0]), (b("b"), watched[1])],
            commands: vec![
                KvCommand::IncrBy { key: b("a"), by: 1 },
                KvCommand::IncrBy { key: b("s"), by: 1 },
                KvCommand::Append {
                    key: b("s"),
                    value: b("x"),
                },
                KvCommand::IncrBy { key: b("s"), by: 1 },
                KvCommand::Get { key: b("a") },
            ],
        };
        // Someone else writes a watched key: nothing applies.
        d.set("a", "10");
        assert_eq!(d.w(exec(&watched)), KvResponse::Aborted);
        assert_eq!(d.get("s"), None);
        // With current versions every command applies in this one entry; an error is that
        // command's answer and the others still apply, as in Redis.
        let watched = versions(&d, &["a", "b"]);
        assert_eq!(
            d.w(exec(&watched)),
            KvResponse::Batch(vec![
                int(11),
                int(1),
                int(2),
                KvResponse::Error(KvError::NotAnInteger),
                val("11"),
            ])
        );
        let index = d.index;
        assert_eq!(versions(&d, &["a", "s"]), vec![index, index]);
        // Creating a watched absent key, expiring or deleting a watched key all abort.
        let watched = versions(&d, &["a", "b"]);
        d.set("b", "new");
        assert_eq!(d.w(exec(&watched)), KvResponse::Aborted);
        let watched = versions(&d, &["a", "b"]);
        d.w(KvCommand::Expire {
            key: b("a"),
            when: Expiry::In(10),
            condition: ExpireCondition::Always,
        });
        assert_eq!(d.w(exec(&watched)), KvResponse::Aborted);
        let watched = versions(&d, &["a", "b"]);
        d.now_ms += 10;
        d.set("tick", "x");
        assert_eq!(versions(&d, &["a"]), vec![0], "expired: absent");
        assert_eq!(d.w(exec(&watched)), KvResponse::Aborted);
        // A transaction inside a pipelined batch.
        let batch = KvCommand::Batch {
            commands: vec![
                KvCommand::Set {
                    key: b("x"),
                    value: b("1"),
                },
                KvCommand::Exec {
                    watches: vec![],
                    commands: vec![KvCommand::Get { key: b("x") }],
                },
            ],
        };
        assert_eq!(
            d.w(batch),
            KvResponse::Batch(vec![KvResponse::Ok, KvResponse::Batch(vec![val("1")])])
        );
    }

    #[test]
    fn every_command_records_its_changes_in_order() {
        let rec = Arc::new(Recorder::default());
        let mut d =
            Driver::with(KvStateMachine::new(KvLimits::default()).with_change_sink(rec.clone()));
        let t0 = d.now_ms;
        use KeyEvent::*;
        type Expected<'a> = Vec<(&'a str, KeyEvent, Option<&'a str>)>;
        let steps: Vec<(KvCommand, Expected)> = vec![
            (
                set_with("a", "1", SetCondition::Always, false, Expiry::In(100)),
                vec![("a", Set, Some("1")), ("a", Expire, None)],
            ),
            (
                KvCommand::SetNx {
                    key: b("b"),
                    value: b("2"),
                },
                vec![("b", Set, Some("2"))],
            ),
            (
                KvCommand::SetNx {
                    key: b("b"),
                    value: b("3"),
                },
                vec![],
            ),
            (
                KvCommand::Append {
                    key: b("b"),
                    value: b("x"),
                },
                vec![("b", Append, Some("2x"))],
            ),
            (
                KvCommand::SetRange {
                    key: b("b"),
                    offset: 0,
                    value: b("3"),
                },
                vec![("b", SetRange, Some("3x"))],
            ),
            (
                KvCommand::IncrByFloat {
                    key: b("f"),
                    by: b("1.5"),
                },
                vec![("f", IncrByFloat, Some("1.5"))],
            ),
            (
                KvCommand::Persist { key: b("a") },
                vec![("a", Persist, None)],
            ),
            (
                KvCommand::Expire {
                    key: b("a"),
                    when: Expiry::In(50),
                    condition: ExpireCondition::Always,
                },
                vec![("a", Expire, None)],
            ),
            (
                KvCommand::Rename {
                    from: b("b"),
                    to: b("c"),
                    nx: false,
                },
                vec![("b", RenameFrom, None), ("c", RenameTo, Some("3x"))],
            ),
            (KvCommand::GetDel { key: b("c") }, vec![("c", Del, None)]),
            (
                KvCommand::MSetNx {
                    pairs: vec![(b("m"), b("1")), (b("n"), b("2"))],
                },
                vec![("m", Set, Some("1")), ("n", Set, Some("2"))],
            ),
            (
                KvCommand::GetEx {
                    key: b("m"),
                    expiry: Expiry::In(10),
                },
                vec![("m", Expire, None)],
            ),
            (
                KvCommand::GetEx {
                    key: b("m"),
                    expiry: Expiry::Persist,
                },
                vec![("m", Persist, None)],
            ),
            (
                KvCommand::Expire {
                    key: b("n"),
                    when: Expiry::At(1),
                    condition: ExpireCondition::Always,
                },
                vec![("n", Del, None)],
            ),
            (
                KvCommand::Del {
                    keys: vec![b("m"), b("zz")],
                },
                vec![("m", Del, None)],
            ),
        ];
        let mut want = Vec::new();
        for (c, changes) in steps {
            d.w(c);
            if !changes.is_empty() {
                want.push((
                    d.index,
                    changes
                        .into_iter()
                        .map(|(k, event, v)| KeyChange {
                            key: b(k),
                            event,
                            value: v.map(b),
                        })
                        .collect::<Vec<_>>(),
                ));
            }
        }
        // Lazy expiry: a write touching a key past its deadline deletes it first.
        d.now_ms = t0 + 60;
        d.w(KvCommand::IncrBy { key: b("a"), by: 1 });
        want.push((
            d.index,
            vec![
                KeyChange {
                    key: b("a"),
                    event: Expired,
                    value: None,
                },
                KeyChange {
                    key: b("a"),
                    event: IncrBy,
                    value: Some(b("1")),
                },
            ],
        ));
        // The sweep: `expired` for each key it deletes.
        d.w(KvCommand::Expire {
            key: b("a"),
            when: Expiry::In(5),
            condition: ExpireCondition::Always,
        });
        want.push((
            d.index,
            vec![KeyChange {
                key: b("a"),
                event: Expire,
                value: None,
            }],
        ));
        d.now_ms += 5;
        d.w(KvCommand::Sweep { keys_max: 10 });
        want.push((
            d.index,
            vec![KeyChange {
                key: b("a"),
                event: Expired,
                value: None,
            }],
        ));
        d.w(KvCommand::FlushAll);
        want.push((
            d.index,
            vec![KeyChange {
                key: b("f"),
                event: Del,
                value: None,
            }],
        ));
        assert_eq!(*rec.0.lock().unwrap(), want);
    }

    #[test]
    fn replicas_agree_on_a_mixed_log_and_across_snapshot_and_restore() {
        // A log of every kind of command with stamps that jump both ways.
        let mut log = Vec::new();
        let mut t = 5_000u64;
        for i in 0..3_000u64 {
            t = match i % 97 {
                0 => t.saturating_sub(700),
                13 => t + 5_000,
                _ => t + (i * 7919) % 23,
            };
            let k = |n: u64| b(&format!("k{}", (i * 31 + n) % 61));
            let c = match i % 14 {
                0 => set_with(
                    &format!("k{}", i % 61),
                    "v",
                    SetCondition::Always,
                    false,
                    Expiry::In(i % 400),
                ),
                1 => KvCommand::Append {
                    key: k(1),
                    value: b("ab"),
                },
                2 => KvCommand::IncrBy { key: k(2), by: 3 },
                3 => KvCommand::IncrByFloat {
                    key: k(3),
                    by: b("0.25"),
                },
                4 => KvCommand::Expire {
                    key: k(4),
                    when: Expiry::In(i % 300),
                    condition: ExpireCondition::Always,
                },
                5 => KvCommand::Persist { key: k(5) },
                6 => KvCommand::Rename {
                    from: k(6),
                    to: k(7),
                    nx: i % 2 == 0,
                },
                7 => KvCommand::SetRange {
                    key: k(8),
                    offset: i % 5,
                    value: b("zz"),
                },
                8 => KvCommand::GetDel { key: k(9) },
                9 => KvCommand::Sweep { keys_max: 3 },
                10 => KvCommand::Exec {
                    watches: vec![(k(10), i % 3)],
                    commands: vec![KvCommand::SetNx {
                        key: k(11),
                        value: b("n"),
                    }],
                },
                11 => KvCommand::GetEx {
                    key: k(12),
                    expiry: Expiry::In(50),
                },
                12 => KvCommand::MSetNx {
                    pairs: vec![(k(13), b("1")), (k(14), b("2"))],
                },
                _ => KvCommand::Del { keys: vec![k(15)] },
            };
            log.push(log_command_at(session(i % 4 + 1, i + 1), c.encode(), t));
        }
        let mut a = KvStateMachine::new(KvLimits::default());
        let mut b_sm = KvStateMachine::new(KvLimits::default());
        let mut restored: Option<KvStateMachine> = None;
        for (i, entry) in log.iter().enumerate() {
            let index = i as u64 + 1;
            let ra = a.apply(index, entry);
            assert_eq!(ra, b_sm.apply(index, entry), "at {index}");
            if let Some(r) = restored.as_mut() {
                assert_eq!(r.apply(index, entry), ra, "restored replica at {index}");
            }
            if index == 1_500 {
                let mut body = Vec::new();
                a.freeze().snapshot(&mut body).unwrap();
                let mut r = a.empty_like();
                r.restore(&mut body.as_slice()).unwrap();
                assert_eq!(r.digest(), a.digest());
                assert_eq!(r.used_bytes(), a.used_bytes());
                assert_eq!(r.next_deadline_ms(), a.next_deadline_ms());
                restored = Some(r);
            }
        }
        assert_eq!(a.digest(), b_sm.digest());
        let r = restored.unwrap();
        assert_eq!(r.digest(), a.digest());
        assert_eq!(r.clock_ms(), a.clock_ms());
        // Versions and deadlines are part of the digest: a replica differing only there
        // is told apart.
        let mut c = a.clone();
        let key = c.state.space.map.keys().next().unwrap().clone();
        c.state.set_deadline(&key, Some(u64::MAX));
        assert_ne!(c.digest(), a.digest());
    }

    #[test]
    fn growing_commands_respect_maxmemory() {
        let limits = KvLimits {
            memory_bytes_max: 2 * (KEY_OVERHEAD_BYTES + 10),
            ..KvLimits::default()
        };
        let mut d = Driver::with(KvStateMachine::new(limits));
        d.set("a", "123456789");
        let oom = KvResponse::Error(KvError::OutOfMemory);
        assert_eq!(
            d.w(KvCommand::Append {
                key: b("a"),
                value: Bytes::from(vec![b'x'; 200])
            }),
            oom
        );
        assert_eq!(
            d.w(KvCommand::SetRange {
                key: b("a"),
                offset: 1 << 20,
                value: b("x")
            }),
            oom
        );
        assert_eq!(
            d.w(KvCommand::SetRange {
                key: b("a"),
                offset: 0,
                value: b("x")
            }),
            int(9)
        );
        assert_eq!(
            d.w(KvCommand::IncrByFloat {
                key: b("new"),
                by: Bytes::from("1".repeat(300))
            }),
            oom
        );
        assert_eq!(
            d.w(KvCommand::Rename {
                from: b("a"),
                to: Bytes::from(vec![b'k'; 300]),
                nx: false
            }),
            oom
        );
        assert_eq!(
            d.w(KvCommand::Rename {
                from: b("a"),
                to: b("b"),
                nx: false
            }),
            KvResponse::Ok
        );
        // Expiry changes never grow the state.
        assert_eq!(
            d.w(KvCommand::Expire {
                key: b("b"),
                when: Expiry::In(10),
                condition: ExpireCondition::Always
            }),
            int(1)
        );
        assert_eq!(d.sm.used_bytes(), entry_bytes(b"b", b"x23456789"));
    }

    #[test]
    fn reads_past_the_reply_or_key_bound_are_refused_before_the_reply_is_built() {
        let limits = KvLimits {
            reply_bytes_max: 250,
            request_keys_max: 3,
            ..KvLimits::default()
        };
        let mut sm = KvStateMachine::new(limits);
        let set = KvCommand::Set {
            key: b("big"),
            value: Bytes::from(vec![0u8; 100]),
        };
        sm.apply(1, &cmd(None, set));
        let mget = |n: usize| KvCommand::MGet {
            keys: vec![b("big"); n],
        };
        assert!(matches!(
            sm.view().read(&mget(2)),
            KvResponse::Values(v) if v.len() == 2
        ));
        assert_eq!(
            sm.view().read(&mget(3)),
            KvResponse::Error(KvError::ReplyTooLarge {
                bytes: 300,
                max: 250
            })
        );
        assert_eq!(
            sm.query(&mget(4).encode()),
            KvResponse::Error(KvError::TooManyKeys { keys: 4, max: 3 })
        );
        // A view is the state when it was taken: later writes do not show in it.
        let view = sm.view();
        sm.apply(
            2,
            &cmd(
                None,
                KvCommand::Del {
                    keys: vec![b("big")],
                },
            ),
        );
        assert_eq!(view.get(b"big").map(|v| v.len()), Some(100));
        assert_eq!(sm.view().get(b"big"), None);
    }
}
