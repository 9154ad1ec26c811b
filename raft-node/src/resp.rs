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
use raft_client::wire::{KvCommand, KvError, KvResponse, NodeStatus};

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
        let args: Vec<Bytes> = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| line.slice_ref(s))
            .collect();
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

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$3\r\nfoo` or `$-1` (nil).
    Bulk(Option<Bytes>),
    /// `*2 ...`.
    Array(Vec<Value>),
}

impl Value {
    /// Appends the encoding to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
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
            Value::Bulk(None) => out.extend(b"$-1"),
            Value::Bulk(Some(b)) => {
                out.extend(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Value::Array(items) => {
                out.extend(format!("*{}\r\n", items.len()).as_bytes());
                for v in items {
                    v.write(out);
                }
                return;
            }
        }
        out.extend(b"\r\n");
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
}

impl Parsed {
    /// Whether this goes through the log (a write or an administrative change).
    pub fn is_write(&self) -> bool {
        match self {
            Parsed::Kv(cmd, _) => !cmd.is_read(),
            Parsed::Admin(_) => true,
            Parsed::Reply(_) | Parsed::Info | Parsed::Leader => false,
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
        ("SELECT", 1) if rest[0].as_ref() == b"0" => Parsed::Reply(Value::Simple("OK".into())),
        // redis-cli probes COMMAND DOCS on connect; an empty answer tells it there is
        // nothing to learn. (CONFIG, CLIENT, AUTH and HELLO are the session's: `session.rs`.)
        ("COMMAND", _) => Parsed::Reply(Value::Array(Vec::new())),
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
            "PING" | "ECHO" | "SELECT" | "LEADER" | "GET" | "STALEGET" | "MGET" | "EXISTS" | "SET"
            | "MSET" | "DEL" | "INCR" | "DECR" | "INCRBY" | "DECRBY" | "CAS" | "CASNX"
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
