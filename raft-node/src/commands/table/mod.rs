//! The command table: every command the client port serves, one file per Redis group,
//! joined in [`COMMANDS`] at compile time.

use super::{spec, CommandSpec};
use crate::auth::Role;

mod connection;
mod pubsub;
mod raft;
mod server;
mod strings;
mod transactions;

use super::Consistency::{Linearizable, Local, Logged, Node};
use Role::{Admin, Read, ReadWrite};

pub(super) const READ_FLAGS: &[&str] = &["readonly", "fast"];
pub(super) const READ_ACL: &[&str] = &["read", "string", "fast"];
pub(super) const WRITE_FLAGS: &[&str] = &["write", "denyoom"];
pub(super) const WRITE_ACL: &[&str] = &["write", "string"];
pub(super) const CONNECTION_FLAGS: &[&str] = &["fast", "loading", "stale"];
pub(super) const CONNECTION_ACL: &[&str] = &["fast", "connection"];
pub(super) const RAFT_FLAGS: &[&str] = &["admin", "noscript"];
pub(super) const RAFT_ACL: &[&str] = &["admin", "slow", "dangerous"];

pub(super) const CLIENT_SUBCOMMANDS: &[CommandSpec] = &[
    spec(
        "client|getname",
        2,
        Read,
        Node,
        "connection",
        "Returns the connection's name.",
        "",
    )
    .flags(CONNECTION_FLAGS)
    .acl(CONNECTION_ACL),
    spec(
        "client|id",
        2,
        Read,
        Node,
        "connection",
        "Returns the connection's unique ID.",
        "",
    )
    .flags(CONNECTION_FLAGS)
    .acl(CONNECTION_ACL),
    spec(
        "client|info",
        2,
        Read,
        Node,
        "connection",
        "Returns information about the connection.",
        "",
    )
    .flags(CONNECTION_FLAGS)
    .acl(CONNECTION_ACL)
    .differs("Fields this node does not track (addr, fd, buffers, memory) are left out."),
    spec(
        "client|list",
        -2,
        Admin,
        Node,
        "connection",
        "Lists the RESP connections to this node.",
        "[TYPE NORMAL | PUBSUB] [ID client-id [client-id ...]]",
    )
    .flags(&["admin", "noscript", "loading", "stale"])
    .acl(&["admin", "slow", "dangerous", "connection"])
    .differs("Lists this node's RESP connections only, with the fields of CLIENT INFO."),
    spec(
        "client|no-evict",
        3,
        Read,
        Node,
        "connection",
        "Accepted for compatibility: this node never evicts clients for memory.",
        "ON | OFF",
    )
    .flags(CONNECTION_FLAGS)
    .acl(CONNECTION_ACL)
    .differs("No effect."),
    spec(
        "client|no-touch",
        3,
        Read,
        Node,
        "connection",
        "Accepted for compatibility: keys have no access time here.",
        "ON | OFF",
    )
    .flags(CONNECTION_FLAGS)
    .acl(CONNECTION_ACL)
    .differs("No effect."),
    spec(
        "client|setinfo",
        4,
        Read,
        Node,
        "connection",
        "Records the client library's name or version, shown by CLIENT INFO.",
        "LIB-NAME libname | LIB-VER libver",
    )
    .flags(CONNECTION_FLAGS)
    .acl(CONNECTION_ACL),
    spec(
        "client|setname",
        3,
        Read,
        Node,
        "connection",
        "Names the connection.",
        "connection-name",
    )
    .flags(CONNECTION_FLAGS)
    .acl(CONNECTION_ACL),
];

pub(super) const COMMAND_SUBCOMMANDS: &[CommandSpec] = &[
    spec(
        "command|count",
        2,
        Read,
        Node,
        "server",
        "Returns the number of commands.",
        "",
    )
    .flags(&["loading", "stale"])
    .acl(&["slow", "connection"]),
    spec(
        "command|docs",
        -2,
        Read,
        Node,
        "server",
        "Returns documentary information about commands (all when none is named).",
        "[command-name [command-name ...]]",
    )
    .flags(&["loading", "stale"])
    .acl(&["slow", "connection"]),
    spec(
        "command|info",
        -2,
        Read,
        Node,
        "server",
        "Returns information about commands (all when none is named).",
        "[command-name [command-name ...]]",
    )
    .flags(&["loading", "stale"])
    .acl(&["slow", "connection"]),
    spec(
        "command|list",
        -2,
        Read,
        Node,
        "server",
        "Lists command names.",
        "[FILTERBY MODULE module-name | ACLCAT category | PATTERN pattern]",
    )
    .flags(&["loading", "stale"])
    .acl(&["slow", "connection"]),
];

pub(super) const CONFIG_SUBCOMMANDS: &[CommandSpec] = &[spec(
    "config|get",
    -3,
    Read,
    Node,
    "server",
    "Returns the read-only parameters matching the patterns.",
    "parameter [parameter ...]",
)
.flags(&["admin", "noscript", "loading", "stale"])
.acl(&["admin", "slow", "dangerous"])
.differs(
    "Only describes the node (save, appendonly, appendfsync, databases); the node is \
     configured by its file and flags, so CONFIG SET, REWRITE and RESETSTAT are refused.",
)];

/// The groups in the order `COMMAND` lists them.
const GROUPS: &[&[CommandSpec]] = &[
    connection::CONNECTION,
    server::SERVER,
    strings::STRINGS,
    pubsub::PUBSUB,
    transactions::TRANSACTIONS,
    raft::RAFT,
];

const COMMANDS_LEN: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < GROUPS.len() {
        n += GROUPS[i].len();
        i += 1;
    }
    n
};

/// The groups joined into one array at compile time, so the table stays a `static` slice.
const fn joined() -> [CommandSpec; COMMANDS_LEN] {
    let mut out = [GROUPS[0][0]; COMMANDS_LEN];
    let mut n = 0;
    let mut i = 0;
    while i < GROUPS.len() {
        let mut j = 0;
        while j < GROUPS[i].len() {
            out[n] = GROUPS[i][j];
            n += 1;
            j += 1;
        }
        i += 1;
    }
    out
}

/// Every command the client port serves, grouped as Redis groups them.
pub static COMMANDS: &[CommandSpec] = &joined();

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::docs::parse_syntax;

    #[test]
    fn the_table_is_consistent() {
        let mut names = std::collections::HashSet::new();
        for c in COMMANDS {
            assert!(names.insert(c.name), "{} twice", c.name);
            assert_eq!(c.name, c.name.to_ascii_lowercase());
            assert!(c.arity != 0, "{}", c.name);
            if c.flags.contains(&"write") {
                assert!(c.role >= ReadWrite, "{} writes with role read", c.name);
                assert_eq!(c.consistency, Logged, "{}", c.name);
            }
            if c.consistency == Linearizable || c.consistency == Local {
                assert!(
                    c.flags.contains(&"readonly") || c.flags.contains(&"pubsub"),
                    "{} reads keys",
                    c.name
                );
            }
            assert_eq!(c.first_key == 0, c.last_key == 0, "{}", c.name);
            for s in c.subcommands {
                assert!(s.name.starts_with(&format!("{}|", c.name)), "{}", s.name);
                assert!(s.arity.abs() >= 2, "{}", s.name);
            }
            parse_syntax(c.syntax);
        }
    }
}
