//! Protocol tests: membership changes (§6, dissertation §4): single changes, joint consensus, learners.
//! Each scenario is driven message by message through `common::Cluster`, which also checks
//! State Machine Safety on every apply. (protocol_*.rs together follow the paper's order.)

mod common;

use common::{cmd, is_append, is_vote, plain, Cluster};
use raft_core::{ChangeError, ConfChange, EntryPayload, MessageBody, NodeId, Role};

// ===== Membership changes (§6, dissertation §4) ==========================================

#[test]
fn membership_change_refused_until_the_new_leader_commits_in_its_term() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.add_node(4, plain);
    c.elect(1);
    c.propose(1, "a");
    c.crash(1);
    c.campaign(2);
    c.deliver_if(is_vote);
    assert!(c.node(2).is_leader());
    let held = c.take_if(is_append);
    assert!(c.node(2).commit_index() < c.node(2).last_index());
    assert_eq!(
        c.with(2, |r| r.change_membership(&[ConfChange::AddVoter(4)])),
        Err(ChangeError::NotReady)
    );
    assert!(
        c.with(2, |r| r.propose(cmd("b"))).is_ok(),
        "commands are fine meanwhile"
    );
    for m in held {
        c.deliver(m);
    }
    c.deliver_all();
    assert_eq!(c.node(2).commit_index(), c.node(2).last_index());
    let p = c
        .with(2, |r| r.change_membership(&[ConfChange::AddVoter(4)]))
        .unwrap();
    c.deliver_all();
    assert!(c.node(2).commit_index() >= p.index);
    assert!(c.node(4).membership().is_voter(4));
}

#[test]
fn at_most_one_membership_change_in_flight() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.add_node(4, plain);
    c.add_node(5, plain);
    c.elect(1);
    c.with(1, |r| r.change_membership(&[ConfChange::AddLearner(4)]))
        .unwrap();
    let held = c.take_if(is_append);
    assert_eq!(
        c.with(1, |r| r.change_membership(&[ConfChange::AddLearner(5)])),
        Err(ChangeError::ChangeInProgress)
    );
    for m in held {
        c.deliver(m);
    }
    c.deliver_all();
    assert!(c
        .with(1, |r| r.change_membership(&[ConfChange::AddLearner(5)]))
        .is_ok());
}

#[test]
fn joint_consensus_needs_both_majorities_then_moves_to_c_new() {
    // Which side of the joint configuration is cut off while the joint entry replicates.
    for cut_side in [[2, 3], [4, 5]] {
        let mut c = Cluster::new(&[1, 2, 3], plain);
        c.add_node(4, plain);
        c.add_node(5, plain);
        c.elect(1);
        for id in cut_side {
            c.isolate(id);
        }
        let p = c
            .with(1, |r| {
                r.change_membership(&[
                    ConfChange::Remove(2),
                    ConfChange::Remove(3),
                    ConfChange::AddVoter(4),
                    ConfChange::AddVoter(5),
                ])
            })
            .unwrap();
        c.deliver_all();
        let m = c.node(1).membership().clone();
        assert!(m.is_joint(), "two voters change: go through C_old,new");
        assert_eq!(m.voters.iter().copied().collect::<Vec<_>>(), vec![1, 4, 5]);
        assert_eq!(
            m.voters_outgoing.iter().copied().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(
            c.node(1).commit_index() < p.index,
            "cut {cut_side:?}: one half's majority is not enough"
        );
        // One node of the cut side is enough to make that side's majority.
        c.heal();
        c.isolate(cut_side[1]);
        for _ in 0..3 {
            c.tick(1);
            c.tick(1);
            c.deliver_all();
        }
        assert!(c.node(1).commit_index() > p.index, "cut {cut_side:?}");
        let m = c.node(1).membership().clone();
        assert!(!m.is_joint(), "C_new appended once C_old,new committed");
        assert_eq!(m.voters.iter().copied().collect::<Vec<_>>(), vec![1, 4, 5]);
        let last = c.node(1).storage().all_entries().last().unwrap().clone();
        assert_eq!(last.payload, EntryPayload::Membership(m));
        assert_eq!(c.node(1).commit_index(), last.index, "cut {cut_side:?}");
        let peers: Vec<NodeId> = c.node(1).status().peers.iter().map(|p| p.id).collect();
        assert_eq!(peers, vec![4, 5]);
    }
}

#[test]
fn joint_elections_need_both_majorities_and_the_next_leader_finishes_the_change() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.add_node(4, plain);
    c.add_node(5, plain);
    c.elect(1);
    let joint = c
        .with(1, |r| {
            r.change_membership(&[
                ConfChange::Remove(2),
                ConfChange::Remove(3),
                ConfChange::AddVoter(4),
                ConfChange::AddVoter(5),
            ])
        })
        .unwrap();
    // Everyone appends C_old,new, but 2's and 3's acks are lost, and 1 crashes: it is in
    // force everywhere and committed nowhere.
    c.deliver_if(|m| !(m.to == 1 && (m.from == 2 || m.from == 3)));
    c.crash(1);
    c.net.clear();
    for id in 2..=5 {
        assert!(c.node(id).membership().is_joint(), "node {id}");
        assert!(c.node(id).commit_index() < joint.index, "node {id}");
    }
    // 4 and 5 are a majority of C_new = {1, 4, 5}, but none of C_old = {1, 2, 3}.
    c.isolate(2);
    c.isolate(3);
    c.campaign(4);
    c.deliver_all();
    assert!(
        !c.node(4).is_leader(),
        "a majority of C_new alone does not elect"
    );
    c.heal();
    c.campaign(4);
    c.deliver_all();
    assert!(c.node(4).is_leader(), "2, 3 (C_old) and 5 (C_new) elect 4");
    c.tick(4);
    c.tick(4);
    c.deliver_all();
    let m = c.node(4).membership().clone();
    assert!(!m.is_joint(), "4 appended C_new once C_old,new committed");
    assert_eq!(m.voters.iter().copied().collect::<Vec<_>>(), vec![1, 4, 5]);
    assert_eq!(c.node(4).commit_index(), c.node(4).last_index());
    assert_eq!(c.node(5).commit_index(), c.node(4).last_index());
    let peers: Vec<NodeId> = c.node(4).status().peers.iter().map(|p| p.id).collect();
    assert_eq!(peers, vec![1, 5]);
}

#[test]
fn learner_is_never_asked_to_vote_and_follows_the_new_leader() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.add_node(4, plain);
    c.elect(1);
    c.with(1, |r| r.change_membership(&[ConfChange::AddLearner(4)]))
        .unwrap();
    c.deliver_all();
    assert_eq!(
        c.with(1, |r| r.transfer_leader(4)),
        Err(raft_core::TransferError::NotAVoter)
    );
    c.crash(1);
    c.elect(2);
    assert!(!c
        .sent
        .iter()
        .any(|m| m.to == 4 && matches!(m.body, MessageBody::RequestVote { .. })));
    c.tick(2);
    c.tick(2);
    c.deliver_all();
    assert_eq!(c.node(4).leader(), Some(2));
    assert_eq!(c.log(4), c.log(2));
}

#[test]
fn learner_gets_the_log_but_neither_votes_nor_counts_until_promoted() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.add_node(4, plain);
    c.elect(1);
    c.with(1, |r| r.change_membership(&[ConfChange::AddLearner(4)]))
        .unwrap();
    c.deliver_all();
    c.propose(1, "a");
    assert_eq!(c.log(4), c.log(1));
    assert!(c.node(4).membership().is_learner(4));

    c.isolate(2);
    c.isolate(3);
    let p = c.propose(1, "b");
    assert_eq!(c.node(4).last_index(), p.index);
    assert!(
        c.node(1).commit_index() < p.index,
        "a learner's copy does not count"
    );

    for _ in 0..100 {
        c.tick(4);
    }
    assert_eq!((c.node(4).role(), c.node(4).term()), (Role::Follower, 1));
    c.heal();
    c.deliver_all();
    c.tick(1);
    c.tick(1);
    c.deliver_all();

    c.with(1, |r| r.change_membership(&[ConfChange::AddVoter(4)]))
        .unwrap();
    c.deliver_all();
    assert!(c.node(1).membership().is_voter(4));
    c.isolate(3);
    c.isolate(2);
    let q = c.propose(1, "c");
    assert!(
        c.node(1).commit_index() < q.index,
        "1 and 4 are 2 of 4 voters"
    );
    c.heal();
    c.isolate(3);
    c.tick(1);
    c.tick(1);
    c.deliver_all();
    assert_eq!(
        c.node(1).commit_index(),
        q.index,
        "1, 2 and the promoted 4 are a majority"
    );

    c.heal();
    c.crash(1);
    c.campaign(4);
    c.deliver_all();
    assert!(c.node(4).is_leader(), "a promoted learner can be elected");
}

#[test]
fn removed_leader_leads_until_c_new_commits_then_steps_down() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    let p = c
        .with(1, |r| r.change_membership(&[ConfChange::Remove(1)]))
        .unwrap();
    assert!(!c.node(1).membership().is_voter(1));
    assert!(c.node(1).is_leader(), "it still replicates C_new");
    c.deliver_all();
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).leader(), None);
    for id in [2, 3] {
        assert_eq!(
            c.node(id).commit_index(),
            p.index,
            "node {id} learned the commit"
        );
    }
    for _ in 0..100 {
        c.tick(1);
    }
    assert_eq!(
        c.node(1).role(),
        Role::Follower,
        "a non-voter never campaigns"
    );
    c.elect(2);
    assert_eq!(
        c.node(2)
            .status()
            .peers
            .iter()
            .map(|p| p.id)
            .collect::<Vec<_>>(),
        vec![3]
    );
}
