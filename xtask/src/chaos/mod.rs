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

pub(crate) use args::Args;
use cluster::{Cluster, MEMBERSHIP_RESTORE_WAIT_MAX};
use faults::inject;
use history::{
    check_keys, write_report, KeyChecks, Outcome, OutcomeCounts, Record, Shared, CHECK_STEPS_MAX,
};
use linearizability::RegisterOp;
use process::NodeProc;
use wiring::{wire, Wiring};
use workload::{client_config, client_loop, key_name};

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

/// How long the cluster gets to elect its first leader.
const FIRST_LEADER_WAIT_MAX: Duration = Duration::from_secs(20);
/// No fault starts this close to the end of the faulty phase (its hold would outlast it).
const LAST_FAULT_MARGIN: Duration = Duration::from_secs(3);

/// The run, step by step: set up, start, load and fault, heal, check, report.
async fn run(args: Args) -> Result<bool, String> {
    let root = workspace_root();
    let binary = release_binary(&root)?;
    let run_dir = root.join(format!("target/chaos/seed-{}", args.seed));
    // Two runs of one seed would share the folder (and wipe each other's nodes): the second
    // is refused while the first holds the lock.
    let _seed_lock = lock_seed(&run_dir)?;
    fresh_run_dir(&run_dir)?;
    let plan = schedule::plan(args.seed, args.nodes, args.duration.as_millis() as u64);
    let mut timeline: Vec<String> = Vec::new();
    let mut cluster = start_cluster(&args, &plan, &binary, &run_dir, &mut timeline).await?;

    let shared = Arc::new(Shared::new());
    let deadline = Instant::now() + args.duration;
    let clients = spawn_clients(&args, &cluster, deadline, &shared);
    let faults = run_schedule(&mut cluster, &plan, deadline, &shared, &mut timeline).await?;
    for handle in clients {
        let _ = handle.await;
    }

    let healed = heal(&mut cluster, args.keys, &mut timeline).await?;
    let final_values = final_reads(&cluster, args.keys, &shared, &mut timeline).await;
    let diverged = match cluster.replica_states(&healed.members, args.keys).await {
        Some(states) => states.iter().filter(|s| **s != states[0]).count(),
        None => healed.members.len(),
    };
    let history = shared.history.lock().await.clone();
    let findings = Findings {
        counts: OutcomeCounts::of(&history),
        checks: check_keys(&history, args.keys, &final_values),
        faults,
        diverged,
        converged: healed.converged,
    };
    report(&args, &run_dir, cluster, &history, &timeline, &findings)?;
    Ok(findings.passed())
}

/// The release `raft-node` the run starts (built by [`main`] unless `--no-build`).
fn release_binary(root: &Path) -> Result<PathBuf, String> {
    let binary = root.join("target/release/raft-node");
    if !binary.exists() {
        return Err(format!(
            "{} not found (run without --no-build)",
            binary.display()
        ));
    }
    Ok(binary)
}

/// Empties the run's folder: mounts and files a previous run of the seed left go.
fn fresh_run_dir(run_dir: &Path) -> Result<(), String> {
    disk::unmount_stale(run_dir);
    let _ = std::fs::remove_dir_all(run_dir);
    std::fs::create_dir_all(run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))
}

/// Wires the nodes, mounts the small file system, starts every node and waits for a leader.
async fn start_cluster(
    args: &Args,
    plan: &schedule::Plan,
    binary: &Path,
    run_dir: &Path,
    timeline: &mut Vec<String>,
) -> Result<Cluster, String> {
    let ids: Vec<u64> = (1..=args.nodes).collect();
    let wiring = wire(args.net, &ids).await?;
    timeline.push(format!("network: {}", wiring.net.describe()));
    let procs = ids
        .iter()
        .map(|&id| {
            let data_dir = run_dir.join(format!("node-{id}"));
            NodeProc::new(
                id,
                binary,
                wiring.prefixes.get(&id).cloned().unwrap_or_default(),
                node_args(args, id, &data_dir, &ids, &wiring),
                data_dir,
                run_dir.join(format!("node-{id}.log")),
            )
        })
        .collect();
    let (disk, disk_skipped) = mount_small_disk(plan.disk_node, run_dir, timeline);
    let mut cluster = Cluster {
        procs,
        client_addrs: wiring
            .client_addrs
            .values()
            .map(|a| a.to_string())
            .collect(),
        net: wiring.net,
        disk,
        disk_skipped,
    };
    cluster.start_all()?;
    cluster.wait_leader(FIRST_LEADER_WAIT_MAX).await?;
    Ok(cluster)
}

/// Node `id`'s command line: its data, the cluster's ID, every peer as `id` dials it.
fn node_args(args: &Args, id: u64, data_dir: &Path, ids: &[u64], wiring: &Wiring) -> Vec<String> {
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
    for &peer in ids {
        node_args.push("--peer".into());
        node_args.push(format!(
            "{peer}={},{}",
            wiring.peer_addrs[&(id, peer)],
            wiring.client_addrs[&peer]
        ));
    }
    node_args
}

/// Mounts a small tmpfs as node `disk_node`'s data directory, for the full-disk fault; when
/// that is not possible, says why (the fault is then skipped).
fn mount_small_disk(
    disk_node: u64,
    run_dir: &Path,
    timeline: &mut Vec<String>,
) -> (Option<(u64, disk::Tmpfs)>, Option<String>) {
    match disk::Tmpfs::mount(&run_dir.join(format!("node-{disk_node}"))) {
        Ok(fs) => {
            timeline.push(format!(
                "node {disk_node}'s data directory is a {} MiB tmpfs",
                disk::TMPFS_SIZE_MIB
            ));
            (Some((disk_node, fs)), None)
        }
        Err(e) => {
            let why = format!("no small file system for node {disk_node}: {e}");
            println!("xtask chaos: the full-disk fault is skipped ({why})");
            timeline.push(why.clone());
            (None, Some(why))
        }
    }
}

/// Starts the concurrent clients; each stops at `deadline`.
fn spawn_clients(
    args: &Args,
    cluster: &Cluster,
    deadline: Instant,
    shared: &Arc<Shared>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..args.clients)
        .map(|c| {
            tokio::spawn(client_loop(
                c,
                cluster.client_addrs.clone(),
                args.keys,
                args.seed,
                deadline,
                shared.clone(),
            ))
        })
        .collect()
}

/// The faults applied, in all and by kind.
#[derive(Default)]
struct FaultTally {
    applied: u64,
    by_kind: BTreeMap<&'static str, u64>,
}

/// Applies the plan's faults one after another until the faulty phase ends, restarting any
/// node that stopped on its own meanwhile.
async fn run_schedule(
    cluster: &mut Cluster,
    plan: &schedule::Plan,
    deadline: Instant,
    shared: &Shared,
    timeline: &mut Vec<String>,
) -> Result<FaultTally, String> {
    let mut tally = FaultTally::default();
    for step in &plan.steps {
        let gap = Duration::from_millis(step.gap_ms);
        if Instant::now() + gap + LAST_FAULT_MARGIN >= deadline {
            break;
        }
        tokio::time::sleep(gap).await;
        let at_ms = shared.start.elapsed().as_millis();
        if inject(cluster, &step.fault, at_ms, timeline).await? {
            tally.applied += 1;
            *tally.by_kind.entry(step.fault.kind()).or_default() += 1;
        }
        // A process that stopped on its own (not by a fault of ours) comes back, noted.
        cluster.restart_exited(&format!("after the fault at {at_ms} ms"), timeline)?;
    }
    Ok(tally)
}

/// The cluster after healing: the nodes that are voters again, and whether their replicas
/// converged (false also when a node could not be made a voter again).
struct Healed {
    members: Vec<u64>,
    converged: bool,
}

/// Heals: every link open, every process running, every node a voter, then waits up to
/// [`HEAL_WAIT_MAX`] for the replicas to converge.
async fn heal(
    cluster: &mut Cluster,
    keys: usize,
    timeline: &mut Vec<String>,
) -> Result<Healed, String> {
    cluster.heal_links()?;
    cluster.resume_paused();
    cluster.restart_exited("healing", timeline)?;
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
        if let Some(states) = cluster.replica_states(&members, keys).await {
            if states.windows(2).all(|w| w[0] == w[1]) {
                converged = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(Healed {
        members,
        converged: converged && not_voters.is_empty(),
    })
}

/// A linearizable read of every key, joined to the history; returns the values read (a key
/// whose read failed is missing, and noted in the timeline).
async fn final_reads(
    cluster: &Cluster,
    keys: usize,
    shared: &Shared,
    timeline: &mut Vec<String>,
) -> BTreeMap<usize, Option<String>> {
    let reader = Client::new(client_config(&cluster.client_addrs, 5000));
    let mut final_values = BTreeMap::new();
    for key in 0..keys {
        let call_us = shared.now_us();
        let result = reader.get(key_name(key)).await;
        let return_us = shared.now_us();
        match result {
            Ok(v) => {
                let v = v.map(|b| String::from_utf8_lossy(&b).into_owned());
                final_values.insert(key, v.clone());
                shared.history.lock().await.push(Record {
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
    final_values
}

/// What the run found.
struct Findings {
    counts: OutcomeCounts,
    checks: KeyChecks,
    faults: FaultTally,
    /// Members whose replica differs from the first member's (all when one did not answer).
    diverged: usize,
    converged: bool,
}

impl Findings {
    fn passed(&self) -> bool {
        self.checks.proven_linearizable()
            && self.checks.lost == 0
            && self.diverged == 0
            && self.converged
    }

    /// The one-line summary a run ends with.
    fn summary(&self) -> String {
        let c = &self.counts;
        format!(
            "chaos: ops={} ok={} failed={} unknown={} faults={} linearizable={} lost={} diverged={}",
            c.ok + c.failed + c.unknown,
            c.ok,
            c.failed,
            c.unknown,
            self.faults.applied,
            self.checks.proven_linearizable(),
            self.checks.lost,
            self.diverged
        )
    }
}

/// Writes the history and timeline, prints what went wrong (and, for a failing run or one
/// where a node panicked, where the files are and how to replay it), stops the cluster, and
/// removes the run's folder unless it is kept.
fn report(
    args: &Args,
    run_dir: &Path,
    cluster: Cluster,
    history: &[Record],
    timeline: &[String],
    findings: &Findings,
) -> Result<(), String> {
    write_report(run_dir, history, timeline).map_err(|e| format!("writing the report: {e}"))?;
    for t in timeline {
        println!("  {t}");
    }
    if findings.checks.inconclusive {
        println!("the linearizability search gave up on a key after {CHECK_STEPS_MAX} steps");
    }
    if !findings.converged {
        println!(
            "the replicas did not converge within {} s of healing",
            HEAL_WAIT_MAX.as_secs()
        );
    }
    let kinds: Vec<String> = findings
        .faults
        .by_kind
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    println!("faults by kind: {}", kinds.join(" "));
    // A node that panicked is a bug even when the history checks out: say so, and keep the
    // logs (the exit status still follows the checks).
    let panics = cluster.panics_in_logs();
    for p in &panics {
        println!("{p}");
    }
    let keep = !findings.passed() || !panics.is_empty();
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
        println!("replay the schedule: {}", args.replay_command());
    }
    println!("{}", findings.summary());
    // The processes stop (and the tmpfs goes) before the folder under them is removed.
    drop(cluster);
    if !keep {
        let _ = std::fs::remove_dir_all(run_dir);
    }
    Ok(())
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
