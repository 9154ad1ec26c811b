//! The snapshot lane, both directions: a writer task per peer that streams the latest
//! snapshot in CRC-checked chunks, resuming where the receiver left off, and the receiver
//! that reassembles and delivers it.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use raft_core::{NodeId, SnapshotMeta};
use tokio::sync::oneshot;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_util::codec::FramedRead;
use tracing::info;

use crate::config::backoff_ms;
use crate::conn::{Reader, Writer};
use crate::frame::{encode_frame, FrameDecoder};
use crate::stats::{ConnErrorKind, Stats};
use crate::wire::{Lane, SnapshotFrame, HANDSHAKE_FRAME_BYTES_MAX};

use super::dial::dial;
use super::{
    deliver, log_conn_error, write_flush, ConnError, Incoming, Peer, Shared, SnapshotSendError,
};

pub(super) struct OutSnapshot {
    pub(super) id: u64,
    pub(super) meta: SnapshotMeta,
    pub(super) data: Bytes,
    pub(super) crc32: u32,
    pub(super) done: Option<oneshot::Sender<Result<(), SnapshotSendError>>>,
}

/// A snapshot being received, kept across reconnects so the sender can resume.
pub(super) struct PartialSnapshot {
    id: u64,
    meta: SnapshotMeta,
    total: u64,
    crc32: u32,
    buf: BytesMut,
    hasher: crc32fast::Hasher,
}

pub(super) async fn snapshot_writer(shared: Arc<Shared>, peer: Arc<Peer>) {
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

pub(super) async fn receive_snapshots(
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
