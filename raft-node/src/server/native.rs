//! The native protocol on the client port: length-prefixed postcard frames
//! ([`raft_proto`]), pipelined up to [`CONNECTION_REQUESTS_IN_FLIGHT_MAX`] requests, each
//! answered by the node handle, the replies written in request order. Apart from RESP
//! because the two share only the connection's limits and admission.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use raft_proto::{NodeError, Request, RequestFrame, Response, ResponseFrame, FRAME_BYTES_MAX};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::codec::{Framed, FramedParts, LengthDelimitedCodec};

use super::{protect_admin, Conn, CONNECTION_REQUESTS_IN_FLIGHT_MAX};
use crate::auth::{Auth, Session};
use crate::kv::log_command;
use crate::metrics::DisconnectReason;
use crate::runtime::{AdminOp, NodeHandle, ReadAnswer};
use crate::session::native_gate;

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

/// Serves a native-protocol connection until it closes, a limit closes it, or `shutdown`.
pub(super) async fn serve_native<S>(
    stream: S,
    received: BytesMut,
    (auth, mut session): (Arc<Auth>, Session),
    handle: NodeHandle,
    conn: Conn,
    shutdown: watch::Receiver<bool>,
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
    // One stop future and one timer for the connection's life (see `Conn::stopped`): a
    // timer made per request was an insertion into and a removal from the timer wheel per
    // request, while moving one's deadline later takes no lock.
    let stop = conn.stopped(shutdown);
    tokio::pin!(stop);
    let timer = tokio::time::sleep_until(idle_since + Conn::ms(limits.idle_timeout_ms));
    tokio::pin!(timer);
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
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = &mut timer, if waiting => {
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
