//! Cluster configurations and the quorum arithmetic over them, simple and joint.
//!
//! A configuration is *joint* while `voters_outgoing` is non-empty: decisions (commit,
//! election, leadership confirmation) then need a majority of `voters` **and** a majority of
//! `voters_outgoing` (Raft §6).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::types::{Index, NodeId};

/// The set of nodes that take part in the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// Voters of the (incoming) configuration.
    pub voters: BTreeSet<NodeId>,
    /// Voters of the outgoing configuration while a joint change is in progress; empty otherwise.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Non-voting members: they receive the log but neither vote nor count toward quorums.
    pub learners: BTreeSet<NodeId>,
}

/// One requested change to the membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfChange {
    /// Add a voter, or promote a learner to voter.
    AddVoter(NodeId),
    /// Add a learner, or demote a voter to learner.
    AddLearner(NodeId),
    /// Remove a node entirely.
    Remove(NodeId),
}

/// Why a membership change was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipError {
    /// The result would have no voter.
    NoVoters,
    /// Node ID 0 is reserved.
    InvalidNodeId,
    /// The change set is empty or changes nothing.
    NoChange,
}

/// Outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A quorum granted.
    Won,
    /// A quorum can no longer be reached.
    Lost,
    /// Undecided: not enough answers yet.
    Pending,
}

impl Membership {
    /// A simple configuration of the given voters.
    pub fn new_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Whether a joint change is in progress.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether `id` is a learner and not also a voter of the outgoing half.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id) && !self.is_voter(id)
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every node the leader replicates to, voters and learners, in ascending order.
    pub fn nodes(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(self.voters_outgoing.iter().copied());
        all.extend(self.learners.iter().copied());
        all
    }

    /// The number of member entries, counting a node once per set it is in.
    pub fn node_count(&self) -> usize {
        self.voters.len() + self.voters_outgoing.len() + self.learners.len()
    }

    /// The configuration after applying `changes` to the incoming half, as a simple
    /// (non-joint) configuration.
    pub fn apply_changes(&self, changes: &[ConfChange]) -> Result<Membership, MembershipError> {
        let mut next = Membership {
            voters: self.voters.clone(),
            voters_outgoing: BTreeSet::new(),
            learners: self.learners.clone(),
        };
        for change in changes {
            match *change {
                ConfChange::AddVoter(id) => {
                    if id == 0 {
                        return Err(MembershipError::InvalidNodeId);
                    }
                    next.learners.remove(&id);
                    next.voters.insert(id);
                }
                ConfChange::AddLearner(id) => {
                    if id == 0 {
                        return Err(MembershipError::InvalidNodeId);
                    }
                    next.voters.remove(&id);
                    next.learners.insert(id);
                }
                ConfChange::Remove(id) => {
                    next.voters.remove(&id);
                    next.learners.remove(&id);
                }
            }
        }
        if next.voters.is_empty() {
            return Err(MembershipError::NoVoters);
        }
        if next.voters == self.voters && next.learners == self.learners {
            return Err(MembershipError::NoChange);
        }
        Ok(next)
    }

    /// How many voters differ between `self.voters` and `other.voters`.
    pub fn voter_difference(&self, other: &Membership) -> usize {
        self.voters.symmetric_difference(&other.voters).count()
    }

    /// The highest index that a quorum has reached, given each node's index.
    /// In a joint configuration it is the lower of the two halves' results.
    pub fn committed_index(&self, index_of: impl Fn(NodeId) -> Index) -> Index {
        let incoming = majority_index(&self.voters, &index_of);
        let outgoing = majority_index(&self.voters_outgoing, &index_of);
        incoming.min(outgoing)
    }

    /// Counts votes: `vote_of` answers `Some(granted)` for nodes that have answered.
    pub fn vote_result(&self, vote_of: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        let incoming = majority_vote(&self.voters, &vote_of);
        let outgoing = majority_vote(&self.voters_outgoing, &vote_of);
        match (incoming, outgoing) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// Whether the nodes for which `active` is true form a quorum.
    pub fn has_quorum(&self, active: impl Fn(NodeId) -> bool) -> bool {
        self.vote_result(|id| Some(active(id))) == VoteResult::Won
    }
}

/// The largest index that a majority of `voters` has reached. An empty set places no
/// constraint (it returns `Index::MAX`), which is what the outgoing half of a simple
/// configuration needs.
fn majority_index(voters: &BTreeSet<NodeId>, index_of: &impl Fn(NodeId) -> Index) -> Index {
    if voters.is_empty() {
        return Index::MAX;
    }
    // Small clusters: a stack array avoids an allocation on the commit path.
    let mut stack = [0 as Index; 16];
    let mut heap;
    let indexes: &mut [Index] = if voters.len() <= stack.len() {
        &mut stack[..voters.len()]
    } else {
        heap = vec![0; voters.len()];
        &mut heap[..]
    };
    for (slot, id) in indexes.iter_mut().zip(voters.iter()) {
        *slot = index_of(*id);
    }
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    // With n voters, a majority is n/2+1 of them: the (n/2)-th largest value (0-based)
    // has been reached by that many.
    indexes[voters.len() / 2]
}

fn majority_vote(
    voters: &BTreeSet<NodeId>,
    vote_of: &impl Fn(NodeId) -> Option<bool>,
) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut granted, mut missing) = (0, 0);
    for id in voters {
        match vote_of(*id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let quorum = voters.len() / 2 + 1;
    if granted >= quorum {
        VoteResult::Won
    } else if granted + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// (voters, outgoing voters, index or vote per node, expected result)
    type CommitCase = (
        &'static [NodeId],
        &'static [NodeId],
        &'static [(NodeId, Index)],
        Index,
    );
    type VoteCase = (
        &'static [NodeId],
        &'static [NodeId],
        &'static [(NodeId, bool)],
        VoteResult,
    );

    fn config(voters: &[NodeId], outgoing: &[NodeId]) -> Membership {
        Membership {
            voters: voters.iter().copied().collect(),
            voters_outgoing: outgoing.iter().copied().collect(),
            learners: BTreeSet::new(),
        }
    }

    #[test]
    fn committed_index_table() {
        // (voters, outgoing, match indexes by node, expected commit)
        let cases: &[CommitCase] = &[
            (&[1], &[], &[(1, 7)], 7),
            (&[1, 2, 3], &[], &[(1, 5), (2, 3), (3, 9)], 5),
            (&[1, 2, 3], &[], &[(1, 5)], 0),
            (&[1, 2, 3, 4], &[], &[(1, 5), (2, 5), (3, 4), (4, 1)], 4),
            (
                &[1, 2, 3, 4, 5],
                &[],
                &[(1, 9), (2, 8), (3, 7), (4, 1), (5, 1)],
                7,
            ),
            // Joint: both halves must agree; the outgoing half lags here.
            (
                &[1, 2, 3],
                &[1, 4, 5],
                &[(1, 9), (2, 9), (3, 9), (4, 2), (5, 1)],
                2,
            ),
            (
                &[4, 5, 6],
                &[1, 2, 3],
                &[(1, 9), (2, 9), (4, 6), (5, 6), (6, 1)],
                6,
            ),
        ];
        for (voters, outgoing, matches, want) in cases {
            let m = config(voters, outgoing);
            let map: BTreeMap<NodeId, Index> = matches.iter().copied().collect();
            let got = m.committed_index(|id| map.get(&id).copied().unwrap_or(0));
            assert_eq!(
                got, *want,
                "voters={voters:?} outgoing={outgoing:?} matches={matches:?}"
            );
        }
    }

    #[test]
    fn vote_result_table() {
        let cases: &[VoteCase] = &[
            (&[1], &[], &[(1, true)], VoteResult::Won),
            (&[1, 2, 3], &[], &[(1, true)], VoteResult::Pending),
            (&[1, 2, 3], &[], &[(1, true), (2, true)], VoteResult::Won),
            (
                &[1, 2, 3],
                &[],
                &[(1, true), (2, false), (3, false)],
                VoteResult::Lost,
            ),
            (
                &[1, 2, 3, 4],
                &[],
                &[(1, true), (2, true)],
                VoteResult::Pending,
            ),
            (
                &[1, 2, 3, 4],
                &[],
                &[(1, true), (2, false), (3, false)],
                VoteResult::Lost,
            ),
            (
                &[1, 2, 3],
                &[3, 4, 5],
                &[(1, true), (2, true)],
                VoteResult::Pending,
            ),
            (
                &[1, 2, 3],
                &[3, 4, 5],
                &[(1, true), (2, true), (3, true)],
                VoteResult::Pending,
            ),
            (
                &[1, 2, 3],
                &[3, 4, 5],
                &[(1, true), (3, true), (4, true)],
                VoteResult::Won,
            ),
            (
                &[1, 2, 3],
                &[3, 4, 5],
                &[(1, true), (2, true), (4, false), (5, false)],
                VoteResult::Lost,
            ),
        ];
        for (voters, outgoing, votes, want) in cases {
            let m = config(voters, outgoing);
            let map: BTreeMap<NodeId, bool> = votes.iter().copied().collect();
            assert_eq!(
                m.vote_result(|id| map.get(&id).copied()),
                *want,
                "{voters:?} {outgoing:?} {votes:?}"
            );
        }
    }

    #[test]
    fn apply_changes_promotes_demotes_and_refuses_empty() {
        let m = Membership::new_voters([1, 2, 3]);
        let next = m.apply_changes(&[ConfChange::AddLearner(4)]).unwrap();
        assert!(next.is_learner(4) && !next.is_voter(4));
        let promoted = next.apply_changes(&[ConfChange::AddVoter(4)]).unwrap();
        assert!(promoted.is_voter(4) && !promoted.learners.contains(&4));
        assert_eq!(m.voter_difference(&promoted), 1);
        assert_eq!(
            m.apply_changes(&[
                ConfChange::Remove(1),
                ConfChange::Remove(2),
                ConfChange::Remove(3)
            ]),
            Err(MembershipError::NoVoters)
        );
        assert_eq!(
            m.apply_changes(&[ConfChange::AddVoter(2)]),
            Err(MembershipError::NoChange)
        );
        assert_eq!(
            m.apply_changes(&[ConfChange::AddVoter(0)]),
            Err(MembershipError::InvalidNodeId)
        );
    }
}
