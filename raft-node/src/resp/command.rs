//! The mapping of a parsed request onto what serves it ([`Parsed`]), and the RESP replies
//! for the state machine's answers and for INFO. Kept apart from the wire format: this is
//! where Redis command names, arities and error texts meet the key-value commands.

use bytes::Bytes;
use raft_proto::{KvCommand, KvError, KvResponse, NodeStatus};

use super::Value;
use crate::runtime::AdminOp;

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
        ("PUBLISH", 2) => kv(KvCommand::Publish {
            channel: rest[0].clone(),
            message: rest[1].clone(),
        }),
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
