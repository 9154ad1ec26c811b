//! `raft-node recover`: the way back for a cluster whose majority is gone for good (etcd's
//! `--force-new-cluster` is the model).
//!
//! Run offline on one surviving node's data directory, it appends to that node's log a
//! configuration naming the node as the only voter, in a term above any it has seen, and
//! records that term with a vote for itself. Started again as usual, the node elects itself
//! and commits everything its log holds; the operator then adds fresh members (learner,
//! then promote).
//!
//! What happens to the entries:
//! - every entry the node holds is kept, committed or not. Its stored commit index may lag
//!   the cluster's (commit-only changes are written unforced), so an entry past it may well
//!   have been committed and acknowledged by the lost majority: dropping those could lose
//!   acknowledged writes. An entry that really was uncommitted was never acknowledged (its
//!   client saw an error or a timeout, an unknown outcome), so committing it breaks no
//!   promise. The new leader's first entry commits them all.
//! - entries the lost nodes had and this one did not are gone with them: recover the
//!   survivor with the longest log (`raft-node status` or the `last` line printed here).
//!
//! The other old members must never come back with their data (they would still believe in
//! the old configuration): wipe them and add them back as new learners.

use std::fmt::Write as _;
use std::path::Path;

use raft_core::{Config, Entry, EntryPayload, HardState, LogStore, Membership, NodeId, RawNode};
use raft_log::{Log, Options};

use crate::node::DirLock;

/// A raft-core node started on `log_dir`'s log as a restarting node would be: it works out
/// the configuration in force (the latest appended, else the snapshot's), so this tool and
/// the node agree on it. The node is only asked, never driven (no tick, no message).
fn open_as_node(log_dir: &Path, id: NodeId) -> Result<RawNode<Log>, String> {
    let log = Log::open(log_dir, Options::default())
        .map_err(|e| format!("opening the log in {}: {e}", log_dir.display()))?;
    RawNode::new(Config::new(id), log)
        .map_err(|e| format!("reading the log in {}: {e}", log_dir.display()))
}

/// Rewrites the stored membership of the node `id` whose data is in `data_dir` to `id`
/// alone, as described in the module documentation. Refuses while a node holds the
/// directory's lock. Returns what it did, line by line, for the operator.
pub fn force_new_cluster(data_dir: &Path, id: NodeId) -> Result<String, String> {
    let log_dir = data_dir.join("log");
    if !log_dir.is_dir() {
        return Err(format!(
            "no log in {}: nothing to recover (give the data directory of a node that ran \
             with storage = disk)",
            log_dir.display()
        ));
    }
    let _lock = DirLock::acquire(data_dir)
        .map_err(|e| format!("{}; stop that node before recovering it", e.message))?;
    let mut node = open_as_node(&log_dir, id)?;
    let old = node.membership().clone();
    // The node is dropped below without being driven, so writing its store directly is
    // safe here (a driven node must only see the writes its Readies ask for).
    let log = node.storage_mut();
    let hard = log.hard_state();
    let snapshot = log.snapshot_meta();
    let last = log.last_index();
    let last_term = log
        .term(last)
        .map_err(|e| format!("reading the term of entry {last}: {e:?}"))?;
    if old == Membership::default() {
        return Err(format!(
            "{} holds no configuration (a node that never joined): nothing to recover",
            log_dir.display()
        ));
    }
    if !old.contains(id) {
        return Err(format!(
            "node {id} is not a member of the configuration stored in {} (voters {:?}, \
             learners {:?}): is --id this directory's node?",
            data_dir.display(),
            old.voters,
            old.learners
        ));
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "raft-node recover: node {id}, data {}",
        data_dir.display()
    );
    let _ = writeln!(
        out,
        "  found: term {}, vote {:?}, commit {} (stored; may lag the cluster's), log {}..={} \
         (last term {last_term}), snapshot at {}",
        hard.term,
        hard.vote,
        hard.commit,
        log.first_index(),
        last,
        snapshot.index
    );
    let _ = writeln!(
        out,
        "  configuration in force (the latest appended): voters {:?}, outgoing voters {:?}, \
         learners {:?}",
        old.voters, old.voters_outgoing, old.learners
    );
    if !old.is_voter(id) {
        let _ = writeln!(
            out,
            "  WARNING: node {id} was a learner: it counted toward no majority, so it may lack \
             entries the voters committed and acknowledged; recover a former voter if any \
             survives"
        );
    }
    let uncommitted = last.saturating_sub(hard.commit.max(snapshot.index));
    if uncommitted > 0 {
        let _ = writeln!(
            out,
            "  entries {}..={last} ({uncommitted}) are past the stored commit index: kept; \
             they commit with the new configuration (any acknowledged write among them is \
             kept; one whose client saw an error or a timeout may take effect)",
            last - uncommitted + 1
        );
    } else {
        let _ = writeln!(out, "  every entry held is known committed: all kept");
    }

    let term = hard.term.max(last_term) + 1;
    let new = Membership::new_voters([id]);
    let entry = Entry {
        index: last + 1,
        term,
        payload: EntryPayload::Membership(new.clone()),
    };
    log.append(std::slice::from_ref(&entry))
        .map_err(|e| format!("appending the new configuration: {e}"))?;
    log.set_hard_state(HardState {
        term,
        vote: Some(id),
        commit: hard.commit,
    })
    .map_err(|e| format!("writing the hard state: {e}"))?;
    log.sync().map_err(|e| format!("syncing the log: {e}"))?;
    drop(node);

    // Read it back as a restarting node will.
    let node = open_as_node(&log_dir, id).map_err(|e| format!("checking what was written: {e}"))?;
    let (now, at, now_term) = (
        node.membership(),
        node.storage().last_index(),
        node.storage().hard_state().term,
    );
    if at != entry.index || *now != new || now_term != term {
        return Err(format!(
            "the log does not read back as written: configuration {now:?}, last entry {at}, \
             term {now_term}"
        ));
    }
    let _ = writeln!(
        out,
        "  wrote: entry {} (term {term}): voters [{id}], no learners; hard state term \
         {term}, vote {id}; synced and read back",
        entry.index
    );
    let _ = writeln!(
        out,
        "next: start node {id} as before (raft-node run ...): it elects itself alone and \
         serves. Never restart the other old members with their data: wipe them, start them \
         with --join, then `raft-node admin add-learner ID` and `promote ID` once caught up."
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use raft_core::{Index, SnapshotMeta};

    fn entry(index: Index, term: u64, payload: EntryPayload) -> Entry {
        Entry {
            index,
            term,
            payload,
        }
    }

    /// A node of voters 1, 2, 3 and learner 4 with entries 1..=5 in term 3, commit 3.
    fn survivor(dir: &Path) {
        let mut log = Log::open(dir.join("log"), Options::default()).unwrap();
        let mut membership = Membership::new_voters([1, 2, 3]);
        membership.learners.insert(4);
        log.install_snapshot(SnapshotMeta {
            index: 0,
            term: 0,
            membership,
        })
        .unwrap();
        let entries: Vec<Entry> = (1..=5)
            .map(|i| entry(i, 3, EntryPayload::Command(Bytes::from(vec![i as u8]))))
            .collect();
        log.append(&entries).unwrap();
        log.set_hard_state(HardState {
            term: 4,
            vote: Some(1),
            commit: 3,
        })
        .unwrap();
        log.sync().unwrap();
    }

    #[test]
    fn keeps_every_entry_and_makes_the_node_the_only_voter() {
        let dir = tempfile::tempdir().unwrap();
        survivor(dir.path());
        let report = force_new_cluster(dir.path(), 2).unwrap();
        assert!(report.contains("entries 4..=5 (2) are past the stored commit index: kept"));
        assert!(
            report.contains("wrote: entry 6 (term 5): voters [2]"),
            "{report}"
        );
        let log = Log::open(dir.path().join("log"), Options::default()).unwrap();
        assert_eq!(log.last_index(), 6);
        let held = log.entries(1, 6, usize::MAX).unwrap();
        assert_eq!(held.len(), 5, "no entry was dropped");
        assert_eq!(
            log.hard_state(),
            HardState {
                term: 5,
                vote: Some(2),
                commit: 3
            }
        );
        assert_eq!(
            log.entries(6, 7, usize::MAX).unwrap()[0].payload,
            EntryPayload::Membership(Membership::new_voters([2]))
        );
        // A raft-core node on this log is the only voter and wins its own election.
        drop(log);
        let mut node = open_as_node(&dir.path().join("log"), 2).unwrap();
        assert_eq!(node.membership(), &Membership::new_voters([2]));
        for _ in 0..100 {
            node.tick();
            if node.role() == raft_core::Role::Leader {
                break;
            }
        }
        assert_eq!(node.role(), raft_core::Role::Leader);
    }

    #[test]
    fn a_learner_survivor_is_recovered_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        survivor(dir.path());
        let report = force_new_cluster(dir.path(), 4).unwrap();
        assert!(
            report.contains("WARNING: node 4 was a learner: it counted toward no majority"),
            "{report}"
        );
        assert!(report.contains("voters [4], no learners"), "{report}");
    }

    #[test]
    fn refuses_a_locked_directory_a_stranger_and_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let e = force_new_cluster(dir.path(), 1).unwrap_err();
        assert!(e.starts_with("no log in "), "{e}");
        survivor(dir.path());
        let e = force_new_cluster(dir.path(), 7).unwrap_err();
        assert!(e.contains("(voters {1, 2, 3}, learners {4})"), "{e}");
        assert!(
            e.contains("node 7 is not a member of the configuration stored in"),
            "{e}"
        );
        let held = DirLock::acquire(dir.path()).unwrap();
        let e = force_new_cluster(dir.path(), 2).unwrap_err();
        assert!(
            e.contains("is locked by another running node; stop that node"),
            "{e}"
        );
        drop(held);
        // Nothing was written by the refusals.
        let log = Log::open(dir.path().join("log"), Options::default()).unwrap();
        assert_eq!(log.last_index(), 5);
    }
}
