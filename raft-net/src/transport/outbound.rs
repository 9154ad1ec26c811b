//! The message lane's sending side: a peer's outbox, direct writes from `send`, and the
//! writer task that batches everything queued onto one connection.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use raft_core::NodeId;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::backoff_ms;
use crate::conn::{LinkWriter, Reader};
use crate::group::Envelope;
use crate::group_codec::encode_envelope;
use crate::message_codec::SegmentedBuf;
use crate::stats::{ConnErrorKind, Stats};
use crate::wire::Lane;

use super::dial::dial;
use super::inbound::read_lane;
use super::{log_conn_error, ConnError, Peer, Shared};

/// A peer's outbound message lane. One lock covers the queue and the connection, so that
/// `send`'s direct writes and the writer task's batches never interleave bytes or reorder
/// messages: `send` writes only when nothing is queued, unsent or being written.
pub(super) struct Outbox {
    pub(super) queue: VecDeque<Envelope>,
    /// Memory held by `queue` (see `TransportConfig::queue_bytes_max`).
    pub(super) queued_bytes: usize,
    /// The writer task holds messages (or `unsent` bytes) that it has not finished writing.
    pub(super) writer_busy: bool,
    /// The message connection the writer task is sending on (and `send` may write to
    /// directly); `None` while there is none.
    pub(super) conn: Option<Arc<Link>>,
    /// The message connection this peer dialled to us, open while its reader runs: the
    /// writer sends on it rather than dialling a second connection, so that replies travel
    /// with the requests and TCP's acknowledgements ride on them.
    pub(super) inbound: Option<Arc<Link>>,
    /// The tail of a direct write that the socket did not take at once. The writer task
    /// writes it before anything else; it is dropped with its connection.
    pub(super) unsent: Vec<Bytes>,
    /// When the last write on `conn` ended (direct or by the writer task).
    pub(super) write_ended: std::time::Instant,
    /// The direct writes' encode buffer, kept between sends.
    pub(super) scratch: SegmentedBuf,
}

impl Outbox {
    pub(super) fn new() -> Self {
        Outbox {
            queue: VecDeque::new(),
            queued_bytes: 0,
            writer_busy: false,
            conn: None,
            inbound: None,
            unsent: Vec::new(),
            write_ended: std::time::Instant::now(),
            scratch: SegmentedBuf::with_capacity(DIRECT_WRITE_BUF_BYTES),
        }
    }

    /// The connection ended: what was not written on it is lost with it.
    pub(super) fn disconnect(&mut self) {
        self.conn = None;
        self.unsent.clear();
    }
}

/// One message connection, as a way to send to its peer: dialled by us or by the peer, and
/// read by a reader task that delivers whatever the peer sends on it.
pub(super) struct Link {
    pub(super) wr: LinkWriter,
    pub(super) dialed_by_us: bool,
    /// Cancelled when the connection ends (its reader stopped, or we closed it).
    pub(super) closed: CancellationToken,
    /// Set (under the outbox lock) when a better link to the same peer appeared: the writer
    /// finishes any half-written frame, then moves over.
    pub(super) retired: AtomicBool,
    /// Writes and delivered batches, so that either side's idle timer counts traffic in
    /// both directions.
    pub(super) writes: AtomicU64,
    pub(super) reads: AtomicU64,
}

impl Link {
    pub(super) fn new(wr: LinkWriter, dialed_by_us: bool, closed: CancellationToken) -> Arc<Link> {
        Arc::new(Link {
            wr,
            dialed_by_us,
            closed,
            retired: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        })
    }

    pub(super) fn activity(&self) -> u64 {
        self.writes
            .load(Relaxed)
            .wrapping_add(self.reads.load(Relaxed))
    }
}

/// Initial room of the direct-write encode buffer; a larger message grows it.
const DIRECT_WRITE_BUF_BYTES: usize = 4096;
/// A direct-write buffer grown past this by a large message is not kept.
const DIRECT_WRITE_BUF_BYTES_MAX: usize = 64 * 1024;
/// Segments per vectored write.
const IOVECS_MAX: usize = 64;

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
pub(super) fn write_direct(
    shared: &Shared,
    peer: &Peer,
    out: &mut Outbox,
    conn: &Link,
    msg: Envelope,
) -> Option<Envelope> {
    let cfg = &shared.cfg;
    let Some(wr) = conn.wr.direct() else {
        return Some(msg);
    };
    out.scratch.clear();
    if let Err(e) = encode_envelope(&msg, &mut out.scratch, cfg.frame_bytes_max) {
        Stats::add(&shared.stats.messages_unencodable, msg.messages() as u64);
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
    let messages = msg.messages() as u64;
    Stats::add(&shared.stats.messages_sent, messages);
    Stats::add(&shared.stats.bytes_sent, written as u64);
    Stats::add(&peer.sent_messages, messages);
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

pub(super) async fn message_writer(shared: Arc<Shared>, peer: Arc<Peer>) {
    let cfg = &shared.cfg;
    let mut failures: u32 = 0;
    let mut connected_before = false;
    let mut buf = SegmentedBuf::with_capacity(cfg.write_batch_bytes_max + 64 * 1024);
    let mut batch: VecDeque<Envelope> = VecDeque::new();
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
        r = read_lane(&shared, peer, rd, buf, &link, false) => r,
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
    batch: &mut VecDeque<Envelope>,
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
                out.queued_bytes = 0;
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
            match encode_envelope(&msg, buf, cfg.frame_bytes_max) {
                Ok(_) => count += msg.messages() as u64,
                Err(e) => {
                    Stats::add(&shared.stats.messages_unencodable, msg.messages() as u64);
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
