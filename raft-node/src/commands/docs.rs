//! `COMMAND DOCS`' arguments parsed from a spec's syntax string, and the generated
//! reference in `docs/COMMANDS.md`.

use super::{bulk, CommandSpec, COMMANDS};
use crate::resp::Value;

/// One argument of `COMMAND DOCS`, parsed from a syntax string.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Arg {
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
    pub(super) fn to_value(&self) -> Value {
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
pub(super) fn parse_syntax(syntax: &str) -> Vec<Arg> {
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
}
