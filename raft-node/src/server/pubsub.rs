//! Subscribe mode on the client port: Redis keyspace notifications (`SUBSCRIBE` /
//! `PSUBSCRIBE` to `__keyspace@0__:<key>` and `__keyevent@0__:<event>`) and `WATCHLOG
//! prefix [FROM index]`, a watch that resumes by log index (see docs/WATCH.md).
//!
//! Both read this node's watch hub ([`crate::watch`]), so every node serves them from its
//! own applied state. Messages are RESP3 pushes (`>`) after `HELLO 3`, arrays in RESP2.
//! As in Redis, a subscribed RESP2 connection takes only (P)SUBSCRIBE, (P)UNSUBSCRIBE,
//! WATCHLOG, PING, QUIT and RESET, while a RESP3 one runs any command (its replies are
//! told from the messages by their type). It returns to normal mode once it has no
//! subscription left, or on RESET. Notifications are always on for every event class
//! (`notify-keyspace-events` reads `KEA`). A connection that reads its messages more slowly
//! than the hub's history evicts gets the "compacted, resync" error and is closed; one
//! that stops reading is cut off by `write_timeout_ms` or `output_buffer_bytes_max`.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use super::resp_dispatch::serve_resp_batch;
use super::resp_output::RespOutput;
use super::{Closed, Conn, READ_CHUNK_BYTES};
use crate::changes::KeyChange;
use crate::changes::KeyEvent;
use crate::glob::Pattern;
use crate::metrics::DisconnectReason;
use crate::resp::{Protocol, RespParser, Value};
use crate::router::Router;
use crate::session::RespSession;
use crate::watch::{AppliedChanges, WatchError, WatchHub, Watcher};

/// Channels, patterns and watches one connection may hold at once.
pub const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 1_024;

const KEYSPACE_PREFIX: &[u8] = b"__keyspace@0__:";
const KEYEVENT_PREFIX: &[u8] = b"__keyevent@0__:";

/// Whether `args` is a command that enters (or is answered in) subscribe mode.
pub(super) fn starts_subscription(args: &[Bytes]) -> bool {
    args.first().is_some_and(|c| {
        [
            &b"SUBSCRIBE"[..],
            b"PSUBSCRIBE",
            b"UNSUBSCRIBE",
            b"PUNSUBSCRIBE",
            b"WATCHLOG",
        ]
        .iter()
        .any(|n| c.eq_ignore_ascii_case(n))
    })
}

struct LogWatch {
    prefix: Bytes,
    watcher: Watcher,
}

#[derive(Default)]
struct Subscriptions {
    channels: BTreeSet<Bytes>,
    patterns: Vec<(Bytes, Pattern)>,
    /// Reads the hub for the channels and patterns, from when the first was subscribed.
    keyspace: Option<Watcher>,
    log: Option<LogWatch>,
    /// Where the channels and patterns are counted for PUBLISH's answer (the hub's
    /// [`Subscribers`](crate::watch::Subscribers)), from the first subscription.
    hub: Option<Arc<WatchHub>>,
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        if let Some(hub) = &self.hub {
            for c in &self.channels {
                hub.subscribers().remove_channel(c);
            }
            for (p, _) in &self.patterns {
                hub.subscribers().remove_pattern(p);
            }
        }
    }
}

impl Subscriptions {
    fn count(&self) -> usize {
        self.channels.len() + self.patterns.len() + usize::from(self.log.is_some())
    }
}

enum Next {
    Command(Vec<Vec<Bytes>>),
    Keyspace(Result<Vec<Arc<AppliedChanges>>, WatchError>),
    Log(Result<Vec<Arc<AppliedChanges>>, WatchError>),
}

async fn next_of(w: Option<&mut Watcher>) -> Result<Vec<Arc<AppliedChanges>>, WatchError> {
    match w {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

fn bulk(b: impl Into<Bytes>) -> Value {
    Value::Bulk(Some(b.into()))
}

/// Serves `pending` (whose first command is one of [`starts_subscription`]'s) and what the
/// connection sends after it, in subscribe mode. Returns the commands received after the
/// connection left subscribe mode, to be served normally; `Err` when it is to be closed.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    parser: &mut RespParser,
    session: &mut RespSession,
    router: &Arc<Router>,
    conn: &Conn,
    out: &mut RespOutput,
    shutdown: &mut watch::Receiver<bool>,
    pending: Vec<Vec<Bytes>>,
    lane: usize,
) -> Result<Vec<Vec<Bytes>>, Closed>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = conn.limits.clone();
    // Messages are pushes: `>` frames after HELLO 3, arrays in RESP2.
    out.proto = session.protocol();
    let mut subs = Subscriptions::default();
    let mut queue: VecDeque<Vec<Bytes>> = pending.into();
    let mut request_since: Option<Instant> = None;
    loop {
        while let Some(args) = queue.pop_front() {
            let quit = command(&mut subs, &args, session, router, stream, out, conn, lane).await?;
            // A command may have changed the protocol (HELLO, RESET).
            out.proto = session.protocol();
            if quit {
                out.flush(stream).await?;
                return Err(None);
            }
            if subs.count() == 0 {
                // Everything unsubscribed, RESET, or a subscription refused: normal mode.
                out.flush(stream).await?;
                return Ok(queue.into());
            }
        }
        out.flush(stream).await?;
        let held = buf.len() + parser.pending_bytes();
        if held > limits.query_buffer_bytes_max {
            return Err(Some(DisconnectReason::QueryBuffer));
        }
        let partial = held > 0;
        // A subscriber waits for messages, not requests: only a started request has a
        // deadline.
        conn.ticket.set_busy(partial);
        let read_deadline = partial.then(|| {
            *request_since.get_or_insert_with(Instant::now) + Conn::ms(limits.read_timeout_ms)
        });
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES {
            buf.reserve(READ_CHUNK_BYTES);
        }
        let log = subs.log.as_mut().map(|l| &mut l.watcher);
        let next = tokio::select! {
            _ = shutdown.changed() => return Err(None),
            _ = conn.ticket.evicted() => return Err(None),
            _ = async {
                match read_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => return Err(Some(DisconnectReason::ReadTimeout)),
            r = next_of(subs.keyspace.as_mut()) => Next::Keyspace(r),
            r = next_of(log) => Next::Log(r),
            r = stream.read_buf(buf) => {
                match r {
                    Ok(0) | Err(_) => return Err(None),
                    Ok(_) => {}
                }
                let mut commands = Vec::new();
                loop {
                    match parser.parse(buf) {
                        Ok(Some(args)) => commands.push(args),
                        Ok(None) => break,
                        Err(e) => {
                            out.push(stream, &Value::Error(format!("ERR Protocol error: {e}")))
                                .await?;
                            out.flush(stream).await?;
                            return Err(Some(DisconnectReason::ProtocolError));
                        }
                    }
                }
                Next::Command(commands)
            }
        };
        match next {
            Next::Command(commands) => {
                if !commands.is_empty() {
                    request_since = None;
                }
                queue.extend(commands);
            }
            Next::Keyspace(Ok(batch)) => {
                for record in &batch {
                    for change in &record.changes {
                        notify(&subs, change, stream, out).await?;
                    }
                }
            }
            Next::Log(Ok(batch)) => {
                let prefix = subs
                    .log
                    .as_ref()
                    .map(|l| l.prefix.clone())
                    .unwrap_or_default();
                for record in &batch {
                    let changes: Vec<Value> = record
                        .matching(&prefix)
                        .map(|c| {
                            Value::Array(vec![
                                bulk(c.event.name()),
                                bulk(c.key.clone()),
                                Value::Bulk(c.value.clone()),
                            ])
                        })
                        .collect();
                    if changes.is_empty() {
                        continue;
                    }
                    let message = Value::Push(vec![
                        bulk("watchlog"),
                        Value::Int(record.index as i64),
                        Value::Array(changes),
                    ]);
                    out.push(stream, &message).await?;
                }
            }
            Next::Keyspace(Err(e)) | Next::Log(Err(e)) => {
                out.push(stream, &Value::Error(format!("ERR {e}"))).await?;
                out.flush(stream).await?;
                return Err(None);
            }
        }
    }
}

/// The keyspace and keyevent messages of one change, to the channels and patterns that
/// match them.
async fn notify<S: AsyncWrite + Unpin>(
    subs: &Subscriptions,
    change: &KeyChange,
    stream: &mut S,
    out: &mut RespOutput,
) -> Result<(), Closed> {
    if change.event == KeyEvent::Publish {
        // A PUBLISH: the message to the channel's subscribers and matching patterns', as
        // Redis sends it; no keyspace notification (no key changed).
        let message = change.value.clone().unwrap_or_default();
        if subs.channels.contains(&change.key) {
            let m = Value::Push(vec![
                bulk("message"),
                bulk(change.key.clone()),
                bulk(message.clone()),
            ]);
            out.push(stream, &m).await?;
        }
        for (text, pattern) in &subs.patterns {
            if pattern.matches(&change.key) {
                let m = Value::Push(vec![
                    bulk("pmessage"),
                    bulk(text.clone()),
                    bulk(change.key.clone()),
                    bulk(message.clone()),
                ]);
                out.push(stream, &m).await?;
            }
        }
        return Ok(());
    }
    let event = change.event.name().as_bytes();
    let keyspace = [KEYSPACE_PREFIX, &change.key].concat();
    let keyevent = [KEYEVENT_PREFIX, event].concat();
    for (channel, payload) in [
        (keyspace, Bytes::from_static(change.event.name().as_bytes())),
        (keyevent, change.key.clone()),
    ] {
        if subs.channels.contains(&channel[..]) {
            let m = Value::Push(vec![
                bulk("message"),
                bulk(channel.clone()),
                bulk(payload.clone()),
            ]);
            out.push(stream, &m).await?;
        }
        for (text, pattern) in &subs.patterns {
            if pattern.matches(&channel) {
                let m = Value::Push(vec![
                    bulk("pmessage"),
                    bulk(text.clone()),
                    bulk(channel.clone()),
                    bulk(payload.clone()),
                ]);
                out.push(stream, &m).await?;
            }
        }
    }
    Ok(())
}

/// Serves one command in subscribe mode; `Ok(true)` for QUIT.
#[allow(clippy::too_many_arguments)]
async fn command<S: AsyncWrite + Unpin>(
    subs: &mut Subscriptions,
    args: &[Bytes],
    session: &mut RespSession,
    router: &Arc<Router>,
    stream: &mut S,
    out: &mut RespOutput,
    conn: &Conn,
    lane: usize,
) -> Result<bool, Closed> {
    let name = args
        .first()
        .map(|n| String::from_utf8_lossy(n).to_ascii_uppercase())
        .unwrap_or_default();
    let rest = &args[1.min(args.len())..];
    let error = |text: String| Value::Error(text);
    let wrong_args = || {
        Value::Error(format!(
            "ERR wrong number of arguments for '{}' command",
            name.to_ascii_lowercase()
        ))
    };
    let resp3 = session.protocol() == Protocol::Resp3;
    match name.as_str() {
        "QUIT" => {
            out.push(stream, &Value::Simple("OK".into())).await?;
            return Ok(true);
        }
        "RESET" => {
            // Leaves subscribe mode, and resets the connection as RESET does outside it
            // (RESP2, no name, the `default` user's login).
            *subs = Subscriptions::default();
            let reply = match session.command(args) {
                crate::resp::Parsed::Reply(v) => v,
                _ => Value::Simple("RESET".into()),
            };
            out.push(stream, &reply).await?;
            return Ok(false);
        }
        // RESP2's subscribe-mode PING answers an array; RESP3's is the usual `+PONG`.
        "PING" if !resp3 => {
            let reply = match rest {
                [] => Value::Array(vec![bulk("pong"), bulk("")]),
                [msg] => Value::Array(vec![bulk("pong"), bulk(msg.clone())]),
                _ => wrong_args(),
            };
            out.push(stream, &reply).await?;
            return Ok(false);
        }
        _ => {}
    }
    // RESP3 runs any command in subscribe mode, as Redis 6+ does; an open MULTI queues
    // (or refuses, for a subscription) whatever comes, as outside subscribe mode.
    if session.in_multi() || (resp3 && !starts_subscription(args)) {
        let limits = conn.limits.clone();
        serve_resp_batch(
            router,
            session,
            stream,
            out,
            vec![args.to_vec()],
            lane,
            &limits,
        )
        .await?;
        return Ok(false);
    }
    if !starts_subscription(args) {
        // Redis' text (6.2; 7 adds the sharded S commands, which this node does not
        // have). WATCHLOG is allowed too.
        let reply = error(format!(
            "ERR Can't execute '{}': only (P)SUBSCRIBE / (P)UNSUBSCRIBE / PING / QUIT / \
             RESET are allowed in this context",
            name.to_ascii_lowercase()
        ));
        out.push(stream, &reply).await?;
        return Ok(false);
    }
    // Subscribing reads keys' changes: the read role, the lowest, so any logged-in user.
    if session.role().is_none() {
        out.push(stream, &error("NOAUTH Authentication required.".into()))
            .await?;
        return Ok(false);
    }
    let Some(hub) = router.watch.clone() else {
        let reply = error("ERR this node's state machine reports no key changes to watch".into());
        out.push(stream, &reply).await?;
        return Ok(false);
    };
    let full = |subs: &Subscriptions| subs.count() >= SUBSCRIPTIONS_PER_CONNECTION_MAX;
    let too_many = || {
        error(format!(
            "ERR at most {SUBSCRIPTIONS_PER_CONNECTION_MAX} channels, patterns and watches a \
             connection"
        ))
    };
    match name.as_str() {
        "SUBSCRIBE" | "PSUBSCRIBE" => {
            if rest.is_empty() {
                out.push(stream, &wrong_args()).await?;
                return Ok(false);
            }
            let kind = name.to_ascii_lowercase();
            for target in rest {
                let new = if name == "SUBSCRIBE" {
                    !subs.channels.contains(target)
                } else {
                    !subs.patterns.iter().any(|(t, _)| t == target)
                };
                if new && full(subs) {
                    out.push(stream, &too_many()).await?;
                    continue;
                }
                if subs.keyspace.is_none() {
                    subs.keyspace = Some(hub.watch_now());
                }
                let counts = subs.hub.get_or_insert_with(|| hub.clone()).subscribers();
                if name == "SUBSCRIBE" {
                    if new {
                        counts.add_channel(target);
                        subs.channels.insert(target.clone());
                    }
                } else if new {
                    counts.add_pattern(target);
                    subs.patterns.push((target.clone(), Pattern::new(target)));
                }
                let reply = Value::Push(vec![
                    bulk(kind.clone()),
                    bulk(target.clone()),
                    Value::Int(subs.count() as i64),
                ]);
                out.push(stream, &reply).await?;
            }
        }
        "UNSUBSCRIBE" | "PUNSUBSCRIBE" => {
            let kind = name.to_ascii_lowercase();
            let targets: Vec<Bytes> = match (rest.is_empty(), name == "UNSUBSCRIBE") {
                (false, _) => rest.to_vec(),
                (true, true) => subs.channels.iter().cloned().collect(),
                (true, false) => subs.patterns.iter().map(|(t, _)| t.clone()).collect(),
            };
            if targets.is_empty() {
                let reply = Value::Push(vec![
                    bulk(kind.clone()),
                    Value::Bulk(None),
                    Value::Int(subs.count() as i64),
                ]);
                out.push(stream, &reply).await?;
            }
            for target in targets {
                let counts = subs.hub.clone();
                let counts = counts.as_ref().map(|h| h.subscribers());
                if name == "UNSUBSCRIBE" {
                    if subs.channels.remove(&target) {
                        counts.inspect(|c| c.remove_channel(&target));
                    }
                } else if subs.patterns.iter().any(|(t, _)| *t == target) {
                    subs.patterns.retain(|(t, _)| *t != target);
                    counts.inspect(|c| c.remove_pattern(&target));
                }
                let reply = Value::Push(vec![
                    bulk(kind.clone()),
                    bulk(target),
                    Value::Int(subs.count() as i64),
                ]);
                out.push(stream, &reply).await?;
            }
            if subs.channels.is_empty() && subs.patterns.is_empty() {
                subs.keyspace = None;
            }
        }
        "WATCHLOG" => {
            let from = match rest {
                [_] => None,
                [_, word, index] if word.eq_ignore_ascii_case(b"FROM") => {
                    match std::str::from_utf8(index).ok().and_then(|s| s.parse().ok()) {
                        Some(i) => Some(i),
                        None => {
                            let reply = error("ERR FROM needs a log index".into());
                            out.push(stream, &reply).await?;
                            return Ok(false);
                        }
                    }
                }
                _ => {
                    let reply = error("ERR syntax error: WATCHLOG prefix [FROM index]".into());
                    out.push(stream, &reply).await?;
                    return Ok(false);
                }
            };
            if subs.log.is_some() {
                let reply =
                    error("ERR this connection already runs a WATCHLOG (RESET ends it)".into());
                out.push(stream, &reply).await?;
                return Ok(false);
            }
            if full(subs) {
                out.push(stream, &too_many()).await?;
                return Ok(false);
            }
            let watcher = match from {
                Some(i) => hub.watch_from(i),
                None => Ok(hub.watch_now()),
            };
            match watcher {
                Ok(watcher) => {
                    let reply = Value::Push(vec![
                        bulk("watchlog"),
                        bulk(rest[0].clone()),
                        Value::Int(watcher.position() as i64),
                    ]);
                    subs.log = Some(LogWatch {
                        prefix: rest[0].clone(),
                        watcher,
                    });
                    out.push(stream, &reply).await?;
                }
                Err(e) => out.push(stream, &error(format!("ERR {e}"))).await?,
            }
        }
        _ => unreachable!("starts_subscription names these"),
    }
    Ok(false)
}
