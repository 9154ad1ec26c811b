//! Protocol tests: safety (§5.4): Figure 8's old-term entries, and acknowledgements that wait for durability.
//! Each scenario is driven message by message through `common::Cluster`, which also checks
//! State Machine Safety on every apply. (protocol_*.rs together follow the paper's order.)

mod common;

use common::{append_entries, cmd, is_append, is_vote, plain, Cluster};
use raft_core::{Message, MessageBody, Role};

// ===== Safety (§5.4) =====================================================================

/// Figure 8 up to (c): S1 leads term 4 with log [1:1, 2:2, 3:4]; index 2 (term 2) is on S1,
/// S2 and S3, a majority, and S1 knows it; S5 holds [1:1, 2:3] and is down.
fn figure8_c() -> Cluster {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5], |cfg| {
        plain(cfg);
        cfg.append_entries_max = 1;
    });
    c.elect(1);
    assert_eq!(c.node(1).commit_index(), 1);

    // (a) S1 leads term 2; its entry 2 reaches S2 only.
    c.crash(1);
    c.restart(1);
    c.campaign(1);
    c.deliver_if(is_vote);
    assert!(c.node(1).is_leader() && c.node(1).term() == 2);
    c.deliver_if(|m| (m.from == 1 && m.to == 2) || (m.from == 2 && m.to == 1));
    c.drop_if(|m| m.from == 1);
    assert_eq!(c.log_terms(1), vec![1, 2]);
    assert_eq!(c.log_terms(2), vec![1, 2]);

    // (b) S1 crashes; S5 leads term 3 with S3 and S4, and appends its entry 2 alone.
    c.crash(1);
    c.campaign(5);
    c.deliver_if(is_vote);
    assert!(c.node(5).is_leader() && c.node(5).term() == 3);
    c.drop_if(|m| m.from == 5);
    assert_eq!(c.log_terms(5), vec![1, 3]);

    // (c) S5 crashes; S1 restarts and leads term 4 (its term-3 bid fails: S3, S4 voted S5).
    c.crash(5);
    c.restart(1);
    while !c.node(1).is_leader() {
        c.campaign(1);
        c.deliver_if(is_vote);
    }
    assert_eq!(c.node(1).term(), 4);
    assert_eq!(c.log_terms(1), vec![1, 2, 4]);
    // S2 gets entry 3 (term 4) and acks; S3 gets entry 2 only, and S1's next message to it,
    // carrying entry 3, is lost.
    c.deliver_if(|m| (m.from == 1 && m.to == 2) || (m.from == 2 && m.to == 1));
    for probe in c.take_if(|m| m.from == 1 && m.to == 3) {
        c.deliver(probe);
    }
    c.deliver_if(|m| {
        m.to == 1 || (m.from == 1 && m.to == 3 && append_entries(m).iter().all(|e| e.index < 3))
    });
    c.drop_if(|m| m.from == 1);
    assert_eq!(c.log_terms(2), vec![1, 2, 4]);
    assert_eq!(c.log_terms(3), vec![1, 2]);
    c
}

#[test]
fn figure8_old_term_entry_on_a_majority_is_not_committed_by_counting_replicas() {
    let mut c = figure8_c();
    let peers = c.node(1).status().peers;
    let match_of = |id| peers.iter().find(|p| p.id == id).unwrap().match_index;
    assert_eq!((match_of(2), match_of(3)), (3, 2));
    assert_eq!(
        c.node(1).commit_index(),
        1,
        "index 2 (term 2) is on S1, S2, S3 but is not of S1's term"
    );

    // (d) That was right: S1 crashes, and S5 can be elected by S3 and S4 and overwrite it.
    c.crash(1);
    c.restart(5);
    while !c.node(5).is_leader() {
        c.campaign(5);
        c.deliver_if(is_vote);
    }
    assert_eq!(c.node(5).term(), 5);
    c.deliver_all();
    for id in [2, 3, 4, 5] {
        assert_eq!(c.log_terms(id), vec![1, 3, 5], "node {id}");
        assert_eq!(c.node(id).commit_index(), 3, "node {id}");
    }
    c.restart(1);
    c.tick(5);
    c.tick(5);
    c.deliver_all();
    assert_eq!(c.log_terms(1), vec![1, 3, 5]);
}

#[test]
fn figure8_old_term_entry_commits_with_an_entry_of_the_leaders_term() {
    let mut c = figure8_c();
    // (e) S1 gets entry 3 of its own term to S3 too: 2 and 3 commit together.
    c.tick(1);
    c.tick(1);
    c.deliver_if(|m| m.to == 3 || m.to == 1);
    assert_eq!(c.log_terms(3), vec![1, 2, 4]);
    assert_eq!(c.node(1).commit_index(), 3);
    assert_eq!(
        c.hosts[&1]
            .applied
            .iter()
            .map(|e| (e.index, e.term))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 2), (3, 4)]
    );
    // S5 can no longer win: S2 and S3 hold a more up-to-date log.
    c.crash(1);
    c.restart(5);
    for _ in 0..5 {
        c.campaign(5);
        c.deliver_all();
        assert!(!c.node(5).is_leader());
    }
    for id in [2, 3, 4] {
        c.campaign(id);
        c.deliver_all();
        if !c.leaders().is_empty() {
            break;
        }
    }
    let leader = c.leaders()[0];
    assert!(
        leader == 2 || leader == 3,
        "only S2 or S3 can win, got {leader}"
    );
    c.deliver_all();
    assert_eq!(&c.log_terms(5)[..3], &[1, 2, 4]);
}

#[test]
fn leader_counts_its_own_entry_only_after_on_persisted() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.cut_one_way(1, 3);
    c.host(1).auto_sync = false;
    let p = c.with(1, |r| r.propose(cmd("a"))).unwrap();
    let ready = c.hosts[&1].readies.last().unwrap().clone();
    assert_eq!(ready.entries.len(), 1);
    assert!(
        ready.messages.iter().any(|m| m.to == 2 && is_append(m)),
        "a leader sends its entries before they are durable (§10.2.1)"
    );
    c.deliver_all();
    assert_eq!(c.node(1).status().peers[0].match_index, p.index, "2 acked");
    assert_eq!(c.node(1).persisted_index(), p.index - 1);
    assert_eq!(
        c.node(1).commit_index(),
        p.index - 1,
        "2 alone is not a majority of 3 while the leader's copy is not durable"
    );
    c.sync(1);
    assert_eq!(c.node(1).commit_index(), p.index);
}

#[test]
fn follower_acks_only_after_its_entries_are_durable() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.cut_one_way(1, 3);
    c.host(2).auto_sync = false;
    let p = c.with(1, |r| r.propose(cmd("a"))).unwrap();
    c.deliver_all();
    let ready = c.hosts[&2].readies.last().unwrap().clone();
    assert_eq!(ready.entries.last().map(|e| e.index), Some(p.index));
    assert!(!ready
        .messages
        .iter()
        .any(|m| matches!(m.body, MessageBody::AppendEntriesResponse { .. })));
    assert!(ready.messages_after_persist.iter().any(|m| matches!(
        m.body,
        MessageBody::AppendEntriesResponse { index, reject: None } if index == p.index
    )));
    assert_eq!(c.node(1).commit_index(), p.index - 1);

    // A crash before the sync loses the entry, and the leader never counted it.
    c.crash(2);
    c.restart(2);
    c.host(2).auto_sync = true;
    assert_eq!(c.node(2).last_index(), p.index - 1);
    assert_eq!(c.node(1).commit_index(), p.index - 1);
    c.tick(1);
    c.tick(1);
    c.deliver_all();
    assert_eq!(c.node(1).commit_index(), p.index);
}

#[test]
fn votes_and_vote_requests_wait_for_persistence_but_pre_votes_do_not() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.host(1).auto_sync = false;
    c.host(2).auto_sync = false;
    c.campaign(1);
    let r = c.hosts[&1].readies.last().unwrap().clone();
    assert_eq!(r.hard_state.map(|h| (h.term, h.vote)), Some((1, Some(1))));
    assert!(r.messages.is_empty());
    assert_eq!(
        r.messages_after_persist
            .iter()
            .filter(|m| is_vote(m))
            .count(),
        2
    );
    assert!(
        c.net.is_empty(),
        "nothing leaves before the self-vote is durable"
    );
    c.sync(1);
    c.deliver_if(|m| m.to == 2);
    let r = c.hosts[&2].readies.last().unwrap().clone();
    assert!(r.messages.is_empty());
    assert!(matches!(
        r.messages_after_persist[..],
        [Message {
            body: MessageBody::RequestVoteResponse { granted: true, .. },
            ..
        }]
    ));
    // The vote is lost with the crash, and so is the answer that depended on it.
    c.crash(2);
    c.restart(2);
    assert_eq!(c.node(2).vote(), None);
    assert!(!c.net.iter().any(|m| m.from == 2));

    let mut c = Cluster::new(&[1, 2, 3], common::defaults);
    c.host(1).auto_sync = false;
    c.campaign(1);
    let r = c.hosts[&1].readies.last().unwrap().clone();
    assert_eq!(c.node(1).role(), Role::PreCandidate);
    assert!(r.hard_state.is_none(), "a pre-vote round writes nothing");
    assert_eq!(r.messages.iter().filter(|m| is_vote(m)).count(), 2);
}
