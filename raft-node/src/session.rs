//! The gate every client request passes on the client port: logging in (RESP `AUTH` and
//! `HELLO ... AUTH`, the native `Auth` request), the role each request needs, and the
//! connection-level RESP commands (`HELLO`, `CLIENT`, `CONFIG`, `COMMAND`, `RESET`,
//! `MULTI`/`EXEC`/`DISCARD`).
//!
//! A RESP command must be in the command table (`commands.rs`), which gives its arity and
//! the role it needs: reads need `read`, writes `read-write`, membership changes and
//! leadership transfer (`RAFT.*`, the native admin requests) `admin`. What the parser makes
//! of a command is checked too (a write never passes with `read`, whatever the table says).
//! Until a connection logs in, only `AUTH`, `HELLO`, `QUIT` and `RESET` are answered, as in
//! Redis.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use raft_proto::{KvCommand, NodeError, Request, BATCH_COMMANDS_MAX, FRAME_BYTES_MAX};

use crate::auth::{Auth, Role, Session};
use crate::commands::{self, CommandSpec};
use crate::resp::{self, Parsed, Protocol, Value, WatchSlot};

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

/// The role a RESP command needs once parsed: a floor under the table's role, so that a
/// write is never served to a reader even if its table row were wrong.
fn resp_role(parsed: &Parsed) -> Role {
    match parsed {
        // Dropping every key is an administrator's act, as Redis' ACL puts FLUSHALL in
        // @dangerous.
        Parsed::Kv(cmd, _) if cmd.flushes() => Role::Admin,
        Parsed::Admin(_) => Role::Admin,
        Parsed::Exec(queued, _) => queued.iter().map(resp_role).max().unwrap_or(Role::Read),
        Parsed::Kv(cmd, _) if !cmd.is_read() => Role::ReadWrite,
        Parsed::Kv(..) | Parsed::Reply(_) | Parsed::Info | Parsed::Leader | Parsed::Watch(..) => {
            Role::Read
        }
    }
}

/// Numbers RESP connections for `CLIENT ID` and `HELLO`.
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Commands one transaction queues at most: it becomes one batch entry.
pub const TRANSACTION_COMMANDS_MAX: usize = BATCH_COMMANDS_MAX;
/// Bytes of arguments one transaction queues at most: its batch must fit, with room to
/// spare, in the frame a follower forwards it to the leader in.
pub const TRANSACTION_BYTES_MAX: usize = FRAME_BYTES_MAX / 2;
/// Keys one connection watches at most (WATCH adds, EXEC, DISCARD and UNWATCH clear).
pub const WATCHED_KEYS_MAX: usize = 4096;
/// Bytes of a client name, library name or version at most.
const CLIENT_FIELD_BYTES_MAX: usize = 256;

/// What `CLIENT LIST` shows of a connection. One per open RESP connection (admission
/// bounds how many), updated only when one of its fields changes, not per command.
#[derive(Clone, Debug)]
struct ClientRecord {
    name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    user: Option<String>,
    protocol: Protocol,
    multi: Option<usize>,
    since: Instant,
}

/// The open RESP connections of this process, by ID.
static CLIENTS: Mutex<BTreeMap<u64, ClientRecord>> = Mutex::new(BTreeMap::new());

fn clients() -> std::sync::MutexGuard<'static, BTreeMap<u64, ClientRecord>> {
    // A panic while holding the lock leaves plain data behind: still usable.
    CLIENTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// `CLIENT INFO`'s line for one connection (Redis' field names; what is not tracked here
/// is left out).
fn client_line(id: u64, c: &ClientRecord) -> String {
    fn text(b: &Option<Bytes>) -> String {
        b.as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    }
    format!(
        "id={id} name={} age={} idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi={} user={} \
         lib-name={} lib-ver={} resp={}\n",
        text(&c.name),
        c.since.elapsed().as_secs(),
        c.multi.map_or(-1, |n| n as i64),
        c.user.as_deref().unwrap_or(""),
        text(&c.lib_name),
        text(&c.lib_ver),
        c.protocol.version(),
    )
}

/// The commands queued after `MULTI`.
#[derive(Default)]
struct Transaction {
    queued: Vec<Parsed>,
    bytes: usize,
    /// A command was refused while queueing: EXEC answers EXECABORT, as in Redis.
    aborted: bool,
}

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
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    protocol: Protocol,
    multi: Option<Transaction>,
    /// What WATCH read; replaced by a fresh slot when the watch ends.
    watched: WatchSlot,
    /// Keys named by WATCH since the watch began.
    watched_keys: usize,
    request_keys_max: usize,
}

impl Drop for RespSession {
    fn drop(&mut self) {
        clients().remove(&self.id);
    }
}

impl RespSession {
    /// A new connection's state, logged in as `session` says (see [`Session::new`]).
    pub fn new(auth: Arc<Auth>, session: Session) -> RespSession {
        let s = RespSession {
            auth,
            session,
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            name: None,
            lib_name: None,
            lib_ver: None,
            protocol: Protocol::Resp2,
            multi: None,
            watched: WatchSlot::default(),
            watched_keys: 0,
            request_keys_max: usize::MAX,
        };
        s.publish();
        s
    }

    /// Holds queued commands to `request_keys_max` keys each (commands served at once are
    /// held to it by the server).
    pub fn with_request_keys_max(mut self, max: usize) -> RespSession {
        self.request_keys_max = max;
        self
    }

    /// The role the connection has now (`None` until it authenticates).
    pub fn role(&self) -> Option<Role> {
        self.session.role
    }

    /// The protocol the connection's replies are encoded in now.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Whether a MULTI is open (commands are queued, not run).
    pub fn in_multi(&self) -> bool {
        self.multi.is_some()
    }

    /// This connection's ID (`CLIENT ID`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Updates this connection's `CLIENT LIST` entry.
    fn publish(&self) {
        let record = ClientRecord {
            name: self.name.clone(),
            lib_name: self.lib_name.clone(),
            lib_ver: self.lib_ver.clone(),
            user: self.session.user.clone(),
            protocol: self.protocol,
            multi: self.multi.as_ref().map(|t| t.queued.len()),
            since: Instant::now(),
        };
        let mut all = clients();
        let since = all.get(&self.id).map_or(record.since, |r| r.since);
        all.insert(self.id, ClientRecord { since, ..record });
    }

    /// A refusal inside MULTI also aborts the transaction, as in Redis.
    fn refuse(&mut self, text: impl Into<String>) -> Parsed {
        if let Some(t) = &mut self.multi {
            t.aborted = true;
        }
        error(text)
    }

    /// Maps one request onto what serves it, answering connection-level commands and
    /// refusals itself. Called in the order the requests arrived, so a pipelined `AUTH`
    /// applies to the requests after it and to none before it.
    pub fn command(&mut self, args: &[Bytes]) -> Parsed {
        let Some(first) = args.first() else {
            return resp::to_command(args);
        };
        let name = String::from_utf8_lossy(first).to_ascii_uppercase();
        let Some(spec) = commands::lookup(first) else {
            return self.refuse(format!(
                "ERR unknown command '{}'",
                name.to_ascii_lowercase()
            ));
        };
        let rest = &args[1..];
        let in_multi = self.multi.is_some();
        match name.as_str() {
            "AUTH" | "HELLO" if in_multi => {
                return self.refuse("ERR Command not allowed inside a transaction")
            }
            "AUTH" => return self.auth_command(rest),
            "HELLO" => return self.hello(rest),
            "QUIT" => return ok(),
            "RESET" => return self.reset(),
            _ => {}
        }
        if self.session.role.is_none() {
            return error(NOAUTH);
        }
        let request_spec = commands::lookup_request(args).unwrap_or(spec);
        if !request_spec.arity_fits(args.len()) {
            let reply = commands::arity_error(request_spec);
            if let Some(t) = &mut self.multi {
                t.aborted = true;
            }
            return Parsed::Reply(reply);
        }
        if !self.session.allows(request_spec.role.max(spec.role)) {
            return self.refuse(self.noperm(&name));
        }
        if in_multi {
            return self.in_transaction(&name, spec, args);
        }
        let parsed = match name.as_str() {
            "CLIENT" => self.client(rest),
            "CONFIG" => config(rest),
            "COMMAND" => Parsed::Reply(commands::command(rest)),
            "MULTI" => {
                self.multi = Some(Transaction::default());
                self.publish();
                ok()
            }
            "EXEC" => error("ERR EXEC without MULTI"),
            "WATCH" => {
                let keys = rest.to_vec();
                if self.watched_keys + keys.len() > WATCHED_KEYS_MAX {
                    return error(format!(
                        "ERR a connection watches at most {WATCHED_KEYS_MAX} keys"
                    ));
                }
                self.watched_keys += keys.len();
                Parsed::Watch(keys, self.watched.clone())
            }
            "UNWATCH" => {
                self.unwatch();
                ok()
            }
            "DISCARD" => error("ERR DISCARD without MULTI"),
            _ => resp::to_command(args),
        };
        self.gate(&name, parsed)
    }

    fn noperm(&self, name: &str) -> String {
        format!(
            "NOPERM User {} has no permissions to run the '{}' command",
            self.session.user.as_deref().unwrap_or("?"),
            name.to_ascii_lowercase()
        )
    }

    /// The parsed command's own role check (see [`resp_role`]).
    fn gate(&mut self, name: &str, parsed: Parsed) -> Parsed {
        if self.session.allows(resp_role(&parsed)) {
            parsed
        } else {
            let text = self.noperm(name);
            self.refuse(text)
        }
    }

    /// A command after MULTI: EXEC and DISCARD end the transaction; data commands are
    /// queued (answered `QUEUED`); connection commands, which would change the
    /// connection before EXEC decides anything, and administration are refused, which
    /// aborts the transaction.
    fn in_transaction(&mut self, name: &str, spec: &CommandSpec, args: &[Bytes]) -> Parsed {
        match name {
            "EXEC" => {
                let t = self.multi.take().unwrap_or_default();
                let watched = self.unwatch();
                self.publish();
                if t.aborted {
                    return error("EXECABORT Transaction discarded because of previous errors.");
                }
                return Parsed::Exec(t.queued, watched);
            }
            "DISCARD" => {
                self.multi = None;
                self.unwatch();
                self.publish();
                return ok();
            }
            "MULTI" => return error("ERR MULTI calls can not be nested"),
            // Redis' text; as in Redis (7.0.15, measured) the transaction goes on.
            "WATCH" => return error("ERR WATCH inside MULTI is not allowed"),
            // Redis queues these and its EXEC reply then holds one entry per command but a
            // push per channel, which no client can parse (redis/redis#12207): refused
            // here, which aborts the transaction as every refusal while queueing does.
            "SUBSCRIBE" | "PSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "WATCHLOG" => {
                return self.refuse(format!("ERR {name} inside MULTI is not allowed"))
            }
            _ => {}
        }
        let allowed = match spec.group {
            "connection" => matches!(name, "PING" | "ECHO"),
            "raft" => name == "LEADER",
            _ => true,
        };
        if !allowed {
            return self.refuse("ERR Command not allowed inside a transaction");
        }
        let parsed = match name {
            // Redis queues it; at EXEC the watch ends anyway.
            "UNWATCH" => ok(),
            "CONFIG" => config(&args[1..]),
            "COMMAND" => Parsed::Reply(commands::command(&args[1..])),
            _ => resp::to_command(args),
        };
        let parsed = crate::server::refuse_too_many_keys(parsed, self.request_keys_max);
        let parsed = self.gate(name, parsed);
        // Errors found while parsing (a bad option, a non-integer) are answered by EXEC
        // in the command's place, as Redis answers errors found when a command runs.
        let bytes: usize = args.iter().map(|a| a.len() + 8).sum();
        let Some(t) = &mut self.multi else {
            return parsed;
        };
        if t.aborted {
            // Redis still answers QUEUED; EXEC will refuse the whole transaction.
        } else if t.queued.len() >= TRANSACTION_COMMANDS_MAX {
            t.aborted = true;
            return error(format!(
                "ERR transaction longer than {TRANSACTION_COMMANDS_MAX} commands"
            ));
        } else if t.bytes + bytes > TRANSACTION_BYTES_MAX {
            t.aborted = true;
            return error(format!(
                "ERR transaction larger than {TRANSACTION_BYTES_MAX} bytes"
            ));
        } else {
            t.bytes += bytes;
            t.queued.push(parsed);
        }
        let queued = t.queued.len();
        if let Some(r) = clients().get_mut(&self.id) {
            r.multi = Some(queued);
        }
        Parsed::Reply(Value::Simple("QUEUED".into()))
    }

    /// Ends the watch; answers what it had read.
    fn unwatch(&mut self) -> WatchSlot {
        self.watched_keys = 0;
        std::mem::take(&mut self.watched)
    }

    /// `RESET`: RESP2, no name, no transaction, no watch, and logged in as the `default`
    /// user as Redis does: authenticated only if that user needs no password (no
    /// authentication configured), so with authentication on the connection is logged
    /// out, whoever it was (a client certificate's login included). Subscribe mode ends
    /// too (`server/pubsub.rs`).
    fn reset(&mut self) -> Parsed {
        self.session = Session::new(&self.auth);
        self.protocol = Protocol::Resp2;
        self.name = None;
        self.multi = None;
        self.unwatch();
        self.publish();
        Parsed::Reply(Value::Simple("RESET".into()))
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
            self.publish();
            ok()
        } else {
            error(WRONGPASS)
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    fn hello(&mut self, rest: &[Bytes]) -> Parsed {
        let mut protocol = self.protocol;
        if let Some(version) = rest.first() {
            let Some(version) = std::str::from_utf8(version)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            else {
                return error("ERR Protocol version is not an integer or out of range");
            };
            protocol = match version {
                2 => Protocol::Resp2,
                3 => Protocol::Resp3,
                _ => return error("NOPROTO unsupported protocol version"),
            };
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
            if let Err(e) = check_client_name(&name) {
                return e;
            }
            self.name = (!name.is_empty()).then_some(name);
        }
        self.protocol = protocol;
        self.publish();
        Parsed::Reply(self.hello_reply())
    }

    /// HELLO's answer: Redis' fields, a map (a flat array in RESP2).
    fn hello_reply(&self) -> Value {
        Value::Map(vec![
            (bulk("server"), bulk("redis")),
            (bulk("version"), bulk("7.2.0")),
            (bulk("proto"), Value::Int(self.protocol.version())),
            (bulk("id"), Value::Int(self.id as i64)),
            (bulk("mode"), bulk("standalone")),
            (bulk("role"), bulk("master")),
            (bulk("modules"), Value::Array(Vec::new())),
        ])
    }

    /// `CLIENT` subcommands (arity already checked against the table).
    fn client(&mut self, rest: &[Bytes]) -> Parsed {
        let sub = rest
            .first()
            .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase())
            .unwrap_or_default();
        let on_off = |v: &Bytes| {
            if v.eq_ignore_ascii_case(b"ON") || v.eq_ignore_ascii_case(b"OFF") {
                ok()
            } else {
                error("ERR syntax error")
            }
        };
        let reply = match sub.as_str() {
            "SETNAME" => {
                if let Err(e) = check_client_name(&rest[1]) {
                    return e;
                }
                self.name = (!rest[1].is_empty()).then(|| rest[1].clone());
                ok()
            }
            "GETNAME" => Parsed::Reply(Value::Bulk(self.name.clone())),
            "ID" => Parsed::Reply(Value::Int(self.id as i64)),
            "SETINFO" => {
                let value = &rest[2];
                if value.len() > CLIENT_FIELD_BYTES_MAX
                    || value.iter().any(|&b| b <= b' ' || b > b'~')
                {
                    return error(
                        "ERR lib-name and lib-ver cannot contain spaces, newlines or special \
                         characters.",
                    );
                }
                let value = (!value.is_empty()).then(|| value.clone());
                match String::from_utf8_lossy(&rest[1])
                    .to_ascii_uppercase()
                    .as_str()
                {
                    "LIB-NAME" => self.lib_name = value,
                    "LIB-VER" => self.lib_ver = value,
                    _ => {
                        return error(format!(
                            "ERR Unrecognized option '{}'",
                            String::from_utf8_lossy(&rest[1])
                        ))
                    }
                }
                ok()
            }
            "INFO" => {
                let line = clients()
                    .get(&self.id)
                    .map(|r| client_line(self.id, r))
                    .unwrap_or_default();
                Parsed::Reply(Value::Verbatim(Bytes::from(line)))
            }
            "LIST" => return client_list(&rest[1..]),
            "NO-EVICT" | "NO-TOUCH" => return on_off(&rest[1]),
            _ => {
                return error(format!(
                    "ERR unknown subcommand '{}'. CLIENT supports only ID, SETNAME, GETNAME, \
                     SETINFO, LIST, INFO, NO-EVICT and NO-TOUCH here.",
                    String::from_utf8_lossy(&rest[0])
                ))
            }
        };
        self.publish();
        reply
    }
}

/// Redis' rule for client names: printable ASCII without spaces, and bounded here.
fn check_client_name(name: &[u8]) -> Result<(), Parsed> {
    if name.len() > CLIENT_FIELD_BYTES_MAX || name.iter().any(|&b| b <= b' ' || b > b'~') {
        return Err(error(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(())
}

/// `CLIENT LIST [TYPE type] [ID id ...]`: this node's RESP connections.
fn client_list(args: &[Bytes]) -> Parsed {
    let mut ids: Option<Vec<u64>> = None;
    let mut normal = true;
    match args
        .first()
        .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
    {
        None => {}
        Some(t) if t == "TYPE" && args.len() == 2 => {
            let kind = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
            match kind.as_str() {
                "normal" => {}
                "pubsub" | "master" | "replica" => normal = false,
                _ => return error(format!("ERR Unknown client type '{kind}'")),
            }
        }
        Some(t) if t == "ID" && args.len() >= 2 => {
            let parsed: Option<Vec<u64>> = args[1..]
                .iter()
                .map(|a| std::str::from_utf8(a).ok()?.parse().ok())
                .collect();
            match parsed {
                Some(p) => ids = Some(p),
                None => return error("ERR Invalid client ID"),
            }
        }
        Some(_) => return error("ERR syntax error"),
    }
    let mut text = String::new();
    if normal {
        for (id, record) in clients().iter() {
            if ids.as_ref().is_none_or(|ids| ids.contains(id)) {
                text.push_str(&client_line(*id, record));
            }
        }
    }
    Parsed::Reply(Value::Verbatim(Bytes::from(text)))
}

/// Read-only parameters `CONFIG GET` answers with, each true of this node: no RDB
/// snapshots to schedule, every write in an append-only log synced before it is
/// acknowledged, one database. Tools (redis-benchmark) read these on connect.
const CONFIG_PARAMETERS: &[(&str, &str)] = &[
    ("save", ""),
    ("appendonly", "yes"),
    ("appendfsync", "always"),
    ("databases", "1"),
    // Keyspace notifications are always on for every class (server/pubsub.rs).
    ("notify-keyspace-events", "KEA"),
];

/// `CONFIG GET parameter [parameter ...]` answers the parameters above that match (a map);
/// every other subcommand is refused: the node is configured by its file and flags, and a
/// `CONFIG SET` that answered OK would pretend to have changed something.
fn config(rest: &[Bytes]) -> Parsed {
    let sub = rest
        .first()
        .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase())
        .unwrap_or_default();
    match sub.as_str() {
        "GET" if rest.len() >= 2 => {
            let patterns: Vec<Vec<u8>> = rest[1..].iter().map(|p| p.to_ascii_lowercase()).collect();
            Parsed::Reply(Value::Map(
                CONFIG_PARAMETERS
                    .iter()
                    .filter(|(name, _)| {
                        patterns
                            .iter()
                            .any(|p| crate::glob::matches(p, name.as_bytes()))
                    })
                    .map(|(name, value)| (bulk(*name), bulk(*value)))
                    .collect(),
            ))
        }
        _ => error(format!(
            "ERR CONFIG {sub} is not supported: raft-node is configured by its file and flags \
             at start"
        )),
    }
}
