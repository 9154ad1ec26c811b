//! Client sessions for exactly-once writes: the responses of a client's unacknowledged
//! requests are kept, so a duplicate `(client_id, seq)` gets the cached response and
//! changes nothing; sessions expire by log index alone, the same on every replica.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::apply::execute;
use super::state::State;
use super::KvLimits;
use raft_core::Index;
use raft_proto::{KvError, KvResponse, Session};

/// One client's session: the responses of its requests not acknowledged yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ClientSession {
    pub(super) last_active_index: Index,
    pub(super) acked_below: u64,
    pub(super) responses: BTreeMap<u64, KvResponse>,
}

/// Drops the sessions idle for `session_expiry_entries` entries by `index`.
pub(super) fn expire_sessions(state: &mut State, index: Index, limits: &KvLimits) {
    while let Some(&(last, client)) = state.by_activity.get_min() {
        if last.saturating_add(limits.session_expiry_entries) >= index {
            break;
        }
        state.by_activity.remove_min();
        state.sessions.remove(&client);
    }
}

/// Applies `op` for `session`: the cached response of a duplicate, or `op` executed and
/// its response cached.
pub(super) fn apply_session(
    state: &mut State,
    index: Index,
    session: Session,
    op: &[u8],
    limits: &KvLimits,
) -> KvResponse {
    // Three descents of the session map per request of a known client (here, below, and
    // after executing), where `entry()` made it five.
    if !state.sessions.contains_key(&session.client_id) {
        while state.sessions.len() >= limits.sessions_max.max(1) {
            let Some((_, oldest)) = state.by_activity.remove_min() else {
                break;
            };
            state.sessions.remove(&oldest);
        }
        state
            .sessions
            .insert(session.client_id, ClientSession::default());
    }
    let entry = state
        .sessions
        .get_mut(&session.client_id)
        .expect("inserted above");
    state
        .by_activity
        .remove(&(entry.last_active_index, session.client_id));
    entry.last_active_index = index;
    state.by_activity.insert((index, session.client_id));
    if session.acked_below > entry.acked_below {
        entry.acked_below = session.acked_below;
        // In place rather than `split_off`: a client with one request outstanding acks one
        // response per request, and a new map per request was an allocation per write.
        while let Some(acked) = entry
            .responses
            .first_entry()
            .filter(|e| *e.key() < session.acked_below)
        {
            acked.remove();
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::test_support::*;

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
}
