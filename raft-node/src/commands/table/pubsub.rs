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
    .differs("Keyspace notifications (__keyspace@0__:<key>, __keyevent@0__:<event>) are always on. Messages, PUBLISHed ones too, come from this node's applied log."),
    spec(
        "publish",
        3,
        ReadWrite,
        Logged,
        "pubsub",
        "Posts a message to a channel: to every node's subscribers of it and of patterns matching it, once each.",
        "channel message",
    )
    .flags(&["pubsub", "loading", "stale", "fast"])
    .acl(&["pubsub", "fast"])
    .differs("Replicated through the log as an entry that changes no key, so every node delivers it from its applied log. Answers the subscriptions reached on the node that received it (Redis Cluster counts the whole cluster's). A message is bounded as a value is."),
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
    .differs("Keyspace notifications (__keyspace@0__:<key>, __keyevent@0__:<event>) are always on. Messages, PUBLISHed ones too, come from this node's applied log."),
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
