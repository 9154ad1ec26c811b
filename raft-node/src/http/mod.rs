//! HTTP: `GET /status` (JSON), `GET /metrics` (Prometheus text), `GET/PUT/DELETE /kv/{key}`
//! (`GET /kv/{key}?stale=1` reads the local replica without a ReadIndex round), `GET /healthz`
//! (the process answers) and `GET /readyz` (the node can serve: it knows a leader and has
//! applied nearly all it knows committed). Every `GET` route also answers `HEAD`.
//!
//! hyper's HTTP/1 server does the parsing (chunked bodies, `Expect: 100-continue`,
//! keep-alive, conflicting `Content-Length`s refused with 400, heads over the limit with
//! 431): a stranger's bytes go through a maintained parser, not one of ours. hyper alone
//! rather than axum: seven routes are one `match`, and axum would add tower's stack for
//! nothing these routes need. What hyper leaves to its user is here: the caps on connections
//! (`conn.rs`), the idle, head and write timeouts (`timed_io.rs`), and the body limit and
//! body read deadline (below), which refuse a body without buffering more than the limit.

mod conn;
mod timed_io;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use raft_client::wire::{KvCommand, KvResponse, NodeError};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::router::Router;
use timed_io::RequestGuard;

/// Bounds of the HTTP port.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Connections open at once; one more is answered 503 and closed.
    pub connections_max: usize,
    /// Connections open at once from one source address.
    pub connections_per_source_max: usize,
    /// Bytes of request line and headers; more is answered 431.
    pub head_bytes_max: usize,
    /// Bytes of a request body; more is answered 413.
    pub body_bytes_max: usize,
    /// From a request head's first byte to its last.
    pub header_read_timeout_ms: u64,
    /// A connection with no request and no traffic for this long is closed.
    pub idle_timeout_ms: u64,
    /// From a request head's end to its body's end; slower is answered 408.
    pub body_read_timeout_ms: u64,
    /// A response write that makes no progress for this long closes the connection, so a
    /// client that does not read cannot hold its response in memory.
    pub write_timeout_ms: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            connections_max: 1_024,
            connections_per_source_max: 256,
            head_bytes_max: 16 << 10,
            // A value travels to the leader in one native frame (8 MiB at most).
            body_bytes_max: (8 << 20) - (64 << 10),
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            body_read_timeout_ms: 30_000,
            write_timeout_ms: 10_000,
        }
    }
}

/// `/readyz` answers 503 while the applied index trails the commit index by more entries
/// than this (a replica still catching up would serve stale reads slowly).
pub const READY_APPLY_LAG_ENTRIES_MAX: u64 = 1_000;

/// What every connection's handler needs.
struct HttpContext {
    router: Arc<Router>,
    limits: HttpLimits,
}

/// Serves HTTP until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    limits: HttpLimits,
    shutdown: watch::Receiver<bool>,
) {
    let ctx = Arc::new(HttpContext { router, limits });
    conn::accept_loop(listener, ctx, shutdown).await
}

/// A response body that tells the connection's timeouts when hyper is done with it.
struct Reply {
    body: Full<Bytes>,
    _guard: RequestGuard,
}

impl Body for Reply {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response before its body is wrapped: status, content type, body, extra headers, and
/// whether to close the connection after it (a refused body was not read to its end).
struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    allow: Option<&'static str>,
    close: bool,
}

impl Answer {
    fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Answer {
            status,
            content_type,
            body: body.into(),
            allow: None,
            close: false,
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
    Status,
    Metrics,
    Healthz,
    Readyz,
    Kv(Bytes),
}

const ALLOW_READ_ONLY: &str = "GET, HEAD";
const ALLOW_KV: &str = "GET, HEAD, PUT, DELETE";

impl Route {
    fn parse(path: &str) -> Option<Route> {
        Some(match path {
            "/status" => Route::Status,
            "/metrics" => Route::Metrics,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
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

async fn respond(
    req: Request<Incoming>,
    ctx: &HttpContext,
    guard: RequestGuard,
) -> Response<Reply> {
    let body_pending = !req.body().is_end_stream();
    let mut answer = route(req, ctx).await;
    if body_pending && !answer.close && answer.status.is_client_error() {
        // The body was refused unread: hyper would drain a little of it and then close
        // anyway; saying so lets the client know not to reuse the connection.
        answer.close = true;
    }
    let mut resp = Response::new(Reply {
        body: Full::new(answer.body),
        _guard: guard,
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
    if answer.close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
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
    match route {
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
        Route::Metrics => Answer::new(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            router.handle.metrics.render(router.handle.id),
        ),
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

/// A request body whole, or the answer refusing it: 413 past `body_bytes_max` (declared
/// or streamed; at most the limit is ever buffered), 408 past `body_read_timeout_ms`, 400 if
/// the body is malformed (a bad chunk).
async fn read_body(req: Request<Incoming>, limits: &HttpLimits) -> Result<Bytes, Answer> {
    let max = limits.body_bytes_max;
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
    match tokio::time::timeout(Duration::from_millis(limits.body_read_timeout_ms), read).await {
        Ok(r) => r,
        Err(_) => Err(Answer::text(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} ms\n",
                limits.body_read_timeout_ms
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
    }
}
fn status_json(s: &raft_client::NodeStatus) -> serde_json::Value {
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
        "peers": s.peers.iter().map(|p| serde_json::json!({
            "id": p.id, "match_index": p.match_index, "next_index": p.next_index,
            "state": p.state, "active": p.active,
        })).collect::<Vec<_>>(),
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
