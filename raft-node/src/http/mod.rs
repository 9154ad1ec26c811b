//! HTTP: `GET /` (the status page, `page.rs`), `GET /cluster` (every member's status, JSON,
//! what the page shows), `GET /status` (JSON), `GET /metrics` (Prometheus text), `GET/PUT/DELETE /kv/{key}`
//! (`GET /kv/{key}?stale=1` reads the local replica without a ReadIndex round), `GET /healthz`
//! (the process answers), `GET /readyz` (the node can serve: it knows a leader and has
//! applied nearly all it knows committed) and `GET /watch/{prefix}?from=INDEX` (key changes
//! as server-sent events, `sse.rs`). Every `GET` route also answers `HEAD`.
//!
//! hyper's HTTP/1 server does the parsing (chunked bodies, `Expect: 100-continue`,
//! keep-alive, conflicting `Content-Length`s refused with 400, heads over the limit with
//! 431): a stranger's bytes go through a maintained parser, not one of ours. hyper alone
//! rather than axum: a handful of routes are one `match`, and axum would add tower's stack for
//! nothing these routes need. What hyper leaves to its user is here: the caps on connections
//! (`conn.rs`), the idle, head and write timeouts (`timed_io.rs`), and the body limit and
//! body read deadline (below), which refuse a body without buffering more than the limit.

mod conn;
mod page;
mod sse;
mod timed_io;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use raft_proto::{KvCommand, KvResponse, NodeError};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::auth::Role;
use crate::limits::ClientLimits;
use crate::router::Router;
use timed_io::RequestGuard;

/// `/readyz` answers 503 while the applied index trails the commit index by more entries
/// than this (a replica still catching up would serve stale reads slowly).
pub const READY_APPLY_LAG_ENTRIES_MAX: u64 = 1_000;

/// What every connection's handler needs.
struct HttpContext {
    router: Arc<Router>,
    limits: Arc<ClientLimits>,
    /// TLS on the port (`[tls]`), with the client port's settings: a client certificate is
    /// verified when presented, and required with `client_cert_required`.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// KiB of response bodies hyper holds for clients that have not taken them yet.
    reply_budget: Arc<Semaphore>,
    reply_budget_kib: usize,
}

/// Bytes of response bodies, across all HTTP connections, that a node holds for clients
/// that have not taken them yet. A client that does not read holds its response until
/// `write_timeout_ms` cuts it off; past this budget new large responses get 503.
pub const REPLY_BYTES_IN_FLIGHT_MAX: usize = 256 << 20;
/// Bodies up to this size need no share of the budget (status pages, errors, small values):
/// the connection cap already bounds them.
const REPLY_BYTES_UNBUDGETED_MAX: usize = 64 << 10;

/// Serves HTTP until `shutdown`, within `limits`: `http_connections_max` and
/// `connections_per_source_max` connections (503 past either), `http_head_bytes_max` (431),
/// `http_body_bytes_max` (413); `handshake_timeout_ms` for a new connection's first byte,
/// `idle_timeout_ms` between requests, `read_timeout_ms` for a request head from its first
/// byte and again for its body from the head's end (408), `write_timeout_ms` for a
/// response write that makes no progress. With `tls`, every connection is HTTPS; its
/// handshake must finish within `handshake_timeout_ms`. Response bodies not yet taken by
/// their clients hold at most `reply_bytes_in_flight_max` bytes in all
/// ([`REPLY_BYTES_IN_FLIGHT_MAX`] in a node).
pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    limits: Arc<ClientLimits>,
    tls: Option<Arc<rustls::ServerConfig>>,
    reply_bytes_in_flight_max: usize,
    shutdown: watch::Receiver<bool>,
) {
    let reply_budget_kib = (reply_bytes_in_flight_max / 1024).clamp(1, Semaphore::MAX_PERMITS);
    let ctx = Arc::new(HttpContext {
        router,
        limits,
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
        reply_budget: Arc::new(Semaphore::new(reply_budget_kib)),
        reply_budget_kib,
    });
    conn::accept_loop(listener, ctx, shutdown).await
}

/// Serves one plaintext connection over `stream` as [`serve`] serves each accepted socket,
/// without the caps on connections: for callers that bring their own streams (the HTTP
/// fuzz target feeds it an in-memory pipe), with a reply budget of its own of
/// [`REPLY_BYTES_IN_FLIGHT_MAX`].
pub async fn serve_stream<S>(
    stream: S,
    router: Arc<Router>,
    limits: Arc<ClientLimits>,
    shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let reply_budget_kib = REPLY_BYTES_IN_FLIGHT_MAX / 1024;
    let ctx = Arc::new(HttpContext {
        router,
        limits,
        tls: None,
        reply_budget: Arc::new(Semaphore::new(reply_budget_kib)),
        reply_budget_kib,
    });
    conn::serve_connection(stream, ctx, shutdown).await
}

/// A response body, handed to hyper a slice at a time: hyper asks for the next slice only
/// when its write buffer has room, so this body (with its share of the reply budget and
/// the connection's request mark) lives until the client has taken all but the last slices.
struct Reply {
    rest: Bytes,
    /// After `rest`, a body produced as it goes (a watch's events), pulled only when hyper
    /// has room for more.
    stream: Option<sse::EventStream>,
    _guard: RequestGuard,
    /// This body's share of the node's reply budget, given back when hyper drops it.
    _budget: Option<OwnedSemaphorePermit>,
}

/// Bytes of a response body handed to hyper at once.
const REPLY_SLICE_BYTES: usize = 64 << 10;

impl Body for Reply {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            let Some(stream) = self.stream.as_mut() else {
                return std::task::Poll::Ready(None);
            };
            return match futures::ready!(stream.as_mut().poll_next(cx)) {
                Some(chunk) => std::task::Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => {
                    self.stream = None;
                    std::task::Poll::Ready(None)
                }
            };
        }
        let n = self.rest.len().min(REPLY_SLICE_BYTES);
        std::task::Poll::Ready(Some(Ok(Frame::data(self.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.stream.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.stream {
            Some(_) => SizeHint::default(),
            None => SizeHint::with_exact(self.rest.len() as u64),
        }
    }
}

/// A response before its body is wrapped: status, content type, body, extra headers, and
/// whether to close the connection after it (a refused body was not read to its end).
struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    allow: Option<&'static str>,
    www_authenticate: Option<&'static str>,
    /// Further headers (the status page's content security policy).
    extra: &'static [(&'static str, &'static str)],
    close: bool,
    /// A body that goes on after `body` (an event stream).
    stream: Option<sse::EventStream>,
}

impl Answer {
    fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Answer {
            status,
            content_type,
            body: body.into(),
            allow: None,
            www_authenticate: None,
            extra: &[],
            close: false,
            stream: None,
        }
    }

    fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Answer::new(status, "text/plain", body.into())
    }

    fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

/// The routes and the methods each allows.
enum Route {
    Page,
    Cluster,
    Status,
    Metrics,
    Healthz,
    Readyz,
    Kv(Bytes),
    Watch(Bytes),
}

const ALLOW_READ_ONLY: &str = "GET, HEAD";
const ALLOW_KV: &str = "GET, HEAD, PUT, DELETE";

impl Route {
    fn parse(path: &str) -> Option<Route> {
        Some(match path {
            "/" => Route::Page,
            "/cluster" => Route::Cluster,
            "/status" => Route::Status,
            "/metrics" => Route::Metrics,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/watch" => Route::Watch(Bytes::new()),
            p if p.starts_with("/watch/") => {
                Route::Watch(Bytes::from(percent_decode(&p["/watch/".len()..])))
            }
            p => Route::Kv(Bytes::from(percent_decode(
                p.strip_prefix("/kv/").filter(|k| !k.is_empty())?,
            ))),
        })
    }

    fn allow(&self) -> &'static str {
        match self {
            Route::Kv(_) => ALLOW_KV,
            _ => ALLOW_READ_ONLY,
        }
    }
}

/// Takes `bytes` of the node's budget of response bytes not yet taken by their clients:
/// `Some(None)` for a small body (up to `REPLY_BYTES_UNBUDGETED_MAX`, which the connection
/// cap bounds), `None` if the budget is spent. It does not wait for budget: waiting would
/// hold the body it is for.
fn reserve_reply(ctx: &HttpContext, bytes: usize) -> Option<Option<OwnedSemaphorePermit>> {
    if bytes <= REPLY_BYTES_UNBUDGETED_MAX {
        return Some(None);
    }
    // Whole KiB, and never more than the whole budget, so that any reply can be sent.
    let kib = bytes.div_ceil(1024).min(ctx.reply_budget_kib);
    let kib = u32::try_from(kib).unwrap_or(u32::MAX);
    ctx.reply_budget
        .clone()
        .try_acquire_many_owned(kib)
        .ok()
        .map(Some)
}

async fn respond(
    req: Request<Incoming>,
    ctx: &HttpContext,
    guard: RequestGuard,
) -> Response<Reply> {
    let body_pending = !req.body().is_end_stream();
    let mut answer = route(req, ctx).await;
    let budget = match reserve_reply(ctx, answer.body.len()) {
        Some(permit) => permit,
        None => {
            answer = Answer::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: too many response bytes waiting for their clients; retry\n",
            );
            None
        }
    };
    if body_pending && !answer.close && answer.status.is_client_error() {
        // The body was refused unread: hyper would drain a little of it and then close
        // anyway; saying so lets the client know not to reuse the connection.
        answer.close = true;
    }
    let streaming = answer.content_type == "text/event-stream";
    let mut resp = Response::new(Reply {
        rest: answer.body,
        stream: answer.stream,
        _guard: guard,
        _budget: budget,
    });
    *resp.status_mut() = answer.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(answer.content_type),
    );
    if let Some(allow) = answer.allow {
        h.insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    if let Some(challenge) = answer.www_authenticate {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    for (name, value) in answer.extra {
        h.insert(*name, HeaderValue::from_static(value));
    }
    if answer.close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if streaming {
        h.insert(header::CACHE_CONTROL, sse::CACHE_CONTROL);
    }
    resp
}

async fn route(req: Request<Incoming>, ctx: &HttpContext) -> Answer {
    let Some(route) = Route::parse(req.uri().path()) else {
        return Answer::text(StatusCode::NOT_FOUND, "no such route\n");
    };
    let method = req.method().clone();
    let allowed = matches!(
        (&route, &method),
        (_, &Method::GET | &Method::HEAD) | (Route::Kv(_), &Method::PUT | &Method::DELETE)
    );
    if !allowed {
        let mut a = Answer::text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "method {method} not allowed here; allowed: {}\n",
                route.allow()
            ),
        );
        a.allow = Some(route.allow());
        return a;
    }
    let router = &ctx.router;
    let needed = match (&route, &method) {
        // The page holds no data: refused, it still loads (with the refusal's status) and
        // asks for a token, which its requests for `/cluster` then carry.
        (Route::Healthz | Route::Readyz | Route::Page, _) => None,
        (_, &Method::PUT | &Method::DELETE) => Some(Role::ReadWrite),
        _ => Some(Role::Read),
    };
    if let Some(needed) = needed {
        if let Err(refused) = authorize(&req, router, needed) {
            return refused;
        }
    }
    match route {
        Route::Page => page::page(authorize(&req, router, Role::Read).err()),
        Route::Cluster => page::cluster(router).await,
        Route::Watch(prefix) => sse::answer(&req, router, prefix, method == Method::HEAD),
        Route::Healthz => Answer::text(StatusCode::OK, "ok\n"),
        Route::Readyz => readiness(router).await,
        Route::Status => match router.handle.status().await {
            Ok(s) => Answer::new(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec_pretty(&status_json(&s)).unwrap_or_default(),
            ),
            Err(e) => Answer::text(error_status(&e), format!("{e}\n")),
        },
        Route::Metrics => {
            // The leader's per-peer series come from its status; elsewhere there are none.
            let peers = router.handle.status().await.map(|s| s.peers);
            Answer::new(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                router
                    .handle
                    .metrics
                    .render(router.handle.id, &peers.unwrap_or_default()),
            )
        }
        Route::Kv(key) => {
            // Reads are linearizable unless `?stale=1` asks for the local replica as it is.
            let linearizable = !req
                .uri()
                .query()
                .unwrap_or_default()
                .split('&')
                .any(|kv| kv == "stale=1" || kv == "stale=true");
            let command = match method {
                Method::PUT => match read_body(req, &ctx.limits).await {
                    Ok(value) => KvCommand::Set { key, value },
                    Err(refused) => return refused,
                },
                Method::DELETE => KvCommand::Del { keys: vec![key] },
                _ => KvCommand::Get { key },
            };
            kv(router, command, linearizable).await
        }
    }
}

/// A request body whole, or the answer refusing it: 413 past `http_body_bytes_max` (declared
/// or streamed; at most the limit is ever buffered), 408 past `read_timeout_ms`, 400 if the
/// body is malformed (a bad chunk).
async fn read_body(req: Request<Incoming>, limits: &ClientLimits) -> Result<Bytes, Answer> {
    let max = limits.http_body_bytes_max;
    let too_large = || {
        Answer::text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {max} bytes\n"),
        )
        .closing()
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        // Refused before the body is polled, so a client that sent `Expect: 100-continue`
        // never gets its 100 and never sends the body.
        return Err(too_large());
    }
    let capacity = declared.map_or(0, |n| n as usize);
    let mut body = req.into_body();
    let read = async {
        let mut buf = BytesMut::with_capacity(capacity);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Answer::text(StatusCode::BAD_REQUEST, format!("bad request body: {e}\n")).closing()
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > max {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(Duration::from_millis(limits.read_timeout_ms), read).await {
        Ok(r) => r,
        Err(_) => Err(Answer::text(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} ms\n",
                limits.read_timeout_ms
            ),
        )
        .closing()),
    }
}

async fn kv(router: &Router, command: KvCommand, linearizable: bool) -> Answer {
    match router.kv(command, linearizable, router.lane()).await {
        Ok(KvResponse::Value(Some(v))) => {
            Answer::new(StatusCode::OK, "application/octet-stream", v)
        }
        Ok(KvResponse::Value(None)) | Ok(KvResponse::Int(0)) => {
            Answer::text(StatusCode::NOT_FOUND, "not found\n")
        }
        Ok(KvResponse::Error(e)) => Answer::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        Ok(_) => Answer::text(StatusCode::OK, "OK\n"),
        Err(e) => Answer::text(error_status(&e), format!("{e}\n")),
    }
}

/// Checks the request's bearer token when credentials are configured: 401 (with
/// `WWW-Authenticate: Bearer`) without a valid one, 403 when its role is below `needed`.
fn authorize(req: &Request<Incoming>, router: &Router, needed: Role) -> Result<(), Answer> {
    if !router.auth.is_enabled() {
        return Ok(());
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(token) = token else {
        let mut a = Answer::text(
            StatusCode::UNAUTHORIZED,
            "authentication required: send Authorization: Bearer <password or user:password>\n",
        );
        a.www_authenticate = Some("Bearer");
        return Err(a);
    };
    match router.auth.verify_bearer(token) {
        None => {
            let mut a = Answer::text(StatusCode::UNAUTHORIZED, "invalid bearer token\n");
            a.www_authenticate = Some("Bearer error=\"invalid_token\"");
            Err(a)
        }
        Some(role) if role < needed => Err(Answer::text(
            StatusCode::FORBIDDEN,
            format!("this needs the {needed} role; the token's user has {role}\n"),
        )),
        Some(_) => Ok(()),
    }
}

/// 200 when this node knows a leader and has applied all but a few of the entries it knows
/// committed; otherwise 503 saying which.
async fn readiness(router: &Router) -> Answer {
    let s = match router.handle.status().await {
        Ok(s) => s,
        Err(e) => {
            return Answer::text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n"))
        }
    };
    let lag = s.commit_index.saturating_sub(s.applied_index);
    if s.leader.is_none() {
        Answer::text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: no known leader (term {})\n", s.term),
        )
    } else if lag > READY_APPLY_LAG_ENTRIES_MAX {
        Answer::text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: applied index {} is {lag} entries behind the commit index {} \
                 (at most {READY_APPLY_LAG_ENTRIES_MAX})\n",
                s.applied_index, s.commit_index
            ),
        )
    } else {
        Answer::text(StatusCode::OK, "ready\n")
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn error_status(e: &NodeError) -> StatusCode {
    match e {
        NodeError::Busy => StatusCode::TOO_MANY_REQUESTS,
        NodeError::Unavailable(_) | NodeError::ShuttingDown | NodeError::NotLeader { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        NodeError::Invalid(_) => StatusCode::BAD_REQUEST,
        // A forwarded write the leader refused: this node's own login failed there.
        NodeError::Unauthenticated(_) => StatusCode::BAD_GATEWAY,
        NodeError::PermissionDenied(_) => StatusCode::FORBIDDEN,
    }
}
fn status_json(s: &raft_proto::NodeStatus) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "role": s.role,
        "term": s.term,
        "leader": s.leader,
        "leader_addr": s.leader_addr,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "persisted_index": s.persisted_index,
        "log": { "first_index": s.first_index, "last_index": s.last_index, "snapshot_index": s.snapshot_index, "storage": s.storage },
        "voters": s.voters,
        "learners": s.learners,
        "elections": s.elections,
        "http_addr": s.http_addr,
        "peers": s.peers.iter().map(|p| serde_json::json!({
            "id": p.id, "match_index": p.match_index, "next_index": p.next_index,
            "state": p.state, "active": p.active, "last_contact_ms": p.last_contact_ms,
            "match_lag": p.match_lag, "rtt_us": p.rtt_us,
        })).collect::<Vec<_>>(),
        "leader_changes": s.leader_changes.iter().map(|c| serde_json::json!({
            "term": c.term, "leader": c.leader, "at_unix_ms": c.at_unix_ms,
        })).collect::<Vec<_>>(),
        "load": {
            "writes": s.load.writes, "write_latency_us_sum": s.load.write_latency_us_sum,
            "reads": s.load.reads,
        },
        "memory": { "used_bytes": s.memory_used_bytes, "bytes_max": s.memory_bytes_max },
        "digests": s.digests.iter().map(|d| serde_json::json!({
            "index": d.index, "digest": d.digest,
        })).collect::<Vec<_>>(),
        "anti_entropy": {
            "compared_index": s.anti_entropy.compared_index,
            "comparisons": s.anti_entropy.comparisons,
            "divergence_total": s.anti_entropy.divergence_total,
            "divergent": s.anti_entropy.divergent.iter().map(|d| serde_json::json!({
                "node": d.node, "index": d.index, "digest": d.digest,
                "majority_digest": d.majority_digest,
            })).collect::<Vec<_>>(),
        },
    })
}
