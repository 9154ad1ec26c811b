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

mod args;
mod cluster;
mod disk;
mod faults;
mod history;
mod linearizability;
mod netns;
mod process;
mod proxy;
mod schedule;
mod wiring;
mod workload;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_client::Client;
use tokio::sync::Mutex;

pub(crate) use args::Args;
use args::NetMode;
use cluster::{Cluster, MEMBERSHIP_RESTORE_WAIT_MAX};
use faults::inject;
use history::{lost_writes, write_report, Outcome, Record, Shared};
use linearizability::{check, RegisterOp, Timed, Verdict};
use process::{NodeProc, Processes};
use wiring::wire;
use workload::{client_config, client_loop, key_name};

/// Search steps allowed per key before the checker gives up.
const CHECK_STEPS_MAX: u64 = 20_000_000;
/// How long the cluster gets to converge after the faults heal.
const HEAL_WAIT_MAX: Duration = Duration::from_secs(30);

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

#[cfg(test)]
mod tests {
    use super::*;

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
