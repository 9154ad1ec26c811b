//! Starting and stopping one node: the data-directory lock, listeners, transport, runtime
//! and client servers.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft_core::{MemLog, Membership, SnapshotMeta};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use raft_snapshot::{restore_state_machine, SnapshotPolicy, SnapshotStore, SnapshotStoreConfig};

use crate::auth::{Auth, InternalClient, ENV_INTERNAL_PASSWORD};
use crate::cluster_view::ClusterProbe;
use crate::config::{ConfigError, NodeConfig, StorageKind};
use crate::kv::{KvLimits, KvStateMachine};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::runtime::{self, HostedMachine, NodeHandle, RuntimeParts};
use crate::store::{adopt_snapshot_ahead_of_log, NodeStore};
use crate::store_log::open_log;
use crate::transport::{Inbound, PeerTransport};
use crate::transport_net::NetTransport;
use crate::watch::{WatchHub, WatchLimits};
use crate::{http, server};

/// Inbound batches of peer messages (raft-net caps a batch at `INBOUND_BATCH_MESSAGES_MAX`)
/// queued at most; when full, raft-net stops reading and TCP pushes back on the peer.
const INBOUND_QUEUE_BATCHES_MAX: usize = 1_024;

/// An exclusive `flock` on `DATA_DIR/LOCK`, released when dropped or when the process dies
/// (so a SIGKILLed node leaves no stale lock behind).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Creates `dir` if needed and locks it.
    pub fn acquire(dir: &Path) -> Result<DirLock, ConfigError> {
        let field = |m: String| ConfigError::new("data_dir", m);
        std::fs::create_dir_all(dir)
            .map_err(|e| field(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| field(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: flock on a descriptor we own; no memory is shared with the kernel.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(field(format!(
                "{} is locked by another running node",
                dir.display()
            )));
        }
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens `DATA_DIR/snapshots`, where the node writes its snapshots and the transport
/// receives the leader's. With the log in memory, an earlier run's snapshots are cleared
/// first: the log starts empty on every run, so they describe a history this node no longer
/// has, and keeping them would apply entries twice.
fn open_snapshot_store(config: &NodeConfig) -> Result<SnapshotStore, ConfigError> {
    let field = |m: String| ConfigError::new("data_dir", m);
    let dir = config.data_dir.join("snapshots");
    if config.storage == StorageKind::Memory && dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| field(format!("cannot clear {}: {e}", dir.display())))?;
    }
    let (snapshots, _report) = SnapshotStore::open(&dir, SnapshotStoreConfig::default())
        .map_err(|e| field(format!("snapshot store: {e}")))?;
    Ok(snapshots)
}

/// Restores the state machine from the newest valid snapshot that the log can continue
/// from; a snapshot beyond the log's end becomes the log's starting point
/// ([`adopt_snapshot_ahead_of_log`]).
fn restore_snapshot<S: NodeStore, M: HostedMachine>(
    snapshots: &SnapshotStore,
    store: &mut S,
    mut sm: M,
) -> Result<M, ConfigError> {
    let field = |m: String| ConfigError::new("data_dir", m);
    let latest = snapshots
        .open_latest()
        .map_err(|e| field(format!("snapshot store: {e}")))?;
    if let Some(reader) = latest.snapshot {
        let header = restore_state_machine(reader, &mut sm)
            .map_err(|e| field(format!("restoring the newest snapshot: {e}")))?;
        tracing::info!(
            index = header.meta.index,
            "state machine restored from a snapshot"
        );
        let log_last = store.last_index();
        if adopt_snapshot_ahead_of_log(store, &header.meta)
            .map_err(|e| field(format!("starting the log at the snapshot: {e}")))?
        {
            tracing::warn!(
                index = header.meta.index,
                log_last,
                "the log ended before the newest snapshot (unsynced entries lost): it now \
                 starts at the snapshot"
            );
        }
    }
    let log_snapshot = store.snapshot_meta().index;
    if sm.applied_index() < log_snapshot {
        return Err(field(format!(
            "the log starts after index {log_snapshot} but the newest valid snapshot is at {}",
            sm.applied_index()
        )));
    }
    Ok(sm)
}

/// What the runtime gets whatever the log.
struct SharedParts {
    snapshots: SnapshotStore,
    transport: Arc<dyn PeerTransport>,
    inbound: mpsc::Receiver<Inbound>,
    client_addrs: HashMap<u64, String>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    http_addr: Option<SocketAddr>,
}

/// Restores the state machine against `store` and starts the runtime on it.
fn spawn_runtime<S: NodeStore, M: HostedMachine>(
    config: &NodeConfig,
    mut store: S,
    machine: M,
    parts: SharedParts,
) -> Result<(NodeHandle, JoinHandle<()>), ConfigError> {
    let snapshots = parts.snapshots;
    let state_machine = restore_snapshot(&snapshots, &mut store, machine)?;
    let snapshot_policy = SnapshotPolicy {
        entries_since_snapshot_max: config.snapshot_entries_max,
        trailing_margin_entries: config.snapshot_log_margin_entries,
        ..SnapshotPolicy::default()
    };
    let mut runtime_config = config.runtime();
    runtime_config.http_addr = parts.http_addr.map(|a| a.to_string());
    runtime::spawn(RuntimeParts {
        raft: config.raft_config(),
        runtime: runtime_config,
        store,
        transport: parts.transport,
        inbound: parts.inbound,
        state_machine,
        snapshots,
        snapshot_policy,
        client_addrs: parts.client_addrs,
        known_peers: config.peers.iter().map(|p| p.id).collect(),
        metrics: parts.metrics,
        shutdown: parts.shutdown,
    })
    .map_err(|e| ConfigError::new("raft", e.to_string()))
}

/// A running node.
pub struct RunningNode {
    /// This node's ID.
    pub id: u64,
    /// Where peers reach it.
    pub peer_addr: SocketAddr,
    /// Where clients (native and RESP) reach it.
    pub client_addr: SocketAddr,
    /// Where HTTP is served, if anywhere.
    pub http_addr: Option<SocketAddr>,
    /// Talks to the runtime.
    pub handle: NodeHandle,
    shutdown: watch::Sender<bool>,
    runtime_task: JoinHandle<()>,
    _lock: DirLock,
}

/// The IP addresses the members' addresses resolve to now, for the client port's reserved
/// slots (a name that does not resolve yet reserves nothing).
async fn member_ips(peers: &[crate::config::PeerConfig]) -> Vec<std::net::IpAddr> {
    let mut ips = Vec::new();
    for a in peers
        .iter()
        .flat_map(|p| std::iter::once(&p.addr).chain(p.client_addr.as_ref()))
    {
        match a.resolve().await {
            Ok(found) => ips.extend(found.iter().map(|s| s.ip())),
            Err(e) => tracing::warn!(address = %a, "{e}"),
        }
    }
    ips
}

async fn bind(addr: SocketAddr, field: &str) -> Result<TcpListener, ConfigError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ConfigError::new(field, format!("cannot listen on {addr}: {e}")))
}

impl RunningNode {
    /// Validates `config`, locks the data directory, binds every listener and starts the node
    /// with the built-in key-value state machine.
    pub async fn start(config: NodeConfig) -> Result<RunningNode, ConfigError> {
        let limits = KvLimits::from_client_limits(&config.limits);
        let hub = WatchHub::new(WatchLimits::from_client_limits(&config.limits));
        let machine = KvStateMachine::new(limits).with_change_sink(hub.clone());
        Self::start_hosting(config, machine, Some(hub)).await
    }

    /// As [`RunningNode::start`], hosting `machine` (empty; it is restored from the newest
    /// snapshot if the data directory has one) instead of the key-value store. Clients
    /// reach it with raft-client's `propose` and `query`; status, metrics, administration,
    /// snapshots and anti-entropy work as for the built-in store, while RESP's key-value
    /// commands and HTTP `/kv` speak the built-in store's commands and answer with an error
    /// for another machine's responses.
    pub async fn start_with<M: HostedMachine>(
        config: NodeConfig,
        machine: M,
    ) -> Result<RunningNode, ConfigError> {
        Self::start_hosting(config, machine, None).await
    }

    /// Starts the node hosting `machine`; watchers are served from `watch`, the machine's
    /// change sink, when there is one.
    async fn start_hosting<M: HostedMachine>(
        config: NodeConfig,
        machine: M,
        watch: Option<Arc<WatchHub>>,
    ) -> Result<RunningNode, ConfigError> {
        config.validate()?;
        let auth = Arc::new(
            Auth::load(config.auth_file.as_deref())
                .map_err(|e| ConfigError::new("auth_file", e.0))?,
        );
        let tls = config.tls.as_ref().map(|t| t.load()).transpose()?;
        config.check_protected_mode(auth.is_enabled(), tls.is_some())?;
        // Nodes log in on each other's client ports with their certificate (TLS) or the
        // internal password.
        let internal = InternalClient::new(&auth, tls.as_ref().map(|t| t.client.clone()));
        if auth.is_enabled()
            && internal.credentials.is_none()
            && tls.is_none()
            && config.peers.len() > 1
        {
            return Err(ConfigError::new(
                "auth_file",
                format!(
                    "users are configured but the nodes have no credential for each other \
                     (a follower forwards writes to the leader's client port): set \
                     internal_password in the auth file, or {ENV_INTERNAL_PASSWORD}, the same \
                     on every node, or give the nodes TLS certificates ([tls])"
                ),
            ));
        }
        let client_tls = tls.as_ref().map(|t| server::ClientTls {
            acceptor: tokio_rustls::TlsAcceptor::from(t.client_server.clone()),
            cluster_id: t.identity.0,
        });
        let lock = DirLock::acquire(&config.data_dir)?;
        let cluster_id = crate::cluster_id::resolve(&config, tls.as_ref().map(|t| t.identity.0))?;
        if let Some(tls) = &tls {
            tls.check_identity(config.id, cluster_id)?;
        }
        let peer_addr = config.peer_listen_addr()?;
        let client_addr = config.client_listen_addr()?;
        let client_listener = bind(client_addr, "client_addr").await?;
        let http_listener = match config.http_addr {
            Some(a) => Some(bind(a, "http_addr").await?),
            None => None,
        };
        let client_addr = client_listener.local_addr().unwrap_or(client_addr);
        let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());

        let metrics = Arc::new(Metrics::default());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_BATCHES_MAX);
        let others = config
            .peers
            .iter()
            .filter(|p| p.id != config.id)
            .map(|p| (p.id, p.addr.clone()))
            .collect();
        let snapshots = open_snapshot_store(&config)?;
        let transport = NetTransport::start(
            config.id,
            cluster_id,
            tls.as_ref().map(|t| t.transport()),
            peer_addr,
            others,
            inbound_tx,
            snapshots.clone(),
            shutdown_rx.clone(),
        )
        .await
        .map_err(|e| ConfigError::new("peer_addr", format!("cannot listen on {peer_addr}: {e}")))?;
        let peer_addr = transport.local_addr();
        let mut client_addrs: HashMap<u64, String> = config
            .peers
            .iter()
            .filter_map(|p| p.client_addr.as_ref().map(|a| (p.id, a.to_string())))
            .collect();
        client_addrs.insert(config.id, client_addr.to_string());

        let transport: Arc<dyn PeerTransport> = Arc::new(transport);
        let parts = SharedParts {
            snapshots,
            transport,
            inbound: inbound_rx,
            client_addrs: client_addrs.clone(),
            metrics,
            shutdown: shutdown_rx.clone(),
            http_addr,
        };
        // A fresh cluster starts from a snapshot-like configuration naming the initial voters.
        let voters = config.bootstrap_voters();
        let (handle, runtime_task) = match config.storage {
            StorageKind::Disk => {
                let log = open_log(&config.data_dir.join("log"), voters)?;
                spawn_runtime(&config, log, machine, parts)?
            }
            StorageKind::Memory => {
                let log = MemLog::with_snapshot(SnapshotMeta {
                    membership: Membership::new_voters(voters),
                    ..Default::default()
                });
                spawn_runtime(&config, log, machine, parts)?
            }
        };

        let mut forward_addrs: Vec<String> = client_addrs.values().cloned().collect();
        forward_addrs.sort();
        let mut router = Router::new(
            handle.clone(),
            auth.clone(),
            &internal,
            forward_addrs,
            config.request_timeout_ms,
        )
        .with_cluster_probe(ClusterProbe::new(config.id, &client_addrs, &internal));
        if let Some(hub) = watch {
            router = router.with_watch(hub);
        }
        let router = Arc::new(router);
        tokio::spawn(server::serve(
            client_listener,
            handle.clone(),
            router.clone(),
            Arc::new(config.limits.clone()),
            member_ips(&config.peers).await.into_iter().collect(),
            client_tls,
            shutdown_rx.clone(),
        ));
        tokio::spawn(crate::anti_entropy::run(
            handle.clone(),
            client_addrs.clone(),
            internal,
            shutdown_rx.clone(),
        ));
        if let Some(l) = http_listener {
            tokio::spawn(http::serve(
                l,
                router,
                Arc::new(config.limits.clone()),
                tls.as_ref().map(|t| t.client_server.clone()),
                http::REPLY_BYTES_IN_FLIGHT_MAX,
                shutdown_rx,
            ));
        }
        tracing::info!(
            id = config.id,
            %peer_addr,
            %client_addr,
            http = ?http_addr,
            data_dir = %config.data_dir.display(),
            "node started"
        );
        Ok(RunningNode {
            id: config.id,
            peer_addr,
            client_addr,
            http_addr,
            handle,
            shutdown: shutdown_tx,
            runtime_task,
            _lock: lock,
        })
    }

    /// Stops accepting work, lets in-flight syncs finish, answers waiting clients with
    /// `ShuttingDown`, and releases the data directory.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if !self.runtime_task.is_finished() {
            let _ = self.runtime_task.await;
        }
        tracing::info!(id = self.id, "node stopped");
    }

    /// Resolves if the runtime stops on its own (a failed log write or sync): the node no
    /// longer takes part and its process should exit rather than look alive.
    pub async fn failed(&mut self) {
        let _ = (&mut self.runtime_task).await;
    }
}
