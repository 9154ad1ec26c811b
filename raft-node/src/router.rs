//! Sends a client's command where it can be served: writes to the leader (forwarded over
//! the native protocol when this node is a follower), linearizable reads through this node's
//! ReadIndex (which raft-core confirms with the leader), stale reads from the local replica.
//!
//! RESP and HTTP clients go through here so that any node serves them. Native clients get
//! redirects instead and follow them themselves, which keeps their exactly-once sessions
//! end to end.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft_client::{Client, ClientConfig, ClientError};
use raft_proto::{KvCommand, KvResponse, NodeError, Request, Response};

use crate::auth::{Auth, InternalClient};
use crate::cluster_view::ClusterProbe;
use crate::kv::log_command;
use crate::runtime::NodeHandle;
use crate::watch::WatchHub;

/// See the module documentation.
pub struct Router {
    /// The local node.
    pub handle: NodeHandle,
    /// Who may do what on the client interfaces.
    pub auth: Arc<Auth>,
    /// A client sends one request at a time, so forwarded writes spread over a few.
    forwarders: Vec<Client>,
    next_forwarder: std::sync::atomic::AtomicUsize,
    /// Pulls every member's status for the status page (none known: this node alone).
    pub cluster: ClusterProbe,
    /// The history of this node's applied key changes, for watchers (the built-in
    /// key-value store has one; a hosted machine has none).
    pub watch: Option<Arc<WatchHub>>,
    /// How long a write waits for a leader to be elected.
    request_timeout_ms: u64,
}

/// How often a write waiting for a leader looks again.
const LEADER_POLL_INTERVAL_MS: u64 = 10;

/// Connections a follower keeps to the leader for forwarded writes.
const FORWARDERS_MAX: usize = 8;

impl Router {
    /// A router for `handle`, forwarding through a client that knows `addrs` (every node's
    /// client address) and gives up after `request_timeout_ms`; it logs in on the leader
    /// as `internal` says. `auth` is what this node's own clients are checked against.
    pub fn new(
        handle: NodeHandle,
        auth: Arc<Auth>,
        internal: &InternalClient,
        addrs: Vec<String>,
        request_timeout_ms: u64,
    ) -> Router {
        let mut config = ClientConfig::new(addrs);
        internal.apply(&mut config);
        config.request_timeout_ms = request_timeout_ms;
        config.attempt_timeout_ms = request_timeout_ms;
        Router {
            handle,
            auth,
            forwarders: (0..FORWARDERS_MAX)
                .map(|_| Client::new(config.clone()))
                .collect(),
            next_forwarder: std::sync::atomic::AtomicUsize::new(0),
            cluster: ClusterProbe::default(),
            watch: None,
            request_timeout_ms,
        }
    }

    /// Waits until this node knows a leader; fails at once, naming the situation, when the
    /// runtime finds no leader can be elected ("no leader: 1 of 3 voters reachable"), and
    /// after `request_timeout_ms` otherwise.
    async fn wait_for_leader(&self) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.request_timeout_ms);
        loop {
            if self.handle.leader().is_some() {
                return Ok(());
            }
            if let Some(situation) = self.handle.no_quorum() {
                return Err(NodeError::Unavailable(situation));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::Unavailable(format!(
                    "no leader elected within {} ms",
                    self.request_timeout_ms
                )));
            }
            tokio::time::sleep(Duration::from_millis(LEADER_POLL_INTERVAL_MS)).await;
        }
    }

    /// This router, with `cluster` to pull the members' statuses for the status page.
    pub fn with_cluster_probe(mut self, cluster: ClusterProbe) -> Router {
        self.cluster = cluster;
        self
    }

    /// Serves watchers from `hub`, the state machine's change sink.
    pub fn with_watch(mut self, hub: Arc<WatchHub>) -> Router {
        self.watch = Some(hub);
        self
    }

    /// A lane for a new connection: its forwarded writes share one forwarder, so they reach
    /// the leader in the order the connection sent them.
    pub fn lane(&self) -> usize {
        self.next_forwarder
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs a key-value command. Writes carry no session: like Redis, a write retried after
    /// a lost answer may apply twice (the native client is the exactly-once path).
    pub async fn kv(
        &self,
        command: KvCommand,
        linearizable: bool,
        lane: usize,
    ) -> Result<KvResponse, NodeError> {
        let bytes = if command.is_read() {
            self.handle.read(command.encode(), linearizable).await?
        } else {
            self.write(command.encode(), lane).await?
        };
        KvResponse::decode(&bytes).ok_or_else(|| NodeError::Invalid("undecodable response".into()))
    }

    async fn write(&self, op: Bytes, lane: usize) -> Result<Bytes, NodeError> {
        let leader_here = self
            .handle
            .metrics
            .is_leader
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1;
        // A follower forwards at once rather than asking its runtime first: the forwarder's
        // lock is taken in the order the connection's requests were issued, which keeps a
        // pipeline's writes in order on the leader.
        if leader_here {
            match self.handle.propose(log_command(None, op.clone())).await {
                Err(NodeError::NotLeader {
                    leader_addr: Some(_),
                    ..
                }) => {}
                other => return other,
            }
        }
        // No leader known: wait for one, then forward. Forwarding blindly would send the
        // write round the members, this one included, until the deadline; proposing it
        // here would stamp it with this node's clock at arrival rather than the leader's.
        if !leader_here && self.handle.leader().is_none() {
            self.wait_for_leader().await?;
        }
        let forwarder = &self.forwarders[lane % self.forwarders.len()];
        match forwarder
            .request(Request::Propose { session: None, op })
            .await
        {
            Ok(Response::Applied(b)) => Ok(b),
            Ok(other) => Err(NodeError::Invalid(format!("leader answered {other:?}"))),
            Err(ClientError::Node(e)) => Err(e),
            Err(e) => Err(NodeError::Unavailable(format!(
                "forwarding to the leader: {e}"
            ))),
        }
    }
}
