//! RESP parsing of the string, key and expiry commands (SET with options, SETNX, GETSET,
//! GETDEL, GETEX, APPEND, STRLEN, GETRANGE, SETRANGE, INCRBYFLOAT, MSETNX, UNLINK, TYPE,
//! RENAME, RENAMENX, KEYS, SCAN, DBSIZE, FLUSHDB, FLUSHALL, EXPIRE and its variants, TTL,
//! PTTL, EXPIRETIME, PEXPIRETIME, PERSIST) onto [`KvCommand`]s, with Redis' error replies
//! for bad arguments; and the RESP replies of the answers only these commands give.
//! Called from [`crate::resp::to_command`] before its own table.

use bytes::Bytes;
use raft_proto::{ExpireCondition, Expiry, KvCommand, KvResponse, SetCondition};

use crate::resp::{Parsed, Value};

fn error(text: impl Into<String>) -> Parsed {
    Parsed::Reply(Value::Error(text.into()))
}

fn syntax() -> Parsed {
    error("ERR syntax error")
}

fn not_integer() -> Parsed {
    error("ERR value is not an integer or out of range")
}

fn wrong_args(name: &str) -> Parsed {
    error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

fn int(b: &Bytes) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn kv(c: KvCommand) -> Parsed {
    Parsed::Kv(c, true)
}

fn is(arg: &Bytes, word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// Parses the time argument of EX / PX / EXAT / PXAT (`unit_ms` 1000 or 1); `absolute` for
/// the `AT` forms. Redis refuses a time that is not positive or overflows in milliseconds.
fn expiry_arg(arg: &Bytes, unit_ms: i64, absolute: bool, command: &str) -> Result<Expiry, Parsed> {
    let n = int(arg).ok_or_else(not_integer)?;
    let invalid = || error(format!("ERR invalid expire time in '{command}' command"));
    if n <= 0 {
        return Err(invalid());
    }
    let ms = n.checked_mul(unit_ms).ok_or_else(invalid)? as u64;
    Ok(if absolute {
        Expiry::At(ms)
    } else {
        Expiry::In(ms)
    })
}

/// The command `name` (upper case) with arguments `rest`, if it is one of this module's.
pub fn to_command(name: &str, rest: &[Bytes]) -> Option<Parsed> {
    let n = rest.len();
    let key = || rest[0].clone();
    Some(match name {
        "SET" if n >= 2 => set(rest),
        "SETNX" if n == 2 => kv(KvCommand::SetNx {
            key: key(),
            value: rest[1].clone(),
        }),
        "GETSET" if n == 2 => kv(KvCommand::SetWith {
            key: key(),
            value: rest[1].clone(),
            condition: SetCondition::Always,
            get: true,
            expiry: Expiry::Persist,
        }),
        "GETDEL" if n == 1 => kv(KvCommand::GetDel { key: key() }),
        "GETEX" if n >= 1 => getex(rest),
        "APPEND" if n == 2 => kv(KvCommand::Append {
            key: key(),
            value: rest[1].clone(),
        }),
        "STRLEN" if n == 1 => kv(KvCommand::Strlen { key: key() }),
        "GETRANGE" | "SUBSTR" if n == 3 => match (int(&rest[1]), int(&rest[2])) {
            (Some(start), Some(end)) => kv(KvCommand::GetRange {
                key: key(),
                start,
                end,
            }),
            _ => not_integer(),
        },
        "SETRANGE" if n == 3 => match int(&rest[1]) {
            Some(offset) if offset >= 0 => kv(KvCommand::SetRange {
                key: key(),
                offset: offset as u64,
                value: rest[2].clone(),
            }),
            Some(_) => error("ERR offset is out of range"),
            None => not_integer(),
        },
        "INCRBYFLOAT" if n == 2 => {
            let valid = std::str::from_utf8(&rest[1])
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .is_some_and(|x| !x.is_nan());
            if !valid {
                return Some(error("ERR value is not a valid float"));
            }
            kv(KvCommand::IncrByFloat {
                key: key(),
                by: rest[1].clone(),
            })
        }
        "MSETNX" if n >= 2 && n % 2 == 0 => kv(KvCommand::MSetNx {
            pairs: rest
                .chunks(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect(),
        }),
        "UNLINK" if n >= 1 => kv(KvCommand::Del {
            keys: rest.to_vec(),
        }),
        "TYPE" if n == 1 => kv(KvCommand::Type { key: key() }),
        "RENAME" | "RENAMENX" if n == 2 => kv(KvCommand::Rename {
            from: key(),
            to: rest[1].clone(),
            nx: name == "RENAMENX",
        }),
        "KEYS" if n == 1 => kv(KvCommand::Keys { pattern: key() }),
        "SCAN" if n >= 1 => scan(rest),
        "DBSIZE" if n == 0 => kv(KvCommand::DbSize),
        "FLUSHDB" | "FLUSHALL" if n <= 1 => {
            if n == 1 && !is(&rest[0], "ASYNC") && !is(&rest[0], "SYNC") {
                return Some(syntax());
            }
            kv(KvCommand::FlushAll)
        }
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" if n >= 2 => expire(name, rest),
        "TTL" | "PTTL" if n == 1 => kv(KvCommand::Ttl {
            key: key(),
            millis: name == "PTTL",
        }),
        "EXPIRETIME" | "PEXPIRETIME" if n == 1 => kv(KvCommand::ExpireTime {
            key: key(),
            millis: name == "PEXPIRETIME",
        }),
        "PERSIST" if n == 1 => kv(KvCommand::Persist { key: key() }),
        "SET" | "SETNX" | "GETSET" | "GETDEL" | "GETEX" | "APPEND" | "STRLEN" | "GETRANGE"
        | "SUBSTR" | "SETRANGE" | "INCRBYFLOAT" | "MSETNX" | "UNLINK" | "TYPE" | "RENAME"
        | "RENAMENX" | "KEYS" | "SCAN" | "DBSIZE" | "FLUSHDB" | "FLUSHALL" | "EXPIRE"
        | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" | "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME"
        | "PERSIST" => wrong_args(name),
        _ => return None,
    })
}

/// SET key value [NX | XX] [GET] [EX s | PX ms | EXAT s | PXAT ms | KEEPTTL].
fn set(rest: &[Bytes]) -> Parsed {
    let (key, value) = (rest[0].clone(), rest[1].clone());
    if rest.len() == 2 {
        return kv(KvCommand::Set { key, value });
    }
    let mut condition = SetCondition::Always;
    let mut get = false;
    let mut expiry = None;
    let mut i = 2;
    while i < rest.len() {
        let arg = &rest[i];
        let next = rest.get(i + 1);
        if is(arg, "NX") || is(arg, "XX") {
            if condition != SetCondition::Always {
                return syntax();
            }
            condition = if is(arg, "NX") {
                SetCondition::IfAbsent
            } else {
                SetCondition::IfPresent
            };
        } else if is(arg, "GET") {
            get = true;
        } else if is(arg, "KEEPTTL") {
            if expiry.is_some() {
                return syntax();
            }
            expiry = Some(Expiry::Keep);
        } else if let Some((unit_ms, absolute)) = time_option(arg) {
            let (Some(t), None) = (next, expiry) else {
                return syntax();
            };
            match expiry_arg(t, unit_ms, absolute, "set") {
                Ok(e) => expiry = Some(e),
                Err(reply) => return reply,
            }
            i += 1;
        } else {
            return syntax();
        }
        i += 1;
    }
    kv(KvCommand::SetWith {
        key,
        value,
        condition,
        get,
        expiry: expiry.unwrap_or(Expiry::Persist),
    })
}

/// EX, PX, EXAT, PXAT: `(unit in ms, absolute)`.
fn time_option(arg: &Bytes) -> Option<(i64, bool)> {
    [
        ("EX", 1000, false),
        ("PX", 1, false),
        ("EXAT", 1000, true),
        ("PXAT", 1, true),
    ]
    .into_iter()
    .find(|(w, ..)| is(arg, w))
    .map(|(_, unit, absolute)| (unit, absolute))
}

/// GETEX key [EX s | PX ms | EXAT s | PXAT ms | PERSIST]. Without an option it is a GET.
fn getex(rest: &[Bytes]) -> Parsed {
    let key = rest[0].clone();
    let expiry = match &rest[1..] {
        [] => return kv(KvCommand::Get { key }),
        [p] if is(p, "PERSIST") => Expiry::Persist,
        [opt, t] => match time_option(opt) {
            Some((unit_ms, absolute)) => match expiry_arg(t, unit_ms, absolute, "getex") {
                Ok(e) => e,
                Err(reply) => return reply,
            },
            None => return syntax(),
        },
        _ => return syntax(),
    };
    kv(KvCommand::GetEx { key, expiry })
}

/// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type].
fn scan(rest: &[Bytes]) -> Parsed {
    let Some(cursor) = std::str::from_utf8(&rest[0])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return error("ERR invalid cursor");
    };
    let mut pattern = None;
    let mut count = 10;
    let mut type_name = None;
    let mut options = rest[1..].chunks(2);
    for pair in options.by_ref() {
        let [opt, v] = pair else {
            return syntax();
        };
        if is(opt, "MATCH") {
            pattern = Some(v.clone());
        } else if is(opt, "COUNT") {
            match int(v) {
                Some(c) if c >= 1 => count = c as u64,
                Some(_) => return syntax(),
                None => return not_integer(),
            }
        } else if is(opt, "TYPE") {
            type_name = Some(v.clone());
        } else {
            return syntax();
        }
    }
    kv(KvCommand::Scan {
        cursor,
        pattern,
        count,
        type_name,
    })
}

/// EXPIRE key seconds [NX | XX | GT | LT], and PEXPIRE, EXPIREAT, PEXPIREAT.
fn expire(name: &str, rest: &[Bytes]) -> Parsed {
    let lower = name.to_ascii_lowercase();
    let Some(n) = int(&rest[1]) else {
        return not_integer();
    };
    let unit_ms = if name.starts_with('P') { 1 } else { 1000 };
    let Some(ms) = n.checked_mul(unit_ms) else {
        return error(format!("ERR invalid expire time in '{lower}' command"));
    };
    let when = match (name.ends_with("AT"), ms) {
        // A time at or before now: the key is deleted (Redis does the same).
        (_, ms) if ms < 0 => Expiry::At(0),
        (true, ms) => Expiry::At(ms as u64),
        (false, ms) => Expiry::In(ms as u64),
    };
    let mut condition = ExpireCondition::Always;
    for opt in &rest[2..] {
        let c = if is(opt, "NX") {
            ExpireCondition::Nx
        } else if is(opt, "XX") {
            ExpireCondition::Xx
        } else if is(opt, "GT") {
            ExpireCondition::Gt
        } else if is(opt, "LT") {
            ExpireCondition::Lt
        } else {
            return error(format!(
                "ERR Unsupported option {}",
                String::from_utf8_lossy(opt)
            ));
        };
        condition = match (condition, c) {
            (ExpireCondition::Always, c) => c,
            (a, b) if a == b => a,
            (ExpireCondition::Nx, _) | (_, ExpireCondition::Nx) => {
                return error("ERR NX and XX, GT or LT options at the same time are not compatible")
            }
            (ExpireCondition::Gt, ExpireCondition::Lt)
            | (ExpireCondition::Lt, ExpireCondition::Gt) => {
                return error("ERR GT and LT options at the same time are not compatible")
            }
            // XX with GT: GT already needs a deadline. XX with LT: LT among keys with one.
            (ExpireCondition::Xx | ExpireCondition::Gt, ExpireCondition::Gt)
            | (ExpireCondition::Gt, ExpireCondition::Xx) => ExpireCondition::Gt,
            (_, _) => ExpireCondition::XxLt,
        };
    }
    kv(KvCommand::Expire {
        key: rest[0].clone(),
        when,
        condition,
    })
}

/// The RESP reply of the answers only this module's commands give (`None` for the others).
pub fn reply(r: &KvResponse) -> Option<Value> {
    Some(match r {
        KvResponse::Text(s) => Value::Simple(s.clone()),
        KvResponse::Keys(keys) => {
            Value::Array(keys.iter().map(|k| Value::Bulk(Some(k.clone()))).collect())
        }
        KvResponse::Scan { cursor, keys } => Value::Array(vec![
            Value::Bulk(Some(Bytes::from(cursor.to_string()))),
            Value::Array(keys.iter().map(|k| Value::Bulk(Some(k.clone()))).collect()),
        ]),
        KvResponse::Versions(vs) => Value::Array(
            vs.iter()
                .map(|v| Value::Int(i64::try_from(*v).unwrap_or(i64::MAX)))
                .collect(),
        ),
        // EXEC's nil.
        KvResponse::Aborted => Value::Bulk(None),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Parsed {
        let args: Vec<Bytes> = line
            .split(' ')
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect();
        crate::resp::to_command(&args)
    }

    fn command(line: &str) -> KvCommand {
        match parse(line) {
            Parsed::Kv(c, _) => c,
            Parsed::Reply(v) => panic!("{line}: {v:?}"),
            _ => panic!("{line}: not a command"),
        }
    }

    fn refusal(line: &str) -> String {
        match parse(line) {
            Parsed::Reply(Value::Error(e)) => e,
            _ => panic!("{line}: accepted"),
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn set_options_parse_as_redis_reads_them() {
        assert_eq!(
            command("SET k v"),
            KvCommand::Set {
                key: b("k"),
                value: b("v")
            }
        );
        assert_eq!(
            command("set k v nx get px 300"),
            KvCommand::SetWith {
                key: b("k"),
                value: b("v"),
                condition: SetCondition::IfAbsent,
                get: true,
                expiry: Expiry::In(300),
            }
        );
        assert_eq!(
            command("SET k v XX EXAT 10"),
            KvCommand::SetWith {
                key: b("k"),
                value: b("v"),
                condition: SetCondition::IfPresent,
                get: false,
                expiry: Expiry::At(10_000),
            }
        );
        assert!(matches!(
            command("SET k v KEEPTTL"),
            KvCommand::SetWith {
                expiry: Expiry::Keep,
                ..
            }
        ));
        assert_eq!(refusal("SET k v NX XX"), "ERR syntax error");
        assert_eq!(refusal("SET k v EX 1 PX 1"), "ERR syntax error");
        assert_eq!(refusal("SET k v EX"), "ERR syntax error");
        assert_eq!(refusal("SET k v KEEPTTL EX 1"), "ERR syntax error");
        assert_eq!(refusal("SET k v BOGUS"), "ERR syntax error");
        assert_eq!(
            refusal("SET k v EX 0"),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(
            refusal("SET k v EX 9223372036854775807"),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(
            refusal("SET k v PX x"),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            refusal("SET k"),
            "ERR wrong number of arguments for 'set' command"
        );
    }

    #[test]
    fn key_commands_parse() {
        assert_eq!(
            command("GETSET k v"),
            KvCommand::SetWith {
                key: b("k"),
                value: b("v"),
                condition: SetCondition::Always,
                get: true,
                expiry: Expiry::Persist,
            }
        );
        assert_eq!(command("GETEX k"), KvCommand::Get { key: b("k") });
        assert_eq!(
            command("GETEX k PERSIST"),
            KvCommand::GetEx {
                key: b("k"),
                expiry: Expiry::Persist
            }
        );
        assert_eq!(
            command("GETEX k EX 2"),
            KvCommand::GetEx {
                key: b("k"),
                expiry: Expiry::In(2_000)
            }
        );
        assert_eq!(refusal("GETEX k EX 2 PX 3"), "ERR syntax error");
        assert_eq!(
            command("GETRANGE k 0 -1"),
            KvCommand::GetRange {
                key: b("k"),
                start: 0,
                end: -1
            }
        );
        assert_eq!(refusal("SETRANGE k -1 v"), "ERR offset is out of range");
        assert_eq!(
            refusal("INCRBYFLOAT k abc"),
            "ERR value is not a valid float"
        );
        assert_eq!(
            command("SCAN 0 MATCH a* COUNT 5 TYPE string"),
            KvCommand::Scan {
                cursor: 0,
                pattern: Some(b("a*")),
                count: 5,
                type_name: Some(b("string")),
            }
        );
        assert_eq!(refusal("SCAN x"), "ERR invalid cursor");
        assert_eq!(refusal("SCAN 0 COUNT 0"), "ERR syntax error");
        assert_eq!(refusal("SCAN 0 MATCH"), "ERR syntax error");
        assert_eq!(command("FLUSHALL ASYNC"), KvCommand::FlushAll);
        assert_eq!(refusal("FLUSHDB NOW"), "ERR syntax error");
        assert_eq!(
            command("UNLINK a b"),
            KvCommand::Del {
                keys: vec![b("a"), b("b")]
            }
        );
        assert_eq!(
            refusal("MSETNX a 1 b"),
            "ERR wrong number of arguments for 'msetnx' command"
        );
        assert_eq!(
            command("RENAMENX a b"),
            KvCommand::Rename {
                from: b("a"),
                to: b("b"),
                nx: true
            }
        );
    }

    #[test]
    fn expire_options_parse_with_redis_errors() {
        assert_eq!(
            command("EXPIRE k 10 NX"),
            KvCommand::Expire {
                key: b("k"),
                when: Expiry::In(10_000),
                condition: ExpireCondition::Nx
            }
        );
        assert_eq!(
            command("PEXPIREAT k 1234 GT"),
            KvCommand::Expire {
                key: b("k"),
                when: Expiry::At(1234),
                condition: ExpireCondition::Gt
            }
        );
        assert_eq!(
            command("EXPIRE k -5"),
            KvCommand::Expire {
                key: b("k"),
                when: Expiry::At(0),
                condition: ExpireCondition::Always
            }
        );
        assert_eq!(
            refusal("EXPIRE k 1 NX XX"),
            "ERR NX and XX, GT or LT options at the same time are not compatible"
        );
        assert_eq!(
            refusal("EXPIRE k 1 GT LT"),
            "ERR GT and LT options at the same time are not compatible"
        );
        assert_eq!(refusal("EXPIRE k 1 FOO"), "ERR Unsupported option FOO");
        assert_eq!(
            refusal("EXPIRE k 9223372036854775807"),
            "ERR invalid expire time in 'expire' command"
        );
        assert_eq!(
            command("PTTL k"),
            KvCommand::Ttl {
                key: b("k"),
                millis: true
            }
        );
    }

    #[test]
    fn new_answers_have_their_resp_shapes() {
        let mut out = Vec::new();
        crate::resp::kv_reply(KvResponse::Scan {
            cursor: 42,
            keys: vec![b("a")],
        })
        .write(&mut out);
        assert_eq!(out, b"*2\r\n$2\r\n42\r\n*1\r\n$1\r\na\r\n");
        let mut out = Vec::new();
        crate::resp::kv_reply(KvResponse::Text("string".into())).write(&mut out);
        assert_eq!(out, b"+string\r\n");
    }
}
