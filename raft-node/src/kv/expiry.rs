//! Expiry writes: GETEX, EXPIRE and its conditions, PERSIST, and the leader's sweep
//! entries. Every deadline is on the state's clock (see the `kv` module documentation).

use super::state::State;
use super::SWEEP_KEYS_MAX;
use crate::changes::KeyEvent;
use raft_proto::{ExpireCondition, Expiry, KvCommand, KvError, KvResponse};

/// Applies an expiry write.
pub(super) fn execute(state: &mut State, cmd: KvCommand) -> KvResponse {
    let err = KvResponse::Error;
    match cmd {
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
        // `apply::execute_one` sends only the commands above here.
        _ => err(KvError::WrongKind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::test_support::*;

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
}
