//! Serving parsed RESP commands in a connection's order: runs of pipelined writes
//! proposed together (as one batch entry when they fit), runs of reads answered from one
//! view of the state, EXEC and WATCH, and the RESP errors for node errors. Apart from the
//! read loop because this is what the commands do, whichever mode the connection is in.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use raft_proto::{KvCommand, KvError, KvResponse, NodeError};
use tokio::io::AsyncWrite;

use super::resp_output::RespOutput;
use super::Closed;
use crate::kv::KvView;
use crate::limits::ClientLimits;
use crate::resp::{self, Protocol, Value};
use crate::router::Router;
use crate::session::RespSession;

/// A run of writes larger than this is proposed command by command instead of as one batch
/// entry, which keeps forwarded frames and log entries small.
const BATCH_BYTES_MAX: usize = 1 << 20;

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

/// Serves a batch of pipelined requests in order, writing each reply as it is made.
///
/// Redis answers a connection's commands as if run one after another. Runs of writes are
/// issued together, in order, which batches them into one append; a run of reads is
/// answered from one view of the state taken at a read index after they all arrived, one
/// reply at a time, so the connection never holds more than one reply it has not written.
pub(super) async fn serve_resp_batch<S: AsyncWrite + Unpin>(
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
/// EXEC: the queued data commands as one `Exec` entry, so they apply together and no other
/// client's command lands between them (reads among them too: they are answered from the
/// state at that point of the log), and only if no watched key's version changed (the
/// state machine checks, when the entry applies); the other queued commands answered in
/// their places.
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
