//! Helpers of the multi-group log tests: small options, an in-memory model of every group
//! (raft-core's `MemLog`), comparison, and copies of a log directory to damage. The test
//! directory and generator are the shared ones, re-exported so that one glob import serves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

// Used by the tests that glob-import this module, not by every test binary that holds it.
#[allow(unused_imports)]
pub use super::{test_dir, Rng};

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, Index, LogStore, MemLog, Membership, Term};
use raft_log::multi::GroupId;
use raft_log::{MultiLog, MultiOptions};

/// Small segments (a few frames each) so that tests roll and free segments often; no
/// group is ever moved forward, so a group's old entries pin their segments.
pub fn small_options() -> MultiOptions {
    MultiOptions {
        segment_bytes: 32 << 10,
        frame_bytes_max: 8 << 10,
        entry_bytes_max: 2 << 10,
        groups_max: 8,
        segments_held_max: usize::MAX,
        rewrite_entries_max: 0,
    }
}

/// [`small_options`] that move groups pinning the oldest segment forward once more than 3
/// segments are held, a few hundred entries per sync.
pub fn rewrite_options() -> MultiOptions {
    MultiOptions {
        segments_held_max: 3,
        rewrite_entries_max: 300,
        ..small_options()
    }
}

/// A deterministic entry of `group`: the same (group, index, term, len) gives the same bytes.
pub fn entry(group: GroupId, index: Index, term: Term, len: usize) -> Entry {
    let payload = match (group + index + term) % 7 {
        0 => EntryPayload::Noop,
        1 => EntryPayload::Membership(Membership::new_voters([1, 2, group % 5 + 3])),
        _ => EntryPayload::Command(Bytes::from(
            (0..len)
                .map(|i| (group as usize * 131 + index as usize * 31 + term as usize * 7 + i) as u8)
                .collect::<Vec<u8>>(),
        )),
    };
    Entry {
        index,
        term,
        payload,
    }
}

/// Every group's log as the test expects it.
pub type Model = BTreeMap<GroupId, MemLog>;

/// Asserts that `log` holds exactly the groups of `model`, each with the same hard state,
/// snapshot, bounds, terms and entries.
pub fn assert_matches(log: &MultiLog, model: &Model, context: &str) {
    let ids: Vec<GroupId> = log.group_ids().collect();
    let want: Vec<GroupId> = model.keys().copied().collect();
    assert_eq!(ids, want, "{context}: groups");
    for (&id, mem) in model {
        let g = log.group(id).unwrap();
        assert_eq!(
            g.hard_state(),
            mem.hard_state(),
            "{context}: group {id} hard state"
        );
        assert_eq!(
            g.snapshot_meta(),
            mem.snapshot_meta(),
            "{context}: group {id} snapshot"
        );
        assert_eq!(
            g.first_index(),
            mem.first_index(),
            "{context}: group {id} first"
        );
        assert_eq!(
            g.last_index(),
            mem.last_index(),
            "{context}: group {id} last"
        );
        let (first, last) = (mem.first_index(), mem.last_index());
        assert_eq!(
            g.term(first - 1),
            mem.term(first - 1),
            "{context}: group {id} snapshot term"
        );
        if last >= first {
            let got = g.entries(first, last + 1, usize::MAX).unwrap();
            assert!(
                got == mem.all_entries(),
                "{context}: group {id} entries differ"
            );
            for index in first..=last {
                assert_eq!(
                    g.term(index),
                    mem.term(index),
                    "{context}: group {id} term {index}"
                );
            }
        }
    }
}

/// Segment files of a log directory, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    super::files_with_extension(dir, "wal")
}

/// Copies the segment files of `from` into the empty directory `to`.
pub fn copy_segments(from: &Path, to: &Path) {
    for f in segment_files(from) {
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}
