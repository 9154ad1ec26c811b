//! Protocol tests: leader election (§5.2), then pre-vote and check-quorum (Raft thesis §9.6).
//! Each scenario is driven message by message through `common::Cluster`, which also checks
//! State Machine Safety on every apply. (protocol_*.rs together follow the paper's order.)

mod common;

use common::{cmd, plain, store_with_log, Cluster};
use raft_core::{ConfChange, EntryPayload, Index, Message, MessageBody, NodeId, RawNode, Term};

fn vote_answers(c: &Cluster, to: NodeId) -> Vec<(NodeId, bool)> {
    c.sent
        .iter()
        .filter(|m| m.to == to)
        .filter_map(|m| match m.body {
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted,
            } => Some((m.from, granted)),
            _ => None,
        })
        .collect()
}

// ===== Election (§5.2) ===================================================================

#[test]
fn fresh_cluster_elects_exactly_one_leader_from_randomized_timeouts() {
    for n in [3u64, 5] {
        let ids: Vec<NodeId> = (1..=n).collect();
        let mut c = Cluster::new(&ids, common::defaults);
        for _ in 0..100 {
            c.run(1);
            if !c.leaders().is_empty() {
                break;
            }
        }
        let leaders = c.leaders();
        assert_eq!(leaders.len(), 1, "n={n}: leaders {leaders:?}");
        let leader = leaders[0];
        let term = c.node(leader).term();
        // Failed pre-vote rounds leave terms alone, so the first real election is term 1.
        assert_eq!(term, 1, "n={n}");
        c.run(3);
        for id in ids {
            let node = c.node(id);
            assert_eq!(node.term(), term, "n={n} node {id}");
            assert_eq!(node.leader(), Some(leader), "n={n} node {id}");
            assert_eq!(node.commit_index(), 1, "n={n} node {id}: the no-op commits");
        }
    }
}

#[test]
fn new_leader_appends_a_noop_of_its_term_and_commits_it() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.propose(1, "x");
    c.crash(1);
    c.elect(2);
    let term = c.node(2).term();
    assert_eq!(term, 2);
    let last = c.node(2).last_index();
    assert_eq!(
        last, 3,
        "no-op appended after the previous leader's entries"
    );
    let noop = &c.node(2).storage().all_entries()[last as usize - 1];
    assert_eq!(noop.term, term);
    assert_eq!(noop.payload, EntryPayload::Noop);
    assert_eq!(c.node(2).commit_index(), 3);
    assert_eq!(c.node(3).commit_index(), 3);
    assert_eq!(c.hosts[&3].applied.last().map(|e| e.index), Some(3));
}

#[test]
fn a_node_grants_at_most_one_vote_per_term_even_across_a_restart() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    let ask = |from: NodeId| Message {
        from,
        to: 3,
        term: 1,
        body: MessageBody::RequestVote {
            pre_vote: false,
            last_log_index: 0,
            last_log_term: 0,
            leadership_transfer: false,
        },
    };
    c.deliver(ask(1));
    c.deliver(ask(2));
    // The same candidate asking again (a retransmission) gets the same answer.
    c.deliver(ask(1));
    assert_eq!(vote_answers(&c, 1), vec![(3, true), (3, true)]);
    assert_eq!(vote_answers(&c, 2), vec![(3, false)]);
    assert_eq!(c.node(3).vote(), Some(1));

    c.crash(3);
    c.restart(3);
    assert_eq!((c.node(3).term(), c.node(3).vote()), (1, Some(1)));
    c.deliver(ask(2));
    assert_eq!(vote_answers(&c, 2), vec![(3, false), (3, false)]);
}

#[test]
fn vote_and_pre_vote_refused_to_a_candidate_whose_log_is_less_up_to_date() {
    // The voter's log: terms [1, 1, 2] at indexes 1..=3, current term 2.
    // (candidate last term, candidate last index, granted)
    let cases: &[(Term, Index, bool)] = &[
        (2, 3, true),  // equal
        (2, 4, true),  // same last term, longer
        (3, 1, true),  // higher last term wins over length
        (2, 2, false), // same last term, shorter
        (1, 9, false), // lower last term, however long
        (1, 3, false),
        (0, 0, false), // empty
    ];
    for &pre_vote in &[false, true] {
        for &(last_term, last_index, want) in cases {
            let store = store_with_log(&[1, 2, 3], &[1, 1, 2], 2);
            let mut node = RawNode::new(raft_core::Config::new(1), store).unwrap();
            node.step(Message {
                from: 2,
                to: 1,
                term: 3,
                body: MessageBody::RequestVote {
                    pre_vote,
                    last_log_index: last_index,
                    last_log_term: last_term,
                    leadership_transfer: false,
                },
            })
            .unwrap();
            let ready = node.ready();
            let answers: Vec<(bool, bool)> = ready
                .messages
                .iter()
                .chain(&ready.messages_after_persist)
                .filter_map(|m| match m.body {
                    MessageBody::RequestVoteResponse { pre_vote, granted } => {
                        Some((pre_vote, granted))
                    }
                    _ => None,
                })
                .collect();
            let case = format!("pre_vote={pre_vote} candidate=({last_term}, {last_index})");
            assert_eq!(answers, vec![(pre_vote, want)], "{case}");
            if pre_vote {
                // A pre-vote changes nothing durable.
                assert_eq!((node.term(), node.vote()), (2, None), "{case}");
                assert!(ready.hard_state.is_none(), "{case}");
            } else {
                assert_eq!(node.term(), 3, "{case}");
                assert_eq!(node.vote(), want.then_some(2), "{case}");
            }
        }
    }
}

#[test]
fn split_vote_elects_nobody_and_a_later_round_elects_one_leader() {
    let mut c = Cluster::new(&[1, 2, 3, 4], plain);
    c.campaign(1);
    c.campaign(2);
    assert_eq!((c.node(1).term(), c.node(2).term()), (1, 1));
    // 3 hears from 1 first and 4 from 2 first: 2 votes each out of 4.
    c.deliver_if(|m| m.from == 1 && m.to == 3);
    c.deliver_if(|m| m.from == 2 && m.to == 4);
    c.deliver_all();
    assert!(c.leaders().is_empty(), "a split vote elects nobody");
    assert_eq!(c.node(3).vote(), Some(1));
    assert_eq!(c.node(4).vote(), Some(2));
    for id in c.ids() {
        assert_eq!(c.node(id).term(), 1);
    }
    for _ in 0..100 {
        c.run(1);
        if !c.leaders().is_empty() {
            break;
        }
    }
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1);
    let term = c.node(leaders[0]).term();
    assert!(term >= 2, "retry happens in a new term, got {term}");
    c.run(2);
    for id in c.ids() {
        assert_eq!(c.node(id).leader(), Some(leaders[0]));
    }
}

// ===== Pre-vote and check-quorum =========================================================

#[test]
fn node_that_cannot_hear_the_leader_does_not_depose_it_or_inflate_terms() {
    // Links cut; in the first two cases 2 still hears both 1 and 3.
    let cases: &[(&str, &[(NodeId, NodeId)])] = &[
        ("one-way 1->3", &[(1, 3)]),
        ("both ways 1<->3", &[(1, 3), (3, 1)]),
        ("3 isolated", &[(1, 3), (3, 1), (2, 3), (3, 2)]),
    ];
    for &(name, cuts) in cases {
        let mut c = Cluster::new(&[1, 2, 3], common::defaults);
        c.elect(1);
        for &(from, to) in cuts {
            c.cut_one_way(from, to);
        }
        let campaigns_before = c.hosts[&3].campaigns;
        for i in 0..200 {
            c.run(1);
            if i % 20 == 0 {
                c.propose(1, &format!("w{i}"));
            }
        }
        assert_eq!(c.leaders(), vec![1], "{name}");
        for id in [1, 2, 3] {
            assert_eq!(c.node(id).term(), 1, "{name}: node {id}");
        }
        assert!(
            c.hosts[&3].campaigns > campaigns_before + 5,
            "{name}: 3 kept trying"
        );
        let prevotes_answered = c.delivered.iter().any(|m| {
            m.to == 3
                && matches!(
                    m.body,
                    MessageBody::RequestVoteResponse { granted: true, .. }
                )
        });
        assert!(
            !prevotes_answered,
            "{name}: nobody who hears the leader grants"
        );
        assert_eq!(c.node(2).commit_index(), c.node(1).last_index(), "{name}");
        // Healed, 3 rejoins as a follower instead of forcing an election.
        c.heal();
        c.run(5);
        assert_eq!(c.leaders(), vec![1], "{name}");
        assert_eq!(
            (c.node(3).term(), c.node(3).leader()),
            (1, Some(1)),
            "{name}"
        );
        assert_eq!(c.log(3), c.log(1), "{name}");
    }
}

#[test]
fn removed_node_that_missed_its_removal_cannot_disrupt_the_cluster() {
    // Dissertation §4.2.3: 3 is removed while cut off, so it never learns it; it keeps
    // campaigning with the old configuration, and the others, hearing their leader, ignore it.
    let mut c = Cluster::new(&[1, 2, 3], common::defaults);
    c.elect(1);
    c.isolate(3);
    let p = c
        .with(1, |r| r.change_membership(&[ConfChange::Remove(3)]))
        .unwrap();
    c.deliver_all();
    assert_eq!(c.node(1).commit_index(), p.index);
    assert!(
        c.node(3).membership().is_voter(3),
        "3 still believes it votes"
    );
    c.heal();
    for _ in 0..200 {
        c.run(1);
    }
    assert!(c.hosts[&3].campaigns > 5);
    assert_eq!(c.leaders(), vec![1]);
    assert_eq!((c.node(1).term(), c.node(2).term()), (1, 1));
    let q = c.propose(1, "still serving");
    assert_eq!(c.node(1).commit_index(), q.index);
}

#[test]
fn leader_that_loses_its_quorum_steps_down_after_an_election_timeout() {
    let mut c = Cluster::new(&[1, 2, 3], common::defaults);
    c.elect(1);
    c.isolate(1);
    let min = c.hosts[&1].config.election_timeout_ticks_min;
    let mut stepped_down_at = None;
    for t in 1..=3 * min {
        c.tick(1);
        if !c.node(1).is_leader() {
            stepped_down_at = Some(t);
            break;
        }
    }
    let t = stepped_down_at.expect("check-quorum steps the leader down");
    assert!(min <= t && t <= 2 * min, "stepped down after {t} ticks");
    assert_eq!(c.node(1).term(), 1);
    assert!(c.with(1, |r| r.propose(cmd("x"))).is_err());
    // The majority side elects a leader; the old one follows it once healed.
    for _ in 0..100 {
        c.run(1);
        if c.leaders().len() == 1 {
            break;
        }
    }
    let leader = c.leaders()[0];
    assert_ne!(leader, 1);
    c.heal();
    c.run(3);
    assert_eq!(c.node(1).leader(), Some(leader));
    assert_eq!(c.node(1).term(), c.node(leader).term());
}
