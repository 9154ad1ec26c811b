//! Write errors reach the caller and leave the log usable once the cause is gone: injected
//! faults, and a real full file system (a tiny tmpfs, when the test may mount one).

mod common;

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{all_entries, entry};
use raft_core::{Entry, LogStore, SnapshotMeta};
use raft_log::{FaultPoint, Log, LogError, Options};

fn options_with(point: FaultPoint, armed: Arc<AtomicBool>) -> Options {
    Options {
        segment_bytes: 4096,
        fault_hook: Some(Arc::new(move |p| {
            if p == point && armed.load(Ordering::SeqCst) {
                Err(io::Error::from_raw_os_error(libc_enospc()))
            } else {
                Ok(())
            }
        })),
        ..Options::default()
    }
}

fn libc_enospc() -> i32 {
    28
}

fn is_enospc(e: &LogError) -> bool {
    matches!(e, LogError::Io { source, .. } if source.raw_os_error() == Some(libc_enospc()))
}

#[test]
fn a_failed_segment_allocation_is_an_error_and_the_log_recovers() {
    let dir = common::test_dir();
    let full = Arc::new(AtomicBool::new(false));
    let mut log = Log::open(dir.path(), options_with(FaultPoint::Allocate, full.clone())).unwrap();
    let entries: Vec<Entry> = (1..=200).map(|i| entry(i, 1, 100)).collect();
    log.append(&entries[..10]).unwrap();
    full.store(true, Ordering::SeqCst);
    let err = log.append(&entries[10..]).unwrap_err();
    assert!(is_enospc(&err), "{err}");
    let reached = log.last_index();
    assert!(reached < 200);
    assert_eq!(
        all_entries(&log),
        entries[..reached as usize],
        "a prefix went in"
    );
    log.sync().unwrap();
    full.store(false, Ordering::SeqCst);
    log.append(&entries[reached as usize..]).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = Log::open(dir.path(), Options::default()).unwrap();
    assert_eq!(all_entries(&log), entries);
}

#[test]
fn a_failed_write_is_an_error_and_the_log_recovers() {
    let dir = common::test_dir();
    let failing = Arc::new(AtomicBool::new(false));
    let mut log = Log::open(dir.path(), options_with(FaultPoint::Write, failing.clone())).unwrap();
    log.append(&[entry(1, 1, 10), entry(2, 1, 10)]).unwrap();
    failing.store(true, Ordering::SeqCst);
    assert!(is_enospc(&log.append(&[entry(3, 1, 10)]).unwrap_err()));
    assert!(is_enospc(
        &log.set_hard_state(raft_core::HardState {
            term: 1,
            vote: Some(1),
            commit: 0
        })
        .unwrap_err()
    ));
    assert_eq!(log.last_index(), 2);
    assert_eq!(
        log.hard_state(),
        Default::default(),
        "a failed write leaves the old hard state"
    );
    failing.store(false, Ordering::SeqCst);
    log.append(&[entry(3, 1, 10)]).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = Log::open(dir.path(), Options::default()).unwrap();
    assert_eq!(
        all_entries(&log),
        vec![entry(1, 1, 10), entry(2, 1, 10), entry(3, 1, 10)]
    );
}

#[test]
fn a_failed_sync_poisons_the_log_until_reopened() {
    let dir = common::test_dir();
    let failing = Arc::new(AtomicBool::new(false));
    let mut log = Log::open(dir.path(), options_with(FaultPoint::Sync, failing.clone())).unwrap();
    log.append(&[entry(1, 1, 10)]).unwrap();
    failing.store(true, Ordering::SeqCst);
    assert!(is_enospc(&log.sync().unwrap_err()));
    failing.store(false, Ordering::SeqCst);
    assert!(matches!(log.sync(), Err(LogError::Poisoned)));
    assert!(matches!(
        log.append(&[entry(2, 1, 10)]),
        Err(LogError::Poisoned)
    ));
    drop(log);
    let mut log = Log::open(dir.path(), Options::default()).unwrap();
    assert!(log.last_index() <= 1);
    log.append(&[entry(log.last_index() + 1, 1, 10)]).unwrap();
    log.sync().unwrap();
}

/// A tmpfs mounted for the test and unmounted when dropped, even on failure.
struct Tmpfs {
    path: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().ok()?;
        let path = parent.path().join("mnt");
        std::fs::create_dir(&path).ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Tmpfs {
            path,
            _parent: parent,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn a_full_file_system_is_an_error_and_the_log_recovers_when_space_returns() {
    let Some(fs) = Tmpfs::mount("512k") else {
        eprintln!("skipping: cannot mount a tmpfs here (needs root)");
        return;
    };
    let dir = fs.path().join("log");
    let options = Options {
        segment_bytes: 64 << 10,
        ..Options::default()
    };
    let mut log = Log::open(&dir, options.clone()).unwrap();
    let mut next = 1;
    let err = loop {
        let batch: Vec<Entry> = (next..next + 16).map(|i| entry(i, 1, 500)).collect();
        match log.append(&batch) {
            Ok(()) => next += 16,
            Err(e) => break e,
        }
        log.sync().unwrap();
        assert!(next < 100_000, "a 512 KiB file system never filled up");
    };
    assert!(is_enospc(&err), "{err}");
    let last = log.last_index();
    log.sync().unwrap();
    // Space returns: a snapshot lets the log drop its older segments.
    let index = last - 10;
    let meta = SnapshotMeta {
        index,
        term: log.term(index).unwrap(),
        membership: Default::default(),
    };
    log.compact(meta).unwrap();
    // Compaction does not sync; its files are freed once it is durable.
    assert!(log.retiring_count() > 0, "nothing freed before the sync");
    log.sync().unwrap();
    assert_eq!(log.retiring_count(), 0);
    let batch: Vec<Entry> = (last + 1..last + 200).map(|i| entry(i, 1, 500)).collect();
    log.append(&batch).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = Log::open(&dir, options).unwrap();
    assert_eq!(log.last_index(), last + 199);
    assert_eq!(all_entries(&log).last(), batch.last());
}

#[test]
fn a_commit_only_hard_state_change_costs_no_extra_fdatasync() {
    let dir = common::test_dir();
    let syncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = syncs.clone();
    let options = Options {
        fault_hook: Some(Arc::new(move |p| {
            if p == FaultPoint::Sync {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        })),
        ..Options::default()
    };
    let mut log = Log::open(dir.path(), options).unwrap();
    log.append(&[entry(1, 1, 10)]).unwrap();
    log.sync().unwrap();
    let hs = |term, vote, commit| raft_core::HardState { term, vote, commit };
    log.set_hard_state(hs(1, Some(1), 0)).unwrap();
    log.append(&[entry(2, 1, 10)]).unwrap();
    let before = syncs.load(Ordering::SeqCst);
    log.sync().unwrap();
    assert_eq!(
        syncs.load(Ordering::SeqCst) - before,
        2,
        "a vote is forced: segment and state file"
    );
    for commit in 1..=2 {
        log.set_hard_state(hs(1, Some(1), commit)).unwrap();
        log.append(&[entry(2 + commit, 1, 10)]).unwrap();
        let before = syncs.load(Ordering::SeqCst);
        log.sync().unwrap();
        assert_eq!(
            syncs.load(Ordering::SeqCst) - before,
            1,
            "a commit-only change rides along unforced"
        );
    }
    drop(log);
    let log = Log::open(dir.path(), Options::default()).unwrap();
    assert_eq!(
        log.hard_state(),
        hs(1, Some(1), 2),
        "a clean close keeps the unforced commit"
    );
}
