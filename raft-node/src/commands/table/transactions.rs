//! MULTI, EXEC, DISCARD, WATCH, UNWATCH.

use super::*;

/// The transactions group, in `COMMAND`'s order.
pub(super) const TRANSACTIONS: &[CommandSpec] = &[
    spec(
        "discard",
        1,
        Read,
        Node,
        "transactions",
        "Discards the commands queued after MULTI.",
        "",
    )
    .flags(&["noscript", "loading", "stale", "fast", "allow_busy"])
    .acl(&["fast", "transaction"]),
    spec(
        "exec",
        1,
        Read,
        Logged,
        "transactions",
        "Runs the commands queued after MULTI as one log entry; nil if a watched key changed.",
        "",
    )
    .flags(&["noscript", "loading", "stale", "skip_slowlog"])
    .acl(&["slow", "transaction"])
    .differs(
        "Reads inside the transaction go through the log with it. Connection commands \
         (AUTH, HELLO, CLIENT, SELECT, ...), RAFT.*, and SUBSCRIBE, PSUBSCRIBE, \
         UNSUBSCRIBE, PUNSUBSCRIBE and WATCHLOG cannot be queued: they abort the \
         transaction (Redis queues the subscriptions, then sends an EXEC reply no client \
         can parse).",
    ),
    spec(
        "multi",
        1,
        Read,
        Node,
        "transactions",
        "Starts a transaction: later commands are queued until EXEC or DISCARD.",
        "",
    )
    .flags(&["noscript", "loading", "stale", "fast", "allow_busy"])
    .acl(&["fast", "transaction"]),
    spec(
        "unwatch",
        1,
        Read,
        Node,
        "transactions",
        "Forgets the watched keys.",
        "",
    )
    .flags(&["noscript", "loading", "stale", "fast", "allow_busy"])
    .acl(&["fast", "transaction"]),
    spec(
        "watch",
        -2,
        Read,
        Linearizable,
        "transactions",
        "Watches keys: the next EXEC runs nothing (answers nil) if any of them changed since.",
        "key [key ...]",
    )
    .flags(&[
        "noscript",
        "loading",
        "stale",
        "fast",
        "allow_busy",
        "readonly",
    ])
    .acl(&["fast", "transaction"])
    .keys(1, -1, 1)
    .differs(
        "A change is a change of the key's version (the log index that last wrote it), \
         checked by the state machine when the EXEC entry applies; a key that expires \
         counts as changed when its deletion is applied.",
    ),
];
