//! The transport seam and a small TCP implementation of it.
//!
//! The runtime only calls [`PeerTransport::send`] (never blocking: a message that cannot be
//! queued is dropped, which Raft tolerates as loss) and reads inbound messages from a bounded
//! channel. raft-net's `TransportHandle` plugs in here by implementing the trait
//! (`send`, `add_peer`) and forwarding its `Incoming` stream into the same channel.
//!
//! [`TcpTransport`] is the stand-in until then: one outbound connection per peer, frames of
//! a 4-byte big-endian length and a postcard `raft_core::Message`, reconnect with back-off.
//! A snapshot travels in the same frame as its `InstallSnapshot` message (no separate lane:
//! a large snapshot delays heartbeats behind it, and its body is bounded by
//! [`SNAPSHOT_BYTES_MAX`]); raft-net's snapshot lane removes both limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use raft_core::{Message, NodeId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::{Framed, FramedRead, LengthDelimitedCodec};

use crate::metrics::Metrics;

/// Largest peer frame accepted; a longer one closes the connection.
pub const PEER_FRAME_BYTES_MAX: usize = 64 << 20;
/// Messages queued per peer before new ones are dropped.
pub const PEER_QUEUE_MESSAGES_MAX: usize = 4096;
/// Messages written before a flush.
const WRITE_BATCH_MESSAGES_MAX: usize = 256;
const RECONNECT_BACKOFF_MS_MIN: u64 = 50;
const RECONNECT_BACKOFF_MS_MAX: u64 = 1_000;

/// Largest snapshot body this transport carries.
pub const SNAPSHOT_BYTES_MAX: usize = PEER_FRAME_BYTES_MAX - (1 << 20);

/// What crosses the wire between peers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum PeerFrame {
    Message(Message),
    /// An `InstallSnapshot` message with the state machine's snapshot body.
    Snapshot(Message, Bytes),
}

/// What a transport delivers to the runtime.
#[derive(Debug)]
pub enum Inbound {
    /// A protocol message.
    Message(Message),
    /// A snapshot body, delivered before the `InstallSnapshot` message that names it by
    /// `(meta.index, meta.term)`. A transport with a separate snapshot lane (raft-net)
    /// delivers the body there and the message on the message lane once the body is in.
    SnapshotBody {
        /// The snapshot's metadata.
        meta: raft_core::SnapshotMeta,
        /// The state machine's snapshot body.
        body: Bytes,
    },
}

/// How the runtime sends to peers.
pub trait PeerTransport: Send + Sync + 'static {
    /// Queues `msg` for `msg.to`; drops it when the peer's queue is full or unknown.
    fn send(&self, msg: Message);
    /// Sends an `InstallSnapshot` message with the snapshot body. The receiver must get both
    /// before it steps the message. `Err` when it could not be queued.
    fn send_snapshot(&self, msg: Message, body: Bytes) -> Result<(), String>;
    /// Copies the transport's own counters into `metrics`, for transports that keep them
    /// themselves. Called from the runtime about once a second.
    fn refresh_metrics(&self, _metrics: &Metrics) {}
}

/// Peer-to-peer TCP transport. See the module documentation.
pub struct TcpTransport {
    peers: HashMap<NodeId, mpsc::Sender<PeerFrame>>,
    metrics: Arc<Metrics>,
}

impl PeerTransport for TcpTransport {
    fn send(&self, msg: Message) {
        let Some(queue) = self.peers.get(&msg.to) else {
            Metrics::add(&self.metrics.messages_dropped, 1);
            return;
        };
        if queue.try_send(PeerFrame::Message(msg)).is_err() {
            Metrics::add(&self.metrics.messages_dropped, 1);
        }
    }

    fn send_snapshot(&self, msg: Message, body: Bytes) -> Result<(), String> {
        if body.len() > SNAPSHOT_BYTES_MAX {
            return Err(format!(
                "snapshot of {} bytes exceeds this transport's {SNAPSHOT_BYTES_MAX}",
                body.len()
            ));
        }
        let queue = self
            .peers
            .get(&msg.to)
            .ok_or_else(|| format!("unknown peer {}", msg.to))?;
        queue
            .try_send(PeerFrame::Snapshot(msg, body))
            .map_err(|_| "peer queue full".to_string())
    }
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(PEER_FRAME_BYTES_MAX)
        .new_codec()
}

impl TcpTransport {
    /// Serves `listener` and connects to `peers` (ID and peer address, this node excluded).
    /// Inbound messages go to `inbound`; everything stops when `shutdown` turns true.
    pub fn start(
        listener: TcpListener,
        peers: Vec<(NodeId, SocketAddr)>,
        inbound: mpsc::Sender<Inbound>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> TcpTransport {
        tokio::spawn(accept_loop(
            listener,
            inbound,
            metrics.clone(),
            shutdown.clone(),
        ));
        let mut queues = HashMap::new();
        for (id, addr) in peers {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
            tokio::spawn(peer_writer(id, addr, rx, metrics.clone(), shutdown.clone()));
            queues.insert(id, tx);
        }
        TcpTransport {
            peers: queues,
            metrics,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    inbound: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, remote)) = accepted else {
            // Out of descriptors and the like: pause instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let inbound = inbound.clone();
        let metrics = metrics.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut frames = FramedRead::new(stream, codec());
            loop {
                let frame = tokio::select! {
                    _ = shutdown.changed() => return,
                    f = frames.next() => f,
                };
                let buf = match frame {
                    Some(Ok(buf)) => buf,
                    Some(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "peer connection closed on a bad frame");
                        return;
                    }
                    None => return,
                };
                Metrics::add(&metrics.bytes_received, buf.len() as u64 + 4);
                let msg = match postcard::from_bytes::<PeerFrame>(&buf) {
                    Ok(PeerFrame::Message(msg)) => msg,
                    Ok(PeerFrame::Snapshot(msg, body)) => {
                        if let raft_core::MessageBody::InstallSnapshot { meta } = &msg.body {
                            let body = Inbound::SnapshotBody {
                                meta: meta.clone(),
                                body,
                            };
                            // Waits for room: dropping the body but not its message would
                            // only make the receiver ignore the message.
                            if inbound.send(body).await.is_err() {
                                return;
                            }
                        }
                        msg
                    }
                    Err(_) => {
                        tracing::warn!(%remote, "undecodable peer message; closing the connection");
                        return;
                    }
                };
                Metrics::add(&metrics.messages_received, 1);
                if inbound.try_send(Inbound::Message(msg)).is_err() {
                    Metrics::add(&metrics.messages_dropped, 1);
                }
            }
        });
    }
}

async fn peer_writer(
    id: NodeId,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<PeerFrame>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff_ms = RECONNECT_BACKOFF_MS_MIN;
    loop {
        let connected = tokio::select! {
            _ = shutdown.changed() => return,
            c = tokio::time::timeout(Duration::from_millis(1_000), TcpStream::connect(addr)) => c,
        };
        let stream = match connected {
            Ok(Ok(s)) => s,
            _ => {
                // While the peer is down its queue fills with messages it could not use
                // anyway; drop them so that it gets fresh state when it returns.
                while queue.try_recv().is_ok() {
                    Metrics::add(&metrics.messages_dropped, 1);
                }
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
                }
                backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MS_MAX);
                continue;
            }
        };
        backoff_ms = RECONNECT_BACKOFF_MS_MIN;
        let _ = stream.set_nodelay(true);
        tracing::debug!(peer = id, %addr, "connected to peer");
        let mut framed = Framed::new(stream, codec());
        'conn: loop {
            let first = tokio::select! {
                _ = shutdown.changed() => return,
                m = queue.recv() => m,
            };
            let Some(first) = first else { return };
            let mut batch = vec![first];
            while batch.len() < WRITE_BATCH_MESSAGES_MAX {
                match queue.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            for msg in batch {
                let Ok(buf) = postcard::to_allocvec(&msg) else {
                    continue;
                };
                let len = buf.len() as u64 + 4;
                if framed.feed(Bytes::from(buf)).await.is_err() {
                    break 'conn;
                }
                Metrics::add(&metrics.bytes_sent, len);
                Metrics::add(&metrics.messages_sent, 1);
            }
            if SinkExt::<Bytes>::flush(&mut framed).await.is_err() {
                break 'conn;
            }
        }
        tracing::debug!(peer = id, %addr, "peer connection lost");
    }
}
