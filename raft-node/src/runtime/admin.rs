//! Membership and leadership changes asked for by an operator, checked against the
//! leader's admission rules before the core sees them.

use std::collections::BTreeMap;

use raft_core::{ChangeError, ConfChange, Index, NodeId as CoreId, Role, TransferError};
use raft_proto::NodeError;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::membership_check::{self, LeaderView};
use crate::store::NodeStore;

use super::{AdminOp, HostedMachine, Runtime};

impl<S: NodeStore, M: HostedMachine> Runtime<S, M> {
    pub(super) fn admin(
        &mut self,
        op: AdminOp,
        reply: oneshot::Sender<Result<(), NodeError>>,
        _deadline: Instant,
    ) {
        let result = match op {
            AdminOp::TransferLeader(to) => self.raw.transfer_leader(to).map_err(|e| match e {
                TransferError::NotLeader { leader } => self.leader_error(leader),
                TransferError::NotAVoter => NodeError::Invalid(format!("{to} is not a voter")),
            }),
            AdminOp::AddLearner(id) => self.checked_change(ConfChange::AddLearner(id)),
            AdminOp::Promote(id) => self.checked_change(ConfChange::AddVoter(id)),
            AdminOp::Remove(id) => self.checked_change(ConfChange::Remove(id)),
        };
        let _ = reply.send(result);
    }

    /// Makes `change` if the leader's admission rules (`membership_check`) allow it. Only
    /// the leader judges: a follower's view of progress and reachability is not the one
    /// that counts, so it redirects.
    fn checked_change(&mut self, change: ConfChange) -> Result<(), NodeError> {
        if self.raw.role() != Role::Leader {
            return Err(self.leader_error(self.raw.leader()));
        }
        let status = self.raw.status();
        let match_index: BTreeMap<CoreId, Index> =
            status.peers.iter().map(|p| (p.id, p.match_index)).collect();
        let heard_ticks_ago: BTreeMap<CoreId, u64> = self
            .peer_heard_tick
            .iter()
            .filter_map(|(&p, t)| t.map(|t| (p, self.ticks.saturating_sub(t))))
            .collect();
        let view = LeaderView {
            leader: status.id,
            membership: &status.membership,
            last_index: status.last_index,
            match_index: &match_index,
            heard_ticks_ago: &heard_ticks_ago,
            connected_ticks_max: u64::from(self.config.election_timeout_ticks_max),
            tick_ms: self.config.tick_interval_ms,
            known_peers: &self.known_peers,
        };
        if let Err(why) = membership_check::check(change, &view) {
            tracing::warn!(?change, %why, "membership change refused");
            return Err(NodeError::Invalid(why));
        }
        tracing::info!(?change, "membership change proposed");
        self.change(&[change])
    }

    fn change(&mut self, changes: &[ConfChange]) -> Result<(), NodeError> {
        match self.raw.change_membership(changes) {
            Ok(_) => Ok(()),
            Err(ChangeError::NotLeader { leader }) => Err(self.leader_error(leader)),
            Err(ChangeError::NotReady | ChangeError::ChangeInProgress) => Err(NodeError::Busy),
            Err(ChangeError::TransferInProgress) => Err(NodeError::Busy),
            Err(ChangeError::Invalid(e)) => Err(NodeError::Invalid(format!("{e:?}"))),
        }
    }
}
