//! What each applied log entry did to which key: the record keyspace notifications and
//! watches are served from.
//!
//! The state machine notes a [`KeyChange`] for every key a command writes, deletes or
//! expires, and hands the changes of each entry to a [`ChangeSink`] once the entry is
//! applied. Changes come from applying the log, so every replica produces the same
//! changes at the same indexes, and a node replaying its log after a restart produces them
//! again from its snapshot's index on: that is what lets a watcher resume from an index on
//! any node.

use std::fmt;

use bytes::Bytes;
use raft_core::Index;

/// What happened to a key. The names are those of Redis' keyspace notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyEvent {
    /// Written by SET and its variants (SETNX, GETSET, MSET, a compare-and-swap).
    Set,
    /// Deleted by a client (DEL, UNLINK, GETDEL, a compare-and-swap to nothing).
    Del,
    /// Changed by INCR, INCRBY, DECR, DECRBY.
    IncrBy,
    /// Changed by INCRBYFLOAT.
    IncrByFloat,
    /// Changed by APPEND.
    Append,
    /// Changed by SETRANGE.
    SetRange,
    /// Given a time to live.
    Expire,
    /// Deleted because its time to live ran out.
    Expired,
    /// Its time to live removed.
    Persist,
    /// Renamed away from (the old name of a RENAME).
    RenameFrom,
    /// Renamed to (the new name of a RENAME).
    RenameTo,
    /// Not a key's change: a PUBLISH, whose `key` is the channel and `value` the message.
    /// Only subscribe mode delivers it; watches of keys skip it.
    Publish,
}

impl KeyEvent {
    /// The event's name in Redis' `__keyspace@0__`/`__keyevent@0__` channels.
    pub fn name(self) -> &'static str {
        match self {
            KeyEvent::Set => "set",
            KeyEvent::Del => "del",
            KeyEvent::IncrBy => "incrby",
            KeyEvent::IncrByFloat => "incrbyfloat",
            KeyEvent::Append => "append",
            KeyEvent::SetRange => "setrange",
            KeyEvent::Expire => "expire",
            KeyEvent::Expired => "expired",
            KeyEvent::Persist => "persist",
            KeyEvent::RenameFrom => "rename_from",
            KeyEvent::RenameTo => "rename_to",
            KeyEvent::Publish => "publish",
        }
    }
}

/// One key changed by one applied command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChange {
    /// The key.
    pub key: Bytes,
    /// What happened to it.
    pub event: KeyEvent,
    /// The key's value after the change; `None` when the key is gone or its value did not
    /// change (an expiry set or removed).
    pub value: Option<Bytes>,
}

/// Receives the key changes of every applied entry, in log order. Called on the apply path
/// of the node's runtime, so it must not block: buffer, never wait.
pub trait ChangeSink: Send + Sync + fmt::Debug {
    /// The entry at `index` changed these keys, in the order its commands changed them.
    /// Not called for entries that changed nothing.
    fn applied(&self, index: Index, changes: &[KeyChange]);

    /// The state was replaced by a snapshot taken at `index`: the changes up to and
    /// including it are no longer known one by one.
    fn restored(&self, index: Index);
}
