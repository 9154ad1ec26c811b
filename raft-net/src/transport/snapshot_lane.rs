//! The snapshot lane, both directions: a writer task per peer that streams the latest
//! snapshot file in CRC-checked chunks read from it as they go out, resuming where the
//! receiver left off, and the receiver that writes them into its snapshot store's partial
//! file (raft-snapshot's [`SnapshotAssembler`]), checks the whole file and installs it.
//! Either side holds at most two chunks of a transfer in memory: one on the wire, one
//! being read from or written to the file.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use raft_core::NodeId;
use raft_snapshot::{
    AssemblyProgress, SnapshotAssembler, SnapshotChunks, SnapshotError, TransferChunk,
};
use tokio::sync::{oneshot, OwnedMutexGuard};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::backoff_ms;
use crate::conn::{Reader, Writer};
use crate::frame::{encode_frame, FrameDecoder};
use crate::group::{GroupId, GroupIncoming, SINGLE_GROUP};
use crate::stats::{ConnErrorKind, Stats};
use crate::wire::{Lane, SnapshotFrame, HANDSHAKE_FRAME_BYTES_MAX};

use super::dial::dial;
use super::{
    deliver, deliver_groups, log_conn_error, write_flush, ConnError, Incoming, Peer, Shared,
    SnapshotSendError,
};

/// Before it answers the last chunk the receiver fsyncs the file and reads it all again to
/// check it: the sender waits that long beyond `idle_timeout_ms`, at this rate or faster.
const FINISH_BYTES_PER_SEC_MIN: u64 = 16 << 20;

pub(super) struct OutSnapshot {
    pub(super) id: u64,
    /// The file, open for the whole transfer (attempts and resumes included).
    pub(super) chunks: Arc<SnapshotChunks>,
    pub(super) done: Option<oneshot::Sender<Result<(), SnapshotSendError>>>,
}

/// Sends a peer's snapshots: at most `snapshot_transfers_per_peer_max` at once, each a
/// future of this task on a connection of its own; when one ends, the oldest request not
/// yet running starts. Groups are thus served in the order they asked, and one group's
/// large snapshot holds up at most one slot.
pub(super) async fn snapshot_writer(shared: Arc<Shared>, peer: Arc<Peer>) {
    let cfg = &shared.cfg;
    let connected_before = AtomicBool::new(false);
    let mut running = FuturesUnordered::new();
    let mut in_flight: HashSet<GroupId> = HashSet::new();
    loop {
        while in_flight.len() < cfg.snapshot_transfers_per_peer_max {
            let next = peer
                .snapshots
                .lock()
                .unwrap()
                .iter()
                .filter(|(g, _)| !in_flight.contains(g))
                .min_by_key(|(_, s)| s.id)
                .map(|(&g, s)| (g, s.id, s.chunks.clone()));
            let Some((group, id, chunks)) = next else {
                break;
            };
            in_flight.insert(group);
            running.push(transfer(
                &shared,
                &peer,
                group,
                id,
                chunks,
                &connected_before,
            ));
        }
        tokio::select! {
            _ = peer.cancel.cancelled() => break,
            Some(group) = running.next(), if !running.is_empty() => {
                in_flight.remove(&group);
            }
            _ = peer.snapshot_notify.notified() => {}
        }
    }
    // The peer was removed or the transport shut down: every transfer ends here.
    drop(running);
    let pending: Vec<_> = peer.snapshots.lock().unwrap().drain().collect();
    for (_, mut s) in pending {
        if let Some(done) = s.done.take() {
            let _ = done.send(Err(SnapshotSendError::Cancelled));
        }
    }
}

/// One group's snapshot to the peer, with retries; tells its requester how it ended
/// (unless a newer snapshot of the group replaced it). Returns the group.
async fn transfer(
    shared: &Shared,
    peer: &Peer,
    group: GroupId,
    id: u64,
    chunks: Arc<SnapshotChunks>,
    connected_before: &AtomicBool,
) -> GroupId {
    let cfg = &shared.cfg;
    let mut outcome: Result<(), SnapshotSendError> = Err(SnapshotSendError::Cancelled);
    for attempt in 0..cfg.snapshot_attempts_max {
        let r = stream_snapshot(shared, peer, group, id, &chunks, connected_before).await;
        match r {
            Ok(()) => {
                outcome = Ok(());
                break;
            }
            Err(SnapshotAttemptError::Superseded) => {
                // The replacement's requester was told; the new one is in the slot.
                return group;
            }
            Err(SnapshotAttemptError::Refused(reason)) => {
                outcome = Err(SnapshotSendError::Refused(reason));
                break;
            }
            Err(SnapshotAttemptError::Source(why)) => {
                outcome = Err(SnapshotSendError::Source(why));
                break;
            }
            Err(SnapshotAttemptError::Conn(e)) => {
                log_conn_error(shared, peer.id, Lane::Snapshots, &e);
                outcome = Err(SnapshotSendError::Failed {
                    attempts: attempt + 1,
                    last_error: e.detail,
                });
                if attempt + 1 < cfg.snapshot_attempts_max {
                    let delay = backoff_ms(cfg, peer.id, attempt);
                    sleep(Duration::from_millis(delay)).await;
                }
            }
        }
    }
    let finished = {
        let mut slots = peer.snapshots.lock().unwrap();
        match slots.get(&group) {
            Some(s) if s.id == id => slots.remove(&group),
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
    group
}

enum SnapshotAttemptError {
    Conn(ConnError),
    Superseded,
    Refused(String),
    /// Reading the local file failed: another attempt would fail alike.
    Source(String),
}

impl<E: Into<ConnError>> From<E> for SnapshotAttemptError {
    fn from(e: E) -> Self {
        SnapshotAttemptError::Conn(e.into())
    }
}

async fn stream_snapshot(
    shared: &Shared,
    peer: &Peer,
    group: GroupId,
    id: u64,
    chunks: &Arc<SnapshotChunks>,
    connected_before: &AtomicBool,
) -> Result<(), SnapshotAttemptError> {
    let cfg = &shared.cfg;
    let (rd, mut wr) = dial(shared, peer, Lane::Snapshots).await?;
    Stats::add(&shared.stats.connects, 1);
    if connected_before.swap(true, Relaxed) {
        Stats::add(&shared.stats.reconnects, 1);
    }
    let mut rd = rd.map_decoder(|d| d.retype::<SnapshotFrame>(HANDSHAKE_FRAME_BYTES_MAX));
    let handshake = Duration::from_millis(cfg.handshake_timeout_ms);
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let total = chunks.total_bytes();
    let mut buf = BytesMut::new();
    let offer = SnapshotFrame::Offer {
        snapshot_id: id,
        group,
        meta: chunks.header().meta.clone(),
        total_bytes: total,
    };
    encode_frame(&offer, &mut buf, cfg.frame_bytes_max)?;
    timeout(handshake, write_flush(&mut wr, &buf))
        .await
        .map_err(|_| ConnError::new(ConnErrorKind::IdleTimeout, "offer write stalled"))??;
    // The receiver may first wait for an older connection of its own to let go of its file.
    let reply = timeout(handshake + idle, rd.next())
        .await
        .map_err(|_| ConnError::new(ConnErrorKind::IdleTimeout, "no reply to snapshot offer"))?
        .transpose()?;
    let offset = match reply {
        Some(SnapshotFrame::Resume {
            snapshot_id,
            offset,
        }) if snapshot_id == id && offset <= total => offset,
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
    // Concurrent transfers to the peer share its limit evenly.
    let rate_bytes_per_sec = match cfg.snapshot_bytes_per_sec_max {
        0 => 0,
        rate => (rate / cfg.snapshot_transfers_per_peer_max as u64).max(1),
    };
    let chunk_bytes = match rate_bytes_per_sec {
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
    // The next chunk is read from the file while this one is written to the socket.
    let mut next_read = (offset < total).then(|| read_chunk(chunks, offset, chunk_bytes));
    while let Some(read) = next_read.take() {
        if peer.snapshots.lock().unwrap().get(&group).map(|s| s.id) != Some(id) {
            return Err(SnapshotAttemptError::Superseded);
        }
        let chunk = read
            .await
            .map_err(|e| SnapshotAttemptError::Source(format!("file reader task: {e}")))?
            .map_err(|e| SnapshotAttemptError::Source(e.to_string()))?;
        let len = chunk.data.len() as u64;
        if chunk.offset + len < total {
            next_read = Some(read_chunk(chunks, chunk.offset + len, chunk_bytes));
        }
        if rate_bytes_per_sec > 0 {
            let due = (chunk.offset - first) as f64 / rate_bytes_per_sec as f64;
            sleep_until(started + Duration::from_secs_f64(due)).await;
        }
        let frame = SnapshotFrame::Chunk {
            snapshot_id: id,
            offset: chunk.offset,
            crc32: chunk.crc32,
            data: Bytes::from(chunk.data),
        };
        buf.clear();
        encode_frame(&frame, &mut buf, cfg.frame_bytes_max)?;
        drop(frame);
        timeout(idle, write_flush(&mut wr, &buf))
            .await
            .map_err(|_| ConnError::new(ConnErrorKind::IdleTimeout, "chunk write stalled"))??;
        Stats::add(&shared.stats.snapshot_bytes_sent, len);
    }
    let finishing = Duration::from_millis(total.saturating_mul(1000) / FINISH_BYTES_PER_SEC_MIN);
    let reply = timeout(idle + finishing, rd.next())
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

/// Reads the chunk at `offset` on a blocking thread (file IO never runs on the runtime).
fn read_chunk(
    chunks: &Arc<SnapshotChunks>,
    offset: u64,
    chunk_bytes: usize,
) -> JoinHandle<Result<TransferChunk, SnapshotError>> {
    let chunks = chunks.clone();
    tokio::task::spawn_blocking(move || chunks.read_at(offset, chunk_bytes))
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

/// A chunk being written to the partial file on a blocking thread; it hands the assembler
/// back with the outcome.
type PendingWrite = JoinHandle<(SnapshotAssembler, Result<AssemblyProgress, SnapshotError>)>;

/// The snapshot this connection is receiving.
struct Partial {
    id: u64,
    group: GroupId,
    total: u64,
    /// `None` while a chunk is being written (the write task holds it).
    assembler: Option<SnapshotAssembler>,
    /// The end of the chunks accepted so far, written or being written.
    next_offset: u64,
    pending: Option<PendingWrite>,
}

/// Who may write a group's partial snapshot file: one inbound connection at a time. The
/// newest offer wins: it cancels the older connection (most likely dead already) and takes
/// the lock once that let go.
pub(super) struct ReceiveSlot {
    lock: Arc<tokio::sync::Mutex<()>>,
    cancel: Mutex<Option<CancellationToken>>,
}

/// The group a connection is receiving, and its hold on the group's partial file.
struct Receiving {
    group: GroupId,
    slot: Arc<ReceiveSlot>,
    _guard: OwnedMutexGuard<()>,
}

/// Let go of a group's partial file, and forget its slot if no other connection wants it.
fn release(shared: &Shared, receiving: Receiving) {
    let Receiving {
        group,
        slot,
        _guard,
    } = receiving;
    drop(_guard);
    let mut slots = shared.receiving.lock().unwrap();
    // Clones are made under this lock: two references are the map's and ours.
    if Arc::strong_count(&slot) == 2 {
        slots.remove(&group);
    }
}

pub(super) async fn receive_snapshots(
    shared: &Arc<Shared>,
    from: NodeId,
    mut rd: FramedRead<Reader, FrameDecoder<SnapshotFrame>>,
    mut wr: Writer,
) -> Result<(), ConnError> {
    let mut receiving = None;
    let mut partial = None;
    let cancel = CancellationToken::new();
    let result = receive_loop(
        shared,
        from,
        &mut rd,
        &mut wr,
        &cancel,
        &mut receiving,
        &mut partial,
    )
    .await;
    // A chunk write still running ends before another connection may write the file (the
    // bytes it wrote are kept: the next offer resumes after them).
    if let Some(p) = partial
        .as_mut()
        .and_then(|p: &mut Partial| p.pending.take())
    {
        let _ = p.await;
    }
    if let Some(r) = receiving {
        release(shared, r);
    }
    result
}

async fn receive_loop(
    shared: &Arc<Shared>,
    from: NodeId,
    rd: &mut FramedRead<Reader, FrameDecoder<SnapshotFrame>>,
    wr: &mut Writer,
    cancel: &CancellationToken,
    receiving: &mut Option<Receiving>,
    partial: &mut Option<Partial>,
) -> Result<(), ConnError> {
    let cfg = &shared.cfg;
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let mut out = BytesMut::new();
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => {
                return Err(ConnError::new(
                    ConnErrorKind::Snapshot,
                    "a newer snapshot connection took over",
                ))
            }
            next = timeout(idle, rd.next()) => next,
        };
        let frame = match next {
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
                group,
                meta,
                total_bytes,
            } => {
                if let Some(p) = partial.as_mut().and_then(|p| p.pending.take()) {
                    let _ = p.await;
                }
                *partial = None;
                if total_bytes > cfg.snapshot_bytes_max {
                    let reason = format!(
                        "snapshot of {total_bytes} bytes exceeds snapshot_bytes_max {}",
                        cfg.snapshot_bytes_max
                    );
                    return Err(abort(cfg, wr, snapshot_id, reason).await);
                }
                let store = match &shared.group_stores {
                    Some(stores) => stores(group).ok_or_else(|| {
                        format!("group {group} is not hosted on node {}", cfg.node_id)
                    }),
                    None if group != SINGLE_GROUP => Err(format!(
                        "a snapshot of group {group} offered to a single-group transport"
                    )),
                    None => cfg
                        .snapshot_store
                        .clone()
                        .ok_or_else(|| "this node has no snapshot store".to_string()),
                };
                let store = match store {
                    Ok(store) => store,
                    Err(reason) => return Err(abort(cfg, wr, snapshot_id, reason).await),
                };
                if receiving.as_ref().is_some_and(|r| r.group != group) {
                    release(shared, receiving.take().expect("checked"));
                }
                if receiving.is_none() {
                    // One connection at a time writes into a group's partial file: the
                    // newest offer wins, an older connection (most likely dead already) is
                    // told to let go.
                    let slot = shared
                        .receiving
                        .lock()
                        .unwrap()
                        .entry(group)
                        .or_insert_with(|| {
                            Arc::new(ReceiveSlot {
                                lock: Arc::new(tokio::sync::Mutex::new(())),
                                cancel: Mutex::new(None),
                            })
                        })
                        .clone();
                    if let Some(old) = slot.cancel.lock().unwrap().replace(cancel.clone()) {
                        old.cancel();
                    }
                    let guard = timeout(idle, slot.lock.clone().lock_owned())
                        .await
                        .map_err(|_| {
                            ConnError::new(
                                ConnErrorKind::IdleTimeout,
                                "an older snapshot connection did not let go",
                            )
                        });
                    let guard = match guard {
                        Ok(guard) => guard,
                        Err(e) => {
                            // Not ours yet: let the map forget the slot if nobody else
                            // wants it.
                            let mut slots = shared.receiving.lock().unwrap();
                            if Arc::strong_count(&slot) == 2 {
                                slots.remove(&group);
                            }
                            return Err(e);
                        }
                    };
                    *receiving = Some(Receiving {
                        group,
                        slot,
                        _guard: guard,
                    });
                }
                // Resumes the store's partial file of this snapshot, if any (kept across
                // connections and restarts); the final check catches a tail that is not
                // this file's.
                let opened = tokio::task::spawn_blocking(move || {
                    let mut asm = store.receive(meta)?;
                    if asm
                        .progress()
                        .total_bytes
                        .is_some_and(|t| t != total_bytes)
                    {
                        asm.restart()?;
                    }
                    let free_bytes = store.available_bytes()?;
                    let needed_bytes = total_bytes - asm.progress().next_offset.min(total_bytes);
                    if needed_bytes > free_bytes {
                        let dir = store.dir().display().to_string();
                        let _ = asm.abort();
                        return Ok(Err(format!(
                            "snapshot of {total_bytes} bytes needs {needed_bytes} more bytes, {free_bytes} free in {dir}"
                        )));
                    }
                    Ok(Ok(asm))
                })
                .await
                .map_err(|e| ConnError::new(ConnErrorKind::Snapshot, e.to_string()))?;
                let asm = match opened {
                    Ok(Ok(asm)) => asm,
                    Ok(Err(reason)) => return Err(abort(cfg, wr, snapshot_id, reason).await),
                    Err(e) => {
                        let e: SnapshotError = e;
                        return Err(abort(cfg, wr, snapshot_id, e.to_string()).await);
                    }
                };
                let offset = asm.progress().next_offset;
                *partial = Some(Partial {
                    id: snapshot_id,
                    group,
                    total: total_bytes,
                    assembler: Some(asm),
                    next_offset: offset,
                    pending: None,
                });
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
                let Some(p) = partial.as_mut() else {
                    return Err(ConnError::new(
                        ConnErrorKind::Protocol,
                        "chunk before offer",
                    ));
                };
                if snapshot_id != p.id || offset != p.next_offset {
                    return Err(ConnError::new(
                        ConnErrorKind::Snapshot,
                        format!(
                            "chunk of snapshot {snapshot_id} at {offset}, expected snapshot {} at {}",
                            p.id, p.next_offset
                        ),
                    ));
                }
                let len = data.len() as u64;
                if len == 0 || offset + len > p.total {
                    return Err(ConnError::new(
                        ConnErrorKind::Snapshot,
                        "empty chunk or chunk beyond the end",
                    ));
                }
                let chunk = TransferChunk {
                    offset,
                    data,
                    crc32,
                };
                // Checked here too (the assembler checks it again), so that a damaged chunk
                // closes the connection now rather than when the next one arrives.
                chunk
                    .verify()
                    .map_err(|e| ConnError::new(ConnErrorKind::Snapshot, e.to_string()))?;
                // The previous chunk's write ends before this one starts: writes stay in
                // order, and at most one chunk waits for the disk while one is read.
                await_write(cfg, wr, p).await?;
                let mut asm = p.assembler.take().expect("no write pending");
                p.pending = Some(tokio::task::spawn_blocking(move || {
                    let r = asm.accept(&chunk);
                    (asm, r)
                }));
                p.next_offset = offset + len;
                Stats::add(&shared.stats.snapshot_bytes_received, len);
                if p.next_offset < p.total {
                    continue;
                }
                await_write(cfg, wr, p).await?;
                let p = partial.take().expect("checked above");
                let asm = p.assembler.expect("no write pending");
                let meta = asm.header().map(|h| h.meta.clone());
                let finished = tokio::task::spawn_blocking(move || asm.finish())
                    .await
                    .map_err(|e| ConnError::new(ConnErrorKind::Snapshot, e.to_string()))?;
                let (file, meta) = match (finished, meta) {
                    (Ok(file), Some(meta)) => (file, meta),
                    (Err(e), _) => {
                        let reason = format!("received snapshot failed its check: {e}");
                        return Err(abort(cfg, wr, p.id, reason).await);
                    }
                    (Ok(_), None) => unreachable!("a complete file has a header"),
                };
                Stats::add(&shared.stats.snapshots_received, 1);
                let delivered = if shared.multi {
                    let item = GroupIncoming::Snapshot {
                        from,
                        group: p.group,
                        meta,
                        file,
                    };
                    deliver_groups(shared, item).await
                } else {
                    deliver(shared, Incoming::Snapshot { from, meta, file }).await
                };
                if !delivered {
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
        timeout(idle, write_flush(wr, &out))
            .await
            .map_err(|_| ConnError::new(ConnErrorKind::IdleTimeout, "reply write stalled"))??;
    }
}

/// Waits for the chunk write in flight, if any, and takes its assembler back. A damaged
/// chunk closes the connection (the sender resumes after the bytes written so far); any
/// other failure (a header for another snapshot, a body over the store's bound, the disk)
/// refuses the snapshot.
async fn await_write(
    cfg: &crate::config::TransportConfig,
    wr: &mut Writer,
    p: &mut Partial,
) -> Result<(), ConnError> {
    let Some(pending) = p.pending.take() else {
        return Ok(());
    };
    let (asm, result) = pending
        .await
        .map_err(|e| ConnError::new(ConnErrorKind::Snapshot, format!("chunk writer: {e}")))?;
    p.assembler = Some(asm);
    match result {
        Ok(_) => Ok(()),
        Err(e @ SnapshotError::TransferChunkCrc { .. }) => {
            Err(ConnError::new(ConnErrorKind::Snapshot, e.to_string()))
        }
        Err(e) => Err(abort(cfg, wr, p.id, e.to_string()).await),
    }
}

/// Tells the sender the snapshot is refused, and why; the error closes the connection.
async fn abort(
    cfg: &crate::config::TransportConfig,
    wr: &mut Writer,
    snapshot_id: u64,
    reason: String,
) -> ConnError {
    let mut out = BytesMut::new();
    let frame = SnapshotFrame::Abort {
        snapshot_id,
        reason: reason.clone(),
    };
    if encode_frame(&frame, &mut out, cfg.frame_bytes_max).is_ok() {
        let idle = Duration::from_millis(cfg.idle_timeout_ms);
        let _ = timeout(idle, write_flush(wr, &out)).await;
    }
    ConnError::new(ConnErrorKind::Snapshot, reason)
}
