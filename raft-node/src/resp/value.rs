//! Replies: the [`Value`] a command answers and its encoding in the [`Protocol`] the
//! connection speaks (RESP3 types written as their RESP2 equivalents on a RESP2
//! connection). Kept apart from the parser and the command mapping: every reply path
//! (commands, pub/sub pushes, errors) writes through it.

use bytes::Bytes;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
