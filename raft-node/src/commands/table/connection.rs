//! The connection commands: AUTH, HELLO, CLIENT, PING, RESET, SELECT, ...

use super::*;

/// The connection group, in `COMMAND`'s order.
pub(super) const CONNECTION: &[CommandSpec] = &[
    spec(
        "auth",
        -2,
        Read,
        Node,
        "connection",
        "Authenticates the connection.",
        "[username] password",
    )
    .flags(&[
        "noscript",
        "loading",
        "stale",
        "fast",
        "no_auth",
        "allow_busy",
    ])
    .acl(&["fast", "connection"]),
    spec(
        "client",
        -2,
        Read,
        Node,
        "connection",
        "Connection management.",
        "",
    )
    .acl(&["slow"])
    .subcommands(CLIENT_SUBCOMMANDS)
    .differs("Only the subcommands listed; others (KILL, PAUSE, TRACKING, ...) are refused."),
    spec(
        "echo",
        2,
        Read,
        Node,
        "connection",
        "Returns the given string.",
        "message",
    )
    .flags(&["loading", "stale", "fast"])
    .acl(&["fast", "connection"]),
    spec(
        "hello",
        -1,
        Read,
        Node,
        "connection",
        "Handshakes: selects the protocol (2 or 3), optionally authenticates and names the \
         connection; returns the server's properties.",
        "[protover [AUTH username password] [SETNAME clientname]]",
    )
    .flags(&[
        "noscript",
        "loading",
        "stale",
        "fast",
        "no_auth",
        "allow_busy",
    ])
    .acl(&["fast", "connection"]),
    spec(
        "ping",
        -1,
        Read,
        Node,
        "connection",
        "Returns PONG, or the message.",
        "[message]",
    )
    .flags(&["fast"])
    .acl(&["fast", "connection"]),
    spec(
        "quit",
        -1,
        Read,
        Node,
        "connection",
        "Closes the connection.",
        "",
    )
    .flags(&[
        "noscript",
        "loading",
        "stale",
        "fast",
        "no_auth",
        "allow_busy",
    ])
    .acl(&["fast", "connection"]),
    spec(
        "reset",
        1,
        Read,
        Node,
        "connection",
        "Resets the connection: out of subscribe mode, RESP2, no name, no transaction or \
         watched keys, and logged in as the default user, as in Redis (so logged out when \
         authentication is on).",
        "",
    )
    .flags(&[
        "noscript",
        "loading",
        "stale",
        "fast",
        "no_auth",
        "allow_busy",
    ])
    .acl(&["fast", "connection"]),
    spec(
        "select",
        2,
        Read,
        Node,
        "connection",
        "Selects the database: only 0 exists.",
        "index",
    )
    .flags(&["loading", "stale", "fast"])
    .acl(&["fast", "connection"])
    .differs("One database: any index but 0 is refused."),
];
