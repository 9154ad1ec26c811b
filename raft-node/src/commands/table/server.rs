//! The server commands: COMMAND, CONFIG, DBSIZE, FLUSHALL, INFO, TIME, ...

use super::*;

/// The server group, in `COMMAND`'s order.
pub(super) const SERVER: &[CommandSpec] = &[
    spec(
        "command",
        -1,
        Read,
        Node,
        "server",
        "Returns information about every command.",
        "",
    )
    .flags(&["loading", "stale"])
    .acl(&["slow", "connection"])
    .subcommands(COMMAND_SUBCOMMANDS),
    spec(
        "config",
        -2,
        Read,
        Node,
        "server",
        "Server configuration (read-only).",
        "",
    )
    .acl(&["slow"])
    .subcommands(CONFIG_SUBCOMMANDS),
    spec(
        "info",
        -1,
        Read,
        Node,
        "server",
        "Returns this node's Raft state: role, term, leader, log indexes, peers.",
        "[section [section ...]]",
    )
    .flags(&["loading", "stale"])
    .acl(&["slow", "dangerous"])
    .differs("One section, `# Raft`, whatever sections are asked for."),
    spec(
        "time",
        1,
        Read,
        Node,
        "server",
        "Returns this node's clock: seconds and microseconds.",
        "",
    )
    .flags(&["loading", "stale", "fast"])
    .acl(&["fast"]),
];
