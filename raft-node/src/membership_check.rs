//! The leader's admission rules for membership changes: what raft-core accepts as a valid
//! configuration is not enough to keep a cluster serving, so the host refuses, with the
//! reason, any change that would leave it without a reachable majority or that makes a
//! voter of a node that cannot vote yet.
//!
//! The rules live in the host, not in raft-core: they depend on who the leader heard from
//! recently and on which nodes have a peer address, facts the host has and the protocol
//! does not need. Every refusal leaves the configuration as it was.
//!
//! - A node becomes a voter only as a learner that is connected (the leader heard from it
//!   within `connected_ticks_max`) and caught up (its match index at most
//!   [`PROMOTE_LAG_ENTRIES_MAX`] behind the leader's last index).
//! - A learner is added only if this node knows its peer address.
//! - Removing a node that is not a member says so.
//! - No change may leave fewer reachable voters than a majority of the resulting
//!   configuration, counting the leader and the voters it heard from recently.

use std::collections::{BTreeMap, BTreeSet};

use raft_core::{ConfChange, Index, Membership, NodeId};

/// A learner is promoted only when its log matches the leader's up to at most this many
/// entries from the leader's last one: a voter that must first replay a long backlog can
/// stall commits (it may be needed for a majority) for as long as that takes.
pub const PROMOTE_LAG_ENTRIES_MAX: u64 = 1_000;

/// What the leader knows when it is asked for a change.
#[derive(Debug)]
pub struct LeaderView<'a> {
    /// The leader itself.
    pub leader: NodeId,
    /// The configuration in force (the latest appended).
    pub membership: &'a Membership,
    /// The leader's last log index.
    pub last_index: Index,
    /// Each follower's and learner's match index, as the leader tracks it.
    pub match_index: &'a BTreeMap<NodeId, Index>,
    /// Ticks since the leader last heard from each peer it has heard from.
    pub heard_ticks_ago: &'a BTreeMap<NodeId, u64>,
    /// A peer heard from within this many ticks counts as connected.
    pub connected_ticks_max: u64,
    /// Length of a tick, to state the bounds in milliseconds.
    pub tick_ms: u64,
    /// Nodes this node has a peer address for (itself included).
    pub known_peers: &'a BTreeSet<NodeId>,
}

impl LeaderView<'_> {
    fn connected(&self, id: NodeId) -> bool {
        id == self.leader
            || self
                .heard_ticks_ago
                .get(&id)
                .is_some_and(|&t| t <= self.connected_ticks_max)
    }

    fn connected_ms(&self) -> u64 {
        self.connected_ticks_max.saturating_mul(self.tick_ms)
    }

    fn members(&self) -> String {
        format!(
            "voters {:?}, learners {:?}",
            self.membership.voters, self.membership.learners
        )
    }
}

/// `1234567` as `1,234,567`, as the refusal messages state counts.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Checks `change` against the leader's view; `Err` says why it is refused.
pub fn check(change: ConfChange, view: &LeaderView<'_>) -> Result<(), String> {
    let m = view.membership;
    match change {
        ConfChange::AddLearner(id) => {
            if m.is_voter(id) {
                return Err(format!(
                    "node {id} is a voter; adding it as a learner would demote it (remove it \
                     first if that is what you mean)"
                ));
            }
            if m.is_learner(id) {
                return Err(format!("node {id} is already a learner"));
            }
            if !view.known_peers.contains(&id) {
                return Err(format!(
                    "node {id} has no known peer address: list it in every node's peers \
                     (`--peer {id}=PEER_ADDR,CLIENT_ADDR` or a [[peers]] entry), restart the \
                     nodes one at a time, then retry"
                ));
            }
        }
        ConfChange::AddVoter(id) => {
            if m.is_voter(id) {
                return Err(format!("node {id} is already a voter"));
            }
            if !m.is_learner(id) {
                return Err(format!(
                    "node {id} is not a learner; add it with RAFT.ADDLEARNER {id} (raft-node \
                     admin add-learner {id}) first, and promote it once it has caught up"
                ));
            }
            if !view.connected(id) {
                let last = match view.heard_ticks_ago.get(&id) {
                    Some(&t) => format!(
                        "last heard {} ms ago",
                        thousands(t.saturating_mul(view.tick_ms))
                    ),
                    None => "never heard from".to_string(),
                };
                return Err(format!(
                    "learner {id} is not connected ({last}; bound {} ms); start it or fix its \
                     address, then retry",
                    thousands(view.connected_ms())
                ));
            }
            let matched = view.match_index.get(&id).copied().unwrap_or(0);
            let lag = view.last_index.saturating_sub(matched);
            if lag > PROMOTE_LAG_ENTRIES_MAX {
                return Err(format!(
                    "learner {id} is {} entries behind (bound {}); retry when it has caught up",
                    thousands(lag),
                    thousands(PROMOTE_LAG_ENTRIES_MAX)
                ));
            }
        }
        ConfChange::Remove(id) => {
            if !m.contains(id) {
                return Err(format!("node {id} is not a member ({})", view.members()));
            }
        }
    }
    let target = m
        .apply_changes(&[change])
        .map_err(|e| format!("{e:?} ({})", view.members()))?;
    if !target.has_quorum(|v| view.connected(v)) {
        let reachable: Vec<NodeId> = target
            .voters
            .iter()
            .copied()
            .filter(|&v| view.connected(v))
            .collect();
        return Err(format!(
            "the cluster would have {} of {} voters reachable ({reachable:?}: the leader and \
             the voters it heard from in the last {} ms), and a majority is {}; bring voters \
             back first",
            reachable.len(),
            target.voters.len(),
            thousands(view.connected_ms()),
            target.voters.len() / 2 + 1
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        membership: Membership,
        match_index: BTreeMap<NodeId, Index>,
        heard: BTreeMap<NodeId, u64>,
        known: BTreeSet<NodeId>,
    }

    /// Leader 1 of voters 1, 2, 3 and learner 4, all connected and caught up at index 5,000;
    /// nodes 1-5 have addresses.
    fn fixture() -> Fixture {
        let mut membership = Membership::new_voters([1, 2, 3]);
        membership.learners.insert(4);
        Fixture {
            membership,
            match_index: [(2, 5_000), (3, 5_000), (4, 5_000)].into(),
            heard: [(2, 1), (3, 1), (4, 1)].into(),
            known: (1..=5).collect(),
        }
    }

    fn run(f: &Fixture, change: ConfChange) -> Result<(), String> {
        check(
            change,
            &LeaderView {
                leader: 1,
                membership: &f.membership,
                last_index: 5_000,
                match_index: &f.match_index,
                heard_ticks_ago: &f.heard,
                connected_ticks_max: 40,
                tick_ms: 10,
                known_peers: &f.known,
            },
        )
    }

    #[test]
    fn a_connected_caught_up_learner_is_promoted() {
        let f = fixture();
        assert_eq!(run(&f, ConfChange::AddVoter(4)), Ok(()));
        let mut f = fixture();
        f.match_index.insert(4, 5_000 - PROMOTE_LAG_ENTRIES_MAX);
        assert_eq!(run(&f, ConfChange::AddVoter(4)), Ok(()), "at the bound");
    }

    #[test]
    fn promote_refusals_say_why() {
        let f = fixture();
        assert_eq!(
            run(&f, ConfChange::AddVoter(97)).unwrap_err(),
            "node 97 is not a learner; add it with RAFT.ADDLEARNER 97 (raft-node admin \
             add-learner 97) first, and promote it once it has caught up"
        );
        assert_eq!(
            run(&f, ConfChange::AddVoter(2)).unwrap_err(),
            "node 2 is already a voter"
        );
        let mut lagging = fixture();
        lagging.match_index.insert(4, 5_000 - 1_001);
        assert_eq!(
            run(&lagging, ConfChange::AddVoter(4)).unwrap_err(),
            "learner 4 is 1,001 entries behind (bound 1,000); retry when it has caught up"
        );
        let mut far = fixture();
        far.match_index.remove(&4);
        assert!(run(&far, ConfChange::AddVoter(4))
            .unwrap_err()
            .contains("5,000 entries behind"));
        let mut silent = fixture();
        silent.heard.insert(4, 41);
        assert_eq!(
            run(&silent, ConfChange::AddVoter(4)).unwrap_err(),
            "learner 4 is not connected (last heard 410 ms ago; bound 400 ms); start it or fix \
             its address, then retry"
        );
        silent.heard.remove(&4);
        assert!(run(&silent, ConfChange::AddVoter(4))
            .unwrap_err()
            .contains("(never heard from; bound 400 ms)"));
    }

    #[test]
    fn add_learner_refusals_say_why() {
        let f = fixture();
        assert_eq!(run(&f, ConfChange::AddLearner(5)), Ok(()));
        assert_eq!(
            run(&f, ConfChange::AddLearner(4)).unwrap_err(),
            "node 4 is already a learner"
        );
        assert!(run(&f, ConfChange::AddLearner(3))
            .unwrap_err()
            .starts_with("node 3 is a voter; adding it as a learner would demote it"));
        assert_eq!(
            run(&f, ConfChange::AddLearner(6)).unwrap_err(),
            "node 6 has no known peer address: list it in every node's peers (`--peer \
             6=PEER_ADDR,CLIENT_ADDR` or a [[peers]] entry), restart the nodes one at a time, \
             then retry"
        );
    }

    #[test]
    fn removal_of_a_stranger_or_of_the_reachable_majority_is_refused() {
        let f = fixture();
        assert_eq!(
            run(&f, ConfChange::Remove(9)).unwrap_err(),
            "node 9 is not a member (voters {1, 2, 3}, learners {4})"
        );
        assert_eq!(run(&f, ConfChange::Remove(4)), Ok(()));
        assert_eq!(run(&f, ConfChange::Remove(3)), Ok(()));
        // Node 3 silent: removing the live follower 2 would leave leader 1 and silent 3.
        let mut f = fixture();
        f.heard.insert(3, 100);
        assert_eq!(
            run(&f, ConfChange::Remove(2)).unwrap_err(),
            "the cluster would have 1 of 2 voters reachable ([1]: the leader and the voters \
             it heard from in the last 400 ms), and a majority is 2; bring voters back first"
        );
        // Removing the silent one is what the operator should do instead.
        assert_eq!(run(&f, ConfChange::Remove(3)), Ok(()));
    }

    #[test]
    fn promotions_that_outnumber_the_reachable_voters_are_refused() {
        // Voters 1, 2, 3 with 2 and 3 silent (the leader has not stepped down yet): even a
        // connected learner would make 2 of 4, short of a majority.
        let mut f = fixture();
        f.heard.insert(2, 100);
        f.heard.insert(3, 100);
        assert!(run(&f, ConfChange::AddVoter(4))
            .unwrap_err()
            .starts_with("the cluster would have 2 of 4 voters reachable ([1, 4]"));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(12_345), "12,345");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
