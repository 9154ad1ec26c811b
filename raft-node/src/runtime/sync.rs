//! Making the log durable: the sync thread (one fdatasync for every write queued) and the
//! policy that lets a lightly loaded follower sync on the runtime task instead.

use std::sync::Arc;

use raft_core::{Index, Message, Role};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::store::{NodeStore, SyncJob};
use crate::transport::PeerTransport;

use super::{HostedMachine, Runtime};

/// Syncs queued for the sync thread; beyond this the runtime waits (disk back-pressure).
pub(super) const SYNC_QUEUE_MAX: usize = 64;

/// `E` is the store's error type (`NodeStore`'s `LogWriter::Error`).
pub(super) struct SyncRequest<E> {
    pub(super) seq: u64,
    pub(super) job: SyncJob<E>,
    pub(super) messages: Vec<Message>,
}

/// One pass of the sync thread: every job it took off the queue at once, made durable by
/// one sync.
pub(super) struct SyncDone<E> {
    /// The highest `seq` of the pass: every Ready up to it is durable.
    seq: u64,
    /// Sync requests the pass covered.
    pub(super) jobs: usize,
    result: Result<(), E>,
    elapsed_us: u64,
}

/// The sync thread: takes every request queued (up to `SYNC_QUEUE_MAX`), runs only the
/// newest job (a job flushes every write issued before it was created, so it covers the
/// older ones: one fdatasync for the lot), sends their `messages_after_persist` itself,
/// in order, the moment they are durable (no hop through the runtime task on the way to the
/// socket), then reports the pass for `on_persisted`. After a failed sync nothing is sent.
pub(super) fn sync_thread<E>(
    requests: std::sync::mpsc::Receiver<SyncRequest<E>>,
    done: mpsc::UnboundedSender<SyncDone<E>>,
    transport: Arc<dyn PeerTransport>,
) {
    let mut batch: Vec<SyncRequest<E>> = Vec::with_capacity(SYNC_QUEUE_MAX);
    while let Ok(first) = requests.recv() {
        batch.push(first);
        while batch.len() < SYNC_QUEUE_MAX {
            match requests.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        let start = std::time::Instant::now();
        let jobs = batch.len();
        let newest = batch.last_mut().expect("one request at least");
        let seq = newest.seq;
        let job = std::mem::replace(&mut newest.job, Box::new(|| Ok(())));
        let result = job();
        let elapsed_us = start.elapsed().as_micros() as u64;
        if result.is_ok() {
            for req in batch.drain(..) {
                for m in req.messages {
                    transport.send(m);
                }
            }
        }
        batch.clear();
        let pass = SyncDone {
            seq,
            jobs,
            result,
            elapsed_us,
        };
        if done.send(pass).is_err() {
            return;
        }
    }
}

impl<S: NodeStore, M: HostedMachine> Runtime<S, M> {
    pub(super) fn on_sync_done(&mut self, done: SyncDone<S::Error>) {
        debug_assert!(done.jobs <= self.syncs_in_flight);
        self.syncs_in_flight = self.syncs_in_flight.saturating_sub(done.jobs);
        if let Err(e) = done.result {
            // The disk may have lost writes the node already counted on: stop, never vote or
            // acknowledge on a log that is not what the protocol believes.
            tracing::error!(error = %e, "log sync failed; stopping the node");
            self.failed = true;
            return;
        }
        Metrics::add(&self.metrics.syncs, 1);
        self.metrics.fsync_latency.observe_us(done.elapsed_us);
        // Its messages_after_persist already left from the sync thread.
        self.raw.on_persisted(done.seq);
    }

    /// Whether the Ready whose first new entry is `first_new` (if any) is synced here on the
    /// task rather than by the sync thread: on a follower (or candidate) that is lightly
    /// loaded, i.e. no sync is in flight, this loop iteration took at most one piece of new
    /// work (an AppendEntries with entries, or a client request), every entry before this
    /// Ready is committed (it is the only replication round under way), and no earlier
    /// inline sync saw new work arrive while it blocked (`sync_inline_backoff`). Handing the
    /// job over costs a wake-up of the sync thread (19-49 us to the fdatasync's start,
    /// traced, 1-client writes) on the path of every write, and the acknowledgement leaves
    /// right after the sync either way. Under load the thread lets the task go on appending
    /// while the disk syncs: an inline sync then serialised the node (64-client writes fell
    /// several-fold in a first version without the back-off).
    ///
    /// A leader always hands its sync over: its own sync runs in parallel with the
    /// followers' (the commit needs any two of three), and blocking its task would hold
    /// back the acknowledgements, the replies and new requests meanwhile; inline on the
    /// leader too measured no better at 1 client (p50 308/275/333 us against 269/277/305 us
    /// followers-only, interleaved runs).
    pub(super) fn sync_inline_now(&self, first_new: Option<Index>) -> bool {
        self.syncs_in_flight == 0
            && self.raw.role() != Role::Leader
            && !self.sync_inline_backoff
            && self.work_inputs_this_iteration <= 1
            && first_new.is_none_or(|i| i <= self.raw.commit_index() + 1)
    }

    /// Makes the writes up to Ready `seq` durable on the task, then sends what waited for
    /// them and reports them persisted, as the sync thread would. After a failed sync nothing
    /// is sent and the core is not called again.
    pub(super) fn sync_inline(&mut self, seq: u64, messages_after_persist: Vec<Message>) {
        debug_assert_eq!(self.syncs_in_flight, 0);
        let start = std::time::Instant::now();
        let job = self.raw.storage_mut().sync_job();
        let result = job();
        let elapsed_us = start.elapsed().as_micros() as u64;
        if result.is_ok() {
            for m in messages_after_persist {
                self.transport.send(m);
            }
        }
        // The same bookkeeping as a pass of the sync thread, minus the hand-offs.
        self.syncs_in_flight += 1;
        self.on_sync_done(SyncDone {
            seq,
            jobs: 1,
            result,
            elapsed_us,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use raft_core::{Entry, HardState, LogStore, LogWriter, MemLog, Membership, StorageError};
    use raft_proto::KvCommand;
    use raft_snapshot::SnapshotStoreConfig;

    use std::collections::HashMap;
    use std::time::Duration;

    use bytes::Bytes;
    use raft_core::{Config, EntryPayload, MessageBody, SnapshotMeta, Term};
    use raft_proto::NodeError;
    use raft_snapshot::{SnapshotPolicy, SnapshotStore};
    use tokio::sync::watch;
    use tokio::time::Instant;

    use super::*;
    use crate::kv::{log_command, KvLimits, KvStateMachine};
    use crate::runtime::{spawn, NodeHandle, RuntimeConfig, RuntimeParts};
    use crate::transport::Inbound;

    /// An in-memory log whose syncs record the thread they ran on and fail on demand.
    struct TestStore {
        log: MemLog,
        dirty: bool,
        sync_threads: Arc<Mutex<Vec<String>>>,
        fail: Arc<AtomicBool>,
    }

    impl LogStore for TestStore {
        fn hard_state(&self) -> HardState {
            self.log.hard_state()
        }
        fn snapshot_meta(&self) -> SnapshotMeta {
            self.log.snapshot_meta()
        }
        fn first_index(&self) -> Index {
            self.log.first_index()
        }
        fn last_index(&self) -> Index {
            self.log.last_index()
        }
        fn term(&self, index: Index) -> Result<Term, StorageError> {
            self.log.term(index)
        }
        fn entries(&self, low: Index, high: Index, max: usize) -> Result<Vec<Entry>, StorageError> {
            self.log.entries(low, high, max)
        }
    }

    /// Its writes cannot fail (they are `MemLog`'s); its syncs fail on demand, with an
    /// `io::Error` as a disk's would.
    impl LogWriter for TestStore {
        type Error = std::io::Error;
        fn append_entries(&mut self, entries: &[Entry]) -> Result<(), Self::Error> {
            self.dirty = true;
            self.log
                .append_entries(entries)
                .map_err(|never| match never {})
        }
        fn write_hard_state(&mut self, hard_state: HardState) -> Result<(), Self::Error> {
            self.dirty = true;
            self.log
                .write_hard_state(hard_state)
                .map_err(|never| match never {})
        }
        fn install_snapshot_meta(&mut self, meta: SnapshotMeta) -> Result<(), Self::Error> {
            self.log
                .install_snapshot_meta(meta)
                .map_err(|never| match never {})
        }
        fn compact_to(&mut self, meta: SnapshotMeta) -> Result<(), Self::Error> {
            self.log.compact_to(meta).map_err(|never| match never {})
        }
    }

    impl NodeStore for TestStore {
        fn sync_job(&mut self) -> SyncJob<Self::Error> {
            self.dirty = false;
            let (threads, fail) = (self.sync_threads.clone(), self.fail.clone());
            Box::new(move || {
                let name = std::thread::current().name().unwrap_or("").to_string();
                threads.lock().unwrap().push(name);
                if fail.load(Ordering::SeqCst) {
                    Err(std::io::Error::other("injected sync failure"))
                } else {
                    Ok(())
                }
            })
        }
        fn sync_needed(&self) -> bool {
            self.dirty
        }
        fn describe(&self) -> String {
            "test".into()
        }
        fn is_durable(&self) -> bool {
            false
        }
    }

    #[derive(Default)]
    struct TestTransport {
        sent: Mutex<Vec<Message>>,
    }

    impl PeerTransport for TestTransport {
        fn send(&self, msg: Message) {
            self.sent.lock().unwrap().push(msg);
        }
        fn send_snapshot(
            &self,
            _msg: Message,
            _chunks: raft_snapshot::SnapshotChunks,
        ) -> Result<(), String> {
            Err("not in this test".into())
        }
    }

    struct Harness {
        handle: NodeHandle,
        task: tokio::task::JoinHandle<()>,
        inbound: mpsc::Sender<Inbound>,
        transport: Arc<TestTransport>,
        sync_threads: Arc<Mutex<Vec<String>>>,
        fail: Arc<AtomicBool>,
        _shutdown: watch::Sender<bool>,
        _dir: tempfile::TempDir,
    }

    const SYNC_THREAD: &str = "raft-sync-1";

    fn start(voters: &[u64]) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (snapshots, _) =
            SnapshotStore::open(dir.path(), SnapshotStoreConfig::default()).unwrap();
        let sync_threads = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(AtomicBool::new(false));
        let store = TestStore {
            log: MemLog::with_snapshot(SnapshotMeta {
                membership: Membership::new_voters(voters.iter().copied()),
                ..Default::default()
            }),
            dirty: false,
            sync_threads: sync_threads.clone(),
            fail: fail.clone(),
        };
        let transport = Arc::new(TestTransport::default());
        let (inbound_tx, inbound) = mpsc::channel(16);
        let (shutdown_tx, shutdown) = watch::channel(false);
        let runtime = RuntimeConfig {
            tick_interval_ms: 5,
            ..RuntimeConfig::default()
        };
        let (handle, task) = spawn(RuntimeParts {
            raft: Config::new(1),
            runtime,
            store,
            transport: transport.clone(),
            inbound,
            state_machine: KvStateMachine::new(KvLimits::default()),
            snapshots,
            snapshot_policy: SnapshotPolicy::default(),
            client_addrs: HashMap::new(),
            known_peers: voters.iter().copied().collect(),
            metrics: Arc::new(Metrics::default()),
            shutdown,
        })
        .unwrap();
        Harness {
            handle,
            task,
            inbound: inbound_tx,
            transport,
            sync_threads,
            fail,
            _shutdown: shutdown_tx,
            _dir: dir,
        }
    }

    /// An AppendEntries from leader 2 in term 1 carrying no-ops `first..=last`.
    fn append(first: Index, last: Index, commit: Index) -> Inbound {
        let prev = first - 1;
        Inbound::Message(Message {
            from: 2,
            to: 1,
            term: 1,
            body: MessageBody::AppendEntries {
                prev_log_index: prev,
                prev_log_term: u64::from(prev > 0),
                entries: (first..=last)
                    .map(|index| Entry {
                        index,
                        term: 1,
                        payload: EntryPayload::Noop,
                    })
                    .collect(),
                leader_commit: commit,
            },
        })
    }

    /// The highest index node 1 acknowledged to the leader so far.
    fn acked(h: &Harness) -> Option<Index> {
        h.transport
            .sent
            .lock()
            .unwrap()
            .iter()
            .filter_map(|m| match m.body {
                MessageBody::AppendEntriesResponse {
                    index,
                    reject: None,
                } => Some(index),
                _ => None,
            })
            .max()
    }

    async fn wait_acked(h: &Harness, index: Index) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while acked(h) < Some(index) {
            assert!(Instant::now() < deadline, "no acknowledgement of {index}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn last_sync_thread(h: &Harness) -> String {
        h.sync_threads.lock().unwrap().last().cloned().unwrap()
    }

    async fn wait_stopped(h: Harness) {
        tokio::time::timeout(Duration::from_secs(5), h.task)
            .await
            .expect("the runtime stops after a failed sync")
            .unwrap();
    }

    /// A lightly loaded follower syncs on its task and acknowledges after the sync; two
    /// AppendEntries taken together go to the sync thread; a failed inline sync sends no
    /// acknowledgement and stops the runtime.
    #[tokio::test]
    async fn follower_syncs_inline_when_idle_and_acknowledges_only_durable_entries() {
        let h = start(&[1, 2, 3]);
        h.inbound.send(append(1, 1, 0)).await.unwrap();
        wait_acked(&h, 1).await;
        assert_ne!(last_sync_thread(&h), SYNC_THREAD, "idle: synced inline");

        // Two rounds queued at once: the node is busy, the sync thread takes the job.
        h.inbound.try_send(append(2, 2, 1)).unwrap();
        h.inbound.try_send(append(3, 3, 1)).unwrap();
        wait_acked(&h, 3).await;
        assert_eq!(last_sync_thread(&h), SYNC_THREAD);

        h.fail.store(true, Ordering::SeqCst);
        h.inbound.send(append(4, 4, 3)).await.unwrap();
        let syncs = h.sync_threads.clone();
        let transport = h.transport.clone();
        wait_stopped(h).await;
        assert_ne!(syncs.lock().unwrap().last().unwrap(), SYNC_THREAD);
        let acks: Vec<Index> = transport
            .sent
            .lock()
            .unwrap()
            .iter()
            .filter_map(|m| match m.body {
                MessageBody::AppendEntriesResponse { index, .. } => Some(index),
                _ => None,
            })
            .collect();
        assert_eq!(
            acks.iter().max(),
            Some(&3),
            "nothing acknowledged after the failed sync: {acks:?}"
        );
    }

    /// The same failure on the sync thread: no acknowledgement, the runtime stops.
    #[tokio::test]
    async fn failed_sync_on_the_sync_thread_acknowledges_nothing() {
        let h = start(&[1, 2, 3]);
        h.inbound.send(append(1, 1, 0)).await.unwrap();
        wait_acked(&h, 1).await;
        h.fail.store(true, Ordering::SeqCst);
        h.inbound.try_send(append(2, 2, 1)).unwrap();
        h.inbound.try_send(append(3, 3, 1)).unwrap();
        let (syncs, transport) = (h.sync_threads.clone(), h.transport.clone());
        wait_stopped(h).await;
        assert_eq!(syncs.lock().unwrap().last().unwrap(), SYNC_THREAD);
        let h_acked = transport
            .sent
            .lock()
            .unwrap()
            .iter()
            .filter(
                |m| matches!(m.body, MessageBody::AppendEntriesResponse { index, .. } if index > 1),
            )
            .count();
        assert_eq!(h_acked, 0);
    }

    /// A leader hands its syncs to the sync thread even when idle, and commits a write only
    /// after it; once a sync fails it answers no more writes with success and its runtime
    /// stops.
    #[tokio::test]
    async fn leader_syncs_on_the_sync_thread_and_stops_after_a_failed_sync() {
        let h = start(&[1]);
        let set = |v: &str| {
            log_command(
                None,
                KvCommand::Set {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::copy_from_slice(v.as_bytes()),
                }
                .encode(),
            )
        };
        // Parked until the election (a few ticks) is won, then committed.
        h.handle.propose(set("1")).await.unwrap();
        assert_eq!(last_sync_thread(&h), SYNC_THREAD);

        h.fail.store(true, Ordering::SeqCst);
        let err = h.handle.propose(set("2")).await.unwrap_err();
        assert!(matches!(err, NodeError::ShuttingDown), "{err:?}");
        wait_stopped(h).await;
    }
}
