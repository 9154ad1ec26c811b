//! `cargo xtask chaos`: real `raft-node` processes, real disks and sockets, real crashes,
//! checked the way Jepsen checks databases.
//!
//! The tool starts a cluster whose peer links it can cut: as root, each node runs in a network
//! namespace of its own behind a veth pair to a bridge, and links are cut (or made lossy) with
//! iptables (`netns.rs`); otherwise, or with `--net proxy`, the nodes listen on 127.0.0.1 and
//! every directed link passes through a proxy of ours. Concurrent clients read, write and
//! compare-and-set a few keys while faults from a schedule drawn from the seed
//! (`schedule.rs`) hit the cluster: SIGKILL and restart, SIGSTOP and SIGCONT, an isolated node,
//! a minority/majority split, a one-way cut, a bridge, lossy links, leadership transfers,
//! membership changes (remove and re-add; replace with an empty node that joins as a learner
//! and is promoted) and a full disk on the node whose data directory is a small tmpfs
//! (`disk.rs`). Every operation's invocation and completion is recorded; at the end the faults
//! heal, every node is made a voter again, the history (with a final read of every key) is
//! checked for linearizability per key, acknowledged writes are checked against the final
//! state, and every replica's copy of every key is compared.

mod disk;
mod linearizability;
mod netns;
mod schedule;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_client::{Client, ClientConfig, NodeStatus};
use raft_core::rng::SplitMix64;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex};

use linearizability::{check, RegisterOp, Timed, Verdict};
use schedule::{Fault, Target};

/// Search steps allowed per key before the checker gives up.
const CHECK_STEPS_MAX: u64 = 20_000_000;
/// Operations per client at most, whatever the duration.
const OPS_PER_CLIENT_MAX: u64 = 50_000;
/// How long the cluster gets to converge after the faults heal.
const HEAL_WAIT_MAX: Duration = Duration::from_secs(30);
/// How long one membership change may take to show in the leader's configuration.
const MEMBERSHIP_CHANGE_WAIT_MAX: Duration = Duration::from_secs(20);
/// How long making every node a voter again may take.
const MEMBERSHIP_RESTORE_WAIT_MAX: Duration = Duration::from_secs(40);
/// A learner is promoted once it has applied this close to the leader's commit index, or
/// after `LEARNER_CATCH_UP_WAIT_MAX` regardless (a partitioned learner must not stall the run).
const LEARNER_CATCH_UP_ENTRIES: u64 = 200;
const LEARNER_CATCH_UP_WAIT_MAX: Duration = Duration::from_secs(10);

/// `cargo xtask chaos`: real `raft-node` processes under faults; a failing run prints the
/// line that replays its schedule.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct Args {
    /// Cluster size, 3 to 7.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(3..=7))]
    nodes: u64,
    /// Length of the faulty phase, in seconds (`60s` or `60`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the fault schedule and the clients' operations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    clients: usize,
    /// Keys the clients share.
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    keys: usize,
    /// Do not build: use target/release/raft-node as it is.
    #[arg(long)]
    no_build: bool,
    /// How to connect the nodes.
    #[arg(long, value_enum, default_value_t = NetMode::Auto)]
    net: NetMode,
    /// Extra arguments for every node (`--node-arg --storage=memory` checks that the checks
    /// catch a node that forgets its log on restart).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
}

/// How to connect the nodes (`--net`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum NetMode {
    /// Network namespaces when root and they can be made, else proxies.
    Auto,
    Proxy,
    Netns,
}

fn at_least_one(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_duration(v: &str) -> Result<Duration, String> {
    let secs: u64 = v
        .strip_suffix('s')
        .unwrap_or(v)
        .parse()
        .map_err(|e| format!("{e} (give seconds, like 60s)"))?;
    Ok(Duration::from_secs(secs))
}

/// Entry point of `cargo xtask chaos`.
pub(crate) fn main(args: Args) -> ExitCode {
    if !args.no_build {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "raft-node"])
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("xtask chaos: building raft-node failed");
            return ExitCode::FAILURE;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // On Ctrl-C the run's future is dropped, and with it the guards that kill the processes
    // and undo the mount.
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(args) => outcome,
            _ = tokio::signal::ctrl_c() => Err("interrupted; processes stopped, mounts undone".into()),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask chaos: {e}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn free_port() -> std::io::Result<SocketAddr> {
    StdListener::bind("127.0.0.1:0")?.local_addr()
}

// ----- links -------------------------------------------------------------------------------

/// A proxy for one direction of one pair: node `from` dials it to reach node `to`.
struct Link {
    blocked: watch::Sender<bool>,
}

async fn run_proxy(listener: TcpListener, target: SocketAddr, blocked: watch::Receiver<bool>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        if *blocked.borrow() {
            continue; // dropped at once: the dialler sees a closed connection
        }
        let mut watch = blocked.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = async {
                    while watch.changed().await.is_ok() {
                        if *watch.borrow() {
                            return;
                        }
                    }
                } => {}
            }
        });
    }
}

/// How the nodes are connected.
enum Net {
    /// On 127.0.0.1, every directed link through a proxy of ours: links[(from, to)].
    Proxy(BTreeMap<(u64, u64), Link>),
    /// A network namespace per node, links cut with iptables.
    Netns(netns::Netns),
}

impl Net {
    fn describe(&self) -> String {
        match self {
            Net::Proxy(_) => "127.0.0.1, a TCP proxy per directed link".into(),
            Net::Netns(net) => format!(
                "a network namespace per node ({}), veth pairs to a bridge, iptables",
                net.namespace(1)
            ),
        }
    }
}

/// The net, with the address node `from` dials to reach `to` (`peer_addrs[(from, to)]`, also
/// for `from == to`: its own listening address), the client addresses, and what each node's
/// command is run under.
struct Wiring {
    net: Net,
    peer_addrs: BTreeMap<(u64, u64), SocketAddr>,
    client_addrs: BTreeMap<u64, SocketAddr>,
    prefixes: BTreeMap<u64, Vec<String>>,
}

async fn wire(mode: NetMode, ids: &[u64]) -> Result<Wiring, String> {
    if mode != NetMode::Proxy {
        match netns::Netns::create(ids) {
            Ok(net) => {
                let mut peer_addrs = BTreeMap::new();
                for &from in ids {
                    for &to in ids {
                        peer_addrs.insert((from, to), net.peer_addr(to));
                    }
                }
                return Ok(Wiring {
                    peer_addrs,
                    client_addrs: ids.iter().map(|&id| (id, net.client_addr(id))).collect(),
                    prefixes: ids.iter().map(|&id| (id, net.command_prefix(id))).collect(),
                    net: Net::Netns(net),
                });
            }
            Err(e) if mode == NetMode::Netns => {
                return Err(format!("network namespaces: {e}"));
            }
            Err(e) => {
                println!("xtask chaos: no network namespaces ({e}); using TCP proxies instead")
            }
        }
    }
    let mut own_addrs = BTreeMap::new();
    let mut client_addrs = BTreeMap::new();
    for &id in ids {
        own_addrs.insert(id, free_port().map_err(|e| e.to_string())?);
        client_addrs.insert(id, free_port().map_err(|e| e.to_string())?);
    }
    let mut links = BTreeMap::new();
    let mut peer_addrs = BTreeMap::new();
    for &from in ids {
        for &to in ids {
            if from == to {
                peer_addrs.insert((from, to), own_addrs[&to]);
                continue;
            }
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            peer_addrs.insert(
                (from, to),
                listener.local_addr().map_err(|e| e.to_string())?,
            );
            let (tx, rx) = watch::channel(false);
            tokio::spawn(run_proxy(listener, own_addrs[&to], rx));
            links.insert((from, to), Link { blocked: tx });
        }
    }
    Ok(Wiring {
        net: Net::Proxy(links),
        peer_addrs,
        client_addrs,
        prefixes: BTreeMap::new(),
    })
}

// ----- processes ---------------------------------------------------------------------------

struct NodeProc {
    id: u64,
    /// Program and arguments the node's command runs under (`ip netns exec NS`), if any.
    prefix: Vec<String>,
    args: Vec<String>,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Started with `--join` (no membership of its own until the leader adds it): set once
    /// its data was wiped, so that a restart before it is added cannot bootstrap a cluster.
    join: bool,
}

impl NodeProc {
    fn start(&mut self, binary: &Path) -> std::io::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut command = match self.prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        // SAFETY: prctl(2) only, which is async-signal-safe, between fork and exec. The node
        // dies with the thread that started it (one of xtask's runtime threads, which live as
        // long as xtask), so a killed xtask leaves no node behind; `ip netns exec` execs the
        // node in place, and the setting survives exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .args(&self.args)
            .args(self.join.then_some("--join"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    fn signal(&mut self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on a pid we spawned and have not reaped; no memory is touched.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    fn kill(&mut self) {
        if self.paused {
            self.signal(libc::SIGCONT);
            self.paused = false;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// How the process ended, if it is not running (it was never started, was killed by us,
    /// or exited on its own).
    fn exited(&mut self) -> Option<String> {
        match &mut self.child {
            None => Some("not running".into()),
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(format!("unknown ({e})")),
            },
        }
    }
}

/// Every process the run started; killed on drop, also when the run fails or panics.
struct Processes(Vec<NodeProc>);

impl Drop for Processes {
    fn drop(&mut self) {
        for node in &mut self.0 {
            node.kill();
        }
    }
}

// ----- history -----------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Outcome {
    Ok,
    /// Definitely had no effect (a read that failed).
    Failed,
    /// The client never learned the outcome.
    Unknown,
}

#[derive(Clone, Debug)]
struct Record {
    key: usize,
    op: RegisterOp,
    call_us: u64,
    return_us: Option<u64>,
    outcome: Outcome,
}

struct Shared {
    start: Instant,
    history: Mutex<Vec<Record>>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

fn key_name(key: usize) -> String {
    format!("chaos-{key}")
}

fn client_config(addrs: &[String], request_timeout_ms: u64) -> ClientConfig {
    let mut config = ClientConfig::new(addrs.iter().cloned());
    config.request_timeout_ms = request_timeout_ms;
    config.attempt_timeout_ms = request_timeout_ms.min(1000);
    config.connect_timeout_ms = 300;
    config
}

async fn client_loop(
    id: usize,
    addrs: Vec<String>,
    keys: usize,
    seed: u64,
    deadline: Instant,
    shared: Arc<Shared>,
) {
    let client = Client::new(client_config(&addrs, 2000));
    let mut rng = SplitMix64::new(seed ^ ((id as u64 + 1) << 40));
    let mut last_seen: BTreeMap<usize, Option<String>> = BTreeMap::new();
    for n in 0..OPS_PER_CLIENT_MAX {
        if Instant::now() >= deadline {
            break;
        }
        let key = rng.range(0, keys as u64) as usize;
        let name = key_name(key);
        let value = format!("c{id}-{n}");
        let roll = rng.range(0, 100);
        let call_us = shared.now_us();
        let record = if roll < 50 {
            match client.get(name.clone()).await {
                Ok(v) => {
                    let v = v.map(|b| String::from_utf8_lossy(&b).into_owned());
                    last_seen.insert(key, v.clone());
                    (RegisterOp::Read(v), Outcome::Ok)
                }
                Err(_) => (RegisterOp::Read(None), Outcome::Failed),
            }
        } else if roll < 85 {
            let op = RegisterOp::Write(value.clone());
            match client.set(name.clone(), value.clone()).await {
                Ok(()) => (op, Outcome::Ok),
                Err(_) => (op, Outcome::Unknown),
            }
        } else {
            let expected = last_seen.get(&key).cloned().flatten();
            let result = client
                .compare_and_set(
                    name.clone(),
                    expected.clone().map(Into::into),
                    Some(value.clone().into()),
                )
                .await;
            match result {
                Ok((swapped, current)) => {
                    last_seen.insert(
                        key,
                        current.map(|b| String::from_utf8_lossy(&b).into_owned()),
                    );
                    (
                        RegisterOp::Cas {
                            expected,
                            new: Some(value),
                            swapped: Some(swapped),
                        },
                        Outcome::Ok,
                    )
                }
                Err(_) => (
                    RegisterOp::Cas {
                        expected,
                        new: Some(value),
                        swapped: None,
                    },
                    Outcome::Unknown,
                ),
            }
        };
        let return_us = shared.now_us();
        shared.history.lock().await.push(Record {
            key,
            op: record.0,
            call_us,
            return_us: Some(return_us),
            outcome: record.1,
        });
        tokio::time::sleep(Duration::from_millis(rng.range(1, 10))).await;
    }
}

// ----- faults ------------------------------------------------------------------------------

/// Applies one fault and undoes it after its hold. Returns whether it was applied (a fault
/// that cannot be, like a one-way cut from a node to itself, is skipped).
async fn inject(
    cluster: &mut Cluster,
    fault: &Fault,
    at_ms: u128,
    timeline: &mut Vec<String>,
) -> Result<bool, String> {
    let hold = |ms: u64| Duration::from_millis(ms);
    match fault {
        Fault::Kill { target, hold_ms } => {
            let target = cluster.resolve(target).await;
            timeline.push(format!(
                "{at_ms} ms: SIGKILL node {target}, restart after {hold_ms} ms"
            ));
            cluster.node(target).kill();
            tokio::time::sleep(hold(*hold_ms)).await;
            let binary = cluster.binary.clone();
            cluster
                .node(target)
                .start(&binary)
                .map_err(|e| format!("restarting node {target}: {e}"))?;
        }
        Fault::Pause { target, hold_ms } => {
            let target = cluster.resolve(target).await;
            timeline.push(format!(
                "{at_ms} ms: SIGSTOP node {target} for {hold_ms} ms"
            ));
            cluster.node(target).signal(libc::SIGSTOP);
            cluster.node(target).paused = true;
            tokio::time::sleep(hold(*hold_ms)).await;
            cluster.node(target).signal(libc::SIGCONT);
            cluster.node(target).paused = false;
        }
        Fault::Isolate { target, hold_ms } => {
            let target = cluster.resolve(target).await;
            timeline.push(format!(
                "{at_ms} ms: isolate node {target} for {hold_ms} ms"
            ));
            for other in cluster.ids() {
                if other != target {
                    cluster.set_link(target, other, true)?;
                    cluster.set_link(other, target, true)?;
                }
            }
            tokio::time::sleep(hold(*hold_ms)).await;
            cluster.heal_links()?;
        }
        Fault::Split { minority, hold_ms } => {
            timeline.push(format!(
                "{at_ms} ms: split {minority:?} from the rest for {hold_ms} ms"
            ));
            let ids = cluster.ids();
            for &a in &ids {
                for &b in &ids {
                    if minority.contains(&a) != minority.contains(&b) {
                        cluster.set_link(a, b, true)?;
                    }
                }
            }
            tokio::time::sleep(hold(*hold_ms)).await;
            cluster.heal_links()?;
        }
        Fault::OneWay { from, to, hold_ms } => {
            let from = cluster.resolve(from).await;
            if from == *to {
                return Ok(false);
            }
            timeline.push(format!(
                "{at_ms} ms: cut {from} -> {to} one way for {hold_ms} ms"
            ));
            cluster.set_link(from, *to, true)?;
            tokio::time::sleep(hold(*hold_ms)).await;
            cluster.heal_links()?;
        }
        Fault::Bridge {
            through,
            sides,
            hold_ms,
        } => {
            let through = cluster.resolve(through).await;
            timeline.push(format!(
                "{at_ms} ms: bridge through node {through} for {hold_ms} ms"
            ));
            let ids = cluster.ids();
            for (i, &a) in ids.iter().enumerate() {
                for (j, &b) in ids.iter().enumerate() {
                    if sides[i] != sides[j] && a != through && b != through {
                        cluster.set_link(a, b, true)?;
                    }
                }
            }
            tokio::time::sleep(hold(*hold_ms)).await;
            cluster.heal_links()?;
        }
        Fault::Lossy { hold_ms, seed } => {
            // Message loss: links drop their connections (and whatever was in flight on
            // them) at random moments; raft-net reconnects, Raft retransmits.
            let mut rng = SplitMix64::new(*seed);
            let until = Instant::now() + hold(*hold_ms);
            match &mut cluster.net {
                Net::Netns(net) => {
                    // Packet loss proper: iptables' statistic match drops peer packets.
                    let percent = rng.range(5, 30);
                    timeline.push(format!(
                        "{at_ms} ms: lossy links ({percent}% of peer packets dropped) for {hold_ms} ms"
                    ));
                    net.set_loss(percent)?;
                    tokio::time::sleep_until(until.into()).await;
                }
                Net::Proxy(links) => {
                    timeline.push(format!("{at_ms} ms: lossy links for {hold_ms} ms"));
                    let keys: Vec<(u64, u64)> = links.keys().copied().collect();
                    while Instant::now() < until {
                        let link = keys[rng.range(0, keys.len() as u64) as usize];
                        cluster.set_link(link.0, link.1, true)?;
                        tokio::time::sleep(Duration::from_millis(rng.range(10, 60))).await;
                        cluster.set_link(link.0, link.1, false)?;
                        tokio::time::sleep(Duration::from_millis(rng.range(10, 100))).await;
                    }
                }
            }
            cluster.heal_links()?;
        }
        Fault::Transfer { to } => {
            timeline.push(format!("{at_ms} ms: transfer leadership to node {to}"));
            let client = Client::new(client_config(&cluster.client_addrs, 2000));
            let _ = client.transfer_leader(*to).await;
        }
        Fault::RemoveReadd { target, hold_ms } => {
            return membership_fault(cluster, target, *hold_ms, false, at_ms, timeline).await;
        }
        Fault::Replace { target, hold_ms } => {
            return membership_fault(cluster, target, *hold_ms, true, at_ms, timeline).await;
        }
        Fault::DiskFull { hold_ms } => {
            let Some(id) = cluster.disk.as_ref().map(|(id, _)| *id) else {
                let why = cluster
                    .disk_skipped
                    .as_deref()
                    .unwrap_or("no small file system");
                timeline.push(format!("{at_ms} ms: disk full skipped: {why}"));
                return Ok(false);
            };
            let log_path = cluster.node(id).log_path.clone();
            let enospc_before = count_in_file(&log_path, ENOSPC_TEXT);
            let (_, fs) = cluster.disk.as_ref().expect("checked above");
            let bytes = fs.fill()?;
            timeline.push(format!(
                "{at_ms} ms: disk of node {id} full ({} KiB of ballast) for {hold_ms} ms",
                bytes / 1024
            ));
            tokio::time::sleep(hold(*hold_ms)).await;
            fs.free()?;
            let enospc = count_in_file(&log_path, ENOSPC_TEXT).saturating_sub(enospc_before);
            timeline.push(format!(
                "  space back; node {id} logged {enospc} \"{ENOSPC_TEXT}\" errors meanwhile"
            ));
            if let Some(how) = cluster.node(id).exited() {
                timeline.push(format!(
                    "  node {id} stopped on the full disk ({how}); restarted with the space back"
                ));
                let binary = cluster.binary.clone();
                cluster
                    .node(id)
                    .start(&binary)
                    .map_err(|e| format!("restarting node {id}: {e}"))?;
            }
        }
    }
    Ok(true)
}

/// How the OS words ENOSPC in the node's log.
const ENOSPC_TEXT: &str = "No space left on device";

/// Lines of a file that contain `needle` (0 if it cannot be read).
fn count_in_file(path: &Path, needle: &str) -> usize {
    std::fs::read(path)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .filter(|l| l.contains(needle))
                .count()
        })
        .unwrap_or(0)
}

/// Removes a voter, holds, then adds it back as a learner and promotes it. With `wipe`, the
/// node is also stopped and restarted empty with `--join` while it is out: a replaced machine
/// under the same ID (safe once its removal is in force: it has no vote to forget).
async fn membership_fault(
    cluster: &mut Cluster,
    target: &Target,
    hold_ms: u64,
    wipe: bool,
    at_ms: u128,
    timeline: &mut Vec<String>,
) -> Result<bool, String> {
    // At most one node out at a time: a node left out by an earlier fault goes back first.
    let missing = cluster.restore_membership().await;
    if !missing.is_empty() {
        timeline.push(format!(
            "{at_ms} ms: membership change skipped: nodes {missing:?} could not be made voters again"
        ));
        return Ok(false);
    }
    let target = cluster.resolve(target).await;
    let what = if wipe {
        "replace (remove, wipe, rejoin empty)"
    } else {
        "remove and re-add"
    };
    timeline.push(format!(
        "{at_ms} ms: {what} node {target}, out for {hold_ms} ms"
    ));
    let started = Instant::now();
    if let Err(e) = cluster.remove_member(target).await {
        timeline.push(format!("  removal not in force: {e}"));
    } else {
        timeline.push(format!(
            "  removed after {} ms",
            started.elapsed().as_millis()
        ));
        if wipe {
            cluster.node(target).kill();
            cluster.wipe(target)?;
            cluster.node(target).join = true;
            let binary = cluster.binary.clone();
            cluster
                .node(target)
                .start(&binary)
                .map_err(|e| format!("restarting node {target}: {e}"))?;
        }
    }
    tokio::time::sleep(Duration::from_millis(hold_ms)).await;
    let back = Instant::now();
    let missing = cluster.restore_membership().await;
    if missing.is_empty() {
        timeline.push(format!(
            "  node {target} a voter again after {} ms",
            back.elapsed().as_millis()
        ));
    } else {
        timeline.push(format!(
            "  nodes {missing:?} not voters again after {} ms",
            back.elapsed().as_millis()
        ));
    }
    Ok(true)
}

// ----- the run -----------------------------------------------------------------------------

/// Fields drop in order: the processes die before the file system under one of them goes.
struct Cluster {
    binary: PathBuf,
    procs: Processes,
    /// Node `id`'s client address is `client_addrs[id - 1]`.
    client_addrs: Vec<String>,
    net: Net,
    /// The node whose data directory is a small tmpfs, with the mount.
    disk: Option<(u64, disk::Tmpfs)>,
    /// Why there is no small file system, when there is none.
    disk_skipped: Option<String>,
}

impl Cluster {
    fn ids(&self) -> Vec<u64> {
        self.procs.0.iter().map(|p| p.id).collect()
    }

    fn node(&mut self, id: u64) -> &mut NodeProc {
        self.procs
            .0
            .iter_mut()
            .find(|p| p.id == id)
            .expect("known node")
    }

    fn set_link(&mut self, from: u64, to: u64, blocked: bool) -> Result<(), String> {
        match &mut self.net {
            Net::Netns(net) => net.set_link(from, to, blocked),
            Net::Proxy(links) => {
                if let Some(link) = links.get(&(from, to)) {
                    link.blocked.send_replace(blocked);
                }
                Ok(())
            }
        }
    }

    fn heal_links(&mut self) -> Result<(), String> {
        match &mut self.net {
            Net::Netns(net) => net.heal(),
            Net::Proxy(links) => {
                for link in links.values() {
                    link.blocked.send_replace(false);
                }
                Ok(())
            }
        }
    }

    async fn leader(&self) -> Option<u64> {
        for addr in &self.client_addrs {
            let client = Client::new(client_config(std::slice::from_ref(addr), 500));
            if let Ok(Ok(status)) =
                tokio::time::timeout(Duration::from_millis(600), client.status()).await
            {
                if status.role == "Leader" {
                    return Some(status.id);
                }
                if let Some(l) = status.leader {
                    return Some(l);
                }
            }
        }
        None
    }

    /// The node a fault aims at: the leader of the moment when asked for and known.
    async fn resolve(&self, target: &Target) -> u64 {
        if target.leader {
            if let Some(l) = self.leader().await {
                return l;
            }
        }
        target.node
    }

    /// One node's own status, asked of that node alone.
    async fn node_status(&self, id: u64) -> Option<NodeStatus> {
        let addr = &self.client_addrs[id as usize - 1];
        let client = Client::new(client_config(std::slice::from_ref(addr), 500));
        match tokio::time::timeout(Duration::from_millis(600), client.status()).await {
            Ok(Ok(status)) if status.id == id => Some(status),
            _ => None,
        }
    }

    /// The status of the node that says it leads in the highest term: its configuration is
    /// the one in force.
    async fn leader_status(&self) -> Option<NodeStatus> {
        let mut best: Option<NodeStatus> = None;
        for id in self.ids() {
            if let Some(status) = self.node_status(id).await {
                if status.role == "Leader" && best.as_ref().is_none_or(|b| status.term > b.term) {
                    best = Some(status);
                }
            }
        }
        best
    }

    /// Proposes the removal of `id` until the leader's configuration shows it (a proposal can
    /// be refused as busy, or lost with a leader that steps down before committing it).
    async fn remove_member(&self, id: u64) -> Result<(), String> {
        let until = Instant::now() + MEMBERSHIP_CHANGE_WAIT_MAX;
        let client = Client::new(client_config(&self.client_addrs, 2000));
        let mut last_error = String::from("no leader seen");
        while Instant::now() < until {
            if let Some(status) = self.leader_status().await {
                if !status.voters.contains(&id) && !status.learners.contains(&id) {
                    return Ok(());
                }
                if let Err(e) = client.remove_node(id).await {
                    last_error = e.to_string();
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(format!(
            "removal of {id} not in force after {} s (last error: {last_error})",
            MEMBERSHIP_CHANGE_WAIT_MAX.as_secs()
        ))
    }

    /// Makes every node a voter again: a missing node is added as a learner, and promoted once
    /// it has caught up (or has had its time). Returns the nodes still not voters at the end.
    async fn restore_membership(&self) -> Vec<u64> {
        let until = Instant::now() + MEMBERSHIP_RESTORE_WAIT_MAX;
        let client = Client::new(client_config(&self.client_addrs, 2000));
        let mut learner_since: BTreeMap<u64, Instant> = BTreeMap::new();
        let mut missing = self.ids();
        while Instant::now() < until {
            let Some(leader) = self.leader_status().await else {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            };
            missing = self
                .ids()
                .into_iter()
                .filter(|id| !leader.voters.contains(id))
                .collect();
            if missing.is_empty() {
                return missing;
            }
            for &id in &missing {
                if !leader.learners.contains(&id) {
                    let _ = client.add_learner(id).await;
                    continue;
                }
                let since = *learner_since.entry(id).or_insert_with(Instant::now);
                let caught_up = self.node_status(id).await.is_some_and(|s| {
                    s.applied_index + LEARNER_CATCH_UP_ENTRIES >= leader.commit_index
                });
                if caught_up || since.elapsed() >= LEARNER_CATCH_UP_WAIT_MAX {
                    let _ = client.promote(id).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        missing
    }

    /// Restarts every process that is not running (a node that stopped itself, say on a
    /// storage error); says which in the timeline.
    fn restart_exited(&mut self, at: &str, timeline: &mut Vec<String>) -> Result<(), String> {
        for id in self.ids() {
            let node = self.node(id);
            if let Some(how) = node.exited() {
                timeline.push(format!("{at}: node {id} had stopped ({how}); restarted"));
                let binary = self.binary.clone();
                self.node(id)
                    .start(&binary)
                    .map_err(|e| format!("restarting node {id}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Empties a node's data directory (the node must be stopped).
    fn wipe(&mut self, id: u64) -> Result<(), String> {
        if let Some((disk_id, fs)) = &self.disk {
            if *disk_id == id {
                return fs.wipe();
            }
        }
        let dir = self.node(id).data_dir.clone();
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: {e}", dir.display())),
        }
    }
}

async fn run(args: Args) -> Result<bool, String> {
    let root = workspace_root();
    let binary = root.join("target/release/raft-node");
    if !binary.exists() {
        return Err(format!(
            "{} not found (run without --no-build)",
            binary.display()
        ));
    }
    let run_dir = root.join(format!("target/chaos/seed-{}", args.seed));
    // Two runs of one seed would share the folder (and wipe each other's nodes): the second
    // is refused while the first holds the lock.
    let _seed_lock = lock_seed(&run_dir)?;
    disk::unmount_stale(&run_dir);
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;

    let ids: Vec<u64> = (1..=args.nodes).collect();
    let wiring = wire(args.net, &ids).await?;
    let mut timeline: Vec<String> = Vec::new();
    timeline.push(format!("network: {}", wiring.net.describe()));
    let plan = schedule::plan(args.seed, args.nodes, args.duration.as_millis() as u64);
    let mut procs = Vec::new();
    for &id in &ids {
        let data_dir = run_dir.join(format!("node-{id}"));
        let mut node_args = vec![
            "run".to_string(),
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--snapshot-entries-max".into(),
            "2000".into(),
            // A new cluster of several members shares one ID (one per seed).
            "--cluster-id".into(),
            format!("c4a05{:027x}", args.seed),
            // With network namespaces the nodes listen on 10.213.x.y, which protected mode
            // refuses without TLS and credentials; those addresses exist only inside this
            // run's bridge.
            "--insecure-allow-plaintext".into(),
        ];
        node_args.extend(args.node_args.iter().cloned());
        for &peer in &ids {
            node_args.push("--peer".into());
            node_args.push(format!(
                "{peer}={},{}",
                wiring.peer_addrs[&(id, peer)],
                wiring.client_addrs[&peer]
            ));
        }
        procs.push(NodeProc {
            id,
            prefix: wiring.prefixes.get(&id).cloned().unwrap_or_default(),
            args: node_args,
            data_dir,
            log_path: run_dir.join(format!("node-{id}.log")),
            child: None,
            paused: false,
            join: false,
        });
    }
    let disk_dir = run_dir.join(format!("node-{}", plan.disk_node));
    let (disk, disk_skipped) = match disk::Tmpfs::mount(&disk_dir) {
        Ok(fs) => {
            timeline.push(format!(
                "node {}'s data directory is a {} MiB tmpfs",
                plan.disk_node,
                disk::TMPFS_SIZE_MIB
            ));
            (Some((plan.disk_node, fs)), None)
        }
        Err(e) => {
            let why = format!("no small file system for node {}: {e}", plan.disk_node);
            println!("xtask chaos: the full-disk fault is skipped ({why})");
            timeline.push(why.clone());
            (None, Some(why))
        }
    };
    let mut cluster = Cluster {
        binary,
        procs: Processes(procs),
        client_addrs: wiring
            .client_addrs
            .values()
            .map(|a| a.to_string())
            .collect(),
        net: wiring.net,
        disk,
        disk_skipped,
    };
    for id in cluster.ids() {
        let binary = cluster.binary.clone();
        cluster
            .node(id)
            .start(&binary)
            .map_err(|e| format!("starting node {id}: {e}"))?;
    }
    let wait_start = Instant::now();
    while cluster.leader().await.is_none() {
        if wait_start.elapsed() > Duration::from_secs(20) {
            return Err("no leader within 20 s of starting the cluster".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let shared = Arc::new(Shared {
        start: Instant::now(),
        history: Mutex::new(Vec::new()),
    });
    let deadline = Instant::now() + args.duration;
    let mut clients = Vec::new();
    for c in 0..args.clients {
        clients.push(tokio::spawn(client_loop(
            c,
            cluster.client_addrs.clone(),
            args.keys,
            args.seed,
            deadline,
            shared.clone(),
        )));
    }

    let mut faults = 0u64;
    let mut faults_by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    for step in &plan.steps {
        if Instant::now() + Duration::from_millis(step.gap_ms) + Duration::from_secs(3) >= deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(step.gap_ms)).await;
        let at_ms = shared.start.elapsed().as_millis();
        if inject(&mut cluster, &step.fault, at_ms, &mut timeline).await? {
            faults += 1;
            *faults_by_kind.entry(step.fault.kind()).or_default() += 1;
        }
        // A process that stopped on its own (not by a fault of ours) comes back, noted.
        cluster.restart_exited(&format!("after the fault at {at_ms} ms"), &mut timeline)?;
    }

    for handle in clients {
        let _ = handle.await;
    }
    // Heal: every link open, every process running, every node a voter, then wait for the
    // replicas to converge.
    cluster.heal_links()?;
    for id in cluster.ids() {
        let node = cluster.node(id);
        if node.paused {
            node.signal(libc::SIGCONT);
            node.paused = false;
        }
    }
    cluster.restart_exited("healing", &mut timeline)?;
    let not_voters = cluster.restore_membership().await;
    // Only members replicate: a node that could not be added back is left out of the
    // comparison (and the run fails as not converged).
    let members: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| !not_voters.contains(id))
        .collect();
    if !not_voters.is_empty() {
        timeline.push(format!(
            "healing: nodes {not_voters:?} could not be made voters again within {} s",
            MEMBERSHIP_RESTORE_WAIT_MAX.as_secs()
        ));
    }
    let heal_start = Instant::now();
    let mut converged = false;
    while heal_start.elapsed() < HEAL_WAIT_MAX {
        if let Some(states) = replica_states(&cluster, &members, args.keys).await {
            if states.windows(2).all(|w| w[0] == w[1]) {
                converged = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Final linearizable reads of every key join the history.
    let reader = Client::new(client_config(&cluster.client_addrs, 5000));
    let mut final_values = BTreeMap::new();
    for key in 0..args.keys {
        let call_us = shared.now_us();
        let result = reader.get(key_name(key)).await;
        let return_us = shared.now_us();
        let mut history = shared.history.lock().await;
        match result {
            Ok(v) => {
                let v = v.map(|b| String::from_utf8_lossy(&b).into_owned());
                final_values.insert(key, v.clone());
                history.push(Record {
                    key,
                    op: RegisterOp::Read(v),
                    call_us,
                    return_us: Some(return_us),
                    outcome: Outcome::Ok,
                });
            }
            Err(e) => timeline.push(format!("final read of key {key} failed: {e}")),
        }
    }
    let diverged = match replica_states(&cluster, &members, args.keys).await {
        Some(states) => states.iter().filter(|s| **s != states[0]).count(),
        None => members.len(),
    };
    let converged = converged && not_voters.is_empty();

    let history = shared.history.lock().await.clone();
    let (ok, failed, unknown) = history
        .iter()
        .fold((0, 0, 0), |(o, f, u), r| match r.outcome {
            Outcome::Ok => (o + 1, f, u),
            Outcome::Failed => (o, f + 1, u),
            Outcome::Unknown => (o, f, u + 1),
        });
    let mut linearizable = true;
    let mut inconclusive = false;
    let mut lost = 0;
    for key in 0..args.keys {
        let ops: Vec<Timed> = history
            .iter()
            .filter(|r| r.key == key && !matches!(r.outcome, Outcome::Failed))
            .map(|r| Timed {
                op: r.op.clone(),
                call_us: r.call_us,
                return_us: match r.outcome {
                    Outcome::Unknown => None,
                    _ => r.return_us,
                },
            })
            .collect();
        match check(&ops, CHECK_STEPS_MAX) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable => linearizable = false,
            Verdict::Inconclusive => inconclusive = true,
        }
        lost += lost_writes(&history, key, final_values.get(&key));
    }
    let line = format!(
        "chaos: ops={} ok={ok} failed={failed} unknown={unknown} faults={faults} linearizable={} lost={lost} diverged={diverged}",
        history.len(),
        linearizable && !inconclusive,
    );
    let passed = linearizable && !inconclusive && lost == 0 && diverged == 0 && converged;
    write_report(&run_dir, &history, &timeline).map_err(|e| format!("writing the report: {e}"))?;
    for t in &timeline {
        println!("  {t}");
    }
    if inconclusive {
        println!("the linearizability search gave up on a key after {CHECK_STEPS_MAX} steps");
    }
    if !converged {
        println!(
            "the replicas did not converge within {} s of healing",
            HEAL_WAIT_MAX.as_secs()
        );
    }
    let kinds: Vec<String> = faults_by_kind
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    println!("faults by kind: {}", kinds.join(" "));
    // A node that panicked is a bug even when the history checks out: say so, and keep the
    // logs (the exit status still follows the checks).
    let mut panics = 0;
    for id in cluster.ids() {
        let log_path = cluster.node(id).log_path.clone();
        let text = std::fs::read(&log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.contains("panicked at") {
                panics += 1;
                let message = lines.next().unwrap_or("");
                println!("node {id} panicked: {} {message}", line.trim());
            }
        }
    }
    let keep = !passed || panics > 0;
    if keep {
        if let Some((id, fs)) = &cluster.disk {
            // The tmpfs goes with the run: keep a copy of what the node had on it.
            let copy = run_dir.join(format!("node-{id}-tmpfs-copy"));
            let saved = std::fs::create_dir_all(&copy)
                .map_err(|e| e.to_string())
                .and_then(|()| fs.copy_to(&copy));
            if let Err(e) = saved {
                println!("could not copy node {id}'s tmpfs: {e}");
            }
        }
        println!(
            "history, fault timeline and node logs: {}",
            run_dir.display()
        );
        let net = match args.net {
            NetMode::Auto => "",
            NetMode::Proxy => " --net proxy",
            NetMode::Netns => " --net netns",
        };
        let extra: String = args
            .node_args
            .iter()
            .map(|a| format!(" --node-arg {a}"))
            .collect();
        println!(
            "replay the schedule: cargo xtask chaos --nodes {} --duration {}s --seed {}{net}{extra}",
            args.nodes,
            args.duration.as_secs(),
            args.seed
        );
    }
    println!("{line}");
    drop(cluster);
    if !keep {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(passed)
}

/// Takes `<run_dir>.lock` for the life of the returned file.
fn lock_seed(run_dir: &Path) -> Result<File, String> {
    use std::os::fd::AsRawFd;
    let path = run_dir.with_extension("lock");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own; the lock goes when the file is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "another run of this seed is using {} (lock {})",
            run_dir.display(),
            path.display()
        ));
    }
    Ok(file)
}

/// Acknowledged writes of `key` that the final value contradicts: the final value was written
/// by an operation that completed before the acknowledged write began (values are unique), or
/// the key is absent although a write was acknowledged.
fn lost_writes(history: &[Record], key: usize, final_value: Option<&Option<String>>) -> usize {
    let Some(final_value) = final_value else {
        return 0;
    };
    let writer_return = |value: &str| {
        history.iter().find(|r| {
            r.key == key
                && match &r.op {
                    RegisterOp::Write(v) => v == value,
                    RegisterOp::Cas { new: Some(v), .. } => v == value,
                    _ => false,
                }
        })
    };
    let acked = history.iter().filter(|r| {
        r.key == key && matches!(r.outcome, Outcome::Ok) && matches!(r.op, RegisterOp::Write(_))
    });
    match final_value {
        None => acked.count(),
        Some(v) => match writer_return(v) {
            Some(writer) => acked
                .filter(|w| {
                    matches!(writer.outcome, Outcome::Ok)
                        && writer.return_us.is_some_and(|t| t < w.call_us)
                })
                .count(),
            None => 1,
        },
    }
}

/// Every node's local copy of every key (stale reads, one node at a time); `None` if a node
/// did not answer.
async fn replica_states(
    cluster: &Cluster,
    members: &[u64],
    keys: usize,
) -> Option<Vec<Vec<Option<Vec<u8>>>>> {
    let mut states = Vec::new();
    for &id in members {
        let addr = &cluster.client_addrs[id as usize - 1];
        let client = Client::new(client_config(std::slice::from_ref(addr), 1000));
        let mut values = Vec::new();
        for key in 0..keys {
            let v =
                tokio::time::timeout(Duration::from_millis(1500), client.get_stale(key_name(key)))
                    .await
                    .ok()?
                    .ok()?;
            values.push(v.map(|b| b.to_vec()));
        }
        states.push(values);
    }
    Some(states)
}

fn write_report(dir: &Path, history: &[Record], timeline: &[String]) -> std::io::Result<()> {
    use std::io::Write;
    let mut h = File::create(dir.join("history.txt"))?;
    for r in history {
        writeln!(
            h,
            "{} {:?} key={} {:?} {:?}",
            r.call_us, r.return_us, r.key, r.outcome, r.op
        )?;
    }
    std::fs::write(dir.join("faults.txt"), timeline.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(line: &str) -> Result<Args, String> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("chaos").chain(line.split_whitespace()))
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flags_parse_and_bad_ones_are_refused() {
        let a = parse(
            "--nodes 3 --duration 60s --seed 7 --net proxy --no-build --node-arg --storage=memory",
        )
        .unwrap();
        assert_eq!(a.node_args, ["--storage=memory"]);
        assert_eq!(
            (a.nodes, a.seed, a.net, a.no_build),
            (3, 7, NetMode::Proxy, true)
        );
        assert_eq!(a.duration, Duration::from_secs(60));
        assert_eq!(parse("").unwrap().net, NetMode::Auto);
        assert_eq!(parse("--net netns").unwrap().net, NetMode::Netns);
        assert!(parse("--net tc")
            .unwrap_err()
            .contains("[possible values: auto, proxy, netns]"));
        assert!(parse("--nodes 9").is_err());
        assert!(parse("--seed").unwrap_err().contains("a value is required"));
        assert!(parse("--clients 0").is_err());
        assert_eq!(
            parse("--duration 90").unwrap().duration,
            Duration::from_secs(90)
        );
        assert!(parse("--frobnicate").is_err());
    }

    #[test]
    fn a_second_run_of_a_seed_is_refused_while_the_first_holds_the_lock() {
        let dir = std::env::temp_dir().join(format!("chaos-lock-test-{}", std::process::id()));
        let run_dir = dir.join("seed-5");
        let first = lock_seed(&run_dir).unwrap();
        assert!(lock_seed(&run_dir)
            .unwrap_err()
            .contains("another run of this seed"));
        drop(first);
        let again = lock_seed(&run_dir);
        assert!(again.is_ok());
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
