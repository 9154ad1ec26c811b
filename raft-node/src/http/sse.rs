//! `GET /watch/{prefix}?from=INDEX`: the changes to keys starting with `prefix`, as a
//! server-sent-event stream (see docs/WATCH.md).
//!
//! One event per log index that changed a matching key, its `id:` the index, so a browser's
//! `EventSource` resumes with `Last-Event-ID` after a reconnect and gets every later change
//! exactly once. Idle streams get a `progress` event (its `id:` the index the watch has
//! reached, so a resume need not reach further back than that) or a keep-alive comment
//! every [`SSE_KEEPALIVE_MS`]. When the history no longer reaches the watcher's index, the
//! request is answered 410, or a stream under way ends with a `resync` event.

use std::fmt::Write as _;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{header, Request, StatusCode};
use raft_core::Index;
use tokio::time::Instant;

use super::Answer;
use crate::router::Router;
use crate::watch::{AppliedChanges, WatchError, Watcher};

/// An idle stream gets a progress event or a keep-alive comment this often, so proxies and
/// clients see it alive and a dead client is noticed by the failed write.
pub const SSE_KEEPALIVE_MS: u64 = 15_000;

/// A response body produced as the stream goes.
pub(super) type EventStream = Pin<Box<dyn futures::Stream<Item = Bytes> + Send>>;

/// The answer to `GET`/`HEAD /watch/{prefix}`.
pub(super) fn answer(
    req: &Request<Incoming>,
    router: &Router,
    prefix: Bytes,
    head: bool,
) -> Answer {
    let Some(hub) = &router.watch else {
        return Answer::text(
            StatusCode::NOT_FOUND,
            "this node's state machine reports no key changes to watch\n",
        );
    };
    let from = match start_index(req) {
        Ok(from) => from,
        Err(message) => return Answer::text(StatusCode::BAD_REQUEST, message),
    };
    let watcher = match from {
        Some(index) => hub.watch_from(index),
        None => Ok(hub.watch_now()),
    };
    match watcher {
        Err(e) => Answer::text(StatusCode::GONE, format!("{e}\n")),
        Ok(watcher) => {
            let mut a = Answer::new(StatusCode::OK, "text/event-stream", Bytes::new());
            if !head {
                a.stream = Some(event_stream(watcher, prefix));
            }
            a
        }
    }
}

/// The index to watch after: `Last-Event-ID` (an `EventSource` resuming) before `from=`;
/// `None` for "from now".
fn start_index(req: &Request<Incoming>) -> Result<Option<Index>, String> {
    if let Some(v) = req.headers().get("last-event-id") {
        return v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<Index>().ok())
            .map(Some)
            .ok_or_else(|| "Last-Event-ID must be a log index (an unsigned integer)\n".into());
    }
    let query = req.uri().query().unwrap_or_default();
    match query.split('&').find_map(|kv| kv.strip_prefix("from=")) {
        None => Ok(None),
        Some(v) => v
            .parse::<Index>()
            .map(Some)
            .map_err(|_| format!("from={v}: must be a log index (an unsigned integer)\n")),
    }
}

struct StreamState {
    watcher: Watcher,
    prefix: Bytes,
    /// The last `id:` sent.
    sent: Index,
    greeting: Option<Bytes>,
    done: bool,
}

fn event_stream(watcher: Watcher, prefix: Bytes) -> EventStream {
    let position = watcher.position();
    let state = StreamState {
        greeting: Some(Bytes::from(format!(
            ": watching keys starting with {:?} after index {position}\n\n",
            String::from_utf8_lossy(&prefix)
        ))),
        watcher,
        prefix,
        sent: position,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(greeting) = st.greeting.take() {
            return Some((greeting, st));
        }
        let keepalive = Instant::now() + Duration::from_millis(SSE_KEEPALIVE_MS);
        loop {
            tokio::select! {
                batch = st.watcher.next() => match batch {
                    Ok(batch) => {
                        let (events, last) = encode_events(&batch, &st.prefix);
                        if let Some(last) = last {
                            st.sent = last;
                            return Some((events, st));
                        }
                    }
                    Err(WatchError::Closed) => return None,
                    Err(e) => {
                        st.done = true;
                        let data = serde_json::json!({ "error": e.to_string() });
                        return Some((Bytes::from(format!("event: resync\ndata: {data}\n\n")), st));
                    }
                },
                _ = tokio::time::sleep_until(keepalive) => {
                    let reached = st.watcher.position();
                    if reached > st.sent {
                        st.sent = reached;
                        let event = format!(
                            "id: {reached}\nevent: progress\ndata: {{\"index\":{reached}}}\n\n"
                        );
                        return Some((Bytes::from(event), st));
                    }
                    return Some((Bytes::from_static(b": keep-alive\n\n"), st));
                }
            }
        }
    }))
}

/// One event per record with a matching change, and the last index written.
fn encode_events(
    batch: &[std::sync::Arc<AppliedChanges>],
    prefix: &[u8],
) -> (Bytes, Option<Index>) {
    let mut out = String::new();
    let mut last = None;
    for record in batch {
        let changes: Vec<serde_json::Value> = record.matching(prefix).map(change_json).collect();
        if changes.is_empty() {
            continue;
        }
        let data = serde_json::json!({ "index": record.index, "changes": changes });
        let _ = write!(out, "id: {}\ndata: {data}\n\n", record.index);
        last = Some(record.index);
    }
    (Bytes::from(out), last)
}

/// A change as JSON: key and value as strings when they are UTF-8, else as `key_hex` /
/// `value_hex`; `value` is null when the key is gone or its value did not change.
pub(super) fn change_json(c: &crate::changes::KeyChange) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("event".into(), c.event.name().into());
    put_bytes(&mut m, "key", &c.key);
    match &c.value {
        Some(v) => put_bytes(&mut m, "value", v),
        None => {
            m.insert("value".into(), serde_json::Value::Null);
        }
    }
    serde_json::Value::Object(m)
}

fn put_bytes(m: &mut serde_json::Map<String, serde_json::Value>, name: &str, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => {
            m.insert(name.into(), s.into());
        }
        Err(_) => {
            let hex = b
                .iter()
                .fold(String::with_capacity(b.len() * 2), |mut s, x| {
                    let _ = write!(s, "{x:02x}");
                    s
                });
            m.insert(format!("{name}_hex"), hex.into());
        }
    }
}

/// `Cache-Control` for an event stream: proxies must not hold it back.
pub(super) const CACHE_CONTROL: header::HeaderValue = header::HeaderValue::from_static("no-cache");
