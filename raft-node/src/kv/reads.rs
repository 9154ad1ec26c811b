//! Reads: [`KvView`], a copy of the keys at one applied index served off the runtime task,
//! and the answer to every read command, bounded before the reply is built.

use super::keys::{keys_matching, scan};
use super::state::{Item, Keyspace};
use bytes::Bytes;
use raft_proto::{KvCommand, KvError, KvResponse};

/// The keys and values at one applied index, for reads served off the runtime task.
#[derive(Clone, Debug)]
pub struct KvView {
    pub(super) space: Keyspace,
    pub(super) reply_bytes_max: usize,
    pub(super) request_keys_max: usize,
}

impl KvView {
    /// Answers a read command; a reply past `reply_bytes_max` or a request past
    /// `request_keys_max` is refused before any of it is built.
    pub fn read(&self, cmd: &KvCommand) -> KvResponse {
        read(
            &self.space,
            cmd,
            self.reply_bytes_max,
            self.request_keys_max,
        )
    }

    /// A live value by key (the value shares the stored bytes); `None` if absent or
    /// expired by the state's clock.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.space.value(key).cloned()
    }

    /// The state's clock at this view (Unix ms).
    pub fn clock_ms(&self) -> u64 {
        self.space.clock_ms
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

/// Redis' TTL rounding: milliseconds, or seconds rounded to nearest.
pub(super) fn in_unit(ms: u64, millis: bool) -> i64 {
    let n = if millis {
        ms
    } else {
        ms.saturating_add(500) / 1000
    };
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn read(
    space: &Keyspace,
    cmd: &KvCommand,
    reply_bytes_max: usize,
    keys_max: usize,
) -> KvResponse {
    let keys = cmd.key_count();
    if keys > keys_max {
        return KvResponse::Error(KvError::TooManyKeys {
            keys: keys as u64,
            max: keys_max as u64,
        });
    }
    match cmd {
        KvCommand::Get { key } => {
            let value = space.value(key).cloned();
            let bytes = value.as_ref().map_or(0, Bytes::len);
            if bytes > reply_bytes_max {
                return too_large(bytes, reply_bytes_max);
            }
            KvResponse::Value(value)
        }
        KvCommand::MGet { keys } => {
            // Sizes first (lookups only), so an oversized reply is never built.
            let bytes: usize = keys
                .iter()
                .map(|k| space.value(k).map_or(0, Bytes::len))
                .sum();
            if bytes > reply_bytes_max {
                return too_large(bytes, reply_bytes_max);
            }
            KvResponse::Values(keys.iter().map(|k| space.value(k).cloned()).collect())
        }
        KvCommand::Exists { keys } => {
            KvResponse::Int(keys.iter().filter(|k| space.live(k).is_some()).count() as i64)
        }
        KvCommand::Strlen { key } => {
            KvResponse::Int(space.value(key).map_or(0, |v| v.len() as i64))
        }
        KvCommand::GetRange { key, start, end } => {
            let value = space.value(key).cloned().unwrap_or_default();
            let range = get_range(value.len(), *start, *end);
            if range.len() > reply_bytes_max {
                return too_large(range.len(), reply_bytes_max);
            }
            KvResponse::Value(Some(value.slice(range)))
        }
        KvCommand::Ttl { key, millis } => KvResponse::Int(match space.live(key) {
            None => -2,
            Some(Item {
                expires_at_ms: None,
                ..
            }) => -1,
            Some(Item {
                expires_at_ms: Some(at),
                ..
            }) => in_unit(at - space.clock_ms, *millis),
        }),
        KvCommand::ExpireTime { key, millis } => KvResponse::Int(match space.live(key) {
            None => -2,
            Some(Item {
                expires_at_ms: None,
                ..
            }) => -1,
            Some(Item {
                expires_at_ms: Some(at),
                ..
            }) => in_unit(*at, *millis),
        }),
        KvCommand::Type { key } => KvResponse::Text(
            if space.live(key).is_some() {
                "string"
            } else {
                "none"
            }
            .into(),
        ),
        KvCommand::Keys { pattern } => keys_matching(space, pattern, reply_bytes_max),
        KvCommand::Scan {
            cursor,
            pattern,
            count,
            type_name,
        } => scan(
            space,
            *cursor,
            pattern.as_deref(),
            *count,
            type_name.as_deref(),
            reply_bytes_max,
        ),
        KvCommand::DbSize => KvResponse::Int(space.live_len() as i64),
        KvCommand::Versions { keys } => KvResponse::Versions(
            keys.iter()
                .map(|k| space.live(k).map_or(0, |i| i.version))
                .collect(),
        ),
        _ => KvResponse::Error(KvError::WrongKind),
    }
}

/// GETRANGE's byte range of a value of `len` bytes, as Redis computes it.
pub(super) fn get_range(len: usize, start: i64, end: i64) -> std::ops::Range<usize> {
    let len_i = len as i64;
    if start < 0 && end < 0 && start > end {
        return 0..0;
    }
    let mut start = if start < 0 { len_i + start } else { start };
    let mut end = if end < 0 { len_i + end } else { end };
    start = start.max(0);
    end = end.max(0);
    if end >= len_i {
        end = len_i - 1;
    }
    if len == 0 || start > end {
        return 0..0;
    }
    start as usize..end as usize + 1
}

pub(super) fn too_large(bytes: usize, max: usize) -> KvResponse {
    KvResponse::Error(KvError::ReplyTooLarge {
        bytes: bytes as u64,
        max: max as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::test_support::*;

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
