//! Commands over the whole keyspace: KEYS (in key order, from the pattern's literal
//! prefix), SCAN (in the fixed hash order, so its cursor is the same on every node), and
//! FLUSHALL.

use imbl::{OrdMap, OrdSet};

use super::state::{Keyspace, State};
use super::SCAN_COUNT_MAX;
use crate::changes::KeyEvent;
use crate::glob::Pattern;
use bytes::Bytes;
use raft_proto::{KvError, KvResponse};

/// What each key in a KEYS or SCAN reply counts for beyond its bytes, against the reply
/// bound (its RESP framing and handle).
const KEY_REPLY_OVERHEAD_BYTES: usize = 16;

/// KEYS: every live key matching, in key order; refused once the reply would pass
/// `reply_bytes_max` rather than built.
pub(super) fn keys_matching(
    space: &Keyspace,
    pattern: &[u8],
    reply_bytes_max: usize,
) -> KvResponse {
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
pub(super) fn scan(
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

/// FLUSHALL (and FLUSHDB): deletes every key.
pub(super) fn flush_all(state: &mut State) -> KvResponse {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::test_support::*;

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
}
