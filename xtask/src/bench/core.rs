//! The protocol core alone: 3 `RawNode`s in one process, each owned by its own tokio task,
//! `MemLog` storage reported persisted at once, messages moved between tasks over tokio mpsc
//! without serialization, empty commands. Closed-loop clients (propose, wait for the commit
//! notification, repeat) at 1, 64, 256 and 1024 clients.
//!
//! Host loop per node: wait for input; drain everything queued (bounded); take one Ready;
//! handle it in the order `raft_core::Ready` documents. Draining before each Ready is what
//! batches proposals and acknowledgements into few AppendEntries.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use raft_core::{Config, MemLog, Membership, Message, ProposalId, RawNode, SnapshotMeta};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::report::Row;
use super::Ctx;

pub const CLIENTS: [usize; 4] = [1, 64, 256, 1024];
pub const TARGET_COMMITS_PER_S_AT_256: f64 = 1_000_000.0;
const NODES: u64 = 3;
/// Inputs taken per Ready at most, so one node cannot starve its own Ready handling.
const DRAIN_MAX: usize = 8192;
/// Compact the in-memory log once this many applied entries are held, keeping the last
/// `KEEP`: the run measures the protocol, not an ever-growing Vec. `KEEP` is far above what a
/// follower can lag by (in-flight window x batch), so a slow follower is not sent a snapshot.
const COMPACT_AT: u64 = 1 << 17;
const KEEP: u64 = 1 << 16;
const TICK: Duration = Duration::from_millis(100);
const OPS_PER_CLIENT_MAX: u64 = 100_000_000;
const HOST_ROUNDS_MAX: u64 = 1 << 40;
/// An hour of ticks: far beyond any run.
const TICKS_MAX: u64 = 36_000;
/// Ticks allowed for node 1 to win the bootstrap election (timeout is 10-20 ticks).
const BOOTSTRAP_TICKS_MAX: u32 = 1000;

enum Input {
    Msgs(Vec<Message>),
    Propose { client: u32 },
    Tick,
    Stop,
}

#[derive(Default)]
struct Counters {
    snapshots_sent: AtomicU64,
    proposals_refused: AtomicU64,
}

struct Flags {
    measuring: AtomicBool,
    stop: AtomicBool,
}

pub fn run(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<(), String> {
    // Two runtime shapes, alternated per client count so drifting load hits both: one worker
    // per core (what a node would run), and a single worker, where every hand-off between
    // tasks stays on one core and no worker ever parks or is woken by another.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut shapes = if cores > 1 { vec![cores, 1] } else { vec![1] };
    let mut client_counts = CLIENTS.to_vec();
    // `XTASK_BENCH_CORE_ONLY=<workers>x<clients>` runs one configuration, to profile it
    // (e.g. under `valgrind --tool=callgrind`) without the others mixed in.
    if let Ok(only) = std::env::var("XTASK_BENCH_CORE_ONLY") {
        let parsed = only
            .split_once('x')
            .and_then(|(w, c)| Some((w.parse().ok()?, c.parse().ok()?)));
        let Some((w, c)) = parsed else {
            return Err(format!(
                "XTASK_BENCH_CORE_ONLY={only}: want <workers>x<clients>"
            ));
        };
        shapes = vec![w];
        client_counts = vec![c];
    }
    for (i, clients) in client_counts.into_iter().enumerate() {
        let mut order = shapes.clone();
        if i % 2 == 1 {
            order.reverse();
        }
        let mut results = Vec::new();
        for workers in order {
            let duration = ctx.scale(Duration::from_secs(6));
            let warmup = duration / 6;
            results.push((workers, run_one(clients, workers, warmup, duration)?));
        }
        results.sort_by_key(|(w, _)| std::cmp::Reverse(*w));
        for (workers, r) in results {
            push_rows(rows, clients, workers, &r);
        }
    }
    Ok(())
}

fn push_rows(rows: &mut Vec<Row>, clients: usize, workers: usize, r: &Outcome) {
    let p = format!(
        "core_{workers}worker{}_{clients}_clients",
        if workers == 1 { "" } else { "s" }
    );
    let commits = r.ops as f64 / r.measured.as_secs_f64();
    let mut row = Row::new(format!("{p}_commits_per_s"), "commits/s", commits);
    if clients == 256 {
        row = row.vs(
            "target_core_256_clients_commits_per_s",
            TARGET_COMMITS_PER_S_AT_256,
        );
    }
    if r.snapshots_sent > 0 || r.refused > 0 {
        row = row.note(format!(
            "{} snapshots sent to lagging followers, {} proposals refused",
            r.snapshots_sent, r.refused
        ));
    }
    rows.push(row);
    let us = |q| r.latency.value_at_quantile(q) as f64 / 1000.0;
    rows.push(Row::new(format!("{p}_latency_us_p50"), "us", us(0.5)));
    rows.push(Row::new(format!("{p}_latency_us_p99"), "us", us(0.99)));
    // CPU time of the whole process per commit: unlike commits/s it does not drop when
    // other users of this machine take our cores away.
    if r.ops > 0 {
        rows.push(Row::new(
            format!("{p}_cpu_us_per_commit"),
            "us",
            r.cpu.as_secs_f64() * 1e6 / r.ops as f64,
        ));
        rows.push(Row::new(
            format!("{p}_cpu_cores_used"),
            "cores",
            r.cpu.as_secs_f64() / r.measured.as_secs_f64(),
        ));
    }
    rows.push(Row::new(
        format!("{p}_entries_per_append_msg"),
        "entries",
        r.entries_per_append,
    ));
}

/// User + system CPU time of this process, all threads.
fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

struct Outcome {
    ops: u64,
    measured: Duration,
    cpu: Duration,
    latency: Histogram<u64>,
    snapshots_sent: u64,
    refused: u64,
    entries_per_append: f64,
}

/// Three nodes with node 1 elected, by ticking node 1 alone and delivering every message
/// synchronously; the tasks then take over a quiet cluster with a known leader.
fn bootstrap() -> Result<Vec<RawNode<MemLog>>, String> {
    let membership = Membership::new_voters(1..=NODES);
    let mut nodes = (1..=NODES)
        .map(|id| {
            let store = MemLog::with_snapshot(SnapshotMeta {
                membership: membership.clone(),
                ..Default::default()
            });
            RawNode::new(Config::new(id), store).map_err(|e| format!("node {id}: {e:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut wire: VecDeque<Message> = VecDeque::new();
    for _ in 0..BOOTSTRAP_TICKS_MAX {
        nodes[0].tick();
        // Bounded: an election is a handful of message exchanges.
        for _ in 0..100 {
            let mut busy = false;
            for node in nodes.iter_mut() {
                while node.has_ready() {
                    busy = true;
                    let ready = node.ready();
                    node.storage_mut().persist(&ready);
                    wire.extend(ready.messages);
                    wire.extend(ready.messages_after_persist);
                    if ready.seq > 0 {
                        node.on_persisted(ready.seq);
                    }
                    if let Some(last) = ready.committed_entries.last() {
                        node.advance_applied(last.index);
                    }
                }
            }
            while let Some(m) = wire.pop_front() {
                busy = true;
                let to = (m.to - 1) as usize;
                nodes[to]
                    .step(m)
                    .map_err(|e| format!("bootstrap step: {e:?}"))?;
            }
            if !busy {
                break;
            }
        }
        if nodes[0].is_leader() && nodes[0].applied_index() >= nodes[0].commit_index() {
            return Ok(nodes);
        }
    }
    Err("core bench: node 1 was not elected".into())
}

fn run_one(
    clients: usize,
    workers: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Outcome, String> {
    let nodes = bootstrap()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    let flags = Arc::new(Flags {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let counters = Arc::new(Counters::default());
    let appends = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));

    // Unbounded: a bounded channel between nodes would let two nodes block on each other's
    // full queues. The closed-loop clients bound what is in flight (clients x window).
    let (node_txs, node_rxs): (Vec<_>, Vec<_>) =
        (0..NODES).map(|_| unbounded_channel::<Input>()).unzip();
    let (reply_txs, reply_rxs): (Vec<_>, Vec<_>) =
        (0..clients).map(|_| unbounded_channel::<bool>()).unzip();
    let reply_txs = Arc::new(reply_txs);

    let result = rt.block_on(async {
        let mut node_tasks = Vec::new();
        for (node, rx) in nodes.into_iter().zip(node_rxs) {
            let peers = node_txs.clone();
            let host = Host {
                node,
                peers,
                replies: reply_txs.clone(),
                pending: VecDeque::new(),
                counters: counters.clone(),
                appends: appends.clone(),
            };
            node_tasks.push(tokio::spawn(host.run(rx)));
        }
        let ticker = {
            let txs = node_txs.clone();
            let flags = flags.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(TICK);
                for _ in 0..TICKS_MAX {
                    if flags.stop.load(Relaxed) {
                        break;
                    }
                    interval.tick().await;
                    for tx in &txs {
                        let _ = tx.send(Input::Tick);
                    }
                }
            })
        };
        let mut client_tasks = Vec::new();
        for (id, rx) in reply_rxs.into_iter().enumerate() {
            let leader = node_txs[0].clone();
            client_tasks.push(tokio::spawn(client(id as u32, leader, rx, flags.clone())));
        }
        tokio::time::sleep(warmup).await;
        let a0 = (appends.0.load(Relaxed), appends.1.load(Relaxed));
        let cpu0 = process_cpu();
        flags.measuring.store(true, Relaxed);
        let start = Instant::now();
        tokio::time::sleep(duration - warmup).await;
        flags.measuring.store(false, Relaxed);
        let measured = start.elapsed();
        let cpu = process_cpu().saturating_sub(cpu0);
        let a1 = (appends.0.load(Relaxed), appends.1.load(Relaxed));
        flags.stop.store(true, Relaxed);

        let mut latency =
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 2).expect("valid bounds");
        let mut ops = 0;
        let mut failure = None;
        for t in client_tasks {
            // A client waits for at most one commit; the cluster is still running, so this
            // ends within a round; the timeout turns a stuck run into an error, not a hang.
            match tokio::time::timeout(Duration::from_secs(10), t).await {
                Ok(Ok((h, n))) => {
                    latency.add(&h).expect("same bounds");
                    ops += n;
                }
                Ok(Err(e)) => failure = Some(format!("client task: {e}")),
                Err(_) => failure = Some("a client did not finish within 10 s".into()),
            }
        }
        for tx in &node_txs {
            let _ = tx.send(Input::Stop);
        }
        for t in node_tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        ticker.abort();
        if let Some(f) = failure {
            return Err(f);
        }
        let (msgs, entries) = (a1.0 - a0.0, a1.1 - a0.1);
        Ok(Outcome {
            ops,
            measured,
            cpu,
            latency,
            snapshots_sent: counters.snapshots_sent.load(Relaxed),
            refused: counters.proposals_refused.load(Relaxed),
            entries_per_append: if msgs == 0 {
                0.0
            } else {
                entries as f64 / msgs as f64
            },
        })
    });
    // Whatever is still running (a task stuck after a failure) is abandoned here, not leaked
    // past this measurement.
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

async fn client(
    id: u32,
    leader: UnboundedSender<Input>,
    mut reply: UnboundedReceiver<bool>,
    flags: Arc<Flags>,
) -> (Histogram<u64>, u64) {
    // Two significant digits: 1024 clients each hold one, and 1 % resolution is plenty for
    // percentiles of a closed loop.
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 2).expect("valid bounds");
    let mut ops = 0;
    for _ in 0..OPS_PER_CLIENT_MAX {
        if flags.stop.load(Relaxed) {
            break;
        }
        let start = Instant::now();
        if leader.send(Input::Propose { client: id }).is_err() {
            break;
        }
        let Some(committed) = reply.recv().await else {
            break;
        };
        if committed && flags.measuring.load(Relaxed) {
            h.saturating_record(start.elapsed().as_nanos().max(1) as u64);
            ops += 1;
        }
        if !committed {
            // Refused (not leader, busy): do not spin on the leader's queue.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    (h, ops)
}

struct Host {
    node: RawNode<MemLog>,
    peers: Vec<UnboundedSender<Input>>,
    replies: Arc<Vec<UnboundedSender<bool>>>,
    /// Proposals awaiting commit, in log order (the leader appends them in order).
    pending: VecDeque<(ProposalId, u32)>,
    counters: Arc<Counters>,
    /// (AppendEntries messages sent, entries they carried), to report the batching achieved.
    appends: Arc<(AtomicU64, AtomicU64)>,
}

impl Host {
    async fn run(mut self, mut rx: UnboundedReceiver<Input>) {
        let mut inbox = Vec::with_capacity(DRAIN_MAX);
        let mut out: Vec<Vec<Message>> = (0..NODES).map(|_| Vec::new()).collect();
        // Ends at Stop; the count bound only guards against a lost Stop (the runtime's
        // shutdown bounds it in time).
        for _ in 0..HOST_ROUNDS_MAX {
            if !self.node.has_ready() && rx.recv_many(&mut inbox, DRAIN_MAX).await == 0 {
                return;
            }
            // Tokio runs a task woken by the running one next (its LIFO slot), so without
            // this yield the node would run after every single client's proposal and take a
            // Ready per proposal. Yielding once lets every runnable client (and peer) queue
            // its input first; when nothing else is runnable it costs one poll.
            tokio::task::yield_now().await;
            while inbox.len() < DRAIN_MAX {
                match rx.try_recv() {
                    Ok(input) => inbox.push(input),
                    Err(_) => break,
                }
            }
            for input in inbox.drain(..) {
                match input {
                    Input::Msgs(msgs) => {
                        for m in msgs {
                            // The in-memory log cannot fail; a protocol error would be a bug
                            // the simulation should have found, so fail loudly.
                            self.node.step(m).expect("step");
                        }
                    }
                    Input::Propose { client } => match self.node.propose(Bytes::new()) {
                        Ok(id) => self.pending.push_back((id, client)),
                        Err(_) => {
                            self.counters.proposals_refused.fetch_add(1, Relaxed);
                            let _ = self.replies[client as usize].send(false);
                        }
                    },
                    Input::Tick => self.node.tick(),
                    Input::Stop => return,
                }
            }
            if self.node.has_ready() {
                self.handle_ready(&mut out);
            }
        }
    }

    fn handle_ready(&mut self, out: &mut [Vec<Message>]) {
        let node = &mut self.node;
        let ready = node.ready();
        node.storage_mut().persist(&ready);
        // Persistence is immediate, so messages waiting on it go out with the others.
        let (mut msgs, mut entries) = (0, 0);
        for m in ready
            .messages
            .into_iter()
            .chain(ready.messages_after_persist)
        {
            match &m.body {
                raft_core::MessageBody::AppendEntries { entries: e, .. } => {
                    msgs += 1;
                    entries += e.len() as u64;
                }
                raft_core::MessageBody::InstallSnapshot { .. } => {
                    self.counters.snapshots_sent.fetch_add(1, Relaxed);
                }
                _ => {}
            }
            out[(m.to - 1) as usize].push(m);
        }
        if msgs > 0 {
            self.appends.0.fetch_add(msgs, Relaxed);
            self.appends.1.fetch_add(entries, Relaxed);
        }
        for (i, batch) in out.iter_mut().enumerate() {
            if !batch.is_empty() {
                let _ = self.peers[i].send(Input::Msgs(std::mem::take(batch)));
            }
        }
        if ready.seq > 0 {
            node.on_persisted(ready.seq);
        }
        if let Some(last) = ready.committed_entries.last() {
            let last_index = last.index;
            for e in &ready.committed_entries {
                while let Some(&(id, client)) = self.pending.front() {
                    if id.index > e.index {
                        break;
                    }
                    self.pending.pop_front();
                    let committed = id.index == e.index && id.term == e.term;
                    let _ = self.replies[client as usize].send(committed);
                }
            }
            node.advance_applied(last_index);
            let applied = node.applied_index();
            if applied > node.first_index() + COMPACT_AT {
                let at = applied - KEEP;
                if let Some(term) = node.log_term(at) {
                    let meta = SnapshotMeta {
                        index: at,
                        term,
                        membership: node.applied_membership().clone(),
                    };
                    node.storage_mut().compact(meta);
                }
            }
        }
    }
}
