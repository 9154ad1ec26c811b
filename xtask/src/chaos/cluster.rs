//! The running cluster as the run sees it: its processes, its links, the node on a small
//! file system, and the membership operations the faults and the healing need.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raft_client::{Client, NodeStatus};

use super::disk;
use super::process::NodeProc;
use super::schedule::Target;
use super::wiring::Net;
use super::workload::{client_config, key_name};

/// How long one membership change may take to show in the leader's configuration.
const MEMBERSHIP_CHANGE_WAIT_MAX: Duration = Duration::from_secs(20);
/// How long making every node a voter again may take.
pub(super) const MEMBERSHIP_RESTORE_WAIT_MAX: Duration = Duration::from_secs(40);
/// A learner is promoted once it has applied this close to the leader's commit index, or
/// after `LEARNER_CATCH_UP_WAIT_MAX` regardless (a partitioned learner must not stall the run).
const LEARNER_CATCH_UP_ENTRIES: u64 = 200;
const LEARNER_CATCH_UP_WAIT_MAX: Duration = Duration::from_secs(10);

/// Fields drop in order: the processes die before the file system under one of them goes.
pub(super) struct Cluster {
    pub(super) procs: Vec<NodeProc>,
    /// Node `id`'s client address is `client_addrs[id - 1]`.
    pub(super) client_addrs: Vec<String>,
    pub(super) net: Net,
    /// The node whose data directory is a small tmpfs, with the mount.
    pub(super) disk: Option<(u64, disk::Tmpfs)>,
    /// Why there is no small file system, when there is none.
    pub(super) disk_skipped: Option<String>,
}

impl Cluster {
    pub(super) fn ids(&self) -> Vec<u64> {
        self.procs.iter().map(|p| p.id).collect()
    }

    pub(super) fn node(&mut self, id: u64) -> &mut NodeProc {
        self.procs
            .iter_mut()
            .find(|p| p.id == id)
            .expect("known node")
    }

    pub(super) fn set_link(&mut self, from: u64, to: u64, blocked: bool) -> Result<(), String> {
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

    pub(super) fn heal_links(&mut self) -> Result<(), String> {
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

    pub(super) async fn leader(&self) -> Option<u64> {
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
    pub(super) async fn resolve(&self, target: &Target) -> u64 {
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
    pub(super) async fn remove_member(&self, id: u64) -> Result<(), String> {
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
    pub(super) async fn restore_membership(&self) -> Vec<u64> {
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
    pub(super) fn restart_exited(
        &mut self,
        at: &str,
        timeline: &mut Vec<String>,
    ) -> Result<(), String> {
        for id in self.ids() {
            let node = self.node(id);
            if let Some(how) = node.proc.exited() {
                timeline.push(format!("{at}: node {id} had stopped ({how}); restarted"));
                node.start()
                    .map_err(|e| format!("restarting node {id}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Empties a node's data directory (the node must be stopped).
    pub(super) fn wipe(&mut self, id: u64) -> Result<(), String> {
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

    /// Starts every node's process.
    pub(super) fn start_all(&mut self) -> Result<(), String> {
        for node in &mut self.procs {
            node.start()
                .map_err(|e| format!("starting node {}: {e}", node.id))?;
        }
        Ok(())
    }

    /// Waits until a node names a leader, for at most `limit`.
    pub(super) async fn wait_leader(&self, limit: Duration) -> Result<u64, String> {
        let wait_start = Instant::now();
        loop {
            if let Some(leader) = self.leader().await {
                return Ok(leader);
            }
            if wait_start.elapsed() > limit {
                return Err(format!(
                    "no leader within {} s of starting the cluster",
                    limit.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends SIGCONT to every node a fault left stopped.
    pub(super) fn resume_paused(&mut self) {
        for node in &mut self.procs {
            node.proc.resume();
        }
    }

    /// Every member's local copy of every key (stale reads, one node at a time); `None` if a
    /// node did not answer.
    pub(super) async fn replica_states(
        &self,
        members: &[u64],
        keys: usize,
    ) -> Option<Vec<Vec<Option<Vec<u8>>>>> {
        let mut states = Vec::new();
        for &id in members {
            let addr = &self.client_addrs[id as usize - 1];
            let client = Client::new(client_config(std::slice::from_ref(addr), 1000));
            let mut values = Vec::new();
            for key in 0..keys {
                let v = tokio::time::timeout(
                    Duration::from_millis(1500),
                    client.get_stale(key_name(key)),
                )
                .await
                .ok()?
                .ok()?;
                values.push(v.map(|b| b.to_vec()));
            }
            states.push(values);
        }
        Some(states)
    }

    /// Every panic the nodes' logs show, as `node N panicked: <location> <message>`.
    pub(super) fn panics_in_logs(&self) -> Vec<String> {
        let mut panics = Vec::new();
        for node in &self.procs {
            let text = std::fs::read(node.proc.log_path())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let mut lines = text.lines();
            while let Some(line) = lines.next() {
                if line.contains("panicked at") {
                    let message = lines.next().unwrap_or("");
                    panics.push(format!(
                        "node {} panicked: {} {message}",
                        node.id,
                        line.trim()
                    ));
                }
            }
        }
        panics
    }
}
