//! The replicated state's layout: the keys with their versions and deadlines (the
//! [`Keyspace`]), its derived indexes, the session table, and the bookkeeping every write
//! goes through (storing, removing, reaping expired keys, the memory estimate).

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use super::sessions::ClientSession;
use super::{KvLimits, KEY_OVERHEAD_BYTES};
use crate::changes::{KeyChange, KeyEvent};
use bytes::Bytes;
use raft_core::Index;
use raft_proto::{Expiry, KvError};

/// The seed of the SCAN order's hash. Fixed forever: cursors handed out depend on it.
const SCAN_HASH_SEED: u64 = 0x5ca7_7e2d_0c0f_fee5;

/// One stored key's value and metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Item {
    pub(super) value: Bytes,
    /// The log index that last changed the key: WATCH's version.
    pub(super) version: Index,
    /// The state clock's time (Unix ms) at which the key expires.
    pub(super) expires_at_ms: Option<u64>,
}

/// The keys, with the clock that decides which are alive and the derived indexes reads
/// need. Cloning is O(1) (persistent maps): a [`KvView`] is one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Keyspace {
    /// The largest leader stamp applied (Unix ms).
    pub(super) clock_ms: u64,
    #[serde(deserialize_with = "ord_map_from_entries")]
    pub(super) map: OrdMap<Bytes, Item>,
    /// `(deadline, key)` of every key with one. Derived from `map`.
    #[serde(skip)]
    pub(super) deadlines: OrdSet<(u64, Bytes)>,
    /// `(scan_hash(key), key)` of every key: SCAN's order. Derived from `map`.
    #[serde(skip)]
    pub(super) by_hash: OrdSet<(u64, Bytes)>,
}

/// SCAN's order: a fixed hash, the same on every node and in every version.
pub(super) fn scan_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, SCAN_HASH_SEED)
}

impl Keyspace {
    pub(super) fn alive(&self, item: &Item) -> bool {
        item.expires_at_ms.is_none_or(|at| at > self.clock_ms)
    }

    /// The key's item if it exists and has not expired by the clock.
    pub(super) fn live(&self, key: &[u8]) -> Option<&Item> {
        self.map.get(key).filter(|i| self.alive(i))
    }

    pub(super) fn value(&self, key: &[u8]) -> Option<&Bytes> {
        self.live(key).map(|i| &i.value)
    }

    /// Keys stored and not expired.
    pub(super) fn live_len(&self) -> usize {
        let due = self
            .deadlines
            .range(..(self.clock_ms.saturating_add(1), Bytes::new()))
            .count();
        self.map.len() - due
    }

    /// Rebuilds the derived indexes from `map` (after a restore).
    pub(super) fn reindex(&mut self) {
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
pub(super) struct State {
    pub(super) applied_index: Index,
    pub(super) space: Keyspace,
    #[serde(deserialize_with = "ord_map_from_entries")]
    pub(super) sessions: OrdMap<u64, ClientSession>,
    /// `(last_active_index, client_id)` of every session: the expiry order. Derived from
    /// `sessions`, so it is rebuilt on restore rather than stored.
    #[serde(skip)]
    pub(super) by_activity: OrdSet<(Index, u64)>,
    /// The estimated bytes of `map` (see [`KEY_OVERHEAD_BYTES`]). Derived, like
    /// `by_activity`, so every replica computes the same figure from the same entries.
    #[serde(skip)]
    pub(super) used_bytes: u64,
    /// The keys the entry being applied changed so far; handed to the [`ChangeSink`] and
    /// emptied once the entry is applied, so it is empty between entries.
    #[serde(skip)]
    pub(super) changes: Vec<KeyChange>,
}

/// The estimated bytes one entry costs.
pub(super) fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    key.len() as u64 + value.len() as u64 + KEY_OVERHEAD_BYTES
}

/// Whether a state of `used_bytes` may grow by `growth` bytes (see [`State::fits`]).
fn fits_in(used_bytes: u64, growth: u64, limits: &KvLimits) -> bool {
    growth == 0 || used_bytes.saturating_add(growth) <= limits.memory_bytes_max
}

impl State {
    /// Stores `value` under `key` with deadline `expires_at_ms`, at this entry's version,
    /// keeping `used_bytes` and the indexes in step.
    pub(super) fn put(&mut self, key: Bytes, value: Bytes, expires_at_ms: Option<u64>) {
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

    /// SET's write, the hot path: reaps `key` if its deadline passed (an `expired` change),
    /// then stores `value` with no deadline if the growth fits `limits` (a `set` change),
    /// as `reap`, `fits_pair`, `changed` and `put` in that order do, but finding a key that
    /// exists with one descent of the map instead of three. Whether it was stored.
    pub(super) fn set(&mut self, key: Bytes, value: Bytes, limits: &KvLimits) -> bool {
        let clock_ms = self.space.clock_ms;
        let added = entry_bytes(&key, &value);
        // `get_mut` copies the path if a frozen copy shares it, as the `put` would.
        match self.space.map.get_mut(&key) {
            Some(item) if item.expires_at_ms.is_none_or(|at| at > clock_ms) => {
                let freed = entry_bytes(&key, &item.value);
                let growth = added.saturating_sub(freed);
                if !fits_in(self.used_bytes, growth, limits) {
                    return false;
                }
                self.changes.push(KeyChange {
                    key: key.clone(),
                    event: KeyEvent::Set,
                    value: Some(value.clone()),
                });
                let old_deadline = item.expires_at_ms.take();
                item.value = value;
                item.version = self.applied_index;
                self.used_bytes = self.used_bytes - freed + added;
                if let Some(at) = old_deadline {
                    self.space.deadlines.remove(&(at, key));
                }
                true
            }
            expired_or_absent => {
                if expired_or_absent.is_some() {
                    self.reap(&key);
                }
                if !self.fits(added, limits) {
                    return false;
                }
                self.changed(&key, KeyEvent::Set, Some(&value));
                self.put(key, value, None);
                true
            }
        }
    }

    /// Removes `key` (expired or not), keeping the accounting in step.
    pub(super) fn remove(&mut self, key: &Bytes) -> Option<Item> {
        let old = self.space.map.remove(key)?;
        self.used_bytes -= entry_bytes(key, &old.value);
        if let Some(at) = old.expires_at_ms {
            self.space.deadlines.remove(&(at, key.clone()));
        }
        self.space.by_hash.remove(&(scan_hash(key), key.clone()));
        Some(old)
    }

    /// Removes `key` if it is alive; its value.
    pub(super) fn remove_live(&mut self, key: &Bytes) -> Option<Bytes> {
        self.space.live(key)?;
        self.remove(key).map(|i| i.value)
    }

    /// Changes the deadline of a live `key` (a new version).
    pub(super) fn set_deadline(&mut self, key: &Bytes, expires_at_ms: Option<u64>) {
        let Some(item) = self.space.map.get(key) else {
            return;
        };
        let value = item.value.clone();
        self.put(key.clone(), value, expires_at_ms);
    }

    /// Deletes `key` if its deadline passed (an `expired` change), so the command touching
    /// it sees it absent, as Redis' lazy expiry does.
    pub(super) fn reap(&mut self, key: &Bytes) {
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
    pub(super) fn changed(&mut self, key: &Bytes, event: KeyEvent, value: Option<&Bytes>) {
        self.changes.push(KeyChange {
            key: key.clone(),
            event,
            value: value.cloned(),
        });
    }

    /// Bytes the state would grow by if every `(key, value)` were stored (0 if it shrinks).
    pub(super) fn growth<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a Bytes, &'a Bytes)>,
    ) -> u64 {
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
    pub(super) fn fits(&self, growth: u64, limits: &KvLimits) -> bool {
        fits_in(self.used_bytes, growth, limits)
    }

    /// Whether storing `value` under `key` fits.
    pub(super) fn fits_pair(&self, key: &Bytes, value: &Bytes, limits: &KvLimits) -> bool {
        self.fits(self.growth([(key, value)]), limits)
    }

    /// The deadline `expiry` names for a key whose current one is `current`; an overflow
    /// is the command's error.
    pub(super) fn deadline(
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
    pub(super) fn past(&self, deadline: Option<u64>) -> bool {
        deadline.is_some_and(|at| at <= self.space.clock_ms)
    }
}

/// Decodes an `OrdMap` entry by entry. imbl's own `Deserialize` first reserves a `Vec` of
/// the length the input claims: a 19-byte snapshot body claiming 2^33 keys asked for 128
/// GiB and aborted the node restoring it. Growing with the entries actually read bounds
/// the memory by the body's length.
pub(super) fn ord_map_from_entries<'de, D, K, V>(d: D) -> Result<OrdMap<K, V>, D::Error>
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::test_support::*;

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

    /// SET's one-descent path ([`State::set`]) leaves the state, the changes and the
    /// answers exactly as the general path (reap, fit, put) does: the same as a SET with
    /// the PERSIST-like options, which takes the general path, on a twin machine.
    #[test]
    fn set_fast_path_matches_the_general_path() {
        let limits = KvLimits {
            memory_bytes_max: 4 * (KEY_OVERHEAD_BYTES + 12),
            ..KvLimits::default()
        };
        let fast_rec = Arc::new(Recorder::default());
        let slow_rec = Arc::new(Recorder::default());
        let mut fast = Driver::with(KvStateMachine::new(limits).with_change_sink(fast_rec.clone()));
        let mut slow = Driver::with(KvStateMachine::new(limits).with_change_sink(slow_rec.clone()));
        let t0 = fast.now_ms;
        let expire = |k: &str, ms| KvCommand::Expire {
            key: b(k),
            when: Expiry::In(ms),
            condition: raft_proto::ExpireCondition::Always,
        };
        let long = "x".repeat(40);
        // (now_ms, key, value), after the setup writes below.
        let steps: Vec<(u64, &str, &str)> = vec![
            (t0, "new", "1"),           // absent
            (t0, "plain", "2"),         // live, no deadline
            (t0, "ttl", "3"),           // live with a deadline: cleared
            (t0 + 100, "gone", "4"),    // expired: reaped first
            (t0 + 100, "big", &long),   // absent and too big: OOM
            (t0 + 200, "dead", &long),  // expired, then too big: reaped, OOM
            (t0 + 200, "plain", &long), // live and growing past the limit: OOM
            (t0 + 200, "plain", "5"),   // live and shrinking
        ];
        for d in [&mut fast, &mut slow] {
            d.set("plain", "a");
            d.set("ttl", "b");
            d.w(expire("ttl", 10_000));
            d.set("gone", "c");
            d.w(expire("gone", 50));
            d.set("dead", "d");
            d.w(expire("dead", 150));
        }
        for (now_ms, k, v) in steps {
            fast.now_ms = now_ms;
            slow.now_ms = now_ms;
            let a = fast.w(KvCommand::Set {
                key: b(k),
                value: b(v),
            });
            let z = slow.w(set_with(k, v, SetCondition::Always, false, Expiry::Persist));
            assert_eq!(a, z, "SET {k} at {now_ms}");
            assert_eq!(fast.sm.used_bytes(), slow.sm.used_bytes(), "{k}");
            assert_eq!(
                fast.sm.next_deadline_ms(),
                slow.sm.next_deadline_ms(),
                "{k}"
            );
            assert_eq!(fast.sm.digest(), slow.sm.digest(), "{k}");
        }
        assert_eq!(fast.get("plain"), Some(b("5")));
        assert_eq!(fast.get("dead"), None);
        assert_eq!(fast.ttl("ttl"), -1);
        assert_eq!(*fast_rec.0.lock().unwrap(), *slow_rec.0.lock().unwrap());
        let oom = KvResponse::Error(KvError::OutOfMemory);
        assert_eq!(
            fast.w(KvCommand::Set {
                key: b("more"),
                value: b(&long),
            }),
            oom
        );
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
}
