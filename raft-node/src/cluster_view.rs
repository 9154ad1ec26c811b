//! The cluster as one node sees it: its own status and every member's, pulled over the
//! native protocol (the request `raft-node status` sends) for the status page's `/cluster`.
//!
//! A member that does not answer within [`MEMBER_PROBE_TIMEOUT_MS`] is shown down with the
//! reason. One view is shared by every page open on the node for
//! [`CLUSTER_VIEW_REUSE_MS`], so a crowd of open pages costs the members no more than one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raft_client::{Client, ClientConfig};
use raft_core::NodeId;
use raft_proto::NodeStatus;
use tokio::sync::Mutex;

use crate::auth::InternalClient;
use crate::runtime::NodeHandle;

/// How long one member may take to answer a probe.
pub const MEMBER_PROBE_TIMEOUT_MS: u64 = 500;
/// A view is reused for requests arriving within this long of it.
pub const CLUSTER_VIEW_REUSE_MS: u64 = 500;
/// Members probed at most (a bound on one view's work; clusters are far smaller).
const MEMBERS_PROBED_MAX: usize = 64;

/// One member in a view.
#[derive(Clone, Debug)]
pub struct MemberView {
    /// The member.
    pub id: NodeId,
    /// Its status, or why there is none.
    pub status: Result<NodeStatus, String>,
}

/// The cluster at one moment.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// The node that built the view.
    pub from: NodeId,
    /// Every member (voters, learners, and peers with a known address), ascending by ID.
    pub members: Vec<MemberView>,
    /// When the view was built, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// Builds [`ClusterView`]s: a client per other member with a known client address.
#[derive(Default)]
pub struct ClusterProbe {
    clients: BTreeMap<NodeId, Client>,
    latest: Mutex<Option<(Instant, ClusterView)>>,
}

impl ClusterProbe {
    /// Probes for the members in `client_addrs` (this node's own entry is skipped: it asks
    /// its runtime), logging in as `internal` says.
    pub fn new(
        own: NodeId,
        client_addrs: &std::collections::HashMap<NodeId, String>,
        internal: &InternalClient,
    ) -> ClusterProbe {
        let clients = client_addrs
            .iter()
            .filter(|(&id, _)| id != own)
            .take(MEMBERS_PROBED_MAX)
            .map(|(&id, addr)| {
                let mut config = ClientConfig::new([addr.clone()]);
                config.request_timeout_ms = MEMBER_PROBE_TIMEOUT_MS;
                config.attempt_timeout_ms = MEMBER_PROBE_TIMEOUT_MS;
                config.connect_timeout_ms = MEMBER_PROBE_TIMEOUT_MS;
                config.attempts_max = 1;
                internal.apply(&mut config);
                (id, Client::new(config))
            })
            .collect();
        ClusterProbe {
            clients,
            latest: Mutex::new(None),
        }
    }

    /// The current view: a fresh one, or one built within [`CLUSTER_VIEW_REUSE_MS`].
    pub async fn view(&self, handle: &NodeHandle) -> ClusterView {
        // Held while probing: requests arriving meanwhile wait for this view rather than
        // starting probes of their own.
        let mut latest = self.latest.lock().await;
        if let Some((at, view)) = latest.as_ref() {
            if at.elapsed() < Duration::from_millis(CLUSTER_VIEW_REUSE_MS) {
                return view.clone();
            }
        }
        let own = handle.status().await.map_err(|e| e.to_string());
        let mut ids: Vec<NodeId> = self.clients.keys().copied().collect();
        ids.push(handle.id);
        if let Ok(s) = &own {
            ids.extend(s.voters.iter().chain(&s.learners));
        }
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(MEMBERS_PROBED_MAX);
        let probes = ids
            .iter()
            .filter(|&&id| id != handle.id)
            .map(|&id| async move {
                let status = match self.clients.get(&id) {
                    None => Err("no client address known for this member".to_string()),
                    Some(c) => c.status().await.map_err(|e| e.to_string()),
                };
                MemberView { id, status }
            });
        let mut members = futures::future::join_all(probes).await;
        members.push(MemberView {
            id: handle.id,
            status: own,
        });
        members.sort_by_key(|m| m.id);
        let view = ClusterView {
            from: handle.id,
            members,
            at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        };
        *latest = Some((Instant::now(), view.clone()));
        view
    }
}
