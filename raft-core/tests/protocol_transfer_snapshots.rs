//! Protocol tests: leadership transfer (dissertation §3.10) and snapshots (§7).
//! Each scenario is driven message by message through `common::Cluster`, which also checks
//! State Machine Safety on every apply. (protocol_*.rs together follow the paper's order.)

mod common;

use common::{cmd, is_append, plain, Cluster};
use raft_core::{LogStore, Message, MessageBody, ProposeError, SnapshotMeta};

// ===== Leadership transfer (dissertation §3.10) ==========================================

#[test]
fn transfer_catches_the_target_up_before_timeout_now() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.isolate(3);
    c.propose(1, "a");
    c.propose(1, "b");
    c.heal();
    let last = c.node(1).last_index();
    assert!(c.node(3).last_index() < last);
    c.with(1, |r| r.transfer_leader(3)).unwrap();
    assert_eq!(
        c.with(1, |r| r.propose(cmd("c"))),
        Err(ProposeError::TransferInProgress)
    );
    assert!(!c
        .net
        .iter()
        .any(|m| matches!(m.body, MessageBody::TimeoutNow)));
    c.deliver_all();
    let timeout_now = c
        .sent
        .iter()
        .position(|m| matches!(m.body, MessageBody::TimeoutNow) && m.to == 3)
        .expect("TimeoutNow sent");
    let caught_up = c
        .sent
        .iter()
        .position(|m| {
            m.from == 3
                && matches!(m.body, MessageBody::AppendEntriesResponse { index, reject: None } if index == last)
        })
        .expect("3 caught up");
    assert!(caught_up < timeout_now);
    assert!(c.node(3).is_leader());
    assert_eq!(c.node(3).term(), 2);
    assert_eq!(c.node(1).leader(), Some(3));
}

#[test]
fn transfer_to_a_down_target_is_abandoned_after_an_election_timeout() {
    let mut c = Cluster::new(&[1, 2, 3], common::defaults);
    c.elect(1);
    c.crash(3);
    c.with(1, |r| r.transfer_leader(3)).unwrap();
    assert_eq!(
        c.with(1, |r| r.propose(cmd("c"))),
        Err(ProposeError::TransferInProgress)
    );
    let max = c.hosts[&1].config.election_timeout_ticks_max;
    for _ in 0..max - 1 {
        c.tick(1);
        c.deliver_all();
    }
    assert_eq!(
        c.with(1, |r| r.propose(cmd("c"))),
        Err(ProposeError::TransferInProgress)
    );
    c.tick(1);
    c.deliver_all();
    assert!(c.node(1).is_leader());
    let p = c.propose(1, "c");
    assert_eq!(c.node(1).commit_index(), p.index);
}

// ===== Snapshots (§7) ====================================================================

#[test]
fn follower_behind_the_leaders_first_index_is_sent_a_snapshot() {
    let mut c = Cluster::new(&[1, 2, 3], plain);
    c.elect(1);
    c.isolate(3);
    for i in 0..5 {
        c.propose(1, &format!("w{i}"));
    }
    let commit = c.node(1).commit_index();
    c.compact(1, commit - 1);
    c.heal();
    c.propose(1, "after");
    for _ in 0..5 {
        c.tick(1);
        c.deliver_all();
    }
    let snaps: Vec<SnapshotMeta> = c
        .delivered
        .iter()
        .filter(|m| m.to == 3)
        .filter_map(|m| match &m.body {
            MessageBody::InstallSnapshot { meta } => Some(meta.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].index, commit - 1);
    assert_eq!(c.node(3).storage().snapshot_meta().index, commit - 1);
    assert_eq!(
        c.node(3).storage().all_entries(),
        c.node(1).storage().all_entries()
    );
    assert_eq!(c.node(3).commit_index(), c.node(1).commit_index());
}

#[test]
fn snapshot_install_keeps_the_log_suffix_when_its_last_entry_matches() {
    // Whether the snapshot's last entry (index 3) has the term the follower holds there.
    for matching in [true, false] {
        let mut c = Cluster::new(&[1, 2, 3], plain);
        c.elect(1);
        c.isolate(3);
        // 2 gets entries 2..=5 but not the commit index beyond 1.
        for s in ["a", "b", "c", "d"] {
            c.with(1, |r| r.propose(cmd(s))).unwrap();
            c.deliver_if(|m| m.to == 2 && is_append(m));
        }
        c.drop_if(|_| true);
        assert_eq!(c.node(2).last_index(), 5);
        assert_eq!(c.node(2).commit_index(), 1);
        let meta = SnapshotMeta {
            index: 3,
            term: if matching { 1 } else { 2 },
            membership: c.node(2).membership().clone(),
        };
        let term = if matching { 1 } else { 2 };
        c.deliver(Message {
            from: 1,
            to: 2,
            term,
            body: MessageBody::InstallSnapshot { meta: meta.clone() },
        });
        let r = c.hosts[&2].readies.last().unwrap().clone();
        assert_eq!(c.node(2).commit_index(), 3, "matching={matching}");
        if matching {
            assert!(r.snapshot.is_none(), "Figure 13 step 6: keep the log");
            assert_eq!(c.node(2).last_index(), 5);
            assert_eq!(
                c.hosts[&2].applied.last().map(|e| e.index),
                Some(3),
                "entries up to the snapshot are applied from the log"
            );
        } else {
            assert_eq!(r.snapshot, Some(meta));
            assert_eq!(c.node(2).last_index(), 3, "a mismatching log is discarded");
            assert!(c.node(2).storage().all_entries().is_empty());
        }
    }
}
