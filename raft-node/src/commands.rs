//! The RESP command table: every command the client port serves, with what `COMMAND`
//! reports about it (arity, flags, key positions, ACL categories), the role the session's
//! gate requires, its consistency, and its syntax, from which `COMMAND DOCS` and the
//! reference `docs/COMMANDS.md` are both generated (a test keeps the file equal to the
//! table). A command missing here is unknown to the client port, so the table cannot fall
//! behind the code.
//!
//! Adding a command: add its row (alphabetical within its group), parse it in
//! `resp::to_command` (data commands) or `session.rs` (connection commands), and run
//! `UPDATE_COMMANDS_MD=1 cargo test -p raft-node commands` to regenerate the reference.

use bytes::Bytes;

use crate::auth::Role;
use crate::resp::Value;

/// How a command's answer relates to the replicated state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// A read answered once a quorum confirmed this node's leadership after the read
    /// arrived and the state machine applied up to that point (ReadIndex): it sees every
    /// write acknowledged before it was sent. Followers ask the leader for the index.
    Linearizable,
    /// A read answered from this node's applied state at once: possibly stale, never
    /// ahead of the log.
    Local,
    /// A write: appended to the Raft log and answered after it is committed and applied.
    Logged,
    /// About the connection or this node alone (no key is read or written).
    Node,
}

impl Consistency {
    fn describe(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable read",
            Consistency::Local => "local read (may be stale)",
            Consistency::Logged => "write through the Raft log",
            Consistency::Node => "this connection or node only",
        }
    }
}

/// One command (or subcommand) as the client port serves it.
#[derive(Clone, Copy, Debug)]
pub struct CommandSpec {
    /// Lower case, as `COMMAND` reports it (`client|id` for a subcommand).
    pub name: &'static str,
    /// Redis' arity: the argument count including the name; negative means "at least".
    pub arity: i64,
    /// Redis' command flags (`write`, `readonly`, `fast`, ...).
    pub flags: &'static [&'static str],
    /// Position of the first key argument (0: no keys).
    pub first_key: i64,
    /// Position of the last key argument (-1: the last argument).
    pub last_key: i64,
    /// Steps between key arguments.
    pub key_step: i64,
    /// ACL categories, without the `@`.
    pub acl: &'static [&'static str],
    /// The role the session's gate requires (see `docs/SECURITY.md`).
    pub role: Role,
    /// How the answer relates to the replicated state.
    pub consistency: Consistency,
    /// Redis' command group (`string`, `generic`, `connection`, ...).
    pub group: &'static str,
    /// One line.
    pub summary: &'static str,
    /// The arguments after the name, in Redis' documentation syntax: `[optional]`,
    /// `a | b`, `arg [arg ...]`, upper-case tokens, lower-case values.
    pub syntax: &'static str,
    /// What differs from Redis ("" if nothing does).
    pub differs: &'static str,
    /// Subcommands (`CLIENT ID`, `COMMAND COUNT`, ...).
    pub subcommands: &'static [CommandSpec],
}

const fn spec(
    name: &'static str,
    arity: i64,
    role: Role,
    consistency: Consistency,
    group: &'static str,
    summary: &'static str,
    syntax: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags: &[],
        first_key: 0,
        last_key: 0,
        key_step: 0,
        acl: &[],
        role,
        consistency,
        group,
        summary,
        syntax,
        differs: "",
        subcommands: &[],
    }
}

impl CommandSpec {
    const fn flags(mut self, flags: &'static [&'static str]) -> Self {
        self.flags = flags;
        self
    }
    const fn acl(mut self, acl: &'static [&'static str]) -> Self {
        self.acl = acl;
        self
    }
    const fn keys(mut self, first: i64, last: i64, step: i64) -> Self {
        self.first_key = first;
        self.last_key = last;
        self.key_step = step;
        self
    }
    const fn differs(mut self, text: &'static str) -> Self {
        self.differs = text;
        self
    }
    const fn subcommands(mut self, subs: &'static [CommandSpec]) -> Self {
        self.subcommands = subs;
        self
    }

    /// The name in upper case, as users type it (`CLIENT ID` for a subcommand).
    pub fn display_name(&self) -> String {
        self.name.replace('|', " ").to_ascii_uppercase()
    }

    /// Whether `argc` arguments (the name included) fit the arity.
    pub fn arity_fits(&self, argc: usize) -> bool {
        let argc = argc as i64;
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }

    /// The subcommand named `name`, in any case.
    pub fn subcommand(&self, name: &[u8]) -> Option<&'static CommandSpec> {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let prefix_len = self.name.len() + 1;
        self.subcommands
            .iter()
            .find(|s| s.name.get(prefix_len..) == Some(name.as_str()))
    }

    /// `COMMAND INFO`'s entry: name, arity, flags, first/last key, step, ACL categories,
    /// tips, key specifications, subcommands.
    pub fn info(&self) -> Value {
        let status = |s: &str| Value::Simple(s.to_string());
        Value::Array(vec![
            bulk(self.name),
            Value::Int(self.arity),
            Value::Set(self.flags.iter().map(|f| status(f)).collect()),
            Value::Int(self.first_key),
            Value::Int(self.last_key),
            Value::Int(self.key_step),
            Value::Set(self.acl.iter().map(|c| status(&format!("@{c}"))).collect()),
            Value::Array(Vec::new()),
            Value::Array(self.key_specs()),
            Value::Array(self.subcommands.iter().map(CommandSpec::info).collect()),
        ])
    }

    /// Redis 7's key specifications, from the key positions.
    fn key_specs(&self) -> Vec<Value> {
        if self.first_key == 0 {
            return Vec::new();
        }
        let writes = self.flags.contains(&"write");
        let flags = if writes {
            ["RW", "UPDATE"]
        } else {
            ["RO", "ACCESS"]
        };
        let last = if self.last_key < 0 {
            self.last_key
        } else {
            self.last_key - self.first_key
        };
        vec![Value::Map(vec![
            (
                bulk("flags"),
                Value::Set(flags.iter().map(|f| Value::Simple(f.to_string())).collect()),
            ),
            (
                bulk("begin_search"),
                Value::Map(vec![
                    (bulk("type"), bulk("index")),
                    (
                        bulk("spec"),
                        Value::Map(vec![(bulk("index"), Value::Int(self.first_key))]),
                    ),
                ]),
            ),
            (
                bulk("find_keys"),
                Value::Map(vec![
                    (bulk("type"), bulk("range")),
                    (
                        bulk("spec"),
                        Value::Map(vec![
                            (bulk("lastkey"), Value::Int(last)),
                            (bulk("keystep"), Value::Int(self.key_step)),
                            (bulk("limit"), Value::Int(0)),
                        ]),
                    ),
                ]),
            ),
        ])]
    }

    /// `COMMAND DOCS`'s entry (a map), with the arguments parsed from the syntax.
    pub fn docs(&self) -> Value {
        let mut fields = vec![
            (bulk("summary"), bulk(self.summary)),
            (bulk("since"), bulk(env!("CARGO_PKG_VERSION"))),
            (bulk("group"), bulk(self.group)),
        ];
        let args = parse_syntax(self.syntax);
        if !args.is_empty() {
            fields.push((
                bulk("arguments"),
                Value::Array(args.iter().map(Arg::to_value).collect()),
            ));
        }
        if !self.subcommands.is_empty() {
            fields.push((
                bulk("subcommands"),
                Value::Map(
                    self.subcommands
                        .iter()
                        .map(|s| (bulk(s.name), s.docs()))
                        .collect(),
                ),
            ));
        }
        Value::Map(fields)
    }
}

fn bulk(s: &str) -> Value {
    Value::Bulk(Some(Bytes::copy_from_slice(s.as_bytes())))
}

use Consistency::{Linearizable, Local, Logged, Node};
use Role::{Admin, Read, ReadWrite};

const READ_FLAGS: &[&str] = &["readonly", "fast"];
const READ_ACL: &[&str] = &["read", "string", "fast"];
const WRITE_FLAGS: &[&str] = &["write", "denyoom"];
const WRITE_ACL: &[&str] = &["write", "string"];
const CONNECTION_FLAGS: &[&str] = &["fast", "loading", "stale"];
const CONNECTION_ACL: &[&str] = &["fast", "connection"];
const RAFT_FLAGS: &[&str] = &["admin", "noscript"];
const RAFT_ACL: &[&str] = &["admin", "slow", "dangerous"];

const CLIENT_SUBCOMMANDS: &[CommandSpec] = &[
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

const COMMAND_SUBCOMMANDS: &[CommandSpec] = &[
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

const CONFIG_SUBCOMMANDS: &[CommandSpec] = &[spec(
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

/// Every command the client port serves, grouped as Redis groups them.
pub static COMMANDS: &[CommandSpec] = &[
    // connection
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
        "Resets the connection: RESP2, no name, no transaction or watched keys, and logged \
         out when authentication is on.",
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
    // server
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
    // string and generic
    spec(
        "cas",
        4,
        ReadWrite,
        Logged,
        "string",
        "Sets the key to new only if it holds expected; returns 1 if it did, else 0.",
        "key expected new",
    )
    .flags(WRITE_FLAGS)
    .acl(WRITE_ACL)
    .keys(1, 1, 1)
    .differs("Not a Redis command."),
    spec(
        "casnx",
        3,
        ReadWrite,
        Logged,
        "string",
        "Sets the key only if it does not exist; returns 1 if it did, else 0.",
        "key new",
    )
    .flags(WRITE_FLAGS)
    .acl(WRITE_ACL)
    .keys(1, 1, 1)
    .differs("Not a Redis command."),
    spec(
        "decr",
        2,
        ReadWrite,
        Logged,
        "string",
        "Decrements the integer at the key by one.",
        "key",
    )
    .flags(WRITE_FLAGS)
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "decrby",
        3,
        ReadWrite,
        Logged,
        "string",
        "Decrements the integer at the key by decrement.",
        "key decrement",
    )
    .flags(WRITE_FLAGS)
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "del",
        -2,
        ReadWrite,
        Logged,
        "generic",
        "Deletes keys; returns how many existed.",
        "key [key ...]",
    )
    .flags(&["write"])
    .acl(&["keyspace", "write", "slow"])
    .keys(1, -1, 1),
    spec(
        "exists",
        -2,
        Read,
        Linearizable,
        "generic",
        "Returns how many of the keys exist (a key named twice counts twice).",
        "key [key ...]",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"])
    .keys(1, -1, 1),
    spec(
        "get",
        2,
        Read,
        Linearizable,
        "string",
        "Returns the key's value.",
        "key",
    )
    .flags(READ_FLAGS)
    .acl(READ_ACL)
    .keys(1, 1, 1),
    spec(
        "incr",
        2,
        ReadWrite,
        Logged,
        "string",
        "Increments the integer at the key by one.",
        "key",
    )
    .flags(WRITE_FLAGS)
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "incrby",
        3,
        ReadWrite,
        Logged,
        "string",
        "Increments the integer at the key by increment.",
        "key increment",
    )
    .flags(WRITE_FLAGS)
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "mget",
        -2,
        Read,
        Linearizable,
        "string",
        "Returns the values of the keys.",
        "key [key ...]",
    )
    .flags(READ_FLAGS)
    .acl(READ_ACL)
    .keys(1, -1, 1),
    spec(
        "mset",
        -3,
        ReadWrite,
        Logged,
        "string",
        "Sets several keys at once, atomically.",
        "key value [key value ...]",
    )
    .flags(WRITE_FLAGS)
    .acl(&["write", "string", "slow"])
    .keys(1, -1, 2),
    spec(
        "set",
        -3,
        ReadWrite,
        Logged,
        "string",
        "Sets the key's value, with a condition, an expiry, or returning the old value.",
        "key value [NX | XX] [GET] [EX seconds | PX milliseconds | EXAT unix-time-seconds | PXAT unix-time-milliseconds | KEEPTTL]",
    )
    .flags(WRITE_FLAGS)
    .acl(&["write", "string", "slow"])
    .keys(1, 1, 1),
    spec(
        "staleget",
        2,
        Read,
        Local,
        "string",
        "Returns the key's value from this node's applied state, without asking the leader.",
        "key",
    )
    .flags(READ_FLAGS)
    .acl(READ_ACL)
    .keys(1, 1, 1)
    .differs("Not a Redis command: GET is linearizable, STALEGET is the local read."),
    spec(
        "append",
        3,
        ReadWrite,
        Logged,
        "string",
        "Appends the value to the key's string; returns the new length.",
        "key value",
    )
    .flags(&["write", "denyoom"])
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "dbsize",
        1,
        Read,
        Linearizable,
        "server",
        "Returns the number of keys.",
        "",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"]),
    spec(
        "expire",
        -3,
        ReadWrite,
        Logged,
        "generic",
        "Sets the key's time to live in seconds.",
        "key seconds [NX | XX | GT | LT]",
    )
    .flags(&["write", "denyoom"])
    .acl(&["keyspace", "write"])
    .keys(1, 1, 1)
    .differs("Time is the leader's clock stamped into the log entry (docs/EXPIRY.md)."),
    spec(
        "expireat",
        -3,
        ReadWrite,
        Logged,
        "generic",
        "Sets the key's expiry as a Unix time in seconds.",
        "key unix-time-seconds [NX | XX | GT | LT]",
    )
    .flags(&["write", "denyoom"])
    .acl(&["keyspace", "write"])
    .keys(1, 1, 1)
    .differs("Time is the leader's clock stamped into the log entry (docs/EXPIRY.md)."),
    spec(
        "expiretime",
        2,
        Read,
        Linearizable,
        "generic",
        "Returns the Unix time in seconds the key expires at (-1 none, -2 absent).",
        "key",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"])
    .keys(1, 1, 1),
    spec(
        "flushall",
        -1,
        Admin,
        Logged,
        "server",
        "Removes every key.",
        "[ASYNC | SYNC]",
    )
    .flags(&["write"])
    .acl(&["keyspace", "write", "slow", "dangerous"])
    .differs("Role admin; ASYNC and SYNC are the same: one log entry."),
    spec(
        "flushdb",
        -1,
        Admin,
        Logged,
        "server",
        "Removes every key (the one database).",
        "[ASYNC | SYNC]",
    )
    .flags(&["write"])
    .acl(&["keyspace", "write", "slow", "dangerous"])
    .differs("Role admin; ASYNC and SYNC are the same: one log entry."),
    spec(
        "getdel",
        2,
        ReadWrite,
        Logged,
        "string",
        "Returns the key's value and deletes the key.",
        "key",
    )
    .flags(&["write"])
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "getex",
        -2,
        ReadWrite,
        Logged,
        "string",
        "Returns the key's value and sets or removes its expiry.",
        "key [EX seconds | PX milliseconds | EXAT unix-time-seconds | PXAT unix-time-milliseconds | PERSIST]",
    )
    .flags(&["write", "denyoom"])
    .acl(WRITE_ACL)
    .keys(1, 1, 1)
    .differs("A write through the log even without options."),
    spec(
        "getrange",
        4,
        Read,
        Linearizable,
        "string",
        "Returns the substring of the key's value between two offsets (inclusive, negative from the end).",
        "key start end",
    )
    .flags(READ_FLAGS)
    .acl(READ_ACL)
    .keys(1, 1, 1),
    spec(
        "getset",
        3,
        ReadWrite,
        Logged,
        "string",
        "Sets the key and returns its old value.",
        "key value",
    )
    .flags(&["write", "denyoom"])
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "incrbyfloat",
        3,
        ReadWrite,
        Logged,
        "string",
        "Increments the number at the key by a float.",
        "key increment-float",
    )
    .flags(&["write", "denyoom"])
    .acl(WRITE_ACL)
    .keys(1, 1, 1)
    .differs("See docs/EXPIRY.md for the formatting of results."),
    spec(
        "keys",
        2,
        Read,
        Linearizable,
        "generic",
        "Returns every key matching the glob pattern.",
        "pattern",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"])
    .differs("Bounded by the reply size limit."),
    spec(
        "msetnx",
        -3,
        ReadWrite,
        Logged,
        "string",
        "Sets several keys only if none exists; returns 1 if it did.",
        "key value [key value ...]",
    )
    .flags(&["write", "denyoom"])
    .acl(WRITE_ACL)
    .keys(1, -1, 2),
    spec(
        "persist",
        2,
        ReadWrite,
        Logged,
        "generic",
        "Removes the key's time to live.",
        "key",
    )
    .flags(&["write"])
    .acl(&["keyspace", "write"])
    .keys(1, 1, 1),
    spec(
        "pexpire",
        -3,
        ReadWrite,
        Logged,
        "generic",
        "Sets the key's time to live in milliseconds.",
        "key milliseconds [NX | XX | GT | LT]",
    )
    .flags(&["write", "denyoom"])
    .acl(&["keyspace", "write"])
    .keys(1, 1, 1)
    .differs("Time is the leader's clock stamped into the log entry (docs/EXPIRY.md)."),
    spec(
        "pexpireat",
        -3,
        ReadWrite,
        Logged,
        "generic",
        "Sets the key's expiry as a Unix time in milliseconds.",
        "key unix-time-milliseconds [NX | XX | GT | LT]",
    )
    .flags(&["write", "denyoom"])
    .acl(&["keyspace", "write"])
    .keys(1, 1, 1)
    .differs("Time is the leader's clock stamped into the log entry (docs/EXPIRY.md)."),
    spec(
        "pexpiretime",
        2,
        Read,
        Linearizable,
        "generic",
        "Returns the Unix time in milliseconds the key expires at.",
        "key",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"])
    .keys(1, 1, 1),
    spec(
        "pttl",
        2,
        Read,
        Linearizable,
        "generic",
        "Returns the key's time to live in milliseconds (-1 none, -2 absent).",
        "key",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"])
    .keys(1, 1, 1)
    .differs("Measured against the replicated clock (the last leader stamp), not the answering node's."),
    spec(
        "rename",
        3,
        ReadWrite,
        Logged,
        "generic",
        "Renames a key (its value and expiry).",
        "key newkey",
    )
    .flags(&["write", "denyoom"])
    .acl(&["keyspace", "write"])
    .keys(1, 2, 1),
    spec(
        "renamenx",
        3,
        ReadWrite,
        Logged,
        "generic",
        "Renames a key only if the new name does not exist.",
        "key newkey",
    )
    .flags(&["write", "denyoom"])
    .acl(&["keyspace", "write"])
    .keys(1, 2, 1),
    spec(
        "scan",
        -2,
        Read,
        Linearizable,
        "generic",
        "Iterates over the keys with a cursor.",
        "cursor [MATCH pattern] [COUNT count] [TYPE type]",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"])
    .differs("The cursor is derived from the keys, so a scan continues on any node and across leader changes (docs/EXPIRY.md)."),
    spec(
        "setnx",
        3,
        ReadWrite,
        Logged,
        "string",
        "Sets the key only if it does not exist; returns 1 if it did.",
        "key value",
    )
    .flags(&["write", "denyoom"])
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "setrange",
        4,
        ReadWrite,
        Logged,
        "string",
        "Overwrites part of the key's string from an offset; returns the new length.",
        "key offset value",
    )
    .flags(&["write", "denyoom"])
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "strlen",
        2,
        Read,
        Linearizable,
        "string",
        "Returns the length of the key's value.",
        "key",
    )
    .flags(READ_FLAGS)
    .acl(READ_ACL)
    .keys(1, 1, 1),
    spec(
        "substr",
        4,
        Read,
        Linearizable,
        "string",
        "GETRANGE's old name.",
        "key start end",
    )
    .flags(READ_FLAGS)
    .acl(READ_ACL)
    .keys(1, 1, 1),
    spec(
        "ttl",
        2,
        Read,
        Linearizable,
        "generic",
        "Returns the key's time to live in seconds (-1 none, -2 absent).",
        "key",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"])
    .keys(1, 1, 1)
    .differs("Measured against the replicated clock (the last leader stamp), not the answering node's."),
    spec(
        "type",
        2,
        Read,
        Linearizable,
        "generic",
        "Returns the key's type: string, or none.",
        "key",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"])
    .keys(1, 1, 1)
    .differs("Only strings exist."),
    spec(
        "unlink",
        -2,
        ReadWrite,
        Logged,
        "generic",
        "Deletes keys; returns how many existed.",
        "key [key ...]",
    )
    .flags(&["write"])
    .acl(&["keyspace", "write"])
    .keys(1, -1, 1)
    .differs("The same as DEL."),
    // pubsub
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
    // transactions
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
         (AUTH, HELLO, CLIENT, SELECT, ...) and RAFT.* cannot be queued: they abort the \
         transaction.",
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
    .flags(&["noscript", "loading", "stale", "fast", "allow_busy", "readonly"])
    .acl(&["fast", "transaction"])
    .keys(1, -1, 1)
    .differs(
        "A change is a change of the key's version (the log index that last wrote it), \
         checked by the state machine when the EXEC entry applies; a key that expires \
         counts as changed when its deletion is applied.",
    ),
    // raft
    spec(
        "leader",
        1,
        Read,
        Node,
        "raft",
        "Returns the leader's ID and client address as this node knows them, or nil.",
        "",
    )
    .flags(&["loading", "stale", "fast"])
    .acl(&["fast"])
    .differs("Not a Redis command."),
    spec(
        "raft.addlearner",
        2,
        Admin,
        Logged,
        "raft",
        "Adds the node (listed in the peers) as a learner.",
        "node-id",
    )
    .flags(RAFT_FLAGS)
    .acl(RAFT_ACL)
    .differs("Not a Redis command."),
    spec(
        "raft.promote",
        2,
        Admin,
        Logged,
        "raft",
        "Promotes a caught-up learner to voter.",
        "node-id",
    )
    .flags(RAFT_FLAGS)
    .acl(RAFT_ACL)
    .differs("Not a Redis command."),
    spec(
        "raft.remove",
        2,
        Admin,
        Logged,
        "raft",
        "Removes the node from the membership.",
        "node-id",
    )
    .flags(RAFT_FLAGS)
    .acl(RAFT_ACL)
    .differs("Not a Redis command."),
    spec(
        "raft.transfer",
        2,
        Admin,
        Node,
        "raft",
        "Transfers leadership to the node.",
        "node-id",
    )
    .flags(RAFT_FLAGS)
    .acl(RAFT_ACL)
    .differs("Not a Redis command."),
];

/// The command named `name`, in any case.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    COMMANDS.iter().find(|c| c.name == name)
}

/// The spec a request runs under: the subcommand's for a container command whose
/// subcommand exists, else the command's.
pub fn lookup_request(args: &[Bytes]) -> Option<&'static CommandSpec> {
    let spec = lookup(args.first()?)?;
    if spec.subcommands.is_empty() {
        return Some(spec);
    }
    Some(args.get(1).and_then(|s| spec.subcommand(s)).unwrap_or(spec))
}

/// Redis' arity error for `spec` (`client|id` for a subcommand).
pub fn arity_error(spec: &CommandSpec) -> Value {
    Value::Error(format!(
        "ERR wrong number of arguments for '{}' command",
        spec.name
    ))
}

/// `COMMAND [COUNT | INFO | DOCS | LIST]`.
pub fn command(rest: &[Bytes]) -> Value {
    let Some(sub) = rest.first() else {
        return Value::Array(COMMANDS.iter().map(CommandSpec::info).collect());
    };
    let names = &rest[1..];
    match String::from_utf8_lossy(sub).to_ascii_uppercase().as_str() {
        "COUNT" if names.is_empty() => Value::Int(COMMANDS.len() as i64),
        "INFO" if names.is_empty() => {
            Value::Array(COMMANDS.iter().map(CommandSpec::info).collect())
        }
        "INFO" => Value::Array(
            names
                .iter()
                .map(|n| find_any(n).map_or(Value::Bulk(None), |c| c.info()))
                .collect(),
        ),
        "DOCS" if names.is_empty() => {
            Value::Map(COMMANDS.iter().map(|c| (bulk(c.name), c.docs())).collect())
        }
        "DOCS" => Value::Map(
            names
                .iter()
                .filter_map(find_any)
                .map(|c| (bulk(c.name), c.docs()))
                .collect(),
        ),
        "LIST" => list(names),
        other => Value::Error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try COMMAND HELP.",
            other.to_ascii_lowercase()
        )),
    }
}

/// A command or subcommand by the name `COMMAND INFO` takes (`get`, `client|id`).
fn find_any(name: &Bytes) -> Option<&'static CommandSpec> {
    let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
    match lower.split_once('|') {
        Some((parent, sub)) => lookup(parent.as_bytes())?.subcommand(sub.as_bytes()),
        None => lookup(name),
    }
}

/// `COMMAND LIST [FILTERBY MODULE name | ACLCAT category | PATTERN pattern]`.
fn list(args: &[Bytes]) -> Value {
    let names = COMMANDS.iter().map(|c| c.name);
    let filter = match args {
        [] => None,
        [by, kind, value] if by.eq_ignore_ascii_case(b"FILTERBY") => {
            Some((String::from_utf8_lossy(kind).to_ascii_uppercase(), value))
        }
        _ => return Value::Error("ERR syntax error".into()),
    };
    let keep: Vec<&str> = match &filter {
        None => names.collect(),
        Some((kind, _)) if kind == "MODULE" => Vec::new(),
        Some((kind, cat)) if kind == "ACLCAT" => {
            let cat = String::from_utf8_lossy(cat).to_ascii_lowercase();
            COMMANDS
                .iter()
                .filter(|c| c.acl.contains(&cat.as_str()))
                .map(|c| c.name)
                .collect()
        }
        Some((kind, pattern)) if kind == "PATTERN" => names
            .filter(|n| glob_match(pattern, n.as_bytes()))
            .collect(),
        Some(_) => return Value::Error("ERR syntax error".into()),
    };
    Value::Array(keep.into_iter().map(bulk).collect())
}

/// Redis' glob: `*`, `?`, `[abc]`, `[^a-z]`, `\x`. Iterative with one backtrack point per
/// `*`, so a hostile pattern costs at most pattern × text steps.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(&pattern[p..], text[t]) {
                        if matched {
                            p += next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == text[t] => {
                    p += 2;
                    t += 1;
                    continue;
                }
                b'\\' if p + 1 < pattern.len() => {}
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A `[...]` class at the start of `pattern` against `c`: whether it matches and the
/// class's length; `None` if the class is not closed.
fn class_match(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = (
                pattern[i].min(pattern[i + 2]),
                pattern[i].max(pattern[i + 2]),
            );
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= pattern[i] == c;
            i += 1;
        }
    }
    (i < pattern.len()).then_some((matched != negate, i + 1))
}

/// One argument of `COMMAND DOCS`, parsed from a syntax string.
#[derive(Clone, Debug, PartialEq)]
struct Arg {
    name: String,
    /// `key`, `string`, `integer`, `pattern`, `unix-time`, `pure-token`, `oneof`, `block`.
    kind: &'static str,
    token: Option<String>,
    optional: bool,
    multiple: bool,
    args: Vec<Arg>,
}

impl Arg {
    fn value(name: &str, token: Option<&str>) -> Arg {
        Arg {
            name: name.to_string(),
            kind: value_kind(name),
            token: token.map(str::to_string),
            optional: false,
            multiple: false,
            args: Vec::new(),
        }
    }

    fn token(token: &str) -> Arg {
        Arg {
            name: token.to_ascii_lowercase(),
            kind: "pure-token",
            token: Some(token.to_string()),
            optional: false,
            multiple: false,
            args: Vec::new(),
        }
    }

    fn group(kind: &'static str, args: Vec<Arg>) -> Arg {
        let name = match kind {
            "oneof" => args
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join("-or-"),
            _ => "data".to_string(),
        };
        Arg {
            name,
            kind,
            token: None,
            optional: false,
            multiple: false,
            args,
        }
    }

    /// The argument map redis-cli and client libraries read: `name`, `type`, `token`,
    /// `flags` (status strings), `arguments`.
    fn to_value(&self) -> Value {
        let mut fields = vec![
            (bulk("name"), bulk(&self.name)),
            (bulk("type"), bulk(self.kind)),
        ];
        if self.kind == "key" {
            fields.push((bulk("key_spec_index"), Value::Int(0)));
        }
        if let Some(token) = &self.token {
            fields.push((bulk("token"), bulk(token)));
        }
        let flags: Vec<Value> = [("optional", self.optional), ("multiple", self.multiple)]
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(f, _)| Value::Simple(f.into()))
            .collect();
        if !flags.is_empty() {
            fields.push((bulk("flags"), Value::Set(flags)));
        }
        if !self.args.is_empty() {
            fields.push((
                bulk("arguments"),
                Value::Array(self.args.iter().map(Arg::to_value).collect()),
            ));
        }
        Value::Map(fields)
    }
}

fn value_kind(name: &str) -> &'static str {
    match name {
        "key" => "key",
        "pattern" => "pattern",
        "unix-time-seconds" | "unix-time-milliseconds" => "unix-time",
        "seconds" | "milliseconds" | "count" | "cursor" | "index" | "protover" | "start"
        | "end" | "offset" | "increment" | "decrement" | "node-id" | "client-id" | "numkeys" => {
            "integer"
        }
        "increment-float" => "double",
        _ => "string",
    }
}

/// Parses Redis' documentation syntax into `COMMAND DOCS` arguments. The syntax strings
/// are ours (the table above), so anything unexpected is a programming error the tests
/// catch; the parser never panics on them.
fn parse_syntax(syntax: &str) -> Vec<Arg> {
    let spaced = syntax
        .replace('[', " [ ")
        .replace(']', " ] ")
        .replace('|', " | ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut at = 0;
    parse_alternatives(&tokens, &mut at)
}

fn is_token(word: &str) -> bool {
    word.chars().any(|c| c.is_ascii_alphabetic()) && !word.chars().any(|c| c.is_ascii_lowercase())
}

/// `a | b | c` at this level: one `oneof` if there are alternatives, else the sequence.
fn parse_alternatives(tokens: &[&str], at: &mut usize) -> Vec<Arg> {
    let mut alternatives = vec![parse_sequence(tokens, at)];
    while tokens.get(*at) == Some(&"|") {
        *at += 1;
        alternatives.push(parse_sequence(tokens, at));
    }
    if alternatives.len() == 1 {
        return alternatives.pop().unwrap_or_default();
    }
    let options = alternatives
        .into_iter()
        .map(|mut seq| {
            if seq.len() == 1 {
                seq.pop().expect("one")
            } else {
                Arg::group("block", seq)
            }
        })
        .collect();
    vec![Arg::group("oneof", options)]
}

fn parse_sequence(tokens: &[&str], at: &mut usize) -> Vec<Arg> {
    let mut seq: Vec<Arg> = Vec::new();
    while let Some(&word) = tokens.get(*at) {
        match word {
            "]" | "|" => break,
            "[" => {
                *at += 1;
                let start = *at;
                let inner = parse_alternatives(tokens, at);
                let repeats = tokens[start..*at].last() == Some(&"...");
                if tokens.get(*at) == Some(&"]") {
                    *at += 1;
                }
                if repeats {
                    // `x [x ...]`: the last inner.len() arguments repeat.
                    let n = inner.len().min(seq.len()).max(1);
                    if n == 1 {
                        if let Some(last) = seq.last_mut() {
                            last.multiple = true;
                        }
                    } else {
                        let tail = seq.split_off(seq.len() - n);
                        let mut block = Arg::group("block", tail);
                        block.multiple = true;
                        seq.push(block);
                    }
                    continue;
                }
                let mut arg = if inner.len() == 1 {
                    inner.into_iter().next().expect("one")
                } else {
                    Arg::group("block", inner)
                };
                if arg.optional {
                    // `[[a] b]` does not occur; an optional inside an optional stays so.
                    arg = Arg::group("block", vec![arg]);
                }
                arg.optional = true;
                seq.push(arg);
            }
            "..." => *at += 1,
            w if is_token(w) => {
                *at += 1;
                match tokens.get(*at) {
                    Some(&v) if !is_token(v) && !["[", "]", "|", "..."].contains(&v) => {
                        *at += 1;
                        seq.push(Arg::value(v, Some(w)));
                    }
                    _ => seq.push(Arg::token(w)),
                }
            }
            w => {
                *at += 1;
                seq.push(Arg::value(w, None));
            }
        }
    }
    seq
}

/// The generated part of `docs/COMMANDS.md`: one section per command, by group.
pub fn reference_markdown() -> String {
    let mut out = String::new();
    let mut groups: Vec<&str> = Vec::new();
    for c in COMMANDS {
        if !groups.contains(&c.group) {
            groups.push(c.group);
        }
    }
    for group in groups {
        out.push_str(&format!("\n## {group}\n"));
        let mut specs: Vec<&CommandSpec> = COMMANDS.iter().filter(|c| c.group == group).collect();
        specs.sort_by_key(|c| c.name);
        for c in specs {
            write_command(&mut out, c);
            for s in c.subcommands {
                write_command(&mut out, s);
            }
        }
    }
    out
}

fn write_command(out: &mut String, c: &CommandSpec) {
    let usage = if c.syntax.is_empty() {
        c.display_name()
    } else {
        format!("{} {}", c.display_name(), c.syntax)
    };
    out.push_str(&format!(
        "\n### {}\n\n`{usage}`\n\n{}\n\n",
        c.display_name(),
        c.summary
    ));
    if !c.subcommands.is_empty() {
        let names: Vec<String> = c.subcommands.iter().map(|s| s.display_name()).collect();
        out.push_str(&format!("Subcommands: {}.\n\n", names.join(", ")));
    }
    out.push_str(&format!(
        "- Consistency: {}. Role: `{}`.\n",
        c.consistency.describe(),
        c.role
    ));
    if !c.differs.is_empty() {
        out.push_str(&format!("- Differs from Redis: {}\n", c.differs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERATED_BEGIN: &str = "<!-- BEGIN GENERATED: commands.rs -->\n";
    const GENERATED_END: &str = "<!-- END GENERATED -->\n";

    /// `docs/COMMANDS.md` holds the table's reference between two markers; with
    /// `UPDATE_COMMANDS_MD=1` this test rewrites it instead of comparing.
    #[test]
    fn reference_matches_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/COMMANDS.md");
        let text = std::fs::read_to_string(path).expect("docs/COMMANDS.md exists");
        let begin = text.find(GENERATED_BEGIN).expect("begin marker") + GENERATED_BEGIN.len();
        let end = text.find(GENERATED_END).expect("end marker");
        let generated = reference_markdown();
        if std::env::var_os("UPDATE_COMMANDS_MD").is_some() {
            let updated = format!("{}{generated}{}", &text[..begin], &text[end..]);
            std::fs::write(path, updated).expect("write docs/COMMANDS.md");
            return;
        }
        assert!(
            text[begin..end] == generated,
            "docs/COMMANDS.md is out of date: run \
             `UPDATE_COMMANDS_MD=1 cargo test -p raft-node commands` and commit it"
        );
    }

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

    #[test]
    fn syntax_becomes_redis_arguments() {
        let args = parse_syntax("key [key ...]");
        assert_eq!(args.len(), 1);
        assert!(args[0].multiple && args[0].kind == "key");

        let args = parse_syntax("key value [key value ...]");
        assert_eq!(args.len(), 1);
        assert_eq!(args[0].kind, "block");
        assert!(args[0].multiple);
        assert_eq!(args[0].args.len(), 2);

        let args = parse_syntax("[protover [AUTH username password] [SETNAME clientname]]");
        assert_eq!(args.len(), 1);
        assert!(args[0].optional);
        assert_eq!(args[0].kind, "block");
        let inner = &args[0].args;
        assert_eq!(inner[0].name, "protover");
        assert_eq!(inner[0].kind, "integer");
        assert_eq!(inner[1].kind, "block");
        assert_eq!(inner[1].args[0].token.as_deref(), Some("AUTH"));
        assert!(inner[2].optional);
        assert_eq!(inner[2].token.as_deref(), Some("SETNAME"));

        let args = parse_syntax("[NX | XX] [GET] [EX seconds | KEEPTTL]");
        assert_eq!(args.len(), 3);
        assert_eq!(args[0].kind, "oneof");
        assert!(args[0].optional);
        assert_eq!(args[0].args[1].kind, "pure-token");
        assert_eq!(args[1].kind, "pure-token");
        assert_eq!(args[2].args[0].token.as_deref(), Some("EX"));
        assert_eq!(args[2].args[0].kind, "integer");
    }

    /// The shapes redis-cli asserts on when it builds its hints from `COMMAND DOCS`
    /// (redis-cli.c, `cliInitCommandHelpEntry` / `cliAddArgument`): an assertion failure
    /// there aborts the user's redis-cli.
    #[test]
    fn docs_have_the_shapes_redis_cli_asserts() {
        fn check_arg(v: &Value) {
            let Value::Map(fields) = v else {
                panic!("argument not a map: {v:?}")
            };
            let mut has_type = false;
            for (k, v) in fields {
                let Value::Bulk(Some(k)) = k else {
                    panic!("key {k:?}")
                };
                match &k[..] {
                    b"name" | b"token" | b"type" => {
                        assert!(matches!(v, Value::Bulk(Some(_))), "{k:?} {v:?}");
                        has_type |= &k[..] == b"type";
                    }
                    b"flags" => {
                        let Value::Set(flags) = v else {
                            panic!("flags {v:?}")
                        };
                        assert!(flags.iter().all(|f| matches!(f, Value::Simple(_))));
                    }
                    b"arguments" => {
                        let Value::Array(args) = v else {
                            panic!("arguments {v:?}")
                        };
                        args.iter().for_each(check_arg);
                    }
                    _ => {}
                }
            }
            assert!(has_type);
        }
        let Value::Map(all) = command(&[Bytes::from("DOCS")]) else {
            panic!("COMMAND DOCS is a map")
        };
        assert_eq!(all.len(), COMMANDS.len());
        for (_, docs) in &all {
            let Value::Map(fields) = docs else { panic!() };
            for (k, v) in fields {
                let Value::Bulk(Some(k)) = k else { panic!() };
                match &k[..] {
                    b"summary" | b"since" | b"group" => {
                        assert!(matches!(v, Value::Bulk(Some(_))))
                    }
                    b"arguments" => {
                        let Value::Array(args) = v else { panic!() };
                        args.iter().for_each(check_arg);
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn command_subcommands_answer_with_redis_types() {
        assert_eq!(
            command(&[Bytes::from("COUNT")]),
            Value::Int(COMMANDS.len() as i64)
        );
        let Value::Array(infos) = command(&[
            Bytes::from("INFO"),
            Bytes::from("get"),
            Bytes::from("nope"),
            Bytes::from("client|id"),
        ]) else {
            panic!()
        };
        assert_eq!(infos.len(), 3);
        let Value::Array(get) = &infos[0] else {
            panic!()
        };
        assert_eq!(get[0], bulk("get"));
        assert_eq!(get[1], Value::Int(2));
        assert_eq!(get[3..6], [Value::Int(1), Value::Int(1), Value::Int(1)]);
        assert_eq!(infos[1], Value::Bulk(None));
        let Value::Array(id) = &infos[2] else {
            panic!()
        };
        assert_eq!(id[0], bulk("client|id"));
        let Value::Array(listed) = command(&[
            Bytes::from("LIST"),
            Bytes::from("FILTERBY"),
            Bytes::from("PATTERN"),
            Bytes::from("raft.*"),
        ]) else {
            panic!()
        };
        assert_eq!(listed.len(), 4);
        assert!(matches!(
            command(&[Bytes::from("NOPE")]),
            Value::Error(e) if e.contains("unknown subcommand")
        ));
    }

    #[test]
    fn glob_matches_as_redis_does() {
        for (p, t, want) in [
            ("*", "", true),
            ("a*", "abc", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("h[ae]llo", "hello", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h\\*llo", "h*llo", true),
            ("*x*y*z", "axbyc", false),
            ("[", "[", true),
        ] {
            assert_eq!(glob_match(p.as_bytes(), t.as_bytes()), want, "{p} {t}");
        }
    }
}
