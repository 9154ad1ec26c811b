//! Protocol tests: linearizable reads (§6.4): ReadIndex, follower reads and leases.
//! Each scenario is driven message by message through `common::Cluster`, which also checks
//! State Machine Safety on every apply. (protocol_*.rs together follow the paper's order.)

mod common;

use common::{is_append, is_vote, plain, Cluster};
use raft_core::{MessageBody, NodeId, ReadError};

// ===== Reads (§6.4) ======================================================================

#[test]
fn read_index_waits_for_a_quorum_heartbeat_round() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.propose(1, "a");
    let commit = c.node(1).commit_index();
    c.with(1, |r| r.read_index(7)).unwrap();
    let heartbeats = c.take_if(|m| matches!(m.body, MessageBody::Heartbeat { .. }));
    assert_eq!(heartbeats.len(), 2, "the read starts a round at once");
    assert!(c.hosts[&1].read_states.is_empty());
    // 3's ack alone (with the leader) is a quorum.
    c.deliver(heartbeats[1].clone());
    assert!(c.hosts[&1].read_states.is_empty(), "ack not delivered yet");
    c.deliver_if(|m| m.from == 3 && m.to == 1);
    assert_eq!(c.hosts[&1].read_states.len(), 1);
    assert_eq!(c.hosts[&1].read_states[0].ctx, 7);
    assert_eq!(c.hosts[&1].read_states[0].result, Ok(commit));
}

#[test]
fn read_index_on_a_new_leader_waits_for_its_term_start_commit() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.propose(1, "a");
    c.crash(1);
    c.campaign(2);
    c.deliver_if(is_vote);
    let held = c.take_if(is_append);
    c.with(2, |r| r.read_index(9)).unwrap();
    assert!(
        !c.net
            .iter()
            .any(|m| matches!(m.body, MessageBody::Heartbeat { .. })),
        "no read round before the no-op commits"
    );
    c.deliver_all();
    assert!(c.hosts[&2].read_states.is_empty());
    for m in held {
        c.deliver(m);
    }
    c.deliver_all();
    let noop = c.node(2).last_index();
    assert_eq!(c.node(2).commit_index(), noop);
    assert_eq!(c.hosts[&2].read_states.len(), 1);
    assert_eq!(c.hosts[&2].read_states[0].result, Ok(noop));
}

#[test]
fn follower_read_is_confirmed_by_the_leader_and_served_after_apply() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.propose(1, "a");
    c.with(3, |r| r.read_index(5)).unwrap();
    let forwarded = c.take_if(|m| matches!(m.body, MessageBody::ReadIndex { .. }));
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].to, 1);
    c.deliver(forwarded[0].clone());
    c.deliver_all();
    let commit = c.node(1).commit_index();
    assert_eq!(c.hosts[&3].read_states.len(), 1);
    assert_eq!(c.hosts[&3].read_states[0].result, Ok(commit));
    assert!(c.node(3).applied_index() >= commit);

    // Without a leader the read is refused at once.
    let mut lone = Cluster::new(&[1, 2, 3], plain);
    assert_eq!(
        lone.with(2, |r| r.read_index(1)),
        Err(ReadError::NotLeader { leader: None })
    );
}

#[test]
fn pending_reads_fail_when_the_leader_steps_down() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.with(1, |r| r.read_index(1)).unwrap();
    c.with(3, |r| r.read_index(3)).unwrap();
    c.deliver_if(|m| matches!(m.body, MessageBody::ReadIndex { .. }));
    // The confirming round is lost, and 2 takes over in term 2.
    c.drop_if(|m| matches!(m.body, MessageBody::Heartbeat { .. }));
    c.campaign(2);
    c.deliver_all();
    assert!(c.node(2).is_leader());
    assert_eq!(
        c.hosts[&1]
            .read_states
            .iter()
            .map(|r| (r.ctx, r.result))
            .collect::<Vec<_>>(),
        vec![(1, Err(ReadError::LeadershipLost))]
    );
    let on_3: Vec<_> = c.hosts[&3].read_states.iter().map(|r| r.ctx).collect();
    assert_eq!(on_3, vec![3]);
    assert!(c.hosts[&3].read_states[0].result.is_err());
}

/// A cluster with lease reads whose leader holds a fresh lease. A node starting up ignores
/// vote requests for an election timeout (it may have promised a lease before a restart), so
/// the first leader comes out of running the clock, not out of a forced campaign.
fn lease_cluster() -> (Cluster, NodeId) {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.lease_read = true);
    for _ in 0..200 {
        c.run(1);
        if !c.leaders().is_empty() {
            break;
        }
    }
    let leader = c.leaders()[0];
    c.tick(leader);
    c.tick(leader);
    c.deliver_all();
    (c, leader)
}

#[test]
fn lease_read_is_served_without_a_round_only_within_the_lease() {
    let (mut c, l) = lease_cluster();
    let commit = c.node(l).commit_index();
    c.with(l, |r| r.read_index(1)).unwrap();
    assert_eq!(c.hosts[&l].read_states.len(), 1, "served from the lease");
    assert_eq!(c.hosts[&l].read_states[0].result, Ok(commit));
    assert!(!c
        .net
        .iter()
        .any(|m| matches!(m.body, MessageBody::Heartbeat { .. })));

    // Cut off, the lease runs out (counted from when its last acked round was sent) while
    // the node still believes it leads.
    c.isolate(l);
    let cfg = c.hosts[&l].config.clone();
    let lease = cfg.election_timeout_ticks_min - cfg.lease_ticks_margin;
    for _ in 0..lease - 1 {
        c.tick(l);
    }
    c.with(l, |r| r.read_index(2)).unwrap();
    assert_eq!(c.hosts[&l].read_states.len(), 2, "last tick of the lease");
    c.tick(l);
    c.net.clear();
    assert!(c.node(l).is_leader());
    c.with(l, |r| r.read_index(3)).unwrap();
    assert_eq!(
        c.hosts[&l].read_states.len(),
        2,
        "lease expired: the read waits"
    );
    assert!(c
        .net
        .iter()
        .any(|m| matches!(m.body, MessageBody::Heartbeat { .. })));
}

#[test]
fn leadership_transfer_ends_the_lease() {
    let (mut c, l) = lease_cluster();
    let target = if l == 1 { 2 } else { 1 };
    c.with(l, |r| r.transfer_leader(target)).unwrap();
    assert!(c
        .net
        .iter()
        .any(|m| matches!(m.body, MessageBody::TimeoutNow)));
    c.net.clear();
    c.with(l, |r| r.read_index(1)).unwrap();
    assert!(
        c.hosts[&l].read_states.is_empty(),
        "no lease read during a transfer"
    );
    assert!(c
        .net
        .iter()
        .any(|m| matches!(m.body, MessageBody::Heartbeat { .. })));
}

#[test]
/// Regression: found by this suite; a leader now forfeits its lease for the rest of its term
/// once it starts a transfer.
fn stale_timeout_now_cannot_elect_a_node_while_the_old_leader_serves_lease_reads() {
    let (mut c, l) = lease_cluster();
    let others: Vec<NodeId> = c.ids().into_iter().filter(|&id| id != l).collect();
    let (target, other) = (others[0], others[1]);
    c.with(l, |r| r.transfer_leader(target)).unwrap();
    // The TimeoutNow is delayed in the network past the transfer's timeout.
    let timeout_now = c.take_if(|m| matches!(m.body, MessageBody::TimeoutNow));
    assert_eq!(timeout_now.len(), 1);
    let max = c.hosts[&l].config.election_timeout_ticks_max as usize;
    c.run(max + 2);
    assert!(c.node(l).is_leader());
    let p = c.propose(l, "before");
    assert_eq!(
        c.node(l).commit_index(),
        p.index,
        "the transfer was abandoned"
    );
    // It arrives; the target's vote request never reaches the old leader.
    c.cut_one_way(target, l);
    c.cut_one_way(other, l);
    c.deliver(timeout_now[0].clone());
    c.deliver_all();
    assert!(
        c.node(target).is_leader(),
        "the voters bypass their lease for a transfer"
    );
    let w = c.propose(target, "w");
    assert_eq!(c.node(target).commit_index(), w.index);
    // The old leader must not serve a read that misses the committed write `w`.
    c.with(l, |r| r.read_index(42)).unwrap();
    for rs in &c.hosts[&l].read_states {
        if let Ok(index) = rs.result {
            assert!(
                index >= w.index,
                "stale read at {index} misses write {} committed by {target} in term {}",
                w.index,
                w.term
            );
        }
    }
}
