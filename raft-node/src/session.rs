//! The gate every client request passes on the client port: logging in (RESP `AUTH` and
//! `HELLO ... AUTH`, the native `Auth` request), the role each request needs, and the
//! connection-level RESP commands (`HELLO`, `CLIENT`, `CONFIG`).
//!
//! Reads (GET, MGET, EXISTS, INFO, LEADER, status) need `read`; writes need `read-write`;
//! membership changes and leadership transfer (`RAFT.*`, the native admin requests) need
//! `admin`. Until a connection logs in, only `AUTH`, `HELLO` and `QUIT` are answered, as
//! in Redis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use raft_client::wire::{KvCommand, NodeError, Request};

use crate::auth::{Auth, Role, Session};
use crate::resp::{self, Parsed, Value};

/// The role a native request needs.
pub fn native_role(request: &Request) -> Role {
    match request {
        Request::Read { .. } | Request::Status | Request::Auth { .. } => Role::Read,
        Request::Propose { op, .. } if KvCommand::encoded_flushes(op) => Role::Admin,
        Request::Propose { .. } => Role::ReadWrite,
        Request::TransferLeader { .. }
        | Request::AddLearner { .. }
        | Request::Promote { .. }
        | Request::RemoveNode { .. } => Role::Admin,
    }
}

/// Checks a native request against `session`. `Ok(true)`: serve it; `Ok(false)`: it was an
/// `Auth` that logged the session in, answer `Done`; `Err`: answer with the refusal.
pub fn native_gate(
    auth: &Auth,
    session: &mut Session,
    request: &Request,
) -> Result<bool, NodeError> {
    if let Request::Auth { user, password } = request {
        // Without credentials configured everyone is an admin already: any login is fine,
        // so a client (or a peer) configured with credentials works against such a node.
        if !auth.is_enabled() || session.authenticate(auth, user.as_deref(), &password.0) {
            return Ok(false);
        }
        return Err(NodeError::Unauthenticated(
            "invalid username-password pair".into(),
        ));
    }
    let needed = native_role(request);
    match session.role {
        None => Err(NodeError::Unauthenticated(
            "authentication required: send Auth first".into(),
        )),
        Some(role) if role < needed => Err(NodeError::PermissionDenied(format!(
            "user {} has role {role}; this request needs {needed}",
            session.user.as_deref().unwrap_or("?")
        ))),
        Some(_) => Ok(true),
    }
}

/// The role a RESP command needs once parsed.
fn resp_role(parsed: &Parsed) -> Role {
    match parsed {
        // Dropping every key is an administrator's act, as Redis' ACL puts FLUSHALL in
        // @dangerous.
        Parsed::Kv(cmd, _) if cmd.flushes() => Role::Admin,
        Parsed::Admin(_) => Role::Admin,
        Parsed::Kv(cmd, _) if !cmd.is_read() => Role::ReadWrite,
        Parsed::Kv(..) | Parsed::Reply(_) | Parsed::Info | Parsed::Leader => Role::Read,
    }
}

/// Numbers RESP connections for `CLIENT ID` and `HELLO`.
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// The RESP protocol version a connection speaks. Only 2 for now; `HELLO 3` is refused
/// with `NOPROTO`, which clients take as "fall back to RESP2".
const RESP_PROTOCOL: i64 = 2;

fn error(text: impl Into<String>) -> Parsed {
    Parsed::Reply(Value::Error(text.into()))
}

fn ok() -> Parsed {
    Parsed::Reply(Value::Simple("OK".into()))
}

fn bulk(text: impl Into<Bytes>) -> Value {
    Value::Bulk(Some(text.into()))
}

const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// One RESP connection's login and connection-level state.
pub struct RespSession {
    auth: Arc<Auth>,
    session: Session,
    id: u64,
    name: Option<Bytes>,
}

impl RespSession {
    /// A new connection's state, logged in as `session` says (see [`Session::new`]).
    pub fn new(auth: Arc<Auth>, session: Session) -> RespSession {
        RespSession {
            auth,
            session,
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            name: None,
        }
    }

    /// The role the connection has now (`None` until it authenticates).
    pub fn role(&self) -> Option<Role> {
        self.session.role
    }

    /// Maps one request onto what serves it, answering connection-level commands and
    /// refusals itself. Called in the order the requests arrived, so a pipelined `AUTH`
    /// applies to the requests after it and to none before it.
    pub fn command(&mut self, args: &[Bytes]) -> Parsed {
        let Some(name) = args.first() else {
            return resp::to_command(args);
        };
        let name = String::from_utf8_lossy(name).to_ascii_uppercase();
        let rest = &args[1..];
        match name.as_str() {
            "AUTH" => return self.auth_command(rest),
            "HELLO" => return self.hello(rest),
            "QUIT" => return ok(),
            _ => {}
        }
        if self.session.role.is_none() {
            return error(NOAUTH);
        }
        let parsed = match name.as_str() {
            "CLIENT" => self.client(rest),
            "CONFIG" => config(rest),
            _ => resp::to_command(args),
        };
        let needed = resp_role(&parsed);
        if self.session.allows(needed) {
            parsed
        } else {
            error(format!(
                "NOPERM User {} has no permissions to run the '{}' command",
                self.session.user.as_deref().unwrap_or("?"),
                name.to_ascii_lowercase()
            ))
        }
    }

    fn auth_command(&mut self, rest: &[Bytes]) -> Parsed {
        let (user, password) = match rest {
            [password] => {
                if !self.auth.is_enabled() {
                    return error(
                        "ERR AUTH <password> called without any password configured for the \
                         default user. Are you sure your configuration is correct?",
                    );
                }
                (None, password)
            }
            [user, password] => (Some(String::from_utf8_lossy(user)), password),
            _ => return error("ERR wrong number of arguments for 'auth' command"),
        };
        if self
            .session
            .authenticate(&self.auth, user.as_deref(), password)
        {
            ok()
        } else {
            error(WRONGPASS)
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    fn hello(&mut self, rest: &[Bytes]) -> Parsed {
        if let Some(version) = rest.first() {
            let Some(version) = std::str::from_utf8(version)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            else {
                return error("ERR Protocol version is not an integer or out of range");
            };
            if version != RESP_PROTOCOL {
                return error("NOPROTO unsupported protocol version");
            }
        }
        let mut login = None;
        let mut setname = None;
        let mut i = 1;
        while i < rest.len() {
            let option = String::from_utf8_lossy(&rest[i]).to_ascii_uppercase();
            match option.as_str() {
                "AUTH" if i + 2 < rest.len() => {
                    login = Some((rest[i + 1].clone(), rest[i + 2].clone()));
                    i += 3;
                }
                "SETNAME" if i + 1 < rest.len() => {
                    setname = Some(rest[i + 1].clone());
                    i += 2;
                }
                _ => {
                    return error(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(&rest[i])
                    ))
                }
            }
        }
        if let Some((user, password)) = login {
            let user = String::from_utf8_lossy(&user);
            if !self
                .session
                .authenticate(&self.auth, Some(&user), &password)
            {
                return error(WRONGPASS);
            }
        }
        if self.session.role.is_none() {
            return error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise \
                 the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
                 client and select the RESP protocol version at the same time",
            );
        }
        if let Some(name) = setname {
            self.name = Some(name);
        }
        Parsed::Reply(self.hello_reply())
    }

    /// HELLO's answer: Redis' fields, as a flat array in RESP2 (a map in RESP3).
    fn hello_reply(&self) -> Value {
        Value::Array(vec![
            bulk("server"),
            bulk("redis"),
            bulk("version"),
            bulk("7.2.0"),
            bulk("proto"),
            Value::Int(RESP_PROTOCOL),
            bulk("id"),
            Value::Int(self.id as i64),
            bulk("mode"),
            bulk("standalone"),
            bulk("role"),
            bulk("master"),
            bulk("modules"),
            Value::Array(Vec::new()),
        ])
    }

    /// The `CLIENT` subcommands clients send on connect; anything else is refused rather
    /// than answered OK without effect.
    fn client(&mut self, rest: &[Bytes]) -> Parsed {
        let sub = rest
            .first()
            .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase())
            .unwrap_or_default();
        match (sub.as_str(), rest.len()) {
            ("SETNAME", 2) => {
                if rest[1].iter().any(|&b| b <= b' ' || b > b'~') {
                    return error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                self.name = (!rest[1].is_empty()).then(|| rest[1].clone());
                ok()
            }
            ("GETNAME", 1) => Parsed::Reply(Value::Bulk(self.name.clone())),
            ("ID", 1) => Parsed::Reply(Value::Int(self.id as i64)),
            // Library name and version (redis-py, go-redis, redis-rs): nothing to keep.
            ("SETINFO", 3) => ok(),
            ("SETNAME" | "GETNAME" | "ID" | "SETINFO", _) => error(format!(
                "ERR wrong number of arguments for 'client|{}' command",
                sub.to_ascii_lowercase()
            )),
            _ => error(format!(
                "ERR CLIENT {} is not supported by this server",
                if sub.is_empty() {
                    "without a subcommand".to_string()
                } else {
                    sub
                }
            )),
        }
    }
}

/// `CONFIG GET` answers an empty list (tools such as redis-benchmark probe settings on
/// connect); every other subcommand is refused: the node is configured by its file and
/// flags, and a `CONFIG SET` that answered OK would pretend to have changed something.
fn config(rest: &[Bytes]) -> Parsed {
    let sub = rest
        .first()
        .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase())
        .unwrap_or_default();
    match sub.as_str() {
        // Keyspace notifications are always on for every class (server/pubsub.rs).
        "GET" if rest.len() >= 2 => Parsed::Reply(Value::Array(
            if rest[1..]
                .iter()
                .any(|p| crate::glob::matches(&p.to_ascii_lowercase(), b"notify-keyspace-events"))
            {
                vec![bulk("notify-keyspace-events"), bulk("KEA")]
            } else {
                Vec::new()
            },
        )),
        _ => error(format!(
            "ERR CONFIG {sub} is not supported: raft-node is configured by its file and flags \
             at start"
        )),
    }
}
