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

mod docs;
mod introspection;
mod table;

pub use docs::reference_markdown;
pub use introspection::command;
pub use table::COMMANDS;

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
}

fn bulk(s: &str) -> Value {
    Value::Bulk(Some(Bytes::copy_from_slice(s.as_bytes())))
}

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
