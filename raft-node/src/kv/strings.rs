//! String writes: SET and its options, SETNX, MSET(NX), DEL, GETDEL, APPEND, SETRANGE,
//! INCRBY(FLOAT), CAS and RENAME(NX), as Redis defines them, each recording its changes.

use super::state::{entry_bytes, State};
use super::KvLimits;
use crate::changes::KeyEvent;
use bytes::Bytes;
use raft_proto::{Expiry, KvCommand, KvError, KvResponse, SetCondition, STRING_BYTES_MAX};

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

/// Applies a string write (a live key's expired twin was reaped by the caller, but for
/// SET's, which [`State::set`] reaps itself).
pub(super) fn execute(state: &mut State, cmd: KvCommand, limits: &KvLimits) -> KvResponse {
    const OOM: KvResponse = KvResponse::Error(KvError::OutOfMemory);
    let err = KvResponse::Error;
    match cmd {
        KvCommand::Set { key, value } => {
            if state.set(key, value, limits) {
                KvResponse::Ok
            } else {
                OOM
            }
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
        // `apply::execute_one` sends only the commands above here.
        _ => err(KvError::WrongKind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::test_support::*;

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
}
