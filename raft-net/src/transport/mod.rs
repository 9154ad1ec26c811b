//! The transport: one listener, and per peer one message connection (dialled by either
//! end, used both ways) and one outbound snapshot connection, each driven by its own task.
//!
//! * [`outbound`]: the message lane's sending side (direct writes, the writer task, link
//!   choice when both ends dialled).
//! * [`dial`]: connecting to a peer and the dialer's half of the handshake, for either lane.
//! * [`inbound`]: the listener, the acceptor's half of the handshake, and the message
//!   readers.
//! * [`snapshot_lane`]: snapshots, sent and received.

mod dial;
mod inbound;
mod outbound;
mod snapshot_lane;

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft_core::{Message, NodeId, SnapshotMeta};

use crate::group::{
    Envelope, GroupHeartbeat, GroupHeartbeatResponse, GroupId, GroupIncoming, GroupSnapshotStores,
    SINGLE_GROUP,
};
use crate::group_codec::heartbeats_per_frame;
use raft_snapshot::{SnapshotChunks, SnapshotFile};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::addr::PeerAddr;
use crate::config::TransportConfig;
use crate::frame::FrameError;
use crate::stats::{ConnErrorKind, Stats, StatsSnapshot};
use crate::tls::cert_node_identity;
use crate::wire::Lane;
use rustls::pki_types::CertificateDer;

use inbound::accept_loop;
use outbound::{message_writer, write_direct, Outbox};
use snapshot_lane::{snapshot_writer, OutSnapshot, ReceiveSlot};

/// What the transport hands to the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Messages from one peer, in the order that peer's transport sent them on one
    /// connection: every whole frame a read brought in, at most
    /// [`TransportConfig::incoming_batch_messages_max`] of them, never empty.
    Messages(Vec<Message>),
    /// A snapshot file received whole into [`TransportConfig::snapshot_store`], every chunk's
    /// CRC32 and then the whole file (header, chunk CRCs, body digest, length) checked, and
    /// installed there under its final name. Pair it with the `InstallSnapshot` message
    /// carrying the same `meta`. The state digest is checked when the host restores it.
    Snapshot {
        /// The sending peer.
        from: NodeId,
        /// The snapshot's index, term and membership, as the sender offered them.
        meta: SnapshotMeta,
        /// The installed file.
        file: SnapshotFile,
    },
}

/// Why [`TransportHandle::send`] or [`TransportHandle::send_snapshot`] refused a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// The destination is not one of the configured peers.
    #[error("node {0} is not a known peer")]
    UnknownPeer(NodeId),
    /// [`TransportHandle::shutdown`] was called.
    #[error("the transport is shut down")]
    Shutdown,
}

/// How a snapshot transfer ended, reported on the channel `send_snapshot` returns.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotSendError {
    /// A newer snapshot for the same peer was sent before this one finished.
    #[error("a newer snapshot for the same peer replaced this one")]
    Superseded,
    /// Every connection attempt for it failed.
    #[error("gave up after {attempts} attempts: {last_error}")]
    Failed {
        /// Connection attempts made (`snapshot_attempts_max`).
        attempts: u32,
        /// Why the last one failed.
        last_error: String,
    },
    /// The receiver aborted the transfer, with its reason.
    #[error("the receiver refused the snapshot: {0}")]
    Refused(String),
    /// The peer was removed or the transport shut down.
    #[error("the peer was removed or the transport shut down")]
    Cancelled,
    /// Reading the snapshot file failed on this side.
    #[error("reading the snapshot file: {0}")]
    Source(String),
}

/// The host's channel, whatever its item type: readers send into it directly, with no
/// forwarding task in between. A single-group host takes [`Incoming`], a multi-group host
/// [`GroupIncoming`]; the transport knows which it serves (`Shared::multi`) and sends each
/// only its own kind.
trait Sink: Send + Sync + 'static {
    fn deliver(&self, item: Incoming) -> Delivery<'_>;
    fn deliver_groups(&self, item: GroupIncoming) -> Delivery<'_>;
}

enum Delivery<'a> {
    Done,
    /// The host dropped its receiver.
    Closed,
    /// The channel is full: this future waits for room (false if the host went away).
    Full(Pin<Box<dyn Future<Output = bool> + Send + 'a>>),
}

/// A single-group host's channel.
struct SingleSink<T>(mpsc::Sender<T>);
/// A multi-group host's channel.
struct GroupSink<T>(mpsc::Sender<T>);

fn send_to<T: Send + 'static>(tx: &mpsc::Sender<T>, item: T) -> Delivery<'_> {
    // try_send first: the common case (room in the channel) skips the async path and
    // its allocation.
    match tx.try_send(item) {
        Ok(()) => Delivery::Done,
        Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
        Err(mpsc::error::TrySendError::Full(item)) => {
            Delivery::Full(Box::pin(async move { tx.send(item).await.is_ok() }))
        }
    }
}

impl<T: From<Incoming> + Send + 'static> Sink for SingleSink<T> {
    fn deliver(&self, item: Incoming) -> Delivery<'_> {
        send_to(&self.0, T::from(item))
    }

    fn deliver_groups(&self, _: GroupIncoming) -> Delivery<'_> {
        // Never called: a single-group transport refuses other groups' frames as they are
        // read, and receives snapshots for group 0 only.
        debug_assert!(false, "a multi-group delivery to a single-group host");
        Delivery::Done
    }
}

impl<T: From<GroupIncoming> + Send + 'static> Sink for GroupSink<T> {
    fn deliver(&self, item: Incoming) -> Delivery<'_> {
        // Never called: a multi-group transport delivers `GroupIncoming` only.
        debug_assert!(
            false,
            "a single-group delivery to a multi-group host: {item:?}"
        );
        Delivery::Done
    }

    fn deliver_groups(&self, item: GroupIncoming) -> Delivery<'_> {
        send_to(&self.0, T::from(item))
    }
}

/// Hand `item` to the host, waiting while its channel is full (TCP then pushes back on the
/// sender). False when the host dropped its receiver.
async fn deliver(shared: &Shared, item: Incoming) -> bool {
    delivered(shared.incoming.deliver(item)).await
}

/// [`deliver`] for a multi-group host.
async fn deliver_groups(shared: &Shared, item: GroupIncoming) -> bool {
    delivered(shared.incoming.deliver_groups(item)).await
}

async fn delivered(delivery: Delivery<'_>) -> bool {
    match delivery {
        Delivery::Done => true,
        Delivery::Closed => false,
        Delivery::Full(wait) => wait.await,
    }
}

/// A connection-level failure: counted by kind, logged with its detail.
#[derive(Debug)]
struct ConnError {
    kind: ConnErrorKind,
    detail: String,
}

impl ConnError {
    fn new(kind: ConnErrorKind, detail: impl Into<String>) -> Self {
        ConnError {
            kind,
            detail: detail.into(),
        }
    }
}

impl From<FrameError> for ConnError {
    fn from(e: FrameError) -> Self {
        let kind = match &e {
            FrameError::Io(_) => ConnErrorKind::Io,
            FrameError::TooLarge { .. } => ConnErrorKind::FrameTooLarge,
            FrameError::Truncated { .. } => ConnErrorKind::Truncated,
            // An oversized batch, refused before it is allocated.
            FrameError::TooManyHeartbeats { .. } => ConnErrorKind::FrameTooLarge,
            // Well-formed, but no frame a single-group transport takes.
            FrameError::NotSingleGroup => ConnErrorKind::Protocol,
            _ => ConnErrorKind::Decode,
        };
        ConnError::new(kind, e.to_string())
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::new(ConnErrorKind::Io, e.to_string())
    }
}

/// Hashes the peer map's keys: node IDs, chosen by the operator, not by a remote party, so
/// one multiplication (Fibonacci hashing, which fills the high bits the map probes with)
/// does instead of SipHash, on every send.
#[derive(Default)]
struct NodeIdHasher(u64);

impl std::hash::Hasher for NodeIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The reason a refused dialer is given when the refusal concerns the cluster or its
/// identity: the detail is logged by the acceptor only.
pub const REFUSED: &str = "handshake refused";

struct Peer {
    id: NodeId,
    addr: Mutex<PeerAddr>,
    out: Mutex<Outbox>,
    /// Wakes the writer task: a message queued into an empty queue, or `unsent` bytes.
    queue_notify: Notify,
    /// The latest snapshot to send per group (see `snapshot_lane`).
    snapshots: Mutex<HashMap<GroupId, OutSnapshot>>,
    snapshot_notify: Notify,
    cancel: CancellationToken,
    /// Messages and bytes written to this peer's message connection.
    sent_messages: AtomicU64,
    sent_bytes: AtomicU64,
}

struct Shared {
    cfg: TransportConfig,
    stats: Stats,
    peers: Mutex<HashMap<NodeId, Arc<Peer>, BuildHasherDefault<NodeIdHasher>>>,
    incoming: Box<dyn Sink>,
    /// Started by [`Transport::start_groups`]: frames of every group are taken and
    /// delivered as [`GroupIncoming`]; otherwise only group 0's, as [`Incoming`].
    multi: bool,
    /// A multi-group transport's snapshot stores, one per group.
    group_stores: Option<GroupSnapshotStores>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// The inbound snapshot connection allowed to write into the snapshot store: a newer
    /// offer cancels the older connection and takes this once it let go (one `.recv` file
    /// has one writer).
    /// Per group being received, so that groups are received side by side.
    receiving: Mutex<HashMap<GroupId, Arc<ReceiveSlot>>>,
    /// The current inbound message connection per peer: a newer one closes the older, so a
    /// peer holds at most one accepted connection (and at most one we dialled).
    inbound_messages: Mutex<HashMap<NodeId, (u64, CancellationToken)>>,
    conn_seq: AtomicU64,
    snapshot_seq: AtomicU64,
    /// Set by `shutdown`; checked by `send` without taking a lock.
    shut_down: AtomicBool,
}

/// Entry point: binds the listener and starts the tasks.
pub struct Transport;

impl Transport {
    /// Bind `config.listen_addr`, start connecting to `config.peers` lazily (on first send),
    /// and return the handle plus the channel on which incoming messages and snapshots arrive.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use raft_core::{Message, MessageBody};
    /// use raft_net::{Incoming, Transport, TransportConfig};
    ///
    /// let (a, _a_rx) = Transport::start(TransportConfig::new(1, 7, "127.0.0.1:0".parse().unwrap()))
    ///     .await.unwrap();
    /// let (b, mut b_rx) = Transport::start(TransportConfig::new(2, 7, "127.0.0.1:0".parse().unwrap()))
    ///     .await.unwrap();
    /// a.add_peer(2, b.local_addr());
    /// b.add_peer(1, a.local_addr());
    /// let msg = Message { from: 1, to: 2, term: 1, body: MessageBody::TimeoutNow };
    /// a.send(msg.clone()).unwrap();
    /// assert_eq!(b_rx.recv().await, Some(Incoming::Messages(vec![msg])));
    /// a.shutdown().await;
    /// b.shutdown().await;
    /// # });
    /// ```
    pub async fn start(
        config: TransportConfig,
    ) -> io::Result<(TransportHandle, mpsc::Receiver<Incoming>)> {
        let (tx, rx) = mpsc::channel(config.incoming_batches_max);
        let handle = Self::start_with_sender(config, tx).await?;
        Ok((handle, rx))
    }

    /// Like [`Transport::start`], but deliver into the host's own channel, of any item type
    /// an [`Incoming`] converts into: no task sits between the readers and the host. The
    /// channel's bound takes the place of `incoming_batches_max`.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use raft_core::{Message, MessageBody};
    /// use raft_net::{Incoming, Transport, TransportConfig};
    ///
    /// enum HostEvent { Net(Incoming), Tick }
    /// impl From<Incoming> for HostEvent {
    ///     fn from(i: Incoming) -> Self { HostEvent::Net(i) }
    /// }
    /// let (tx, mut events) = tokio::sync::mpsc::channel::<HostEvent>(64);
    /// let b = Transport::start_with_sender(TransportConfig::new(2, 7, "127.0.0.1:0".parse().unwrap()), tx)
    ///     .await.unwrap();
    /// let (a, _a_rx) = Transport::start(TransportConfig::new(1, 7, "127.0.0.1:0".parse().unwrap()))
    ///     .await.unwrap();
    /// a.add_peer(2, b.local_addr());
    /// b.add_peer(1, a.local_addr());
    /// let msg = Message { from: 1, to: 2, term: 1, body: MessageBody::TimeoutNow };
    /// a.send(msg.clone()).unwrap();
    /// match events.recv().await {
    ///     Some(HostEvent::Net(Incoming::Messages(ms))) => assert_eq!(ms, vec![msg]),
    ///     _ => panic!("expected the message"),
    /// }
    /// a.shutdown().await;
    /// b.shutdown().await;
    /// # });
    /// ```
    pub async fn start_with_sender<T: From<Incoming> + Send + 'static>(
        config: TransportConfig,
        incoming: mpsc::Sender<T>,
    ) -> io::Result<TransportHandle> {
        Self::start_inner(config, Box::new(SingleSink(incoming)), None).await
    }

    /// Start a multi-group transport (see [`crate::group`]): messages of every group to a
    /// peer share its one message connection, sent with [`TransportHandle::send_group`],
    /// [`TransportHandle::send_heartbeats`] and
    /// [`TransportHandle::send_heartbeat_responses`] (and [`TransportHandle::send`] for
    /// group 0), and arrive on `incoming` as [`GroupIncoming`]. Snapshots of a group are
    /// assembled in the store `stores` names for it (`config.snapshot_store` is not used).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use raft_core::{Message, MessageBody};
    /// use raft_net::{Envelope, GroupHeartbeat, GroupIncoming, Transport, TransportConfig};
    ///
    /// let no_stores: raft_net::GroupSnapshotStores = std::sync::Arc::new(|_| None);
    /// let (tx, mut b_in) = tokio::sync::mpsc::channel::<GroupIncoming>(64);
    /// let b = Transport::start_groups(TransportConfig::new(2, 7, "127.0.0.1:0".parse().unwrap()), no_stores.clone(), tx)
    ///     .await.unwrap();
    /// let (tx, _a_in) = tokio::sync::mpsc::channel::<GroupIncoming>(64);
    /// let a = Transport::start_groups(TransportConfig::new(1, 7, "127.0.0.1:0".parse().unwrap()), no_stores, tx)
    ///     .await.unwrap();
    /// a.add_peer(2, b.local_addr());
    /// b.add_peer(1, a.local_addr());
    /// let beats: Vec<_> = (1..=3).map(|g| GroupHeartbeat { group: g, term: 1, commit: 0, read_seq: 1 }).collect();
    /// a.send_heartbeats(2, beats.clone()).unwrap(); // one frame for the three groups
    /// match b_in.recv().await {
    ///     Some(GroupIncoming::Frames { from: 1, frames }) => {
    ///         assert_eq!(frames, vec![Envelope::Heartbeats(beats)]);
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// a.shutdown().await;
    /// b.shutdown().await;
    /// # });
    /// ```
    pub async fn start_groups<T: From<GroupIncoming> + Send + 'static>(
        config: TransportConfig,
        stores: GroupSnapshotStores,
        incoming: mpsc::Sender<T>,
    ) -> io::Result<TransportHandle> {
        Self::start_inner(config, Box::new(GroupSink(incoming)), Some(stores)).await
    }

    async fn start_inner(
        config: TransportConfig,
        incoming: Box<dyn Sink>,
        group_stores: Option<GroupSnapshotStores>,
    ) -> io::Result<TransportHandle> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(config.listen_addr).await?;
        let local_addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            stats: Stats::default(),
            peers: Mutex::new(HashMap::default()),
            incoming,
            multi: group_stores.is_some(),
            group_stores,
            cancel: cancel.clone(),
            tracker: TaskTracker::new(),
            receiving: Mutex::new(HashMap::new()),
            inbound_messages: Mutex::new(HashMap::new()),
            conn_seq: AtomicU64::new(0),
            snapshot_seq: AtomicU64::new(1),
            shut_down: AtomicBool::new(false),
            cfg: config,
        });
        let peers: Vec<_> = shared
            .cfg
            .peers
            .iter()
            .map(|(&k, v)| (k, v.clone()))
            .collect();
        for (id, addr) in peers {
            add_peer(&shared, id, addr);
        }
        let slots = Arc::new(Semaphore::new(shared.cfg.inbound_connections_max));
        shared
            .tracker
            .spawn(accept_loop(shared.clone(), listener, slots));
        info!(node = shared.cfg.node_id, %local_addr, "transport listening");
        let handle = TransportHandle {
            shared,
            local_addr,
            _guard: Arc::new(cancel.drop_guard()),
        };
        Ok(handle)
    }
}

/// The host's handle: cheap to clone; when the last clone is dropped the transport stops.
/// Every method returns at once: none awaits the network.
#[derive(Clone)]
pub struct TransportHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    _guard: Arc<DropGuard>,
}

impl TransportHandle {
    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Send `msg` to `msg.to`. Never blocks and never awaits. When the connection is idle
    /// (nothing queued or being written, and no write in the last
    /// [`TransportConfig::direct_write_idle_us_min`]) the message is written to the socket
    /// here, without a hand-off to the writer task. Otherwise it is queued, and the writer
    /// task sends everything queued together; if that peer's queue holds
    /// `queue_messages_max` messages, the oldest is dropped (and counted) to make room,
    /// since Raft recovers from lost messages but not from a stalled core.
    ///
    /// ```no_run
    /// # fn f(h: &raft_net::TransportHandle, m: raft_core::Message) {
    /// h.send(m).expect("known peer");
    /// # }
    /// ```
    pub fn send(&self, msg: Message) -> Result<(), SendError> {
        self.send_group(SINGLE_GROUP, msg)
    }

    /// Send `msg` of `group` to `msg.to`, as [`send`](Self::send) does: on the peer's one
    /// message connection, in order with every other group's messages to it. Group 0 is
    /// [`send`](Self::send)'s; a single-group peer refuses every other group's frames.
    pub fn send_group(&self, group: GroupId, msg: Message) -> Result<(), SendError> {
        self.enqueue(
            msg.to,
            Envelope::Message {
                group,
                message: msg,
            },
        )
    }

    /// Send the heartbeats of many groups to `to` coalesced, one frame per
    /// [`heartbeats_per_frame`](crate::group_codec::heartbeats_per_frame) of them (at most
    /// [`crate::group::HEARTBEATS_PER_FRAME_MAX`]), queued like one message each frame.
    /// The receiver gets them as [`Envelope::Heartbeats`], `from` and `to` being the two
    /// ends of the connection. Nothing is sent for an empty list.
    pub fn send_heartbeats(&self, to: NodeId, beats: Vec<GroupHeartbeat>) -> Result<(), SendError> {
        self.send_coalesced(to, beats, Envelope::Heartbeats)
    }

    /// Send answers to the heartbeats of many groups to `to`, coalesced as
    /// [`send_heartbeats`](Self::send_heartbeats) does.
    pub fn send_heartbeat_responses(
        &self,
        to: NodeId,
        answers: Vec<GroupHeartbeatResponse>,
    ) -> Result<(), SendError> {
        self.send_coalesced(to, answers, Envelope::HeartbeatResponses)
    }

    fn send_coalesced<T>(
        &self,
        to: NodeId,
        mut entries: Vec<T>,
        wrap: fn(Vec<T>) -> Envelope,
    ) -> Result<(), SendError> {
        let per_frame = heartbeats_per_frame(self.shared.cfg.frame_bytes_max);
        while entries.len() > per_frame {
            let rest = entries.split_off(per_frame);
            self.enqueue(to, wrap(entries))?;
            entries = rest;
        }
        if entries.is_empty() {
            return Ok(());
        }
        self.enqueue(to, wrap(entries))
    }

    fn enqueue(&self, to: NodeId, env: Envelope) -> Result<(), SendError> {
        if self.shared.shut_down.load(Relaxed) {
            return Err(SendError::Shutdown);
        }
        // Held to the end rather than cloning the peer's Arc: two atomic operations fewer
        // per message. A direct write holds it for one non-blocking syscall.
        let peers = self.shared.peers.lock().unwrap();
        let peer = peers.get(&to).ok_or(SendError::UnknownPeer(to))?;
        let cfg = &self.shared.cfg;
        let (dropped, was_empty) = {
            let mut out = peer.out.lock().unwrap();
            let out = &mut *out;
            let msg = env;
            let msg = if !out.writer_busy && out.queue.is_empty() && out.unsent.is_empty() {
                match &out.conn {
                    Some(conn)
                        if !conn.retired.load(Relaxed)
                            && out.write_ended.elapsed()
                                >= Duration::from_micros(cfg.direct_write_idle_us_min) =>
                    {
                        let conn = conn.clone();
                        match write_direct(&self.shared, peer, out, &conn, msg) {
                            None => return Ok(()),
                            Some(msg) => msg,
                        }
                    }
                    _ => msg,
                }
            } else {
                msg
            };
            // Oldest first out, until both bounds hold with this one in (an envelope over
            // `queue_bytes_max` by itself still goes, alone).
            let bytes = msg.queued_bytes();
            let mut dropped = 0;
            while out.queue.len() >= cfg.queue_messages_max
                || (out.queued_bytes + bytes > cfg.queue_bytes_max && !out.queue.is_empty())
            {
                let Some(old) = out.queue.pop_front() else {
                    break;
                };
                out.queued_bytes -= old.queued_bytes();
                dropped += old.messages() as u64;
            }
            let was_empty = out.queue.is_empty();
            out.queued_bytes += bytes;
            out.queue.push_back(msg);
            (dropped, was_empty)
        };
        if dropped > 0 {
            Stats::add(&self.shared.stats.messages_dropped, dropped);
        }
        // The writer drains the whole queue whenever it runs, so it needs waking only when
        // the queue goes from empty to non-empty: one wake-up per batch, not per message.
        if was_empty {
            peer.queue_notify.notify_one();
        }
        Ok(())
    }

    /// Stream the snapshot file `chunks` was opened on to `to` on the snapshot lane, beside
    /// the messages, in CRC32-checked chunks read from the file as they go out (a transfer
    /// holds a few chunks in memory, whatever the file's size). Only the latest snapshot
    /// per peer (and group: this is group 0's) matters: a pending one is replaced (its
    /// receiver gets [`SnapshotSendError::Superseded`]). The returned channel tells how it
    /// ended.
    pub fn send_snapshot(
        &self,
        to: NodeId,
        chunks: SnapshotChunks,
    ) -> Result<oneshot::Receiver<Result<(), SnapshotSendError>>, SendError> {
        self.send_group_snapshot(to, SINGLE_GROUP, chunks)
    }

    /// [`send_snapshot`](Self::send_snapshot) for `group`: only the latest snapshot per
    /// (peer, group) matters. At most
    /// [`TransportConfig::snapshot_transfers_per_peer_max`] transfers to one peer run at
    /// once, each on a snapshot connection of its own, the oldest waiting request starting
    /// next; the message connection is never shared with them, so replication goes on
    /// beside any number of snapshots.
    pub fn send_group_snapshot(
        &self,
        to: NodeId,
        group: GroupId,
        chunks: SnapshotChunks,
    ) -> Result<oneshot::Receiver<Result<(), SnapshotSendError>>, SendError> {
        let peer = self.peer(to)?;
        let (tx, rx) = oneshot::channel();
        let snap = OutSnapshot {
            id: self.shared.snapshot_seq.fetch_add(1, Relaxed),
            chunks: Arc::new(chunks),
            done: Some(tx),
        };
        let old = peer.snapshots.lock().unwrap().insert(group, snap);
        if let Some(mut old) = old {
            if let Some(done) = old.done.take() {
                let _ = done.send(Err(SnapshotSendError::Superseded));
            }
        }
        peer.snapshot_notify.notify_one();
        Ok(rx)
    }

    /// Add a peer, or change its address (the next connection uses the new one). A host
    /// name is resolved again on every connection attempt.
    pub fn add_peer(&self, id: NodeId, addr: impl Into<PeerAddr>) {
        add_peer(&self.shared, id, addr.into());
    }

    /// Forget a peer: its queue and pending snapshot are dropped, its connections closed,
    /// and its inbound connections are refused from now on.
    pub fn remove_peer(&self, id: NodeId) {
        if let Some(peer) = self.shared.peers.lock().unwrap().remove(&id) {
            peer.cancel.cancel();
        }
        if let Some((_, c)) = self.shared.inbound_messages.lock().unwrap().remove(&id) {
            c.cancel();
        }
    }

    /// Messages waiting in `to`'s queue.
    pub fn queued(&self, to: NodeId) -> usize {
        self.peer(to)
            .map(|p| p.out.lock().unwrap().queue.len())
            .unwrap_or(0)
    }

    /// The counters, summed over all peers.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Per peer: `(peer, messages, bytes)` written to its message connection so far
    /// (snapshot streams are counted in [`stats`](Self::stats) only).
    pub fn peer_sent(&self) -> Vec<(NodeId, u64, u64)> {
        let peers = self.shared.peers.lock().unwrap();
        let mut out: Vec<_> = peers
            .values()
            .map(|p| {
                (
                    p.id,
                    p.sent_messages.load(Relaxed),
                    p.sent_bytes.load(Relaxed),
                )
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Stop every task, close every socket, and wait until they are gone.
    pub async fn shutdown(&self) {
        self.shared.shut_down.store(true, Relaxed);
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }

    fn peer(&self, id: NodeId) -> Result<Arc<Peer>, SendError> {
        // An atomic load: CancellationToken::is_cancelled takes a lock, too dear per send.
        if self.shared.shut_down.load(Relaxed) {
            return Err(SendError::Shutdown);
        }
        self.shared
            .peers
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .ok_or(SendError::UnknownPeer(id))
    }
}

fn add_peer(shared: &Arc<Shared>, id: NodeId, addr: PeerAddr) {
    if id == shared.cfg.node_id || id == 0 {
        warn!(
            node = shared.cfg.node_id,
            peer = id,
            "refusing to add self or node 0 as a peer"
        );
        return;
    }
    let mut peers = shared.peers.lock().unwrap();
    if let Some(p) = peers.get(&id) {
        *p.addr.lock().unwrap() = addr;
        return;
    }
    let peer = Arc::new(Peer {
        id,
        addr: Mutex::new(addr),
        out: Mutex::new(Outbox::new()),
        queue_notify: Notify::new(),
        snapshots: Mutex::new(HashMap::new()),
        snapshot_notify: Notify::new(),
        cancel: shared.cancel.child_token(),
        sent_messages: AtomicU64::new(0),
        sent_bytes: AtomicU64::new(0),
    });
    peers.insert(id, peer.clone());
    shared
        .tracker
        .spawn(message_writer(shared.clone(), peer.clone()));
    shared.tracker.spawn(snapshot_writer(shared.clone(), peer));
}

/// Write `buf` and push it out (a TLS writer holds bytes until flushed).
async fn write_flush<W: AsyncWrite + Unpin>(wr: &mut W, buf: &[u8]) -> io::Result<()> {
    wr.write_all(buf).await?;
    wr.flush().await
}

/// The cluster and node a verified peer certificate names.
fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Result<(u128, NodeId), String> {
    match certs.and_then(|c| c.first()) {
        Some(cert) => cert_node_identity(cert),
        None => Err("no certificate presented".into()),
    }
}

fn describe_identity(found: &Result<(u128, NodeId), String>) -> String {
    match found {
        Ok((_, node)) => format!("node {node} (or another cluster)"),
        Err(e) => e.clone(),
    }
}

fn log_conn_error(shared: &Shared, peer: NodeId, lane: Lane, e: &ConnError) {
    shared.stats.conn_error(e.kind);
    match e.kind {
        ConnErrorKind::HandshakeRejected => warn!(
            node = shared.cfg.node_id, peer, ?lane, reason = %e.detail, "handshake refused"
        ),
        ConnErrorKind::Connect => debug!(
            node = shared.cfg.node_id, peer, ?lane, reason = %e.detail, "connect failed"
        ),
        _ => info!(
            node = shared.cfg.node_id, peer, ?lane, kind = ?e.kind, reason = %e.detail,
            "connection closed"
        ),
    }
}
