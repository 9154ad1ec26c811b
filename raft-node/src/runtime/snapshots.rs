//! The snapshot pipeline: taking snapshots and compacting the log behind them, sending
//! one to a follower, and preparing and installing one from the leader; the work runs on
//! blocking threads and comes back as [`SnapshotEvent`]s.

use raft_core::{
    Index, LogStore, Message, MessageBody, NodeId as CoreId, RawNode, SnapshotMeta, Term,
};
use raft_snapshot::StateDigest;

use crate::anti_entropy::DIGESTS_KEPT_MAX;
use crate::metrics::Metrics;
use crate::store::NodeStore;

use super::{HostedMachine, Runtime};

/// Work finished off the runtime task.
pub(super) enum SnapshotEvent<M> {
    Written {
        meta: SnapshotMeta,
        result: Result<(), String>,
    },
    SendFailed {
        to: CoreId,
        why: String,
    },
    /// Handed to the transport; if it is lost, the core's retry timer sends it again.
    Queued {
        to: CoreId,
    },
    /// A leader's snapshot file restored into a fresh state machine, ready to install.
    Prepared {
        meta: SnapshotMeta,
        result: Result<Box<M>, String>,
    },
    /// The state digest at `index`, computed from a frozen copy (or why not).
    Digested {
        index: Index,
        digest: Result<StateDigest, String>,
    },
}

/// A leader's snapshot on its way in: its file (received by the transport) restored off the
/// task, then its `InstallSnapshot` message stepped into the core.
pub(super) struct InstallState<M> {
    /// `(index, term)` of the snapshot being prepared.
    preparing: Option<(Index, Term)>,
    /// The `InstallSnapshot` that arrived while its snapshot was being prepared.
    held: Option<Message>,
    /// A prepared snapshot, kept until the core hands it back in a Ready.
    pub(super) prepared: Option<(SnapshotMeta, Box<M>)>,
}

impl<M> Default for InstallState<M> {
    fn default() -> Self {
        InstallState {
            preparing: None,
            held: None,
            prepared: None,
        }
    }
}

/// Tells the core, at start, which snapshot this node holds to send to followers (the core
/// chooses what a leader sends; the log's compaction point, a trailing margin below the
/// newest file, is no snapshot). Files are tried newest first, up to a few: one the core
/// refuses (its index beyond a log that lost unsynced entries) leaves the next older.
pub(super) fn report_held_snapshots<S: LogStore>(
    raw: &mut RawNode<S>,
    store: &raft_snapshot::SnapshotStore,
) {
    const FILES_TRIED_MAX: usize = 4;
    let mut files = match store.list() {
        Ok(files) => files,
        Err(e) => {
            tracing::warn!(error = %e, "listing snapshot files failed; none offered to followers");
            return;
        }
    };
    files.sort_by_key(|f| std::cmp::Reverse(f.index));
    for file in files.into_iter().take(FILES_TRIED_MAX) {
        let meta = match raft_snapshot::SnapshotReader::open(&file.path) {
            Ok(reader) => reader.header().meta.clone(),
            Err(e) => {
                tracing::warn!(path = %file.path.display(), error = %e, "unreadable snapshot file skipped");
                continue;
            }
        };
        match raw.on_snapshot_built(meta) {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(path = %file.path.display(), error = %e, "snapshot file not offered to followers")
            }
        }
    }
}

/// Runs work that a blocking thread does for the runtime, turning a panic into an error, so
/// that the completion the runtime waits for is always sent.
pub(super) fn off_task<T>(work: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
        .unwrap_or_else(|_| Err("the work panicked".to_string()))
}

impl<S: NodeStore, M: HostedMachine> Runtime<S, M> {
    /// Restores a state machine from a leader's snapshot file, which the transport received
    /// into the snapshot store (checked and durable under its final name), on a blocking
    /// thread: the core is told nothing until that is done, so it goes on answering
    /// heartbeats (and the node keeps its leader) however large the snapshot. One at a time;
    /// a file arriving meanwhile is dropped (the leader resends it after its retry timeout).
    /// A file that does not restore (its state digest differs) is deleted, so that a restart
    /// does not trip over it.
    pub(super) fn prepare_snapshot(
        &mut self,
        meta: SnapshotMeta,
        file: raft_snapshot::SnapshotFile,
    ) {
        let key = (meta.index, meta.term);
        if self.install.preparing.is_some() {
            tracing::debug!(
                index = meta.index,
                "a snapshot is already being prepared; file dropped"
            );
            return;
        }
        if self
            .install
            .prepared
            .as_ref()
            .is_some_and(|(m, _)| (m.index, m.term) == key)
        {
            return;
        }
        self.install.preparing = Some(key);
        let mut sm = self.sm.empty_like();
        let bg = self.bg_tx.clone();
        tokio::task::spawn_blocking(move || {
            // The file is durable before the core or the log hear of it: a crash in between
            // leaves a snapshot of committed state ahead of the log, which a restart
            // handles, never a log that points at a missing snapshot.
            let result = off_task(|| -> Result<M, String> {
                let reader =
                    raft_snapshot::SnapshotReader::open(&file.path).map_err(|e| e.to_string())?;
                raft_snapshot::restore_state_machine(reader, &mut sm).map_err(|e| e.to_string())?;
                if sm.applied_index() != meta.index {
                    return Err(format!(
                        "snapshot state is at index {}, its message says {}",
                        sm.applied_index(),
                        meta.index
                    ));
                }
                Ok(sm)
            });
            if result.is_err() {
                let _ = std::fs::remove_file(&file.path);
            }
            let _ = bg.send(SnapshotEvent::Prepared {
                meta,
                result: result.map(Box::new),
            });
        });
    }

    /// Steps an `InstallSnapshot` once its snapshot is prepared; holds it while it is
    /// being prepared; drops it when no file came (the leader sends both again).
    pub(super) fn on_install_message(&mut self, msg: Message) {
        let MessageBody::InstallSnapshot { meta } = &msg.body else {
            return;
        };
        let key = (meta.index, meta.term);
        if self
            .install
            .prepared
            .as_ref()
            .is_some_and(|(m, _)| (m.index, m.term) == key)
        {
            self.step(msg);
        } else if self.install.preparing == Some(key) {
            self.install.held = Some(msg);
        } else {
            tracing::debug!(
                index = meta.index,
                "InstallSnapshot without its snapshot file; ignored"
            );
        }
    }

    pub(super) fn on_background(&mut self, bg: SnapshotEvent<M>) {
        match bg {
            SnapshotEvent::Prepared { meta, result } => {
                self.install.preparing = None;
                let held = self.install.held.take();
                match result {
                    Ok(sm) => {
                        self.install.prepared = Some((meta, sm));
                        if let Some(msg) = held {
                            self.on_install_message(msg);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(index = meta.index, error = %e, "a snapshot from the leader was refused");
                    }
                }
            }
            SnapshotEvent::Written { meta, result } => match result {
                Ok(()) => {
                    Metrics::add(&self.metrics.snapshots_taken, 1);
                    // Before the log is compacted past the previous one: from now on a
                    // leader sends this one.
                    if let Err(e) = self.raw.on_snapshot_built(meta.clone()) {
                        tracing::warn!(index = meta.index, error = %e, "snapshot not offered to followers");
                    }
                    self.snapshot_index_latest = self.snapshot_index_latest.max(meta.index);
                    let through = self
                        .trigger
                        .on_snapshot_done(meta.index, self.raw.first_index());
                    let compacted = through.and_then(|through| self.compact_log_through(through));
                    if self.failed {
                        return;
                    }
                    tracing::info!(
                        index = meta.index,
                        term = meta.term,
                        log_compacted_through = ?compacted,
                        "snapshot taken"
                    );
                }
                Err(e) => {
                    tracing::warn!(index = meta.index, error = %e, "snapshot failed");
                    self.trigger.on_snapshot_failed(meta.index);
                }
            },
            SnapshotEvent::Queued { to } => {
                self.snapshots_sending.remove(&to);
            }
            SnapshotEvent::Digested { index, digest } => {
                self.digest_in_flight = false;
                let digest = match digest {
                    Ok(digest) => digest,
                    Err(e) => {
                        tracing::error!(index, error = %e, "taking a state digest failed");
                        return;
                    }
                };
                Metrics::add(&self.metrics.digests_taken, 1);
                if self.digests.len() >= DIGESTS_KEPT_MAX {
                    self.digests.pop_front();
                }
                self.digests.push_back((index, digest));
                tracing::debug!(index, %digest, "state digest");
            }
            SnapshotEvent::SendFailed { to, why } => {
                self.snapshots_sending.remove(&to);
                tracing::warn!(to, %why, "sending a snapshot failed");
                self.raw.report_snapshot_failure(to);
            }
        }
    }

    /// Drops the log's prefix through `through` (the snapshot's index less the trailing
    /// margin). The log records the entry there as its compaction point, with the
    /// configuration in force at it (the core's `snapshot_meta_at`); that point need not be
    /// a snapshot file, because the core sends a follower behind it the newest snapshot
    /// reported to it (`on_snapshot_built`, called before this).
    fn compact_log_through(&mut self, through: Index) -> Option<Index> {
        if through <= self.raw.storage().snapshot_meta().index {
            return None;
        }
        let meta = self.raw.snapshot_meta_at(through)?;
        let blocked_from = std::time::Instant::now();
        let compacted = self.raw.storage_mut().compact_to(meta);
        self.metrics
            .storage_compact_block
            .observe_since(blocked_from);
        if let Err(e) = compacted {
            tracing::error!(error = %e, "log compaction failed; stopping the node");
            self.failed = true;
            return None;
        }
        Some(through)
    }

    /// Streams the snapshot file an `InstallSnapshot` message names (the core chose it, see
    /// `on_snapshot_built`) beside the message, off the task. The file's own metadata must be
    /// the message's: a file that says otherwise, or none at that index and term, fails the
    /// send, and the core probes the follower again.
    pub(super) fn send_snapshot(&mut self, msg: Message) {
        let MessageBody::InstallSnapshot { meta } = &msg.body else {
            return;
        };
        if !self.snapshots_sending.insert(msg.to) {
            return;
        }
        let (store, transport, bg) = (
            self.snapshots.clone(),
            self.transport.clone(),
            self.bg_tx.clone(),
        );
        let (meta, to) = (meta.clone(), msg.to);
        let (index, term) = (meta.index, meta.term);
        Metrics::add(&self.metrics.snapshots_sent, 1);
        tokio::task::spawn_blocking(move || {
            let result = off_task(|| -> Result<(), String> {
                let file = store
                    .list()
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .find(|f| f.index == index && f.term == term)
                    .ok_or_else(|| format!("no snapshot file at index {index} (term {term})"))?;
                // Streamed from the file by the transport: never read whole into memory.
                let chunks =
                    raft_snapshot::SnapshotChunks::open(&file, 0, 0).map_err(|e| e.to_string())?;
                if chunks.header().meta != meta {
                    return Err(format!(
                        "the snapshot file at index {index} records {:?}, the core sends {meta:?}",
                        chunks.header().meta
                    ));
                }
                transport.send_snapshot(msg, chunks)
            });
            let _ = bg.send(match result {
                Ok(()) => SnapshotEvent::Queued { to },
                Err(why) => SnapshotEvent::SendFailed { to, why },
            });
        });
    }

    /// Replaces the state machine and the log with the leader's snapshot, prepared (its file
    /// received by the transport, restored) off the task by `prepare_snapshot` before the
    /// core saw the message. What is left here is the log's switch to the snapshot: one state write and
    /// sync, and the removal of the old segments.
    pub(super) fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), String> {
        let sm = match self.install.prepared.take() {
            Some((m, sm)) if m.index == meta.index && m.term == meta.term => *sm,
            _ => return Err("the snapshot was not prepared before the core took it".into()),
        };
        let blocked_from = std::time::Instant::now();
        let installed = self.raw.storage_mut().install_snapshot_meta(meta.clone());
        self.metrics
            .storage_compact_block
            .observe_since(blocked_from);
        installed.map_err(|e| e.to_string())?;
        self.sm = sm;
        self.trigger.on_snapshot_installed(meta.index);
        self.snapshot_index_latest = meta.index;
        Metrics::add(&self.metrics.snapshots_installed, 1);
        // Writes waiting at covered indexes can no longer be told apart from others'.
        let covered: Vec<Index> = self
            .pending_writes
            .range(..=meta.index)
            .map(|(&i, _)| i)
            .collect();
        for i in covered {
            if let Some(p) = self.pending_writes.remove(&i) {
                let _ = p.reply.send(Err(self.unavailable("write")));
            }
        }
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    /// Freezes the state machine now and writes the snapshot off the task.
    pub(super) fn take_snapshot(&mut self, index: Index) {
        // The core's record of the entry's term and the configuration in force there.
        let Some(meta) = self.raw.snapshot_meta_at(index) else {
            self.trigger.on_snapshot_failed(index);
            return;
        };
        let frozen = self.sm.freeze();
        let (store, bg) = (self.snapshots.clone(), self.bg_tx.clone());
        tokio::task::spawn_blocking(move || {
            let result = off_task(|| {
                store
                    .write_snapshot(meta.clone(), &frozen)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
            let _ = bg.send(SnapshotEvent::Written { meta, result });
        });
    }
}
