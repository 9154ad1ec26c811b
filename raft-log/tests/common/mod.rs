//! Helpers shared by the integration tests: the single-group log's here, the multi-group
//! log's in [`multi`], the crash tests' child processes in [`child`].
#![allow(dead_code)]

pub mod child;
pub mod multi;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, Index, LogStore, Membership, Term};
use raft_log::{Log, Options};

/// A deterministic entry: the same (index, term, len) always gives the same bytes, so a
/// rewrite with the same index and term is the same entry (Raft's log matching property).
pub fn entry(index: Index, term: Term, len: usize) -> Entry {
    let payload = match (index + term) % 7 {
        0 => EntryPayload::Noop,
        1 => EntryPayload::Membership(Membership::new_voters([1, 2, index % 5 + 3])),
        _ => EntryPayload::Command(Bytes::from(
            (0..len)
                .map(|i| (index as usize * 31 + term as usize * 7 + i) as u8)
                .collect::<Vec<u8>>(),
        )),
    };
    Entry {
        index,
        term,
        payload,
    }
}

pub fn small_options() -> Options {
    Options {
        segment_bytes: 4096,
        ..Options::default()
    }
}

/// A fresh directory for a test log: on `/dev/shm` (tmpfs) where there is one, because
/// the recovery tests open logs thousands of times and every open flushes the disk; the
/// logic under test does not depend on the file system. The crash and benchmark code use
/// the real disk.
pub fn test_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Every entry the log holds.
pub fn all_entries(log: &Log) -> Vec<Entry> {
    if log.last_index() < log.first_index() {
        return Vec::new();
    }
    log.entries(log.first_index(), log.last_index() + 1, usize::MAX)
        .expect("read back")
}

/// Segment files in `dir`, sorted by name (so by first index).
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    files_with_extension(dir, "seg")
}

/// Files in `dir` whose name ends in `.{extension}`, sorted by name.
pub fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

/// The first log index a segment file holds, from its name.
pub fn segment_first_index(path: &Path) -> u64 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a segment file name: {}", path.display()))
}

/// A small deterministic generator (xorshift64*), so failures replay from the printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
