//! The transport: one listener, and per peer one message connection (dialled by either
//! end, used both ways) and one outbound snapshot connection, each driven by its own task.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use raft_core::{Message, NodeId, SnapshotMeta};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_util::codec::FramedRead;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::addr::PeerAddr;
use crate::config::{backoff_ms, TransportConfig};
use crate::conn::{
    split_plain, split_tls, Handshakes, LinkWriter, PendingHandshake, Reader, Writer,
};
use crate::frame::{encode_frame, FrameDecoder, FrameError};
use crate::message_codec::{encode_message, SegmentedBuf};
use crate::message_reader::MessageReader;
use crate::stats::{ConnErrorKind, Stats, StatsSnapshot};
use crate::tls::cert_node_identity;
use crate::wire::{
    Hello, HelloReply, Lane, SnapshotFrame, HANDSHAKE_FRAME_BYTES_MAX, REJECT_REASON_BYTES_MAX,
};
use rustls::pki_types::CertificateDer;

/// What the transport hands to the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Messages from one peer, in the order that peer's transport sent them on one
    /// connection: every whole frame a read brought in, at most
    /// [`TransportConfig::incoming_batch_messages_max`] of them, never empty.
    Messages(Vec<Message>),
    /// A snapshot whose every byte arrived and whose CRC32 matched. Pair it with the
    /// `InstallSnapshot` message carrying the same `meta`.
    Snapshot {
        /// The sending peer.
        from: NodeId,
        /// The snapshot's index, term and membership, as the sender offered them.
        meta: SnapshotMeta,
        /// The snapshot's bytes.
        data: Bytes,
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
}

/// The host's channel, whatever its item type: readers send into it directly, with no
/// forwarding task in between.
trait Sink: Send + Sync + 'static {
    fn deliver(&self, item: Incoming) -> Delivery<'_>;
}

enum Delivery<'a> {
    Done,
    /// The host dropped its receiver.
    Closed,
    /// The channel is full: this future waits for room (false if the host went away).
    Full(Pin<Box<dyn Future<Output = bool> + Send + 'a>>),
}

impl<T: From<Incoming> + Send + 'static> Sink for mpsc::Sender<T> {
    fn deliver(&self, item: Incoming) -> Delivery<'_> {
        // try_send first: the common case (room in the channel) skips the async path and
        // its allocation.
        match self.try_send(T::from(item)) {
            Ok(()) => Delivery::Done,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
            Err(mpsc::error::TrySendError::Full(item)) => {
                Delivery::Full(Box::pin(async move { self.send(item).await.is_ok() }))
            }
        }
    }
}

/// Hand `item` to the host, waiting while its channel is full (TCP then pushes back on the
/// sender). False when the host dropped its receiver.
async fn deliver(shared: &Shared, item: Incoming) -> bool {
    match shared.incoming.deliver(item) {
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

struct OutSnapshot {
    id: u64,
    meta: SnapshotMeta,
    data: Bytes,
    crc32: u32,
    done: Option<oneshot::Sender<Result<(), SnapshotSendError>>>,
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

/// A peer's outbound message lane. One lock covers the queue and the connection, so that
/// `send`'s direct writes and the writer task's batches never interleave bytes or reorder
/// messages: `send` writes only when nothing is queued, unsent or being written.
struct Outbox {
    queue: VecDeque<Message>,
    /// The writer task holds messages (or `unsent` bytes) that it has not finished writing.
    writer_busy: bool,
    /// The message connection the writer task is sending on (and `send` may write to
    /// directly); `None` while there is none.
    conn: Option<Arc<Link>>,
    /// The message connection this peer dialled to us, open while its reader runs: the
    /// writer sends on it rather than dialling a second connection, so that replies travel
    /// with the requests and TCP's acknowledgements ride on them.
    inbound: Option<Arc<Link>>,
    /// The tail of a direct write that the socket did not take at once. The writer task
    /// writes it before anything else; it is dropped with its connection.
    unsent: Vec<Bytes>,
    /// When the last write on `conn` ended (direct or by the writer task).
    write_ended: std::time::Instant,
    /// The direct writes' encode buffer, kept between sends.
    scratch: SegmentedBuf,
}

impl Outbox {
    fn new() -> Self {
        Outbox {
            queue: VecDeque::new(),
            writer_busy: false,
            conn: None,
            inbound: None,
            unsent: Vec::new(),
            write_ended: std::time::Instant::now(),
            scratch: SegmentedBuf::with_capacity(DIRECT_WRITE_BUF_BYTES),
        }
    }

    /// The connection ended: what was not written on it is lost with it.
    fn disconnect(&mut self) {
        self.conn = None;
        self.unsent.clear();
    }
}

/// One message connection, as a way to send to its peer: dialled by us or by the peer, and
/// read by a reader task that delivers whatever the peer sends on it.
struct Link {
    wr: LinkWriter,
    dialed_by_us: bool,
    /// Cancelled when the connection ends (its reader stopped, or we closed it).
    closed: CancellationToken,
    /// Set (under the outbox lock) when a better link to the same peer appeared: the writer
    /// finishes any half-written frame, then moves over.
    retired: AtomicBool,
    /// Writes and delivered batches, so that either side's idle timer counts traffic in
    /// both directions.
    writes: AtomicU64,
    reads: AtomicU64,
}

impl Link {
    fn new(wr: LinkWriter, dialed_by_us: bool, closed: CancellationToken) -> Arc<Link> {
        Arc::new(Link {
            wr,
            dialed_by_us,
            closed,
            retired: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        })
    }

    fn activity(&self) -> u64 {
        self.writes
            .load(Relaxed)
            .wrapping_add(self.reads.load(Relaxed))
    }
}

/// The reason a refused dialer is given when the refusal concerns the cluster or its
/// identity: the detail is logged by the acceptor only.
pub const REFUSED: &str = "handshake refused";

/// Initial room of the direct-write encode buffer; a larger message grows it.
const DIRECT_WRITE_BUF_BYTES: usize = 4096;
/// A direct-write buffer grown past this by a large message is not kept.
const DIRECT_WRITE_BUF_BYTES_MAX: usize = 64 * 1024;
/// Segments per vectored write.
const IOVECS_MAX: usize = 64;

struct Peer {
    id: NodeId,
    addr: Mutex<PeerAddr>,
    out: Mutex<Outbox>,
    /// Wakes the writer task: a message queued into an empty queue, or `unsent` bytes.
    queue_notify: Notify,
    snapshot: Mutex<Option<OutSnapshot>>,
    snapshot_notify: Notify,
    cancel: CancellationToken,
    /// Messages and bytes written to this peer's message connection.
    sent_messages: AtomicU64,
    sent_bytes: AtomicU64,
}

/// A snapshot being received, kept across reconnects so the sender can resume.
struct PartialSnapshot {
    id: u64,
    meta: SnapshotMeta,
    total: u64,
    crc32: u32,
    buf: BytesMut,
    hasher: crc32fast::Hasher,
}

struct Shared {
    cfg: TransportConfig,
    stats: Stats,
    peers: Mutex<HashMap<NodeId, Arc<Peer>, BuildHasherDefault<NodeIdHasher>>>,
    incoming: Box<dyn Sink>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    partial_snapshots: Mutex<HashMap<NodeId, PartialSnapshot>>,
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
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(config.listen_addr).await?;
        let local_addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            stats: Stats::default(),
            peers: Mutex::new(HashMap::default()),
            incoming: Box::new(incoming),
            cancel: cancel.clone(),
            tracker: TaskTracker::new(),
            partial_snapshots: Mutex::new(HashMap::new()),
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
        if self.shared.shut_down.load(Relaxed) {
            return Err(SendError::Shutdown);
        }
        // Held to the end rather than cloning the peer's Arc: two atomic operations fewer
        // per message. A direct write holds it for one non-blocking syscall.
        let peers = self.shared.peers.lock().unwrap();
        let peer = peers.get(&msg.to).ok_or(SendError::UnknownPeer(msg.to))?;
        let cfg = &self.shared.cfg;
        let (dropped, was_empty) = {
            let mut out = peer.out.lock().unwrap();
            let out = &mut *out;
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
            let q = &mut out.queue;
            let dropped = if q.len() >= cfg.queue_messages_max {
                q.pop_front().is_some()
            } else {
                false
            };
            let was_empty = q.is_empty();
            q.push_back(msg);
            (dropped, was_empty)
        };
        if dropped {
            Stats::add(&self.shared.stats.messages_dropped, 1);
        }
        // The writer drains the whole queue whenever it runs, so it needs waking only when
        // the queue goes from empty to non-empty: one wake-up per batch, not per message.
        if was_empty {
            peer.queue_notify.notify_one();
        }
        Ok(())
    }

    /// Stream `data` to `to` on the snapshot lane, beside the messages. Only the latest
    /// snapshot per peer matters: a pending one is replaced (its receiver gets
    /// [`SnapshotSendError::Superseded`]). The returned channel tells how it ended.
    pub fn send_snapshot(
        &self,
        to: NodeId,
        meta: SnapshotMeta,
        data: Bytes,
    ) -> Result<oneshot::Receiver<Result<(), SnapshotSendError>>, SendError> {
        let peer = self.peer(to)?;
        let (tx, rx) = oneshot::channel();
        let crc32 = crc32fast::hash(&data);
        let snap = OutSnapshot {
            id: self.shared.snapshot_seq.fetch_add(1, Relaxed),
            meta,
            data,
            crc32,
            done: Some(tx),
        };
        let old = peer.snapshot.lock().unwrap().replace(snap);
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
        self.shared.partial_snapshots.lock().unwrap().remove(&id);
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
        snapshot: Mutex::new(None),
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

// ---------------------------------------------------------------------------------------
// Outbound

/// Opens a TCP connection to `target`, resolving a host name now (so a reconnect finds a
/// peer that moved) and trying each address it resolves to in turn.
async fn connect(
    node: NodeId,
    peer: NodeId,
    target: &PeerAddr,
) -> Result<(TcpStream, SocketAddr), ConnError> {
    let addrs = target.resolve().await.map_err(|e| {
        // Unlike a refused connection (a peer restarting), a name that does not resolve
        // needs an operator: say so at every attempt.
        warn!(node, peer, address = %target, "{e}");
        ConnError::new(ConnErrorKind::Connect, e.to_string())
    })?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok((stream, addr)),
            Err(e) => last = Some(format!("connect to {addr} ({target}): {e}")),
        }
    }
    Err(ConnError::new(
        ConnErrorKind::Connect,
        last.unwrap_or_else(|| format!("{target} resolved to no address")),
    ))
}

/// Connect to `peer` and complete the handshake for `lane`.
async fn dial(
    shared: &Shared,
    peer: &Peer,
    lane: Lane,
) -> Result<(FramedRead<Reader, FrameDecoder<HelloReply>>, Writer), ConnError> {
    let cfg = &shared.cfg;
    let target = peer.addr.lock().unwrap().clone();
    let deadline = Duration::from_millis(cfg.handshake_timeout_ms);
    let (stream, addr) = timeout(deadline, connect(cfg.node_id, peer.id, &target))
        .await
        .map_err(|_| {
            ConnError::new(
                ConnErrorKind::Connect,
                format!("connect to {target} timed out"),
            )
        })??;
    // Raft's messages are latency-bound and we batch ourselves: Nagle would only add delay.
    stream.set_nodelay(true)?;
    let (rd, mut wr) = match &cfg.tls {
        None => split_plain(stream),
        Some(tls) => {
            // Host names are not checked (the verifier looks at the chain only): the node
            // ID in the certificate is what must match.
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
            let stream = timeout(deadline, connector.connect(name, stream))
                .await
                .map_err(|_| ConnError::new(ConnErrorKind::HandshakeTimeout, "no TLS handshake"))?
                .map_err(|e| {
                    ConnError::new(
                        ConnErrorKind::Tls,
                        format!("TLS handshake with {addr}: {e}"),
                    )
                })?;
            let found = peer_identity(stream.get_ref().1.peer_certificates());
            if found != Ok((cfg.cluster_id, peer.id)) {
                return Err(ConnError::new(
                    ConnErrorKind::HandshakeRejected,
                    format!(
                        "expected node {} at {addr}, its certificate says: {}",
                        peer.id,
                        describe_identity(&found)
                    ),
                ));
            }
            split_tls(tokio_rustls::TlsStream::Client(stream))
        }
    };
    let hello = Hello {
        cluster_id: cfg.cluster_id,
        from: cfg.node_id,
        to: peer.id,
        lane,
    };
    let mut buf = BytesMut::new();
    encode_frame(&hello, &mut buf, HANDSHAKE_FRAME_BYTES_MAX)?;
    let mut rd = FramedRead::new(
        rd,
        FrameDecoder::<HelloReply>::new(HANDSHAKE_FRAME_BYTES_MAX),
    );
    let reply = timeout(deadline, async {
        write_flush(&mut wr, &buf).await?;
        rd.next().await.transpose()
    })
    .await
    .map_err(|_| ConnError::new(ConnErrorKind::HandshakeTimeout, "no handshake reply"))??;
    match reply {
        None => Err(ConnError::new(ConnErrorKind::Io, "closed during handshake")),
        Some(HelloReply::Reject { reason }) => Err(ConnError::new(
            ConnErrorKind::HandshakeRejected,
            format!("node {} at {addr} refused us: {reason}", peer.id),
        )),
        Some(HelloReply::Accept { node_id }) if node_id != peer.id => Err(ConnError::new(
            ConnErrorKind::HandshakeRejected,
            format!("expected node {} at {addr}, found node {node_id}", peer.id),
        )),
        Some(HelloReply::Accept { .. }) => Ok((rd, wr)),
    }
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

/// Wait until `peer`'s queue is non-empty. Returns false on cancellation.
async fn wait_for_messages(peer: &Peer) -> bool {
    loop {
        if !peer.out.lock().unwrap().queue.is_empty() {
            return true;
        }
        tokio::select! {
            _ = peer.cancel.cancelled() => return false,
            _ = peer.queue_notify.notified() => {}
        }
    }
}

/// Write `msg` to `conn` from the caller, under the outbox lock. `None`: written (or
/// unencodable, and counted); what the socket did not take is left in `out.unsent` for the
/// writer task. `Some(msg)`: nothing could be written, queue it.
fn write_direct(
    shared: &Shared,
    peer: &Peer,
    out: &mut Outbox,
    conn: &Link,
    msg: Message,
) -> Option<Message> {
    let cfg = &shared.cfg;
    let Some(wr) = conn.wr.direct() else {
        return Some(msg);
    };
    out.scratch.clear();
    if let Err(e) = encode_message(&msg, &mut out.scratch, cfg.frame_bytes_max) {
        Stats::add(&shared.stats.messages_unencodable, 1);
        warn!(node = cfg.node_id, peer = peer.id, error = %e, "dropping unencodable message");
        return None;
    }
    let total = out.scratch.len();
    let segments = out.scratch.finish();
    let written = match try_write_now(wr, segments) {
        // Broken, or no room at all: the writer task finds out which and deals with it.
        Ok(0) | Err(_) => return Some(msg),
        Ok(n) => n,
    };
    if written < total {
        out.unsent = remaining(segments, written);
        out.writer_busy = true;
        peer.queue_notify.notify_one();
    } else {
        out.write_ended = std::time::Instant::now();
    }
    conn.writes.fetch_add(1, Relaxed);
    // The message is committed to this connection; the rest of its bytes are counted when
    // the writer task writes them.
    Stats::add(&shared.stats.messages_sent, 1);
    Stats::add(&shared.stats.bytes_sent, written as u64);
    Stats::add(&peer.sent_messages, 1);
    Stats::add(&peer.sent_bytes, written as u64);
    if out.scratch.buf.capacity() > DIRECT_WRITE_BUF_BYTES_MAX {
        out.scratch = SegmentedBuf::with_capacity(DIRECT_WRITE_BUF_BYTES);
    }
    None
}

/// Write as much of `segments` as the socket takes without waiting. An error only when
/// nothing at all was written.
fn try_write_now(wr: &OwnedWriteHalf, segments: &[Bytes]) -> io::Result<usize> {
    let mut cursor = SegmentCursor::default();
    let mut written = 0;
    let mut slices = Vec::new();
    while !cursor.done(segments) {
        cursor.slices(segments, &mut slices);
        match wr.try_write_vectored(&slices) {
            Ok(0) => break,
            Ok(n) => {
                written += n;
                cursor.advance(segments, n);
            }
            Err(e) if written == 0 && e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            Err(_) => break,
        }
    }
    Ok(written)
}

/// The bytes of `segments` after the first `skip`, without copying them.
fn remaining(segments: &[Bytes], mut skip: usize) -> Vec<Bytes> {
    let mut rest = Vec::new();
    for s in segments {
        if skip >= s.len() {
            skip -= s.len();
        } else {
            rest.push(s.slice(skip..));
            skip = 0;
        }
    }
    rest
}

/// A position in a list of segments being written.
#[derive(Default)]
struct SegmentCursor {
    segment: usize,
    offset: usize,
}

impl SegmentCursor {
    fn done(&self, segments: &[Bytes]) -> bool {
        self.segment >= segments.len()
    }

    /// The next at most `IOVECS_MAX` slices to write.
    fn slices<'a>(&self, segments: &'a [Bytes], out: &mut Vec<IoSlice<'a>>) {
        out.clear();
        out.push(IoSlice::new(&segments[self.segment][self.offset..]));
        out.extend(
            segments[self.segment + 1..]
                .iter()
                .take(IOVECS_MAX - 1)
                .map(|s| IoSlice::new(s)),
        );
    }

    fn advance(&mut self, segments: &[Bytes], mut n: usize) {
        while self.segment < segments.len() {
            let left = segments[self.segment].len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.segment += 1;
            self.offset = 0;
        }
    }
}

/// Write all of `segments` on a message connection.
async fn write_segments(wr: &LinkWriter, segments: &[Bytes]) -> io::Result<()> {
    match wr {
        LinkWriter::Plain(wr) => write_segments_plain(wr, segments).await,
        LinkWriter::Tls(wr) => write_segments_stream(&mut *wr.lock().await, segments).await,
    }
}

/// Write all of `segments` to a stream (TLS: rustls takes the bytes into records, and the
/// flush sends what it holds).
async fn write_segments_stream<W: AsyncWrite + Unpin>(
    wr: &mut W,
    segments: &[Bytes],
) -> io::Result<()> {
    let mut cursor = SegmentCursor::default();
    let mut slices = Vec::with_capacity(IOVECS_MAX.min(segments.len()));
    while !cursor.done(segments) {
        cursor.slices(segments, &mut slices);
        match wr.write_vectored(&slices).await? {
            0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            n => cursor.advance(segments, n),
        }
    }
    wr.flush().await
}

/// Write all of `segments`. Through the socket's non-blocking interface, as `send`'s
/// direct writes do, since the two share the connection.
async fn write_segments_plain(wr: &OwnedWriteHalf, segments: &[Bytes]) -> io::Result<()> {
    let mut cursor = SegmentCursor::default();
    let mut slices = Vec::with_capacity(IOVECS_MAX.min(segments.len()));
    while !cursor.done(segments) {
        cursor.slices(segments, &mut slices);
        match wr.try_write_vectored(&slices) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => cursor.advance(segments, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wr.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn message_writer(shared: Arc<Shared>, peer: Arc<Peer>) {
    let cfg = &shared.cfg;
    let mut failures: u32 = 0;
    let mut connected_before = false;
    let mut buf = SegmentedBuf::with_capacity(cfg.write_batch_bytes_max + 64 * 1024);
    let mut batch: VecDeque<Message> = VecDeque::new();
    loop {
        // Connect lazily: an idle peer costs no socket.
        if !wait_for_messages(&peer).await {
            return;
        }
        // The connection the peer dialled to us, if one is open, carries our messages too.
        let adopted = {
            let out = peer.out.lock().unwrap();
            out.inbound
                .clone()
                .filter(|l| !l.closed.is_cancelled() && !l.retired.load(Relaxed))
        };
        let link = match adopted {
            Some(link) => link,
            None => {
                let conn = tokio::select! {
                    _ = peer.cancel.cancelled() => return,
                    r = dial(&shared, &peer, Lane::Messages) => r,
                };
                let (rd, wr) = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        log_conn_error(&shared, peer.id, Lane::Messages, &e);
                        let delay = backoff_ms(cfg, peer.id, failures);
                        failures = failures.saturating_add(1);
                        tokio::select! {
                            _ = peer.cancel.cancelled() => return,
                            _ = sleep(Duration::from_millis(delay)) => {}
                        }
                        continue;
                    }
                };
                failures = 0;
                Stats::add(&shared.stats.connects, 1);
                if connected_before {
                    Stats::add(&shared.stats.reconnects, 1);
                }
                connected_before = true;
                let link = Link::new(wr.into(), true, peer.cancel.child_token());
                // The acceptor may answer on this connection: read it like an inbound one.
                let mut rd = rd;
                let buf = std::mem::take(rd.read_buffer_mut());
                shared.tracker.spawn(read_dialed(
                    shared.clone(),
                    peer.id,
                    rd.into_inner(),
                    buf,
                    link.clone(),
                ));
                link
            }
        };
        let link = {
            let mut out = peer.out.lock().unwrap();
            // The peer's own dial won the race to us meanwhile: of two connections, both
            // ends keep the one the lower node ID dialled.
            let link = match out.inbound.clone() {
                Some(inbound)
                    if link.dialed_by_us
                        && peer.id < cfg.node_id
                        && !inbound.closed.is_cancelled() =>
                {
                    // Dropped here, not at the end of this loop: the socket closes once
                    // its reader task lets go of it too.
                    link.closed.cancel();
                    drop(link);
                    inbound
                }
                _ => link,
            };
            out.conn = Some(link.clone());
            // Until the writer has looked at the queue, nothing may overtake it.
            out.writer_busy = true;
            link
        };
        let result = pump_messages(&shared, &peer, &link, &mut buf, &mut batch).await;
        {
            let mut out = peer.out.lock().unwrap();
            if out.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, &link)) {
                out.disconnect();
            }
        }
        // What the writer took but did not write belongs to the closed connection.
        batch.clear();
        if link.dialed_by_us {
            // Ours to close; a link the peer dialled is closed by its reader.
            link.closed.cancel();
        }
        match result {
            Ok(PumpEnd::Idle | PumpEnd::Closed | PumpEnd::Retired) => {}
            Ok(PumpEnd::Cancelled) => return,
            Err(e) => {
                log_conn_error(&shared, peer.id, Lane::Messages, &e);
                // The write may have failed half-way: what was in flight is lost, which
                // Raft tolerates. Back off before redialling a peer that just failed.
                let delay = backoff_ms(cfg, peer.id, 0);
                failures = 1;
                tokio::select! {
                    _ = peer.cancel.cancelled() => return,
                    _ = sleep(Duration::from_millis(delay)) => {}
                }
            }
        }
    }
}

/// Why the writer stopped sending on a link.
enum PumpEnd {
    /// Nothing went either way for `idle_timeout_ms`.
    Idle,
    /// The connection ended; its reader logged why.
    Closed,
    /// A link the peer dialled replaced it.
    Retired,
    /// The peer was removed or the transport shut down.
    Cancelled,
}

/// Read what the acceptor sends back on a connection we dialled. Its end (EOF, a bad
/// frame) closes the link, which stops the writer; silence does not, since a connection
/// used one way only is normal.
async fn read_dialed(
    shared: Arc<Shared>,
    peer: NodeId,
    rd: Reader,
    buf: BytesMut,
    link: Arc<Link>,
) {
    let result = tokio::select! {
        _ = link.closed.cancelled() => return,
        r = read_messages(&shared, peer, rd, buf, &link, false) => r,
    };
    if let Err(e) = result {
        log_conn_error(&shared, peer, Lane::Messages, &e);
    }
    link.closed.cancel();
}

/// Send on one established message connection until it goes idle, closes or is retired.
async fn pump_messages(
    shared: &Shared,
    peer: &Peer,
    link: &Link,
    buf: &mut SegmentedBuf,
    batch: &mut VecDeque<Message>,
) -> Result<PumpEnd, ConnError> {
    let cfg = &shared.cfg;
    let wr = &link.wr;
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    // Long-lived futures, armed once per connection rather than each time the queue runs
    // dry (which, under request/response traffic, is after every message).
    let cancelled = peer.cancel.cancelled();
    tokio::pin!(cancelled);
    let closed = link.closed.cancelled();
    tokio::pin!(closed);
    let idle_timer = sleep(idle);
    tokio::pin!(idle_timer);
    let mut activity_armed = link.activity();
    loop {
        let (unsent, retiring) = {
            let mut out = peer.out.lock().unwrap();
            let retiring = link.retired.load(Relaxed);
            // A retiring link sends only the tail of a half-written frame; the queue waits
            // for the next link.
            if !retiring {
                std::mem::swap(&mut out.queue, batch);
            }
            let unsent = std::mem::take(&mut out.unsent);
            out.writer_busy = retiring || !batch.is_empty() || !unsent.is_empty();
            (unsent, retiring)
        };
        if retiring && unsent.is_empty() {
            return Ok(PumpEnd::Retired);
        }
        if link.closed.is_cancelled() {
            return Ok(PumpEnd::Closed);
        }
        if batch.is_empty() && unsent.is_empty() {
            // Idle: `send` may write directly meanwhile.
            tokio::select! {
                _ = &mut cancelled => return Ok(PumpEnd::Cancelled),
                _ = &mut closed => return Ok(PumpEnd::Closed),
                _ = peer.queue_notify.notified() => continue,
                _ = &mut idle_timer => {
                    let mut out = peer.out.lock().unwrap();
                    if !out.queue.is_empty() || !out.unsent.is_empty() {
                        continue;
                    }
                    // Direct writes and the peer's messages count as activity too; the
                    // check and the close happen under one lock, so no direct write slips
                    // in between.
                    let activity = link.activity();
                    if activity != activity_armed {
                        activity_armed = activity;
                        idle_timer.as_mut().reset(Instant::now() + idle);
                        continue;
                    }
                    out.disconnect();
                    debug!(node = cfg.node_id, peer = peer.id, "closing idle connection");
                    return Ok(PumpEnd::Idle);
                }
            }
        }
        // The tail of a direct write goes first: it precedes everything queued after it.
        if !unsent.is_empty() {
            let total: usize = unsent.iter().map(Bytes::len).sum();
            timeout(idle, write_segments(wr, &unsent))
                .await
                .map_err(|_| ConnError::new(ConnErrorKind::IdleTimeout, "write stalled"))??;
            Stats::add(&shared.stats.bytes_sent, total as u64);
            Stats::add(&peer.sent_bytes, total as u64);
            link.writes.fetch_add(1, Relaxed);
        }
        // One buffer, one write per `write_batch_bytes_max`: the batch of frames goes out
        // with as few syscalls as the kernel allows. Large payloads are not copied into the
        // buffer but written from where they are, in the same (vectored) write.
        let mut count = 0u64;
        buf.clear();
        while let Some(msg) = batch.pop_front() {
            match encode_message(&msg, buf, cfg.frame_bytes_max) {
                Ok(_) => count += 1,
                Err(e) => {
                    Stats::add(&shared.stats.messages_unencodable, 1);
                    warn!(node = cfg.node_id, peer = peer.id, error = %e, "dropping unencodable message");
                }
            }
            if buf.len() >= cfg.write_batch_bytes_max {
                write_batch(shared, peer, link, buf, count, idle).await?;
                count = 0;
            }
        }
        if !buf.is_empty() {
            write_batch(shared, peer, link, buf, count, idle).await?;
        }
        peer.out.lock().unwrap().write_ended = std::time::Instant::now();
        // Do not keep a huge buffer around after a burst of large messages.
        if buf.buf.capacity() > 4 * cfg.write_batch_bytes_max {
            *buf = SegmentedBuf::with_capacity(cfg.write_batch_bytes_max + 64 * 1024);
        }
    }
}

/// Write every segment of `buf` (then clear it).
async fn write_batch(
    shared: &Shared,
    peer: &Peer,
    link: &Link,
    buf: &mut SegmentedBuf,
    count: u64,
    idle: Duration,
) -> Result<(), ConnError> {
    let total = buf.len();
    timeout(idle, write_segments(&link.wr, buf.finish()))
        .await
        .map_err(|_| ConnError::new(ConnErrorKind::IdleTimeout, "write stalled"))??;
    buf.clear();
    link.writes.fetch_add(1, Relaxed);
    Stats::add(&shared.stats.bytes_sent, total as u64);
    Stats::add(&shared.stats.messages_sent, count);
    Stats::add(&peer.sent_bytes, total as u64);
    Stats::add(&peer.sent_messages, count);
    Ok(())
}

async fn snapshot_writer(shared: Arc<Shared>, peer: Arc<Peer>) {
    let cfg = &shared.cfg;
    let mut connected_before = false;
    loop {
        // Wait for a snapshot to send.
        let (id, meta, data, crc32) = loop {
            if let Some(s) = peer.snapshot.lock().unwrap().as_ref() {
                break (s.id, s.meta.clone(), s.data.clone(), s.crc32);
            }
            tokio::select! {
                _ = peer.cancel.cancelled() => return,
                _ = peer.snapshot_notify.notified() => {}
            }
        };
        let mut outcome: Result<(), SnapshotSendError> = Err(SnapshotSendError::Cancelled);
        let mut superseded = false;
        for attempt in 0..cfg.snapshot_attempts_max {
            let r = tokio::select! {
                _ = peer.cancel.cancelled() => break,
                r = stream_snapshot(&shared, &peer, id, &meta, &data, crc32, &mut connected_before) => r,
            };
            match r {
                Ok(()) => {
                    outcome = Ok(());
                    break;
                }
                Err(SnapshotAttemptError::Superseded) => {
                    superseded = true;
                    break;
                }
                Err(SnapshotAttemptError::Refused(reason)) => {
                    outcome = Err(SnapshotSendError::Refused(reason));
                    break;
                }
                Err(SnapshotAttemptError::Conn(e)) => {
                    log_conn_error(&shared, peer.id, Lane::Snapshots, &e);
                    outcome = Err(SnapshotSendError::Failed {
                        attempts: attempt + 1,
                        last_error: e.detail,
                    });
                    if attempt + 1 < cfg.snapshot_attempts_max {
                        let delay = backoff_ms(cfg, peer.id, attempt);
                        tokio::select! {
                            _ = peer.cancel.cancelled() => break,
                            _ = sleep(Duration::from_millis(delay)) => {}
                        }
                    }
                }
            }
        }
        if superseded {
            continue; // The replacement's sender was already told; the new one is in the slot.
        }
        if peer.cancel.is_cancelled() {
            outcome = Err(SnapshotSendError::Cancelled);
        }
        let finished = {
            let mut slot = peer.snapshot.lock().unwrap();
            match slot.as_ref() {
                Some(s) if s.id == id => slot.take(),
                _ => None,
            }
        };
        if let Some(mut s) = finished {
            if outcome.is_ok() {
                Stats::add(&shared.stats.snapshots_sent, 1);
            }
            if let Some(done) = s.done.take() {
                let _ = done.send(outcome);
            }
        }
        if peer.cancel.is_cancelled() {
            return;
        }
    }
}

enum SnapshotAttemptError {
    Conn(ConnError),
    Superseded,
    Refused(String),
}

impl<E: Into<ConnError>> From<E> for SnapshotAttemptError {
    fn from(e: E) -> Self {
        SnapshotAttemptError::Conn(e.into())
    }
}

async fn stream_snapshot(
    shared: &Shared,
    peer: &Peer,
    id: u64,
    meta: &SnapshotMeta,
    data: &Bytes,
    crc32: u32,
    connected_before: &mut bool,
) -> Result<(), SnapshotAttemptError> {
    let cfg = &shared.cfg;
    let (rd, mut wr) = dial(shared, peer, Lane::Snapshots).await?;
    Stats::add(&shared.stats.connects, 1);
    if *connected_before {
        Stats::add(&shared.stats.reconnects, 1);
    }
    *connected_before = true;
    let mut rd = rd.map_decoder(|d| d.retype::<SnapshotFrame>(HANDSHAKE_FRAME_BYTES_MAX));
    let handshake = Duration::from_millis(cfg.handshake_timeout_ms);
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let mut buf = BytesMut::new();
    let offer = SnapshotFrame::Offer {
        snapshot_id: id,
        meta: meta.clone(),
        total_bytes: data.len() as u64,
        crc32,
    };
    encode_frame(&offer, &mut buf, cfg.frame_bytes_max)?;
    timeout(handshake, write_flush(&mut wr, &buf))
        .await
        .map_err(|_| ConnError::new(ConnErrorKind::IdleTimeout, "offer write stalled"))??;
    let reply = timeout(handshake, rd.next())
        .await
        .map_err(|_| ConnError::new(ConnErrorKind::IdleTimeout, "no reply to snapshot offer"))?
        .transpose()?;
    let mut offset = match reply {
        Some(SnapshotFrame::Resume {
            snapshot_id,
            offset,
        }) if snapshot_id == id && offset <= data.len() as u64 => offset as usize,
        Some(SnapshotFrame::Abort { reason, .. }) => {
            return Err(SnapshotAttemptError::Refused(reason))
        }
        Some(other) => {
            return Err(ConnError::new(
                ConnErrorKind::Protocol,
                format!("unexpected reply to offer: {}", frame_name(&other)),
            )
            .into())
        }
        None => return Err(ConnError::new(ConnErrorKind::Io, "closed after offer").into()),
    };
    if offset > 0 {
        info!(
            node = cfg.node_id,
            peer = peer.id,
            offset,
            "resuming snapshot"
        );
    }
    // Pace chunks so that the average rate stays under the limit; a burst is one chunk.
    // Under a low limit, chunks shrink so that one arrives at least every quarter of the
    // idle timeout: the receiver (configured alike) must not take the pacing for silence.
    let chunk_bytes = match cfg.snapshot_bytes_per_sec_max {
        0 => cfg.snapshot_chunk_bytes,
        rate => {
            let per_quarter_idle = rate.saturating_mul(cfg.idle_timeout_ms) / 4000;
            cfg.snapshot_chunk_bytes
                .min(usize::try_from(per_quarter_idle).unwrap_or(usize::MAX))
                .max(1)
        }
    };
    let started = Instant::now();
    let first = offset;
    while offset < data.len() {
        if peer.snapshot.lock().unwrap().as_ref().map(|s| s.id) != Some(id) {
            return Err(SnapshotAttemptError::Superseded);
        }
        if cfg.snapshot_bytes_per_sec_max > 0 {
            let due = (offset - first) as f64 / cfg.snapshot_bytes_per_sec_max as f64;
            sleep_until(started + Duration::from_secs_f64(due)).await;
        }
        let end = (offset + chunk_bytes).min(data.len());
        let chunk = data.slice(offset..end);
        let frame = SnapshotFrame::Chunk {
            snapshot_id: id,
            offset: offset as u64,
            crc32: crc32fast::hash(&chunk),
            data: chunk,
        };
        buf.clear();
        encode_frame(&frame, &mut buf, cfg.frame_bytes_max)?;
        timeout(idle, write_flush(&mut wr, &buf))
            .await
            .map_err(|_| ConnError::new(ConnErrorKind::IdleTimeout, "chunk write stalled"))??;
        Stats::add(&shared.stats.snapshot_bytes_sent, (end - offset) as u64);
        offset = end;
    }
    let reply = timeout(idle, rd.next())
        .await
        .map_err(|_| ConnError::new(ConnErrorKind::IdleTimeout, "no reply to last chunk"))?
        .transpose()?;
    match reply {
        Some(SnapshotFrame::Done { snapshot_id }) if snapshot_id == id => Ok(()),
        Some(SnapshotFrame::Abort { reason, .. }) => Err(SnapshotAttemptError::Refused(reason)),
        Some(other) => Err(ConnError::new(
            ConnErrorKind::Protocol,
            format!("unexpected reply to last chunk: {}", frame_name(&other)),
        )
        .into()),
        None => Err(ConnError::new(ConnErrorKind::Io, "closed before done").into()),
    }
}

fn frame_name(f: &SnapshotFrame) -> &'static str {
    match f {
        SnapshotFrame::Offer { .. } => "Offer",
        SnapshotFrame::Resume { .. } => "Resume",
        SnapshotFrame::Chunk { .. } => "Chunk",
        SnapshotFrame::Done { .. } => "Done",
        SnapshotFrame::Abort { .. } => "Abort",
    }
}

// ---------------------------------------------------------------------------------------
// Inbound

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, slots: Arc<Semaphore>) {
    let handshakes = Handshakes::new(
        shared.cfg.handshakes_pending_max,
        shared.cfg.handshakes_pending_per_source_max,
    );
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically EMFILE: wait a little rather than spin.
                warn!(node = shared.cfg.node_id, error = %e, "accept failed");
                tokio::select! {
                    _ = shared.cancel.cancelled() => return,
                    _ = sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
        };
        let pending = match handshakes.begin(remote.ip()) {
            Ok(p) => p,
            Err(why) => {
                shared.stats.conn_error(ConnErrorKind::HandshakeLimit);
                debug!(node = shared.cfg.node_id, %remote, "refusing connection: {why}");
                drop(stream);
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            shared.stats.conn_error(ConnErrorKind::ConnectionLimit);
            warn!(node = shared.cfg.node_id, %remote, "refusing connection: too many open");
            drop(stream);
            continue;
        };
        shared.tracker.spawn(serve_inbound(
            shared.clone(),
            stream,
            remote,
            permit,
            pending,
        ));
    }
}

async fn serve_inbound(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    _permit: OwnedSemaphorePermit,
    pending: PendingHandshake,
) {
    let cancel = shared.cancel.child_token();
    let result = tokio::select! {
        _ = cancel.cancelled() => return,
        r = serve_inbound_inner(&shared, stream, &cancel, pending) => r,
    };
    if let Err((peer, lane, e)) = result {
        shared.stats.conn_error(e.kind);
        warn!(
            node = shared.cfg.node_id, %remote, peer, ?lane, kind = ?e.kind, reason = %e.detail,
            "closing inbound connection"
        );
    }
}

type InboundError = (Option<NodeId>, Option<Lane>, ConnError);

async fn serve_inbound_inner(
    shared: &Arc<Shared>,
    stream: TcpStream,
    cancel: &CancellationToken,
    pending: PendingHandshake,
) -> Result<(), InboundError> {
    let cfg = &shared.cfg;
    let _ = stream.set_nodelay(true);
    // One deadline for the whole handshake, TLS and Hello: a silent or slow client holds
    // its pending slot no longer than this.
    let deadline = Instant::now() + Duration::from_millis(cfg.handshake_timeout_ms);
    let late = || {
        (
            None,
            None,
            ConnError::new(ConnErrorKind::HandshakeTimeout, "no handshake in time"),
        )
    };
    let (rd, mut wr, cert) = match &cfg.tls {
        None => {
            let (rd, wr) = split_plain(stream);
            (rd, wr, None)
        }
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
            let stream = tokio::time::timeout_at(deadline, acceptor.accept(stream))
                .await
                .map_err(|_| late())?
                .map_err(|e| {
                    (
                        None,
                        None,
                        ConnError::new(ConnErrorKind::Tls, format!("TLS handshake: {e}")),
                    )
                })?;
            let cert = peer_identity(stream.get_ref().1.peer_certificates());
            let (rd, wr) = split_tls(tokio_rustls::TlsStream::Server(stream));
            (rd, wr, Some(cert))
        }
    };
    let mut rd = FramedRead::with_capacity(
        rd,
        FrameDecoder::<Hello>::new(HANDSHAKE_FRAME_BYTES_MAX),
        64 * 1024,
    );
    let hello = tokio::time::timeout_at(deadline, rd.next())
        .await
        .map_err(|_| late())?;
    let hello = match hello {
        None => {
            return Err((
                None,
                None,
                ConnError::new(ConnErrorKind::Io, "closed before handshake"),
            ))
        }
        Some(Err(e)) => return Err((None, None, e.into())),
        Some(Ok(h)) => h,
    };
    let known = shared.peers.lock().unwrap().contains_key(&hello.from);
    // Refusals that concern the cluster ID are logged here with the detail and answered
    // with REFUSED alone: a stranger learns nothing of the ID from them.
    let refusal = if hello.cluster_id != cfg.cluster_id {
        Some((
            format!(
                "cluster id mismatch: this is cluster {:#x}, the dialer claims {:#x}",
                cfg.cluster_id, hello.cluster_id
            ),
            false,
        ))
    } else if let Some(found) = cert
        .as_ref()
        .filter(|c| **c != Ok((cfg.cluster_id, hello.from)))
    {
        Some((
            format!(
                "the dialer claims node {} but its certificate says: {}",
                hello.from,
                describe_identity(found)
            ),
            false,
        ))
    } else if hello.to != cfg.node_id {
        Some((
            format!(
                "wrong node: you dialled node {} but this is node {}",
                hello.to, cfg.node_id
            ),
            true,
        ))
    } else if !known {
        Some((
            format!("node {} is not a peer of node {}", hello.from, cfg.node_id),
            true,
        ))
    } else {
        None
    };
    let mut buf = BytesMut::new();
    let reply = match &refusal {
        Some((reason, told)) => {
            let mut reason = if *told {
                reason.clone()
            } else {
                REFUSED.to_string()
            };
            reason.truncate(REJECT_REASON_BYTES_MAX);
            HelloReply::Reject { reason }
        }
        None => HelloReply::Accept {
            node_id: cfg.node_id,
        },
    };
    let (peer, lane) = (Some(hello.from), Some(hello.lane));
    encode_frame(&reply, &mut buf, HANDSHAKE_FRAME_BYTES_MAX)
        .map_err(|e| (peer, lane, e.into()))?;
    let written = tokio::time::timeout_at(deadline, write_flush(&mut wr, &buf)).await;
    drop(pending);
    if let Some((reason, _)) = refusal {
        let _ = wr.shutdown().await;
        return Err((
            peer,
            lane,
            ConnError::new(ConnErrorKind::HandshakeRejected, reason),
        ));
    }
    match written {
        Err(_) => {
            return Err((
                peer,
                lane,
                ConnError::new(ConnErrorKind::HandshakeTimeout, "reply write stalled"),
            ))
        }
        Ok(Err(e)) => return Err((peer, lane, e.into())),
        Ok(Ok(())) => {}
    }
    let from = hello.from;
    match hello.lane {
        Lane::Messages => {
            // Whatever arrived behind the handshake stays in the buffer and is read first.
            let buf = std::mem::take(rd.read_buffer_mut());
            serve_inbound_messages(shared, from, rd.into_inner(), buf, wr.into(), cancel)
                .await
                .map_err(|e| (peer, lane, e))
        }
        Lane::Snapshots => {
            let rd = rd.map_decoder(|d| d.retype::<SnapshotFrame>(cfg.frame_bytes_max));
            receive_snapshots(shared, from, rd, wr)
                .await
                .map_err(|e| (peer, lane, e))
        }
    }
}

/// An accepted message connection: read it, and offer it to the writer as the way to send
/// to this peer (see [`Outbox::inbound`]).
async fn serve_inbound_messages(
    shared: &Arc<Shared>,
    from: NodeId,
    rd: Reader,
    buf: BytesMut,
    wr: LinkWriter,
    cancel: &CancellationToken,
) -> Result<(), ConnError> {
    let conn_id = shared.conn_seq.fetch_add(1, Relaxed);
    if let Some((_, older)) = shared
        .inbound_messages
        .lock()
        .unwrap()
        .insert(from, (conn_id, cancel.clone()))
    {
        older.cancel();
    }
    let link = Link::new(wr, false, cancel.child_token());
    let peer = shared.peers.lock().unwrap().get(&from).cloned();
    if let Some(peer) = &peer {
        let mut out = peer.out.lock().unwrap();
        out.inbound = Some(link.clone());
        // Both ends dialled: each keeps the connection the lower node ID dialled, so that
        // the two converge on one.
        if let Some(conn) = &out.conn {
            if conn.dialed_by_us && from < shared.cfg.node_id {
                conn.retired.store(true, Relaxed);
                peer.queue_notify.notify_one();
            }
        }
    }
    // Undone however this ends, cancellation (which drops this future) included: the
    // link's socket must not outlive its reader.
    struct Unregister<'a> {
        shared: &'a Shared,
        from: NodeId,
        conn_id: u64,
        peer: Option<Arc<Peer>>,
        link: Arc<Link>,
    }
    impl Drop for Unregister<'_> {
        fn drop(&mut self) {
            self.link.closed.cancel();
            if let Some(peer) = &self.peer {
                let mut out = peer.out.lock().unwrap();
                if out
                    .inbound
                    .as_ref()
                    .is_some_and(|l| Arc::ptr_eq(l, &self.link))
                {
                    out.inbound = None;
                }
                if out
                    .conn
                    .as_ref()
                    .is_some_and(|l| Arc::ptr_eq(l, &self.link))
                {
                    out.disconnect();
                }
            }
            let mut map = self.shared.inbound_messages.lock().unwrap();
            if map.get(&self.from).map(|(id, _)| *id) == Some(self.conn_id) {
                map.remove(&self.from);
            }
        }
    }
    let _unregister = Unregister {
        shared,
        from,
        conn_id,
        peer,
        link: link.clone(),
    };
    read_messages(shared, from, rd, buf, &link, true).await
}

/// Read a message connection: every read pulls in as many bytes as the socket holds (up
/// to the room left in the reader's chunk, see [`MessageReader`]), every whole frame is
/// decoded in one pass, and they go to the host as one batch: one channel send and one
/// wake-up per read, not per message. With `idle_close`, a connection on which nothing
/// went either way for `idle_timeout_ms` is closed.
async fn read_messages(
    shared: &Shared,
    from: NodeId,
    mut rd: Reader,
    pending: BytesMut,
    link: &Link,
    idle_close: bool,
) -> Result<(), ConnError> {
    let cfg = &shared.cfg;
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let mut reader = MessageReader::new(cfg.frame_bytes_max, &pending);
    drop(pending);
    let batch_max = cfg.incoming_batch_messages_max;
    // The idle timer is re-armed only when it fires, not per read, so the hot path
    // reads no clock; silence is detected within 1-2x idle.
    let timer = sleep(idle);
    tokio::pin!(timer);
    let mut frames_since_armed = 0u64;
    let mut writes_armed = link.writes.load(Relaxed);
    let mut bytes_seen = 0u64;
    // Sized like the last batch: a steady stream allocates each batch once.
    let mut batch_hint = 1usize;
    loop {
        let mut batch = Vec::with_capacity(batch_hint);
        // A bad frame ends the connection, but the good ones before it are delivered.
        let (drained, bad) = match reader.decode(&mut batch, batch_max) {
            Ok(drained) => (drained, None),
            Err(e) => (true, Some(ConnError::from(e))),
        };
        let strays = batch
            .iter()
            .position(|m| m.from != from || m.to != cfg.node_id);
        let bad = match strays {
            Some(i) => {
                let m = &batch[i];
                let e = ConnError::new(
                    ConnErrorKind::Protocol,
                    format!(
                        "message from {} to {} on node {from}'s connection to node {}",
                        m.from, m.to, cfg.node_id
                    ),
                );
                batch.truncate(i);
                Some(e)
            }
            None => bad,
        };
        if !batch.is_empty() {
            let n = batch.len() as u64;
            batch_hint = batch.len();
            frames_since_armed += n;
            let total = reader.frame_bytes();
            Stats::add(&shared.stats.bytes_received, total - bytes_seen);
            bytes_seen = total;
            Stats::add(&shared.stats.messages_received, n);
            link.reads.fetch_add(1, Relaxed);
            if !deliver(shared, Incoming::Messages(batch)).await {
                // The host dropped its receiver: nothing left to deliver to.
                return Ok(());
            }
        }
        if let Some(e) = bad {
            return Err(e);
        }
        if !drained {
            continue; // A full batch: more whole frames may wait in the buffer.
        }
        let mut room = reader.read_buf()?;
        let read = tokio::select! {
            biased;
            r = rd.read_buf(&mut room) => r?,
            _ = &mut timer, if idle_close => {
                let writes = link.writes.load(Relaxed);
                if frames_since_armed > 0 || writes != writes_armed {
                    frames_since_armed = 0;
                    writes_armed = writes;
                    timer.as_mut().reset(Instant::now() + idle);
                    continue;
                }
                return Err(ConnError::new(ConnErrorKind::IdleTimeout, "no frame within idle_timeout_ms"));
            }
        };
        if read == 0 {
            // Every whole frame was decoded above: anything left is a cut-off frame.
            reader.finish()?;
            return Ok(());
        }
    }
}

async fn receive_snapshots(
    shared: &Arc<Shared>,
    from: NodeId,
    mut rd: FramedRead<Reader, FrameDecoder<SnapshotFrame>>,
    mut wr: Writer,
) -> Result<(), ConnError> {
    let cfg = &shared.cfg;
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let mut out = BytesMut::new();
    // The snapshot in progress on this connection; put back into `partial_snapshots` if
    // the connection ends early, so that the next connection resumes it.
    struct Holder<'a> {
        shared: &'a Shared,
        from: NodeId,
        partial: Option<PartialSnapshot>,
    }
    impl Drop for Holder<'_> {
        fn drop(&mut self) {
            if let Some(p) = self.partial.take() {
                self.shared
                    .partial_snapshots
                    .lock()
                    .unwrap()
                    .insert(self.from, p);
            }
        }
    }
    let mut holder = Holder {
        shared,
        from,
        partial: None,
    };
    loop {
        let frame = match timeout(idle, rd.next()).await {
            Err(_) => {
                return Err(ConnError::new(
                    ConnErrorKind::IdleTimeout,
                    "no frame within idle_timeout_ms",
                ))
            }
            Ok(None) => return Ok(()),
            Ok(Some(r)) => r?,
        };
        let reply = match frame {
            SnapshotFrame::Offer {
                snapshot_id,
                meta,
                total_bytes,
                crc32,
            } => {
                if total_bytes > cfg.snapshot_bytes_max {
                    let reason = format!(
                        "snapshot of {total_bytes} bytes exceeds snapshot_bytes_max {}",
                        cfg.snapshot_bytes_max
                    );
                    out.clear();
                    encode_frame(
                        &SnapshotFrame::Abort {
                            snapshot_id,
                            reason: reason.clone(),
                        },
                        &mut out,
                        cfg.frame_bytes_max,
                    )?;
                    let _ = timeout(idle, write_flush(&mut wr, &out)).await;
                    return Err(ConnError::new(ConnErrorKind::Snapshot, reason));
                }
                let kept = shared.partial_snapshots.lock().unwrap().remove(&from);
                let partial = match kept {
                    Some(p)
                        if p.id == snapshot_id && p.total == total_bytes && p.crc32 == crc32 =>
                    {
                        p
                    }
                    _ => PartialSnapshot {
                        id: snapshot_id,
                        meta,
                        total: total_bytes,
                        crc32,
                        // Grown as chunks arrive: an offer alone never allocates its size.
                        buf: BytesMut::new(),
                        hasher: crc32fast::Hasher::new(),
                    },
                };
                let offset = partial.buf.len() as u64;
                holder.partial = Some(partial);
                SnapshotFrame::Resume {
                    snapshot_id,
                    offset,
                }
            }
            SnapshotFrame::Chunk {
                snapshot_id,
                offset,
                crc32,
                data,
            } => {
                let Some(p) = holder.partial.as_mut() else {
                    return Err(ConnError::new(
                        ConnErrorKind::Protocol,
                        "chunk before offer",
                    ));
                };
                if snapshot_id != p.id || offset != p.buf.len() as u64 {
                    return Err(ConnError::new(
                        ConnErrorKind::Snapshot,
                        format!(
                            "chunk of snapshot {snapshot_id} at {offset}, expected snapshot {} at {}",
                            p.id,
                            p.buf.len()
                        ),
                    ));
                }
                if offset + data.len() as u64 > p.total {
                    return Err(ConnError::new(
                        ConnErrorKind::Snapshot,
                        "chunk beyond the end",
                    ));
                }
                if crc32fast::hash(&data) != crc32 {
                    // Keep what was verified so far; the sender resumes from there.
                    return Err(ConnError::new(
                        ConnErrorKind::Snapshot,
                        "chunk CRC mismatch",
                    ));
                }
                p.buf.extend_from_slice(&data);
                p.hasher.update(&data);
                Stats::add(&shared.stats.snapshot_bytes_received, data.len() as u64);
                if (p.buf.len() as u64) < p.total {
                    continue;
                }
                let p = holder.partial.take().expect("checked above");
                if p.hasher.clone().finalize() != p.crc32 {
                    return Err(ConnError::new(
                        ConnErrorKind::Snapshot,
                        "whole-snapshot CRC mismatch; discarded",
                    ));
                }
                Stats::add(&shared.stats.snapshots_received, 1);
                let incoming = Incoming::Snapshot {
                    from,
                    meta: p.meta,
                    data: p.buf.freeze(),
                };
                if !deliver(shared, incoming).await {
                    return Ok(());
                }
                SnapshotFrame::Done { snapshot_id: p.id }
            }
            other => {
                return Err(ConnError::new(
                    ConnErrorKind::Protocol,
                    format!("unexpected {} from the sender", frame_name(&other)),
                ))
            }
        };
        out.clear();
        encode_frame(&reply, &mut out, cfg.frame_bytes_max)?;
        timeout(idle, write_flush(&mut wr, &out))
            .await
            .map_err(|_| ConnError::new(ConnErrorKind::IdleTimeout, "reply write stalled"))??;
    }
}
