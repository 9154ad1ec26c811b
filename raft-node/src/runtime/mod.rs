//! The node runtime: one tokio task owns the [`RawNode`] and the state machine; everything
//! else talks to it through bounded channels.
//!
//! Each loop iteration waits for one input (a tick, peer messages, client commands, a
//! finished sync), drains what else is queued on that channel up to a batch bound, then
//! handles every Ready the node has: `messages` leave at once, writes go to the store on the
//! task, the sync runs on a dedicated thread and comes back as a completion that sends
//! `messages_after_persist` and calls `on_persisted` (so the leader replicates while its own
//! fsync runs; a lightly loaded follower syncs on the task instead, see `sync_inline_now`),
//! committed entries are applied and their clients answered, and confirmed reads are served
//! after the apply.
//!
//! Every client request carries a deadline (`request_timeout_ms`). A write or linearizable
//! read that has not completed by then is answered with `Unavailable`; nothing waits forever,
//! and a read is never answered from a state that was not confirmed by a quorum.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use raft_core::{Config, Index, Message, MessageBody, NodeId as CoreId, RawNode, Role, Term};
use raft_proto::{LeaderChange, NodeError, NodeId};
use raft_snapshot::{SnapshotPolicy, SnapshotStore, SnapshotTrigger, StateDigest};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::read_batch::ReadBatcher;
use crate::store::NodeStore;
use crate::transport::{Inbound, PeerTransport};

mod admin;
mod apply;
mod commit_notices;
mod handle;
mod machine;
mod requests;
mod snapshots;
mod status;
mod sync;

pub use self::handle::{AdminOp, Command, NodeHandle, ReadReply, Reply};
pub use self::machine::{HostedMachine, MachineView, ReadAnswer, ReadView};
use self::requests::{PendingRead, PendingWrite};
use self::snapshots::{off_task, InstallState, SnapshotEvent};
use self::status::PeerTiming;
pub use self::status::LEADER_CHANGES_KEPT_MAX;
use self::sync::{sync_thread, SyncDone, SyncRequest, SYNC_QUEUE_MAX};

/// Inputs taken from one channel before the node's output is handled.
const INPUT_BATCH_MAX: usize = 1024;

/// Readies handled in a row before the loop looks at its inputs again.
const READIES_PER_ITERATION_MAX: usize = 64;

/// Ticks between copies of the transport's counters into the metrics.
const METRICS_REFRESH_TICKS: u64 = 100;

/// Timing and bounds of the runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Length of one raft-core tick.
    pub tick_interval_ms: u64,
    /// Election timeout range, in ticks.
    pub election_timeout_ticks_min: u32,
    /// Exclusive upper bound of the election timeout, in ticks.
    pub election_timeout_ticks_max: u32,
    /// Heartbeat interval, in ticks.
    pub heartbeat_interval_ticks: u32,
    /// A write or linearizable read not done within this answers `Unavailable`.
    pub request_timeout_ms: u64,
    /// Writes appended and not yet applied at most; more are refused with `Busy`.
    pub proposals_in_flight_max: usize,
    /// Linearizable reads waiting at most; more are refused with `Busy`.
    pub reads_in_flight_max: usize,
    /// Requests parked while no leader is known, at most.
    pub requests_waiting_max: usize,
    /// Digest the state at every log index that is a multiple of this (0: never), for
    /// anti-entropy. Must be the same on every node so that digests compare.
    pub digest_interval_entries: u64,
    /// FAULT INJECTION, for tests only: corrupt this replica's state right after applying
    /// the first command at or after this index, so that anti-entropy has something to
    /// find. `None` (the default) in every real deployment.
    pub debug_corrupt_apply_at: Option<Index>,
    /// This node's HTTP address, shown in its status so that pages can link to it.
    pub http_addr: Option<String>,
}

impl Default for RuntimeConfig {
    /// 10 ms ticks, elections after 200-400 ms of silence, heartbeats every 30 ms, 5 s
    /// request timeout, 8192 writes and 8192 reads in flight.
    fn default() -> Self {
        RuntimeConfig {
            tick_interval_ms: 10,
            election_timeout_ticks_min: 20,
            election_timeout_ticks_max: 40,
            heartbeat_interval_ticks: 3,
            request_timeout_ms: 5_000,
            proposals_in_flight_max: 8192,
            reads_in_flight_max: 8192,
            requests_waiting_max: 8192,
            digest_interval_entries: 100_000,
            debug_corrupt_apply_at: None,
            http_addr: None,
        }
    }
}

/// Everything the runtime needs to start.
pub struct RuntimeParts<S: NodeStore, M: HostedMachine> {
    /// The raft-core settings (ID, seed, tick counts).
    pub raft: Config,
    /// The runtime's own settings.
    pub runtime: RuntimeConfig,
    /// The log.
    pub store: S,
    /// The outbound side of the transport.
    pub transport: Arc<dyn PeerTransport>,
    /// Inbound peer messages.
    pub inbound: mpsc::Receiver<Inbound>,
    /// The state machine, restored from the newest snapshot if there is one.
    pub state_machine: M,
    /// Where snapshots are written and read.
    pub snapshots: SnapshotStore,
    /// When to take them.
    pub snapshot_policy: SnapshotPolicy,
    /// Client address of each node, for redirects.
    pub client_addrs: HashMap<NodeId, String>,
    /// Nodes with a known peer address (this one included): only these can be added.
    pub known_peers: BTreeSet<NodeId>,
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
    /// Turns true to stop.
    pub shutdown: watch::Receiver<bool>,
}

/// Client commands queued for the runtime at most.
pub const COMMAND_QUEUE_MAX: usize = 16_384;

/// Starts the runtime task. Returns the handle and the task, which ends after shutdown once
/// in-flight syncs are done.
pub fn spawn<S: NodeStore, M: HostedMachine>(
    parts: RuntimeParts<S, M>,
) -> Result<(NodeHandle, tokio::task::JoinHandle<()>), raft_core::Error> {
    let id = parts.raft.id;
    let mut raw = RawNode::new(parts.raft, parts.store)?;
    snapshots::report_held_snapshots(&mut raw, &parts.snapshots);
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE_MAX);
    let (sync_tx, sync_rx) = std::sync::mpsc::sync_channel::<SyncRequest<S::Error>>(SYNC_QUEUE_MAX);
    // At most SYNC_QUEUE_MAX + 1 completions exist at once, so this channel is bounded by
    // construction.
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let sync_transport = parts.transport.clone();
    std::thread::Builder::new()
        .name(format!("raft-sync-{id}"))
        .spawn(move || sync_thread(sync_rx, done_tx, sync_transport))
        .expect("spawn sync thread");
    let (bg_tx, bg_rx) = mpsc::unbounded_channel();
    let snapshot_index = parts.state_machine.applied_index();
    let leader_seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let no_quorum = Arc::new(std::sync::Mutex::new(None));
    let handle = NodeHandle {
        tx,
        metrics: parts.metrics.clone(),
        id,
        leader: leader_seen.clone(),
        no_quorum: no_quorum.clone(),
    };
    let runtime = Runtime {
        raw,
        sm: parts.state_machine,
        snapshots: parts.snapshots,
        trigger: SnapshotTrigger::new(parts.snapshot_policy, snapshot_index).staggered(id),
        install: InstallState::default(),
        snapshots_sending: std::collections::HashSet::new(),
        bg_tx,
        config: parts.runtime,
        transport: parts.transport,
        client_addrs: parts.client_addrs,
        peer_heard_tick: parts
            .known_peers
            .iter()
            .filter(|&&p| p != id)
            .map(|&p| (p, None))
            .collect(),
        known_peers: parts.known_peers,
        metrics: parts.metrics,
        sync_tx: Some(sync_tx),
        syncs_in_flight: 0,
        work_inputs_this_iteration: 0,
        commit_notices: Vec::new(),
        sync_inline_backoff: false,
        pending_writes: BTreeMap::new(),
        write_deadlines: VecDeque::new(),
        pending_reads: HashMap::new(),
        read_deadlines: VecDeque::new(),
        next_read_ctx: 1,
        read_batch: ReadBatcher::default(),
        waiting: VecDeque::new(),
        last_role: Role::Follower,
        leader_seen,
        no_quorum,
        no_quorum_set: false,
        leader_lost_tick: Some(0),
        leader_before_loss: None,
        ticks: 0,
        failed: false,
        digests: VecDeque::new(),
        digest_in_flight: false,
        corrupted: false,
        housekeeping_in_flight: None,
        snapshot_index_latest: snapshot_index,
        peer_timing: HashMap::new(),
        leader_changes: VecDeque::new(),
        last_leader: None,
    };
    let task = tokio::spawn(runtime.run(rx, parts.inbound, done_rx, bg_rx, parts.shutdown));
    Ok((handle, task))
}

struct Runtime<S: NodeStore, M: HostedMachine> {
    raw: RawNode<S>,
    sm: M,
    snapshots: SnapshotStore,
    trigger: SnapshotTrigger,
    /// A leader's snapshot on its way in (see `prepare_snapshot`).
    install: InstallState<M>,
    /// Followers a snapshot is being loaded or sent to (one at a time each).
    snapshots_sending: std::collections::HashSet<CoreId>,
    /// Completions of snapshot work; at most one write and one send per peer are in flight,
    /// so this channel is bounded by construction.
    bg_tx: mpsc::UnboundedSender<SnapshotEvent<M>>,
    config: RuntimeConfig,
    transport: Arc<dyn PeerTransport>,
    client_addrs: HashMap<NodeId, String>,
    /// Nodes with a known peer address (this one included).
    known_peers: BTreeSet<NodeId>,
    /// The tick at which each known peer was last heard from (any message): whether a
    /// learner is connected, and which voters are reachable, when a membership change is
    /// asked for. Keys are the known peers only, so it is bounded by the configuration.
    peer_heard_tick: BTreeMap<CoreId, Option<u64>>,
    metrics: Arc<Metrics>,
    sync_tx: Option<std::sync::mpsc::SyncSender<SyncRequest<S::Error>>>,
    syncs_in_flight: usize,
    /// Client requests, and AppendEntries carrying entries, taken in this loop iteration:
    /// more than one means the node is not lightly loaded (see `sync_inline_now`).
    work_inputs_this_iteration: usize,
    /// New work arrived while the task was blocked in a sync of its own: syncs go to the sync
    /// thread until the node is idle again (everything it holds committed, no sync out).
    sync_inline_backoff: bool,
    /// A Ready's messages held back until the client replies of its loop iteration are
    /// written (`hold_commit_notices`): empty AppendEntries that only tell followers the new
    /// commit index. At most one Ready's worth (one per peer): any later send flushes them.
    commit_notices: Vec<Message>,
    pending_writes: BTreeMap<Index, PendingWrite>,
    /// `(deadline, index, term)` in proposal order; deadlines only grow.
    write_deadlines: VecDeque<(Instant, Index, Term)>,
    /// Linearizable reads admitted and not yet answered, by read ID.
    pending_reads: HashMap<u64, PendingRead>,
    /// `(deadline, read ID)` in request order.
    read_deadlines: VecDeque<(Instant, u64)>,
    /// Read IDs and ReadIndex round ctxs come from this one counter.
    next_read_ctx: u64,
    /// Which reads wait for a ReadIndex round and which one is in flight.
    read_batch: ReadBatcher,
    /// Requests parked while no leader is known (an election is under way).
    waiting: VecDeque<(Instant, Command)>,
    last_role: Role,
    /// The leader as `NodeHandle::leader` reports it.
    leader_seen: Arc<std::sync::atomic::AtomicU64>,
    /// `NodeHandle::no_quorum`, and whether it holds a situation now.
    no_quorum: Arc<std::sync::Mutex<Option<String>>>,
    no_quorum_set: bool,
    /// The tick since which no leader is known (`Some(0)` at start), `None` while one is.
    leader_lost_tick: Option<u64>,
    /// The leader lost at `leader_lost_tick` (none at start): finding one after a loss is
    /// logged at WARN, as the loss is.
    leader_before_loss: Option<NodeId>,
    ticks: u64,
    /// A store write failed: the node stops taking part rather than diverge from its disk.
    failed: bool,
    /// The latest state digests, oldest first, at most `DIGESTS_KEPT_MAX`.
    digests: VecDeque<(Index, StateDigest)>,
    /// A digest is being computed off the task (never two at once).
    digest_in_flight: bool,
    /// The fault-injection hook has fired (it fires once).
    corrupted: bool,
    /// `(index, term)` of the machine's last housekeeping proposal: the next waits until it
    /// is applied (or its term is over), so there is at most one in flight.
    housekeeping_in_flight: Option<(Index, Term)>,
    /// The index of the newest snapshot this node wrote or installed.
    snapshot_index_latest: Index,
    /// When each peer was last heard from, and heartbeat round trips (the status view's
    /// last contact and RTT). Keyed by senders of messages that passed the transport's
    /// cluster check, so bounded by the cluster's size.
    peer_timing: HashMap<CoreId, PeerTiming>,
    /// The latest leaders seen, oldest first, at most [`LEADER_CHANGES_KEPT_MAX`].
    leader_changes: VecDeque<LeaderChange>,
    /// The leader as of the last `observe`.
    last_leader: Option<NodeId>,
}

impl<S: NodeStore, M: HostedMachine> Runtime<S, M> {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut inbound: mpsc::Receiver<Inbound>,
        mut sync_done: mpsc::UnboundedReceiver<SyncDone<S::Error>>,
        mut background: mpsc::UnboundedReceiver<SnapshotEvent<M>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let period = Duration::from_millis(self.config.tick_interval_ms.max(1));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Once a write, sync or snapshot install has failed, the core is ahead of what the
        // disk holds: it must not be called again (not even ticked), or it would act on (and
        // assert about) a log the disk does not have. Every step below checks `failed`.
        while !self.failed {
            // Wait for any input, then take what else is queued on every channel (bounded),
            // so that peers, clients and disk completions are all served each iteration and
            // their work lands in one Ready.
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(done) = sync_done.recv() => self.on_sync_done(done),
                Some(bg) = background.recv() => self.on_background(bg),
                _ = ticker.tick() => self.on_tick(),
                Some(msg) = inbound.recv() => self.on_inbound(msg),
                Some(cmd) = commands.recv() => self.on_command(cmd),
            }
            for _ in 0..INPUT_BATCH_MAX {
                match sync_done.try_recv() {
                    Ok(done) if !self.failed => self.on_sync_done(done),
                    _ => break,
                }
            }
            for _ in 0..INPUT_BATCH_MAX {
                match inbound.try_recv() {
                    Ok(msg) if !self.failed => self.on_inbound(msg),
                    _ => break,
                }
            }
            for _ in 0..INPUT_BATCH_MAX {
                match commands.try_recv() {
                    Ok(cmd) if !self.failed => self.on_command(cmd),
                    _ => break,
                }
            }
            if self.failed {
                break;
            }
            self.handle_readies(&commands, &inbound);
            self.work_inputs_this_iteration = 0;
            if !self.commit_notices.is_empty() {
                // The client connections run now and write the replies this iteration
                // produced; the followers' commit notices go out after them. When the
                // replies already brought new requests, those go first: their
                // AppendEntries carry the commit index and stand in for the notices; any
                // not superseded leave with the next Ready (at the latest the leader's next
                // heartbeat), so a notice is delayed by one heartbeat at most, never lost.
                tokio::task::yield_now().await;
                if commands.is_empty() {
                    self.send_commit_notices();
                }
            }
        }
        // Let in-flight syncs finish so that what was acknowledged to peers is on disk.
        self.sync_tx = None;
        while self.syncs_in_flight > 0 {
            match tokio::time::timeout(Duration::from_secs(5), sync_done.recv()).await {
                Ok(Some(done)) => {
                    self.syncs_in_flight = self.syncs_in_flight.saturating_sub(done.jobs)
                }
                _ => break,
            }
        }
        self.fail_everything(NodeError::ShuttingDown);
        tracing::info!(id = self.raw.id(), "node runtime stopped");
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Snapshot { meta, file } => self.prepare_snapshot(meta, file),
            Inbound::Messages(msgs) => {
                for msg in msgs {
                    self.on_inbound(Inbound::Message(msg));
                }
            }
            Inbound::Message(msg) => {
                if let Some(heard) = self.peer_heard_tick.get_mut(&msg.from) {
                    *heard = Some(self.ticks);
                    self.peer_timing
                        .entry(msg.from)
                        .or_default()
                        .on_receive(&msg.body, Instant::now());
                }
                if matches!(&msg.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty())
                {
                    self.work_inputs_this_iteration += 1;
                }
                if matches!(msg.body, MessageBody::InstallSnapshot { .. }) {
                    self.on_install_message(msg);
                    return;
                }
                self.step(msg);
            }
        }
    }

    fn step(&mut self, msg: Message) {
        if let Err(e) = self.raw.step(msg) {
            tracing::error!(error = %e, "stepping a message failed");
        }
    }

    fn on_tick(&mut self) {
        self.raw.tick();
        self.ticks += 1;
        if self.ticks % METRICS_REFRESH_TICKS == 0 {
            self.transport.refresh_metrics(&self.metrics);
        }
        let now = Instant::now();
        while let Some(&(deadline, index, term)) = self.write_deadlines.front() {
            if deadline > now {
                break;
            }
            self.write_deadlines.pop_front();
            if self
                .pending_writes
                .get(&index)
                .is_some_and(|p| p.term == term)
            {
                let p = self.pending_writes.remove(&index).expect("checked");
                Metrics::add(&self.metrics.proposals_failed, 1);
                let _ = p.reply.send(Err(self.unavailable("write")));
            }
        }
        let mut reads_expired = false;
        while let Some(&(deadline, id)) = self.read_deadlines.front() {
            if deadline > now {
                break;
            }
            self.read_deadlines.pop_front();
            if let Some(p) = self.pending_reads.remove(&id) {
                reads_expired = true;
                let _ = p.reply.send(Err(self.unavailable("read")));
            }
        }
        if reads_expired {
            let pending = &self.pending_reads;
            self.read_batch.retain(|id| pending.contains_key(&id));
        }
        // The core answers every round (confirmed, leadership lost, or a forwarded read timed
        // out after two election timeouts); this only guards against one it never answers,
        // so that the reads behind it are not held until their deadline.
        let round_ticks_max = 4 * u64::from(self.config.election_timeout_ticks_max.max(1));
        if self
            .read_batch
            .abandon_if_started_before(self.ticks.saturating_sub(round_ticks_max))
        {
            tracing::debug!("a ReadIndex round got no outcome; its reads go to the next one");
        }
        self.propose_housekeeping();
        // Retry parked requests: a leader may be known now. Each is retried at most once
        // per tick; a request that fails again is parked again until its deadline.
        let parked = std::mem::take(&mut self.waiting);
        for (deadline, cmd) in parked {
            if deadline <= now {
                self.fail_command(cmd, self.unavailable("request"));
            } else {
                self.dispatch(cmd, deadline);
            }
        }
    }

    fn handle_readies(
        &mut self,
        commands: &mpsc::Receiver<Command>,
        inbound: &mpsc::Receiver<Inbound>,
    ) {
        for _ in 0..READIES_PER_ITERATION_MAX {
            // Before each Ready: a round that just finished lets the reads queued behind it
            // start the next one, whose heartbeats then leave in this Ready.
            self.start_read_round();
            if self.failed || !self.raw.has_ready() {
                break;
            }
            if self.handle_ready() && (!commands.is_empty() || !inbound.is_empty()) {
                // Work came in while the task was blocked in its sync: the node is busier
                // than one round at a time.
                self.sync_inline_backoff = true;
            }
        }
        if self.syncs_in_flight == 0 && self.raw.commit_index() == self.raw.last_index() {
            self.sync_inline_backoff = false;
        }
        self.observe();
    }

    /// Handles one Ready; `true` when it synced on the task (`sync_inline`).
    fn handle_ready(&mut self) -> bool {
        let mut ready = self.raw.ready();
        self.send_commit_notices_before(&ready.messages);
        if let Some(meta) = &ready.snapshot {
            if let Err(e) = self.install_snapshot(meta) {
                tracing::error!(index = meta.index, error = %e, "installing a snapshot failed; stopping the node");
                self.failed = true;
                return false;
            }
        } else if self
            .install
            .prepared
            .as_ref()
            .is_some_and(|(m, _)| m.index <= self.raw.commit_index())
        {
            // The core did without it (it already held the snapshot's last entry): free the
            // copy. Its file is a snapshot of committed state, kept like any other.
            self.install.prepared = None;
        }
        // `messages` depend on nothing written (host contract): they leave before the write,
        // so followers start on the entries one pwrite earlier.
        if self.hold_commit_notices(&ready) {
            self.commit_notices = std::mem::take(&mut ready.messages);
        }
        let mut now = None;
        for m in std::mem::take(&mut ready.messages) {
            if let MessageBody::Heartbeat { read_seq, .. } = m.body {
                if self.peer_heard_tick.contains_key(&m.to) {
                    let now = *now.get_or_insert_with(Instant::now);
                    self.peer_timing
                        .entry(m.to)
                        .or_default()
                        .on_send(read_seq, now);
                }
            }
            if matches!(m.body, MessageBody::InstallSnapshot { .. }) {
                self.send_snapshot(m);
            } else {
                self.transport.send(m);
            }
        }
        let blocked_from = std::time::Instant::now();
        let store = self.raw.storage_mut();
        let mut write = || -> Result<(), S::Error> {
            if !ready.entries.is_empty() {
                store.append_entries(&ready.entries)?;
            }
            if let Some(hs) = ready.hard_state {
                store.write_hard_state(hs)?;
            }
            Ok(())
        };
        let written = write();
        self.metrics.storage_write_block.observe_since(blocked_from);
        if let Err(e) = written {
            tracing::error!(error = %e, "log write failed; stopping the node");
            self.failed = true;
            return false;
        }
        let mut inline = false;
        if ready.seq > 0 && self.syncs_in_flight == 0 && !self.raw.storage().sync_needed() {
            // Nothing to flush (e.g. only the commit index moved, which need not be durable)
            // and no earlier sync pending, whose writes `on_persisted(seq)` would vouch for
            // too: complete it here rather than with a round trip through the sync thread.
            for m in ready.messages_after_persist {
                self.transport.send(m);
            }
            self.raw.on_persisted(ready.seq);
        } else if ready.seq > 0 && self.sync_inline_now(ready.entries.first().map(|e| e.index)) {
            self.sync_inline(ready.seq, ready.messages_after_persist);
            if self.failed {
                return false;
            }
            inline = true;
        } else if ready.seq > 0 {
            let job = self.raw.storage_mut().sync_job();
            let req = SyncRequest {
                seq: ready.seq,
                job,
                messages: ready.messages_after_persist,
            };
            let sent = self.sync_tx.as_ref().map(|tx| tx.send(req));
            if !matches!(sent, Some(Ok(()))) {
                self.failed = true;
                return false;
            }
            self.syncs_in_flight += 1;
        }
        self.apply(ready.committed_entries);
        for rs in ready.read_states {
            let Some(ids) = self.read_batch.finish(rs.ctx) else {
                continue;
            };
            for id in ids {
                if let Some(p) = self.pending_reads.remove(&id) {
                    self.finish_read(p, rs.result);
                }
            }
        }
        inline
    }

    fn fail_everything(&mut self, err: NodeError) {
        for (_, p) in std::mem::take(&mut self.pending_writes) {
            let _ = p.reply.send(Err(err.clone()));
        }
        for (_, p) in std::mem::take(&mut self.pending_reads) {
            let _ = p.reply.send(Err(err.clone()));
        }
        self.read_batch.clear();
        for (_, cmd) in std::mem::take(&mut self.waiting) {
            self.fail_command(cmd, err.clone());
        }
    }
}
