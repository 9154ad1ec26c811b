//! The supervisor: `raft-node dev` without a subcommand. It checks the data folder,
//! creates certificates, spawns one `raft-node run` per node, writes the state file, and
//! serves kill and restart requests on the control socket until Ctrl-C or SIGTERM; no node
//! outlives it.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use raft_node::certs;
use raft_node::cluster_id::ClusterId;
use raft_node::config::StorageKind;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::state::{process_start_ticks, running_cluster, DevNode, DevState};
use super::{
    DevArgs, CHILD_POLL_INTERVAL_MS, CONTROL_LINE_BYTES_MAX, CONTROL_READ_TIMEOUT_MS,
    CONTROL_SOCKET, DATA_DIR_DEFAULT, LOG_TAIL_LINES, NODE_START_TIMEOUT_MS, NODE_STOP_TIMEOUT_MS,
    STATE_FILE,
};

/// Refuses a data folder holding another cluster size's nodes: those members would wait
/// for peers that never come (a node outside the stored membership never gets a vote).
fn check_cluster_size(data_dir: &Path, n: u64) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return Ok(());
    };
    let found: BTreeSet<u64> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("node-")?
                .parse::<u64>()
                .ok()
        })
        .collect();
    let wanted: BTreeSet<u64> = (1..=n).collect();
    if found.is_empty() || found == wanted {
        return Ok(());
    }
    let list: Vec<String> = found.iter().map(|i| i.to_string()).collect();
    let size_hint = if found.iter().copied().eq(1..=found.len() as u64) {
        format!(
            " (a {}-node dev cluster: run it with --nodes {})",
            found.len(),
            found.len()
        )
    } else {
        String::new()
    };
    Err(format!(
        "{} holds the data of nodes {}{size_hint}; a {n}-node cluster cannot start on it. \
         Add --fresh to delete it and start a new {n}-node cluster",
        data_dir.display(),
        list.join(", ")
    ))
}

/// What the supervisor knows of one node.
struct NodeProc {
    id: u64,
    run_args: Vec<String>,
    client_addr: SocketAddr,
    http_addr: SocketAddr,
    peer_addr: SocketAddr,
    log_file: PathBuf,
    child: Option<Child>,
    start_ticks: Option<u64>,
}

struct Supervisor {
    data_dir: PathBuf,
    storage: StorageKind,
    cluster_id: ClusterId,
    tls_ca: Option<PathBuf>,
    nodes: Vec<NodeProc>,
    start_ticks: u64,
}

impl Supervisor {
    fn node_mut(&mut self, id: u64) -> Result<&mut NodeProc, String> {
        let n = self.nodes.len();
        self.nodes
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or_else(|| format!("no node {id}: the dev cluster has nodes 1 to {n}"))
    }

    fn spawn(&mut self, id: u64) -> Result<u32, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find this program's path: {e}"))?;
        let node = self.node_mut(id)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_file)
            .map_err(|e| format!("cannot open {}: {e}", node.log_file.display()))?;
        let log_out = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", node.log_file.display()))?;
        let parent = std::process::id();
        let mut cmd = Command::new(exe);
        cmd.args(&node.run_args)
            .stdin(Stdio::null())
            .stdout(log_out)
            .stderr(log);
        // SAFETY: prctl and getppid are async-signal-safe and touch no memory of the
        // parent. The death signal follows the thread that forked, which is the main
        // thread here (the supervisor runs on a current-thread runtime), so it fires only
        // when the supervisor process ends. SIGTERM lets the node shut down cleanly.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The supervisor died between fork and prctl: nobody would stop this node.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start node {id}: {e}"))?;
        let pid = child.id();
        node.start_ticks = process_start_ticks(pid);
        node.child = Some(child);
        Ok(pid)
    }

    /// Stops node `id` if it runs: SIGKILL when `crash`, else SIGTERM and, after
    /// `NODE_STOP_TIMEOUT_MS`, SIGKILL. Returns the PID it had.
    async fn stop(&mut self, id: u64, crash: bool) -> Result<Option<u32>, String> {
        let node = self.node_mut(id)?;
        let Some(mut child) = node.child.take() else {
            return Ok(None);
        };
        node.start_ticks = None;
        let pid = child.id();
        if !crash {
            // SAFETY: kill(2) on our own child, which we have not reaped, so the PID is
            // still ours.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_millis(NODE_STOP_TIMEOUT_MS);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return Ok(Some(pid));
                }
                tokio::time::sleep(Duration::from_millis(CHILD_POLL_INTERVAL_MS)).await;
            }
            eprintln!("node {id} (pid {pid}) did not stop within {NODE_STOP_TIMEOUT_MS} ms after SIGTERM: killing it");
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(Some(pid))
    }

    /// Waits until node `id` accepts connections on its client port, or exits.
    async fn wait_ready(&mut self, id: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_millis(NODE_START_TIMEOUT_MS);
        loop {
            let node = self.node_mut(id)?;
            let addr = node.client_addr;
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    node.child = None;
                    node.start_ticks = None;
                    return Err(format!(
                        "node {id} exited while starting ({status}); its log {}:\n{}",
                        node.log_file.display(),
                        log_tail(&node.log_file)
                    ));
                }
            } else {
                return Err(format!("node {id} is not running"));
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node {id} did not open its client port {addr} within {NODE_START_TIMEOUT_MS} ms; its log {}:\n{}",
                    node.log_file.display(),
                    log_tail(&node.log_file)
                ));
            }
            tokio::time::sleep(Duration::from_millis(CHILD_POLL_INTERVAL_MS)).await;
        }
    }

    fn state(&self) -> DevState {
        DevState {
            supervisor_pid: std::process::id(),
            supervisor_start_ticks: self.start_ticks,
            cluster_id: self.cluster_id.to_string(),
            tls_ca: self.tls_ca.clone(),
            nodes: self
                .nodes
                .iter()
                .map(|n| DevNode {
                    id: n.id,
                    pid: n.child.as_ref().map(Child::id),
                    start_ticks: n.start_ticks,
                    client_addr: n.client_addr,
                    http_addr: n.http_addr,
                    peer_addr: n.peer_addr,
                    log_file: absolute(&n.log_file),
                })
                .collect(),
        }
    }

    /// Rewrites the state file (by rename, so a reader never sees half of it).
    fn write_state(&self) -> Result<(), String> {
        let path = self.data_dir.join(STATE_FILE);
        let tmp = self.data_dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(&self.state()).map_err(|e| e.to_string())?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Reports nodes that exited since the last look (crashed, or killed from outside).
    fn reap(&mut self) -> bool {
        let mut changed = false;
        for node in &mut self.nodes {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                println!(
                    "node {} (pid {}) exited: {status}; `raft-node dev restart {}` starts it again (log: {})",
                    node.id,
                    child.id(),
                    node.id,
                    node.log_file.display()
                );
                node.child = None;
                node.start_ticks = None;
                changed = true;
            }
        }
        changed
    }

    async fn handle(&mut self, request: &str) -> Result<String, String> {
        let mut words = request.split_whitespace();
        let (verb, id) = match (words.next(), words.next(), words.next()) {
            (Some(v), Some(id), None) => (
                v,
                id.parse::<u64>()
                    .map_err(|_| format!("not a node ID: {id:?}"))?,
            ),
            _ => return Err(format!("unknown request {request:?}")),
        };
        self.node_mut(id)?;
        match verb {
            "kill" => match self.stop(id, true).await? {
                Some(pid) => {
                    println!("node {id} (pid {pid}) killed by `raft-node dev kill {id}`");
                    Ok(format!(
                        "node {id} (pid {pid}) killed; `raft-node dev restart {id}` starts it again"
                    ))
                }
                None => Err(format!("node {id} is not running")),
            },
            "restart" => {
                if self.storage == StorageKind::Memory {
                    return Err(
                        "the nodes keep their logs in memory (--storage memory): a restarted \
                         node would come back without its vote and log, which Raft forbids \
                         under the same ID; run the dev cluster with disk storage to restart \
                         nodes"
                            .to_string(),
                    );
                }
                let old = self.stop(id, false).await?;
                let pid = self.spawn(id)?;
                let ready = self.wait_ready(id).await;
                let _ = self.write_state();
                ready?;
                let node = self.node_mut(id)?;
                let text = format!(
                    "node {id} {}: pid {pid}, client {}, http {}",
                    if old.is_some() {
                        "restarted"
                    } else {
                        "started"
                    },
                    node.client_addr,
                    node.http_addr
                );
                println!("{text}");
                Ok(text)
            }
            _ => Err(format!("unknown request {verb:?} (kill N or restart N)")),
        }
    }

    async fn stop_all(&mut self) {
        let ids: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect();
        for &id in &ids {
            if let Some(child) = self
                .nodes
                .iter()
                .find(|n| n.id == id)
                .and_then(|n| n.child.as_ref())
            {
                // SAFETY: kill(2) on our own unreaped child.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        // They were all told at once; each is then waited for (bounded) in turn.
        for id in ids {
            let _ = self.stop(id, false).await;
        }
    }
}

impl Drop for Supervisor {
    /// Whatever way the supervisor ends, no node outlives it.
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Starts the cluster and supervises it until Ctrl-C or SIGTERM.
pub(super) async fn supervise(args: DevArgs) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed first: a Ctrl-C while the nodes start must still stop them all.
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;

    let n: u64 = args.nodes.parse().map_err(|_| "--nodes: must be 3 or 5")?;
    let port = |base: u16, i: u64| -> Result<SocketAddr, String> {
        let p = u64::from(base) + i;
        let p = u16::try_from(p).map_err(|_| format!("port {p} is out of range"))?;
        Ok(SocketAddr::from(([127, 0, 0, 1], p)))
    };
    let data_dir = args.data_dir.clone();
    if let Ok(state) = running_cluster(&data_dir) {
        return Err(format!(
            "a dev cluster already runs from {} (supervisor pid {}): `raft-node dev status` \
             shows it; stop it with Ctrl-C where it runs, or kill {}",
            data_dir.display(),
            state.supervisor_pid,
            state.supervisor_pid
        ));
    }
    if args.fresh && data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)
            .map_err(|e| format!("cannot delete {}: {e}", data_dir.display()))?;
    }
    check_cluster_size(&data_dir, n)?;
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;

    // The dev cluster's ID: the one its data already has, else a fresh random one.
    let stored = data_dir
        .join("node-1")
        .join(raft_node::cluster_id::CLUSTER_ID_FILE);
    let cluster_id = match std::fs::read_to_string(&stored) {
        Ok(text) => text
            .parse::<ClusterId>()
            .map_err(|e| format!("{}: {e}", stored.display()))?,
        Err(_) => ClusterId::random(),
    };
    let certs_dir = data_dir.join("certs");
    if args.tls {
        let missing: Vec<u64> = (1..=n)
            .filter(|&i| !certs_dir.join(certs::node_cert_file(i)).exists())
            .collect();
        if !missing.is_empty() {
            let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
            certs::generate(&certs_dir, Some(cluster_id.0), &missing, &hosts)?;
        }
    }
    let mut peers = Vec::new();
    for i in 1..=n {
        peers.push(format!(
            "{i}={},{}",
            port(args.peer_port_base, i)?,
            port(args.client_port_base, i)?
        ));
    }
    let storage = args
        .storage
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_else(|| "disk".to_string());
    let ca = absolute(&certs_dir.join(certs::CA_CERT_FILE));
    let mut nodes = Vec::new();
    for i in 1..=n {
        let node_dir = absolute(&data_dir.join(format!("node-{i}")));
        let mut run_args: Vec<String> = vec![
            "run".into(),
            "--id".into(),
            i.to_string(),
            "--data-dir".into(),
            node_dir.display().to_string(),
            "--http-addr".into(),
            port(args.http_port_base, i)?.to_string(),
            "--cluster-id".into(),
            cluster_id.to_string(),
            "--storage".into(),
            storage.clone(),
        ];
        for p in &peers {
            run_args.push("--peer".into());
            run_args.push(p.clone());
        }
        if args.tls {
            let dir = absolute(&certs_dir);
            run_args.extend([
                "--tls-ca".into(),
                ca.display().to_string(),
                "--tls-cert".into(),
                dir.join(certs::node_cert_file(i)).display().to_string(),
                "--tls-key".into(),
                dir.join(certs::node_key_file(i)).display().to_string(),
            ]);
        }
        nodes.push(NodeProc {
            id: i,
            run_args,
            client_addr: port(args.client_port_base, i)?,
            http_addr: port(args.http_port_base, i)?,
            peer_addr: port(args.peer_port_base, i)?,
            log_file: data_dir.join(format!("node-{i}.log")),
            child: None,
            start_ticks: None,
        });
    }
    let start_ticks = process_start_ticks(std::process::id())
        .ok_or("cannot read this process' start time from /proc")?;
    let mut sup = Supervisor {
        data_dir: data_dir.clone(),
        storage: args.storage,
        cluster_id,
        tls_ca: args.tls.then(|| ca.clone()),
        nodes,
        start_ticks,
    };

    // The control socket: a stale one (its supervisor is gone, checked above) is replaced.
    let sock_path = data_dir.join(CONTROL_SOCKET);
    let _ = std::fs::remove_file(&sock_path);
    let listener = UnixListener::bind(&sock_path)
        .map_err(|e| format!("cannot listen on {}: {e}", sock_path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        // Only this user may kill and restart the nodes.
        let _ = std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600));
    }

    for i in 1..=n {
        sup.spawn(i)?;
    }
    sup.write_state()?;
    let startup = async {
        for i in 1..=n {
            sup.wait_ready(i).await?;
        }
        Ok::<(), String>(())
    };
    let started = tokio::select! {
        r = startup => r,
        _ = sigint.recv() => Err("interrupted while starting".to_string()),
        _ = sigterm.recv() => Err("terminated while starting".to_string()),
    };
    if let Err(e) = started {
        sup.stop_all().await;
        let _ = sup.write_state();
        let _ = std::fs::remove_file(&sock_path);
        return Err(e);
    }
    sup.write_state()?;
    print_banner(&sup, &args, n);

    let mut poll = tokio::time::interval(Duration::from_millis(CHILD_POLL_INTERVAL_MS));
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    serve_control(&mut sup, stream).await;
                    let _ = sup.write_state();
                }
            }
            _ = poll.tick() => {
                if sup.reap() {
                    let _ = sup.write_state();
                }
            }
        }
    }
    println!("stopping every node");
    sup.stop_all().await;
    let _ = sup.write_state();
    let _ = std::fs::remove_file(&sock_path);
    println!("stopped");
    Ok(())
}

/// Reads one request line from a control client and answers `ok TEXT` or `error TEXT`.
async fn serve_control(sup: &mut Supervisor, stream: UnixStream) {
    use tokio::io::AsyncReadExt as _;
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(CONTROL_LINE_BYTES_MAX));
    let read = tokio::time::timeout(
        Duration::from_millis(CONTROL_READ_TIMEOUT_MS),
        reader.read_line(&mut line),
    )
    .await;
    let reply = match read {
        Ok(Ok(_)) if line.ends_with('\n') => match sup.handle(line.trim()).await {
            Ok(text) => format!("ok {text}\n"),
            Err(text) => format!("error {text}\n"),
        },
        _ => "error expected one request line (kill N or restart N)\n".to_string(),
    };
    let _ = write.write_all(reply.as_bytes()).await;
}

fn print_banner(sup: &Supervisor, args: &DevArgs, n: u64) {
    let tls = sup.tls_ca.is_some();
    let scheme = if tls { "https" } else { "http" };
    println!(
        "raft-node dev: {n} nodes on 127.0.0.1, one process each, data under {}, cluster {}",
        args.data_dir.display(),
        sup.cluster_id
    );
    if let Some(ca) = &sup.tls_ca {
        println!(
            "  TLS: peers use mutual TLS, clients and HTTP TLS; CA, node and admin client \
             certificates in {}",
            ca.parent()
                .map(Path::display)
                .map(|d| d.to_string())
                .unwrap_or_default()
        );
    }
    println!(
        "  {:<4} {:<8} {:<21} {:<21} {:<21} status page",
        "node", "pid", "client (RESP+native)", "http", "peer"
    );
    for node in &sup.nodes {
        println!(
            "  {:<4} {:<8} {:<21} {:<21} {:<21} {scheme}://{}/",
            node.id,
            node.child.as_ref().map(Child::id).unwrap_or_default(),
            node.client_addr,
            node.http_addr,
            node.peer_addr,
            node.http_addr
        );
    }
    println!("  logs: {}/node-N.log", args.data_dir.display());
    let (redis, curl) = match &sup.tls_ca {
        Some(ca) => (
            format!("redis-cli --tls --cacert {}", ca.display()),
            format!("curl --cacert {}", ca.display()),
        ),
        None => ("redis-cli".to_string(), "curl".to_string()),
    };
    let first = &sup.nodes[0];
    let last = &sup.nodes[sup.nodes.len() - 1];
    let dir_flag = if args.data_dir == Path::new(DATA_DIR_DEFAULT) {
        String::new()
    } else {
        format!(" --data-dir {}", args.data_dir.display())
    };
    println!("try:");
    println!(
        "  {redis} -p {} SET greeting hello",
        first.client_addr.port()
    );
    println!("  {redis} -p {} GET greeting", last.client_addr.port());
    println!("  {curl} {scheme}://{}/status", first.http_addr);
    println!("  raft-node dev status{dir_flag}");
    println!("  raft-node dev kill 2{dir_flag}      # the others carry on while a majority runs");
    println!("  raft-node dev restart 2{dir_flag}   # it catches up from the leader");
    println!("Ctrl-C stops every node.");
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_folder_of_another_size_is_refused_naming_fresh() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_cluster_size(dir.path(), 5).is_ok(), "empty folder");
        for i in 1..=3 {
            std::fs::create_dir(dir.path().join(format!("node-{i}"))).unwrap();
        }
        std::fs::write(dir.path().join("node-1.log"), "").unwrap();
        assert!(check_cluster_size(dir.path(), 3).is_ok());
        let e = check_cluster_size(dir.path(), 5).unwrap_err();
        assert!(e.contains("--fresh") && e.contains("--nodes 3"), "{e}");
    }
}
