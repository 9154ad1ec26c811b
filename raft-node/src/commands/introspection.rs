//! What `COMMAND` answers: `COMMAND INFO`'s and `COMMAND DOCS`' entries of a spec, and
//! the `COMMAND` subcommands (COUNT, INFO, DOCS, LIST).

use bytes::Bytes;

use super::docs::{parse_syntax, Arg};
use super::{bulk, lookup, CommandSpec, COMMANDS};
use crate::glob;
use crate::resp::Value;

impl CommandSpec {
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
            .filter(|n| glob::matches(pattern, n.as_bytes()))
            .collect(),
        Some(_) => return Value::Error("ERR syntax error".into()),
    };
    Value::Array(keep.into_iter().map(bulk).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
