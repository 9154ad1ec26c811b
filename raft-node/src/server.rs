//! The client port: the native protocol and RESP on one listener, told apart by the first
//! byte (a native frame's length prefix starts with 0, a RESP request never does).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use raft_client::wire::{
    KvCommand, KvResponse, NodeError, Request, RequestFrame, Response, ResponseFrame,
    BATCH_COMMANDS_MAX, FRAME_BYTES_MAX,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::codec::{Framed, FramedParts, LengthDelimitedCodec};

use crate::kv::log_command;
use crate::limits::ClientLimits;
use crate::resp::{self, RespParser, Value};
use crate::router::Router;
use crate::runtime::{AdminOp, NodeHandle};

/// Client connections served at once; more are accepted and closed at once.
pub const CLIENT_CONNECTIONS_MAX: usize = 4096;
/// Requests of one connection being served at once (pipelining depth).
/// Also the largest run of pipelined writes put into one batch entry.
const CONNECTION_REQUESTS_IN_FLIGHT_MAX: usize = BATCH_COMMANDS_MAX;
/// A run of writes larger than this is proposed command by command instead of as one batch
/// entry, which keeps forwarded frames and log entries small.
const BATCH_BYTES_MAX: usize = 1 << 20;

/// Serves the client port until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    handle: NodeHandle,
    router: Arc<Router>,
    _limits: Arc<ClientLimits>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(CLIENT_CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, remote)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "too many client connections; closing a new one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, handle, router, shutdown).await;
        });
    }
}

/// Serves one client connection over any byte stream (plain TCP, or TLS once decrypted).
/// The protocol is told by the first byte: a native frame's length prefix starts with 0.
/// The bytes read to see it are handed on as the start of the protocol's input.
pub async fn serve_connection<S>(
    mut stream: S,
    handle: NodeHandle,
    router: Arc<Router>,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut first = BytesMut::with_capacity(16 << 10);
    match stream.read_buf(&mut first).await {
        Ok(n) if n > 0 && first[0] == 0 => serve_native(stream, first, handle, shutdown).await,
        Ok(n) if n > 0 => serve_resp(stream, first, router, shutdown).await,
        _ => {}
    }
}

async fn serve_native<S>(
    stream: S,
    received: BytesMut,
    handle: NodeHandle,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(FRAME_BYTES_MAX)
        .new_codec();
    let mut parts = FramedParts::new::<Bytes>(stream, codec);
    parts.read_buf = received;
    let mut framed = Framed::from_parts(parts);
    let mut in_flight = FuturesOrdered::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            Some(reply) = in_flight.next(), if !in_flight.is_empty() => {
                // Every reply already done goes out with this one: one write (and one
                // wake-up of the client) for all of them rather than one each.
                let mut reply: ResponseFrame = reply;
                for _ in 0..CONNECTION_REQUESTS_IN_FLIGHT_MAX {
                    let Ok(buf) = postcard::to_allocvec(&reply) else { return };
                    if framed.feed(Bytes::from(buf)).await.is_err() {
                        return;
                    }
                    match in_flight.next().now_or_never() {
                        Some(Some(next)) => reply = next,
                        _ => break,
                    }
                }
                if SinkExt::<Bytes>::flush(&mut framed).await.is_err() {
                    return;
                }
            }
            frame = framed.next(), if in_flight.len() < CONNECTION_REQUESTS_IN_FLIGHT_MAX => {
                let buf = match frame {
                    Some(Ok(buf)) => buf,
                    // A malformed or oversized frame closes this connection only.
                    Some(Err(_)) | None => return,
                };
                let Ok(req) = postcard::from_bytes::<RequestFrame>(&buf) else {
                    tracing::debug!("undecodable native request; closing the connection");
                    return;
                };
                let handle = handle.clone();
                in_flight.push_back(async move {
                    ResponseFrame { id: req.id, body: native_request(&handle, req.body).await }
                });
            }
        }
    }
}

async fn native_request(handle: &NodeHandle, request: Request) -> Response {
    let result = match request {
        Request::Propose { session, op } => handle
            .propose(log_command(session, op))
            .await
            .map(Response::Applied),
        Request::Read { op, linearizable } => {
            handle.read(op, linearizable).await.map(Response::Applied)
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
    };
    result.unwrap_or_else(Response::Error)
}

async fn serve_resp<S>(
    mut stream: S,
    mut buf: BytesMut,
    router: Arc<Router>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut parser = RespParser::default();
    let lane = router.lane();
    let mut out = Vec::with_capacity(16 << 10);
    loop {
        // Every complete request already received is served together: the writes among them
        // reach the runtime back to back and are appended as one batch.
        let mut batch = Vec::new();
        loop {
            match parser.parse(&mut buf) {
                Ok(Some(args)) => {
                    batch.push(args);
                    if batch.len() >= CONNECTION_REQUESTS_IN_FLIGHT_MAX {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    out.clear();
                    Value::Error(format!("ERR Protocol error: {e}")).write(&mut out);
                    let _ = stream.write_all(&out).await;
                    return;
                }
            }
        }
        if !batch.is_empty() {
            let quit = batch
                .iter()
                .any(|a| a.first().is_some_and(|c| c.eq_ignore_ascii_case(b"QUIT")));
            // Redis answers a connection's commands as if run one after another. Runs of
            // writes (or of reads) are issued together, in order, which batches them into one
            // append; a read waits for the writes before it, and a write for the reads.
            let mut replies: Vec<Value> = Vec::with_capacity(batch.len());
            let parsed: Vec<resp::Parsed> = batch.iter().map(|a| resp::to_command(a)).collect();
            let mut parsed = parsed.into_iter().peekable();
            while let Some(first) = parsed.next() {
                let kind = first.is_write();
                let mut run = vec![first];
                while let Some(next) = parsed.next_if(|p| p.is_write() == kind) {
                    run.push(next);
                }
                if kind && run.len() > 1 && batchable(&run) {
                    replies.extend(write_batch(&router, run, lane).await);
                    continue;
                }
                let answers: Vec<Value> = run
                    .into_iter()
                    .map(|p| {
                        let router = router.clone();
                        async move { resp_command(&router, p, lane).await }
                    })
                    .collect::<FuturesOrdered<_>>()
                    .collect()
                    .await;
                replies.extend(answers);
            }
            out.clear();
            for r in replies {
                r.write(&mut out);
            }
            if stream.write_all(&out).await.is_err() || quit {
                return;
            }
            continue;
        }
        let read = tokio::select! {
            _ = shutdown.changed() => return,
            r = stream.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn batchable(run: &[resp::Parsed]) -> bool {
    let mut bytes = 0;
    for p in run {
        let resp::Parsed::Kv(cmd, _) = p else {
            return false;
        };
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
    }
}

async fn resp_command(router: &Router, parsed: resp::Parsed, lane: usize) -> Value {
    match parsed {
        resp::Parsed::Kv(cmd, linearizable) => match router.kv(cmd, linearizable, lane).await {
            Ok(r) => resp::kv_reply(r),
            Err(e) => node_error(e),
        },
        resp::Parsed::Reply(v) => v,
        resp::Parsed::Info => match router.handle.status().await {
            Ok(s) => Value::Bulk(Some(Bytes::from(resp::info_text(&s)))),
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
    }
}
