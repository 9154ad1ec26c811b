//! Helpers shared by the state machine's unit tests: byte strings, log commands, a change
//! recorder and a driver that applies commands under a clock the test moves.

// Re-exported: the tests of every file of `kv` import this module whole.
pub(super) use super::*;
pub(super) use crate::changes::{ChangeSink, KeyChange, KeyEvent};
pub(super) use bytes::Bytes;
pub(super) use raft_core::Index;
pub(super) use raft_proto::{
    ExpireCondition, Expiry, KvCommand, KvResponse, Session, SetCondition,
};
pub(super) use raft_snapshot::{SnapshotSource, StateMachine};
pub(super) use std::sync::Arc;

pub(super) fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub(super) fn cmd(session: Option<Session>, c: KvCommand) -> Bytes {
    log_command(session, c.encode())
}

pub(super) fn session(client_id: u64, seq: u64) -> Option<Session> {
    Some(Session {
        client_id,
        seq,
        acked_below: seq,
    })
}

#[derive(Debug, Default)]
pub(super) struct Recorder(
    pub(super) std::sync::Mutex<Vec<(Index, Vec<KeyChange>)>>,
    pub(super) std::sync::Mutex<Vec<Index>>,
);

impl ChangeSink for Recorder {
    fn applied(&self, index: Index, changes: &[KeyChange]) {
        self.0.lock().unwrap().push((index, changes.to_vec()));
    }
    fn restored(&self, index: Index) {
        self.1.lock().unwrap().push(index);
    }
}

/// Applies commands one entry each, stamped with a clock the test moves.
pub(super) struct Driver {
    pub(super) sm: KvStateMachine,
    pub(super) index: Index,
    pub(super) now_ms: u64,
}

impl Driver {
    pub(super) fn new() -> Driver {
        Driver::with(KvStateMachine::new(KvLimits::default()))
    }

    pub(super) fn with(sm: KvStateMachine) -> Driver {
        Driver {
            sm,
            index: 0,
            now_ms: 1_000_000,
        }
    }

    pub(super) fn w(&mut self, c: KvCommand) -> KvResponse {
        self.index += 1;
        self.sm
            .apply(self.index, &log_command_at(None, c.encode(), self.now_ms))
    }

    pub(super) fn r(&self, c: KvCommand) -> KvResponse {
        assert!(c.is_read(), "{c:?}");
        self.sm.view().read(&c)
    }

    pub(super) fn get(&self, k: &str) -> Option<Bytes> {
        match self.r(KvCommand::Get { key: b(k) }) {
            KvResponse::Value(v) => v,
            other => panic!("{other:?}"),
        }
    }

    pub(super) fn set(&mut self, k: &str, v: &str) {
        assert_eq!(
            self.w(KvCommand::Set {
                key: b(k),
                value: b(v)
            }),
            KvResponse::Ok
        );
    }

    pub(super) fn ttl(&self, k: &str) -> i64 {
        match self.r(KvCommand::Ttl {
            key: b(k),
            millis: true,
        }) {
            KvResponse::Int(n) => n,
            other => panic!("{other:?}"),
        }
    }
}

pub(super) fn set_with(
    k: &str,
    v: &str,
    condition: SetCondition,
    get: bool,
    expiry: Expiry,
) -> KvCommand {
    KvCommand::SetWith {
        key: b(k),
        value: b(v),
        condition,
        get,
        expiry,
    }
}

pub(super) fn int(n: i64) -> KvResponse {
    KvResponse::Int(n)
}

pub(super) fn val(v: &str) -> KvResponse {
    KvResponse::Value(Some(b(v)))
}

pub(super) const NIL: KvResponse = KvResponse::Value(None);
