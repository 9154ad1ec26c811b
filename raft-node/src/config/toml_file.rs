//! Reading the TOML file: [`NodeConfig::from_toml`], whose errors name the field path
//! (`peers[2].addr`) with its line and column, and [`NodeConfig::field_paths`], the list
//! the documentation tests hold the sample file and the reference to. Apart from the
//! settings themselves because locating an error in the text is its own small parser.

use super::{ConfigError, NodeConfig};

impl NodeConfig {
    /// Parses a TOML configuration. An error names the field (`limits.idle_timeout_ms`,
    /// `peers[2].addr`) and the line and column where it is.
    pub fn from_toml(text: &str) -> Result<NodeConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().trim().replace('\n', " ");
            // serde names a missing or unknown field between backticks; a wrong type or
            // value is located by its span instead.
            let named = message
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next());
            let located = e.span().map(|span| locate(text, span.start));
            let field = match (named, &located) {
                (Some(name), Some((_, _, Some(table)))) => format!("{table}.{name}"),
                (Some(name), _) => name.to_string(),
                (None, Some((_, _, _))) => located
                    .as_ref()
                    .and_then(|l| field_at(text, l.0))
                    .unwrap_or_else(|| "config file".to_string()),
                (None, None) => "config file".to_string(),
            };
            ConfigError {
                field,
                message,
                location: located.map(|(line, column, _)| (line, column)),
            }
        })
    }

    /// The path of every field a configuration file may hold (`id`, `limits.idle_timeout_ms`,
    /// `tls.ca_file`, `peers.addr`, ...), as the parser itself knows them.
    pub fn field_paths() -> Vec<String> {
        // serde lists a struct's fields when it refuses an unknown one: asking it keeps this
        // list from ever disagreeing with the structs.
        fn expected(doc: &str) -> Vec<String> {
            let e = toml::from_str::<NodeConfig>(doc).expect_err("an unknown field");
            let m = e.message();
            let list = m.split("expected one of ").nth(1).unwrap_or_default();
            list.split(", ")
                .map(|f| f.trim().trim_matches('`').to_string())
                .filter(|f| !f.is_empty())
                .collect()
        }
        let peers = "id = 1\ndata_dir = \"x\"\n[[peers]]\nid = 1\naddr = \"127.0.0.1:1\"\n";
        let mut out = expected("zz_unknown = 1\n");
        for (table, doc) in [
            ("limits", format!("{peers}[limits]\nzz_unknown = 1\n")),
            (
                "tls",
                format!("{peers}[tls]\nca_file = \"a\"\ncert_file = \"b\"\nkey_file = \"c\"\nzz_unknown = 1\n"),
            ),
            ("peers", format!("{peers}zz_unknown = 1\n")),
        ] {
            out.extend(expected(&doc).into_iter().map(|f| format!("{table}.{f}")));
        }
        out
    }
}

/// Line and column (1-based) of byte `offset` in `text`, and the table the line is in
/// (`limits`, `peers[2]`), if any.
fn locate(text: &str, offset: usize) -> (usize, usize, Option<String>) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column, table_at(text, line))
}

/// The table a line belongs to: the nearest `[name]` above it, or `[[name]]` with its
/// 1-based position among the tables of that name (`peers[2]`).
fn table_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().take(line).collect();
    let (i, header) = lines
        .iter()
        .enumerate()
        .rev()
        .map(|(i, l)| (i, l.trim()))
        .find(|(_, l)| l.starts_with('['))?;
    if let Some(name) = header.strip_prefix("[[").and_then(|h| h.split("]]").next()) {
        let name = name.trim();
        let nth = lines[..=i]
            .iter()
            .filter(|l| {
                l.trim()
                    .strip_prefix("[[")
                    .and_then(|h| h.split("]]").next())
                    .is_some_and(|h| h.trim() == name)
            })
            .count();
        return Some(format!("{name}[{nth}]"));
    }
    header
        .strip_prefix('[')
        .and_then(|h| h.split(']').next())
        .map(|h| h.trim().to_string())
}

/// The dotted path of the key whose value is on `line` (or starts above it, for a value
/// spread over lines).
fn field_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().take(line).collect();
    let (i, key) = lines.iter().enumerate().rev().find_map(|(i, l)| {
        let l = l.trim();
        if l.starts_with('[') && i + 1 == line {
            return Some((i, None));
        }
        let (key, _) = l.split_once('=')?;
        (!l.starts_with('#')).then(|| (i, Some(key.trim().trim_matches('"').to_string())))
    })?;
    let table = table_at(text, i + 1);
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (t, None) => t,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::tests::base;
    use super::*;

    #[test]
    fn toml_errors_name_the_field_line_and_column() {
        // A wrong type, at the top level.
        let text = base().replacen("id = 1\n", "id = 1\ntick_interval_ms = \"fast\"\n", 1);
        let e = NodeConfig::from_toml(&text).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.location),
            ("tick_interval_ms", Some((3, 20))),
            "{e}"
        );
        assert!(e.to_string().contains("line 3, column 20"), "{e}");
        assert!(e.message.contains("expected u64"), "{e}");
        // A wrong type in the second [[peers]] table.
        let text = base().replace("\"127.0.0.1:7002\"", "7002");
        let e = NodeConfig::from_toml(&text).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.location),
            ("peers[2].addr", Some((10, 8))),
            "{e}"
        );
        // An unknown field in [limits].
        let text = format!("{}[limits]\nidle_timeout = 7\n", base());
        let e = NodeConfig::from_toml(&text).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.location),
            ("limits.idle_timeout", Some((12, 1))),
            "{e}"
        );
        assert!(
            e.message.contains("idle_timeout_ms"),
            "the known fields are listed: {e}"
        );
        // A missing field names it.
        let e = NodeConfig::from_toml("id = 1\npeers = []\n").unwrap_err();
        assert_eq!(e.field, "data_dir", "{e}");
        // Broken syntax still gets a line.
        let e = NodeConfig::from_toml("id = 1\ndata_dir = \n").unwrap_err();
        assert_eq!(e.location.map(|l| l.0), Some(2), "{e}");
    }

    const SAMPLE: &str = include_str!("../../../docs/raft-node.sample.toml");
    const REFERENCE: &str = include_str!("../../../docs/configuration.md");

    /// The configuration reference lists every field, in its table of fields.
    #[test]
    fn the_configuration_reference_lists_every_field() {
        for field in NodeConfig::field_paths() {
            if ["peers", "tls", "limits"].contains(&field.as_str()) {
                continue;
            }
            assert!(
                REFERENCE.contains(&format!("| `{field}` |")),
                "docs/configuration.md lacks a row for `{field}`"
            );
        }
    }

    /// The sample file parses, validates, holds every default, and names every field.
    #[test]
    fn the_sample_config_is_complete_and_states_the_defaults() {
        let sample = NodeConfig::from_toml(SAMPLE).unwrap();
        sample.validate().unwrap();
        let defaults =
            NodeConfig::with_defaults(sample.id, sample.data_dir.clone(), sample.peers.clone());
        assert_eq!(
            toml::to_string(&sample).unwrap(),
            toml::to_string(&defaults).unwrap(),
            "the sample's settings must be the defaults"
        );
        // Settings written as comments (`# key = ...`) count: those have no default.
        let mut table = String::new();
        let mut named = BTreeSet::new();
        for line in SAMPLE.lines() {
            let line = line.trim();
            let code = line.strip_prefix("# ").unwrap_or(line);
            if let Some(h) = code.strip_prefix('[') {
                table = h.trim_matches(['[', ']']).to_string();
                named.insert(table.clone());
            } else if let Some((key, _)) = code.split_once(" = ") {
                if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    named.insert(if table.is_empty() {
                        key.to_string()
                    } else {
                        format!("{table}.{key}")
                    });
                }
            }
        }
        let fields = NodeConfig::field_paths();
        assert!(fields.len() > 40, "{fields:?}");
        for field in &fields {
            assert!(named.contains(field), "the sample config lacks `{field}`");
        }
        for name in &named {
            assert!(
                fields.contains(name),
                "the sample config names unknown `{name}`"
            );
        }
    }
}
