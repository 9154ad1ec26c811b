//! Accepting HTTP connections: the caps on connections in total and per source address,
//! and hyper's HTTP/1 server over each connection with the byte-level timeouts of
//! [`super::timed_io`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::timed_io::{ConnState, IoTimeouts, TimedIo};
use super::HttpContext;
use crate::limits::ClientLimits;

/// Headers in one request at most (hyper's default is 100).
const REQUEST_HEADERS_MAX: usize = 64;
/// hyper's read buffer at least (its own minimum is 8 KiB): bodies arrive in chunks of up to
/// this, and a head larger than the head limit is refused before the buffer fills.
const READ_BUFFER_BYTES_MIN: usize = 64 << 10;
/// After shutdown, time a connection has to finish the response it is writing.
const SHUTDOWN_GRACE_MS: u64 = 1_000;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_RETRY_MS: u64 = 50;

/// What a refused connection is told, written without waiting (the socket's buffer is empty).
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: text/plain\r\nContent-Length: 21\r\nConnection: close\r\n\r\n\
too many connections\n";

/// Connections open, in total and per source address.
#[derive(Debug, Default)]
struct Slots {
    counts: Mutex<SlotCounts>,
}

#[derive(Debug, Default)]
struct SlotCounts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// One open connection's place; dropping it frees the place.
struct Slot {
    slots: Arc<Slots>,
    source: IpAddr,
}

impl Slots {
    fn take(self: &Arc<Self>, source: IpAddr, limits: &ClientLimits) -> Option<Slot> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let from_source = c.per_source.get(&source).copied().unwrap_or(0);
        if c.total >= limits.http_connections_max
            || from_source >= limits.connections_per_source_max
        {
            return None;
        }
        c.total += 1;
        c.per_source.insert(source, from_source + 1);
        Some(Slot {
            slots: self.clone(),
            source,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total -= 1;
        if let Some(n) = c.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.per_source.remove(&self.source);
            }
        }
    }
}

/// Serves HTTP on `listener` until `shutdown`.
pub(super) async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<HttpContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Slots::default());
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        let Some(slot) = slots.take(remote.ip(), &ctx.limits) else {
            ctx.router
                .handle
                .metrics
                .http_connections_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(%remote, "too many HTTP connections; refusing a new one");
            let _ = stream.try_write(TOO_MANY_CONNECTIONS);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(stream, ctx, shutdown).await;
        });
    }
}

/// One connection, over a socket or (the fuzz target's) an in-memory pipe.
pub(super) async fn serve_connection<S>(
    stream: S,
    ctx: Arc<HttpContext>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &ctx.limits;
    let state = Arc::new(ConnState::default());
    let timeouts = IoTimeouts {
        first_byte: Duration::from_millis(limits.handshake_timeout_ms),
        idle: Duration::from_millis(limits.idle_timeout_ms),
        header_read: Duration::from_millis(limits.read_timeout_ms),
        write: Duration::from_millis(limits.write_timeout_ms),
    };
    // Under TLS, so that the handshake's bytes are timed too.
    let io = TimedIo::new(
        stream,
        state.clone(),
        timeouts,
        ctx.router.handle.metrics.clone(),
    );
    match &ctx.tls {
        None => serve_http(io, state, &ctx, &mut shutdown).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(
                Duration::from_millis(limits.handshake_timeout_ms),
                acceptor.accept(io),
            );
            let tls = tokio::select! {
                _ = shutdown.changed() => return,
                h = handshake => h,
            };
            match tls {
                Ok(Ok(tls)) => serve_http(tls, state, &ctx, &mut shutdown).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "HTTPS handshake failed"),
                Err(_) => {
                    ctx.router
                        .handle
                        .metrics
                        .http_timeouts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!("HTTPS handshake timed out");
                }
            }
        }
    }
}

/// hyper's HTTP/1 server over `io` until the client or a timeout closes it, or `shutdown`.
async fn serve_http<I>(
    io: I,
    state: Arc<ConnState>,
    ctx: &Arc<HttpContext>,
    shutdown: &mut watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = &ctx.limits;
    let service = {
        let ctx = ctx.clone();
        service_fn(move |req| {
            let guard = state.request_started();
            let ctx = ctx.clone();
            async move { Ok::<_, std::convert::Infallible>(super::respond(req, &ctx, guard).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .max_headers(REQUEST_HEADERS_MAX)
        .max_header_size(limits.http_head_bytes_max)
        .max_buf_size(limits.http_head_bytes_max.max(READ_BUFFER_BYTES_MIN))
        // The idle and head timeouts are ours (see `timed_io`): hyper's would also cut
        // a keep-alive connection that is merely quiet.
        .header_read_timeout(None)
        .keep_alive(true)
        // A client may close its sending side right after its request (`nc -N`, HTTP/1.0
        // tools): without this hyper takes that EOF as the client gone and drops the answer
        // still being prepared. The connection's timeouts still bound how long it stays.
        .half_close(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection closed");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_millis(SHUTDOWN_GRACE_MS), conn).await;
        }
    }
}
