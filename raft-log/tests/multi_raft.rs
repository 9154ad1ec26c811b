//! raft-core nodes of many groups over one multi-group log: each group's `RawNode` owns a
//! `SharedGroup` as its store; every round the runtime writes each group's Ready, syncs the
//! shared log once, then reports the Readies persisted. Checks that every group commits its
//! proposals with one sync per round, and that after a restart every node resumes from what
//! the log recovered (term, vote, commit, entries).

mod common;

use bytes::Bytes;
use common::test_dir;
use raft_core::{
    Config, EntryPayload, LogStore, LogWriter, Membership, RawNode, Role, SnapshotMeta,
};
use raft_log::{MultiLog, MultiOptions, SharedGroup, SharedMultiLog};

const GROUPS: u64 = 64;
const ROUNDS: u64 = 30;
/// Ticks a node gets to elect itself, at most (a single voter needs one election timeout).
const ELECTION_TICKS_MAX: u32 = 1000;

fn options() -> MultiOptions {
    MultiOptions {
        segment_bytes: 256 << 10,
        frame_bytes_max: 32 << 10,
        entry_bytes_max: 4 << 10,
        groups_max: GROUPS as usize,
        ..MultiOptions::default()
    }
}

fn node(shared: &SharedMultiLog, group: u64) -> RawNode<SharedGroup> {
    let mut config = Config::new(1);
    config.seed = group;
    RawNode::new(config, shared.group(group).expect("group held")).expect("valid config")
}

/// One runtime round: every node's Ready written, one sync, every Ready reported persisted.
/// Returns the commands committed (and applied) this round, per group.
fn round(shared: &SharedMultiLog, nodes: &mut [RawNode<SharedGroup>]) -> Vec<Vec<Bytes>> {
    let readies: Vec<_> = nodes
        .iter_mut()
        .map(|n| {
            let ready = n.ready();
            n.storage_mut().write_ready(&ready).expect("write");
            ready
        })
        .collect();
    shared.sync().expect("sync");
    nodes
        .iter_mut()
        .zip(readies)
        .map(|(n, ready)| {
            if ready.seq > 0 {
                n.on_persisted(ready.seq);
            }
            let mut applied = Vec::new();
            if let Some(last) = ready.committed_entries.last() {
                n.advance_applied(last.index);
            }
            for e in ready.committed_entries {
                if let EntryPayload::Command(c) = e.payload {
                    applied.push(c);
                }
            }
            applied
        })
        .collect()
}

#[test]
fn many_groups_commit_through_one_log_and_one_sync_per_round_and_resume_after_restart() {
    let dir = test_dir();
    let shared = SharedMultiLog::new(MultiLog::open(dir.path(), options()).unwrap());
    for g in 1..=GROUPS {
        let meta = SnapshotMeta {
            membership: Membership::new_voters([1]),
            ..Default::default()
        };
        shared.lock().create_group(g, meta).unwrap();
    }
    let mut nodes: Vec<_> = (1..=GROUPS).map(|g| node(&shared, g)).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        let mut ticks = 0;
        while n.role() != Role::Leader && ticks < ELECTION_TICKS_MAX {
            n.tick();
            ticks += 1;
        }
        assert!(
            n.role() != Role::Follower,
            "group {} never campaigned",
            i + 1
        );
    }
    // Elections need their votes durable: a round or two.
    for _ in 0..3 {
        round(&shared, &mut nodes);
    }
    assert!(
        nodes.iter().all(|n| n.is_leader()),
        "every group leads itself"
    );

    let mut applied: Vec<Vec<Bytes>> = vec![Vec::new(); GROUPS as usize];
    let syncs_before = shared.lock().sync_count();
    for r in 0..ROUNDS {
        for (i, n) in nodes.iter_mut().enumerate() {
            // Groups propose at different rates, so their entries interleave unevenly.
            for k in 0..=(i as u64 + r) % 3 {
                n.propose(Bytes::from(format!("g{} r{r} k{k}", i + 1)))
                    .expect("leader accepts");
            }
        }
        for (got, new) in applied.iter_mut().zip(round(&shared, &mut nodes)) {
            got.extend(new);
        }
    }
    // A last round for what the final proposals' commit left to apply.
    for (got, new) in applied.iter_mut().zip(round(&shared, &mut nodes)) {
        got.extend(new);
    }
    assert_eq!(
        shared.lock().sync_count() - syncs_before,
        ROUNDS + 1,
        "one fdatasync per round for all {GROUPS} groups"
    );
    for (i, got) in applied.iter().enumerate() {
        let want: Vec<Bytes> = (0..ROUNDS)
            .flat_map(|r| {
                (0..=(i as u64 + r) % 3).map(move |k| Bytes::from(format!("g{} r{r} k{k}", i + 1)))
            })
            .collect();
        assert_eq!(got, &want, "group {} applied", i + 1);
    }
    let before: Vec<_> = nodes
        .iter()
        .map(|n| {
            let s = n.storage();
            (s.hard_state(), s.last_index())
        })
        .collect();

    // Compact half the groups (as after a snapshot), then restart everything.
    for n in nodes.iter_mut().step_by(2) {
        let index = n.applied_index();
        let meta = n.snapshot_meta_at(index).expect("applied index");
        n.storage_mut().compact_to(meta).unwrap();
    }
    shared.sync().unwrap();
    drop(nodes);
    drop(shared);
    let shared = SharedMultiLog::new(MultiLog::open(dir.path(), options()).unwrap());
    let nodes: Vec<_> = (1..=GROUPS).map(|g| node(&shared, g)).collect();
    for (i, n) in nodes.iter().enumerate() {
        let s = n.storage();
        assert_eq!(
            (s.hard_state(), s.last_index()),
            before[i],
            "group {}",
            i + 1
        );
        let first = s.first_index();
        let commands: Vec<Bytes> = s
            .entries(first, s.last_index() + 1, usize::MAX)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.payload {
                EntryPayload::Command(c) => Some(c),
                _ => None,
            })
            .collect();
        let got = &applied[i];
        assert!(
            got.ends_with(&commands),
            "group {}: the entries held after restart are the tail of what it applied",
            i + 1
        );
        if i % 2 == 1 {
            assert_eq!(
                commands.len(),
                got.len(),
                "group {} was not compacted",
                i + 1
            );
        }
    }
}
