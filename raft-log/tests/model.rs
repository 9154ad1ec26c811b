//! Property test: the on-disk log behaves like raft-core's `MemLog` under random appends,
//! syncs, truncations, compactions, snapshot installs, hard-state updates and reopenings.

mod common;

use common::{all_entries, entry};
use proptest::prelude::*;
use raft_core::{Entry, HardState, LogStore, MemLog, SnapshotMeta};
use raft_log::{Log, Options};

#[derive(Clone, Debug)]
enum Op {
    /// Append `count` entries starting `back` entries before the end, `bump` terms above
    /// the term of the entry before them.
    Append {
        back: u64,
        count: u64,
        bump: u64,
    },
    Sync,
    Truncate {
        back: u64,
    },
    /// Compact to the entry `back` before the end.
    Compact {
        back: u64,
    },
    Install {
        ahead: u64,
        bump: u64,
    },
    HardState {
        term: u64,
        vote: Option<u64>,
        commit: u64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4u64, 1..12u64, 0..2u64).prop_map(|(back, count, bump)| Op::Append { back, count, bump }),
        2 => Just(Op::Sync),
        1 => (0..10u64).prop_map(|back| Op::Truncate { back }),
        1 => (0..20u64).prop_map(|back| Op::Compact { back }),
        1 => (0..5u64, 0..2u64).prop_map(|(ahead, bump)| Op::Install { ahead, bump }),
        1 => (0..10u64, proptest::option::of(1..4u64), 0..50u64)
            .prop_map(|(term, vote, commit)| Op::HardState { term, vote, commit }),
        2 => Just(Op::Reopen),
    ]
}

fn check(log: &Log, model: &MemLog) {
    assert_eq!(log.first_index(), model.first_index());
    assert_eq!(log.last_index(), model.last_index());
    assert_eq!(log.snapshot_meta(), model.snapshot_meta());
    assert_eq!(log.hard_state(), model.hard_state());
    let snapshot = model.snapshot_meta();
    assert_eq!(log.term(snapshot.index), Ok(snapshot.term));
    for index in model.first_index()..=model.last_index() {
        assert_eq!(log.term(index), model.term(index), "term at {index}");
    }
    let got = all_entries(log);
    assert_eq!(got.len(), model.all_entries().len(), "entry count");
    for (g, m) in got.iter().zip(model.all_entries()) {
        assert!(
            g == m,
            "entry {} differs: {} vs {}",
            m.index,
            summary(g),
            summary(m)
        );
    }
    if model.last_index() >= model.first_index() {
        // The byte limit stops early exactly as the model does.
        let (low, high) = (model.first_index(), model.last_index() + 1);
        let got = log.entries(low, high, 500).unwrap();
        assert_eq!(
            got.len(),
            model.entries(low, high, 500).unwrap().len(),
            "limited read"
        );
    }
}

/// Payload size as a function of index and term, so equal (index, term) means equal entries;
/// one in eight is larger than a segment and gets a segment of its own.
fn len_of(index: u64, term: u64) -> usize {
    let h = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ term.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    if h % 8 == 0 {
        9000 + (h % 3000) as usize
    } else {
        (h % 400) as usize
    }
}

fn summary(e: &Entry) -> String {
    let payload = match &e.payload {
        raft_core::EntryPayload::Noop => "noop".to_owned(),
        raft_core::EntryPayload::Command(b) => format!("command of {} bytes", b.len()),
        raft_core::EntryPayload::Membership(m) => format!("{m:?}"),
    };
    format!("index {} term {} {payload}", e.index, e.term)
}

fn options() -> Options {
    Options {
        segment_bytes: 8192,
        ..Options::default()
    }
}

fn run(ops: Vec<Op>) {
    let dir = common::test_dir();
    let mut log = Log::open(dir.path(), options()).unwrap();
    let mut model = MemLog::new();
    for op in ops {
        match op {
            Op::Append { back, count, bump } => {
                let start = (model.last_index() + 1)
                    .saturating_sub(back)
                    .max(model.first_index());
                let term = model.term(start - 1).unwrap() + bump;
                let entries: Vec<Entry> = (start..start + count)
                    .map(|i| entry(i, term, len_of(i, term)))
                    .collect();
                log.append(&entries).unwrap();
                model.append(&entries);
            }
            Op::Sync => log.sync().unwrap(),
            Op::Truncate { back } => {
                let index = model
                    .last_index()
                    .saturating_sub(back)
                    .max(model.first_index());
                log.truncate_suffix(index).unwrap();
                model.truncate_suffix(index);
            }
            Op::Compact { back } => {
                let index = model.last_index().saturating_sub(back);
                if index >= model.first_index() {
                    let meta = SnapshotMeta {
                        index,
                        term: model.term(index).unwrap(),
                        membership: raft_core::Membership::new_voters([1, index % 3 + 2]),
                    };
                    log.compact(meta.clone()).unwrap();
                    model.compact(meta);
                }
            }
            Op::Install { ahead, bump } => {
                let index = model.last_index() + ahead;
                let term = model.term(model.last_index()).unwrap() + bump;
                let meta = SnapshotMeta {
                    index,
                    term,
                    membership: raft_core::Membership::new_voters([1, 2, 3]),
                };
                log.install_snapshot(meta.clone()).unwrap();
                model.install_snapshot(meta);
            }
            Op::HardState { term, vote, commit } => {
                let hs = HardState { term, vote, commit };
                log.set_hard_state(hs).unwrap();
                model.set_hard_state(hs);
            }
            Op::Reopen => {
                // A clean close keeps even unsynced writes (they are in the page cache).
                drop(log);
                log = Log::open(dir.path(), options()).unwrap();
            }
        }
        check(&log, &model);
    }
    drop(log);
    let log = Log::open(dir.path(), options()).unwrap();
    check(&log, &model);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn log_matches_memlog(ops in proptest::collection::vec(op(), 1..50)) {
        run(ops);
    }
}
