//! The snapshot directory: streaming writer, verifying reader, retention and recovery.
//!
//! # Files
//!
//! The store owns the files in its directory whose names match exactly
//! `snap-<index:020>-<term:020>.snap` plus one of the suffixes below; it never touches any
//! other file (those are reported by [`SnapshotStore::open`] and left alone).
//!
//! - `.snap`: a complete snapshot, renamed into place only after it was fsynced.
//! - `.snap.tmp`: a snapshot being written. A crash leaves it behind; it can never be
//!   loaded (only `.snap` files are), and [`SnapshotStore::open`] deletes it.
//! - `.snap.recv`: a snapshot being received. Kept across restarts so that an install can
//!   resume; at most one, and only if newer than the newest `.snap`.
//! - `.snap.corrupt`: a `.snap` that failed validation, quarantined for inspection rather
//!   than deleted; at most `corrupt_kept_max` of them.
//!
//! # Durability
//!
//! Write to `.tmp`, fsync the file, rename to `.snap`, fsync the directory, and only then
//! delete snapshots beyond `snapshots_kept_max`: at every instant the directory holds the
//! previous complete snapshot or the new one (or both).
//!
//! One `SnapshotStore` per directory per process, and one process per directory: the node
//! holds the data directory's lock. Two stores writing the same directory would delete each
//! other's temporary files.//!
//! The writer (`writer.rs`: [`SnapshotStore::begin`], [`SnapshotWriter`]) and the reader
//! (`reader.rs`: [`SnapshotReader`], [`restore_state_machine`]) are in their own files;
//! this one names the files and keeps the directory (open, list, newest valid, retention,
//! quarantine).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use raft_core::{Index, Term};

use crate::error::{CorruptKind, SnapshotError};
use crate::format::{SnapshotHeader, BODY_BYTES_MAX, CHUNK_BYTES_MAX};

mod reader;
mod writer;

pub use reader::{restore_state_machine, SnapshotReader};
pub use writer::SnapshotWriter;

const NAME_PREFIX: &str = "snap-";
const SUFFIX_FINAL: &str = ".snap";
const SUFFIX_TEMP: &str = ".snap.tmp";
const SUFFIX_RECEIVING: &str = ".snap.recv";
const SUFFIX_CORRUPT: &str = ".snap.corrupt";

/// The kinds of file the store owns, by suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    Final,
    Temp,
    Receiving,
    Corrupt,
}

impl FileKind {
    fn suffix(self) -> &'static str {
        match self {
            FileKind::Final => SUFFIX_FINAL,
            FileKind::Temp => SUFFIX_TEMP,
            FileKind::Receiving => SUFFIX_RECEIVING,
            FileKind::Corrupt => SUFFIX_CORRUPT,
        }
    }
}

pub(crate) fn file_name(index: Index, term: Term, kind: FileKind) -> String {
    format!("{NAME_PREFIX}{index:020}-{term:020}{}", kind.suffix())
}

/// Parses one of our file names; `None` for anything else, however similar.
pub(crate) fn parse_file_name(name: &str) -> Option<(Index, Term, FileKind)> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    if rest.len() < 41 || !rest.is_char_boundary(41) {
        return None;
    }
    let (numbers, suffix) = rest.split_at(41);
    let kind = [
        FileKind::Final,
        FileKind::Temp,
        FileKind::Receiving,
        FileKind::Corrupt,
    ]
    .into_iter()
    .find(|k| k.suffix() == suffix)?;
    let (index, term) = (numbers.get(..20)?, numbers.get(21..)?);
    if numbers.as_bytes()[20] != b'-'
        || !index.bytes().all(|b| b.is_ascii_digit())
        || !term.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let (index, term) = (index.parse().ok()?, term.parse().ok()?);
    // Reject spellings we would not produce (e.g. overflowing values), so that the name
    // round-trips and two names never denote the same snapshot.
    (file_name(index, term, kind) == name).then_some((index, term, kind))
}

/// How a [`SnapshotStore`] behaves. Every field is a bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotStoreConfig {
    /// Complete snapshots kept; older ones are deleted after a new one is durable. At least 1;
    /// 2 or more lets a node fall back when the newest turns out corrupt.
    pub snapshots_kept_max: usize,
    /// Payload bytes per body chunk, at most [`CHUNK_BYTES_MAX`]: the reader and writer
    /// each hold one chunk in memory.
    pub chunk_bytes: u32,
    /// Largest body the store writes or accepts from a peer, at most [`BODY_BYTES_MAX`].
    pub body_bytes_max: u64,
    /// Quarantined corrupt snapshots kept for inspection; older ones are deleted.
    pub corrupt_kept_max: usize,
}

impl Default for SnapshotStoreConfig {
    fn default() -> Self {
        SnapshotStoreConfig {
            snapshots_kept_max: 3,
            chunk_bytes: 1 << 20,
            body_bytes_max: 64 << 30,
            corrupt_kept_max: 2,
        }
    }
}

impl SnapshotStoreConfig {
    /// Checks every field against its bound.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        if self.snapshots_kept_max == 0 {
            return Err(SnapshotError::Config(
                "snapshots_kept_max must be at least 1",
            ));
        }
        if self.chunk_bytes == 0 || self.chunk_bytes > CHUNK_BYTES_MAX {
            return Err(SnapshotError::Config(
                "chunk_bytes must be in 1..=CHUNK_BYTES_MAX",
            ));
        }
        if self.body_bytes_max > BODY_BYTES_MAX {
            return Err(SnapshotError::Config(
                "body_bytes_max must be at most BODY_BYTES_MAX",
            ));
        }
        Ok(())
    }
}

/// A complete snapshot file in the store (not necessarily validated yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    /// Last included index, from the file name.
    pub index: Index,
    /// Term of `index`, from the file name.
    pub term: Term,
    /// Where the file is.
    pub path: PathBuf,
}

/// What [`SnapshotStore::open`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Temporary files of interrupted writes (or stale receives), deleted.
    pub temp_files_removed: Vec<PathBuf>,
    /// Files that are not ours: logged at `warn` and left untouched.
    pub unknown_files: Vec<PathBuf>,
    /// A partial receive kept for resuming: `(index, term)`.
    pub partial_receive: Option<(Index, Term)>,
}

/// The outcome of [`SnapshotStore::open_latest`].
#[derive(Debug)]
pub struct OpenLatest {
    /// A reader over the newest snapshot that validated completely, positioned at its body.
    pub snapshot: Option<SnapshotReader>,
    /// Newer snapshots that were skipped, and why. Corrupt ones were quarantined.
    pub rejected: Vec<SnapshotError>,
}

/// A directory of snapshot files. Cheap to clone: it is a path and a configuration.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    config: SnapshotStoreConfig,
}

impl SnapshotStore {
    /// Opens (creating if needed) the store at `dir`: deletes our temporary files left by a
    /// crash, keeps at most one resumable partial receive, applies retention, and reports
    /// unknown files (which it leaves alone).
    pub fn open(
        dir: impl Into<PathBuf>,
        config: SnapshotStoreConfig,
    ) -> Result<(SnapshotStore, OpenReport), SnapshotError> {
        config.validate()?;
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| SnapshotError::io(&dir, e))?;
        let store = SnapshotStore { dir, config };
        let mut report = OpenReport::default();

        let scan = store.scan()?;
        for path in &scan.unknown {
            tracing::warn!(path = %path.display(), "unknown file in snapshot directory, left alone");
        }
        report.unknown_files = scan.unknown;
        for (_, _, path) in &scan.temp {
            store.remove(path)?;
            tracing::info!(path = %path.display(), "removed temporary file of an interrupted snapshot write");
            report.temp_files_removed.push(path.clone());
        }
        let newest_final = scan.finals.last().map(|f| (f.index, f.term));
        let mut receiving = scan.receiving;
        receiving.sort();
        let keep = receiving
            .last()
            .filter(|(i, t, _)| newest_final.is_none_or(|nf| (*i, *t) > nf))
            .map(|(i, t, _)| (*i, *t));
        for (index, term, path) in &receiving {
            if Some((*index, *term)) != keep {
                store.remove(path)?;
                report.temp_files_removed.push(path.clone());
            }
        }
        report.partial_receive = keep;
        // A crash between a rename and its pruning leaves one snapshot too many.
        store.prune()?;
        store.prune_corrupt()?;
        if !report.temp_files_removed.is_empty() {
            store.sync_dir()?;
        }
        Ok((store, report))
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The store's configuration.
    pub fn config(&self) -> &SnapshotStoreConfig {
        &self.config
    }

    /// Bytes free for an unprivileged writer on the store's filesystem: what a snapshot
    /// received from a peer may take at most.
    pub fn available_bytes(&self) -> Result<u64, SnapshotError> {
        let st = rustix::fs::statvfs(&self.dir)
            .map_err(|e| SnapshotError::io(&self.dir, io::Error::from(e)))?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Complete snapshot files, oldest first (by index, then term). Not validated.
    pub fn list(&self) -> Result<Vec<SnapshotFile>, SnapshotError> {
        Ok(self.scan()?.finals)
    }

    /// The newest snapshot that validates completely (header CRC, every chunk's CRC, body
    /// digest and length, name matching header). Newer files that fail are skipped and
    /// reported; those proven corrupt are renamed to `.snap.corrupt` so that they are never
    /// considered again, and an error naming the path and offset is logged. Files that
    /// could not be read (IO errors) are skipped but left in place.
    ///
    /// The caller must still check that the snapshot meets its log: an older fallback may
    /// end before the log's first retained index, in which case the node needs a snapshot
    /// from the leader.
    pub fn open_latest(&self) -> Result<OpenLatest, SnapshotError> {
        let mut rejected = Vec::new();
        for file in self.list()?.into_iter().rev() {
            match validate_file(&file) {
                Ok(_) => {
                    return Ok(OpenLatest {
                        snapshot: Some(SnapshotReader::open(&file.path)?),
                        rejected,
                    })
                }
                Err(err) => {
                    tracing::error!(error = %err, "skipping invalid snapshot; falling back to an older one");
                    if err.is_corrupt() {
                        if let Err(q) = self.quarantine(&file) {
                            // Still never loaded: it fails validation every time.
                            tracing::warn!(error = %q, "could not quarantine corrupt snapshot");
                        }
                    }
                    rejected.push(err);
                }
            }
        }
        Ok(OpenLatest {
            snapshot: None,
            rejected,
        })
    }

    pub(crate) fn path_of(&self, index: Index, term: Term, kind: FileKind) -> PathBuf {
        self.dir.join(file_name(index, term, kind))
    }

    fn quarantine(&self, file: &SnapshotFile) -> Result<(), SnapshotError> {
        let to = self.path_of(file.index, file.term, FileKind::Corrupt);
        fs::rename(&file.path, &to).map_err(|e| SnapshotError::io(&file.path, e))?;
        self.sync_dir()?;
        tracing::warn!(from = %file.path.display(), to = %to.display(), "quarantined corrupt snapshot");
        self.prune_corrupt()
    }

    fn prune_corrupt(&self) -> Result<(), SnapshotError> {
        let mut corrupt = self.scan()?.corrupt;
        corrupt.sort();
        let excess = corrupt.len().saturating_sub(self.config.corrupt_kept_max);
        for (_, _, path) in corrupt.iter().take(excess) {
            self.remove(path)?;
        }
        Ok(())
    }

    /// Deletes complete snapshots beyond `snapshots_kept_max`, oldest first.
    pub(crate) fn prune(&self) -> Result<(), SnapshotError> {
        let finals = self.list()?;
        let excess = finals.len().saturating_sub(self.config.snapshots_kept_max);
        for file in finals.iter().take(excess) {
            self.remove(&file.path)?;
            tracing::debug!(path = %file.path.display(), "deleted snapshot beyond retention");
        }
        // Not fsyncing the directory here is deliberate: a deletion lost in a crash brings
        // back an older complete snapshot, which is harmless and pruned next time.
        Ok(())
    }

    fn remove(&self, path: &Path) -> Result<(), SnapshotError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SnapshotError::io(path, e)),
        }
    }

    pub(crate) fn sync_dir(&self) -> Result<(), SnapshotError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| SnapshotError::io(&self.dir, e))
    }

    /// Makes a file durable under its final name: rename, fsync the directory, prune.
    pub(crate) fn install(
        &self,
        from: &Path,
        index: Index,
        term: Term,
    ) -> Result<SnapshotFile, SnapshotError> {
        let path = self.path_of(index, term, FileKind::Final);
        fs::rename(from, &path).map_err(|e| SnapshotError::io(from, e))?;
        self.sync_dir()?;
        self.prune()?;
        Ok(SnapshotFile { index, term, path })
    }

    fn scan(&self) -> Result<Scan, SnapshotError> {
        let mut scan = Scan::default();
        let entries = fs::read_dir(&self.dir).map_err(|e| SnapshotError::io(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| SnapshotError::io(&self.dir, e))?;
            let path = entry.path();
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            let parsed = entry.file_name().to_str().and_then(parse_file_name);
            match parsed {
                Some((index, term, kind)) if is_file => match kind {
                    FileKind::Final => scan.finals.push(SnapshotFile { index, term, path }),
                    FileKind::Temp => scan.temp.push((index, term, path)),
                    FileKind::Receiving => scan.receiving.push((index, term, path)),
                    FileKind::Corrupt => scan.corrupt.push((index, term, path)),
                },
                _ => scan.unknown.push(path),
            }
        }
        scan.finals.sort_by_key(|f| (f.index, f.term));
        scan.unknown.sort();
        Ok(scan)
    }
}

#[derive(Default)]
struct Scan {
    finals: Vec<SnapshotFile>,
    temp: Vec<(Index, Term, PathBuf)>,
    receiving: Vec<(Index, Term, PathBuf)>,
    corrupt: Vec<(Index, Term, PathBuf)>,
    unknown: Vec<PathBuf>,
}

/// Reads a whole file through a [`SnapshotReader`], checking everything, and that the name
/// agrees with the header.
pub(crate) fn validate_file(file: &SnapshotFile) -> Result<SnapshotHeader, SnapshotError> {
    let mut reader = SnapshotReader::open(&file.path)?;
    let meta = &reader.header().meta;
    if (meta.index, meta.term) != (file.index, file.term) {
        return Err(SnapshotError::corrupt(
            &file.path,
            0,
            CorruptKind::NameMismatch {
                index: meta.index,
                term: meta.term,
            },
        ));
    }
    reader.verify_to_end()?;
    Ok(reader.header().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_near_misses_are_not_ours() {
        for kind in [
            FileKind::Final,
            FileKind::Temp,
            FileKind::Receiving,
            FileKind::Corrupt,
        ] {
            let name = file_name(12, u64::MAX, kind);
            assert_eq!(parse_file_name(&name), Some((12, u64::MAX, kind)));
        }
        for name in [
            "snap-1-2.snap",
            "snap-00000000000000000012-00000000000000000003.snapx",
            "snap-00000000000000000012-00000000000000000003.snap.bak",
            "snap-0000000000000000001a-00000000000000000003.snap",
            "snap-99999999999999999999-00000000000000000003.snap",
            "snap-00000000000000000012_00000000000000000003.snap",
            "notes.txt",
            "snap-",
            "snap-0000000000000000001é-00000000000000000003.snap",
        ] {
            assert_eq!(parse_file_name(name), None, "{name}");
        }
    }
}
