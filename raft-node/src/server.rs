//! The client port: the native protocol and RESP on one listener, told apart by the first
//! byte (a native frame's length prefix starts with 0, a RESP request never does).
//!
//! Every connection is held to the bounds of [`ClientLimits`]: admission caps
//! ([`crate::admission`]), a first byte within `handshake_timeout_ms`, `idle_timeout_ms`
//! with no request under way, `read_timeout_ms` for a started request, `write_timeout_ms`
//! for each reply, input held at most `query_buffer_bytes_max` and replies held at most
//! `output_buffer_bytes_max`. Each close for a limit is counted in
//! `raft_client_disconnects_total{reason}`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use raft_proto::{
    KvCommand, KvError, KvResponse, NodeError, Request, RequestFrame, Response, ResponseFrame,
    BATCH_COMMANDS_MAX, FRAME_BYTES_MAX,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::codec::{Framed, FramedParts, LengthDelimitedCodec};

use crate::admission::{Admission, Ticket};
use crate::auth::{certified_session, Auth, Role, Session};
use crate::kv::{log_command, KvView};
use crate::limits::ClientLimits;
use crate::metrics::{DisconnectReason, Metrics};
use crate::resp::{self, ParserLimits, Protocol, RespParser, Value};
use crate::router::Router;
use crate::runtime::{AdminOp, NodeHandle, ReadAnswer};
use crate::session::{native_gate, RespSession};

mod pubsub;

/// Requests of one connection being served at once (pipelining depth).
/// Also the largest run of pipelined writes put into one batch entry.
const CONNECTION_REQUESTS_IN_FLIGHT_MAX: usize = BATCH_COMMANDS_MAX;
/// A run of writes larger than this is proposed command by command instead of as one batch
/// entry, which keeps forwarded frames and log entries small.
const BATCH_BYTES_MAX: usize = 1 << 20;
/// A RESP bulk reply at least this large is written from the stored value's bytes rather
/// than copied into the connection's output buffer.
const REPLY_COPY_BYTES_MAX: usize = 16 << 10;
/// Bytes of small RESP replies gathered before they are written: one write for many.
const REPLY_GATHER_BYTES: usize = 64 << 10;
/// Spare room made in a connection's input buffer before each read.
const READ_CHUNK_BYTES: usize = 16 << 10;

/// What one connection needs besides the node: its place in the admission table, the
/// limits, and where closes are counted.
pub struct Conn {
    ticket: Ticket,
    limits: Arc<ClientLimits>,
    metrics: Arc<Metrics>,
}

impl Conn {
    /// A connection admitted with `ticket`.
    pub fn new(ticket: Ticket, limits: Arc<ClientLimits>, metrics: Arc<Metrics>) -> Conn {
        Conn {
            ticket,
            limits,
            metrics,
        }
    }

    /// The connection's place in the admission table (AUTH marks an admin's privileged).
    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    fn close(&self, reason: DisconnectReason) {
        tracing::debug!(reason = reason.label(), "closing a client connection");
        self.metrics.client_disconnect(reason);
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

/// TLS on the client port: the acceptor, and the cluster whose node certificates count as
/// the cluster's own nodes.
#[derive(Clone)]
pub struct ClientTls {
    /// Accepts clients (a client certificate optional unless configured as required).
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// This node's cluster, as its certificate names it.
    pub cluster_id: u128,
}

/// Serves the client port until `shutdown`. `nodes` are the cluster members' IP
/// addresses, whose connections may take the reserved slots.
pub async fn serve(
    listener: TcpListener,
    handle: NodeHandle,
    router: Arc<Router>,
    limits: Arc<ClientLimits>,
    nodes: HashSet<IpAddr>,
    tls: Option<ClientTls>,
    mut shutdown: watch::Receiver<bool>,
) {
    let metrics = handle.metrics.clone();
    let admission = Admission::new(limits.clone(), nodes, metrics.clone());
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, remote)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let ticket = match admission.admit(remote.ip()) {
            Ok(t) => t,
            Err(reason) => {
                tracing::warn!(%remote, reason = reason.label(), "client connection refused");
                // Best effort, never waiting: Redis clients show this line.
                let _ = stream.try_write(b"-ERR max number of clients reached\r\n");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        let conn = Conn::new(ticket, limits.clone(), metrics.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                let session = Session::new(&router.auth);
                serve_connection(stream, session, handle, router, conn, shutdown).await;
                return;
            };
            let timeout = Conn::ms(conn.limits.handshake_timeout_ms);
            let accepted = tokio::select! {
                _ = conn.ticket.evicted() => return,
                r = tokio::time::timeout(timeout, tls.acceptor.accept(stream)) => r,
            };
            let stream = match accepted {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, "client TLS handshake failed: {e}");
                    conn.close(DisconnectReason::ProtocolError);
                    return;
                }
                Err(_) => {
                    conn.close(DisconnectReason::HandshakeTimeout);
                    return;
                }
            };
            let session = match stream.get_ref().1.peer_certificates() {
                Some([cert, ..]) => certified_session(&router.auth, cert, tls.cluster_id),
                _ => Session::new(&router.auth),
            };
            serve_connection(stream, session, handle, router, conn, shutdown).await;
        });
    }
}

/// Serves one client connection over any byte stream (plain TCP, or TLS once decrypted).
/// The protocol is told by the first byte: a native frame's length prefix starts with 0.
/// The bytes read to see it are handed on as the start of the protocol's input. `session`
/// is who the connection is before it logs in (see [`Session::new`]).
pub async fn serve_connection<S>(
    mut stream: S,
    session: Session,
    handle: NodeHandle,
    router: Arc<Router>,
    conn: Conn,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut first = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let timeout = Conn::ms(conn.limits.handshake_timeout_ms);
    let read = tokio::select! {
        _ = conn.ticket.evicted() => return,
        r = tokio::time::timeout(timeout, stream.read_buf(&mut first)) => r,
    };
    match read {
        Err(_) => conn.close(DisconnectReason::HandshakeTimeout),
        Ok(Ok(n)) if n > 0 && first[0] == 0 => {
            let auth = router.auth.clone();
            serve_native(stream, first, (auth, session), handle, conn, shutdown).await
        }
        Ok(Ok(n)) if n > 0 => {
            let session = RespSession::new(router.auth.clone(), session)
                .with_request_keys_max(conn.limits.request_keys_max);
            serve_resp(stream, first, session, router, conn, shutdown).await
        }
        _ => {}
    }
}

/// An operator logged in as admin keeps the connection when the caps make room by closing
/// idle ones, so a flood of sockets cannot lock the operator out. Only with authentication
/// on: without it every client is an admin, and nothing idle could ever be closed.
fn protect_admin(conn: &Conn, auth: &Auth, role: Option<Role>) {
    if auth.is_enabled() && role == Some(Role::Admin) {
        conn.ticket.set_privileged();
    }
}

/// A reply to a native request with what it holds of the connection's budgets.
struct NativeReply {
    frame: ResponseFrame,
    /// Bytes of the request, counted against `query_buffer_bytes_max` until answered.
    request_bytes: usize,
    /// Bytes of the reply counted in the connection's queued output.
    reply_bytes: usize,
}

/// Bytes of replies a native connection holds and whether a reply was refused for it.
#[derive(Default)]
struct OutputBudget {
    queued_bytes: AtomicUsize,
    overflowed: AtomicBool,
}

async fn serve_native<S>(
    stream: S,
    received: BytesMut,
    (auth, mut session): (Arc<Auth>, Session),
    handle: NodeHandle,
    conn: Conn,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = conn.limits.clone();
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(FRAME_BYTES_MAX.min(limits.request_bytes_max))
        .new_codec();
    let mut parts = FramedParts::new::<Bytes>(stream, codec);
    parts.read_buf = received;
    let mut framed = Framed::from_parts(parts);
    let mut in_flight = FuturesOrdered::new();
    let budget = Arc::new(OutputBudget::default());
    let write_timeout = Conn::ms(limits.write_timeout_ms);
    // Bytes of requests received and not yet answered.
    let mut input_bytes = 0usize;
    let mut idle_since = Instant::now();
    let mut partial_since: Option<Instant> = None;
    loop {
        if budget.overflowed.load(Ordering::Relaxed) {
            conn.close(DisconnectReason::OutputBuffer);
            return;
        }
        let waiting = in_flight.is_empty();
        let partial = !framed.read_buffer().is_empty();
        conn.ticket.set_busy(!waiting || partial);
        let deadline = match (partial, partial_since) {
            (_, Some(t)) => t + Conn::ms(limits.read_timeout_ms),
            (true, None) => {
                *partial_since.insert(Instant::now()) + Conn::ms(limits.read_timeout_ms)
            }
            (false, None) => idle_since + Conn::ms(limits.idle_timeout_ms),
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = conn.ticket.evicted() => return,
            _ = tokio::time::sleep_until(deadline), if waiting => {
                if partial_since.is_some() {
                    conn.close(DisconnectReason::ReadTimeout);
                    return;
                }
                if framed.read_buffer().is_empty() {
                    conn.close(DisconnectReason::IdleTimeout);
                    return;
                }
                // Bytes of a request came in while idle: the read timeout starts now.
            }
            Some(reply) = in_flight.next(), if !waiting => {
                // Every reply already done goes out with this one: one write (and one
                // wake-up of the client) for all of them rather than one each.
                let mut reply: NativeReply = reply;
                for _ in 0..CONNECTION_REQUESTS_IN_FLIGHT_MAX {
                    let Ok(buf) = postcard::to_allocvec(&reply.frame) else { return };
                    input_bytes -= reply.request_bytes;
                    let reply_bytes = reply.reply_bytes;
                    drop(reply);
                    match tokio::time::timeout(write_timeout, framed.feed(Bytes::from(buf))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return,
                        Err(_) => {
                            conn.close(DisconnectReason::WriteTimeout);
                            return;
                        }
                    }
                    budget.queued_bytes.fetch_sub(reply_bytes, Ordering::Relaxed);
                    match in_flight.next().now_or_never() {
                        Some(Some(next)) => reply = next,
                        _ => break,
                    }
                }
                match tokio::time::timeout(write_timeout, SinkExt::<Bytes>::flush(&mut framed)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        conn.close(DisconnectReason::WriteTimeout);
                        return;
                    }
                }
                idle_since = Instant::now();
            }
            frame = framed.next(), if in_flight.len() < CONNECTION_REQUESTS_IN_FLIGHT_MAX
                && input_bytes < limits.query_buffer_bytes_max => {
                let buf = match frame {
                    Some(Ok(buf)) => buf,
                    // A malformed or oversized frame closes this connection only.
                    Some(Err(_)) => {
                        conn.close(DisconnectReason::ProtocolError);
                        return;
                    }
                    None => return,
                };
                partial_since = None;
                let Ok(req) = postcard::from_bytes::<RequestFrame>(&buf) else {
                    tracing::debug!("undecodable native request; closing the connection");
                    conn.close(DisconnectReason::ProtocolError);
                    return;
                };
                let request_bytes = buf.len();
                input_bytes += request_bytes;
                // Checked in arrival order: an Auth applies to the requests after it.
                let verdict = native_gate(&auth, &mut session, &req.body);
                protect_admin(&conn, &auth, session.role);
                let handle = handle.clone();
                let budget = budget.clone();
                let output_max = limits.output_buffer_bytes_max;
                in_flight.push_back(async move {
                    let (body, reply_bytes) = match verdict {
                        Ok(true) => native_request(&handle, req.body, &budget, output_max).await,
                        Ok(false) => (Response::Done, 0),
                        Err(e) => (Response::Error(e), 0),
                    };
                    NativeReply {
                        frame: ResponseFrame { id: req.id, body },
                        request_bytes,
                        reply_bytes,
                    }
                });
            }
        }
    }
}

/// Serves one native request; with the bytes of its reply counted in `budget` (a read
/// whose reply would push the connection's queued output past `output_max` is not built,
/// and the connection is closed).
async fn native_request(
    handle: &NodeHandle,
    request: Request,
    budget: &OutputBudget,
    output_max: usize,
) -> (Response, usize) {
    let result = match request {
        Request::Propose { session, op } => handle
            .propose(log_command(session, op))
            .await
            .map(Response::Applied),
        Request::Read { op, linearizable } => {
            match handle.read_answer(op.clone(), linearizable).await {
                Ok(answer) => {
                    if budget.queued_bytes.load(Ordering::Relaxed) > output_max {
                        budget.overflowed.store(true, Ordering::Relaxed);
                        return (Response::Error(NodeError::Busy), 0);
                    }
                    let bytes = match answer {
                        ReadAnswer::Bytes(b) => b,
                        ReadAnswer::View(view) => view.query(&op),
                    };
                    budget
                        .queued_bytes
                        .fetch_add(bytes.len(), Ordering::Relaxed);
                    return (Response::Applied(bytes.clone()), bytes.len());
                }
                Err(e) => Err(e),
            }
        }
        Request::Status => handle.status().await.map(|s| Response::Status(Box::new(s))),
        Request::TransferLeader { to } => handle
            .admin(AdminOp::TransferLeader(to))
            .await
            .map(|()| Response::Done),
        Request::AddLearner { id } => handle
            .admin(AdminOp::AddLearner(id))
            .await
            .map(|()| Response::Done),
        Request::Promote { id } => handle
            .admin(AdminOp::Promote(id))
            .await
            .map(|()| Response::Done),
        Request::RemoveNode { id } => handle
            .admin(AdminOp::Remove(id))
            .await
            .map(|()| Response::Done),
        // Answered by the gate before it gets here.
        Request::Auth { .. } => Ok(Response::Done),
    };
    (result.unwrap_or_else(Response::Error), 0)
}

/// Why a connection stops: the peer went away (or asked to), or a limit closed it.
type Closed = Option<DisconnectReason>;

/// A RESP connection's pending output: small replies gathered in one buffer, large bulk
/// payloads kept as the stored bytes, written in order.
struct RespOutput {
    /// The protocol replies are encoded in.
    proto: Protocol,
    small: Vec<u8>,
    pieces: Vec<Bytes>,
    queued_bytes: usize,
    bytes_max: usize,
    write_timeout: Duration,
}

impl RespOutput {
    fn new(limits: &ClientLimits) -> RespOutput {
        RespOutput {
            proto: Protocol::Resp2,
            small: Vec::with_capacity(READ_CHUNK_BYTES),
            pieces: Vec::new(),
            queued_bytes: 0,
            bytes_max: limits.output_buffer_bytes_max,
            write_timeout: Conn::ms(limits.write_timeout_ms),
        }
    }

    fn encode(&mut self, v: &Value) {
        match v {
            Value::Bulk(Some(b)) if b.len() >= REPLY_COPY_BYTES_MAX => {
                self.small.extend(format!("${}\r\n", b.len()).as_bytes());
                self.pieces
                    .push(Bytes::from(std::mem::take(&mut self.small)));
                self.pieces.push(b.clone());
                self.small.extend_from_slice(b"\r\n");
                self.queued_bytes += b.len();
            }
            Value::Array(items) | Value::Set(items) | Value::Push(items) => {
                v.write_header(self.proto, &mut self.small);
                for item in items {
                    self.encode(item);
                }
            }
            Value::Map(pairs) => {
                v.write_header(self.proto, &mut self.small);
                for (k, item) in pairs {
                    self.encode(k);
                    self.encode(item);
                }
            }
            other => other.encode(self.proto, &mut self.small),
        }
    }

    /// Queues a reply; writes what is queued once it is large. Past `output_buffer_bytes_max`
    /// the connection is closed.
    async fn push<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        v: &Value,
    ) -> Result<(), Closed> {
        self.encode(v);
        if self.queued_bytes + self.small.len() > self.bytes_max {
            return Err(Some(DisconnectReason::OutputBuffer));
        }
        if !self.pieces.is_empty() || self.small.len() >= REPLY_GATHER_BYTES {
            self.flush(stream).await?;
        }
        Ok(())
    }

    /// Writes the large pieces, then the small bytes gathered after the last of them (kept
    /// in the same buffer, whose capacity is reused).
    async fn flush<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> Result<(), Closed> {
        for piece in std::mem::take(&mut self.pieces) {
            if !piece.is_empty() {
                write_timed(stream, &piece, self.write_timeout).await?;
            }
        }
        if !self.small.is_empty() {
            write_timed(stream, &self.small, self.write_timeout).await?;
            self.small.clear();
        }
        self.queued_bytes = 0;
        Ok(())
    }
}

/// Writes `bytes` whole within `timeout`.
async fn write_timed<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), Closed> {
    match tokio::time::timeout(timeout, stream.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => Err(Some(DisconnectReason::WriteTimeout)),
    }
}

/// A command naming more keys than `request_keys_max` becomes its error reply.
pub(crate) fn refuse_too_many_keys(parsed: resp::Parsed, max: usize) -> resp::Parsed {
    let keys = match &parsed {
        resp::Parsed::Kv(cmd, _) => cmd.key_count(),
        _ => 0,
    };
    if keys <= max {
        return parsed;
    }
    resp::Parsed::Reply(resp::kv_reply(KvResponse::Error(KvError::TooManyKeys {
        keys: keys as u64,
        max: max as u64,
    })))
}

async fn serve_resp<S>(
    mut stream: S,
    mut buf: BytesMut,
    mut session: RespSession,
    router: Arc<Router>,
    conn: Conn,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = conn.limits.clone();
    let mut parser = RespParser::new(ParserLimits::from(&*limits));
    let lane = router.lane();
    let mut out = RespOutput::new(&limits);
    let mut idle_since = Instant::now();
    let mut request_since: Option<Instant> = None;
    loop {
        // Every complete request already received is served together: the writes among them
        // reach the runtime back to back and are appended as one batch.
        let mut batch = Vec::new();
        loop {
            match parser.parse(&mut buf) {
                // An empty request (a blank inline line, `*0`) gets no answer, as in Redis.
                Ok(Some(args)) if args.is_empty() => {}
                Ok(Some(args)) => {
                    batch.push(args);
                    if batch.len() >= CONNECTION_REQUESTS_IN_FLIGHT_MAX {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = out
                        .push(
                            &mut stream,
                            &Value::Error(format!("ERR Protocol error: {e}")),
                        )
                        .await;
                    let _ = out.flush(&mut stream).await;
                    conn.close(DisconnectReason::ProtocolError);
                    return;
                }
            }
        }
        if !batch.is_empty() {
            conn.ticket.set_busy(true);
            request_since = None;
            let quit = batch
                .iter()
                .any(|a| a.first().is_some_and(|c| c.eq_ignore_ascii_case(b"QUIT")));
            // Subscribe mode (pubsub.rs) takes over from the first (P)SUBSCRIBE or WATCHLOG
            // to the last UNSUBSCRIBE, and hands back what came after it.
            let mut pending = batch;
            let mut served = Ok(());
            while served.is_ok() && !pending.is_empty() {
                let split = pending
                    .iter()
                    .position(|a| pubsub::starts_subscription(a))
                    .unwrap_or(pending.len());
                let subscribing = pending.split_off(split);
                if !pending.is_empty() {
                    let normal = std::mem::take(&mut pending);
                    served = serve_resp_batch(
                        &router,
                        &mut session,
                        &mut stream,
                        &mut out,
                        normal,
                        lane,
                        &limits,
                    )
                    .await;
                }
                if served.is_ok() && !subscribing.is_empty() && session.in_multi() {
                    // Inside MULTI a subscription is refused by the session (it aborts the
                    // transaction); what follows it is served as usual.
                    let mut rest = subscribing;
                    let refused = vec![rest.remove(0)];
                    served = serve_resp_batch(
                        &router,
                        &mut session,
                        &mut stream,
                        &mut out,
                        refused,
                        lane,
                        &limits,
                    )
                    .await;
                    pending = rest;
                    continue;
                }
                if served.is_ok() && !subscribing.is_empty() {
                    served = out.flush(&mut stream).await;
                    if served.is_ok() {
                        match pubsub::serve(
                            &mut stream,
                            &mut buf,
                            &mut parser,
                            &mut session,
                            &router,
                            &conn,
                            &mut out,
                            &mut shutdown,
                            subscribing,
                            lane,
                        )
                        .await
                        {
                            Ok(after) => pending = after,
                            Err(e) => served = Err(e),
                        }
                    }
                }
            }
            protect_admin(&conn, &router.auth, session.role());
            let served = match served {
                Ok(()) => out.flush(&mut stream).await,
                Err(e) => Err(e),
            };
            match served {
                Ok(()) if !quit => {}
                Ok(()) | Err(None) => return,
                Err(Some(reason)) => {
                    conn.close(reason);
                    return;
                }
            }
            idle_since = Instant::now();
            continue;
        }
        let held = buf.len() + parser.pending_bytes();
        if held > limits.query_buffer_bytes_max {
            conn.close(DisconnectReason::QueryBuffer);
            return;
        }
        // Waiting for bytes: of a request under way (read timeout) or of the next one.
        let partial = held > 0;
        conn.ticket.set_busy(partial);
        let deadline = if partial {
            *request_since.get_or_insert_with(Instant::now) + Conn::ms(limits.read_timeout_ms)
        } else {
            idle_since + Conn::ms(limits.idle_timeout_ms)
        };
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES {
            buf.reserve(READ_CHUNK_BYTES);
        }
        let read = tokio::select! {
            _ = shutdown.changed() => return,
            _ = conn.ticket.evicted() => return,
            _ = tokio::time::sleep_until(deadline) => {
                conn.close(if partial {
                    DisconnectReason::ReadTimeout
                } else {
                    DisconnectReason::IdleTimeout
                });
                return;
            }
            r = stream.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Serves a batch of pipelined requests in order, writing each reply as it is made.
///
/// Redis answers a connection's commands as if run one after another. Runs of writes are
/// issued together, in order, which batches them into one append; a run of reads is
/// answered from one view of the state taken at a read index after they all arrived, one
/// reply at a time, so the connection never holds more than one reply it has not written.
async fn serve_resp_batch<S: AsyncWrite + Unpin>(
    router: &Arc<Router>,
    session: &mut RespSession,
    stream: &mut S,
    out: &mut RespOutput,
    batch: Vec<Vec<Bytes>>,
    lane: usize,
    limits: &ClientLimits,
) -> Result<(), Closed> {
    // Each reply is encoded in the protocol the connection speaks once its command ran
    // (HELLO 3's own answer is RESP3): the batch is served in runs of one protocol.
    let mut runs: Vec<(Protocol, Vec<resp::Parsed>)> = Vec::new();
    for a in &batch {
        let parsed = refuse_too_many_keys(session.command(a), limits.request_keys_max);
        let proto = session.protocol();
        match runs.last_mut() {
            Some((p, run)) if *p == proto => run.push(parsed),
            _ => runs.push((proto, vec![parsed])),
        }
    }
    drop(batch);
    for (proto, parsed) in runs {
        out.proto = proto;
        serve_resp_run(router, stream, out, parsed, lane).await?;
    }
    Ok(())
}

/// Serves requests whose replies share one protocol, in order.
async fn serve_resp_run<S: AsyncWrite + Unpin>(
    router: &Arc<Router>,
    stream: &mut S,
    out: &mut RespOutput,
    parsed: Vec<resp::Parsed>,
    lane: usize,
) -> Result<(), Closed> {
    let mut parsed = parsed.into_iter().peekable();
    while let Some(first) = parsed.next() {
        let kind = first.is_write();
        let mut run = vec![first];
        while let Some(next) = parsed.next_if(|p| p.is_write() == kind) {
            run.push(next);
        }
        if !kind {
            serve_reads(router, stream, out, run, lane).await?;
            continue;
        }
        if run.len() == 1 {
            // The common case (one request per read, as a closed-loop client sends): no
            // FuturesOrdered and no reply vector to allocate and drop per write (their
            // allocations showed in the write path profile, docs/PERFORMANCE.md).
            let p = run.pop().expect("one request");
            let reply = resp_command(router, p, lane).await;
            out.push(stream, &reply).await?;
            continue;
        }
        let replies: Vec<Value> = if batchable(&run) {
            write_batch(router, run, lane).await
        } else {
            run.into_iter()
                .map(|p| {
                    let router = router.clone();
                    async move { resp_command(&router, p, lane).await }
                })
                .collect::<FuturesOrdered<_>>()
                .collect()
                .await
        };
        for r in &replies {
            out.push(stream, r).await?;
        }
    }
    Ok(())
}

/// A run of reads: one view for all of them, each reply built when it is its turn.
async fn serve_reads<S: AsyncWrite + Unpin>(
    router: &Arc<Router>,
    stream: &mut S,
    out: &mut RespOutput,
    run: Vec<resp::Parsed>,
    lane: usize,
) -> Result<(), Closed> {
    let wants_view = run.iter().any(|p| matches!(p, resp::Parsed::Kv(..)));
    let linearizable = run.iter().any(|p| matches!(p, resp::Parsed::Kv(_, true)));
    let view = if wants_view {
        Some(router.handle.read_view(linearizable).await)
    } else {
        None
    };
    for p in run {
        let reply = match (&p, &view) {
            (resp::Parsed::Kv(cmd, _), Some(Ok(Some(v)))) => {
                match v.as_any().downcast_ref::<KvView>() {
                    Some(kv) => resp::kv_reply(kv.read(cmd)),
                    None => resp_command(router, p, lane).await,
                }
            }
            (resp::Parsed::Kv(..), Some(Err(e))) => node_error(e.clone()),
            _ => resp_command(router, p, lane).await,
        };
        out.push(stream, &reply).await?;
    }
    Ok(())
}

fn batchable(run: &[resp::Parsed]) -> bool {
    let mut bytes = 0;
    for p in run {
        // A PUBLISH's answer is filled in by `resp_command`.
        let resp::Parsed::Kv(cmd, _) = p else {
            return false;
        };
        if published_channel(cmd).is_some() {
            return false;
        }
        bytes += cmd.encode().len();
        if bytes > BATCH_BYTES_MAX {
            return false;
        }
    }
    true
}

/// A run of pipelined writes as one log entry: one proposal, one replication round, and the
/// same answers as running them one by one.
async fn write_batch(router: &Router, run: Vec<resp::Parsed>, lane: usize) -> Vec<Value> {
    let count = run.len();
    let commands: Vec<KvCommand> = run
        .into_iter()
        .filter_map(|p| match p {
            resp::Parsed::Kv(cmd, _) => Some(cmd),
            _ => None,
        })
        .collect();
    match router.kv(KvCommand::Batch { commands }, true, lane).await {
        Ok(KvResponse::Batch(rs)) if rs.len() == count => {
            rs.into_iter().map(resp::kv_reply).collect()
        }
        Ok(other) => vec![resp::kv_reply(other); count],
        Err(e) => vec![node_error(e); count],
    }
}

fn node_error(e: NodeError) -> Value {
    match e {
        NodeError::Busy => Value::Error("BUSY too many requests in flight, retry".into()),
        NodeError::Unavailable(m) => Value::Error(format!("CLUSTERDOWN {m}")),
        NodeError::NotLeader {
            leader,
            leader_addr,
        } => Value::Error(format!(
            "NOTLEADER leader is {} at {}",
            leader.map_or("unknown".to_string(), |l| l.to_string()),
            leader_addr.unwrap_or_else(|| "unknown".into())
        )),
        NodeError::ShuttingDown => Value::Error("SHUTDOWN node is shutting down".into()),
        NodeError::Invalid(m) => Value::Error(format!("ERR {m}")),
        NodeError::Unauthenticated(m) => Value::Error(format!("NOAUTH {m}")),
        NodeError::PermissionDenied(m) => Value::Error(format!("NOPERM {m}")),
    }
}

async fn resp_command(router: &Router, parsed: resp::Parsed, lane: usize) -> Value {
    match parsed {
        resp::Parsed::Kv(cmd, linearizable) => {
            let channel = published_channel(&cmd);
            match router.kv(cmd, linearizable, lane).await {
                Ok(r) => receivers_here(router, channel, resp::kv_reply(r)),
                Err(e) => node_error(e),
            }
        }
        resp::Parsed::Reply(v) => v,
        resp::Parsed::Info => match router.handle.status().await {
            Ok(s) => Value::Verbatim(Bytes::from(resp::info_text(&s))),
            Err(e) => node_error(e),
        },
        resp::Parsed::Leader => match router.handle.status().await {
            Ok(s) => match s.leader {
                Some(l) => Value::Bulk(Some(Bytes::from(format!(
                    "{l} {}",
                    s.leader_addr.unwrap_or_default()
                )))),
                None => Value::Bulk(None),
            },
            Err(e) => node_error(e),
        },
        resp::Parsed::Admin(op) => match router.handle.admin(op).await {
            Ok(()) => Value::Simple("OK".into()),
            Err(e) => node_error(e),
        },
        resp::Parsed::Exec(queued, watched) => exec(router, queued, watched, lane).await,
        resp::Parsed::Watch(keys, slot) => {
            let read = router
                .kv(KvCommand::Versions { keys: keys.clone() }, true, lane)
                .await;
            let mut watched = slot.lock().unwrap_or_else(|e| e.into_inner());
            match read {
                Ok(KvResponse::Versions(vs)) if vs.len() == keys.len() => {
                    watched.keys.extend(keys.into_iter().zip(vs));
                    Value::Simple("OK".into())
                }
                Ok(other) => {
                    watched.broken = true;
                    resp::kv_reply(other)
                }
                Err(e) => {
                    watched.broken = true;
                    node_error(e)
                }
            }
        }
    }
}

/// EXEC: the queued data commands as one `Exec` entry, so they apply together and no other
/// client's command lands between them (reads among them too: they are answered from the
/// state at that point of the log), and only if no watched key's version changed (the
/// state machine checks, when the entry applies); the other queued commands answered in
/// their places.
/// The channel of a PUBLISH.
fn published_channel(cmd: &KvCommand) -> Option<Bytes> {
    match cmd {
        KvCommand::Publish { channel, .. } => Some(channel.clone()),
        _ => None,
    }
}

/// A PUBLISH's answer: the subscriptions on this node the message reaches (the state
/// machine answers 0; the count is this node's, not replicated state). Redis Cluster
/// counts the whole cluster's; see docs/WATCH.md.
fn receivers_here(router: &Router, channel: Option<Bytes>, reply: Value) -> Value {
    match (channel, &reply, &router.watch) {
        (Some(channel), Value::Int(_), Some(hub)) => {
            Value::Int(hub.subscribers().receivers(&channel) as i64)
        }
        _ => reply,
    }
}

async fn exec(
    router: &Router,
    queued: Vec<resp::Parsed>,
    watched: resp::WatchSlot,
    lane: usize,
) -> Value {
    let (watches, broken) = {
        let mut w = watched.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut w.keys), w.broken)
    };
    if broken {
        return Value::NullArray;
    }
    let commands: Vec<KvCommand> = queued
        .iter()
        .filter_map(|p| match p {
            resp::Parsed::Kv(cmd, _) => Some(cmd.clone()),
            _ => None,
        })
        .collect();
    let count = commands.len();
    let mut answers = if commands.is_empty() && watches.is_empty() {
        Vec::new()
    } else {
        match router
            .kv(KvCommand::Exec { watches, commands }, true, lane)
            .await
        {
            Ok(KvResponse::Batch(rs)) if rs.len() == count => rs,
            Ok(KvResponse::Aborted) => return Value::NullArray,
            Ok(other) => return resp::kv_reply(other),
            Err(e) => return node_error(e),
        }
    }
    .into_iter();
    let mut replies = Vec::with_capacity(queued.len());
    for p in queued {
        replies.push(match p {
            resp::Parsed::Kv(cmd, _) => receivers_here(
                router,
                published_channel(&cmd),
                answers
                    .next()
                    .map_or_else(|| Value::Error("ERR missing answer".into()), resp::kv_reply),
            ),
            other => Box::pin(resp_command(router, other, lane)).await,
        });
    }
    Value::Array(replies)
}
