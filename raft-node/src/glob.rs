//! Redis' glob patterns (KEYS, SCAN MATCH, PSUBSCRIBE): `*` any run of bytes, `?` one
//! byte, `[abc]`, `[^abc]`, `[a-z]` (ends in either order), `\x` the byte `x`, on bytes.
//!
//! Hand-written because the maintained glob crates (`glob`, `globset`, `wildmatch`) follow
//! path or shell rules (`*` stops at `/`, no `[^...]`, or no classes) rather than Redis'
//! `stringmatchlen`, whose quirks this follows: a `-` range is read whenever two more
//! pattern bytes follow (`[a-]` is the range `a`..`]`), a class left open at the end of the
//! pattern is closed there, a `\` at the very end is a literal backslash. Matching is the
//! greedy algorithm that backtracks to the last `*` only, so a hostile pattern costs at most
//! pattern x key steps (Redis' recursive matcher needed a nesting guard for the same).

/// A compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Star,
    Any,
    Byte(u8),
    Class {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
}

impl Token {
    fn matches(&self, b: u8) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Byte(x) => *x == b,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= b && b <= hi) != *negated
            }
        }
    }
}

impl Pattern {
    /// Compiles `pattern`; every byte string is a pattern.
    pub fn new(pattern: &[u8]) -> Pattern {
        let p = pattern;
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < p.len() {
            match p[i] {
                b'*' => {
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                    i += 1;
                }
                b'?' => {
                    tokens.push(Token::Any);
                    i += 1;
                }
                b'[' => {
                    i += 1;
                    let negated = p.get(i) == Some(&b'^');
                    if negated {
                        i += 1;
                    }
                    let mut ranges = Vec::new();
                    loop {
                        let left = p.len() - i;
                        if left == 0 {
                            break;
                        }
                        if p[i] == b'\\' && left >= 2 {
                            ranges.push((p[i + 1], p[i + 1]));
                            i += 2;
                        } else if p[i] == b']' {
                            i += 1;
                            break;
                        } else if left >= 3 && p[i + 1] == b'-' {
                            let (a, b) = (p[i], p[i + 2]);
                            ranges.push((a.min(b), a.max(b)));
                            i += 3;
                        } else {
                            ranges.push((p[i], p[i]));
                            i += 1;
                        }
                    }
                    tokens.push(Token::Class { negated, ranges });
                }
                b'\\' if i + 1 < p.len() => {
                    tokens.push(Token::Byte(p[i + 1]));
                    i += 2;
                }
                b => {
                    tokens.push(Token::Byte(b));
                    i += 1;
                }
            }
        }
        Pattern { tokens }
    }

    /// Whether the pattern is `*` (or `**`...): matches everything, nothing to test.
    pub fn matches_all(&self) -> bool {
        self.tokens == [Token::Star]
    }

    /// The bytes every match starts with (the literal bytes before the first wildcard),
    /// so that a search can start at them in an ordered map.
    pub fn literal_prefix(&self) -> Vec<u8> {
        self.tokens
            .iter()
            .map_while(|t| match t {
                Token::Byte(b) => Some(*b),
                _ => None,
            })
            .collect()
    }

    /// Whether `s` matches the whole pattern.
    pub fn matches(&self, s: &[u8]) -> bool {
        let t = &self.tokens;
        let (mut p, mut i) = (0usize, 0usize);
        // The last `*` seen and the first byte it does not cover yet.
        let mut star: Option<(usize, usize)> = None;
        while i < s.len() {
            if p < t.len() {
                if t[p] == Token::Star {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                if t[p].matches(s[i]) {
                    p += 1;
                    i += 1;
                    continue;
                }
            }
            match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            }
        }
        while p < t.len() && t[p] == Token::Star {
            p += 1;
        }
        p == t.len()
    }
}

/// Whether `s` matches `pattern` (compiling it each time; see [`Pattern`]).
pub fn matches(pattern: &[u8], s: &[u8]) -> bool {
    Pattern::new(pattern).matches(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_redis_rules() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "hllo", true),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hello", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h[a-b]llo", "hcllo", false),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("[\\]]", "]", true),
            ("a[bc", "ab", true),
            ("a[bc", "ad", false),
            ("[a-]", "^", true),
            ("[a-]", "b", false),
            ("ab\\", "ab\\", true),
            ("user:*:name", "user:42:name", true),
            ("user:*:name", "user:42:age", false),
            ("*a*b*c", "xxaxxbxxc", true),
            ("*a*b*c", "xxaxxcxxb", false),
            ("a*", "a", true),
            ("", "", true),
            ("", "a", false),
        ];
        for &(p, s, want) in cases {
            assert_eq!(matches(p.as_bytes(), s.as_bytes()), want, "{p:?} ~ {s:?}");
        }
    }

    /// The cases of the matcher `COMMAND LIST` and `CONFIG GET` used before they shared
    /// this one. It answered `[` ~ `[` true; Redis (7.0.15, `KEYS [` with a key `[`)
    /// answers no match: an unclosed class is closed at the end of the pattern.
    #[test]
    fn follows_redis_rules_for_command_names() {
        for (p, t, want) in [
            ("*", "", true),
            ("a*", "abc", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("h[ae]llo", "hello", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h\\*llo", "h*llo", true),
            ("*x*y*z", "axbyc", false),
            ("[", "[", false),
            ("a[", "a[", false),
            ("\\[", "[", true),
        ] {
            assert_eq!(matches(p.as_bytes(), t.as_bytes()), want, "{p} {t}");
        }
    }

    #[test]
    fn a_pathological_pattern_takes_bounded_steps() {
        // Exponential for a naive recursive matcher.
        let pattern = "*a".repeat(50) + "b";
        let s = "a".repeat(5_000);
        assert!(!matches(pattern.as_bytes(), s.as_bytes()));
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        assert_eq!(Pattern::new(b"user:\\*x*").literal_prefix(), b"user:*x");
        assert_eq!(Pattern::new(b"*").literal_prefix(), b"");
        assert!(Pattern::new(b"**").matches_all());
        assert!(!Pattern::new(b"a*").matches_all());
    }
}
