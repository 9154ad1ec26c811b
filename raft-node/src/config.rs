//! A node's configuration (TOML file or flags) and its validation.
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

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use raft_core::NodeId;
use serde::Deserialize;

use crate::cluster_id::ClusterId;
use crate::limits::ClientLimits;
use crate::runtime::RuntimeConfig;
use crate::tls::TlsConfig;

/// A configuration that cannot work, naming the field at fault.
#[derive(Debug, thiserror::Error)]
#[error("config error in `{field}`: {message}")]
pub struct ConfigError {
    /// The field (`peers`, `data_dir`, `client_addr`, ...).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// One member of the static cluster list.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The member's ID (never 0).
    pub id: NodeId,
    /// Its peer (Raft) address.
    pub addr: SocketAddr,
    /// Its client address (native and RESP), used for redirects and forwarding.
    pub client_addr: Option<SocketAddr>,
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
            .map_err(|e| format!("`{s}`: bad peer address: {e}"))?;
        let client_addr = client
            .map(|c| c.trim().parse())
            .transpose()
            .map_err(|e| format!("`{s}`: bad client address: {e}"))?;
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

/// Everything one node needs to run.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's ID; must appear in `peers`.
    pub id: NodeId,
    /// Where to listen for peers; defaults to this node's `addr` in `peers`.
    pub peer_addr: Option<SocketAddr>,
    /// Where to listen for clients (native protocol and RESP on one port); defaults to this
    /// node's `client_addr` in `peers`.
    pub client_addr: Option<SocketAddr>,
    /// Where to serve HTTP (`/status`, `/metrics`, `/kv/{key}`); none if absent.
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
    #[serde(default)]
    pub initial_voters: Option<Vec<NodeId>>,
    /// Start with no membership and wait for the leader to add this node (as a learner).
    #[serde(default)]
    pub join: bool,
    /// Identifies the cluster on the wire: peers of another cluster are refused at the
    /// handshake. The same on every node: 32 hex digits (`raft-node certs` draws one). When
    /// absent, the one in `DATA_DIR/CLUSTER_ID` or in the TLS certificate; see
    /// [`crate::cluster_id`].
    #[serde(default)]
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
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Bounds on what clients can make the node hold or do (the `[limits]` section).
    #[serde(default)]
    pub limits: ClientLimits,
    /// Users and roles of the client interfaces (see [`crate::auth`]); when absent,
    /// `RAFT_NODE_AUTH_FILE`, then `RAFT_NODE_PASSWORD` alone; with neither, no
    /// authentication (every client is an admin).
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
    /// Start even when a listener binds a non-loopback address without TLS and
    /// credentials (protected mode off). For trusted networks and experiments only.
    #[serde(default)]
    pub insecure_allow_plaintext: bool,
}

/// Where a node keeps its log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
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
        }
    }

    /// Parses a TOML configuration.
    pub fn from_toml(text: &str) -> Result<NodeConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            let field = message
                .split('`')
                .nth(1)
                .unwrap_or("config file")
                .to_string();
            ConfigError::new(field, message.replace('\n', " "))
        })
    }

    /// This node's own entry in `peers`.
    pub fn own(&self) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.id == self.id)
    }

    /// The peer address to listen on.
    pub fn peer_listen_addr(&self) -> Option<SocketAddr> {
        self.peer_addr.or_else(|| self.own().map(|p| p.addr))
    }

    /// The client address to listen on.
    pub fn client_listen_addr(&self) -> Option<SocketAddr> {
        self.client_addr
            .or_else(|| self.own().and_then(|p| p.client_addr))
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

    /// Checks everything that can be checked without binding sockets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::new("id", "0 is reserved; use 1 or more"));
        }
        if self.peers.is_empty() {
            return Err(ConfigError::new("peers", "the cluster list is empty"));
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for p in &self.peers {
            if p.id == 0 {
                return Err(ConfigError::new("peers", "peer ID 0 is reserved"));
            }
            if !ids.insert(p.id) {
                return Err(ConfigError::new("peers", format!("duplicate ID {}", p.id)));
            }
            if !addrs.insert(p.addr) {
                return Err(ConfigError::new(
                    "peers",
                    format!("duplicate peer address {}", p.addr),
                ));
            }
        }
        if self.own().is_none() {
            return Err(ConfigError::new(
                "peers",
                format!("own ID {} is missing from the peers list", self.id),
            ));
        }
        if self.client_listen_addr().is_none() {
            return Err(ConfigError::new(
                "client_addr",
                "no client address: set client_addr or this node's client_addr in peers",
            ));
        }
        if self.tick_interval_ms == 0 {
            return Err(ConfigError::new("tick_interval_ms", "must be at least 1"));
        }
        if !(1..=RUNTIME_WORKER_THREADS_MAX).contains(&self.runtime_worker_threads) {
            return Err(ConfigError::new(
                "runtime_worker_threads",
                format!("must be 1 to {RUNTIME_WORKER_THREADS_MAX}"),
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(ConfigError::new("request_timeout_ms", "must be at least 1"));
        }
        if let Some(voters) = &self.initial_voters {
            if voters.is_empty() {
                return Err(ConfigError::new(
                    "initial_voters",
                    "must name at least one voter",
                ));
            }
            if let Some(v) = voters.iter().find(|v| !ids.contains(v)) {
                return Err(ConfigError::new(
                    "initial_voters",
                    format!("{v} is not in the peers list"),
                ));
            }
        }
        if self.snapshot_entries_max == 0 {
            return Err(ConfigError::new(
                "snapshot_entries_max",
                "must be at least 1",
            ));
        }
        if self.proposals_in_flight_max == 0 {
            return Err(ConfigError::new(
                "proposals_in_flight_max",
                "must be at least 1",
            ));
        }
        self.limits.validate()?;
        let raft = self.raft_config();
        raft.validate().map_err(|e| {
            let field = e.0.split([' ', ':']).next().unwrap_or("raft").to_string();
            ConfigError::new(field, e.0)
        })?;
        Ok(())
    }

    /// Protected mode (Redis' is the model): a node that any other host can reach must
    /// have TLS and credentials, unless `insecure_allow_plaintext` says otherwise. Names the
    /// first non-loopback listener and says how to fix it.
    pub fn check_protected_mode(&self, credentials: bool, tls: bool) -> Result<(), ConfigError> {
        if self.insecure_allow_plaintext || (credentials && tls) {
            return Ok(());
        }
        let listeners = [
            ("client_addr", self.client_listen_addr()),
            ("peer_addr", self.peer_listen_addr()),
            ("http_addr", self.http_addr),
        ];
        let Some((field, addr)) = listeners
            .into_iter()
            .find_map(|(f, a)| a.filter(|a| !a.ip().is_loopback()).map(|a| (f, a)))
        else {
            return Ok(());
        };
        let mut missing = Vec::new();
        if !tls {
            missing.push(
                "TLS (create certificates with `raft-node certs` and give the node its \
                 certificate directory)",
            );
        }
        if !credentials {
            missing.push(
                "credentials (--auth-file FILE, auth_file in the config, \
                 RAFT_NODE_AUTH_FILE or RAFT_NODE_PASSWORD)",
            );
        }
        Err(ConfigError::new(
            field,
            format!(
                "protected mode: {addr} is reachable from other hosts but the node has no {}. \
                 Fix: listen on 127.0.0.1 only, or set up {}, or accept that anyone who \
                 can reach it may read, write and change the cluster's membership with \
                 --insecure-allow-plaintext (insecure_allow_plaintext = true)",
                if missing.len() == 2 {
                    "TLS and no credentials"
                } else if tls {
                    "credentials"
                } else {
                    "TLS"
                },
                missing.join(" and ")
            ),
        ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> String {
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
    fn errors_name_the_field() {
        let dup = base().replace("id = 2", "id = 1");
        let e = NodeConfig::from_toml(&dup).unwrap().validate().unwrap_err();
        assert_eq!(e.field, "peers");
        assert!(e.to_string().contains("duplicate ID 1"), "{e}");
        let missing = base().replacen("id = 1", "id = 3", 1);
        let e = NodeConfig::from_toml(&missing)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("own ID 3 is missing"), "{e}");
        let unknown = base().replacen("id = 1\n", "id = 1\nbogus = 2\n", 1);
        let e = NodeConfig::from_toml(&unknown).unwrap_err();
        assert_eq!(e.field, "bogus", "{e}");
        let ticks = base().replacen("id = 1\n", "id = 1\nelection_timeout_ticks_min = 1\n", 1);
        let e = NodeConfig::from_toml(&ticks)
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "election_timeout_ticks_min", "{e}");
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
    fn protected_mode_refuses_open_listeners_without_tls_and_credentials() {
        let local = NodeConfig::from_toml(&base()).unwrap();
        local.check_protected_mode(false, false).unwrap();
        let open = base().replace("127.0.0.1:6001", "0.0.0.0:6001");
        let mut cfg = NodeConfig::from_toml(&open).unwrap();
        let e = cfg.check_protected_mode(false, false).unwrap_err();
        assert_eq!(e.field, "client_addr");
        for hint in [
            "0.0.0.0:6001",
            "127.0.0.1",
            "--auth-file",
            "raft-node certs",
            "--insecure-allow-plaintext",
        ] {
            assert!(e.message.contains(hint), "{e} should mention {hint}");
        }
        let e = cfg.check_protected_mode(true, false).unwrap_err();
        assert!(!e.message.contains("--auth-file"), "{e}");
        assert!(cfg.check_protected_mode(false, true).is_err());
        cfg.check_protected_mode(true, true).unwrap();
        cfg.insecure_allow_plaintext = true;
        cfg.check_protected_mode(false, false).unwrap();
        let http = base().replacen("id = 1\n", "id = 1\nhttp_addr = \"10.0.0.5:8001\"\n", 1);
        let e = NodeConfig::from_toml(&http)
            .unwrap()
            .check_protected_mode(false, false)
            .unwrap_err();
        assert_eq!(e.field, "http_addr", "{e}");
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
        assert_eq!(e.field, "idle_timeout", "{e}");
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
    }
}
