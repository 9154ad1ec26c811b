//! The request parser: arrays of bulk strings and inline commands, taken from a
//! connection's input buffer incrementally and held to [`ParserLimits`]. Apart from the
//! reply encoding because a request and a reply share no code, and the parser's limits and
//! partial-input states are what its tests dwell on.

use bytes::{Buf, Bytes, BytesMut};

use crate::limits::ClientLimits;

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
