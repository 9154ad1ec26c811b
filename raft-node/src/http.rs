//! HTTP: `GET /status` (JSON), `GET /metrics` (Prometheus text), `GET/PUT/DELETE /kv/{key}`
//! (`GET /kv/{key}?stale=1` reads the local replica without a ReadIndex round).
//!
//! A minimal HTTP/1.1 server on tokio rather than axum or hyper: five routes, one request
//! per connection (`Connection: close`), bounded head and body. That is all a status page,
//! a Prometheus scraper and curl need, and it keeps hyper's and tower's dependency trees
//! off a build machine that several engineers share. Swap in axum if the surface grows
//! (streaming, keep-alive, TLS).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft_client::wire::{KvCommand, KvResponse, NodeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::router::Router;

/// Bytes of request line and headers at most.
const HEAD_BYTES_MAX: usize = 16 << 10;
/// Bytes of a request body at most.
const BODY_BYTES_MAX: usize = 8 << 20;
/// Time a client has to send its request.
const REQUEST_READ_TIMEOUT_MS: u64 = 10_000;
/// HTTP connections served at once.
const HTTP_CONNECTIONS_MAX: usize = 1024;

/// Serves HTTP until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(HTTP_CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = handle(stream, &router).await;
        });
    }
}

struct HttpRequest {
    method: String,
    path: String,
    body: Bytes,
}

async fn read_request(stream: &mut TcpStream) -> Result<Option<HttpRequest>, std::io::Error> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > HEAD_BYTES_MAX {
            return Ok(None);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let mut length = 0usize;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(usize::MAX);
            }
        }
    }
    if length > BODY_BYTES_MAX {
        return Ok(None);
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; (length - body.len()).min(64 << 10)];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Some(HttpRequest {
        method,
        path,
        body: body.into(),
    }))
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

fn error_status(e: &NodeError) -> u16 {
    match e {
        NodeError::Busy => 429,
        NodeError::Unavailable(_) | NodeError::ShuttingDown | NodeError::NotLeader { .. } => 503,
        NodeError::Invalid(_) => 400,
        NodeError::Unauthenticated(_) => 401,
        NodeError::PermissionDenied(_) => 403,
    }
}

async fn handle(mut stream: TcpStream, router: &Router) -> std::io::Result<()> {
    let read = tokio::time::timeout(
        Duration::from_millis(REQUEST_READ_TIMEOUT_MS),
        read_request(&mut stream),
    )
    .await;
    let Ok(Ok(Some(req))) = read else {
        return respond(&mut stream, 400, "text/plain", b"bad request\n").await;
    };
    let (path, query) = match req.path.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (req.path.clone(), String::new()),
    };
    // Reads are linearizable unless `?stale=1` asks for the local replica as it is.
    let linearizable = !query
        .split('&')
        .any(|kv| kv == "stale=1" || kv == "stale=true");
    let (status, ctype, body): (u16, &str, Vec<u8>) = match (req.method.as_str(), path.as_str()) {
        ("GET", "/status") => match router.handle.status().await {
            Ok(s) => (
                200,
                "application/json",
                serde_json::to_vec_pretty(&status_json(&s)).unwrap_or_default(),
            ),
            Err(e) => (
                error_status(&e),
                "text/plain",
                format!("{e}\n").into_bytes(),
            ),
        },
        ("GET", "/metrics") => (
            200,
            "text/plain; version=0.0.4",
            router.handle.metrics.render(router.handle.id).into_bytes(),
        ),
        (method, p) if p.starts_with("/kv/") && p.len() > 4 => {
            let key = Bytes::from(percent_decode(&p[4..]));
            let cmd = match method {
                "GET" => Some(KvCommand::Get { key }),
                "PUT" => Some(KvCommand::Set {
                    key,
                    value: req.body.clone(),
                }),
                "DELETE" => Some(KvCommand::Del { keys: vec![key] }),
                _ => None,
            };
            match cmd {
                None => (405, "text/plain", b"method not allowed\n".to_vec()),
                Some(cmd) => match router.kv(cmd, linearizable, router.lane()).await {
                    Ok(KvResponse::Value(Some(v))) => (200, "application/octet-stream", v.to_vec()),
                    Ok(KvResponse::Value(None)) => (404, "text/plain", b"not found\n".to_vec()),
                    Ok(KvResponse::Int(0)) => (404, "text/plain", b"not found\n".to_vec()),
                    Ok(KvResponse::Error(e)) => (400, "text/plain", format!("{e}\n").into_bytes()),
                    Ok(_) => (200, "text/plain", b"OK\n".to_vec()),
                    Err(e) => (
                        error_status(&e),
                        "text/plain",
                        format!("{e}\n").into_bytes(),
                    ),
                },
            }
        }
        _ => (404, "text/plain", b"no such route\n".to_vec()),
    };
    respond(&mut stream, status, ctype, &body).await
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

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}
