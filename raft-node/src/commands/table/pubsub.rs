//! The publish/subscribe commands (keyspace notifications).

use super::*;

/// The pubsub group, in `COMMAND`'s order.
pub(super) const PUBSUB: &[CommandSpec] = &[
    spec(
        "psubscribe",
        -2,
        Read,
        Local,
        "pubsub",
        "Subscribes to channels matching the patterns (keyspace notifications).",
        "pattern [pattern ...]",
    )
    .flags(&["pubsub", "noscript", "loading", "stale"])
    .acl(&["pubsub", "slow"])
    .differs("Only the notification channels exist: __keyspace@0__:<key> and __keyevent@0__:<event>, always on (no PUBLISH). Served from this node's applied state."),
    spec(
        "punsubscribe",
        -1,
        Read,
        Local,
        "pubsub",
        "Unsubscribes from patterns (all when none is named).",
        "[pattern [pattern ...]]",
    )
    .flags(&["pubsub", "noscript", "loading", "stale"])
    .acl(&["pubsub", "slow"]),
    spec(
        "subscribe",
        -2,
        Read,
        Local,
        "pubsub",
        "Subscribes to channels (keyspace notifications).",
        "channel [channel ...]",
    )
    .flags(&["pubsub", "noscript", "loading", "stale"])
    .acl(&["pubsub", "slow"])
    .differs("Only the notification channels exist: __keyspace@0__:<key> and __keyevent@0__:<event>, always on (no PUBLISH). Served from this node's applied state."),
    spec(
        "unsubscribe",
        -1,
        Read,
        Local,
        "pubsub",
        "Unsubscribes from channels (all when none is named).",
        "[channel [channel ...]]",
    )
    .flags(&["pubsub", "noscript", "loading", "stale"])
    .acl(&["pubsub", "slow"]),
    spec(
        "watchlog",
        -2,
        Read,
        Local,
        "pubsub",
        "Streams every change under the key prefix, one message per log index, from an index on: each change once, in order, with no gap, or a 'compacted, resync' error (docs/WATCH.md).",
        "prefix [FROM index]",
    )
    .flags(&["pubsub", "noscript", "loading", "stale"])
    .acl(&["pubsub", "slow"])
    .differs("Not a Redis command."),
];
