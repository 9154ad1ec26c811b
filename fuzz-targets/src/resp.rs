//! RESP requests as a client sends them: [`RespParser::parse`] over the whole input and over
//! the same bytes arriving in pieces (the two must agree), then [`resp::to_command`] on
//! every request and the encoding of the replies it answers itself.

use bytes::{Bytes, BytesMut};
use raft_node::resp::{self, Parsed, RespParser};

/// Tokens of the protocol, for the stable mutator.
pub const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"*",
    b"$",
    b"*1\r\n",
    b"$-1\r\n",
    b"*-1\r\n",
    b"*0\r\n",
    b"$0\r\n\r\n",
    b"*2147483648\r\n",
    b"$9223372036854775807\r\n",
    b"*65537\r\n",
    b"$8388609\r\n",
    b"SET",
    b"GET",
    b"MGET",
    b"MSET",
    b"INCRBY",
    b"CAS",
    b"RAFT.PROMOTE",
    b"PING",
    b"\n",
    b" ",
    b"\"",
    b"-9223372036854775808",
];

/// Requests taken before the parser stopped, and whether it stopped on an error.
struct Parse {
    requests: Vec<Vec<Bytes>>,
    error: bool,
}

/// Feeds `data` to one parser `piece` bytes at a time, taking every request it yields.
fn parse_in_pieces(data: &[u8], piece: usize) -> Parse {
    let mut parser = RespParser::default();
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    let mut fed = 0;
    // Input consumed when the last request was taken: each request consumes some.
    let mut consumed_at_last = 0;
    for chunk in data.chunks(piece.max(1)) {
        buf.extend_from_slice(chunk);
        fed += chunk.len();
        for _ in 0..=data.len() {
            match parser.parse(&mut buf) {
                Ok(Some(args)) => {
                    let consumed = fed - buf.len();
                    assert!(consumed > consumed_at_last, "a request consumed no input");
                    consumed_at_last = consumed;
                    requests.push(args);
                }
                Ok(None) => break,
                Err(_) => {
                    return Parse {
                        requests,
                        error: true,
                    }
                }
            }
        }
    }
    Parse {
        requests,
        error: false,
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let whole = parse_in_pieces(data, data.len());
    // Pieces of 1 to 16 bytes, chosen by the input so that the fuzzer explores them.
    let piece = 1 + usize::from(data.last().copied().unwrap_or(0) % 16);
    let pieces = parse_in_pieces(data, piece);
    // A request parsed from the whole input is parsed the same when its bytes trickle in,
    // up to the first error either way (a limit can trip earlier on a partial request).
    let common = whole.requests.len().min(pieces.requests.len());
    assert_eq!(
        whole.requests[..common],
        pieces.requests[..common],
        "pieces of {piece} bytes parse differently"
    );
    if !whole.error && !pieces.error {
        assert_eq!(whole.requests.len(), pieces.requests.len());
    }
    for args in &whole.requests {
        let parsed = resp::to_command(args);
        let _ = parsed.is_write();
        if let Parsed::Reply(v) = parsed {
            let mut out = Vec::new();
            v.write(&mut out);
            assert!(!out.is_empty());
        }
    }
}

/// Seeds: every command the node knows, as arrays and inline, and pipelines.
pub fn seeds() -> Vec<Vec<u8>> {
    fn array(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n{a}\r\n", a.len()).into_bytes());
        }
        out
    }
    let commands: &[&[&str]] = &[
        &["PING"],
        &["PING", "hello"],
        &["ECHO", "x"],
        &["SET", "k", "v"],
        &["SET", "k", "v", "EX", "10"],
        &["GET", "k"],
        &["STALEGET", "k"],
        &["MGET", "a", "b", "c"],
        &["MSET", "a", "1", "b", "2"],
        &["DEL", "a", "b"],
        &["EXISTS", "a"],
        &["INCR", "n"],
        &["DECRBY", "n", "-9223372036854775808"],
        &["INCRBY", "n", "5"],
        &["CAS", "k", "v", "w"],
        &["CASNX", "k", "v"],
        &["INFO"],
        &["LEADER"],
        &["SELECT", "0"],
        &["COMMAND", "DOCS"],
        &["CONFIG", "GET", "save"],
        &["CLIENT", "SETNAME", "x"],
        &["RAFT.TRANSFER", "2"],
        &["RAFT.PROMOTE", "97"],
        &["AUTH", "user", "password"],
        &["HELLO", "3", "AUTH", "user", "password"],
        &["QUIT"],
    ];
    let mut seeds: Vec<Vec<u8>> = commands.iter().map(|c| array(c)).collect();
    seeds.push(b"PING\r\n".to_vec());
    seeds.push(b"SET k \"v\"\r\nGET k\n".to_vec());
    seeds.push(b"*0\r\n*-1\r\n".to_vec());
    seeds.push(b"*1\r\n$-1\r\n".to_vec());
    let mut pipeline = Vec::new();
    for c in commands.iter().take(8) {
        pipeline.extend(array(c));
    }
    seeds.push(pipeline);
    seeds
}
