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

use crate::runtime::AdminOp;

/// Arguments in one request at most.
pub const REQUEST_ARGS_MAX: usize = 1 << 16;
/// Bytes of one bulk string at most.
pub const BULK_BYTES_MAX: usize = 8 << 20;
/// Bytes of one inline command or header line at most.
const LINE_BYTES_MAX: usize = 64 << 10;

/// A malformed request.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(String);

/// Incremental request parser.
#[derive(Debug, Default)]
pub struct RespParser;

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + from)
}

fn parse_int(line: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProtocolError("invalid length".into()))
}

impl RespParser {
    /// Takes one complete request from `buf`, or `None` if more bytes are needed.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        if buf.is_empty() {
            return Ok(None);
        }
        if buf[0] != b'*' {
            return self.parse_inline(buf);
        }
        let Some(end) = find_crlf(buf, 0) else {
            return if buf.len() > LINE_BYTES_MAX {
                Err(ProtocolError("header line too long".into()))
            } else {
                Ok(None)
            };
        };
        let count = parse_int(&buf[1..end])?;
        if count <= 0 {
            buf.advance(end + 2);
            return Ok(Some(Vec::new()));
        }
        if count as usize > REQUEST_ARGS_MAX {
            return Err(ProtocolError("too many arguments".into()));
        }
        // Scan first, consume only once the whole request is there.
        let mut pos = end + 2;
        let mut spans = Vec::with_capacity(count as usize);
        for _ in 0..count {
            if pos >= buf.len() {
                return Ok(None);
            }
            if buf[pos] != b'$' {
                return Err(ProtocolError("expected '$'".into()));
            }
            let Some(line_end) = find_crlf(buf, pos) else {
                return Ok(None);
            };
            let len = parse_int(&buf[pos + 1..line_end])?;
            if len < 0 || len as usize > BULK_BYTES_MAX {
                return Err(ProtocolError("invalid bulk length".into()));
            }
            let start = line_end + 2;
            let stop = start + len as usize;
            if stop + 2 > buf.len() {
                return Ok(None);
            }
            if &buf[stop..stop + 2] != b"\r\n" {
                return Err(ProtocolError("bulk string not terminated".into()));
            }
            spans.push((start, stop));
            pos = stop + 2;
        }
        let frame = buf.split_to(pos).freeze();
        Ok(Some(
            spans.into_iter().map(|(a, b)| frame.slice(a..b)).collect(),
        ))
    }

    fn parse_inline(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            return if buf.len() > LINE_BYTES_MAX {
                Err(ProtocolError("inline command too long".into()))
            } else {
                Ok(None)
            };
        };
        let line = buf.split_to(end + 1).freeze();
        let args: Vec<Bytes> = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| line.slice_ref(s))
            .collect();
        if args.len() > REQUEST_ARGS_MAX {
            return Err(ProtocolError("too many arguments".into()));
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
        KvResponse::Error(e) => Value::Error(format!("ERR {e}")),
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
        let mut p = RespParser;
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
}
