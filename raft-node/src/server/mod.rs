//! The client port: the native protocol and RESP on one listener, told apart by the first
//! byte (a native frame's length prefix starts with 0, a RESP request never does).
//!
//! Every connection is held to the bounds of [`ClientLimits`]: admission caps
//! ([`crate::admission`]), a first byte within `handshake_timeout_ms`, `idle_timeout_ms`
//! with no request under way, `read_timeout_ms` for a started request, `write_timeout_ms`
//! for each reply, input held at most `query_buffer_bytes_max` and replies held at most
//! `output_buffer_bytes_max`. Each close for a limit is counted in
//! `raft_client_disconnects_total{reason}`.
//!
//! The pieces, each in its own file: this one accepts connections (admission, TLS) and
//! tells the protocols apart; `native.rs` serves the native protocol; `resp_conn.rs` is a
//! RESP connection's read loop, `resp_dispatch.rs` serves the commands it parsed, and
//! `resp_output.rs` gathers and writes their replies; `pubsub.rs` is subscribe mode.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use raft_proto::BATCH_COMMANDS_MAX;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::{Admission, Ticket};
use crate::auth::{certified_session, Auth, Role, Session};
use crate::limits::ClientLimits;
use crate::metrics::{DisconnectReason, Metrics};
use crate::router::Router;
use crate::runtime::NodeHandle;
use crate::session::RespSession;

mod native;
mod pubsub;
mod resp_conn;
mod resp_dispatch;
mod resp_output;

pub(crate) use resp_dispatch::refuse_too_many_keys;

use native::serve_native;
use resp_conn::serve_resp;

/// Requests of one connection being served at once (pipelining depth).
/// Also the largest run of pipelined writes put into one batch entry.
const CONNECTION_REQUESTS_IN_FLIGHT_MAX: usize = BATCH_COMMANDS_MAX;
/// Spare room made in a connection's input buffer before each read.
const READ_CHUNK_BYTES: usize = 16 << 10;

/// Why a connection stops: the peer went away (or asked to), or a limit closed it.
type Closed = Option<DisconnectReason>;

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

    /// Resolves once the node shuts down (`shutdown` changes or its sender is gone) or the
    /// admission table evicts this connection. A connection loop makes it once and polls
    /// the same future every time round: made anew per request, its two waiters were
    /// registered (each in a mutex-guarded list) and dropped again per request.
    async fn stopped(&self, mut shutdown: watch::Receiver<bool>) {
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = self.ticket.evicted() => {}
        }
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
