//! EXEC: a MULTI's commands applied in one entry, all of them or none, if every WATCHed
//! key still has the version (the log index that last changed it) the client read.

use super::apply::execute_one;
use super::state::State;
use super::KvLimits;
use bytes::Bytes;
use raft_core::Index;
use raft_proto::{KvCommand, KvError, KvResponse, BATCH_COMMANDS_MAX};

/// Applies `commands` if no key of `watches` changed version, else answers `Aborted`.
pub(super) fn exec(
    state: &mut State,
    watches: Vec<(Bytes, Index)>,
    commands: Vec<KvCommand>,
    limits: &KvLimits,
) -> KvResponse {
    let err = KvResponse::Error;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::test_support::*;

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
}
