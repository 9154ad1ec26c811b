//! The built-in deterministic key-value state machine, with client sessions for
//! exactly-once writes.
//!
//! Every log command is a postcard [`LogCommand`]: an optional [`Session`] and the
//! postcard [`KvCommand`]. For a command with a session the state machine keeps the
//! responses of the client's unacknowledged requests; a duplicate `(client_id, seq)` gets the
//! cached response and changes nothing. Sessions expire by log index alone (a session idle
//! for `session_expiry_entries` entries is dropped when a later entry is applied), so every
//! replica expires the same sessions at the same index. The session table is part of the
//! snapshot and of the digest.
//!
//! The limits in [`KvLimits`] take part in that determinism: every node of a cluster must
//! run with the same values.
//!
//! The state lives in persistent ordered maps (`imbl::OrdMap`, B-trees whose nodes are
//! shared between copies), so that [`StateMachine::freeze`] for a snapshot or a digest is
//! O(1) and the writes after it copy only the O(log n) nodes they touch. A plain `BTreeMap`
//! behind an `Arc` made the first write after every freeze copy the whole map on the apply
//! path: ~100 ms with 100,000 keys, a stall of every client of the node. The maps iterate in
//! key order, so the snapshot bytes and the digest are canonical, and they serialise exactly
//! as `BTreeMap`s did (a length, then the pairs in order): snapshot files are unchanged.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

use crate::changes::{ChangeSink, KeyChange, KeyEvent};
use bytes::Bytes;
use raft_client::wire::{KvCommand, KvError, KvResponse, LogCommand, Session, BATCH_COMMANDS_MAX};
use raft_core::Index;
use raft_snapshot::{DigestHasher, RestoreError, SnapshotSource, StateDigest, StateMachine};
use serde::{Deserialize, Serialize};

const SNAPSHOT_MAGIC: &[u8; 4] = b"RNK1";
const DIGEST_DOMAIN: &[u8] = b"raft-node kv state v1\0";
/// Largest snapshot body restored: a bound on the allocation a corrupt length could ask for.
const SNAPSHOT_BYTES_MAX: u64 = 4 << 30;
/// What one stored key costs beyond its key and value bytes, in the estimate of the
/// state's size that `kv_memory_bytes_max` bounds: two `Bytes` handles (32 bytes each) and
/// the B-tree's share per entry, rounded up.
pub const KEY_OVERHEAD_BYTES: u64 = 96;
/// Bytes of values a read inside a logged batch may return. A constant, not a node's
/// `reply_bytes_max`: the answer is cached in the client's session, which is replicated
/// state, so every replica must reach the same answer.
pub const LOGGED_READ_REPLY_BYTES_MAX: usize = 16 << 20;

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

/// The replicated state. Ordered maps keep the serialisation canonical, which the digest
/// needs; persistent ones make a clone O(1) (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    applied_index: Index,
    #[serde(deserialize_with = "ord_map_from_entries")]
    map: OrdMap<Bytes, Bytes>,
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
    /// Stores `value` under `key`, keeping `used_bytes` in step.
    fn insert(&mut self, key: Bytes, value: Bytes) {
        let added = entry_bytes(&key, &value);
        if let Some(old) = self.map.insert(key.clone(), value) {
            self.used_bytes -= entry_bytes(&key, &old);
        }
        self.used_bytes += added;
    }

    /// Removes `key`, keeping `used_bytes` in step; whether it was there.
    fn remove(&mut self, key: &Bytes) -> bool {
        match self.map.remove(key) {
            Some(old) => {
                self.used_bytes -= entry_bytes(key, &old);
                true
            }
            None => false,
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
            if let Some(old) = self.map.get(k) {
                freed += entry_bytes(k, old);
            }
        }
        added.saturating_sub(freed)
    }

    /// Whether growing by `growth` bytes stays within `limits`: a write that does not grow
    /// the state always may, so a full store still takes deletes and overwrites in place.
    fn fits(&self, growth: u64, limits: &KvLimits) -> bool {
        growth == 0 || self.used_bytes.saturating_add(growth) <= limits.memory_bytes_max
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
        self.state.insert(
            Bytes::from_static(b"\0fault-injection"),
            Bytes::from(index.to_string()),
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
            map: self.state.map.clone(),
            reply_bytes_max: self.limits.reply_bytes_max,
            request_keys_max: self.limits.request_keys_max,
        }
    }

    /// The estimated bytes of keys and values, which `memory_bytes_max` bounds.
    pub fn used_bytes(&self) -> u64 {
        self.state.used_bytes
    }

    /// Keys stored.
    pub fn len(&self) -> usize {
        self.state.map.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.state.map.is_empty()
    }

    /// Sessions held.
    pub fn session_count(&self) -> usize {
        self.state.sessions.len()
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
    map: OrdMap<Bytes, Bytes>,
    reply_bytes_max: usize,
    request_keys_max: usize,
}

impl KvView {
    /// Answers a read command; a reply past `reply_bytes_max` or a request past
    /// `request_keys_max` is refused before any of it is built.
    pub fn read(&self, cmd: &KvCommand) -> KvResponse {
        let keys = match cmd {
            KvCommand::MGet { keys } | KvCommand::Exists { keys } => keys.len(),
            _ => 1,
        };
        if keys > self.request_keys_max {
            return KvResponse::Error(KvError::TooManyKeys {
                keys: keys as u64,
                max: self.request_keys_max as u64,
            });
        }
        read(&self.map, cmd, self.reply_bytes_max)
    }

    /// A value by key (the value shares the stored bytes).
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.map.get(key).cloned()
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

fn read(map: &OrdMap<Bytes, Bytes>, cmd: &KvCommand, reply_bytes_max: usize) -> KvResponse {
    match cmd {
        KvCommand::Get { key } => {
            let value = map.get(key).cloned();
            let bytes = value.as_ref().map_or(0, Bytes::len);
            if bytes > reply_bytes_max {
                return too_large(bytes, reply_bytes_max);
            }
            KvResponse::Value(value)
        }
        KvCommand::MGet { keys } => {
            // Sizes first (lookups only), so an oversized reply is never built.
            let bytes: usize = keys.iter().map(|k| map.get(k).map_or(0, Bytes::len)).sum();
            if bytes > reply_bytes_max {
                return too_large(bytes, reply_bytes_max);
            }
            KvResponse::Values(keys.iter().map(|k| map.get(k).cloned()).collect())
        }
        KvCommand::Exists { keys } => {
            KvResponse::Int(keys.iter().filter(|k| map.contains_key(*k)).count() as i64)
        }
        _ => KvResponse::Error(KvError::WrongKind),
    }
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

fn execute_one(state: &mut State, cmd: KvCommand, limits: &KvLimits) -> KvResponse {
    const OOM: KvResponse = KvResponse::Error(KvError::OutOfMemory);
    match cmd {
        KvCommand::Batch { .. } => KvResponse::Error(KvError::Malformed),
        KvCommand::Get { .. } | KvCommand::MGet { .. } | KvCommand::Exists { .. } => {
            read(&state.map, &cmd, LOGGED_READ_REPLY_BYTES_MAX)
        }
        KvCommand::Set { key, value } => {
            if !state.fits(state.growth([(&key, &value)]), limits) {
                return OOM;
            }
            state.changed(&key, KeyEvent::Set, Some(&value));
            state.insert(key, value);
            KvResponse::Ok
        }
        KvCommand::MSet { pairs } => {
            // All or nothing, as in Redis: the growth of the whole command is checked (a key
            // named twice is counted twice, which only errs towards refusing).
            if !state.fits(state.growth(pairs.iter().map(|(k, v)| (k, v))), limits) {
                return OOM;
            }
            for (k, v) in pairs {
                state.changed(&k, KeyEvent::Set, Some(&v));
                state.insert(k, v);
            }
            KvResponse::Ok
        }
        KvCommand::Del { keys } => {
            let mut removed = 0;
            for k in &keys {
                if state.remove(k) {
                    state.changed(k, KeyEvent::Del, None);
                    removed += 1;
                }
            }
            KvResponse::Int(removed)
        }
        KvCommand::IncrBy { key, by } => {
            let current = match state.map.get(&key) {
                None => 0,
                Some(v) => match std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                {
                    Some(n) => n,
                    None => return KvResponse::Error(KvError::NotAnInteger),
                },
            };
            let Some(next) = current.checked_add(by) else {
                return KvResponse::Error(KvError::Overflow);
            };
            let value = Bytes::from(next.to_string());
            if !state.fits(state.growth([(&key, &value)]), limits) {
                return OOM;
            }
            state.changed(&key, KeyEvent::IncrBy, Some(&value));
            state.insert(key, value);
            KvResponse::Int(next)
        }
        KvCommand::Cas { key, expected, new } => {
            if state.map.get(&key) != expected.as_ref() {
                return KvResponse::Cas {
                    swapped: false,
                    current: state.map.get(&key).cloned(),
                };
            }
            match &new {
                Some(v) => {
                    if !state.fits(state.growth([(&key, v)]), limits) {
                        return OOM;
                    }
                    state.changed(&key, KeyEvent::Set, Some(v));
                    state.insert(key, v.clone());
                }
                None => {
                    if state.remove(&key) {
                        state.changed(&key, KeyEvent::Del, None);
                    }
                }
            };
            KvResponse::Cas {
                swapped: true,
                current: new,
            }
        }
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
        state.used_bytes = state.map.iter().map(|(k, v)| entry_bytes(k, v)).sum();
        let index = state.applied_index;
        self.state = state;
        if let Some(sink) = &self.sink {
            sink.restored(index);
        }
        Ok(())
    }
}

/// Encodes a log command, as the node proposes it.
pub fn log_command(session: Option<Session>, op: Bytes) -> Bytes {
    postcard::to_allocvec(&LogCommand { session, op })
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
        let crash = b"RNK1\x07\0\0\0\0\0\0\0\x01\x80\x80\x80\x80\x08\0";
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
    fn snapshot_bytes_are_those_of_the_btreemap_format() {
        // The format before the persistent maps: files written by it must still restore, and
        // replicas of both versions must agree on digests.
        #[derive(Serialize)]
        struct BTreeState {
            applied_index: Index,
            map: BTreeMap<Bytes, Bytes>,
            sessions: BTreeMap<u64, ClientSession>,
        }
        let sm = filled(3_000);
        let old = BTreeState {
            applied_index: sm.state.applied_index,
            map: sm.state.map.clone().into_iter().collect(),
            sessions: sm.state.sessions.clone().into_iter().collect(),
        };
        let old_body = postcard::to_allocvec(&old).unwrap();
        let mut expected = SNAPSHOT_MAGIC.to_vec();
        expected.extend_from_slice(&(old_body.len() as u64).to_le_bytes());
        expected.extend_from_slice(&old_body);
        let mut body = Vec::new();
        sm.freeze().snapshot(&mut body).unwrap();
        assert_eq!(body, expected);
        let mut restored = sm.empty_like();
        restored.restore(&mut expected.as_slice()).unwrap();
        assert_eq!(restored.digest(), sm.digest());
        assert_eq!(restored.session_count(), 5);
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
