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

use bytes::Bytes;
use raft_client::wire::{
    LeaderChange, LoadCounters, MemberAddr, NodeError, NodeId, NodeStatus, PeerInfo,
};
use raft_core::{
    ChangeError, ConfChange, Config, EntryPayload, Index, Message, MessageBody, NodeId as CoreId,
    ProposeError, RawNode, ReadError, Role, SnapshotMeta, Term, TransferError,
};
use raft_snapshot::{
    SnapshotPolicy, SnapshotSource, SnapshotStore, SnapshotTrigger, StateDigest, StateMachine,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::anti_entropy::{digest_infos, DIGESTS_KEPT_MAX};
use crate::membership_check::{self, LeaderView};
use crate::metrics::Metrics;
use crate::read_batch::ReadBatcher;
use crate::store::{NodeStore, SyncJob};
use crate::transport::{Inbound, PeerTransport, SNAPSHOT_BYTES_MAX};

/// Inputs taken from one channel before the node's output is handled.
const INPUT_BATCH_MAX: usize = 1024;
/// Readies handled in a row before the loop looks at its inputs again.
const READIES_PER_ITERATION_MAX: usize = 64;
/// Syncs queued for the sync thread; beyond this the runtime waits (disk back-pressure).
const SYNC_QUEUE_MAX: usize = 64;

/// Ticks between copies of the transport's counters into the metrics.
const METRICS_REFRESH_TICKS: u64 = 100;

/// A state machine the node can host: raft-snapshot's [`StateMachine`] plus what the
/// node's client paths need. The built-in [`crate::kv::KvStateMachine`] is one; a library
/// user embeds the node (log, transport, snapshots, servers) with their own through
/// [`crate::node::RunningNode::start_with`].
///
/// Each command `apply` receives is the bytes the client proposed as they are stored in the
/// log: a postcard [`raft_client::wire::LogCommand`], the client's exactly-once session (if
/// any) and its `op`. Honouring the session (answering a duplicate `(client_id, seq)` with
/// the cached response) is the machine's part, as [`crate::kv`] shows; a machine that
/// ignores it applies a retried request again.
pub trait HostedMachine: StateMachine + Send + 'static {
    /// Answers a read-only query (`Request::Read`'s `op`) from the current state.
    fn query(&self, op: &[u8]) -> Bytes;
    /// The bytes a client receives for `response`.
    fn encode_response(response: &Self::Response) -> Bytes;
    /// The entry at `index` carried no command (a leader's no-op, a membership change):
    /// the machine's applied index must still reach it, because a snapshot taken right
    /// after is labelled with it and a restored one is checked against it.
    fn skip_to(&mut self, index: Index);
    /// A fresh, empty machine with the same settings, to restore a snapshot into.
    fn empty_like(&self) -> Self;
    /// The estimated bytes the state holds and the bound on them, for the status view's
    /// memory alarm; `(0, 0)` (the default) when the machine keeps no such account.
    fn memory_bytes(&self) -> (u64, u64) {
        (0, 0)
    }
    /// FAULT INJECTION for tests (`--debug-corrupt-apply-at`): make this replica's state
    /// differ from the others'. The default does nothing.
    fn debug_corrupt(&mut self, _index: Index) {}
    /// A cheap copy of the state that reads can be answered from off the runtime task, or
    /// `None` (the default) to answer them on the task with [`HostedMachine::query`]. Worth
    /// it when a copy costs O(1), as the key-value store's persistent maps do: building a
    /// large reply on the task holds up heartbeats (a 512 MiB MGET cost a leader its term).
    fn view(&self) -> Option<Arc<dyn MachineView>> {
        None
    }
    /// On the leader, once a tick while no earlier one is unapplied: an encoded
    /// `LogCommand` the machine wants proposed for its own upkeep (the key-value store's
    /// sweep of expired keys), or `None` (the default). Nobody waits for its answer.
    fn housekeeping(&self) -> Option<Bytes> {
        None
    }
}

/// The state at one applied index, answering reads off the runtime task
/// (see [`HostedMachine::view`]).
pub trait MachineView: Send + Sync + 'static {
    /// As [`HostedMachine::query`].
    fn query(&self, op: &[u8]) -> Bytes;
    /// For callers that know the concrete machine (RESP and HTTP reach into the key-value
    /// store's values without encoding them).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A shared [`MachineView`].
pub type ReadView = Arc<dyn MachineView>;

/// What a reply channel carries: the state machine's encoded response.
pub type Reply = oneshot::Sender<Result<Bytes, NodeError>>;

/// How a read is answered: the encoded response built on the task, or a view to build it
/// from off the task.
pub enum ReadAnswer {
    /// The machine has no view: its [`HostedMachine::query`] answer.
    Bytes(Bytes),
    /// The state at an applied index at or after the read's index.
    View(ReadView),
}

/// What a read's reply channel carries.
pub type ReadReply = oneshot::Sender<Result<ReadAnswer, NodeError>>;

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

/// A membership or leadership change.
#[derive(Clone, Copy, Debug)]
pub enum AdminOp {
    /// Hand leadership to a voter.
    TransferLeader(NodeId),
    /// Add a learner.
    AddLearner(NodeId),
    /// Make a learner a voter.
    Promote(NodeId),
    /// Remove a member.
    Remove(NodeId),
}

/// A request to the runtime.
pub enum Command {
    /// Append an encoded `LogCommand` and answer with the state machine's response.
    Propose {
        /// The encoded log command.
        data: Bytes,
        /// Where the answer goes.
        reply: Reply,
    },
    /// Answer a read-only query.
    Read {
        /// The encoded read command.
        op: Bytes,
        /// ReadIndex first (`true`) or serve the local replica as is.
        linearizable: bool,
        /// Where the answer goes.
        reply: ReadReply,
    },
    /// The node's status.
    Status(oneshot::Sender<NodeStatus>),
    /// A membership or leadership change.
    Admin(AdminOp, oneshot::Sender<Result<(), NodeError>>),
}

/// The cheap, cloneable way to talk to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Command>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// This node's ID.
    pub id: NodeId,
    /// The leader this node knows of (0: none), kept by the runtime, so that a follower's
    /// router can tell "forward" from "no leader to forward to" without asking the task.
    leader: Arc<std::sync::atomic::AtomicU64>,
    /// Why no leader can be elected, while the runtime fails requests at once for it.
    no_quorum: Arc<std::sync::Mutex<Option<String>>>,
}

impl NodeHandle {
    /// Why no leader can be elected ("no leader: 1 of 3 voters reachable ..."), while the
    /// node fails requests at once for that reason.
    pub fn no_quorum(&self) -> Option<String> {
        self.no_quorum.lock().expect("not poisoned").clone()
    }

    /// The leader this node currently knows of, if any.
    pub fn leader(&self) -> Option<NodeId> {
        match self.leader.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            l => Some(l),
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        // A full queue means the runtime is behind: tell the client instead of queueing more.
        self.tx.try_send(make(tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NodeError::Busy,
            mpsc::error::TrySendError::Closed(_) => NodeError::ShuttingDown,
        })?;
        rx.await.map_err(|_| NodeError::ShuttingDown)
    }

    /// Proposes an encoded `LogCommand`.
    pub async fn propose(&self, data: Bytes) -> Result<Bytes, NodeError> {
        self.ask(|reply| Command::Propose { data, reply }).await?
    }

    /// Runs a read-only query. With a machine that has a view, the answer is built here,
    /// on the caller's task, not on the runtime's.
    pub async fn read(&self, op: Bytes, linearizable: bool) -> Result<Bytes, NodeError> {
        let answer = self
            .ask(|reply| Command::Read {
                op: op.clone(),
                linearizable,
                reply,
            })
            .await??;
        Ok(match answer {
            ReadAnswer::Bytes(b) => b,
            ReadAnswer::View(view) => view.query(&op),
        })
    }

    /// As [`NodeHandle::read`], leaving the answer to the caller: the machine's encoded
    /// response, or a view to build it from when the caller is ready to hold it.
    pub async fn read_answer(
        &self,
        op: Bytes,
        linearizable: bool,
    ) -> Result<ReadAnswer, NodeError> {
        self.ask(|reply| Command::Read {
            op,
            linearizable,
            reply,
        })
        .await?
    }

    /// The state at an applied index at or after this call's read index (linearizable) or
    /// as this replica has it, for several reads at once; `None` if the machine has no view.
    pub async fn read_view(&self, linearizable: bool) -> Result<Option<ReadView>, NodeError> {
        let answer = self
            .ask(|reply| Command::Read {
                op: Bytes::new(),
                linearizable,
                reply,
            })
            .await??;
        Ok(match answer {
            ReadAnswer::Bytes(_) => None,
            ReadAnswer::View(view) => Some(view),
        })
    }

    /// The node's status.
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        self.ask(Command::Status).await
    }

    /// A membership or leadership change.
    pub async fn admin(&self, op: AdminOp) -> Result<(), NodeError> {
        self.ask(|reply| Command::Admin(op, reply)).await?
    }
}

struct PendingWrite {
    term: Term,
    reply: Reply,
    started: Instant,
}

struct PendingRead {
    op: Bytes,
    reply: ReadReply,
    deadline: Instant,
}

struct SyncRequest {
    seq: u64,
    job: SyncJob,
    messages: Vec<Message>,
}

/// Work finished off the runtime task.
enum SnapshotEvent<M> {
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
    /// A leader's snapshot restored and written to its file, ready to install.
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

/// A leader's snapshot on its way in: its body restored and written off the task, then its
/// `InstallSnapshot` message stepped into the core.
struct InstallState<M> {
    /// `(index, term)` of the body being prepared.
    preparing: Option<(Index, Term)>,
    /// The `InstallSnapshot` that arrived while its body was being prepared.
    held: Option<Message>,
    /// A prepared snapshot, kept until the core hands it back in a Ready.
    prepared: Option<(SnapshotMeta, Box<M>)>,
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

/// Runs work that a blocking thread does for the runtime, turning a panic into an error, so
/// that the completion the runtime waits for is always sent.
fn off_task<T>(work: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
        .unwrap_or_else(|_| Err("the work panicked".to_string()))
}

/// One pass of the sync thread: every job it took off the queue at once, made durable by
/// one sync.
struct SyncDone {
    /// The highest `seq` of the pass: every Ready up to it is durable.
    seq: u64,
    /// Sync requests the pass covered.
    jobs: usize,
    result: std::io::Result<()>,
    elapsed_us: u64,
}

/// The sync thread: takes every request queued (up to `SYNC_QUEUE_MAX`), runs only the
/// newest job (a job flushes every write issued before it was created, so it covers the
/// older ones: one fdatasync for the lot), sends their `messages_after_persist` itself,
/// in order, the moment they are durable (no hop through the runtime task on the way to the
/// socket), then reports the pass for `on_persisted`. After a failed sync nothing is sent.
fn sync_thread(
    requests: std::sync::mpsc::Receiver<SyncRequest>,
    done: mpsc::UnboundedSender<SyncDone>,
    transport: Arc<dyn PeerTransport>,
) {
    let mut batch: Vec<SyncRequest> = Vec::with_capacity(SYNC_QUEUE_MAX);
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
    let log_snapshot = parts.store.snapshot_meta();
    let raw = RawNode::new(parts.raft, parts.store)?;
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE_MAX);
    let (sync_tx, sync_rx) = std::sync::mpsc::sync_channel::<SyncRequest>(SYNC_QUEUE_MAX);
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
        memberships: VecDeque::from([(log_snapshot.index, log_snapshot.membership)]),
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
    sync_tx: Option<std::sync::mpsc::SyncSender<SyncRequest>>,
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
    /// `(index, configuration)` from the log's compaction point on, ascending: what a
    /// compaction below the newest snapshot must record (the core forgets configurations
    /// once they are applied). Bounded: trimmed at each compaction, and at most one
    /// change is in flight per committed entry between snapshots.
    memberships: VecDeque<(Index, raft_core::Membership)>,
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

/// Leader changes a node keeps (and reports in its status) at most.
pub const LEADER_CHANGES_KEPT_MAX: usize = 32;

/// One peer's contact times, as the status view shows them.
#[derive(Default)]
struct PeerTiming {
    heard_at: Option<Instant>,
    /// The heartbeat being timed: its `read_seq` and when it left. One at a time per peer;
    /// a heartbeat whose answer is lost is replaced after [`RTT_PROBE_STALE_MS`].
    probe: Option<(u64, Instant)>,
    rtt_us: Option<u64>,
}

/// A timed heartbeat unanswered this long is given up, so that a lost answer does not
/// stop round-trip measurement.
const RTT_PROBE_STALE_MS: u64 = 5_000;

impl PeerTiming {
    fn on_send(&mut self, read_seq: u64, now: Instant) {
        let stale = self.probe.is_some_and(|(_, at)| {
            now.duration_since(at) > Duration::from_millis(RTT_PROBE_STALE_MS)
        });
        if self.probe.is_none() || stale {
            self.probe = Some((read_seq, now));
        }
    }

    fn on_receive(&mut self, body: &MessageBody, now: Instant) {
        self.heard_at = Some(now);
        if let MessageBody::HeartbeatResponse { read_seq } = body {
            if let Some((seq, at)) = self.probe {
                if seq == *read_seq {
                    self.rtt_us =
                        Some(u64::try_from(now.duration_since(at).as_micros()).unwrap_or(u64::MAX));
                    self.probe = None;
                }
            }
        }
    }
}

impl<S: NodeStore, M: HostedMachine> Runtime<S, M> {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut inbound: mpsc::Receiver<Inbound>,
        mut sync_done: mpsc::UnboundedReceiver<SyncDone>,
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

    fn leader_error(&self, leader: Option<NodeId>) -> NodeError {
        NodeError::NotLeader {
            leader,
            leader_addr: leader.and_then(|l| self.client_addrs.get(&l).cloned()),
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.config.request_timeout_ms)
    }

    fn unavailable(&self, what: &str) -> NodeError {
        NodeError::Unavailable(format!(
            "{what} not confirmed by a majority within {} ms: {}",
            self.config.request_timeout_ms,
            self.quorum_situation()
        ))
    }

    /// Ticks within which a peer heard from counts as reachable: two election timeouts, as
    /// a live peer without a leader sends a (pre-)vote request at least once per timeout.
    fn reachable_ticks_max(&self) -> u64 {
        2 * u64::from(self.config.election_timeout_ticks_max.max(1))
    }

    /// The voters this node heard from recently (itself included), the number of voters,
    /// and how many make a majority.
    fn voters_reachable(&self) -> (Vec<NodeId>, usize, usize) {
        let voters = &self.raw.membership().voters;
        let recent = self.reachable_ticks_max();
        let reachable: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|&v| {
                v == self.raw.id()
                    || self
                        .peer_heard_tick
                        .get(&v)
                        .copied()
                        .flatten()
                        .is_some_and(|t| self.ticks.saturating_sub(t) <= recent)
            })
            .collect();
        (reachable, voters.len(), voters.len() / 2 + 1)
    }

    /// The quorum situation in words, for errors: "no leader: 1 of 3 voters reachable ...".
    fn quorum_situation(&self) -> String {
        let (reachable, voters, needed) = self.voters_reachable();
        let heard = format!(
            "{} of {voters} voters reachable from node {} ({reachable:?}; a majority is {needed})",
            reachable.len(),
            self.raw.id()
        );
        match self.raw.leader() {
            None => format!("no leader: {heard}"),
            Some(l) if l == self.raw.id() => format!("leader without a majority: {heard}"),
            Some(l) => format!("leader is node {l}; {heard}"),
        }
    }

    /// Why no leader can be elected, once none has been known for two election timeouts
    /// and fewer voters than a majority are reachable: a request then fails at once with
    /// the situation instead of waiting out its deadline. During an ordinary election
    /// (a majority reachable, or the loss recent) requests wait as before.
    fn leaderless_without_quorum(&self) -> Option<String> {
        let lost = self.leader_lost_tick?;
        if self.ticks.saturating_sub(lost) < self.reachable_ticks_max() {
            return None;
        }
        let (reachable, _, needed) = self.voters_reachable();
        (reachable.len() < needed).then(|| self.quorum_situation())
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::SnapshotBody { meta, body } => self.prepare_snapshot(meta, body),
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

    /// Restores a state machine from a leader's snapshot body and writes the snapshot file,
    /// both on a blocking thread: the core is told nothing until that is done, so it goes on
    /// answering heartbeats (and the node keeps its leader) however large the snapshot.
    /// One at a time; a body arriving meanwhile is dropped (the leader resends it after its
    /// retry timeout).
    fn prepare_snapshot(&mut self, meta: SnapshotMeta, body: Bytes) {
        let key = (meta.index, meta.term);
        if self.install.preparing.is_some() {
            tracing::debug!(
                index = meta.index,
                "a snapshot is already being prepared; body dropped"
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
        let (store, bg) = (self.snapshots.clone(), self.bg_tx.clone());
        tokio::task::spawn_blocking(move || {
            let result = off_task(|| -> Result<M, String> {
                sm.restore(&mut body.as_ref()).map_err(|e| e.to_string())?;
                if sm.applied_index() != meta.index {
                    return Err(format!(
                        "snapshot body is at index {}, its message says {}",
                        sm.applied_index(),
                        meta.index
                    ));
                }
                // The file is written (and synced) before the core or the log hear of it: a
                // crash in between leaves a snapshot of committed state ahead of the log,
                // which a restart handles, never a log that points at a missing snapshot.
                store
                    .write_snapshot(meta.clone(), &sm.freeze())
                    .map_err(|e| e.to_string())?;
                Ok(sm)
            });
            let _ = bg.send(SnapshotEvent::Prepared {
                meta,
                result: result.map(Box::new),
            });
        });
    }

    /// Steps an `InstallSnapshot` once its snapshot is prepared; holds it while it is
    /// being prepared; drops it when no body came (the leader sends both again).
    fn on_install_message(&mut self, msg: Message) {
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
                "InstallSnapshot without its body; ignored"
            );
        }
    }

    fn on_background(&mut self, bg: SnapshotEvent<M>) {
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
    /// configuration in force at it; that point need not be a snapshot file, because a
    /// follower behind it is sent the newest snapshot file instead (`send_snapshot`).
    fn compact_log_through(&mut self, through: Index) -> Option<Index> {
        if through <= self.raw.storage().snapshot_meta().index {
            return None;
        }
        let term = self.raw.log_term(through)?;
        let pos = self.memberships.iter().rposition(|(i, _)| *i <= through)?;
        let meta = SnapshotMeta {
            index: through,
            term,
            membership: self.memberships[pos].1.clone(),
        };
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
        self.memberships.drain(..pos);
        Some(through)
    }

    /// Loads the snapshot named by an `InstallSnapshot` message off the task and sends it.
    ///
    /// The core names the log's compaction point, which lies a trailing margin below the
    /// newest snapshot file; the newest file at or after that point is sent instead, with
    /// the message's metadata rewritten to match it. That is safe: the file is a state this
    /// node applied, so committed, and the follower's acknowledgement of the higher index
    /// moves the leader's progress past the point it asked for.
    fn send_snapshot(&mut self, mut msg: Message) {
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
        let (index, term, to) = (meta.index, meta.term, msg.to);
        Metrics::add(&self.metrics.snapshots_sent, 1);
        tokio::task::spawn_blocking(move || {
            let result = off_task(|| -> Result<(), String> {
                let file = store
                    .list()
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .filter(|f| f.index > index || (f.index == index && f.term == term))
                    .max_by_key(|f| f.index)
                    .ok_or_else(|| {
                        format!("no snapshot file at or after index {index} (term {term})")
                    })?;
                let mut reader =
                    raft_snapshot::SnapshotReader::open(&file.path).map_err(|e| e.to_string())?;
                msg.body = MessageBody::InstallSnapshot {
                    meta: reader.header().meta.clone(),
                };
                if reader.header().body_bytes > SNAPSHOT_BYTES_MAX as u64 {
                    return Err("snapshot too large for the transport".into());
                }
                let mut body = Vec::new();
                std::io::Read::read_to_end(&mut reader, &mut body).map_err(|e| e.to_string())?;
                transport.send_snapshot(msg, body.into())
            });
            let _ = bg.send(match result {
                Ok(()) => SnapshotEvent::Queued { to },
                Err(why) => SnapshotEvent::SendFailed { to, why },
            });
        });
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

    /// Proposes the machine's upkeep entry on a leader (see `HostedMachine::housekeeping`).
    fn propose_housekeeping(&mut self) {
        if !self.raw.is_leader() {
            return;
        }
        let term = self.raw.term();
        if self
            .housekeeping_in_flight
            .is_some_and(|(index, t)| t == term && self.sm.applied_index() < index)
        {
            return;
        }
        let Some(data) = self.sm.housekeeping() else {
            return;
        };
        match self.raw.propose(data) {
            Ok(id) => self.housekeeping_in_flight = Some((id.index, id.term)),
            Err(e) => tracing::debug!(error = ?e, "housekeeping proposal refused"),
        }
    }

    fn fail_command(&self, cmd: Command, err: NodeError) {
        match cmd {
            Command::Propose { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Command::Read { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Command::Admin(_, reply) => {
                let _ = reply.send(Err(err));
            }
            Command::Status(_) => {}
        }
    }

    fn park(&mut self, deadline: Instant, cmd: Command) {
        if let Some(situation) = self.leaderless_without_quorum() {
            self.fail_command(cmd, NodeError::Unavailable(situation));
        } else if self.waiting.len() >= self.config.requests_waiting_max {
            self.fail_command(cmd, NodeError::Busy);
        } else {
            self.waiting.push_back((deadline, cmd));
        }
    }

    fn on_command(&mut self, cmd: Command) {
        if matches!(cmd, Command::Propose { .. } | Command::Read { .. }) {
            self.work_inputs_this_iteration += 1;
        }
        let deadline = self.deadline();
        self.dispatch(cmd, deadline);
    }

    fn dispatch(&mut self, cmd: Command, deadline: Instant) {
        match cmd {
            Command::Propose { data, reply } => self.propose(data, reply, deadline),
            Command::Read {
                op,
                linearizable,
                reply,
            } => self.read(op, linearizable, reply, deadline),
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Admin(op, reply) => self.admin(op, reply, deadline),
        }
    }

    fn propose(&mut self, data: Bytes, reply: Reply, deadline: Instant) {
        if self.pending_writes.len() >= self.config.proposals_in_flight_max {
            Metrics::add(&self.metrics.proposals_busy, 1);
            let _ = reply.send(Err(NodeError::Busy));
            return;
        }
        match self.raw.propose(data.clone()) {
            Ok(id) => {
                Metrics::add(&self.metrics.proposals, 1);
                self.pending_writes.insert(
                    id.index,
                    PendingWrite {
                        term: id.term,
                        reply,
                        started: Instant::now(),
                    },
                );
                self.write_deadlines
                    .push_back((deadline, id.index, id.term));
            }
            Err(ProposeError::NotLeader {
                leader: Some(leader),
            }) if leader != self.raw.id() => {
                let _ = reply.send(Err(self.leader_error(Some(leader))));
            }
            Err(ProposeError::NotLeader { .. } | ProposeError::TransferInProgress) => {
                self.park(deadline, Command::Propose { data, reply });
            }
            Err(ProposeError::Busy) => {
                Metrics::add(&self.metrics.proposals_busy, 1);
                let _ = reply.send(Err(NodeError::Busy));
            }
        }
    }

    /// The answer to a read at the current applied index.
    fn read_answer(&self, op: &[u8]) -> ReadAnswer {
        match self.sm.view() {
            Some(view) => ReadAnswer::View(view),
            None => ReadAnswer::Bytes(self.sm.query(op)),
        }
    }

    fn read(&mut self, op: Bytes, linearizable: bool, reply: ReadReply, deadline: Instant) {
        if !linearizable {
            Metrics::add(&self.metrics.reads, 1);
            let _ = reply.send(Ok(self.read_answer(&op)));
            return;
        }
        if self.pending_reads.len() >= self.config.reads_in_flight_max {
            let _ = reply.send(Err(NodeError::Busy));
            return;
        }
        // Only queued here: the round that serves it starts after every input of this
        // iteration is in (`start_read_round`), so reads arriving together share it.
        let id = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.pending_reads.insert(
            id,
            PendingRead {
                op,
                reply,
                deadline,
            },
        );
        self.read_deadlines.push_back((deadline, id));
        self.read_batch.push(id);
    }

    /// Starts a ReadIndex round for every queued read, unless one is in flight (see
    /// `read_batch` for why that keeps reads linearizable).
    fn start_read_round(&mut self) {
        if !self.read_batch.should_start() {
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        let err = match self.raw.read_index(ctx) {
            Ok(()) => {
                self.read_batch.start(ctx, self.ticks);
                return;
            }
            Err(e) => e,
        };
        for id in self.read_batch.take_queued() {
            let Some(p) = self.pending_reads.remove(&id) else {
                continue;
            };
            self.finish_read(p, Err(err));
        }
    }

    /// Answers a read from its round's outcome, or parks it to be asked again when
    /// leadership is in doubt (its deadline stays).
    fn finish_read(&mut self, p: PendingRead, result: Result<Index, ReadError>) {
        match result {
            Ok(index) => {
                debug_assert!(self.raw.applied_index() >= index);
                Metrics::add(&self.metrics.reads, 1);
                let _ = p.reply.send(Ok(self.read_answer(&p.op)));
            }
            Err(ReadError::Busy) => {
                let _ = p.reply.send(Err(NodeError::Busy));
            }
            Err(_) => {
                let cmd = Command::Read {
                    op: p.op,
                    linearizable: true,
                    reply: p.reply,
                };
                self.park(p.deadline, cmd);
            }
        }
    }

    fn admin(
        &mut self,
        op: AdminOp,
        reply: oneshot::Sender<Result<(), NodeError>>,
        _deadline: Instant,
    ) {
        let result = match op {
            AdminOp::TransferLeader(to) => self.raw.transfer_leader(to).map_err(|e| match e {
                TransferError::NotLeader { leader } => self.leader_error(leader),
                TransferError::NotAVoter => NodeError::Invalid(format!("{to} is not a voter")),
            }),
            AdminOp::AddLearner(id) => self.checked_change(ConfChange::AddLearner(id)),
            AdminOp::Promote(id) => self.checked_change(ConfChange::AddVoter(id)),
            AdminOp::Remove(id) => self.checked_change(ConfChange::Remove(id)),
        };
        let _ = reply.send(result);
    }

    /// Makes `change` if the leader's admission rules (`membership_check`) allow it. Only
    /// the leader judges: a follower's view of progress and reachability is not the one
    /// that counts, so it redirects.
    fn checked_change(&mut self, change: ConfChange) -> Result<(), NodeError> {
        if self.raw.role() != Role::Leader {
            return Err(self.leader_error(self.raw.leader()));
        }
        let status = self.raw.status();
        let match_index: BTreeMap<CoreId, Index> =
            status.peers.iter().map(|p| (p.id, p.match_index)).collect();
        let heard_ticks_ago: BTreeMap<CoreId, u64> = self
            .peer_heard_tick
            .iter()
            .filter_map(|(&p, t)| t.map(|t| (p, self.ticks.saturating_sub(t))))
            .collect();
        let view = LeaderView {
            leader: status.id,
            membership: &status.membership,
            last_index: status.last_index,
            match_index: &match_index,
            heard_ticks_ago: &heard_ticks_ago,
            connected_ticks_max: u64::from(self.config.election_timeout_ticks_max),
            tick_ms: self.config.tick_interval_ms,
            known_peers: &self.known_peers,
        };
        if let Err(why) = membership_check::check(change, &view) {
            tracing::warn!(?change, %why, "membership change refused");
            return Err(NodeError::Invalid(why));
        }
        tracing::info!(?change, "membership change proposed");
        self.change(&[change])
    }

    fn change(&mut self, changes: &[ConfChange]) -> Result<(), NodeError> {
        match self.raw.change_membership(changes) {
            Ok(_) => Ok(()),
            Err(ChangeError::NotLeader { leader }) => Err(self.leader_error(leader)),
            Err(ChangeError::NotReady | ChangeError::ChangeInProgress) => Err(NodeError::Busy),
            Err(ChangeError::TransferInProgress) => Err(NodeError::Busy),
            Err(ChangeError::Invalid(e)) => Err(NodeError::Invalid(format!("{e:?}"))),
        }
    }

    fn on_sync_done(&mut self, done: SyncDone) {
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

    /// Whether a Ready's `messages` may wait until its client replies are written: they all
    /// are empty AppendEntries (a leader telling followers its new commit index; nothing
    /// waits on them but the followers' own apply) and the Ready answers clients. Sent
    /// first, each wakes a follower whose handling competes with the reply for a core; on
    /// two cores that put 20-80 us between a commit and its reply.
    fn hold_commit_notices(&self, ready: &raft_core::Ready) -> bool {
        !ready.messages.is_empty()
            && ready.entries.is_empty()
            && ready
                .committed_entries
                .iter()
                .any(|e| self.pending_writes.contains_key(&e.index))
            && ready.messages.iter().all(|m| {
                matches!(&m.body, MessageBody::AppendEntries { entries, .. } if entries.is_empty())
            })
    }

    /// Sends the commit notices held back by `hold_commit_notices`, except those that
    /// `next` (the messages about to be sent) supersede: an AppendEntries to the same peer in
    /// the same term carrying at least the same commit index tells it everything the notice
    /// would, and dropping the notice is what losing it on the network would do. The rest
    /// go before `next`, so each peer gets its messages in the order the core made them. A
    /// node that failed sends nothing more.
    fn send_commit_notices_before(&mut self, next: &[Message]) {
        for n in std::mem::take(&mut self.commit_notices) {
            let MessageBody::AppendEntries {
                leader_commit: commit,
                ..
            } = n.body
            else {
                continue;
            };
            let superseded = next.iter().any(|m| {
                m.to == n.to
                    && m.term == n.term
                    && matches!(m.body, MessageBody::AppendEntries { leader_commit, .. } if leader_commit >= commit)
            });
            if !superseded && !self.failed {
                self.transport.send(n);
            }
        }
    }

    fn send_commit_notices(&mut self) {
        self.send_commit_notices_before(&[]);
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
        let mut write = || -> std::io::Result<()> {
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
    fn sync_inline_now(&self, first_new: Option<Index>) -> bool {
        self.syncs_in_flight == 0
            && self.raw.role() != Role::Leader
            && !self.sync_inline_backoff
            && self.work_inputs_this_iteration <= 1
            && first_new.is_none_or(|i| i <= self.raw.commit_index() + 1)
    }

    /// Makes the writes up to Ready `seq` durable on the task, then sends what waited for
    /// them and reports them persisted, as the sync thread would. After a failed sync nothing
    /// is sent and the core is not called again.
    fn sync_inline(&mut self, seq: u64, messages_after_persist: Vec<Message>) {
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

    /// Replaces the state machine and the log with the leader's snapshot, prepared (restored
    /// and written to its file) off the task by `prepare_snapshot` before the core saw the
    /// message. What is left here is the log's switch to the snapshot: one state write and
    /// sync, and the removal of the old segments.
    fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), String> {
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
        self.memberships = VecDeque::from([(meta.index, meta.membership.clone())]);
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

    fn apply(&mut self, entries: Vec<raft_core::Entry>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        let mut batch_bytes = 0u64;
        for entry in entries {
            batch_bytes += entry.size_bytes() as u64;
            let response = match &entry.payload {
                // A restored snapshot may be ahead of the log's own snapshot point (a crash
                // between writing the file and compacting): those entries are in it already.
                EntryPayload::Command(_) if entry.index <= self.sm.applied_index() => None,
                EntryPayload::Command(data) => {
                    let response = self.sm.apply(entry.index, data);
                    self.maybe_inject_corruption(entry.index);
                    Some(response)
                }
                EntryPayload::Membership(m) => {
                    if self
                        .memberships
                        .back()
                        .is_none_or(|(i, _)| *i < entry.index)
                    {
                        self.memberships.push_back((entry.index, m.clone()));
                    }
                    self.sm.skip_to(entry.index);
                    None
                }
                EntryPayload::Noop => {
                    self.sm.skip_to(entry.index);
                    None
                }
            };
            let interval = self.config.digest_interval_entries;
            // Only when the state is exactly the one after this index (a restored snapshot
            // ahead of the log has no state at the earlier indexes).
            if interval > 0 && entry.index % interval == 0 && self.sm.applied_index() == entry.index
            {
                self.take_digest(entry.index);
            }
            if let Some(p) = self.pending_writes.remove(&entry.index) {
                match response {
                    Some(r) if p.term == entry.term => {
                        let us = p.started.elapsed().as_micros() as u64;
                        self.metrics.proposal_latency.observe_us(us);
                        let _ = p.reply.send(Ok(M::encode_response(&r)));
                    }
                    _ => {
                        // Another leader's entry took this index: ours was never committed.
                        Metrics::add(&self.metrics.proposals_failed, 1);
                        let err = self.leader_error(self.raw.leader());
                        let _ = p.reply.send(Err(err));
                    }
                }
            }
        }
        self.raw.advance_applied(last);
        if self.trigger.on_applied(last, batch_bytes).is_some() {
            self.take_snapshot(last);
        }
    }

    /// Freezes the state (O(1)) and hashes the copy on a blocking thread. At most one digest
    /// is in flight; a point reached while one is still running is skipped and counted, so
    /// a state too large to hash within one interval costs a bounded share of a core.
    fn take_digest(&mut self, index: Index) {
        if self.digest_in_flight {
            Metrics::add(&self.metrics.digests_skipped, 1);
            return;
        }
        self.digest_in_flight = true;
        let frozen = self.sm.freeze();
        let bg = self.bg_tx.clone();
        tokio::task::spawn_blocking(move || {
            // A panicking machine must not leave `digest_in_flight` set for ever.
            let digest = off_task(|| Ok(frozen.digest()));
            let _ = bg.send(SnapshotEvent::Digested { index, digest });
        });
    }

    /// FAULT INJECTION for tests (`--debug-corrupt-apply-at`): makes this replica's state
    /// differ from every other's, once, as a non-deterministic state machine would.
    fn maybe_inject_corruption(&mut self, index: Index) {
        match self.config.debug_corrupt_apply_at {
            Some(at) if index >= at && !self.corrupted => {
                self.corrupted = true;
                self.sm.debug_corrupt(index);
                tracing::warn!(
                    index,
                    "FAULT INJECTION: corrupted this replica's state on purpose"
                );
            }
            _ => {}
        }
    }

    /// Freezes the state machine now and writes the snapshot off the task.
    fn take_snapshot(&mut self, index: Index) {
        let Some(term) = self.raw.log_term(index) else {
            self.trigger.on_snapshot_failed(index);
            return;
        };
        let meta = SnapshotMeta {
            index,
            term,
            membership: self.raw.applied_membership().clone(),
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

    /// Keeps `NodeHandle::leader` current and logs losing and finding the leader at WARN
    /// (a follower's log otherwise says only `leader=None`).
    fn observe_leader(&mut self) {
        let leader = self.raw.leader();
        // Only while leaderless is the situation computed (and the lock taken).
        if leader.is_none() || self.no_quorum_set {
            let situation = self.leaderless_without_quorum();
            self.no_quorum_set = situation.is_some();
            *self.no_quorum.lock().expect("not poisoned") = situation;
        }
        let before = self.leader_seen.load(std::sync::atomic::Ordering::Relaxed);
        if leader.unwrap_or(0) == before {
            return;
        }
        self.leader_seen
            .store(leader.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        let id = self.raw.id();
        let term = self.raw.term();
        match leader {
            None => {
                self.leader_lost_tick = Some(self.ticks);
                self.leader_before_loss = Some(before);
                if before != id {
                    tracing::warn!(
                        id,
                        term,
                        lost = before,
                        "lost the leader (node {before}); requests wait for an election, and \
                         fail at once while fewer than a majority of voters are reachable"
                    );
                }
            }
            Some(l) => {
                let lost = self.leader_lost_tick.take();
                let without_ms = lost.map_or(0, |t| {
                    self.ticks
                        .saturating_sub(t)
                        .saturating_mul(self.config.tick_interval_ms)
                });
                if self.leader_before_loss.take().is_some() {
                    let who = if l == id {
                        "this node, elected".to_string()
                    } else {
                        format!("node {l}")
                    };
                    tracing::warn!(id, term, leader = l, without_ms, "found the leader: {who}");
                } else {
                    tracing::info!(id, term, leader = l, "leader is node {l}");
                }
            }
        }
    }

    fn observe(&mut self) {
        let role = self.raw.role();
        if role != self.last_role {
            // A pre-vote round that fails leaves the term alone; only real elections count.
            if role == Role::Candidate {
                Metrics::add(&self.metrics.elections, 1);
            }
            tracing::info!(
                id = self.raw.id(),
                term = self.raw.term(),
                ?role,
                leader = ?self.raw.leader(),
                "role changed"
            );
            self.last_role = role;
        }
        let leader = self.raw.leader();
        if leader != self.last_leader {
            self.last_leader = leader;
            if leader.is_some() {
                Metrics::add(&self.metrics.leader_changes, 1);
            }
            if self.leader_changes.len() == LEADER_CHANGES_KEPT_MAX {
                self.leader_changes.pop_front();
            }
            self.leader_changes.push_back(LeaderChange {
                term: self.raw.term(),
                leader,
                at_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            });
        }
        self.observe_leader();
        let m = &self.metrics;
        Metrics::set(&m.term, self.raw.term());
        Metrics::set(&m.is_leader, u64::from(role == Role::Leader));
        Metrics::set(&m.has_leader, u64::from(leader.is_some()));
        Metrics::set(&m.proposals_pending, self.pending_writes.len() as u64);
        Metrics::set(&m.commit_index, self.raw.commit_index());
        Metrics::set(&m.applied_index, self.raw.applied_index());
        Metrics::set(&m.last_index, self.raw.last_index());
    }

    fn status(&self) -> NodeStatus {
        let s = self.raw.status();
        let memory = self.sm.memory_bytes();
        NodeStatus {
            id: s.id,
            role: format!("{:?}", s.role),
            term: s.term,
            leader: s.leader,
            leader_addr: s.leader.and_then(|l| self.client_addrs.get(&l).cloned()),
            commit_index: s.commit,
            applied_index: s.applied,
            persisted_index: s.persisted,
            first_index: s.first_index,
            last_index: s.last_index,
            snapshot_index: self.snapshot_index_latest,
            storage: self.raw.storage().describe(),
            voters: s.membership.voters.iter().copied().collect(),
            learners: s.membership.learners.iter().copied().collect(),
            elections: self
                .metrics
                .elections
                .load(std::sync::atomic::Ordering::Relaxed),
            peers: s
                .peers
                .iter()
                .map(|p| {
                    let timing = self.peer_timing.get(&p.id);
                    PeerInfo {
                        id: p.id,
                        match_index: p.match_index,
                        next_index: p.next_index,
                        state: p.state.to_string(),
                        active: p.recent_active,
                        last_contact_ms: timing
                            .and_then(|t| t.heard_at)
                            .map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)),
                        match_lag: s.last_index.saturating_sub(p.match_index),
                        rtt_us: timing.and_then(|t| t.rtt_us),
                    }
                })
                .collect(),
            digests: digest_infos(self.digests.iter()),
            anti_entropy: self
                .metrics
                .anti_entropy
                .lock()
                .expect("not poisoned")
                .clone(),
            http_addr: self.config.http_addr.clone(),
            leader_changes: self.leader_changes.iter().cloned().collect(),
            load: LoadCounters {
                writes: self.metrics.proposal_latency.count(),
                write_latency_us_sum: self.metrics.proposal_latency.sum_us(),
                reads: self
                    .metrics
                    .reads
                    .load(std::sync::atomic::Ordering::Relaxed),
            },
            memory_used_bytes: memory.0,
            memory_bytes_max: memory.1,
            version: env!("CARGO_PKG_VERSION").to_string(),
            members: s
                .membership
                .voters
                .iter()
                .chain(s.membership.learners.iter())
                .map(|&id| MemberAddr {
                    id,
                    client_addr: self.client_addrs.get(&id).cloned(),
                })
                .collect(),
        }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use raft_client::wire::KvCommand;
    use raft_core::{Entry, HardState, LogStore, MemLog, Membership, StorageError};
    use raft_snapshot::SnapshotStoreConfig;

    use super::*;
    use crate::kv::{log_command, KvLimits, KvStateMachine};

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

    impl NodeStore for TestStore {
        fn append_entries(&mut self, entries: &[Entry]) -> std::io::Result<()> {
            self.dirty = true;
            self.log.append_entries(entries)
        }
        fn write_hard_state(&mut self, hard_state: HardState) -> std::io::Result<()> {
            self.dirty = true;
            self.log.write_hard_state(hard_state)
        }
        fn install_snapshot_meta(&mut self, meta: SnapshotMeta) -> std::io::Result<()> {
            self.log.install_snapshot_meta(meta)
        }
        fn compact_to(&mut self, meta: SnapshotMeta) -> std::io::Result<()> {
            self.log.compact_to(meta)
        }
        fn sync_job(&mut self) -> SyncJob {
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
        fn send_snapshot(&self, _msg: Message, _body: Bytes) -> Result<(), String> {
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
