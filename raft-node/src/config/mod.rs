//! A node's configuration and its validation. Every field can be set in the TOML file
//! (`--config`), by a flag of `raft-node run`, and by an environment variable named after the
//! flag (`--tick-interval-ms` is `RAFT_NODE_TICK_INTERVAL_MS`); a flag beats the environment,
//! which beats the file, which beats the default. `docs/raft-node.sample.toml` lists every
//! field with its default (a test keeps it complete).
//!
//! Peer addresses may be host names (`localhost:7001`): a peer's is resolved at every
//! connection attempt, this node's own listening addresses once at start.
//!
//! The file is read in `toml_file.rs` (errors located by line, column and field path);
//! the checks a configuration must pass before a node starts are in `validate.rs`.
//!
//! ```toml
//! id = 1
//! data_dir = "data/node-1"
//! http_addr = "127.0.0.1:8001"
//! [[peers]]
//! id = 1
//! addr = "127.0.0.1:7001"          # peer (Raft) address
//! client_addr = "127.0.0.1:6001"   # native protocol and RESP
//! [[peers]]
//! id = 2
//! addr = "127.0.0.1:7002"
//! client_addr = "127.0.0.1:6002"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use raft_core::NodeId;
pub use raft_net::PeerAddr;
use serde::{Deserialize, Serialize};

use crate::cluster_id::ClusterId;
use crate::limits::ClientLimits;
use crate::runtime::RuntimeConfig;
use crate::tls::TlsConfig;

mod toml_file;
mod validate;

/// A configuration that cannot work, naming the field at fault (and, for a file, where).
#[derive(Debug)]
pub struct ConfigError {
    /// The field (`peers`, `data_dir`, `limits.idle_timeout_ms`, `peers[2].addr`, ...).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// Line and column (1-based) in the TOML file, for errors found while parsing it.
    pub location: Option<(usize, usize)>,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
            location: None,
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config error in `{}`", self.field)?;
        if let Some((line, column)) = self.location {
            write!(f, " at line {line}, column {column}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// One member of the static cluster list.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The member's ID (never 0).
    pub id: NodeId,
    /// Its peer (Raft) address: `IP:PORT` or `HOST:PORT`, a host name resolved at every
    /// connection attempt.
    pub addr: PeerAddr,
    /// Its client address (native and RESP), used for redirects and forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<PeerAddr>,
}

impl std::str::FromStr for PeerConfig {
    type Err = String;

    /// `ID=PEER_ADDR` or `ID=PEER_ADDR,CLIENT_ADDR`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (id, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected ID=PEER_ADDR[,CLIENT_ADDR]"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|e| format!("`{s}`: bad ID: {e}"))?;
        let (addr, client) = match rest.split_once(',') {
            Some((a, c)) => (a, Some(c)),
            None => (rest, None),
        };
        let addr = addr
            .trim()
            .parse()
            .map_err(|e| format!("`{s}`: bad peer address {e}"))?;
        let client_addr = client
            .map(|c| c.trim().parse())
            .transpose()
            .map_err(|e| format!("`{s}`: bad client address {e}"))?;
        Ok(PeerConfig {
            id,
            addr,
            client_addr,
        })
    }
}

fn default_tick_interval_ms() -> u64 {
    RuntimeConfig::default().tick_interval_ms
}
fn default_election_min() -> u32 {
    RuntimeConfig::default().election_timeout_ticks_min
}
fn default_election_max() -> u32 {
    RuntimeConfig::default().election_timeout_ticks_max
}
fn default_heartbeat() -> u32 {
    RuntimeConfig::default().heartbeat_interval_ticks
}
fn default_request_timeout_ms() -> u64 {
    RuntimeConfig::default().request_timeout_ms
}
fn default_snapshot_entries_max() -> u64 {
    100_000
}
fn default_snapshot_log_margin_entries() -> u64 {
    raft_snapshot::SnapshotPolicy::default().trailing_margin_entries
}
fn default_digest_interval_entries() -> u64 {
    RuntimeConfig::default().digest_interval_entries
}
/// Worker threads of the node's async runtime by default; see
/// [`NodeConfig::runtime_worker_threads`]. One, by measurement: with 3 nodes and the load
/// generator on 2 cores (`cargo xtask bench --only cluster --quick`, same machine, runs a
/// few minutes apart) 1 worker gave 32,053 SET/s at 64 clients against 18,031 with 2, and
/// 51,682 linearizable GET/s at 16 clients against 42,671: the second worker mostly added
/// context switches and cross-thread wake-ups.
pub const RUNTIME_WORKER_THREADS_DEFAULT: usize = 1;
/// The most worker threads a node's runtime may be given.
pub const RUNTIME_WORKER_THREADS_MAX: usize = 64;

fn default_runtime_worker_threads() -> usize {
    RUNTIME_WORKER_THREADS_DEFAULT
}
fn default_proposals_in_flight_max() -> usize {
    RuntimeConfig::default().proposals_in_flight_max
}

/// The default of [`NodeConfig::log_level`].
pub const LOG_LEVEL_DEFAULT: &str = "info";

fn default_log_level() -> String {
    LOG_LEVEL_DEFAULT.to_string()
}

/// How log lines are written to standard error (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Everything one node needs to run.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's ID; must appear in `peers`.
    pub id: NodeId,
    /// Where to listen for peers; defaults to this node's `addr` in `peers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<SocketAddr>,
    /// Where to listen for clients (native protocol and RESP on one port); defaults to this
    /// node's `client_addr` in `peers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<SocketAddr>,
    /// Where to serve HTTP (`/status`, `/metrics`, `/kv/{key}`); none if absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<SocketAddr>,
    /// The node's data directory (locked while the node runs).
    pub data_dir: PathBuf,
    /// The static cluster: every member, this node included.
    pub peers: Vec<PeerConfig>,
    /// Length of one protocol tick.
    #[serde(default = "default_tick_interval_ms")]
    pub tick_interval_ms: u64,
    /// Election timeout, lower bound, in ticks.
    #[serde(default = "default_election_min")]
    pub election_timeout_ticks_min: u32,
    /// Election timeout, exclusive upper bound, in ticks.
    #[serde(default = "default_election_max")]
    pub election_timeout_ticks_max: u32,
    /// Heartbeat interval in ticks.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_ticks: u32,
    /// Writes and linearizable reads fail with `Unavailable` after this long.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Writes in flight at most before clients get "busy, retry".
    #[serde(default = "default_proposals_in_flight_max")]
    pub proposals_in_flight_max: usize,
    /// Take a snapshot (and compact the log below it) after this many applied entries at
    /// most. A node's first snapshot comes early by a share of this drawn from its ID (under
    /// half), so the nodes of a cluster do not all snapshot at once.
    #[serde(default = "default_snapshot_entries_max")]
    pub snapshot_entries_max: u64,
    /// Entries kept in the log below the newest snapshot, so that a follower slightly
    /// behind is sent entries rather than the whole snapshot. 0 compacts to the snapshot.
    #[serde(default = "default_snapshot_log_margin_entries")]
    pub snapshot_log_margin_entries: u64,
    /// Digest the state machine at every log index that is a multiple of this, for the
    /// leader's anti-entropy comparison (0: never). The same on every node.
    #[serde(default = "default_digest_interval_entries")]
    pub digest_interval_entries: u64,
    /// FAULT INJECTION for tests (flag `--debug-corrupt-apply-at`, never read from a file):
    /// corrupt this replica's state after applying this index.
    #[serde(skip)]
    pub debug_corrupt_apply_at: Option<u64>,
    /// The voters a new cluster starts with; defaults to every member of `peers`. Peers
    /// outside this list are known addresses that can be added later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_voters: Option<Vec<NodeId>>,
    /// Start with no membership and wait for the leader to add this node (as a learner).
    #[serde(default)]
    pub join: bool,
    /// Identifies the cluster on the wire: peers of another cluster are refused at the
    /// handshake. The same on every node: 32 hex digits (`raft-node certs` draws one). When
    /// absent, the one in `DATA_DIR/CLUSTER_ID` or in the TLS certificate; see
    /// [`crate::cluster_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<ClusterId>,
    /// Where the log lives: `disk` (raft-log under `DATA_DIR/log`, the default) or `memory`
    /// (nothing survives a restart; for experiments only).
    #[serde(default)]
    pub storage: StorageKind,
    /// Worker threads of the process's async runtime (`raft-node run` only): 1 (the
    /// default) runs every task on one thread, the fewest context switches; more lets
    /// client connections, peers and the protocol task run in parallel, which pays only
    /// with cores to spare. The log's sync thread is extra either way.
    #[serde(default = "default_runtime_worker_threads")]
    pub runtime_worker_threads: usize,
    /// TLS (`[tls]`): mutual TLS on the peer port, TLS on the client ports; none if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Bounds on what clients can make the node hold or do (the `[limits]` section).
    #[serde(default)]
    pub limits: ClientLimits,
    /// Users and roles of the client interfaces (see [`crate::auth`]); when absent,
    /// `RAFT_NODE_AUTH_FILE`, then `RAFT_NODE_PASSWORD` alone; with neither, no
    /// authentication (every client is an admin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_file: Option<PathBuf>,
    /// Start even when a listener binds a non-loopback address without TLS and
    /// credentials (protected mode off). For trusted networks and experiments only.
    #[serde(default)]
    pub insecure_allow_plaintext: bool,
    /// Least severe log events written: `error`, `warn`, `info`, `debug`, `trace` or `off`.
    /// `RUST_LOG`, when set, refines it (`raft_net=debug`); a bare level in it replaces it.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// How log lines are written: `text` or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
}

/// Where a node keeps its log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// raft-log's write-ahead log under `DATA_DIR/log`.
    #[default]
    Disk,
    /// In memory: a restarted node comes back empty, which is unsafe under the same ID.
    Memory,
}

impl NodeConfig {
    /// Node `id` with data under `data_dir`, in the cluster `peers`, and every other setting at
    /// its default (the same defaults a TOML file gets for fields it leaves out).
    pub fn with_defaults(id: NodeId, data_dir: PathBuf, peers: Vec<PeerConfig>) -> NodeConfig {
        NodeConfig {
            id,
            peer_addr: None,
            client_addr: None,
            http_addr: None,
            data_dir,
            peers,
            tick_interval_ms: default_tick_interval_ms(),
            election_timeout_ticks_min: default_election_min(),
            election_timeout_ticks_max: default_election_max(),
            heartbeat_interval_ticks: default_heartbeat(),
            request_timeout_ms: default_request_timeout_ms(),
            proposals_in_flight_max: default_proposals_in_flight_max(),
            snapshot_entries_max: default_snapshot_entries_max(),
            snapshot_log_margin_entries: default_snapshot_log_margin_entries(),
            digest_interval_entries: default_digest_interval_entries(),
            debug_corrupt_apply_at: None,
            initial_voters: None,
            join: false,
            cluster_id: None,
            storage: StorageKind::default(),
            runtime_worker_threads: default_runtime_worker_threads(),
            tls: None,
            limits: ClientLimits::default(),
            auth_file: None,
            insecure_allow_plaintext: false,
            log_level: default_log_level(),
            log_format: LogFormat::default(),
        }
    }

    /// This node's own entry in `peers`.
    pub fn own(&self) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.id == self.id)
    }

    /// The peer address to listen on: `peer_addr`, else this node's `addr` in `peers`
    /// (a host name resolved now).
    pub fn peer_listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        if let Some(a) = self.peer_addr {
            return Ok(a);
        }
        let own = self.own().ok_or_else(|| {
            ConfigError::new(
                "peers",
                format!("own ID {} is missing from the peers list", self.id),
            )
        })?;
        resolve_listen(&own.addr, "peers")
    }

    /// The client address to listen on: `client_addr`, else this node's `client_addr` in
    /// `peers` (a host name resolved now).
    pub fn client_listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        if let Some(a) = self.client_addr {
            return Ok(a);
        }
        match self.own().and_then(|p| p.client_addr.as_ref()) {
            Some(a) => resolve_listen(a, "peers"),
            None => Err(ConfigError::new(
                "client_addr",
                "no client address: set client_addr or this node's client_addr in peers",
            )),
        }
    }

    /// The membership a fresh node starts from: empty when joining, else the initial voters.
    pub fn bootstrap_voters(&self) -> Vec<NodeId> {
        if self.join {
            return Vec::new();
        }
        match &self.initial_voters {
            Some(v) => v.clone(),
            None => self.peers.iter().map(|p| p.id).collect(),
        }
    }

    /// The runtime settings.
    pub fn runtime(&self) -> RuntimeConfig {
        RuntimeConfig {
            tick_interval_ms: self.tick_interval_ms,
            election_timeout_ticks_min: self.election_timeout_ticks_min,
            election_timeout_ticks_max: self.election_timeout_ticks_max,
            heartbeat_interval_ticks: self.heartbeat_interval_ticks,
            request_timeout_ms: self.request_timeout_ms,
            proposals_in_flight_max: self.proposals_in_flight_max,
            digest_interval_entries: self.digest_interval_entries,
            debug_corrupt_apply_at: self.debug_corrupt_apply_at,
            ..RuntimeConfig::default()
        }
    }
    /// The raft-core settings this configuration gives.
    pub fn raft_config(&self) -> raft_core::Config {
        let mut raft = raft_core::Config::new(self.id);
        raft.election_timeout_ticks_min = self.election_timeout_ticks_min;
        raft.election_timeout_ticks_max = self.election_timeout_ticks_max;
        raft.heartbeat_interval_ticks = self.heartbeat_interval_ticks;
        // Each process gets a different seed so that restarted nodes do not replay the
        // same election timeouts in lockstep.
        raft.seed = self.id ^ u64::from(std::process::id()).rotate_left(17);
        raft
    }
}

/// This node's own address from `peers`, resolved once to listen on; a name that does not
/// resolve is an error naming it.
fn resolve_listen(addr: &PeerAddr, field: &str) -> Result<SocketAddr, ConfigError> {
    addr.resolve_blocking()
        .map_err(|e| ConfigError::new(field, format!("this node's address: {e}")))?
        .into_iter()
        .next()
        .ok_or_else(|| ConfigError::new(field, format!("{addr} resolves to no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn base() -> String {
        r#"
id = 1
data_dir = "/tmp/x"
[[peers]]
id = 1
addr = "127.0.0.1:7001"
client_addr = "127.0.0.1:6001"
[[peers]]
id = 2
addr = "127.0.0.1:7002"
"#
        .to_string()
    }

    #[test]
    fn parses_and_validates() {
        let cfg = NodeConfig::from_toml(&base()).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.client_listen_addr().unwrap().port(), 6001);
        assert_eq!(cfg.tick_interval_ms, 10);
    }

    #[test]
    fn snapshot_and_digest_settings_parse_and_fault_injection_stays_off_files() {
        let text = base().replacen(
            "id = 1\n",
            "id = 1\nsnapshot_log_margin_entries = 7\ndigest_interval_entries = 0\n",
            1,
        );
        let cfg = NodeConfig::from_toml(&text).unwrap();
        assert_eq!(cfg.snapshot_log_margin_entries, 7);
        assert_eq!(cfg.runtime().digest_interval_entries, 0);
        let defaults = NodeConfig::from_toml(&base()).unwrap();
        assert_eq!(defaults.snapshot_log_margin_entries, 10_000);
        assert_eq!(defaults.debug_corrupt_apply_at, None);
        // The fault-injection hook is a command-line flag only: a config file cannot turn it
        // on by accident.
        let text = base().replacen("id = 1\n", "id = 1\ndebug_corrupt_apply_at = 5\n", 1);
        let e = NodeConfig::from_toml(&text).unwrap_err();
        assert_eq!(e.field, "debug_corrupt_apply_at", "{e}");
    }

    #[test]
    fn tls_section_parses() {
        let text = base().replacen(
            "[[peers]]",
            "[tls]\nca_file = \"ca.pem\"\ncert_file = \"n1.pem\"\nkey_file = \"n1-key.pem\"\n[[peers]]",
            1,
        );
        let cfg = NodeConfig::from_toml(&text).unwrap();
        let tls = cfg.tls.unwrap();
        assert_eq!(tls.cert_file, PathBuf::from("n1.pem"));
        assert!(!tls.client_cert_required);
        assert!(NodeConfig::from_toml(&base()).unwrap().tls.is_none());
    }

    #[test]
    fn limits_section_parses_and_refuses_unknown_fields() {
        let text = format!("{}\n[limits]\nidle_timeout_ms = 7\n", base());
        let cfg = NodeConfig::from_toml(&text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.limits.idle_timeout_ms, 7);
        assert_eq!(
            cfg.limits.request_bytes_max,
            ClientLimits::default().request_bytes_max
        );
        let text = format!("{}\n[limits]\nidle_timeout = 7\n", base());
        let e = NodeConfig::from_toml(&text).unwrap_err();
        assert_eq!(e.field, "limits.idle_timeout", "{e}");
        let text = format!("{}\n[limits]\nread_timeout_ms = 0\n", base());
        let e = NodeConfig::from_toml(&text)
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "limits.read_timeout_ms", "{e}");
    }

    #[test]
    fn peer_flag_syntax() {
        let p: PeerConfig = "3=127.0.0.1:7003,127.0.0.1:6003".parse().unwrap();
        assert_eq!(p.id, 3);
        assert_eq!(p.client_addr.unwrap().port(), 6003);
        assert!("x=1".parse::<PeerConfig>().is_err());
        let named: PeerConfig = "1=localhost:7001,node-1.example:6001".parse().unwrap();
        assert_eq!(named.addr.to_string(), "localhost:7001");
        assert_eq!(
            named.client_addr.unwrap(),
            PeerAddr::Name {
                host: "node-1.example".into(),
                port: 6001
            }
        );
        let e = "1=localhost".parse::<PeerConfig>().unwrap_err();
        assert!(e.contains("no port") && e.contains("HOST:PORT"), "{e}");
    }

    #[test]
    fn host_names_in_peers_resolve_for_listening_and_a_bad_one_is_named() {
        let text = base()
            .replace("127.0.0.1:7001", "localhost:7001")
            .replace("127.0.0.1:7002", "node-2.example:7002");
        let cfg = NodeConfig::from_toml(&text).unwrap();
        // Only this node's own address is resolved now; node 2's waits for a connection.
        cfg.validate().unwrap();
        assert!(cfg.peer_listen_addr().unwrap().ip().is_loopback());
        // A 64-byte label breaks DNS's 63-byte limit, so the resolver fails it locally and
        // no query leaves the machine.
        let host = "a".repeat(64);
        let text = base().replace("127.0.0.1:7001", &format!("{host}:7001"));
        let e = NodeConfig::from_toml(&text)
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "peers");
        assert!(e.message.contains(&format!("`{host}`")), "{e}");
    }
}
