//! The load generator: closed-loop clients (one connection each, one request outstanding,
//! as redis-benchmark does) and an open-loop schedule at a fixed rate, speaking RESP or the
//! native protocol to raft-node, or HTTP/1.1 JSON to etcd's v3 gateway.
//!
//! Each protocol is a small hand-written client over one keep-alive TCP connection, so the
//! generator costs little CPU of the two cores it shares with the servers, and the same
//! framing work is done for every system.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use raft_proto::{
    KvCommand, KvResponse, NodeError, Request, RequestFrame, Response, ResponseFrame, Session,
    FRAME_BYTES_MAX,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::bench::util::{histogram, record};

/// Keys are drawn uniformly from this many.
pub const KEY_SPACE: u64 = 100_000;
pub const KEY_BYTES: usize = 16;
pub const VALUE_BYTES: usize = 100;
/// Requests one client sends at most in one workload: the duration ends a run long before.
const OPS_PER_CLIENT_MAX: u64 = 50_000_000;
/// A workload stops at this many failed requests: something is wrong, not slow.
const ERRORS_MAX: u64 = 1000;
/// No single request waits longer; past it the workload fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A reply larger than this is a protocol error, not something to buffer.
const REPLY_BYTES_MAX: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// RESP2, what any Redis client speaks (`SET k v`, `GET k`).
    Resp,
    /// raft-client's length-prefixed postcard frames; writes carry an exactly-once session.
    Native,
    /// etcd's v3 JSON gateway: `POST /v3/kv/put`, `POST /v3/kv/range`.
    EtcdHttp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Set,
    /// Linearizable read (RESP GET, native `Read { linearizable: true }`, etcd's default
    /// range).
    Get,
}

/// A key of exactly [`KEY_BYTES`]: `key-` and 12 decimal digits.
pub fn key(n: u64) -> [u8; KEY_BYTES] {
    let mut k = *b"key-000000000000";
    let mut n = n;
    for b in k[4..].iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
    k
}

/// xorshift64*: cheap, and each client gets its own stream.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Redirects one request follows at most (a leader change mid-run moves it once or twice).
const REDIRECTS_MAX: usize = 4;

enum Failure {
    /// Not the leader; the leader's client address.
    Redirect(String),
    Other(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Failure {
        Failure::Other(e)
    }
}

impl From<&str> for Failure {
    fn from(e: &str) -> Failure {
        Failure::Other(e.to_string())
    }
}

/// A connection's byte stream: plain TCP, or TLS over it.
trait Link: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Link for T {}

/// TLS for the load's connections: the client configuration trusting the cluster's CA.
pub type Tls = Option<Arc<rustls::ClientConfig>>;

/// One client connection with one request outstanding at a time.
pub struct Conn {
    proto: Proto,
    tls: Tls,
    stream: Box<dyn Link>,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    value: Vec<u8>,
    client_id: u64,
    seq: u64,
    frame_id: u64,
}

impl Conn {
    pub async fn connect(
        proto: Proto,
        tls: &Tls,
        addr: &str,
        client_id: u64,
    ) -> Result<Conn, String> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect {addr}: timed out"))?
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let stream: Box<dyn Link> = match tls {
            None => Box::new(tcp),
            Some(config) => {
                let ip = tcp.peer_addr().map_err(|e| format!("{addr}: {e}"))?.ip();
                let name = rustls::pki_types::ServerName::IpAddress(ip.into());
                let handshake = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp);
                let tls = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                    .await
                    .map_err(|_| format!("TLS handshake with {addr}: timed out"))?
                    .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                Box::new(tls)
            }
        };
        Ok(Conn {
            proto,
            tls: tls.clone(),
            stream,
            rbuf: BytesMut::with_capacity(16 << 10),
            wbuf: Vec::with_capacity(1024),
            value: vec![b'v'; VALUE_BYTES],
            client_id: client_id.max(1),
            seq: 0,
            frame_id: 0,
        })
    }

    /// Sends one request and waits for its answer, following a native `NotLeader` redirect
    /// (a new connection to the named leader, the request sent again: what raft-client does)
    /// at most [`REDIRECTS_MAX`] times. An error reply is an `Err`.
    pub async fn call(&mut self, op: Op, key: &[u8]) -> Result<(), String> {
        for _ in 0..REDIRECTS_MAX {
            match self.call_once(op, key).await {
                Err(Failure::Redirect(addr)) => {
                    let fresh = Conn::connect(self.proto, &self.tls, &addr, self.client_id).await?;
                    // Keep the session's numbering: the same client, a new connection.
                    let (seq, frame_id) = (self.seq, self.frame_id);
                    *self = fresh;
                    self.seq = seq;
                    self.frame_id = frame_id;
                }
                Err(Failure::Other(e)) => return Err(e),
                Ok(()) => return Ok(()),
            }
        }
        Err(format!("still redirected after {REDIRECTS_MAX} tries"))
    }

    async fn call_once(&mut self, op: Op, key: &[u8]) -> Result<(), Failure> {
        self.wbuf.clear();
        match self.proto {
            Proto::Resp => self.encode_resp(op, key),
            Proto::Native => self.encode_native(op, key)?,
            Proto::EtcdHttp => self.encode_etcd(op, key),
        }
        let exchange = async {
            self.stream
                .write_all(&self.wbuf)
                .await
                .map_err(|e| format!("write: {e}"))?;
            match self.proto {
                Proto::Resp => self.read_resp().await.map_err(Failure::Other),
                Proto::Native => self.read_native().await,
                Proto::EtcdHttp => self.read_http().await.map_err(Failure::Other),
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| Failure::Other(format!("no answer within {REQUEST_TIMEOUT:?}")))?
    }

    // ----- RESP ----------------------------------------------------------------------------

    fn encode_resp(&mut self, op: Op, key: &[u8]) {
        let w = &mut self.wbuf;
        match op {
            Op::Set => {
                w.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
                bulk(w, key);
                bulk(w, &self.value);
            }
            Op::Get => {
                w.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
                bulk(w, key);
            }
        }
    }

    async fn fill(&mut self) -> Result<(), String> {
        if self.rbuf.len() > REPLY_BYTES_MAX {
            return Err("reply too large".into());
        }
        let n = self
            .stream
            .read_buf(&mut self.rbuf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed".into());
        }
        Ok(())
    }

    async fn read_resp(&mut self) -> Result<(), String> {
        loop {
            if let Some(outcome) = parse_resp(&mut self.rbuf)? {
                return outcome;
            }
            self.fill().await?;
        }
    }

    // ----- native --------------------------------------------------------------------------

    fn encode_native(&mut self, op: Op, key: &[u8]) -> Result<(), String> {
        self.frame_id += 1;
        let key = bytes::Bytes::copy_from_slice(key);
        let body = match op {
            Op::Set => {
                self.seq += 1;
                let value = bytes::Bytes::copy_from_slice(&self.value);
                Request::Propose {
                    session: Some(Session {
                        client_id: self.client_id,
                        seq: self.seq,
                        acked_below: self.seq,
                    }),
                    op: KvCommand::Set { key, value }.encode(),
                }
            }
            Op::Get => Request::Read {
                op: KvCommand::Get { key }.encode(),
                linearizable: true,
            },
        };
        let frame = RequestFrame {
            id: self.frame_id,
            body,
        };
        self.wbuf.extend_from_slice(&[0; 4]);
        let buf = postcard::to_extend(&frame, std::mem::take(&mut self.wbuf))
            .map_err(|e| format!("encode: {e}"))?;
        self.wbuf = buf;
        let len = (self.wbuf.len() - 4) as u32;
        self.wbuf[..4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    async fn read_native(&mut self) -> Result<(), Failure> {
        loop {
            if self.rbuf.len() >= 4 {
                let len = u32::from_be_bytes(self.rbuf[..4].try_into().expect("4 bytes")) as usize;
                if len > FRAME_BYTES_MAX {
                    return Err(format!("frame of {len} bytes").into());
                }
                if self.rbuf.len() >= 4 + len {
                    self.rbuf.advance(4);
                    let body = self.rbuf.split_to(len);
                    let reply: ResponseFrame =
                        postcard::from_bytes(&body).map_err(|e| format!("decode: {e}"))?;
                    if reply.id != self.frame_id {
                        return Err(
                            format!("reply {} to request {}", reply.id, self.frame_id).into()
                        );
                    }
                    return match reply.body {
                        Response::Applied(b) => match KvResponse::decode(&b) {
                            Some(KvResponse::Error(e)) => Err(format!("kv error: {e}").into()),
                            Some(_) => Ok(()),
                            None => Err("undecodable KvResponse".into()),
                        },
                        Response::Error(NodeError::NotLeader {
                            leader_addr: Some(addr),
                            ..
                        }) => Err(Failure::Redirect(addr)),
                        Response::Error(e) => Err(format!("node error: {e:?}").into()),
                        other => Err(format!("unexpected reply {other:?}").into()),
                    };
                }
            }
            self.fill().await?;
        }
    }

    // ----- etcd v3 JSON gateway ------------------------------------------------------------

    fn encode_etcd(&mut self, op: Op, key: &[u8]) {
        let mut body = String::with_capacity(256);
        body.push_str("{\"key\":\"");
        base64_into(&mut body, key);
        let path = match op {
            Op::Set => {
                body.push_str("\",\"value\":\"");
                base64_into(&mut body, &self.value);
                "/v3/kv/put"
            }
            Op::Get => "/v3/kv/range",
        };
        body.push_str("\"}");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.wbuf.extend_from_slice(head.as_bytes());
        self.wbuf.extend_from_slice(body.as_bytes());
    }

    async fn read_http(&mut self) -> Result<(), String> {
        loop {
            if let Some(outcome) = parse_http(&mut self.rbuf)? {
                return outcome;
            }
            self.fill().await?;
        }
    }
}

fn bulk(w: &mut Vec<u8>, b: &[u8]) {
    w.push(b'$');
    w.extend_from_slice(b.len().to_string().as_bytes());
    w.extend_from_slice(b"\r\n");
    w.extend_from_slice(b);
    w.extend_from_slice(b"\r\n");
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// One RESP reply off the front of `buf`: `Ok(None)` if incomplete, `Ok(Some(Err))` for an
/// error reply, `Err` for bytes that are not RESP.
fn parse_resp(buf: &mut BytesMut) -> Result<Option<Result<(), String>>, String> {
    let Some(eol) = find_crlf(buf) else {
        return Ok(None);
    };
    let line = &buf[1..eol];
    match buf.first() {
        Some(b'+') | Some(b':') => {
            buf.advance(eol + 2);
            Ok(Some(Ok(())))
        }
        Some(b'-') => {
            let msg = String::from_utf8_lossy(line).into_owned();
            buf.advance(eol + 2);
            Ok(Some(Err(msg)))
        }
        Some(b'$') => {
            let n: i64 = std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("bad bulk length")?;
            if n < 0 {
                buf.advance(eol + 2);
                return Ok(Some(Ok(())));
            }
            let total = eol + 2 + n as usize + 2;
            if buf.len() < total {
                return Ok(None);
            }
            buf.advance(total);
            Ok(Some(Ok(())))
        }
        _ => Err(format!(
            "unexpected RESP reply {:?}",
            String::from_utf8_lossy(&buf[..eol.min(64)])
        )),
    }
}

/// One HTTP/1.1 response off the front of `buf` (Content-Length or chunked body):
/// `Ok(None)` if incomplete, `Ok(Some(Err))` for a status other than 200.
fn parse_http(buf: &mut BytesMut) -> Result<Option<Result<(), String>>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "non-UTF-8 HTTP head")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("bad HTTP status line")?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| "bad content-length")?,
            );
        } else if k.eq_ignore_ascii_case("transfer-encoding")
            && v.trim().eq_ignore_ascii_case("chunked")
        {
            chunked = true;
        }
    }
    let body_start = head_end + 4;
    let body_end = if chunked {
        // Walk the chunks until the zero-length one and its trailing CRLF.
        let mut at = body_start;
        loop {
            let Some(eol) = find_crlf(&buf[at..]) else {
                return Ok(None);
            };
            let size_text = std::str::from_utf8(&buf[at..at + eol]).map_err(|_| "bad chunk")?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| "bad chunk size")?;
            at += eol + 2;
            if size == 0 {
                if buf.len() < at + 2 {
                    return Ok(None);
                }
                break at + 2;
            }
            at += size + 2;
            if buf.len() < at {
                return Ok(None);
            }
        }
    } else {
        let end = body_start + length.ok_or("HTTP response without a length")?;
        if buf.len() < end {
            return Ok(None);
        }
        end
    };
    let outcome = if status == 200 {
        Ok(())
    } else {
        Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&buf[body_start..body_end.min(body_start + 200)])
        ))
    };
    buf.advance(body_end);
    Ok(Some(outcome))
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as etcd's gateway expects for `bytes` fields.
pub fn base64_into(out: &mut String, bytes: &[u8]) {
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
}

/// What one workload measured.
pub struct LoadResult {
    /// Successful operations inside the measured window.
    pub ops: u64,
    /// Successful operations of the whole run, warm-up included.
    pub ops_all: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub window: Duration,
    /// Latency of the measured operations, in nanoseconds.
    pub hist: Histogram<u64>,
}

impl LoadResult {
    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.window.as_secs_f64()
    }

    fn merge(&mut self, other: LoadResult) {
        self.ops += other.ops;
        self.ops_all += other.ops_all;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.hist.add(&other.hist).expect("same histogram bounds");
    }

    fn empty(window: Duration) -> LoadResult {
        LoadResult {
            ops: 0,
            ops_all: 0,
            errors: 0,
            first_error: None,
            window,
            hist: histogram(),
        }
    }

    /// An error unless most requests succeeded: a figure made of failures is no figure.
    pub fn check(&self, what: &str) -> Result<(), String> {
        if self.ops == 0 || self.errors > self.ops / 100 {
            return Err(format!(
                "{what}: {} ok, {} failed; first error: {}",
                self.ops,
                self.errors,
                self.first_error.as_deref().unwrap_or("none")
            ));
        }
        Ok(())
    }
}

/// Everything a workload needs to know.
#[derive(Clone)]
pub struct Workload {
    pub proto: Proto,
    pub op: Op,
    pub addr: String,
    /// TLS on every connection, or none.
    pub tls: Tls,
    /// Not measured: connections open, caches and batching settle.
    pub warmup: Duration,
    pub duration: Duration,
    pub seed: u64,
}

/// `clients` closed-loop clients, each on its own connection: send, wait for the answer,
/// send the next. Latency runs from the write to the answer.
pub async fn closed_loop(w: &Workload, clients: usize) -> Result<LoadResult, String> {
    let mut conns = Vec::with_capacity(clients);
    for c in 0..clients {
        conns.push(Conn::connect(w.proto, &w.tls, &w.addr, w.seed ^ ((c as u64 + 1) << 32)).await?);
    }
    let measure_from = Instant::now() + w.warmup;
    let measure_until = measure_from + w.duration;
    let mut tasks = Vec::with_capacity(clients);
    for (c, mut conn) in conns.into_iter().enumerate() {
        let op = w.op;
        let mut rng = Rng::new(w.seed.wrapping_add(c as u64 * 7919));
        tasks.push(tokio::spawn(async move {
            let mut r = LoadResult::empty(measure_until - measure_from);
            for _ in 0..OPS_PER_CLIENT_MAX {
                let start = Instant::now();
                if start >= measure_until || r.errors >= ERRORS_MAX {
                    break;
                }
                let k = key(rng.below(KEY_SPACE));
                let outcome = conn.call(op, &k).await;
                let end = Instant::now();
                let measured = start >= measure_from && end <= measure_until;
                match outcome {
                    Ok(()) if measured => {
                        r.ops += 1;
                        r.ops_all += 1;
                        record(&mut r.hist, end - start);
                    }
                    Ok(()) => r.ops_all += 1,
                    Err(e) => {
                        r.errors += 1;
                        r.first_error.get_or_insert(e);
                        // A broken connection would fail every later call at once.
                        if r.first_error
                            .as_deref()
                            .is_some_and(|e| e.contains("closed"))
                        {
                            break;
                        }
                    }
                }
            }
            r
        }));
    }
    let mut total = LoadResult::empty(w.duration);
    for t in tasks {
        total.merge(t.await.map_err(|e| format!("client task: {e}"))?);
    }
    Ok(total)
}

/// An open-loop run: requests are due at a fixed rate whatever happened to earlier ones, and
/// latency runs from when a request was *due*, so time spent waiting for a free connection
/// (queueing) counts. `conns` connections take the next due request when they are free.
pub struct OpenLoopResult {
    /// Latency from due time to answer.
    pub load: LoadResult,
    /// From due time to the request's write: waiting for a free connection, or for the
    /// generator's own wake-up (on a busy machine), in nanoseconds.
    pub send_delay: Histogram<u64>,
    /// The part of the send delay spent waiting for a connection to come free (all were
    /// busy with earlier requests when this one was due): queueing behind the servers.
    pub conn_wait: Histogram<u64>,
    /// The generator's own lateness: from when the request could first have been sent (its
    /// due time, or the moment its connection came free if later) to its write. Timer
    /// granularity (1 ms) and the generator's thread waiting for a core land here.
    pub pacing_lateness: Histogram<u64>,
    pub achieved_per_s: f64,
    /// Worst latency of the requests due in each [`STALL_WINDOW`] of the run (warm-up
    /// included), in microseconds: when the tail happened, to line up with the nodes' logs.
    pub worst_us_by_window: Vec<u64>,
    /// Wall-clock time of the first window's start.
    pub started_at: std::time::SystemTime,
}

/// Width of the windows of [`OpenLoopResult::worst_us_by_window`].
pub const STALL_WINDOW: Duration = Duration::from_millis(50);

pub async fn open_loop(
    w: &Workload,
    rate_per_s: f64,
    conns: usize,
) -> Result<OpenLoopResult, String> {
    assert!(rate_per_s > 0.0, "open-loop rate must be positive");
    let total_s = (w.warmup + w.duration).as_secs_f64();
    let due_total = (rate_per_s * total_s) as u64;
    let mut opened = Vec::with_capacity(conns);
    for c in 0..conns {
        opened
            .push(Conn::connect(w.proto, &w.tls, &w.addr, w.seed ^ ((c as u64 + 1) << 40)).await?);
    }
    let started_at = std::time::SystemTime::now();
    let start = Instant::now();
    let windows = (total_s / STALL_WINDOW.as_secs_f64()).ceil() as usize + 1;
    let measure_from = start + w.warmup;
    // The run cannot stretch past its schedule by more than one request timeout.
    let hard_stop = start + w.warmup + w.duration + REQUEST_TIMEOUT;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(conns);
    for (c, mut conn) in opened.into_iter().enumerate() {
        let op = w.op;
        let next = next.clone();
        let mut rng = Rng::new(w.seed.wrapping_add(c as u64 * 104_729));
        tasks.push(tokio::spawn(async move {
            let mut r = LoadResult::empty(Duration::ZERO);
            let (mut delay, mut wait, mut late) = (histogram(), histogram(), histogram());
            let mut worst = vec![0u64; windows];
            loop {
                let free = Instant::now();
                let i = next.fetch_add(1, Relaxed);
                if i >= due_total || r.errors >= ERRORS_MAX {
                    break;
                }
                let due = start + Duration::from_secs_f64(i as f64 / rate_per_s);
                tokio::time::sleep_until(due).await;
                if Instant::now() >= hard_stop {
                    break;
                }
                let k = key(rng.below(KEY_SPACE));
                let sent = Instant::now();
                let outcome = conn.call(op, &k).await;
                let end = Instant::now();
                let slot = ((due - start).as_nanos() / STALL_WINDOW.as_nanos()) as usize;
                if let Some(v) = worst.get_mut(slot) {
                    *v = (*v).max((end - due).as_micros() as u64);
                }
                match outcome {
                    Ok(()) if due >= measure_from => {
                        r.ops += 1;
                        r.ops_all += 1;
                        record(&mut r.hist, end - due);
                        record(&mut delay, sent.saturating_duration_since(due));
                        record(&mut wait, free.saturating_duration_since(due));
                        record(&mut late, sent.saturating_duration_since(due.max(free)));
                    }
                    Ok(()) => r.ops_all += 1,
                    Err(e) => {
                        r.errors += 1;
                        r.first_error.get_or_insert(e);
                    }
                }
            }
            (r, [delay, wait, late], worst)
        }));
    }
    let mut worst_us_by_window = vec![0u64; windows];
    let mut total = LoadResult::empty(w.duration);
    let [mut send_delay, mut conn_wait, mut pacing_lateness] =
        [histogram(), histogram(), histogram()];
    for t in tasks {
        let (r, [delay, wait, late], worst) =
            t.await.map_err(|e| format!("open-loop task: {e}"))?;
        for (all, w) in worst_us_by_window.iter_mut().zip(worst) {
            *all = (*all).max(w);
        }
        total.merge(r);
        send_delay.add(&delay).expect("same histogram bounds");
        conn_wait.add(&wait).expect("same histogram bounds");
        pacing_lateness.add(&late).expect("same histogram bounds");
    }
    // Achieved rate: measured completions over the measured window plus whatever time the
    // backlog took to drain beyond it.
    let took = (Instant::now() - measure_from).max(w.duration);
    let achieved_per_s = total.ops as f64 / took.as_secs_f64();
    Ok(OpenLoopResult {
        load: total,
        send_delay,
        conn_wait,
        pacing_lateness,
        achieved_per_s,
        worst_us_by_window,
        started_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sixteen_bytes_and_distinct() {
        assert_eq!(&key(0), b"key-000000000000");
        assert_eq!(&key(99_999), b"key-000000099999");
        assert_ne!(key(1), key(10));
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        let enc = |b: &[u8]| {
            let mut s = String::new();
            base64_into(&mut s, b);
            s
        };
        assert_eq!(enc(b""), "");
        assert_eq!(enc(b"f"), "Zg==");
        assert_eq!(enc(b"fo"), "Zm8=");
        assert_eq!(enc(b"foo"), "Zm9v");
        assert_eq!(enc(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn resp_replies_parse_and_wait_for_more() {
        let mut b = BytesMut::from(&b"+OK\r\n$3\r\nabc\r\n$-1\r\n-ERR no\r\n$5\r\nab"[..]);
        assert_eq!(parse_resp(&mut b), Ok(Some(Ok(()))));
        assert_eq!(parse_resp(&mut b), Ok(Some(Ok(()))));
        assert_eq!(parse_resp(&mut b), Ok(Some(Ok(()))));
        assert_eq!(parse_resp(&mut b), Ok(Some(Err("ERR no".into()))));
        assert_eq!(parse_resp(&mut b), Ok(None));
        assert!(parse_resp(&mut BytesMut::from(&b"?x\r\n"[..])).is_err());
    }

    #[test]
    fn http_responses_parse_by_length_and_by_chunks() {
        let mut b = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\nHTTP/1.1 400 Bad\r\nContent-Length: 3\r\n\r\nbad"[..],
        );
        assert_eq!(parse_http(&mut b), Ok(Some(Ok(()))));
        assert_eq!(parse_http(&mut b), Ok(Some(Ok(()))));
        assert_eq!(parse_http(&mut b), Ok(Some(Err("HTTP 400: bad".into()))));
        assert!(b.is_empty());
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}"[..]);
        assert_eq!(parse_http(&mut partial), Ok(None));
    }

    #[test]
    fn rng_stays_below_its_bound() {
        let mut r = Rng::new(7);
        assert!((0..10_000).all(|_| r.below(KEY_SPACE) < KEY_SPACE));
    }
}
