//! A RESP connection's read loop: parses what arrives, hands each batch of complete
//! requests to [`super::resp_dispatch`] (or to subscribe mode, [`super::pubsub`]), and
//! holds the connection to its read, idle and input-buffer limits. Apart from the
//! dispatch because this is about bytes and timeouts, that about what commands do.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use super::resp_dispatch::serve_resp_batch;
use super::resp_output::RespOutput;
use super::{protect_admin, pubsub, Conn, CONNECTION_REQUESTS_IN_FLIGHT_MAX, READ_CHUNK_BYTES};
use crate::metrics::DisconnectReason;
use crate::resp::{ParserLimits, RespParser, Value};
use crate::router::Router;
use crate::session::RespSession;

/// Serves a RESP connection until it closes, a limit closes it, or `shutdown`.
pub(super) async fn serve_resp<S>(
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
    // One stop future and one timer for the connection's life, as in the native loop (see
    // `Conn::stopped`). Boxed, so that subscribe mode can be handed a fresh one.
    let mut stop = Box::pin(conn.stopped(shutdown.clone()));
    let timer = tokio::time::sleep_until(idle_since + Conn::ms(limits.idle_timeout_ms));
    tokio::pin!(timer);
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
                        // Subscribe mode waits for an eviction itself: a waiter of ours
                        // still registered would take its `notify_one` from it. Replacing
                        // it with an unpolled one hands a pending notification on.
                        stop.set(conn.stopped(shutdown.clone()));
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
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        let read = tokio::select! {
            _ = &mut stop => return,
            _ = &mut timer => {
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
