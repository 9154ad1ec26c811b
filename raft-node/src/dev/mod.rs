//! `raft-node dev`: a local cluster of one `raft-node run` process per node, supervised by
//! this command, so that a node can be killed and restarted while the others carry on.
//!
//! The supervisor restarts nothing on its own. It writes `DATA_DIR/dev-cluster.json`
//! (its PID, every node's PID and addresses) and listens on `DATA_DIR/dev.sock`, through
//! which `raft-node dev kill N`, `dev restart N` (and `raft-node status`, by the state file)
//! reach the running cluster. Ctrl-C or SIGTERM stops every node; a supervisor killed
//! outright takes its nodes with it (`PR_SET_PDEATHSIG`).//!
//! This file holds the command line and the commands that act on a running cluster from
//! outside (`dev status`, `dev kill`, `dev restart`); `state.rs` the state file they read
//! and the process-liveness checks; `supervisor.rs` the supervisor process itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use raft_node::config::StorageKind;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

mod state;
mod supervisor;

pub use state::{process_alive, running_cluster, DevState};
use supervisor::supervise;

/// The dev cluster's data folder when `--data-dir` is not given.
pub const DATA_DIR_DEFAULT: &str = "raft-dev-data";
/// The running cluster's description, in the data folder.
pub const STATE_FILE: &str = "dev-cluster.json";
/// The supervisor's control socket, in the data folder.
pub const CONTROL_SOCKET: &str = "dev.sock";
/// A control request is one short line (`kill 2`); anything longer is refused.
const CONTROL_LINE_BYTES_MAX: u64 = 128;
/// Time a control client has to send its request line.
const CONTROL_READ_TIMEOUT_MS: u64 = 2_000;
/// Time to wait for a control request to be carried out (a restart waits for the port).
const CONTROL_REPLY_TIMEOUT_MS: u64 = 30_000;
/// Time a node has to open its client port after being spawned.
const NODE_START_TIMEOUT_MS: u64 = 15_000;
/// Time a node has to exit after SIGTERM before it gets SIGKILL.
const NODE_STOP_TIMEOUT_MS: u64 = 10_000;
/// How often the supervisor looks for nodes that exited.
const CHILD_POLL_INTERVAL_MS: u64 = 100;
/// Lines of a failed node's log shown when it dies while the cluster starts.
const LOG_TAIL_LINES: usize = 15;

/// `raft-node dev`: start a cluster, or act on the one running from `--data-dir`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DevArgs {
    #[command(subcommand)]
    action: Option<DevAction>,
    /// Cluster size: 3 or 5.
    #[arg(long, default_value = "5", value_parser = ["3", "5"])]
    nodes: String,
    /// Parent of each node's data directory (node-1, node-2, ...), its log (node-N.log)
    /// and the running cluster's state file.
    #[arg(long, default_value = DATA_DIR_DEFAULT)]
    data_dir: PathBuf,
    /// Node N's client port (native and RESP) is this plus N.
    #[arg(long, default_value_t = 6380)]
    client_port_base: u16,
    /// Node N's peer port is this plus N.
    #[arg(long, default_value_t = 16380)]
    peer_port_base: u16,
    /// Node N's HTTP port (status page, /status, /metrics) is this plus N.
    #[arg(long, default_value_t = 8080)]
    http_port_base: u16,
    /// Where the nodes keep their logs (memory: lost when a node stops, so `dev restart`
    /// is refused).
    #[arg(long, value_enum, default_value_t = StorageKind::Disk)]
    storage: StorageKind,
    /// Delete the data folder first and start a new cluster (otherwise a previous dev
    /// cluster's data is reused).
    #[arg(long)]
    fresh: bool,
    /// Run with TLS: certificates are created under DATA_DIR/certs (once), and peers use
    /// mutual TLS against that CA.
    #[arg(long)]
    tls: bool,
}

#[derive(Subcommand, Debug)]
enum DevAction {
    /// Show the running dev cluster: each node's PID, whether it runs, its role, term and
    /// addresses.
    Status(TargetArgs),
    /// Kill node N outright (SIGKILL, like a crash); the others carry on. Nothing restarts
    /// it until `raft-node dev restart N`.
    Kill {
        /// The node's ID.
        id: u64,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Start node N again with its data (stopping it first if it runs).
    Restart {
        /// The node's ID.
        id: u64,
        #[command(flatten)]
        target: TargetArgs,
    },
}

/// Which running dev cluster a `dev` subcommand acts on.
#[derive(clap::Args, Debug)]
struct TargetArgs {
    /// The running dev cluster's data folder.
    #[arg(long, default_value = DATA_DIR_DEFAULT)]
    data_dir: PathBuf,
}
/// Runs `raft-node dev ...`.
pub async fn main(args: DevArgs) -> Result<(), String> {
    match args.action {
        None => supervise(args).await,
        Some(DevAction::Status(target)) => status(&target.data_dir).await,
        Some(DevAction::Kill { id, target }) => {
            control(&target.data_dir, &format!("kill {id}")).await
        }
        Some(DevAction::Restart { id, target }) => {
            control(&target.data_dir, &format!("restart {id}")).await
        }
    }
}

/// Sends one request line to the supervisor and prints its answer.
async fn control(data_dir: &Path, request: &str) -> Result<(), String> {
    running_cluster(data_dir)?;
    let path = data_dir.join(CONTROL_SOCKET);
    let exchange = async {
        let mut stream = UnixStream::connect(&path)
            .await
            .map_err(|e| format!("cannot reach the supervisor at {}: {e}", path.display()))?;
        stream
            .write_all(format!("{request}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut reply = String::new();
        BufReader::new(stream)
            .read_line(&mut reply)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<String, String>(reply)
    };
    let reply = tokio::time::timeout(Duration::from_millis(CONTROL_REPLY_TIMEOUT_MS), exchange)
        .await
        .map_err(|_| "the supervisor did not answer in time".to_string())??;
    match reply.trim_end().split_once(' ') {
        Some(("ok", text)) => {
            println!("{text}");
            Ok(())
        }
        Some(("error", text)) => Err(text.to_string()),
        _ => Err(format!("unexpected answer from the supervisor: {reply:?}")),
    }
}

/// `raft-node dev status`: the supervisor's view (PIDs) and each node's own (role, term).
async fn status(data_dir: &Path) -> Result<(), String> {
    let state = running_cluster(data_dir)?;
    println!(
        "dev cluster {} from {}, supervisor pid {}",
        state.cluster_id,
        data_dir.display(),
        state.supervisor_pid
    );
    let login = crate::cli::Login {
        tls_ca: state.tls_ca.clone(),
        ..Default::default()
    };
    let rows = crate::cli::member_rows(&state.client_addrs(), &login).await;
    println!(
        "{:<4} {:<8} {:<8} {:<10} {:<6} {:<7} {:<21} {:<21} status page",
        "node", "pid", "process", "role", "term", "leader", "client", "http"
    );
    for node in &state.nodes {
        let alive = node
            .pid
            .zip(node.start_ticks)
            .is_some_and(|(p, t)| process_alive(p, t));
        let pid = match (alive, node.pid) {
            (true, Some(p)) => p.to_string(),
            _ => "-".to_string(),
        };
        let row = rows.iter().find(|r| r.addr == node.client_addr.to_string());
        let (role, term, leader) = match row.and_then(|r| r.status.as_ref().ok()) {
            Some(s) => (
                s.role.clone(),
                s.term.to_string(),
                s.leader.map_or("none".to_string(), |l| l.to_string()),
            ),
            None => ("down".to_string(), "-".to_string(), "-".to_string()),
        };
        println!(
            "{:<4} {:<8} {:<8} {:<10} {:<6} {:<7} {:<21} {:<21} {}",
            node.id,
            pid,
            if alive { "running" } else { "stopped" },
            role,
            term,
            leader,
            node.client_addr,
            node.http_addr,
            page_url(&state, node.http_addr),
        );
    }
    Ok(())
}

fn page_url(state: &DevState, http: SocketAddr) -> String {
    let scheme = if state.tls_ca.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{http}/")
}
