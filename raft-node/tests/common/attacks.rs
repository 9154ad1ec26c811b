//! The attacks of issue #13 ("Security and hostile input"), each a function of its sizes,
//! and what a hostile-client check needs around them: a RESP client, a SET/GET round trip,
//! `INFO`, and a process's resident memory.
//!
//! One definition serves two callers: `raft-node/tests/hostile.rs` runs each attack at sizes
//! that fit a CI machine, and `cargo xtask attacks` (which includes this file by path) runs
//! them at the sizes and prints the table. So this file uses only std and crates both
//! have (raft-core, raft-net, bytes, raft-testkit), blocking sockets with timeouts, and every loop is bounded
//! in count and in time. Addresses are the caller's; callers use 127.0.0.1 only.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Connect, read and write timeout of one socket operation.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a check keeps retrying a SET/GET round trip after an attack.
pub const SERVE_WITHIN: Duration = Duration::from_secs(5);
/// Bytes of one write of a streamed attack.
const WRITE_CHUNK_BYTES: usize = 64 << 10;
/// Bytes of a reply kept to describe it (the rest is counted and dropped).
const REPLY_HEAD_BYTES_MAX: usize = 200;

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    raft_testkit::procfs::status_kib(pid, "VmRSS")
}

/// The most resident memory process `pid` has had so far, in KiB (`VmHWM`): the peak of an
/// attack however short, where sampling `VmRSS` could miss it.
pub fn rss_peak_kib(pid: u32) -> Option<u64> {
    raft_testkit::procfs::status_kib(pid, "VmHWM")
}

/// `kib` in MiB, for messages and tables.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Credentials a well-behaved client presents (`AUTH [user] password`).
#[derive(Clone, Debug)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: String,
}

/// The password of the `default` user (an admin) in [`write_auth_file`]'s file.
pub const ADMIN_PASSWORD: &str = "hostile-admin-password";
/// `printf %s hostile-admin-password | sha256sum`
const ADMIN_PASSWORD_SHA256: &str =
    "4d9c75a1b859f615a16dd20f70d22708ca2869ee67dc190f0addfff62100f62f";

/// Writes an auth file (`--auth-file`) into `dir`: the `default` user is an admin with
/// [`ADMIN_PASSWORD`], and the nodes share an internal password. Returns its path and the
/// credentials a well-behaved client presents.
pub fn write_auth_file(dir: &std::path::Path) -> io::Result<(std::path::PathBuf, Credentials)> {
    let path = dir.join("auth.toml");
    std::fs::write(
        &path,
        format!(
            "internal_password = \"hostile-internal-password\"\n\n[[users]]\nname = \"default\"\n\
             role = \"admin\"\npassword_sha256 = \"{ADMIN_PASSWORD_SHA256}\"\n"
        ),
    )?;
    Ok((
        path,
        Credentials {
            user: None,
            password: ADMIN_PASSWORD.into(),
        },
    ))
}

/// A RESP reply, as far as the checks look at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// A short description: the error or status text, or the reply's kind and size.
    pub fn describe(&self) -> String {
        match self {
            Reply::Simple(s) => format!("+{s}"),
            Reply::Error(e) => format!("-{e}"),
            Reply::Int(i) => format!(":{i}"),
            Reply::Bulk(None) => "nil".into(),
            Reply::Bulk(Some(b)) => format!("bulk of {} bytes", b.len()),
            Reply::Array(None) => "nil array".into(),
            Reply::Array(Some(a)) => format!("array of {}", a.len()),
        }
    }
}

/// The bytes of one RESP command.
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A blocking RESP2 client with timeouts on every operation.
pub struct Resp {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Resp {
    /// Connects and, given credentials, authenticates (an error reply fails the connect).
    pub fn connect(addr: SocketAddr, auth: Option<&Credentials>) -> io::Result<Resp> {
        let mut c = Resp {
            stream: connect(addr)?,
            buf: Vec::new(),
        };
        if let Some(cred) = auth {
            let reply = match &cred.user {
                Some(u) => c.call(&[b"AUTH", u.as_bytes(), cred.password.as_bytes()])?,
                None => c.call(&[b"AUTH", cred.password.as_bytes()])?,
            };
            if reply.is_error() {
                return Err(io::Error::other(format!("AUTH: {}", reply.describe())));
            }
        }
        Ok(c)
    }

    pub fn call(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.stream.write_all(&encode_command(args))?;
        self.read_reply()
    }

    pub fn read_reply(&mut self) -> io::Result<Reply> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(1);
        let bad = || io::Error::new(ErrorKind::InvalidData, format!("bad reply line {line:?}"));
        match kind {
            "+" => Ok(Reply::Simple(rest.into())),
            "-" => Ok(Reply::Error(rest.into())),
            ":" => rest.parse().map(Reply::Int).map_err(|_| bad()),
            "$" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let body = self.exact(n as usize + 2)?;
                Ok(Reply::Bulk(Some(body[..n as usize].to_vec())))
            }
            "*" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    return Ok(Reply::Array(None));
                }
                // A reply's items are read one by one; a count beyond what a check sends is
                // still bounded by the socket's timeout on every read.
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(self.read_reply()?);
                }
                Ok(Reply::Array(Some(items)))
            }
            _ => Err(bad()),
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 << 10];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..p]).into_owned();
                self.buf.drain(..p + 2);
                if line.is_empty() {
                    return Err(io::Error::new(ErrorKind::InvalidData, "empty reply line"));
                }
                return Ok(line);
            }
            if self.buf.len() > 64 << 10 {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    "reply line too long",
                ));
            }
            self.fill()?;
        }
    }

    fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }
}

/// `SET key value` then `GET key` on a fresh connection to `addr`, retried until both
/// succeed and the value reads back or [`SERVE_WITHIN`] has passed. Returns the time of the
/// successful round trip (both commands).
pub fn round_trip(
    addr: SocketAddr,
    auth: Option<&Credentials>,
    key: &str,
    value: &[u8],
) -> Result<Duration, String> {
    let deadline = Instant::now() + SERVE_WITHIN;
    let mut last = String::new();
    while Instant::now() < deadline {
        let attempt = (|| -> Result<Duration, String> {
            let mut c = Resp::connect(addr, auth).map_err(|e| format!("connect: {e}"))?;
            let started = Instant::now();
            let set = c
                .call(&[b"SET", key.as_bytes(), value])
                .map_err(|e| format!("SET: {e}"))?;
            if set != Reply::Simple("OK".into()) {
                return Err(format!("SET answered {}", set.describe()));
            }
            let got = c
                .call(&[b"GET", key.as_bytes()])
                .map_err(|e| format!("GET: {e}"))?;
            if got != Reply::Bulk(Some(value.to_vec())) {
                return Err(format!("GET answered {}", got.describe()));
            }
            Ok(started.elapsed())
        })();
        match attempt {
            Ok(d) => return Ok(d),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "no SET/GET round trip within {SERVE_WITHIN:?}: {last}"
    ))
}

/// The node's `INFO` fields (`role`, `term`, `leader_id`, `voters`, ...).
pub fn info(
    addr: SocketAddr,
    auth: Option<&Credentials>,
) -> Result<HashMap<String, String>, String> {
    let mut c = Resp::connect(addr, auth).map_err(|e| format!("connect: {e}"))?;
    match c.call(&[b"INFO"]).map_err(|e| format!("INFO: {e}"))? {
        Reply::Bulk(Some(text)) => Ok(String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()),
        other => Err(format!("INFO answered {}", other.describe())),
    }
}

/// What a node did with a stream of hostile bytes.
#[derive(Debug, Default)]
pub struct Streamed {
    /// Bytes the node took before it stopped reading or closed.
    pub bytes_sent: u64,
    /// The first bytes of whatever it answered.
    pub reply: String,
    /// The connection was closed (or reset) by the node.
    pub closed: bool,
    /// Wall time of the attack.
    pub elapsed: Duration,
}

impl Streamed {
    /// The node refused: it answered an error or closed the connection.
    pub fn refused(&self) -> bool {
        self.closed || self.reply.starts_with('-')
    }

    pub fn describe(&self) -> String {
        let what = match (self.reply.is_empty(), self.closed) {
            (true, true) => "closed".to_string(),
            (true, false) => "no answer, connection open".to_string(),
            (false, c) => format!(
                "{}{}",
                self.reply.trim_end(),
                if c { ", closed" } else { "" }
            ),
        };
        format!("{what} after {:.1} MiB", self.bytes_sent as f64 / 1048576.0)
    }
}

/// Sends `head` and then `body_bytes` bytes made by `fill` in chunks, stopping when the node
/// closes the connection, stops reading (a write times out) or `within` has passed; then
/// reads what the node answered.
pub fn stream_bytes(
    addr: SocketAddr,
    head: &[u8],
    body_bytes: u64,
    fill: impl Fn(u64, &mut [u8]),
    within: Duration,
) -> io::Result<Streamed> {
    let started = Instant::now();
    let mut s = connect(addr)?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut out = Streamed::default();
    let mut chunk = vec![0u8; WRITE_CHUNK_BYTES];
    let sent = (|| -> io::Result<()> {
        s.write_all(head)?;
        out.bytes_sent += head.len() as u64;
        let mut left = body_bytes;
        while left > 0 && started.elapsed() < within {
            let n = left.min(chunk.len() as u64) as usize;
            fill(body_bytes - left, &mut chunk[..n]);
            s.write_all(&chunk[..n])?;
            out.bytes_sent += n as u64;
            left -= n as u64;
        }
        Ok(())
    })();
    if let Err(e) = sent {
        out.closed = matches!(
            e.kind(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
        );
    }
    let drained = drain(&mut s, REPLY_HEAD_BYTES_MAX as u64, Duration::from_secs(2));
    out.reply = drained.head;
    out.closed |= drained.closed;
    out.elapsed = started.elapsed();
    Ok(out)
}

/// `*1\r\n$` followed by `digits` ASCII digits: a bulk length that never ends.
pub fn endless_bulk_length(
    addr: SocketAddr,
    digits: u64,
    within: Duration,
) -> io::Result<Streamed> {
    stream_bytes(addr, b"*1\r\n$", digits, |_, c| c.fill(b'9'), within)
}

/// `*{count}\r\n` followed by bulks of `bulk_bytes`, `total_bytes` in all: an argument array
/// far larger than any request.
pub fn huge_array(
    addr: SocketAddr,
    count: u64,
    bulk_bytes: u64,
    total_bytes: u64,
    within: Duration,
) -> io::Result<Streamed> {
    let head = format!("*{count}\r\n");
    let bulk_head = format!("${bulk_bytes}\r\n").into_bytes();
    let item = bulk_head.len() as u64 + bulk_bytes + 2;
    stream_bytes(
        addr,
        head.as_bytes(),
        total_bytes,
        move |offset, chunk| {
            for (i, b) in chunk.iter_mut().enumerate() {
                let at = (offset + i as u64) % item;
                *b = if at < bulk_head.len() as u64 {
                    bulk_head[at as usize]
                } else if at >= item - 2 {
                    if at == item - 2 {
                        b'\r'
                    } else {
                        b'\n'
                    }
                } else {
                    b'x'
                };
            }
        },
        within,
    )
}

/// What came back on a connection, read until it closed, `bytes_max` or `within`.
#[derive(Debug, Default)]
pub struct Drained {
    /// The first bytes, lossily as text.
    pub head: String,
    pub bytes: u64,
    /// Closed (EOF or reset) by the other end.
    pub closed: bool,
}

/// Reads and drops what `s` delivers, keeping its first bytes.
pub fn drain(s: &mut TcpStream, bytes_max: u64, within: Duration) -> Drained {
    let started = Instant::now();
    let mut out = Drained::default();
    let mut head = Vec::new();
    let mut chunk = vec![0u8; 256 << 10];
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    while out.bytes < bytes_max && started.elapsed() < within {
        match s.read(&mut chunk) {
            Ok(0) => {
                out.closed = true;
                break;
            }
            Ok(n) => {
                let keep = n.min(REPLY_HEAD_BYTES_MAX.saturating_sub(head.len()));
                head.extend_from_slice(&chunk[..keep]);
                out.bytes += n as u64;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if out.bytes > 0 || started.elapsed() > Duration::from_secs(1) {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                out.closed = true;
                break;
            }
        }
    }
    out.head = String::from_utf8_lossy(&head).into_owned();
    out
}

/// `RAFT.PROMOTE id` for each of `ids` on one connection: each answer, or the connection's
/// failure.
pub fn promote(addr: SocketAddr, auth: Option<&Credentials>, ids: &[u64]) -> Vec<String> {
    let mut c = match Resp::connect(addr, auth) {
        Ok(c) => c,
        Err(e) => return vec![format!("connect: {e}")],
    };
    ids.iter()
        .map(
            |id| match c.call(&[b"RAFT.PROMOTE", id.to_string().as_bytes()]) {
                Ok(r) => r.describe(),
                Err(e) => format!("closed: {e}"),
            },
        )
        .collect()
}

/// `MGET key key ...` (`count` times the same key) on one connection, reading the answer up
/// to `bytes_max` bytes.
pub fn mget_same_key(
    addr: SocketAddr,
    auth: Option<&Credentials>,
    key: &str,
    count: usize,
    bytes_max: u64,
) -> io::Result<Drained> {
    let mut s = connect(addr)?;
    if let Some(cred) = auth {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(u) = &cred.user {
            args.push(u.as_bytes());
        }
        args.push(cred.password.as_bytes());
        s.write_all(&encode_command(&args))?;
        let mut ok = [0u8; 5];
        s.read_exact(&mut ok)?;
        if &ok != b"+OK\r\n" {
            return Err(io::Error::other("AUTH refused"));
        }
    }
    let mut args: Vec<&[u8]> = vec![b"MGET"];
    args.extend(std::iter::repeat_n(key.as_bytes(), count));
    s.write_all(&encode_command(&args))?;
    Ok(drain(&mut s, bytes_max, Duration::from_secs(20)))
}

/// Clients that send requests with large answers and never read them.
pub struct NonReaders {
    conns: Vec<(TcpStream, u64)>,
}

impl NonReaders {
    /// `http` connections each sending `GET {path}` (answer about `answer_bytes`) and `resp`
    /// connections each pipelining `pipelined` x `GET key` (each answer about
    /// `answer_bytes`). Every request is written before this returns; nothing is read.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        http_addr: SocketAddr,
        http: usize,
        path: &str,
        resp_addr: SocketAddr,
        resp: usize,
        pipelined: usize,
        key: &str,
        answer_bytes: u64,
        http_auth: Option<&str>,
        resp_auth: Option<&Credentials>,
    ) -> io::Result<NonReaders> {
        let mut conns = Vec::new();
        let bearer = http_auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        for _ in 0..http {
            let mut s = connect(http_addr)?;
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{bearer}\r\n").as_bytes())?;
            conns.push((s, answer_bytes));
        }
        for _ in 0..resp {
            let mut s = connect(resp_addr)?;
            let mut req = Vec::new();
            if let Some(cred) = resp_auth {
                let mut args: Vec<&[u8]> = vec![b"AUTH"];
                if let Some(u) = &cred.user {
                    args.push(u.as_bytes());
                }
                args.push(cred.password.as_bytes());
                req.extend(encode_command(&args));
            }
            for _ in 0..pipelined {
                req.extend(encode_command(&[b"GET", key.as_bytes()]));
            }
            s.write_all(&req)?;
            conns.push((s, pipelined as u64 * answer_bytes));
        }
        Ok(NonReaders { conns })
    }

    /// Reads each connection now, at most `within` in all: how many the node had cut off
    /// (closed before the whole answer), and how many answered everything.
    pub fn cut_off(mut self, within: Duration) -> (usize, usize) {
        let started = Instant::now();
        let mut cut = 0;
        let mut full = 0;
        for (s, expected) in &mut self.conns {
            let left = within.saturating_sub(started.elapsed());
            let d = drain(s, *expected, left.max(Duration::from_millis(100)));
            if d.closed && d.bytes < *expected {
                cut += 1;
            } else if d.bytes >= *expected {
                full += 1;
            }
        }
        (cut, full)
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }
}

/// Connections that connect and then say nothing.
pub struct Silent {
    pub conns: Vec<TcpStream>,
    /// Connect attempts that failed (refused, or timed out in the accept queue).
    pub failed: usize,
}

/// Opens `count` silent connections to `addr` from the loopback addresses `sources` in turn
/// (all of 127.0.0.0/8 is this host's), for at most `within`.
pub fn silent(addr: SocketAddr, sources: &[IpAddr], count: usize, within: Duration) -> Silent {
    let started = Instant::now();
    let mut out = Silent {
        conns: Vec::with_capacity(count),
        failed: 0,
    };
    // A connect that times out in a full accept queue is tried again (at most `count` retries
    // in all), so that a slow accept loop does not spare the node the whole count.
    for i in 0..2 * count {
        if out.conns.len() == count || started.elapsed() > within {
            break;
        }
        match connect_from(sources[i % sources.len()], addr, Duration::from_millis(500)) {
            Ok(s) => out.conns.push(s),
            Err(_) => out.failed += 1,
        }
    }
    out
}

/// A connection to `addr` from the local address `source` (any port).
pub fn connect_from(source: IpAddr, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(source, 0).into())?;
    s.connect_timeout(&addr.into(), timeout)?;
    Ok(s.into())
}

impl Silent {
    /// How many of the connections the node has closed by now.
    pub fn closed_by_node(&self) -> usize {
        self.conns
            .iter()
            .filter(|s| {
                let _ = s.set_nonblocking(true);
                let mut b = [0u8; 64];
                let closed = match (&**s).read(&mut b) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != ErrorKind::WouldBlock,
                };
                let _ = s.set_nonblocking(false);
                closed
            })
            .count()
    }

    pub fn close(self) {
        for s in self.conns {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// One raw HTTP/1.1 exchange: `request` written as is (with `Authorization: Bearer {token}`
/// after its first line, given a token), the answer read until the node closes or
/// [`IO_TIMEOUT`]. Returns the status line and the whole answer.
pub fn http_raw(
    addr: SocketAddr,
    request: &[u8],
    bearer: Option<&str>,
) -> io::Result<(String, String)> {
    let mut s = connect(addr)?;
    match (bearer, request.windows(2).position(|w| w == b"\r\n")) {
        (Some(token), Some(end)) => {
            let mut req = request[..end + 2].to_vec();
            req.extend_from_slice(format!("Authorization: Bearer {token}\r\n").as_bytes());
            req.extend_from_slice(&request[end + 2..]);
            s.write_all(&req)?;
        }
        _ => s.write_all(request)?,
    }
    let d = drain_all(&mut s, 1 << 20, IO_TIMEOUT);
    let status = d.lines().next().unwrap_or_default().to_string();
    Ok((status, d))
}

/// Everything read until close, `bytes_max` or `within` (a keep-alive server leaves the
/// connection open: the read times out after the answer).
fn drain_all(s: &mut TcpStream, bytes_max: usize, within: Duration) -> String {
    let started = Instant::now();
    let mut all = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    while all.len() < bytes_max && started.elapsed() < within {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if !all.is_empty() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// What a peer-port handshake by an impostor got.
#[derive(Debug, Default)]
pub struct Impostor {
    /// The node's answer to the handshake, as debug text, if it answered one.
    pub reply: Option<String>,
    /// Whether it accepted us.
    pub accepted: bool,
    /// Bytes of Raft frames received after the handshake (replication data it sent us).
    pub frames_bytes: u64,
    /// Forged messages written after an accepted handshake.
    pub forged_sent: usize,
}

/// Dials the peer port at `addr` in plain TCP, claims to be node `from` of cluster
/// `cluster_id` on the message lane to node `to`, and, if accepted, sends `forge` (e.g. a
/// `TimeoutNow`) `forge_count` times `forge_every` apart while counting the bytes the node
/// sends back.
pub fn impostor_plain(
    addr: SocketAddr,
    cluster_id: u128,
    from: u64,
    to: u64,
    forge: Option<raft_core::Message>,
    forge_count: usize,
    forge_every: Duration,
) -> io::Result<Impostor> {
    use raft_net::frame::encode_frame;
    use raft_net::wire::{Hello, HelloReply, Lane, HANDSHAKE_FRAME_BYTES_MAX};
    let mut s = connect(addr)?;
    let mut buf = bytes::BytesMut::new();
    let hello = Hello {
        cluster_id,
        from,
        to,
        lane: Lane::Messages,
    };
    encode_frame(&hello, &mut buf, HANDSHAKE_FRAME_BYTES_MAX).map_err(io::Error::other)?;
    s.write_all(&buf)?;
    let mut out = Impostor::default();
    let mut len = [0u8; 4];
    if s.read_exact(&mut len).is_err() {
        return Ok(out);
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > HANDSHAKE_FRAME_BYTES_MAX {
        out.reply = Some(format!("a frame of {n} bytes (not a handshake reply)"));
        return Ok(out);
    }
    let mut body = vec![0u8; n];
    s.read_exact(&mut body)?;
    let reply: HelloReply =
        raft_net::frame::decode_body(&body).map_err(|e| io::Error::other(e.to_string()))?;
    out.accepted = matches!(reply, HelloReply::Accept { .. });
    out.reply = Some(format!("{reply:?}"));
    if !out.accepted {
        return Ok(out);
    }
    for _ in 0..forge_count {
        if let Some(m) = &forge {
            buf.clear();
            encode_frame(m, &mut buf, 1 << 20).map_err(io::Error::other)?;
            if s.write_all(&buf).is_err() {
                break;
            }
            out.forged_sent += 1;
        }
        out.frames_bytes += drain(&mut s, 64 << 20, forge_every).bytes;
    }
    Ok(out)
}
