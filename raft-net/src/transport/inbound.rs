//! The listener, the acceptor's half of the handshake, and the readers of message
//! connections (accepted ones, and the replies on ones we dialled).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use raft_core::{Message, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep, Instant};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::conn::{split_plain, split_tls, Handshakes, LinkWriter, PendingHandshake, Reader};
use crate::frame::{encode_frame, FrameDecoder, FrameError};
use crate::group::{Envelope, GroupIncoming};
use crate::message_reader::MessageReader;
use crate::stats::{ConnErrorKind, Stats};
use crate::wire::{
    Hello, HelloReply, Lane, SnapshotFrame, HANDSHAKE_FRAME_BYTES_MAX, REJECT_REASON_BYTES_MAX,
};

use super::outbound::Link;
use super::snapshot_lane::receive_snapshots;
use super::{
    deliver, deliver_groups, describe_identity, peer_identity, write_flush, ConnError, Incoming,
    Peer, Shared, REFUSED,
};

pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, slots: Arc<Semaphore>) {
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
    read_lane(shared, from, rd, buf, &link, true).await
}

/// [`read_messages`] of the kind of frames the host takes: `Message`s of group 0 for a
/// single-group host, [`Envelope`]s of every group for a multi-group one.
pub(super) async fn read_lane(
    shared: &Shared,
    from: NodeId,
    rd: Reader,
    pending: BytesMut,
    link: &Link,
    idle_close: bool,
) -> Result<(), ConnError> {
    if shared.multi {
        read_messages::<Envelope>(shared, from, rd, pending, link, idle_close).await
    } else {
        read_messages::<Message>(shared, from, rd, pending, link, idle_close).await
    }
}

/// What a message connection's reader decodes and hands to the host.
pub(super) trait LaneFrame: Sized + Send {
    /// Decode the whole frames at the front of `reader` (see [`MessageReader::decode`]).
    fn decode(
        reader: &mut MessageReader,
        out: &mut Vec<Self>,
        max: usize,
    ) -> Result<bool, FrameError>;
    /// The sender and recipient it names, if it names them (a coalesced frame's are the
    /// connection's ends).
    fn ends(&self) -> Option<(NodeId, NodeId)>;
    /// Raft messages it stands for.
    fn messages(&self) -> u64;
    /// The host's item for a batch of them from `from`.
    fn batch(from: NodeId, batch: Vec<Self>) -> Batch;
}

/// A batch of frames, as the host takes them.
pub(super) enum Batch {
    Single(Incoming),
    Groups(GroupIncoming),
}

impl LaneFrame for Message {
    fn decode(
        reader: &mut MessageReader,
        out: &mut Vec<Self>,
        max: usize,
    ) -> Result<bool, FrameError> {
        reader.decode(out, max)
    }

    fn ends(&self) -> Option<(NodeId, NodeId)> {
        Some((self.from, self.to))
    }

    fn messages(&self) -> u64 {
        1
    }

    fn batch(_: NodeId, batch: Vec<Self>) -> Batch {
        Batch::Single(Incoming::Messages(batch))
    }
}

impl LaneFrame for Envelope {
    fn decode(
        reader: &mut MessageReader,
        out: &mut Vec<Self>,
        max: usize,
    ) -> Result<bool, FrameError> {
        reader.decode_envelopes(out, max)
    }

    fn ends(&self) -> Option<(NodeId, NodeId)> {
        match self {
            Envelope::Message { message, .. } => Some((message.from, message.to)),
            Envelope::Heartbeats(_) | Envelope::HeartbeatResponses(_) => None,
        }
    }

    fn messages(&self) -> u64 {
        Envelope::messages(self) as u64
    }

    fn batch(from: NodeId, frames: Vec<Self>) -> Batch {
        Batch::Groups(GroupIncoming::Frames { from, frames })
    }
}

/// Read a message connection: every read pulls in as many bytes as the socket holds (up
/// to the room left in the reader's chunk, see [`MessageReader`]), every whole frame is
/// decoded in one pass, and they go to the host as one batch: one channel send and one
/// wake-up per read, not per message. With `idle_close`, a connection on which nothing
/// went either way for `idle_timeout_ms` is closed.
async fn read_messages<F: LaneFrame>(
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
        let (drained, bad) = match F::decode(&mut reader, &mut batch, batch_max) {
            Ok(drained) => (drained, None),
            Err(e) => (true, Some(ConnError::from(e))),
        };
        let strays = batch
            .iter()
            .position(|m| m.ends().is_some_and(|(f, t)| f != from || t != cfg.node_id));
        let bad = match strays {
            Some(i) => {
                let (f, t) = batch[i].ends().expect("a stray names its ends");
                let e = ConnError::new(
                    ConnErrorKind::Protocol,
                    format!(
                        "message from {f} to {t} on node {from}'s connection to node {}",
                        cfg.node_id
                    ),
                );
                batch.truncate(i);
                Some(e)
            }
            None => bad,
        };
        if !batch.is_empty() {
            let n: u64 = batch.iter().map(F::messages).sum();
            batch_hint = batch.len();
            frames_since_armed += batch.len() as u64;
            let total = reader.frame_bytes();
            Stats::add(&shared.stats.bytes_received, total - bytes_seen);
            bytes_seen = total;
            Stats::add(&shared.stats.messages_received, n);
            link.reads.fetch_add(1, Relaxed);
            let delivered = match F::batch(from, batch) {
                Batch::Single(item) => deliver(shared, item).await,
                Batch::Groups(item) => deliver_groups(shared, item).await,
            };
            if !delivered {
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
