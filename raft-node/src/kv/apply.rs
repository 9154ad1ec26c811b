//! Applying a write: decoding the op (one command or a batch), reaping the keys it
//! touches whose deadline passed, and handing it to its family's module.

use super::reads::read;
use super::state::State;
use super::{expiry, keys, strings, transactions, KvLimits, LOGGED_READ_REPLY_BYTES_MAX};
use crate::changes::KeyEvent;
use bytes::Bytes;
use raft_proto::{KvCommand, KvError, KvResponse, BATCH_COMMANDS_MAX, STRING_BYTES_MAX};

pub(super) fn execute(state: &mut State, op: &[u8], limits: &KvLimits) -> KvResponse {
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

/// Keys a write touches, reaped first if their deadline passed. Not SET's: it is the hot
/// path, and [`State::set`] reaps its key in the same descent of the map as the write.
fn write_keys(cmd: &KvCommand) -> Vec<&Bytes> {
    match cmd {
        KvCommand::SetWith { key, .. }
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

pub(super) fn execute_one(state: &mut State, cmd: KvCommand, limits: &KvLimits) -> KvResponse {
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
        KvCommand::Set { .. }
        | KvCommand::SetWith { .. }
        | KvCommand::SetNx { .. }
        | KvCommand::MSet { .. }
        | KvCommand::MSetNx { .. }
        | KvCommand::Del { .. }
        | KvCommand::GetDel { .. }
        | KvCommand::Append { .. }
        | KvCommand::SetRange { .. }
        | KvCommand::IncrBy { .. }
        | KvCommand::IncrByFloat { .. }
        | KvCommand::Cas { .. }
        | KvCommand::Rename { .. } => strings::execute(state, cmd, limits),
        KvCommand::GetEx { .. }
        | KvCommand::Expire { .. }
        | KvCommand::Persist { .. }
        | KvCommand::Sweep { .. } => expiry::execute(state, cmd),
        KvCommand::FlushAll => keys::flush_all(state),
        KvCommand::Publish { channel, message } => {
            // The bound a value has: a message is held by every node's history as one.
            if message.len() as u64 > STRING_BYTES_MAX {
                return KvResponse::Error(KvError::StringTooLong);
            }
            state.changed(&channel, KeyEvent::Publish, Some(&message));
            KvResponse::Int(0)
        }
        KvCommand::Exec { watches, commands } => {
            transactions::exec(state, watches, commands, limits)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::test_support::*;

    /// PUBLISH changes no key (the digest is that of an entry without a command) but
    /// reaches the sink as a `Publish` change.
    #[test]
    fn a_publish_changes_no_key_and_reaches_the_sink() {
        let rec = Arc::new(Recorder::default());
        let mut sm = KvStateMachine::new(KvLimits::default()).with_change_sink(rec.clone());
        sm.apply(
            1,
            &cmd(
                None,
                KvCommand::Set {
                    key: b("a"),
                    value: b("1"),
                },
            ),
        );
        let before = sm.digest();
        let publish = KvCommand::Publish {
            channel: b("a"),
            message: b("hi"),
        };
        assert_eq!(sm.apply(2, &cmd(None, publish)), KvResponse::Int(0));
        assert_eq!(sm.len(), 1);
        assert_eq!(
            sm.query(&KvCommand::Get { key: b("a") }.encode()),
            KvResponse::Value(Some(b("1")))
        );
        let applied = rec.0.lock().unwrap().clone();
        assert_eq!(applied[1].0, 2);
        assert_eq!(applied[1].1.len(), 1);
        assert_eq!(applied[1].1[0].event, KeyEvent::Publish);
        assert_eq!(applied[1].1[0].value, Some(b("hi")));
        // The digest covers the applied index, which moved; the keys did not.
        let mut other = KvStateMachine::new(KvLimits::default());
        other.apply(
            1,
            &cmd(
                None,
                KvCommand::Set {
                    key: b("a"),
                    value: b("1"),
                },
            ),
        );
        other.skip_to(2);
        assert_eq!(sm.digest(), other.digest());
        assert_ne!(sm.digest(), before);
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
}
