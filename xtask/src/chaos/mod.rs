//! `cargo xtask chaos`: real `raft-node` processes, real disks and sockets, real crashes,
//! checked the way Jepsen checks databases.
//!
//! The tool starts a cluster on 127.0.0.1 whose peer links each pass through a proxy of ours
//! (one per direction and pair, so a link can be cut one way), runs concurrent clients doing
//! reads, writes and compare-and-set on a few keys, and injects faults on a schedule drawn from
//! the seed: SIGKILL and restart, SIGSTOP and SIGCONT, an isolated node, a minority/majority
//! split, a one-way cut, a bridge, lossy links (connections dropped at random, with what
//! was in flight on them), and leadership transfers. Every operation's invocation and
//! completion is recorded; at the end the faults heal, the history (with a final read of every
//! key) is checked for linearizability per key, acknowledged writes are checked against the
//! final state, and every replica's copy of every key is compared.

mod linearizability;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_client::{Client, ClientConfig};
use raft_core::rng::SplitMix64;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex};

use linearizability::{check, RegisterOp, Timed, Verdict};

/// Search steps allowed per key before the checker gives up.
const CHECK_STEPS_MAX: u64 = 20_000_000;
/// Operations per client at most, whatever the duration.
const OPS_PER_CLIENT_MAX: u64 = 50_000;
/// How long the cluster gets to converge after the faults heal.
const HEAL_WAIT_MAX: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
struct Args {
    nodes: u64,
    duration: Duration,
    seed: u64,
    clients: usize,
    keys: usize,
    build: bool,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut parsed = Args {
        nodes: 5,
        duration: Duration::from_secs(60),
        seed: 1,
        clients: 4,
        keys: 4,
        build: true,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => parsed.nodes = value()?.parse().map_err(|e| format!("--nodes: {e}"))?,
            "--seed" => parsed.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--clients" => {
                parsed.clients = value()?.parse().map_err(|e| format!("--clients: {e}"))?
            }
            "--keys" => parsed.keys = value()?.parse().map_err(|e| format!("--keys: {e}"))?,
            "--duration" => {
                let v = value()?;
                let secs: u64 = v
                    .strip_suffix('s')
                    .unwrap_or(v)
                    .parse()
                    .map_err(|e| format!("--duration {v}: {e} (give seconds, like 60s)"))?;
                parsed.duration = Duration::from_secs(secs);
            }
            "--no-build" => parsed.build = false,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !(3..=7).contains(&parsed.nodes) {
        return Err("--nodes must be 3 to 7".into());
    }
    if parsed.clients == 0 || parsed.keys == 0 {
        return Err("--clients and --keys must be at least 1".into());
    }
    Ok(parsed)
}

/// Entry point of `cargo xtask chaos`.
pub fn main(args: &[String]) -> ExitCode {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("xtask chaos: {e}");
            eprintln!("usage: cargo xtask chaos [--nodes 5] [--duration 60s] [--seed S] [--clients 4] [--keys 4] [--no-build]");
            return ExitCode::from(2);
        }
    };
    if args.build {
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
    match runtime.block_on(run(args)) {
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

// ----- processes ---------------------------------------------------------------------------

struct NodeProc {
    id: u64,
    args: Vec<String>,
    log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl NodeProc {
    fn start(&mut self, binary: &Path) -> std::io::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new(binary)
            .args(&self.args)
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

// ----- the run -----------------------------------------------------------------------------

struct Cluster {
    binary: PathBuf,
    procs: Processes,
    client_addrs: Vec<String>,
    /// links[(from, to)]
    links: BTreeMap<(u64, u64), Link>,
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

    fn set_link(&self, from: u64, to: u64, blocked: bool) {
        if let Some(link) = self.links.get(&(from, to)) {
            link.blocked.send_replace(blocked);
        }
    }

    fn heal_links(&self) {
        for link in self.links.values() {
            link.blocked.send_replace(false);
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
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;

    let ids: Vec<u64> = (1..=args.nodes).collect();
    let mut peer_addrs = BTreeMap::new();
    let mut client_addrs = BTreeMap::new();
    for &id in &ids {
        peer_addrs.insert(id, free_port().map_err(|e| e.to_string())?);
        client_addrs.insert(id, free_port().map_err(|e| e.to_string())?);
    }
    let mut links = BTreeMap::new();
    let mut proxy_addrs = BTreeMap::new();
    for &from in &ids {
        for &to in &ids {
            if from == to {
                continue;
            }
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            proxy_addrs.insert(
                (from, to),
                listener.local_addr().map_err(|e| e.to_string())?,
            );
            let (tx, rx) = watch::channel(false);
            tokio::spawn(run_proxy(listener, peer_addrs[&to], rx));
            links.insert((from, to), Link { blocked: tx });
        }
    }
    let mut procs = Vec::new();
    for &id in &ids {
        let mut node_args = vec![
            "run".to_string(),
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            run_dir.join(format!("node-{id}")).display().to_string(),
            "--snapshot-entries-max".into(),
            "2000".into(),
        ];
        for &peer in &ids {
            let addr = if peer == id {
                peer_addrs[&id]
            } else {
                proxy_addrs[&(id, peer)]
            };
            node_args.push("--peer".into());
            node_args.push(format!("{peer}={addr},{}", client_addrs[&peer]));
        }
        procs.push(NodeProc {
            id,
            args: node_args,
            log_path: run_dir.join(format!("node-{id}.log")),
            child: None,
            paused: false,
        });
    }
    let mut cluster = Cluster {
        binary,
        procs: Processes(procs),
        client_addrs: client_addrs.values().map(|a| a.to_string()).collect(),
        links,
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

    let mut timeline: Vec<String> = Vec::new();
    let mut rng = SplitMix64::new(args.seed);
    let mut faults = 0u64;
    while Instant::now() + Duration::from_secs(3) < deadline {
        tokio::time::sleep(Duration::from_millis(rng.range(500, 2000))).await;
        let at_ms = shared.start.elapsed().as_millis();
        let ids = cluster.ids();
        let pick = |rng: &mut SplitMix64| ids[rng.range(0, ids.len() as u64) as usize];
        let leader = cluster.leader().await;
        let target = match leader {
            Some(l) if rng.chance(0.5) => l,
            _ => pick(&mut rng),
        };
        let hold = Duration::from_millis(rng.range(1000, 4000));
        faults += 1;
        match rng.range(0, 8) {
            0 => {
                timeline.push(format!(
                    "{at_ms} ms: SIGKILL node {target}, restart after {} ms",
                    hold.as_millis()
                ));
                cluster.node(target).kill();
                tokio::time::sleep(hold).await;
                let binary = cluster.binary.clone();
                cluster
                    .node(target)
                    .start(&binary)
                    .map_err(|e| format!("restarting node {target}: {e}"))?;
            }
            1 => {
                timeline.push(format!(
                    "{at_ms} ms: SIGSTOP node {target} for {} ms",
                    hold.as_millis()
                ));
                cluster.node(target).signal(libc::SIGSTOP);
                cluster.node(target).paused = true;
                tokio::time::sleep(hold).await;
                cluster.node(target).signal(libc::SIGCONT);
                cluster.node(target).paused = false;
            }
            2 => {
                timeline.push(format!(
                    "{at_ms} ms: isolate node {target} for {} ms",
                    hold.as_millis()
                ));
                for other in cluster.ids() {
                    if other != target {
                        cluster.set_link(target, other, true);
                        cluster.set_link(other, target, true);
                    }
                }
                tokio::time::sleep(hold).await;
                cluster.heal_links();
            }
            3 => {
                let ids = cluster.ids();
                // A minority of 1 to n/2 nodes, drawn without repeats.
                let mut shuffled = ids.clone();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, rng.range(0, i as u64 + 1) as usize);
                }
                let size = rng.range(1, ids.len() as u64 / 2 + 1) as usize;
                let minority: Vec<u64> = shuffled[..size].to_vec();
                timeline.push(format!(
                    "{at_ms} ms: split {minority:?} from the rest for {} ms",
                    hold.as_millis()
                ));
                for &a in &ids {
                    for &b in &ids {
                        if minority.contains(&a) != minority.contains(&b) {
                            cluster.set_link(a, b, true);
                        }
                    }
                }
                tokio::time::sleep(hold).await;
                cluster.heal_links();
            }
            4 => {
                let other = pick(&mut rng);
                if other != target {
                    timeline.push(format!(
                        "{at_ms} ms: cut {target} -> {other} one way for {} ms",
                        hold.as_millis()
                    ));
                    cluster.set_link(target, other, true);
                    tokio::time::sleep(hold).await;
                    cluster.heal_links();
                }
            }
            5 => {
                let ids = cluster.ids();
                let side: Vec<bool> = ids.iter().map(|_| rng.chance(0.5)).collect();
                timeline.push(format!(
                    "{at_ms} ms: bridge through node {target} for {} ms",
                    hold.as_millis()
                ));
                for (i, &a) in ids.iter().enumerate() {
                    for (j, &b) in ids.iter().enumerate() {
                        if side[i] != side[j] && a != target && b != target {
                            cluster.set_link(a, b, true);
                        }
                    }
                }
                tokio::time::sleep(hold).await;
                cluster.heal_links();
            }
            6 => {
                // Message loss: links drop their connections (and whatever was in flight on
                // them) at random moments; raft-net reconnects, Raft retransmits.
                timeline.push(format!(
                    "{at_ms} ms: lossy links for {} ms",
                    hold.as_millis()
                ));
                let until = Instant::now() + hold;
                let keys: Vec<(u64, u64)> = cluster.links.keys().copied().collect();
                while Instant::now() < until {
                    let link = keys[rng.range(0, keys.len() as u64) as usize];
                    cluster.set_link(link.0, link.1, true);
                    tokio::time::sleep(Duration::from_millis(rng.range(10, 60))).await;
                    cluster.set_link(link.0, link.1, false);
                    tokio::time::sleep(Duration::from_millis(rng.range(10, 100))).await;
                }
                cluster.heal_links();
            }
            _ => {
                let to = pick(&mut rng);
                timeline.push(format!("{at_ms} ms: transfer leadership to node {to}"));
                let client = Client::new(client_config(&cluster.client_addrs, 2000));
                let _ = client.transfer_leader(to).await;
            }
        }
    }

    for handle in clients {
        let _ = handle.await;
    }
    // Heal: every link open, every process running, then wait for the replicas to converge.
    cluster.heal_links();
    for id in cluster.ids() {
        let node = cluster.node(id);
        if node.paused {
            node.signal(libc::SIGCONT);
            node.paused = false;
        }
        if node
            .child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
        {
            let binary = cluster.binary.clone();
            cluster
                .node(id)
                .start(&binary)
                .map_err(|e| format!("restarting node {id}: {e}"))?;
        }
    }
    let heal_start = Instant::now();
    let mut converged = false;
    while heal_start.elapsed() < HEAL_WAIT_MAX {
        if let Some(states) = replica_states(&cluster, args.keys).await {
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
    let diverged = match replica_states(&cluster, args.keys).await {
        Some(states) => states.iter().filter(|s| **s != states[0]).count(),
        None => cluster.ids().len(),
    };

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
    if !passed {
        println!(
            "history, fault timeline and node logs: {}",
            run_dir.display()
        );
        println!(
            "replay the schedule: cargo xtask chaos --nodes {} --duration {}s --seed {}",
            args.nodes,
            args.duration.as_secs(),
            args.seed
        );
    }
    println!("{line}");
    drop(cluster);
    if passed {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(passed)
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
async fn replica_states(cluster: &Cluster, keys: usize) -> Option<Vec<Vec<Option<Vec<u8>>>>> {
    let mut states = Vec::new();
    for addr in &cluster.client_addrs {
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
