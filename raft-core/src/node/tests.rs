//! Handler tests for the node's sub-states, in the style of openraft's: put one node in a known
//! state, feed it one input, and assert the exact messages, read states and writes it emits.
//! (Whole-cluster scenarios are in `tests/protocol_*.rs`; these pin down single handlers.)

use bytes::Bytes;

use crate::config::Config;
use crate::membership::Membership;
use crate::message::{Message, MessageBody};
use crate::ready::{ReadError, ReadState, Ready};
use crate::storage::MemLog;
use crate::types::{Entry, EntryPayload, HardState, Index, NodeId, Role, SnapshotMeta, Term};

use super::{ProposeError, RawNode};

fn config(id: NodeId) -> Config {
    let mut c = Config::new(id);
    // Plain elections keep the setup to one vote round; check-quorum is switched on where a
    // test needs it (lease reads).
    c.pre_vote = false;
    c.check_quorum = false;
    c
}

fn node_with(config: Config, voters: &[NodeId]) -> RawNode<MemLog> {
    let store = MemLog::with_snapshot(SnapshotMeta {
        membership: Membership::new_voters(voters.iter().copied()),
        ..Default::default()
    });
    RawNode::new(config, store).expect("valid config")
}

/// Takes a Ready and does what a host does with its writes: store them, report them durable.
fn persist(node: &mut RawNode<MemLog>) -> Ready {
    let ready = node.ready();
    node.storage_mut().persist(&ready);
    if ready.seq > 0 {
        node.on_persisted(ready.seq);
    }
    if let Some(last) = ready.committed_entries.last() {
        node.advance_applied(last.index);
    }
    ready
}

fn msg(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

fn heartbeat(to: NodeId, commit: Index, read_seq: u64) -> Message {
    msg(1, to, 1, MessageBody::Heartbeat { commit, read_seq })
}

fn ack(from: NodeId, index: Index) -> Message {
    msg(
        from,
        1,
        1,
        MessageBody::AppendEntriesResponse {
            index,
            reject: None,
        },
    )
}

/// Node 1, elected leader of term 1 among `voters` by node 2's vote, its no-op (index 1)
/// durable and its first Ready taken.
fn leader_with(config: Config, voters: &[NodeId]) -> RawNode<MemLog> {
    let mut n = node_with(config, voters);
    while n.role() != Role::Candidate {
        n.tick();
    }
    n.step(msg(
        2,
        1,
        1,
        MessageBody::RequestVoteResponse {
            pre_vote: false,
            granted: true,
        },
    ))
    .unwrap();
    assert!(n.is_leader());
    persist(&mut n);
    n
}

/// A leader of {1, 2, 3} whose no-op node 2 has acknowledged: committed and applied.
fn settled_leader(config: Config) -> RawNode<MemLog> {
    let mut n = leader_with(config, &[1, 2, 3]);
    n.step(ack(2, 1)).unwrap();
    assert_eq!(n.commit_index(), 1);
    persist(&mut n);
    assert_eq!(n.applied_index(), 1);
    n
}

fn read_ok(ctx: u64, index: Index) -> ReadState {
    ReadState {
        ctx,
        result: Ok(index),
    }
}

// ----- reads and lease -------------------------------------------------------------------

#[test]
fn a_leader_read_goes_out_as_one_heartbeat_round_and_is_served_once_a_quorum_answers() {
    let mut n = settled_leader(config(1));
    n.read_index(7).unwrap();
    let ready = persist(&mut n);
    // Node 3 has not acknowledged anything, so its heartbeat carries commit 0.
    assert_eq!(ready.messages, vec![heartbeat(2, 1, 1), heartbeat(3, 0, 1)]);
    assert!(ready.read_states.is_empty());
    assert_eq!(ready.seq, 0, "a read writes nothing");

    // An answer to an older round confirms nothing.
    n.step(msg(2, 1, 1, MessageBody::HeartbeatResponse { read_seq: 0 }))
        .unwrap();
    assert!(n.ready().read_states.is_empty());
    n.step(msg(2, 1, 1, MessageBody::HeartbeatResponse { read_seq: 1 }))
        .unwrap();
    let ready = persist(&mut n);
    assert_eq!(ready.read_states, vec![read_ok(7, 1)]);
    assert!(ready.messages.is_empty());
}

#[test]
fn a_new_leader_holds_reads_until_its_term_start_entry_commits() {
    let mut n = leader_with(config(1), &[1, 2, 3]);
    n.read_index(4).unwrap();
    assert!(
        !n.has_ready(),
        "neither a round nor an answer before the no-op commits"
    );
    n.step(ack(2, 1)).unwrap();
    let ready = persist(&mut n);
    // The commit goes out to both followers, then the read's round.
    assert_eq!(
        ready.messages,
        vec![
            msg(
                1,
                2,
                1,
                MessageBody::AppendEntries {
                    prev_log_index: 1,
                    prev_log_term: 1,
                    entries: vec![],
                    leader_commit: 1,
                },
            ),
            heartbeat(2, 1, 1),
            heartbeat(3, 0, 1),
        ]
    );
    assert!(ready.read_states.is_empty());
}

#[test]
fn a_follower_forwards_a_read_and_serves_it_once_it_has_applied_the_leaders_index() {
    let mut n = node_with(config(2), &[1, 2, 3]);
    assert_eq!(
        n.read_index(9),
        Err(ReadError::NotLeader { leader: None }),
        "no leader known yet"
    );
    let noop = Entry {
        index: 1,
        term: 1,
        payload: EntryPayload::Noop,
    };
    n.step(msg(
        1,
        2,
        1,
        MessageBody::AppendEntries {
            prev_log_index: 0,
            prev_log_term: 0,
            entries: vec![noop.clone()],
            leader_commit: 0,
        },
    ))
    .unwrap();
    persist(&mut n);
    n.read_index(9).unwrap();
    let ready = persist(&mut n);
    assert_eq!(
        ready.messages,
        vec![msg(2, 1, 1, MessageBody::ReadIndex { ctx: 9 })]
    );

    n.step(msg(
        1,
        2,
        1,
        MessageBody::ReadIndexResponse {
            ctx: 9,
            index: Some(1),
        },
    ))
    .unwrap();
    assert!(!n.has_ready(), "index 1 is not applied here yet");
    n.step(heartbeat(2, 1, 0)).unwrap();
    let ready = n.ready();
    assert_eq!(ready.committed_entries, vec![noop]);
    assert!(ready.read_states.is_empty(), "served only after the apply");
    n.advance_applied(1);
    assert_eq!(n.ready().read_states, vec![read_ok(9, 1)]);
}

#[test]
fn a_forwarded_read_fails_when_the_leader_changes_and_times_out_if_unanswered() {
    let mut n = node_with(config(2), &[1, 2, 3]);
    n.step(heartbeat(2, 0, 0)).unwrap();
    n.read_index(1).unwrap();
    n.step(msg(
        3,
        2,
        2,
        MessageBody::Heartbeat {
            commit: 0,
            read_seq: 0,
        },
    ))
    .unwrap();
    let ready = n.ready();
    assert_eq!(
        ready.read_states,
        vec![ReadState {
            ctx: 1,
            result: Err(ReadError::LeadershipLost)
        }]
    );

    n.read_index(2).unwrap();
    let deadline_ticks = 2 * n.config().election_timeout_ticks_max;
    for tick in 1..=deadline_ticks {
        n.tick();
        // The leader stays in touch (so no election), but never answers the read.
        n.step(msg(
            3,
            2,
            2,
            MessageBody::Heartbeat {
                commit: 0,
                read_seq: 0,
            },
        ))
        .unwrap();
        let states = n.ready().read_states;
        if tick < deadline_ticks {
            assert!(states.is_empty(), "tick {tick}");
        } else {
            assert_eq!(
                states,
                vec![ReadState {
                    ctx: 2,
                    result: Err(ReadError::Timeout)
                }]
            );
        }
    }
}

#[test]
fn a_deposed_leader_fails_its_own_reads_and_answers_the_followers_empty() {
    let mut n = settled_leader(config(1));
    n.read_index(5).unwrap();
    n.step(msg(3, 1, 1, MessageBody::ReadIndex { ctx: 6 }))
        .unwrap();
    persist(&mut n);
    n.step(msg(
        2,
        1,
        2,
        MessageBody::Heartbeat {
            commit: 1,
            read_seq: 0,
        },
    ))
    .unwrap();
    assert_eq!((n.role(), n.leader()), (Role::Follower, Some(2)));
    let ready = persist(&mut n);
    assert_eq!(
        ready.read_states,
        vec![ReadState {
            ctx: 5,
            result: Err(ReadError::LeadershipLost)
        }]
    );
    assert_eq!(
        ready.messages,
        vec![
            msg(
                1,
                3,
                2,
                MessageBody::ReadIndexResponse {
                    ctx: 6,
                    index: None
                }
            ),
            msg(1, 2, 2, MessageBody::HeartbeatResponse { read_seq: 0 }),
        ]
    );
}

#[test]
fn a_lease_serves_reads_without_a_round_until_a_transfer_forfeits_it() {
    let mut c = config(1);
    c.check_quorum = true;
    c.lease_read = true;
    let mut n = settled_leader(c);
    n.read_index(1).unwrap();
    persist(&mut n);
    n.step(msg(2, 1, 1, MessageBody::HeartbeatResponse { read_seq: 1 }))
        .unwrap();
    assert_eq!(persist(&mut n).read_states, vec![read_ok(1, 1)]);

    // The confirmed round earned a lease: the next read needs no round.
    n.read_index(2).unwrap();
    let ready = persist(&mut n);
    assert_eq!(ready.read_states, vec![read_ok(2, 1)]);
    assert!(ready.messages.is_empty());

    n.transfer_leader(3).unwrap();
    persist(&mut n);
    n.read_index(3).unwrap();
    let ready = persist(&mut n);
    assert!(ready.read_states.is_empty(), "the lease is gone");
    assert_eq!(ready.messages, vec![heartbeat(2, 1, 2), heartbeat(3, 0, 2)]);
}

// ----- persistence tracking ----------------------------------------------------------------

#[test]
fn a_follower_acknowledges_entries_only_after_they_are_durable() {
    let mut n = node_with(config(2), &[1, 2, 3]);
    let entries: Vec<Entry> = (1..=2)
        .map(|index| Entry {
            index,
            term: 1,
            payload: EntryPayload::Noop,
        })
        .collect();
    n.step(msg(
        1,
        2,
        1,
        MessageBody::AppendEntries {
            prev_log_index: 0,
            prev_log_term: 0,
            entries: entries.clone(),
            leader_commit: 1,
        },
    ))
    .unwrap();
    let ready = n.ready();
    assert_eq!(ready.seq, 1);
    assert_eq!(ready.entries, entries);
    assert_eq!(
        ready.hard_state,
        Some(HardState {
            term: 1,
            vote: None,
            commit: 1
        })
    );
    assert!(ready.messages.is_empty());
    assert_eq!(
        ready.messages_after_persist,
        vec![msg(
            2,
            1,
            1,
            MessageBody::AppendEntriesResponse {
                index: 2,
                reject: None
            }
        )]
    );
    assert_eq!(n.persisted_index(), 0);
    n.storage_mut().persist(&ready);
    n.on_persisted(ready.seq);
    assert_eq!(n.persisted_index(), 2);
    let ready = n.ready();
    assert_eq!(ready.seq, 0, "nothing new to write");
    assert_eq!(ready.hard_state, None);
}

#[test]
fn a_leader_counts_its_own_entry_only_once_reported_durable() {
    let mut n = settled_leader(config(1));
    let id = n.propose(Bytes::from_static(b"x")).unwrap();
    let ready = n.ready();
    assert_eq!(ready.entries.len(), 1);
    n.storage_mut().persist(&ready);
    n.step(ack(2, id.index)).unwrap();
    assert_eq!(
        n.commit_index(),
        1,
        "node 2 and an undurable leader are no quorum"
    );
    n.on_persisted(ready.seq);
    assert_eq!(n.commit_index(), id.index);
}

#[test]
fn sequence_numbers_go_only_to_readies_with_writes_and_a_report_covers_earlier_ones() {
    let mut n = settled_leader(config(1));
    let first = n.propose(Bytes::from_static(b"a")).unwrap();
    let a = n.ready();
    n.storage_mut().persist(&a);
    let second = n.propose(Bytes::from_static(b"b")).unwrap();
    let b = n.ready();
    n.storage_mut().persist(&b);
    assert!(a.seq > 0 && b.seq == a.seq + 1);
    n.read_index(1).unwrap();
    assert_eq!(n.ready().seq, 0, "heartbeats only");
    assert_eq!(n.persisted_index(), first.index - 1);
    n.on_persisted(b.seq);
    assert_eq!(n.persisted_index(), second.index);
}

// ----- leadership transfer -------------------------------------------------------------------

#[test]
fn a_transfer_to_a_caught_up_voter_sends_timeout_now_at_once_and_holds_proposals() {
    let mut n = settled_leader(config(1));
    n.transfer_leader(2).unwrap();
    assert_eq!(
        n.ready().messages,
        vec![msg(1, 2, 1, MessageBody::TimeoutNow)]
    );
    assert_eq!(
        n.propose(Bytes::from_static(b"x")),
        Err(ProposeError::TransferInProgress)
    );
}

fn empty_append(to: NodeId, prev: Index, leader_commit: Index) -> Message {
    msg(
        1,
        to,
        1,
        MessageBody::AppendEntries {
            prev_log_index: prev,
            prev_log_term: 1,
            entries: vec![],
            leader_commit,
        },
    )
}

#[test]
fn a_transfer_to_a_lagging_voter_catches_it_up_first() {
    let mut n = settled_leader(config(1));
    n.step(ack(3, 1)).unwrap();
    n.propose(Bytes::from_static(b"x")).unwrap();
    persist(&mut n);
    // Node 3 has not acknowledged entry 2: it is sent (again, from where the pipeline stands)
    // before anything else.
    n.transfer_leader(3).unwrap();
    assert_eq!(n.ready().messages, vec![empty_append(3, 2, 1)]);
    n.step(ack(3, 2)).unwrap();
    // Caught up: TimeoutNow at once, then the commit (3's ack made entry 2 committed).
    assert_eq!(
        n.ready().messages,
        vec![
            msg(1, 3, 1, MessageBody::TimeoutNow),
            empty_append(2, 2, 2),
            empty_append(3, 2, 2),
        ]
    );
}

#[test]
fn an_unfinished_transfer_is_abandoned_after_an_election_timeout() {
    let mut n = settled_leader(config(1));
    n.transfer_leader(3).unwrap();
    for _ in 1..n.config().election_timeout_ticks_max {
        n.tick();
    }
    assert_eq!(
        n.propose(Bytes::from_static(b"x")),
        Err(ProposeError::TransferInProgress)
    );
    n.tick();
    assert!(n.propose(Bytes::from_static(b"x")).is_ok());
}

// ----- configurations in the log -----------------------------------------------------------

#[test]
fn the_membership_at_an_index_survives_apply_until_the_log_is_compacted_past_it() {
    let mut n = settled_leader(config(1));
    let change = n
        .change_membership(&[crate::membership::ConfChange::AddLearner(4)])
        .unwrap();
    persist(&mut n);
    n.step(ack(2, change.index)).unwrap();
    persist(&mut n);
    assert_eq!(n.applied_index(), change.index);
    let before = Membership::new_voters([1, 2, 3]);
    let after = n.membership().clone();
    assert!(after.learners.contains(&4));
    // Applied, but not compacted: the configuration before the change is still known.
    assert_eq!(n.membership_at(1), Some(&before));
    assert_eq!(n.membership_at(change.index), Some(&after));
    assert_eq!(n.membership_at(change.index + 1), None, "beyond the log");
    assert_eq!(
        n.snapshot_meta_at(1),
        Some(SnapshotMeta {
            index: 1,
            term: 1,
            membership: before.clone()
        })
    );

    let meta = n.snapshot_meta_at(1).unwrap();
    crate::LogWriter::compact_to(n.storage_mut(), meta).unwrap();
    n.propose(Bytes::from_static(b"x")).unwrap();
    persist(&mut n);
    n.step(ack(2, change.index + 1)).unwrap();
    persist(&mut n);
    assert_eq!(n.snapshot_meta_at(0), None, "compacted");
    assert_eq!(n.membership_at(1), Some(&before), "the compaction point's");
    assert_eq!(n.membership_at(change.index), Some(&after));
}

// ----- the snapshot a leader sends ---------------------------------------------------------

fn install(to: NodeId, term: Term, meta: SnapshotMeta) -> Message {
    msg(1, to, term, MessageBody::InstallSnapshot { meta })
}

/// A settled leader of {1, 2, 3} holding entries 1..=4 (its no-op and three commands),
/// committed and applied with node 2's acknowledgement; node 3 has acknowledged nothing.
fn leader_with_applied_commands() -> RawNode<MemLog> {
    let mut n = settled_leader(config(1));
    for _ in 0..3 {
        n.propose(Bytes::from_static(b"x")).unwrap();
    }
    persist(&mut n);
    n.step(ack(2, 4)).unwrap();
    persist(&mut n);
    assert_eq!((n.commit_index(), n.applied_index()), (4, 4));
    n
}

#[test]
fn a_leader_sends_the_snapshot_the_host_reported_not_its_compaction_point_below_it() {
    let mut n = leader_with_applied_commands();
    // The host snapshots at 3 and keeps a trailing margin: the log is compacted through 2,
    // where it holds no snapshot.
    let snapshot = n.snapshot_meta_at(3).unwrap();
    n.on_snapshot_built(snapshot.clone()).unwrap();
    let margin = n.snapshot_meta_at(2).unwrap();
    crate::LogWriter::compact_to(n.storage_mut(), margin).unwrap();
    assert_eq!(n.snapshot_to_send(), snapshot);

    // Node 3 needs entry 2 on, which the log no longer holds.
    n.step(msg(3, 1, 1, MessageBody::HeartbeatResponse { read_seq: 0 }))
        .unwrap();
    let ready = persist(&mut n);
    assert_eq!(ready.messages, vec![install(3, 1, snapshot)]);

    // Nothing else goes to node 3 until it answers; its answer resumes replication right
    // after the snapshot.
    n.step(msg(3, 1, 1, MessageBody::HeartbeatResponse { read_seq: 0 }))
        .unwrap();
    assert!(persist(&mut n).messages.is_empty());
    n.step(ack(3, 3)).unwrap();
    let ready = persist(&mut n);
    assert_eq!(
        ready.messages,
        vec![msg(
            1,
            3,
            1,
            MessageBody::AppendEntries {
                prev_log_index: 3,
                prev_log_term: 1,
                entries: crate::LogStore::entries(n.storage(), 4, 5, usize::MAX).unwrap(),
                leader_commit: 4,
            }
        )]
    );
}

#[test]
fn without_a_report_a_leader_sends_its_compaction_point_which_memlog_hosts_snapshot_at() {
    let mut n = leader_with_applied_commands();
    let compaction = n.snapshot_meta_at(3).unwrap();
    crate::LogWriter::compact_to(n.storage_mut(), compaction.clone()).unwrap();
    n.step(msg(3, 1, 1, MessageBody::HeartbeatResponse { read_seq: 0 }))
        .unwrap();
    assert_eq!(persist(&mut n).messages, vec![install(3, 1, compaction)]);
}

#[test]
fn a_reported_snapshot_is_refused_unless_it_matches_the_log_and_ignored_when_older() {
    let mut n = leader_with_applied_commands();
    let at_3 = n.snapshot_meta_at(3).unwrap();

    let wrong_term = SnapshotMeta {
        term: 2,
        ..at_3.clone()
    };
    assert_eq!(
        n.on_snapshot_built(wrong_term.clone()),
        Err(super::SnapshotError::Disagrees {
            reported: Box::new(wrong_term),
            log: Box::new(at_3.clone())
        })
    );
    let wrong_membership = SnapshotMeta {
        membership: Membership::new_voters([1, 2]),
        ..at_3.clone()
    };
    assert!(matches!(
        n.on_snapshot_built(wrong_membership),
        Err(super::SnapshotError::Disagrees { .. })
    ));
    let beyond = SnapshotMeta {
        index: 9,
        ..at_3.clone()
    };
    assert_eq!(
        n.on_snapshot_built(beyond),
        Err(super::SnapshotError::NotInLog {
            index: 9,
            first_index: 1,
            last_index: 4
        })
    );
    assert_eq!(n.snapshot_to_send().index, 0, "nothing refused was taken");

    n.on_snapshot_built(at_3.clone()).unwrap();
    n.on_snapshot_built(n.snapshot_meta_at(2).unwrap()).unwrap();
    assert_eq!(
        n.snapshot_to_send(),
        at_3,
        "an older report changes nothing"
    );
}

#[test]
fn a_snapshot_beyond_the_commit_index_waits_until_the_leader_commits_past_it() {
    // A restarted node whose snapshot file (at 4) is newer than the commit index its hard
    // state recorded (2): the log holds 1..=5 of term 1, compacted through 2.
    let voters = Membership::new_voters([1, 2, 3]);
    let mut store = MemLog::with_snapshot(SnapshotMeta {
        membership: voters.clone(),
        ..Default::default()
    });
    let entries: Vec<Entry> = (1..=5)
        .map(|index| Entry {
            index,
            term: 1,
            payload: EntryPayload::Noop,
        })
        .collect();
    store.append(&entries);
    store.set_hard_state(HardState {
        term: 1,
        vote: None,
        commit: 2,
    });
    store.compact(SnapshotMeta {
        index: 2,
        term: 1,
        membership: voters.clone(),
    });
    let mut n = RawNode::new(config(1), store).unwrap();
    let snapshot = SnapshotMeta {
        index: 4,
        term: 1,
        membership: voters,
    };
    n.on_snapshot_built(snapshot.clone()).unwrap();

    while n.role() != Role::Candidate {
        n.tick();
    }
    let vote = MessageBody::RequestVoteResponse {
        pre_vote: false,
        granted: true,
    };
    n.step(msg(2, 1, 2, vote)).unwrap();
    assert!(n.is_leader());
    persist(&mut n);
    // Node 3's log is empty: the leader backs up to index 1, which it no longer holds, and
    // the snapshot it would send is not known committed yet, so it sends nothing.
    let empty_log = crate::message::ConflictHint {
        term: None,
        index: 1,
    };
    n.step(msg(
        3,
        1,
        2,
        MessageBody::AppendEntriesResponse {
            index: 5,
            reject: Some(empty_log),
        },
    ))
    .unwrap();
    assert!(persist(&mut n).messages.is_empty());

    // Node 2 acknowledges the no-op (6): the commit index passes the snapshot, which goes
    // out with the commit's broadcast.
    n.step(msg(
        2,
        1,
        2,
        MessageBody::AppendEntriesResponse {
            index: 6,
            reject: None,
        },
    ))
    .unwrap();
    assert_eq!(n.commit_index(), 6);
    let ready = persist(&mut n);
    let to_3: Vec<&Message> = ready.messages.iter().filter(|m| m.to == 3).collect();
    assert_eq!(to_3, vec![&install(3, 2, snapshot)]);
}

#[test]
fn an_installed_snapshot_is_the_one_this_node_sends_later() {
    let mut n = node_with(config(2), &[1, 2, 3]);
    let meta = SnapshotMeta {
        index: 10,
        term: 1,
        membership: Membership::new_voters([1, 2, 3]),
    };
    n.step(msg(
        1,
        2,
        1,
        MessageBody::InstallSnapshot { meta: meta.clone() },
    ))
    .unwrap();
    assert_eq!(n.snapshot_to_send(), meta);
    let ready = persist(&mut n);
    assert_eq!(ready.snapshot, Some(meta.clone()));
    assert_eq!(n.snapshot_to_send(), meta);
}
