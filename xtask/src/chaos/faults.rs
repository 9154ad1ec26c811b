//! Applying the schedule's faults to the running cluster, and undoing them after their hold.

use std::path::Path;
use std::time::{Duration, Instant};

use raft_client::Client;
use raft_core::rng::SplitMix64;

use super::cluster::Cluster;
use super::schedule::{Fault, Target};
use super::wiring::Net;
use super::workload::client_config;

/// Applies one fault and undoes it after its hold. Returns whether it was applied (a fault
/// that cannot be, like a one-way cut from a node to itself, is skipped).
pub(super) async fn inject(
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
            cluster.node(target).proc.kill();
            tokio::time::sleep(hold(*hold_ms)).await;
            cluster
                .node(target)
                .start()
                .map_err(|e| format!("restarting node {target}: {e}"))?;
        }
        Fault::Pause { target, hold_ms } => {
            let target = cluster.resolve(target).await;
            timeline.push(format!(
                "{at_ms} ms: SIGSTOP node {target} for {hold_ms} ms"
            ));
            cluster.node(target).proc.pause();
            tokio::time::sleep(hold(*hold_ms)).await;
            cluster.node(target).proc.resume();
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
            let log_path = cluster.node(id).proc.log_path().to_owned();
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
            if let Some(how) = cluster.node(id).proc.exited() {
                timeline.push(format!(
                    "  node {id} stopped on the full disk ({how}); restarted with the space back"
                ));
                cluster
                    .node(id)
                    .start()
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
            cluster.node(target).proc.kill();
            cluster.wipe(target)?;
            cluster.node(target).join = true;
            cluster
                .node(target)
                .start()
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
