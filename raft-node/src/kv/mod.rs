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
//!
//! # Files
//! `state` (the layout and the bookkeeping of every write), `sessions`, `apply` (decoding
//! and dispatch), one file per family of writes (`strings`, `expiry`, `transactions`,
//! `keys` with KEYS/SCAN), `reads` ([`KvView`]), `snapshot` (format, digest, restore).

use std::io::Read;
use std::sync::Arc;

use crate::changes::ChangeSink;
use bytes::Bytes;
use raft_core::Index;
use raft_proto::{KvCommand, KvError, KvResponse, LogCommand, Session};
use raft_snapshot::{RestoreError, StateMachine};

mod apply;
mod expiry;
mod keys;
mod reads;
mod sessions;
mod snapshot;
mod state;
mod strings;
#[cfg(test)]
mod test_support;
mod transactions;

pub use reads::KvView;
use state::State;

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
        sessions::expire_sessions(state, index, &limits);
        let Ok(cmd) = postcard::from_bytes::<LogCommand>(command) else {
            return KvResponse::Error(KvError::Malformed);
        };
        // The clock is the largest stamp seen: a leader whose clock is behind an earlier
        // one's does not turn time back (see the module documentation).
        state.space.clock_ms = state.space.clock_ms.max(cmd.stamp_ms);
        let response = match cmd.session {
            Some(session) if session.client_id != 0 => {
                sessions::apply_session(state, index, session, &cmd.op, &limits)
            }
            _ => apply::execute(state, &cmd.op, &limits),
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
        let state = snapshot::read_state(reader)?;
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
    use crate::kv::test_support::*;

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
}
