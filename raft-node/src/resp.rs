//! RESP2, the Redis protocol: a bounded request parser, reply encoding, and the mapping of
//! Redis commands onto the key-value state machine.
//!
//! Hand-written rather than taken from a crate: the server side of RESP2 is two request
//! forms (arrays of bulk strings, and inline commands) and five reply types, about two
//! hundred lines, while the maintained crates (`redis-protocol`) bring a parser-combinator
//! stack and client-oriented types this node would not use, on a machine where compile
//! time is shared. The `redis` crate's tests and `redis-cli` exercise it as an outside
//! implementation would.

use bytes::{Buf, Bytes, BytesMut};
use raft_proto::{KvCommand, KvError, KvResponse, NodeStatus};

use crate::limits::ClientLimits;
use crate::runtime::AdminOp;

/// Bytes of a `*N` or `$N` line at most, CRLF included: 20 digits and a sign hold any
/// i64, so a longer line is garbage whatever `line_bytes_max` allows.
const LENGTH_LINE_BYTES_MAX: usize = 24;
/// Argument slots reserved up front: a `*N` header alone must not allocate N slots.
const ARGS_PREALLOCATED_MAX: usize = 64;

/// A malformed request, or one past a limit.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(String);

/// The bounds the parser enforces, from [`ClientLimits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParserLimits {
    /// Bytes of one bulk string.
    pub bulk_bytes_max: usize,
    /// Bytes of one inline command.
    pub line_bytes_max: usize,
    /// Arguments of one request.
    pub request_args_max: usize,
    /// Bytes of one request, headers included.
    pub request_bytes_max: usize,
}

impl From<&ClientLimits> for ParserLimits {
    fn from(l: &ClientLimits) -> Self {
        ParserLimits {
            bulk_bytes_max: l.bulk_bytes_max,
            line_bytes_max: l.line_bytes_max,
            request_args_max: l.request_args_max,
            request_bytes_max: l.request_bytes_max,
        }
    }
}

impl Default for ParserLimits {
    fn default() -> Self {
        ParserLimits::from(&ClientLimits::default())
    }
}

/// Where the parser is inside a request.
#[derive(Debug, Default)]
enum Stage {
    /// Between requests.
    #[default]
    Start,
    /// In an array request: `remaining` bulk strings still to come, the next one of
    /// `bulk` bytes once its `$N` line was read.
    Array {
        remaining: usize,
        bulk: Option<usize>,
    },
}

/// Incremental request parser. It consumes each piece of a request from the buffer as soon
/// as it is complete (a bulk string becomes a `Bytes` sharing the buffer's memory) and
/// remembers how far it searched a line, so each byte received is examined once however
/// the request is split across reads. After an error its state is meaningless: the
/// connection is to be closed.
#[derive(Debug, Default)]
pub struct RespParser {
    limits: ParserLimits,
    stage: Stage,
    /// Arguments of the request under way.
    args: Vec<Bytes>,
    /// Bytes of the request under way consumed so far.
    request_bytes: usize,
    /// Bytes at the head of the buffer already searched for the end of the current line.
    line_scanned: usize,
}

fn protocol(m: impl Into<String>) -> ProtocolError {
    ProtocolError(m.into())
}

fn parse_length(line: &[u8], what: &str) -> Result<i64, ProtocolError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol(format!("invalid {what}")))
}

impl RespParser {
    /// A parser enforcing `limits`.
    pub fn new(limits: ParserLimits) -> Self {
        RespParser {
            limits,
            ..RespParser::default()
        }
    }

    /// Bytes of the request under way that were taken out of the buffer already (its
    /// complete arguments): with the buffer's length, what the connection holds for it.
    pub fn pending_bytes(&self) -> usize {
        self.request_bytes
    }

    /// Takes one complete request from `buf`, or `None` if more bytes are needed (the
    /// caller appends them to `buf` and calls again). Bytes of an incomplete request may be
    /// consumed from `buf` and kept here.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            match self.stage {
                Stage::Start => {
                    let Some(&first) = buf.first() else {
                        return Ok(None);
                    };
                    if first != b'*' {
                        return self.parse_inline(buf);
                    }
                    let Some(line) = self.take_line(buf, "multibulk length")? else {
                        return Ok(None);
                    };
                    let count = parse_length(&line[1..], "multibulk length")?;
                    if count <= 0 {
                        self.finish();
                        return Ok(Some(Vec::new()));
                    }
                    if count as u64 > self.limits.request_args_max as u64 {
                        return Err(protocol(format!(
                            "{count} arguments exceed request_args_max ({})",
                            self.limits.request_args_max
                        )));
                    }
                    let remaining = count as usize;
                    self.args = Vec::with_capacity(remaining.min(ARGS_PREALLOCATED_MAX));
                    self.stage = Stage::Array {
                        remaining,
                        bulk: None,
                    };
                }
                Stage::Array { remaining: 0, .. } => {
                    let args = std::mem::take(&mut self.args);
                    self.finish();
                    return Ok(Some(args));
                }
                Stage::Array {
                    remaining,
                    bulk: None,
                } => {
                    let Some(&first) = buf.first() else {
                        return Ok(None);
                    };
                    if first != b'$' {
                        return Err(protocol(format!(
                            "expected '$', got '{}'",
                            (first as char).escape_default()
                        )));
                    }
                    let Some(line) = self.take_line(buf, "bulk length")? else {
                        return Ok(None);
                    };
                    let len = parse_length(&line[1..], "bulk length")?;
                    if len < 0 || len as u64 > self.limits.bulk_bytes_max as u64 {
                        return Err(protocol(format!(
                            "invalid bulk length {len} (bulk_bytes_max is {})",
                            self.limits.bulk_bytes_max
                        )));
                    }
                    let len = len as usize;
                    self.check_request_bytes(len + 2)?;
                    self.stage = Stage::Array {
                        remaining,
                        bulk: Some(len),
                    };
                }
                Stage::Array {
                    remaining,
                    bulk: Some(len),
                } => {
                    if buf.len() < len + 2 {
                        return Ok(None);
                    }
                    if &buf[len..len + 2] != b"\r\n" {
                        return Err(protocol("bulk string not terminated by CRLF"));
                    }
                    let arg = buf.split_to(len).freeze();
                    buf.advance(2);
                    self.request_bytes += len + 2;
                    self.args.push(arg);
                    self.stage = Stage::Array {
                        remaining: remaining - 1,
                        bulk: None,
                    };
                }
            }
        }
    }

    /// Resets for the next request.
    fn finish(&mut self) {
        self.stage = Stage::Start;
        self.request_bytes = 0;
        self.line_scanned = 0;
    }

    fn check_request_bytes(&self, more: usize) -> Result<(), ProtocolError> {
        if self.request_bytes.saturating_add(more) > self.limits.request_bytes_max {
            return Err(protocol(format!(
                "request larger than request_bytes_max ({})",
                self.limits.request_bytes_max
            )));
        }
        Ok(())
    }

    /// Takes a `*N` or `$N` line (CRLF removed) off the buffer once it is complete; searches
    /// only the bytes not searched before.
    fn take_line(
        &mut self,
        buf: &mut BytesMut,
        what: &str,
    ) -> Result<Option<Bytes>, ProtocolError> {
        let from = self.line_scanned.saturating_sub(1).min(buf.len());
        let window = &buf[from..buf.len().min(LENGTH_LINE_BYTES_MAX)];
        let Some(end) = window
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| p + from)
        else {
            if buf.len() >= LENGTH_LINE_BYTES_MAX {
                return Err(protocol(format!("{what} line too long")));
            }
            self.line_scanned = buf.len();
            return Ok(None);
        };
        self.check_request_bytes(end + 2)?;
        let line = buf.split_to(end).freeze();
        buf.advance(2);
        self.request_bytes += end + 2;
        self.line_scanned = 0;
        Ok(Some(line))
    }

    fn parse_inline(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let limit = self
            .limits
            .line_bytes_max
            .min(self.limits.request_bytes_max);
        let from = self.line_scanned.min(buf.len());
        let window = &buf[from..buf.len().min(limit)];
        let Some(end) = window.iter().position(|&b| b == b'\n').map(|p| p + from) else {
            if buf.len() >= limit {
                return Err(protocol(format!(
                    "inline command longer than line_bytes_max ({limit})"
                )));
            }
            self.line_scanned = buf.len();
            return Ok(None);
        };
        self.line_scanned = 0;
        let line = buf.split_to(end + 1).freeze();
        let args = split_inline(&line)?;
        if args.len() > self.limits.request_args_max {
            return Err(protocol(format!(
                "{} arguments exceed request_args_max ({})",
                args.len(),
                self.limits.request_args_max
            )));
        }
        Ok(Some(args))
    }
}

/// Splits an inline command into arguments as Redis' `sdssplitargs` does (what redis-cli
/// and telnet users type): blanks separate arguments; `"..."` takes `\n`, `\r`, `\t`, `\b`,
/// `\a`, `\xHH` and `\<any>` escapes; `'...'` takes only `\'`; a closing quote must be
/// followed by a blank or the end of the line. Unbalanced quotes are a protocol error, as
/// in Redis.
fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // C's isspace: the separators sdssplitargs skips.
    let blank = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let unbalanced = || protocol("unbalanced quotes in request");
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && blank(line[i]) {
            i += 1;
        }
        if i >= line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        let (mut double, mut single) = (false, false);
        loop {
            let c = line.get(i).copied();
            let next = line.get(i + 1).copied();
            if double {
                match (c, next) {
                    (Some(b'\\'), Some(b'x')) => {
                        match (
                            line.get(i + 2).and_then(|&b| hex(b)),
                            line.get(i + 3).and_then(|&b| hex(b)),
                        ) {
                            (Some(hi), Some(lo)) => {
                                arg.push(hi << 4 | lo);
                                i += 3;
                            }
                            _ => {
                                arg.push(b'x');
                                i += 1;
                            }
                        }
                    }
                    (Some(b'\\'), Some(e)) => {
                        arg.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                        i += 1;
                    }
                    (Some(b'"'), next) => {
                        if next.is_some_and(|b| !blank(b)) {
                            return Err(unbalanced());
                        }
                        i += 1;
                        break;
                    }
                    (None, _) => return Err(unbalanced()),
                    (Some(other), _) => arg.push(other),
                }
            } else if single {
                match (c, next) {
                    (Some(b'\\'), Some(b'\'')) => {
                        arg.push(b'\'');
                        i += 1;
                    }
                    (Some(b'\''), next) => {
                        if next.is_some_and(|b| !blank(b)) {
                            return Err(unbalanced());
                        }
                        i += 1;
                        break;
                    }
                    (None, _) => return Err(unbalanced()),
                    (Some(other), _) => arg.push(other),
                }
            } else {
                match c {
                    None => break,
                    Some(b) if blank(b) => break,
                    Some(b'"') => double = true,
                    Some(b'\'') => single = true,
                    Some(other) => arg.push(other),
                }
            }
            i += 1;
        }
        args.push(Bytes::from(arg));
    }
}

/// The RESP version a connection speaks; it decides how every reply is encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2, what a connection starts with.
    #[default]
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

impl Protocol {
    /// The number `HELLO` and `CLIENT INFO` show.
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// A reply. The RESP3 types are written as their RESP2 equivalents on a RESP2 connection,
/// as Redis does: a map as a flat array of keys and values, a set or push as an array, a
/// double as a bulk string, a boolean as 1 or 0, a verbatim string as a bulk string, a
/// null as `$-1` (`*-1` for [`Value::NullArray`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$3\r\nfoo`, or nil: `$-1` in RESP2, `_` in RESP3.
    Bulk(Option<Bytes>),
    /// `*2 ...`.
    Array(Vec<Value>),
    /// A nil array (EXEC whose WATCH failed): `*-1` in RESP2, `_` in RESP3.
    NullArray,
    /// `%N`: key-value pairs, in order.
    Map(Vec<(Value, Value)>),
    /// `~N`: members without duplicates.
    Set(Vec<Value>),
    /// `,1.5`.
    Double(f64),
    /// `#t` / `#f`.
    Bool(bool),
    /// `=N\r\ntxt:...`: text meant to be shown as it is (INFO, CLIENT LIST).
    Verbatim(Bytes),
    /// `>N`: an out-of-band message (pub/sub), an array in RESP2.
    Push(Vec<Value>),
}

impl Value {
    /// Appends the RESP2 encoding to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        self.encode(Protocol::Resp2, out)
    }

    /// Appends the encoding in `proto` to `out`.
    pub fn encode(&self, proto: Protocol, out: &mut Vec<u8>) {
        if self.write_header(proto, out) {
            match self {
                Value::Array(items) | Value::Set(items) | Value::Push(items) => {
                    for v in items {
                        v.encode(proto, out);
                    }
                }
                Value::Map(pairs) => {
                    for (k, v) in pairs {
                        k.encode(proto, out);
                        v.encode(proto, out);
                    }
                }
                _ => {}
            }
            return;
        }
        let resp3 = proto == Protocol::Resp3;
        match self {
            Value::Simple(s) => {
                out.push(b'+');
                out.extend(s.replace(['\r', '\n'], " ").as_bytes());
            }
            Value::Error(s) => {
                out.push(b'-');
                out.extend(s.replace(['\r', '\n'], " ").as_bytes());
            }
            Value::Int(n) => out.extend(format!(":{n}").as_bytes()),
            Value::Bulk(None) | Value::NullArray if resp3 => out.push(b'_'),
            Value::Bulk(None) => out.extend(b"$-1"),
            Value::NullArray => out.extend(b"*-1"),
            Value::Bulk(Some(b)) => {
                out.extend(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Value::Double(d) if resp3 => out.extend(format!(",{}", format_double(*d)).as_bytes()),
            Value::Double(d) => {
                let text = format_double(*d);
                out.extend(format!("${}\r\n{text}", text.len()).as_bytes());
            }
            Value::Bool(b) if resp3 => out.extend(if *b { b"#t" } else { b"#f" }),
            Value::Bool(b) => out.extend(if *b { b":1" } else { b":0" }),
            Value::Verbatim(text) if resp3 => {
                out.extend(format!("={}\r\ntxt:", text.len() + 4).as_bytes());
                out.extend_from_slice(text);
            }
            Value::Verbatim(text) => {
                out.extend(format!("${}\r\n", text.len()).as_bytes());
                out.extend_from_slice(text);
            }
            Value::Array(_) | Value::Set(_) | Value::Push(_) | Value::Map(_) => {
                unreachable!("aggregates are written by write_header and their members")
            }
        }
        out.extend(b"\r\n");
    }

    /// For an aggregate, appends its header line in `proto` and answers true (its members
    /// follow it); anything else is left alone and answers false.
    pub fn write_header(&self, proto: Protocol, out: &mut Vec<u8>) -> bool {
        let resp3 = proto == Protocol::Resp3;
        let (kind, count) = match self {
            Value::Array(items) => (b'*', items.len()),
            Value::Set(items) => (if resp3 { b'~' } else { b'*' }, items.len()),
            Value::Push(items) => (if resp3 { b'>' } else { b'*' }, items.len()),
            Value::Map(pairs) if resp3 => (b'%', pairs.len()),
            Value::Map(pairs) => (b'*', 2 * pairs.len()),
            _ => return false,
        };
        out.push(kind);
        out.extend(format!("{count}\r\n").as_bytes());
        true
    }
}

/// A double as Redis writes it: `inf`, `-inf`, `nan`, or the shortest decimal that reads
/// back as the same number.
pub fn format_double(d: f64) -> String {
    if d.is_nan() {
        "nan".into()
    } else if d.is_infinite() {
        if d > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        format!("{d}")
    }
}

/// What a RESP request asks for.
pub enum Parsed {
    /// A key-value command, and whether a read is linearizable.
    Kv(KvCommand, bool),
    /// Answered without the node (PING, errors, COMMAND).
    Reply(Value),
    /// INFO.
    Info,
    /// LEADER.
    Leader,
    /// Membership and leadership administration.
    Admin(AdminOp),
    /// EXEC: the commands queued since MULTI, run as one log entry if no watched key
    /// changed.
    Exec(Vec<Parsed>, WatchSlot),
    /// WATCH: the keys' versions are read (linearizably) into the connection's slot.
    Watch(Vec<Bytes>, WatchSlot),
}

/// The keys a connection watches and their versions when WATCH read them, filled in by
/// the server in the connection's order (a WATCH is served before a later EXEC).
pub type WatchSlot = std::sync::Arc<std::sync::Mutex<Watched>>;

/// See [`WatchSlot`].
#[derive(Debug, Default)]
pub struct Watched {
    /// `(key, version)` as read by WATCH.
    pub keys: Vec<(Bytes, u64)>,
    /// A WATCH whose read failed: EXEC must not run unguarded, so it runs nothing.
    pub broken: bool,
}

impl Parsed {
    /// Whether this goes through the log (a write or an administrative change).
    pub fn is_write(&self) -> bool {
        match self {
            Parsed::Kv(cmd, _) => !cmd.is_read(),
            Parsed::Admin(_) | Parsed::Exec(..) => true,
            Parsed::Reply(_) | Parsed::Info | Parsed::Leader | Parsed::Watch(..) => false,
        }
    }
}

fn wrong_args(name: &str) -> Parsed {
    Parsed::Reply(Value::Error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    )))
}

fn int_arg(b: &Bytes) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Maps a request onto what serves it.
pub fn to_command(args: &[Bytes]) -> Parsed {
    let Some(name) = args.first() else {
        return Parsed::Reply(Value::Error("ERR empty command".into()));
    };
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();
    let rest = &args[1..];
    if let Some(parsed) = crate::resp_keys::to_command(&name, rest) {
        return parsed;
    }
    let keys = || rest.to_vec();
    let kv = |c| Parsed::Kv(c, true);
    match (name.as_str(), rest.len()) {
        ("PING", 0) => Parsed::Reply(Value::Simple("PONG".into())),
        ("PING", 1) => Parsed::Reply(Value::Bulk(Some(rest[0].clone()))),
        ("ECHO", 1) => Parsed::Reply(Value::Bulk(Some(rest[0].clone()))),
        ("QUIT", _) => Parsed::Reply(Value::Simple("OK".into())),
        ("SELECT", 1) => match int_arg(&rest[0]) {
            Some(0) => Parsed::Reply(Value::Simple("OK".into())),
            Some(_) => Parsed::Reply(Value::Error(
                "ERR DB index is out of range: raft-node has one database, 0".into(),
            )),
            None => Parsed::Reply(Value::Error(
                "ERR value is not an integer or out of range".into(),
            )),
        },
        // This node's clock: not replicated, not comparable across nodes.
        ("TIME", 0) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Parsed::Reply(Value::Array(vec![
                Value::Bulk(Some(Bytes::from(now.as_secs().to_string()))),
                Value::Bulk(Some(Bytes::from(now.subsec_micros().to_string()))),
            ]))
        }
        // (COMMAND, CONFIG, CLIENT, AUTH, HELLO, RESET and transactions are the session's:
        // `session.rs` and `commands/`.)
        ("INFO", _) => Parsed::Info,
        ("LEADER", 0) => Parsed::Leader,
        ("GET", 1) => kv(KvCommand::Get {
            key: rest[0].clone(),
        }),
        ("STALEGET", 1) => Parsed::Kv(
            KvCommand::Get {
                key: rest[0].clone(),
            },
            false,
        ),
        ("MGET", n) if n >= 1 => kv(KvCommand::MGet { keys: keys() }),
        ("EXISTS", n) if n >= 1 => kv(KvCommand::Exists { keys: keys() }),
        ("SET", 2) => kv(KvCommand::Set {
            key: rest[0].clone(),
            value: rest[1].clone(),
        }),
        ("SET", n) if n > 2 => {
            Parsed::Reply(Value::Error("ERR SET options are not supported".into()))
        }
        ("MSET", n) if n >= 2 && n % 2 == 0 => kv(KvCommand::MSet {
            pairs: rest
                .chunks(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect(),
        }),
        ("DEL", n) if n >= 1 => kv(KvCommand::Del { keys: keys() }),
        ("INCR", 1) => kv(KvCommand::IncrBy {
            key: rest[0].clone(),
            by: 1,
        }),
        ("DECR", 1) => kv(KvCommand::IncrBy {
            key: rest[0].clone(),
            by: -1,
        }),
        ("INCRBY", 2) | ("DECRBY", 2) => match int_arg(&rest[1]) {
            Some(by) => {
                let by = if name == "DECRBY" {
                    by.checked_neg()
                } else {
                    Some(by)
                };
                match by {
                    Some(by) => kv(KvCommand::IncrBy {
                        key: rest[0].clone(),
                        by,
                    }),
                    None => Parsed::Reply(Value::Error("ERR decrement would overflow".into())),
                }
            }
            None => Parsed::Reply(Value::Error(
                "ERR value is not an integer or out of range".into(),
            )),
        },
        // CAS key expected new: swap only if the key holds `expected`; replies 1 or 0.
        ("CAS", 3) => kv(KvCommand::Cas {
            key: rest[0].clone(),
            expected: Some(rest[1].clone()),
            new: Some(rest[2].clone()),
        }),
        // CASNX key new: set only if the key is absent.
        ("CASNX", 2) => kv(KvCommand::Cas {
            key: rest[0].clone(),
            expected: None,
            new: Some(rest[1].clone()),
        }),
        ("RAFT.TRANSFER", 1)
        | ("RAFT.ADDLEARNER", 1)
        | ("RAFT.PROMOTE", 1)
        | ("RAFT.REMOVE", 1) => match int_arg(&rest[0]).filter(|&n| n > 0) {
            Some(id) => {
                let id = id as u64;
                Parsed::Admin(match name.as_str() {
                    "RAFT.TRANSFER" => AdminOp::TransferLeader(id),
                    "RAFT.ADDLEARNER" => AdminOp::AddLearner(id),
                    "RAFT.PROMOTE" => AdminOp::Promote(id),
                    _ => AdminOp::Remove(id),
                })
            }
            None => Parsed::Reply(Value::Error(
                "ERR node ID must be a positive integer".into(),
            )),
        },
        (
            "PING" | "ECHO" | "SELECT" | "TIME" | "LEADER" | "GET" | "STALEGET" | "MGET" | "EXISTS"
            | "SET" | "MSET" | "DEL" | "INCR" | "DECR" | "INCRBY" | "DECRBY" | "CAS" | "CASNX"
            | "RAFT.TRANSFER" | "RAFT.ADDLEARNER" | "RAFT.PROMOTE" | "RAFT.REMOVE",
            _,
        ) => wrong_args(&name),
        _ => Parsed::Reply(Value::Error(format!(
            "ERR unknown command '{}'",
            name.to_ascii_lowercase()
        ))),
    }
}

/// The RESP reply for a state-machine response.
pub fn kv_reply(r: KvResponse) -> Value {
    match r {
        KvResponse::Ok => Value::Simple("OK".into()),
        KvResponse::Value(v) => Value::Bulk(v),
        KvResponse::Values(vs) => Value::Array(vs.into_iter().map(Value::Bulk).collect()),
        KvResponse::Int(n) => Value::Int(n),
        KvResponse::Cas { swapped, .. } => Value::Int(i64::from(swapped)),
        KvResponse::Batch(rs) => Value::Array(rs.into_iter().map(kv_reply).collect()),
        KvResponse::Error(KvError::NotAnInteger) => {
            Value::Error("ERR value is not an integer or out of range".into())
        }
        KvResponse::Error(KvError::OutOfMemory) => {
            Value::Error("OOM command not allowed when used memory > 'maxmemory'.".into())
        }
        KvResponse::Error(e) => Value::Error(format!("ERR {e}")),
        other => crate::resp_keys::reply(&other).expect("every other answer is resp_keys'"),
    }
}

/// INFO's text: the consensus state and the log, one `field:value` per line.
pub fn info_text(s: &NodeStatus) -> String {
    let mut out = String::from("# Raft\r\n");
    let mut line = |k: &str, v: String| {
        out.push_str(k);
        out.push(':');
        out.push_str(&v);
        out.push_str("\r\n");
    };
    line("node_id", s.id.to_string());
    line("role", s.role.to_ascii_lowercase());
    line("term", s.term.to_string());
    line(
        "leader_id",
        s.leader.map_or("none".into(), |l| l.to_string()),
    );
    line(
        "leader_addr",
        s.leader_addr.clone().unwrap_or_else(|| "none".into()),
    );
    line("commit_index", s.commit_index.to_string());
    line("applied_index", s.applied_index.to_string());
    line("persisted_index", s.persisted_index.to_string());
    line("log_first_index", s.first_index.to_string());
    line("log_last_index", s.last_index.to_string());
    line("snapshot_index", s.snapshot_index.to_string());
    line("log_storage", s.storage.clone());
    line("elections", s.elections.to_string());
    let ids = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    line("voters", ids(&s.voters));
    line("learners", ids(&s.learners));
    for p in &s.peers {
        line(
            &format!("peer_{}", p.id),
            format!(
                "match_index={},next_index={},state={},active={}",
                p.match_index, p.next_index, p.state, p.active
            ),
        );
    }
    if let Some(d) = s.digests.last() {
        line("state_digest", format!("{}@{}", d.digest, d.index));
    }
    let ae = &s.anti_entropy;
    line("anti_entropy_compared_index", ae.compared_index.to_string());
    line(
        "anti_entropy_divergence_total",
        ae.divergence_total.to_string(),
    );
    let divergent: Vec<String> = ae
        .divergent
        .iter()
        .map(|d| format!("{}@{}", d.node, d.index))
        .collect();
    line("anti_entropy_divergent", divergent.join(","));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arrays_inline_and_partial_input() {
        let mut p = RespParser::default();
        let mut buf = BytesMut::from(
            &b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\nPING\r\n*1\r\n$4\r\nPI"[..],
        );
        let a = p.parse(&mut buf).unwrap().unwrap();
        assert_eq!(
            a,
            vec![Bytes::from("SET"), Bytes::from("k"), Bytes::from("vv")]
        );
        assert_eq!(
            p.parse(&mut buf).unwrap().unwrap(),
            vec![Bytes::from("PING")]
        );
        assert_eq!(p.parse(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"NG\r\n");
        assert_eq!(
            p.parse(&mut buf).unwrap().unwrap(),
            vec![Bytes::from("PING")]
        );
        let mut bad = BytesMut::from(&b"*1\r\n$999999999\r\n"[..]);
        assert!(p.parse(&mut bad).is_err());
    }

    #[test]
    fn encodes_replies() {
        let mut out = Vec::new();
        Value::Array(vec![
            Value::Bulk(Some(Bytes::from("a"))),
            Value::Bulk(None),
            Value::Int(3),
        ])
        .write(&mut out);
        assert_eq!(out, b"*3\r\n$1\r\na\r\n$-1\r\n:3\r\n");
    }

    fn encoded(v: &Value, proto: Protocol) -> String {
        let mut out = Vec::new();
        v.encode(proto, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn resp3_types_and_their_resp2_forms() {
        use Protocol::{Resp2, Resp3};
        let map = Value::Map(vec![(
            Value::Bulk(Some(Bytes::from("k"))),
            Value::Set(vec![Value::Simple("a".into())]),
        )]);
        assert_eq!(encoded(&map, Resp3), "%1\r\n$1\r\nk\r\n~1\r\n+a\r\n");
        assert_eq!(encoded(&map, Resp2), "*2\r\n$1\r\nk\r\n*1\r\n+a\r\n");
        assert_eq!(encoded(&Value::Bulk(None), Resp3), "_\r\n");
        assert_eq!(encoded(&Value::Bulk(None), Resp2), "$-1\r\n");
        assert_eq!(encoded(&Value::NullArray, Resp3), "_\r\n");
        assert_eq!(encoded(&Value::NullArray, Resp2), "*-1\r\n");
        assert_eq!(encoded(&Value::Double(1.5), Resp3), ",1.5\r\n");
        assert_eq!(encoded(&Value::Double(1.5), Resp2), "$3\r\n1.5\r\n");
        assert_eq!(encoded(&Value::Double(f64::INFINITY), Resp3), ",inf\r\n");
        assert_eq!(encoded(&Value::Bool(true), Resp3), "#t\r\n");
        assert_eq!(encoded(&Value::Bool(false), Resp2), ":0\r\n");
        let text = Value::Verbatim(Bytes::from("a:1"));
        assert_eq!(encoded(&text, Resp3), "=7\r\ntxt:a:1\r\n");
        assert_eq!(encoded(&text, Resp2), "$3\r\na:1\r\n");
        let push = Value::Push(vec![Value::Int(1)]);
        assert_eq!(encoded(&push, Resp3), ">1\r\n:1\r\n");
        assert_eq!(encoded(&push, Resp2), "*1\r\n:1\r\n");
    }

    fn inline(line: &str) -> Result<Vec<String>, String> {
        split_inline(line.as_bytes())
            .map(|args| {
                args.iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    /// The cases of Redis' sdssplitargs.
    #[test]
    fn inline_commands_split_as_redis_does() {
        assert_eq!(inline("SET a b\r\n").unwrap(), ["SET", "a", "b"]);
        assert_eq!(inline("  SET   a\tb  \n").unwrap(), ["SET", "a", "b"]);
        assert_eq!(
            inline(r#"SET "hello world" 'it''s'"#).map_err(|e| e.contains("unbalanced")),
            Err(true)
        );
        assert_eq!(
            inline(r#"SET "a \"b\" \n\x41\x4" 'c\'d' """#).unwrap(),
            ["SET", "a \"b\" \nAx4", "c'd", ""]
        );
        assert_eq!(inline(r#"SET k"v w" x"#).unwrap(), ["SET", "kv w", "x"]);
        assert_eq!(inline(r#"SET k\n v"#).unwrap(), ["SET", "k\\n", "v"]);
        assert!(inline(r#"SET "abc"#).unwrap_err().contains("unbalanced"));
        assert!(inline(r#"SET 'abc"#).unwrap_err().contains("unbalanced"));
        assert!(inline(r#"SET "a"b"#).unwrap_err().contains("unbalanced"));
        assert_eq!(inline("\r\n").unwrap(), Vec::<String>::new());
        let binary = split_inline(br#"SET "\x00\xff""#).unwrap();
        assert_eq!(&binary[1][..], &[0u8, 0xff]);
    }

    fn limits() -> ParserLimits {
        ParserLimits {
            bulk_bytes_max: 100,
            line_bytes_max: 64,
            request_args_max: 4,
            request_bytes_max: 256,
        }
    }

    fn error_of(input: &[u8]) -> String {
        let mut p = RespParser::new(limits());
        let mut buf = BytesMut::from(input);
        loop {
            match p.parse(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("no error for {:?}", String::from_utf8_lossy(input)),
                Err(e) => return e.to_string(),
            }
        }
    }

    #[test]
    fn every_limit_is_refused_with_its_name() {
        // Megabytes of length digits: refused after a few bytes, not buffered.
        let mut digits = b"*1\r\n$".to_vec();
        digits.extend(std::iter::repeat_n(b'9', 100));
        assert!(error_of(&digits).contains("bulk length line too long"));
        assert!(error_of(b"*99999999999999999999999999\r\n").contains("line too long"));
        assert!(error_of(b"*5\r\n").contains("request_args_max"));
        assert!(error_of(b"*1\r\n$101\r\n").contains("bulk_bytes_max"));
        assert!(error_of(b"*1\r\n$-5\r\n").contains("invalid bulk length"));
        // Three 100-byte bulks pass bulk_bytes_max but not request_bytes_max, and the
        // third is refused from its header, before its bytes arrive.
        let mut big = b"*3\r\n".to_vec();
        for _ in 0..2 {
            big.extend(b"$100\r\n");
            big.extend([b'x'; 100]);
            big.extend(b"\r\n");
        }
        big.extend(b"$100\r\n");
        assert!(error_of(&big).contains("request_bytes_max"));
        assert!(error_of(&[b'a'; 64]).contains("line_bytes_max"));
        assert!(error_of(b"a b c d e\n").contains("request_args_max"));
        assert!(error_of(b"*1\r\n:1\r\n").contains("expected '$'"));
        assert!(error_of(b"*1\r\n$1\r\nab\r\n").contains("not terminated"));
        assert!(error_of(b"*x\r\n").contains("invalid multibulk length"));
    }

    #[test]
    fn a_request_at_each_limit_passes() {
        let mut p = RespParser::new(limits());
        let mut input = b"*2\r\n$100\r\n".to_vec();
        input.extend([b'v'; 100]);
        input.extend(b"\r\n$1\r\nk\r\n");
        let mut buf = BytesMut::from(&input[..]);
        let args = p.parse(&mut buf).unwrap().unwrap();
        assert_eq!(args.len(), 2);
        assert_eq!(args[0].len(), 100);
        assert!(buf.is_empty());
        assert_eq!(p.pending_bytes(), 0);
    }

    /// Encodes `args` as a RESP array.
    fn encode_request(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n", a.len()).as_bytes());
            out.extend(a);
            out.extend(b"\r\n");
        }
        out
    }

    /// Feeds `input` in pieces cut at `cuts` and collects every request, or the error.
    fn feed(input: &[u8], cuts: &[usize]) -> Result<Vec<Vec<Bytes>>, String> {
        let mut p = RespParser::new(ParserLimits {
            bulk_bytes_max: 1 << 10,
            line_bytes_max: 1 << 10,
            request_args_max: 64,
            request_bytes_max: 1 << 14,
        });
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
        ends.sort_unstable();
        ends.push(input.len());
        for end in ends {
            buf.extend_from_slice(&input[at..end.max(at)]);
            at = end.max(at);
            loop {
                match p.parse(&mut buf) {
                    Ok(Some(args)) => out.push(args),
                    Ok(None) => break,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        Ok(out)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// However a stream of valid requests is split across reads, the same requests come
        /// out as from the whole stream at once.
        #[test]
        fn any_split_gives_the_same_requests(
            requests in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 1..6),
                1..6,
            ),
            cuts in proptest::collection::vec(0usize..2_000, 0..12),
        ) {
            let mut input = Vec::new();
            for r in &requests {
                input.extend(encode_request(r));
            }
            input.extend(b"PING  x\r\n");
            let whole = feed(&input, &[]).unwrap();
            let split = feed(&input, &cuts).unwrap();
            proptest::prop_assert_eq!(&whole, &split);
            proptest::prop_assert_eq!(whole.len(), requests.len() + 1);
            for (got, want) in whole.iter().zip(&requests) {
                let want: Vec<Bytes> = want.iter().map(|a| Bytes::copy_from_slice(a)).collect();
                proptest::prop_assert_eq!(got, &want);
            }
        }

        /// Garbage, however split, ends in requests, a wait for more, or an error: never a
        /// panic, and nothing held past the limits.
        #[test]
        fn garbage_never_panics(
            input in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::num::u8::ANY,
                    proptest::sample::select(b"*$\r\n0123456789-".to_vec()),
                ],
                0..600,
            ),
            cuts in proptest::collection::vec(0usize..600, 0..8),
        ) {
            let _ = feed(&input, &cuts);
        }
    }
}
