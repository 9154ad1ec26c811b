//! `raft-node`: run one node, a local development cluster, or query and administer a node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

mod cli;
mod dev;

use clap::{Parser, Subcommand};
use raft_node::certs;
use raft_node::cluster_id::ClusterId;
use raft_node::config::{ConfigError, LogFormat, NodeConfig, PeerConfig, StorageKind};
use raft_node::limits::ClientLimitsArgs;
use raft_node::node::RunningNode;
use raft_node::tls::TlsConfig;

/// A replicated key-value store on Raft, served over RESP (any Redis client), a native
/// protocol (raft-client) and HTTP.
#[derive(Parser, Debug)]
#[command(
    name = "raft-node",
    version,
    about = "A replicated key-value store on Raft, served over RESP (any Redis client), a native \
             protocol (raft-client) and HTTP. Try `raft-node dev`.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    #[command(flatten)]
    log: LogArgs,
}

/// Logging, for every command (`run` also reads them from its config file).
#[derive(clap::Args, Clone, Debug)]
struct LogArgs {
    /// Least severe events logged: error, warn, info, debug, trace or off. RUST_LOG, when
    /// set, refines it per module (RUST_LOG=raft_net=debug); a bare level in RUST_LOG
    /// replaces it [default: info].
    #[arg(long, global = true, env = "RAFT_NODE_LOG_LEVEL", value_name = "LEVEL")]
    log_level: Option<String>,
    /// How log lines are written to standard error: text, or json (one object per line)
    /// [default: text].
    #[arg(long, global = true, value_enum, env = "RAFT_NODE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one node of a cluster, from a TOML file (--config) or from flags.
    Run(Box<RunArgs>),
    /// Start a local cluster on 127.0.0.1, one `raft-node run` process per node, and
    /// supervise it until Ctrl-C; `dev status`, `dev kill N`, `dev restart N` act on it.
    Dev(dev::DevArgs),
    /// Create a cluster's CA, its nodes' certificates (each naming its node ID) and an
    /// admin client certificate, with a new random cluster ID. Run again on the same
    /// folder to add nodes: the CA and the cluster ID are reused.
    Certs(CertsArgs),
    /// Make a stopped node the only voter of a new cluster, keeping its data: the way back
    /// after a majority is lost for good (like etcd's --force-new-cluster). Offline: refuses
    /// while a node holds the data directory. Never restart the other old members with their
    /// data afterwards; wipe them and add them back.
    Recover {
        /// The stopped node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The node's ID.
        #[arg(long)]
        id: u64,
    },
    #[command(flatten)]
    Client(cli::ClientCmd),
}

#[derive(clap::Args, Clone, Debug)]
struct RunArgs {
    /// TOML configuration file (every field: docs/raft-node.sample.toml). Flags override
    /// the environment (RAFT_NODE_*), which overrides the file, which overrides the defaults.
    #[arg(long, short = 'c', env = "RAFT_NODE_CONFIG")]
    config: Option<PathBuf>,
    /// Check the configuration (file, environment and flags), print the settings the node
    /// would run with as TOML, and exit without starting.
    #[arg(long)]
    check_config: bool,
    /// This node's ID (1 or more); must appear in the peers list.
    #[arg(long, env = "RAFT_NODE_ID")]
    id: Option<u64>,
    /// A cluster member as ID=PEER_ADDR or ID=PEER_ADDR,CLIENT_ADDR (IP:PORT or HOST:PORT;
    /// a host name is resolved at every connection attempt); repeat for every member, this
    /// node included (in RAFT_NODE_PEER, separated by spaces). The client address lets followers forward RESP and HTTP writes
    /// and redirect native clients to the leader.
    #[arg(
        long = "peer",
        value_name = "ID=PEER_ADDR[,CLIENT_ADDR]",
        value_delimiter = ' ',
        env = "RAFT_NODE_PEER"
    )]
    peers: Vec<PeerConfig>,
    /// Address to listen on for peers [default: this node's PEER_ADDR in --peer].
    #[arg(long, env = "RAFT_NODE_PEER_ADDR")]
    peer_addr: Option<SocketAddr>,
    /// Address to listen on for clients, native protocol and RESP on one port
    /// [default: this node's CLIENT_ADDR in --peer].
    #[arg(long, env = "RAFT_NODE_CLIENT_ADDR")]
    client_addr: Option<SocketAddr>,
    /// Address to serve HTTP on (/status, /metrics, /kv/{key}, /healthz, /readyz; HTTPS with
    /// [tls]) [default: no HTTP].
    #[arg(long, env = "RAFT_NODE_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Data directory, created if missing and locked while the node runs.
    #[arg(long, env = "RAFT_NODE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Length of one protocol tick in milliseconds [default: 10].
    #[arg(long, env = "RAFT_NODE_TICK_INTERVAL_MS")]
    tick_interval_ms: Option<u64>,
    /// Election timeout lower bound, in ticks [default: 20].
    #[arg(long, env = "RAFT_NODE_ELECTION_TIMEOUT_TICKS_MIN")]
    election_timeout_ticks_min: Option<u32>,
    /// Election timeout exclusive upper bound, in ticks [default: 40].
    #[arg(long, env = "RAFT_NODE_ELECTION_TIMEOUT_TICKS_MAX")]
    election_timeout_ticks_max: Option<u32>,
    /// Heartbeat interval in ticks [default: 3].
    #[arg(long, env = "RAFT_NODE_HEARTBEAT_INTERVAL_TICKS")]
    heartbeat_interval_ticks: Option<u32>,
    /// Writes and linearizable reads fail with an "unavailable" error after this long
    /// without a majority [default: 5000].
    #[arg(long, env = "RAFT_NODE_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,
    /// Writes in flight at most; more are refused with "busy, retry" [default: 8192].
    #[arg(long, env = "RAFT_NODE_PROPOSALS_IN_FLIGHT_MAX")]
    proposals_in_flight_max: Option<usize>,
    /// Snapshot the state machine and compact the log after this many applied entries at
    /// most (each node's first snapshot comes early by up to half, so the nodes do not all
    /// snapshot at once) [default: 100000].
    #[arg(long, env = "RAFT_NODE_SNAPSHOT_ENTRIES_MAX")]
    snapshot_entries_max: Option<u64>,
    /// Entries kept in the log below the newest snapshot, so that a follower slightly
    /// behind gets entries rather than a whole snapshot; 0 compacts to the snapshot
    /// [default: 10000].
    #[arg(long, env = "RAFT_NODE_SNAPSHOT_LOG_MARGIN_ENTRIES")]
    snapshot_log_margin_entries: Option<u64>,
    /// Digest the state at every log index that is a multiple of this, so that the leader
    /// can compare replicas (anti-entropy); the same on every node; 0 turns it off
    /// [default: 100000].
    #[arg(long, env = "RAFT_NODE_DIGEST_INTERVAL_ENTRIES")]
    digest_interval_entries: Option<u64>,
    /// FAULT INJECTION for tests: corrupt this replica's state after applying this index.
    #[arg(long, hide = true, value_name = "INDEX")]
    debug_corrupt_apply_at: Option<u64>,
    /// FAULT INJECTION for tests: shift this node's wall clock, which it stamps into the
    /// entries it proposes as leader, by this many milliseconds (a clock jump).
    #[arg(long, hide = true, value_name = "MS", allow_hyphen_values = true)]
    debug_clock_offset_ms: Option<i64>,
    /// A voter of the new cluster's first configuration; repeat for each
    /// [default: every --peer]. Peers not named are addresses for nodes added later.
    #[arg(
        long = "initial-voter",
        value_name = "ID",
        value_delimiter = ',',
        env = "RAFT_NODE_INITIAL_VOTER"
    )]
    initial_voters: Vec<u64>,
    /// Start with no membership and wait to be added by the leader
    /// (`raft-node admin add-learner`, then `promote`).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", env = "RAFT_NODE_JOIN")]
    join: Option<bool>,
    /// Where the log lives: disk (raft-log under DATA_DIR/log) or memory (lost on restart;
    /// for experiments only) [default: disk].
    #[arg(long, value_enum, env = "RAFT_NODE_STORAGE")]
    storage: Option<StorageKind>,
    /// Identifies the cluster on the wire (32 hex digits, the same on every node); peers
    /// with another ID are refused. A new cluster of several members needs one
    /// (`raft-node certs` prints one) [default: DATA_DIR/CLUSTER_ID, else the TLS
    /// certificate's, else a random one for a single-node cluster].
    #[arg(long, value_name = "HEX", env = "RAFT_NODE_CLUSTER_ID")]
    cluster_id: Option<ClusterId>,
    /// Worker threads of the process's async runtime; 1 runs every task on one thread,
    /// the fewest context switches; more pays only with cores to spare [default: 1].
    #[arg(long, env = "RAFT_NODE_RUNTIME_WORKER_THREADS")]
    runtime_worker_threads: Option<usize>,
    /// PEM file of the cluster's CA: turns TLS on (with --tls-cert and --tls-key); peers
    /// then use mutual TLS against it [default: no TLS].
    #[arg(long, value_name = "PEM", env = "RAFT_NODE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// PEM file of this node's certificate (from `raft-node certs`: it names the node ID).
    #[arg(long, value_name = "PEM", env = "RAFT_NODE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM file of this node's private key.
    #[arg(long, value_name = "PEM", env = "RAFT_NODE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Clients of the client port and HTTP must present a certificate signed by the CA
    /// [default: optional].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", env = "RAFT_NODE_TLS_CLIENT_CERT_REQUIRED")]
    tls_client_cert_required: Option<bool>,
    /// Bounds on what clients can make the node hold or do (`[limits]` in the file).
    #[command(flatten)]
    limits: ClientLimitsArgs,
    /// Users and roles of the client interfaces (TOML: users with name, role and
    /// password_sha256; internal_password for the nodes). Also RAFT_NODE_AUTH_FILE;
    /// RAFT_NODE_PASSWORD sets the `default` admin's password [default: no authentication].
    #[arg(long, value_name = "FILE", env = "RAFT_NODE_AUTH_FILE")]
    auth_file: Option<PathBuf>,
    /// Start even if a listener binds a non-loopback address without TLS and credentials
    /// (protected mode off): anyone who can reach the node can then read, write and change
    /// the cluster's membership.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", env = "RAFT_NODE_INSECURE_ALLOW_PLAINTEXT")]
    insecure_allow_plaintext: Option<bool>,
}

#[derive(clap::Args, Debug)]
struct CertsArgs {
    /// Folder to write the files into (created if missing; private keys are written 0600).
    #[arg(long)]
    out: PathBuf,
    /// The node IDs to issue certificates for, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<u64>,
    /// Host names and IP addresses clients reach the nodes by, comma-separated: every node
    /// certificate is valid for all of them (peers check node IDs, not names).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
    hosts: Vec<String>,
    /// The cluster ID for a new CA [default: a random one].
    #[arg(long, value_name = "HEX")]
    cluster_id: Option<ClusterId>,
}

/// The node's configuration: defaults, then the file, then each setting given by a flag or
/// its RAFT_NODE_* variable (clap has already preferred the flag to the variable).
fn build_config(args: RunArgs, log: &LogArgs) -> Result<NodeConfig, ConfigError> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("config", format!("cannot read {}: {e}", path.display()))
            })?;
            NodeConfig::from_toml(&text).map_err(|mut e| {
                e.message = format!("{} (in {})", e.message, path.display());
                e
            })?
        }
        None => {
            let id = args
                .id
                .ok_or_else(|| ConfigError::new("id", "missing: give --id or --config"))?;
            let data_dir = args.data_dir.clone().ok_or_else(|| {
                ConfigError::new("data_dir", "missing: give --data-dir or --config")
            })?;
            NodeConfig::with_defaults(id, data_dir, Vec::new())
        }
    };
    if let Some(v) = args.id {
        cfg.id = v;
    }
    if !args.peers.is_empty() {
        cfg.peers = args.peers;
    }
    if let Some(v) = args.data_dir {
        cfg.data_dir = v;
    }
    cfg.peer_addr = args.peer_addr.or(cfg.peer_addr);
    cfg.client_addr = args.client_addr.or(cfg.client_addr);
    cfg.http_addr = args.http_addr.or(cfg.http_addr);
    cfg.tick_interval_ms = args.tick_interval_ms.unwrap_or(cfg.tick_interval_ms);
    cfg.election_timeout_ticks_min = args
        .election_timeout_ticks_min
        .unwrap_or(cfg.election_timeout_ticks_min);
    cfg.election_timeout_ticks_max = args
        .election_timeout_ticks_max
        .unwrap_or(cfg.election_timeout_ticks_max);
    cfg.heartbeat_interval_ticks = args
        .heartbeat_interval_ticks
        .unwrap_or(cfg.heartbeat_interval_ticks);
    cfg.request_timeout_ms = args.request_timeout_ms.unwrap_or(cfg.request_timeout_ms);
    cfg.proposals_in_flight_max = args
        .proposals_in_flight_max
        .unwrap_or(cfg.proposals_in_flight_max);
    cfg.snapshot_entries_max = args
        .snapshot_entries_max
        .unwrap_or(cfg.snapshot_entries_max);
    cfg.snapshot_log_margin_entries = args
        .snapshot_log_margin_entries
        .unwrap_or(cfg.snapshot_log_margin_entries);
    cfg.digest_interval_entries = args
        .digest_interval_entries
        .unwrap_or(cfg.digest_interval_entries);
    if let Some(offset) = args.debug_clock_offset_ms {
        eprintln!(
            "raft-node: FAULT INJECTION enabled: this node's clock is shifted by {offset} ms"
        );
        raft_node::clock::set_debug_offset_ms(offset);
    }
    if let Some(at) = args.debug_corrupt_apply_at {
        eprintln!("raft-node: FAULT INJECTION enabled: this replica's state will be corrupted at index {at}");
        cfg.debug_corrupt_apply_at = Some(at);
    }
    if !args.initial_voters.is_empty() {
        cfg.initial_voters = Some(args.initial_voters);
    }
    cfg.join = args.join.unwrap_or(cfg.join);
    cfg.storage = args.storage.unwrap_or(cfg.storage);
    cfg.runtime_worker_threads = args
        .runtime_worker_threads
        .unwrap_or(cfg.runtime_worker_threads);
    cfg.cluster_id = args.cluster_id.or(cfg.cluster_id);
    apply_tls_flags(&mut cfg, args.tls_ca, args.tls_cert, args.tls_key)?;
    if let Some(required) = args.tls_client_cert_required {
        match cfg.tls.as_mut() {
            Some(tls) => tls.client_cert_required = required,
            None if !required => {}
            None => {
                return Err(ConfigError::new(
                    "tls",
                    "--tls-client-cert-required needs TLS (--tls-ca, --tls-cert, --tls-key)",
                ))
            }
        }
    }
    args.limits.apply(&mut cfg.limits);
    if args.auth_file.is_some() {
        cfg.auth_file = args.auth_file;
    }
    cfg.insecure_allow_plaintext = args
        .insecure_allow_plaintext
        .unwrap_or(cfg.insecure_allow_plaintext);
    if let Some(level) = &log.log_level {
        cfg.log_level = level.clone();
    }
    cfg.log_format = log.log_format.unwrap_or(cfg.log_format);
    cfg.validate()?;
    Ok(cfg)
}

/// The `--tls-*` flags override the file's `[tls]` one by one; without a `[tls]` section
/// all three are needed.
fn apply_tls_flags(
    cfg: &mut NodeConfig,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<(), ConfigError> {
    match cfg.tls.as_mut() {
        Some(tls) => {
            tls.ca_file = ca.unwrap_or(tls.ca_file.clone());
            tls.cert_file = cert.unwrap_or(tls.cert_file.clone());
            tls.key_file = key.unwrap_or(tls.key_file.clone());
        }
        None => match (ca, cert, key) {
            (None, None, None) => {}
            (Some(ca_file), Some(cert_file), Some(key_file)) => {
                cfg.tls = Some(TlsConfig {
                    ca_file,
                    cert_file,
                    key_file,
                    client_cert_required: false,
                })
            }
            _ => {
                return Err(ConfigError::new(
                    "tls",
                    "give all of --tls-ca, --tls-cert and --tls-key (or a [tls] section)",
                ))
            }
        },
    }
    Ok(())
}

/// SIGTERM and SIGINT handlers, installed before any listener is bound: a signal that
/// arrives while the node starts must stop it cleanly, not kill it.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Logs to standard error at `level`, refined by RUST_LOG when it is set.
fn init_logging(level: &str, format: LogFormat) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let directives = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => {
            // A bare level in RUST_LOG (`debug`) replaces the level; per-module directives
            // (`raft_net=debug`) refine it.
            let bare = env.split(',').any(|d| {
                !d.contains('=')
                    && d.trim()
                        .parse::<tracing::level_filters::LevelFilter>()
                        .is_ok()
            });
            if bare {
                env
            } else {
                format!("{level},{env}")
            }
        }
        _ => level.to_string(),
    };
    let filter = EnvFilter::try_new(&directives)
        .map_err(|e| format!("log filter `{directives}` (log_level, RUST_LOG): {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    Ok(())
}

/// Restores SIGPIPE's default action, so that a command whose output goes to a closed pipe
/// (`raft-node dev status | head -1`) ends quietly, as coreutils do, instead of panicking in
/// `println!` on EPIPE (Rust ignores SIGPIPE before `main`). Not for `run`: a node writes to
/// sockets that peers close. Sockets are written with MSG_NOSIGNAL by std (and so by tokio),
/// so the client commands' connections never raise it either.
fn exit_quietly_on_broken_pipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler; called before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Cmd::Run(_)) {
        exit_quietly_on_broken_pipe();
    }
    // `run` reads its configuration first: it says how many threads the runtime gets, and
    // its file may set the logging.
    let mut run_config = match &cli.command {
        Cmd::Run(args) => match build_config((**args).clone(), &cli.log) {
            Ok(cfg) => Some(cfg),
            Err(e) => {
                eprintln!("raft-node: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    if let (Cmd::Run(args), Some(cfg)) = (&cli.command, &run_config) {
        if args.check_config {
            return match toml::to_string(cfg) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("raft-node: cannot print the configuration: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    let (level, format) = match &run_config {
        Some(cfg) => (cfg.log_level.clone(), cfg.log_format),
        None => (
            cli.log
                .log_level
                .clone()
                .unwrap_or_else(|| raft_node::config::LOG_LEVEL_DEFAULT.to_string()),
            cli.log.log_format.unwrap_or_default(),
        ),
    };
    if let Err(e) = init_logging(&level, format) {
        eprintln!("raft-node: {e}");
        return ExitCode::from(2);
    }
    let workers = run_config
        .as_ref()
        .map_or(raft_node::config::RUNTIME_WORKER_THREADS_DEFAULT, |c| {
            c.runtime_worker_threads
        });
    let rt = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raft-node: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = rt.block_on(async move {
        // Only the long-running commands take over Ctrl-C; `status` and `admin` keep the
        // default (exit at once).
        let mut signals = match cli.command {
            Cmd::Run(_) => Some(
                Signals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?,
            ),
            _ => None,
        };
        match cli.command {
            Cmd::Run(_) => {
                let cfg = run_config.take().expect("built before the runtime");
                let mut node = RunningNode::start(cfg).await.map_err(|e| e.to_string())?;
                tokio::select! {
                    _ = signals.as_mut().expect("installed for run").recv() => {
                        node.shutdown().await;
                        Ok(())
                    }
                    _ = node.failed() => {
                        node.shutdown().await;
                        Err("the node stopped after a storage failure (see the log)".to_string())
                    }
                }
            }
            Cmd::Dev(args) => dev::main(args).await,
            Cmd::Certs(args) => {
                let made = certs::generate(
                    &args.out,
                    args.cluster_id.map(|c| c.0),
                    &args.nodes,
                    &args.hosts,
                )?;
                println!("cluster ID  {}", ClusterId(made.cluster_id));
                for f in &made.written {
                    println!("wrote       {}", f.display());
                }
                let dir = args.out.display();
                println!("in node N's config file (the cluster ID is in its certificate):");
                println!("  [tls]");
                println!("  ca_file = \"{dir}/{}\"", certs::CA_CERT_FILE);
                println!("  cert_file = \"{dir}/node-N.pem\"");
                println!("  key_file = \"{dir}/node-N-key.pem\"");
                println!("or: raft-node run --tls-ca {dir}/{} --tls-cert {dir}/node-N.pem --tls-key {dir}/node-N-key.pem ...", certs::CA_CERT_FILE);
                Ok(())
            }
            Cmd::Recover { data_dir, id } => {
                let report = raft_node::recover::force_new_cluster(&data_dir, id)?;
                print!("{report}");
                Ok(())
            }
            Cmd::Client(cmd) => match cli::main(cmd).await? {
                cli::Exit::Ok => Ok(()),
                cli::Exit::Missing => Err(String::new()),
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `get` of a missing key: nothing more to say.
        Err(e) if e.is_empty() => ExitCode::from(1),
        Err(e) => {
            eprintln!("raft-node: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `run --help` states each default by hand: it must say what `NodeConfig` really uses.
    #[test]
    fn run_help_states_the_real_defaults() {
        let d = NodeConfig::with_defaults(1, PathBuf::from("x"), Vec::new());
        let expected = [
            ("tick-interval-ms", d.tick_interval_ms.to_string()),
            (
                "election-timeout-ticks-min",
                d.election_timeout_ticks_min.to_string(),
            ),
            (
                "election-timeout-ticks-max",
                d.election_timeout_ticks_max.to_string(),
            ),
            (
                "heartbeat-interval-ticks",
                d.heartbeat_interval_ticks.to_string(),
            ),
            ("request-timeout-ms", d.request_timeout_ms.to_string()),
            (
                "proposals-in-flight-max",
                d.proposals_in_flight_max.to_string(),
            ),
            ("snapshot-entries-max", d.snapshot_entries_max.to_string()),
            (
                "snapshot-log-margin-entries",
                d.snapshot_log_margin_entries.to_string(),
            ),
            (
                "digest-interval-entries",
                d.digest_interval_entries.to_string(),
            ),
            (
                "runtime-worker-threads",
                d.runtime_worker_threads.to_string(),
            ),
            ("storage", "disk".to_string()),
        ];
        let cli = Cli::command();
        let run = cli.find_subcommand("run").expect("run subcommand");
        for (flag, default) in expected {
            let arg = run
                .get_arguments()
                .find(|a| a.get_long() == Some(flag))
                .unwrap_or_else(|| panic!("--{flag} missing"));
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(
                help.contains(&format!("[default: {default}]")),
                "--{flag}: `{help}` should state [default: {default}]"
            );
        }
        // Every visible flag explains itself.
        for arg in run.get_arguments().filter(|a| !a.is_hide_set()) {
            assert!(arg.get_help().is_some(), "{:?} has no help", arg.get_id());
        }
    }

    /// Every setting of `run` can come from a flag, from RAFT_NODE_<FLAG>, and from the file.
    #[test]
    fn every_config_field_has_a_flag_and_an_environment_variable() {
        let mut cli = Cli::command();
        cli.build();
        let run = cli.find_subcommand("run").expect("run subcommand");
        let flags: Vec<String> = run
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(str::to_string))
            .filter(|f| !["help", "check-config"].contains(&f.as_str()))
            .collect();
        for arg in run.get_arguments().filter(|a| !a.is_hide_set()) {
            let Some(long) = arg.get_long() else { continue };
            if ["help", "check-config"].contains(&long) {
                continue;
            }
            let expected = format!("RAFT_NODE_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(expected.as_str()),
                "--{long} should read {expected}"
            );
        }
        for field in NodeConfig::field_paths() {
            let flag = match field.as_str() {
                "peers" | "peers.id" | "peers.addr" | "peers.client_addr" => "peer".to_string(),
                "initial_voters" => "initial-voter".to_string(),
                "tls" | "limits" => continue,
                "tls.ca_file" => "tls-ca".to_string(),
                "tls.cert_file" => "tls-cert".to_string(),
                "tls.key_file" => "tls-key".to_string(),
                other => other
                    .strip_prefix("limits.")
                    .or_else(|| other.strip_prefix("tls."))
                    .map(|f| {
                        if other.starts_with("tls.") {
                            format!("tls-{f}")
                        } else {
                            f.to_string()
                        }
                    })
                    .unwrap_or_else(|| other.to_string())
                    .replace('_', "-"),
            };
            assert!(flags.contains(&flag), "`{field}` has no flag --{flag}");
        }
    }
}
