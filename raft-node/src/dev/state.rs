//! The running dev cluster as other commands find it: `DATA_DIR/dev-cluster.json`, written
//! by the supervisor and read by `dev status`, `dev kill`/`restart` and `raft-node status`,
//! and the checks that a PID in it is still the process that wrote it (its start time).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::STATE_FILE;

/// `DATA_DIR/dev-cluster.json`: what a command needs to find the running cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevState {
    /// The supervisor's process ID.
    pub supervisor_pid: u32,
    /// Its start time (`/proc/PID/stat`, clock ticks since boot): a PID reused by another
    /// process after the supervisor died does not match.
    pub supervisor_start_ticks: u64,
    /// The cluster's ID.
    pub cluster_id: String,
    /// The CA that signed the nodes' certificates, when the cluster runs with TLS.
    pub tls_ca: Option<PathBuf>,
    /// Every node, in ID order.
    pub nodes: Vec<DevNode>,
}

/// One node of a [`DevState`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevNode {
    /// The node's ID.
    pub id: u64,
    /// Its process ID while it runs (as the supervisor last saw it).
    pub pid: Option<u32>,
    /// The process' start time, as for the supervisor.
    pub start_ticks: Option<u64>,
    /// Client port (native protocol and RESP).
    pub client_addr: SocketAddr,
    /// HTTP port (status page at `/`).
    pub http_addr: SocketAddr,
    /// Peer port.
    pub peer_addr: SocketAddr,
    /// The node's log file.
    pub log_file: PathBuf,
}

impl DevState {
    /// Whether the supervisor that wrote this file still runs.
    pub fn supervisor_alive(&self) -> bool {
        process_alive(self.supervisor_pid, self.supervisor_start_ticks)
    }

    /// The client addresses of every node.
    pub fn client_addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.client_addr.to_string())
            .collect()
    }
}

/// Reads `DATA_DIR/dev-cluster.json` of a running cluster; the error says what to do.
pub fn running_cluster(data_dir: &Path) -> Result<DevState, String> {
    let path = data_dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "no dev cluster found: {} does not exist (start one with `raft-node dev`, \
                 or give --data-dir)",
                path.display()
            ))
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let state: DevState = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a dev cluster state file: {e}", path.display()))?;
    if !state.supervisor_alive() {
        return Err(format!(
            "no dev cluster runs from {}: its supervisor (pid {}) has exited; start it again \
             with `raft-node dev`",
            data_dir.display(),
            state.supervisor_pid
        ));
    }
    Ok(state)
}

/// A process' start time in clock ticks since boot (field 22 of `/proc/PID/stat`), or
/// `None` if it does not exist or has exited (a zombie).
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (the state).
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

/// Whether `pid` runs and is the process that started at `start_ticks`.
pub fn process_alive(pid: u32, start_ticks: u64) -> bool {
    process_start_ticks(pid) == Some(start_ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let pid = std::process::id();
        let ticks = process_start_ticks(pid).expect("own start time");
        assert!(process_alive(pid, ticks));
        assert!(!process_alive(pid, ticks + 1));
    }
}
