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
//! other's temporary files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use raft_core::{Index, SnapshotMeta, Term};

use crate::digest::{DigestHasher, StateDigest};
use crate::error::{CorruptKind, SnapshotError};
use crate::format::{
    check_membership_bounds, chunk_frame, header_bytes_for, header_bytes_from_prefix,
    parse_chunk_frame, SnapshotHeader, BODY_BYTES_MAX, CHUNK_BYTES_MAX, CHUNK_FRAME_BYTES,
    HEADER_PREFIX_BYTES,
};
use crate::state_machine::{RestoreError, SnapshotSource, StateMachine};

const NAME_PREFIX: &str = "snap-";
const SUFFIX_FINAL: &str = ".snap";
const SUFFIX_TEMP: &str = ".snap.tmp";
const SUFFIX_RECEIVING: &str = ".snap.recv";
const SUFFIX_CORRUPT: &str = ".snap.corrupt";
const READ_BUFFER_BYTES: usize = 64 << 10;
/// Coalesces chunk frames and small chunks into fewer writes; payloads at least this large
/// bypass the buffer.
const WRITE_BUFFER_BYTES: usize = 64 << 10;

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

    /// Starts writing a snapshot of the state at `meta.index`. Stream the body into the
    /// returned writer, then [`SnapshotWriter::finish`] it; dropping it unfinished deletes
    /// the temporary file.
    pub fn begin(&self, meta: SnapshotMeta) -> Result<SnapshotWriter, SnapshotError> {
        check_membership_bounds(&meta.membership)?;
        let temp_path = self.path_of(meta.index, meta.term, FileKind::Temp);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp_path)
            .map_err(|e| SnapshotError::io(&temp_path, e))?;
        // The header is written last, once the digests and length are known; reserve it.
        let header_bytes = header_bytes_for(&meta.membership);
        file.write_all(&vec![0u8; header_bytes])
            .map_err(|e| SnapshotError::io(&temp_path, e))?;
        Ok(SnapshotWriter {
            store: self.clone(),
            file: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            temp_path,
            meta,
            chunk_bytes: self.config.chunk_bytes as usize,
            pending: Vec::with_capacity(self.config.chunk_bytes as usize),
            body_bytes: 0,
            hasher: DigestHasher::new(),
        })
    }

    /// Writes `source` (typically a [`StateMachine::freeze`]-d copy) as the snapshot at
    /// `meta`, with `source.digest()` as the state digest.
    pub fn write_snapshot(
        &self,
        meta: SnapshotMeta,
        source: &dyn SnapshotSource,
    ) -> Result<SnapshotFile, SnapshotError> {
        let mut writer = self.begin(meta)?;
        if let Err(e) = source.snapshot(&mut writer) {
            let path = writer.temp_path.clone();
            return Err(match SnapshotError::from_io(&path, e) {
                SnapshotError::Io { path, source } => SnapshotError::Source { path, source },
                other => other,
            });
        }
        writer.finish(source.digest())
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

/// Streams a snapshot body to a temporary file in chunks of `chunk_bytes`, holding at most
/// one chunk in memory. Obtain one from [`SnapshotStore::begin`].
#[derive(Debug)]
pub struct SnapshotWriter {
    store: SnapshotStore,
    /// `None` once finished, so `Drop` knows not to delete the installed file.
    file: Option<BufWriter<File>>,
    temp_path: PathBuf,
    meta: SnapshotMeta,
    chunk_bytes: usize,
    pending: Vec<u8>,
    body_bytes: u64,
    hasher: DigestHasher,
}

impl SnapshotWriter {
    /// Body bytes accepted so far.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes + self.pending.len() as u64
    }

    fn emit(&mut self, payload: &[u8]) -> io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("writer finished"))?;
        self.hasher.update(payload);
        file.write_all(&chunk_frame(payload))?;
        file.write_all(payload)?;
        self.body_bytes += payload.len() as u64;
        Ok(())
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let result = self.emit(&pending);
        self.pending = pending;
        self.pending.clear();
        result
    }

    /// Completes the snapshot: writes the header with `state_digest` (the state machine's
    /// [`SnapshotSource::digest`] of the state written), fsyncs, renames into place,
    /// fsyncs the directory and deletes snapshots beyond retention.
    pub fn finish(mut self, state_digest: StateDigest) -> Result<SnapshotFile, SnapshotError> {
        let path = self.temp_path.clone();
        self.flush_pending()
            .map_err(|e| SnapshotError::io(&path, e))?;
        let header = SnapshotHeader {
            meta: self.meta.clone(),
            state_digest,
            body_digest: self.hasher.finish(),
            body_bytes: self.body_bytes,
            chunk_bytes: self.chunk_bytes as u32,
        };
        let buffered = self
            .file
            .take()
            .ok_or_else(|| SnapshotError::io(&path, io::Error::other("writer finished")))?;
        let mut file = match buffered.into_inner() {
            Ok(file) => file,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(SnapshotError::io(&path, e.into_error()));
            }
        };
        let written = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&header.encode()))
            .and_then(|_| file.sync_all());
        drop(file);
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(SnapshotError::io(&path, e));
        }
        let installed = self.store.install(&path, self.meta.index, self.meta.term);
        if installed.is_err() {
            let _ = fs::remove_file(&path);
        }
        let installed = installed?;
        tracing::info!(
            path = %installed.path.display(),
            index = self.meta.index,
            body_bytes = header.body_bytes,
            state_digest = %state_digest,
            "snapshot written"
        );
        Ok(installed)
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let bound = self.store.config.body_bytes_max;
        if self.body_bytes() + data.len() as u64 > bound {
            return Err(SnapshotError::TooLarge {
                body_bytes: self.body_bytes() + data.len() as u64,
                bound_bytes: bound,
            }
            .into_io());
        }
        let mut rest = data;
        while !rest.is_empty() {
            if self.pending.is_empty() && rest.len() >= self.chunk_bytes {
                // Whole chunks go straight from the caller's buffer: no copy.
                let (chunk, tail) = rest.split_at(self.chunk_bytes);
                self.emit(chunk)?;
                rest = tail;
                continue;
            }
            let take = (self.chunk_bytes - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == self.chunk_bytes {
                self.flush_pending()?;
            }
        }
        Ok(data.len())
    }

    /// Chunks are only cut at `chunk_bytes` boundaries, so a flush writes nothing: the body
    /// layout must not depend on how the state machine happened to flush.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Abandoned before `finish`: the partial file must not linger.
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// Reads a snapshot file's body, checking each chunk's CRC as it arrives, and the body's
/// length, digest and the absence of trailing bytes at the end. Memory: one chunk.
///
/// As an [`io::Read`], damage surfaces as an `InvalidData` error wrapping a
/// [`SnapshotError::Corrupt`] (recover it with [`SnapshotError::from_io`]).
#[derive(Debug)]
pub struct SnapshotReader {
    path: PathBuf,
    file: BufReader<File>,
    header: SnapshotHeader,
    /// File offset of the next byte to read from `file`.
    offset: u64,
    body_remaining: u64,
    chunk: Vec<u8>,
    chunk_pos: usize,
    hasher: DigestHasher,
    verified: bool,
}

impl SnapshotReader {
    /// Opens `path` and checks its header and length; the body is checked as it is read.
    pub fn open(path: impl Into<PathBuf>) -> Result<SnapshotReader, SnapshotError> {
        let path = path.into();
        let file = File::open(&path).map_err(|e| SnapshotError::io(&path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| SnapshotError::io(&path, e))?
            .len();
        let mut file = BufReader::with_capacity(READ_BUFFER_BYTES, file);
        let mut prefix = [0u8; HEADER_PREFIX_BYTES];
        let got = read_up_to(&mut file, &mut prefix).map_err(|e| SnapshotError::io(&path, e))?;
        let header_bytes = header_bytes_from_prefix(&prefix[..got], &path)?;
        let mut buf = vec![0u8; header_bytes];
        buf[..HEADER_PREFIX_BYTES].copy_from_slice(&prefix);
        let got = read_up_to(&mut file, &mut buf[HEADER_PREFIX_BYTES..])
            .map_err(|e| SnapshotError::io(&path, e))?;
        let header = SnapshotHeader::decode(&buf[..HEADER_PREFIX_BYTES + got], &path)?;
        // The header implies the file's length: check it now, so that a truncated or
        // extended file is rejected before any of it is restored.
        let file_bytes = header.file_bytes();
        if file_len < file_bytes {
            return Err(SnapshotError::corrupt(
                &path,
                file_len,
                CorruptKind::Truncated,
            ));
        }
        if file_len > file_bytes {
            return Err(SnapshotError::corrupt(
                &path,
                file_bytes,
                CorruptKind::TrailingBytes,
            ));
        }
        let mut reader = SnapshotReader {
            path,
            file,
            offset: header_bytes as u64,
            body_remaining: header.body_bytes,
            chunk: Vec::new(),
            chunk_pos: 0,
            hasher: DigestHasher::new(),
            verified: false,
            header,
        };
        if reader.body_remaining == 0 {
            reader.verify_end()?;
        }
        Ok(reader)
    }

    /// The file's header, checked.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next body chunk's payload, verified; `None` once the whole body was read and
    /// checked.
    pub fn next_chunk(&mut self) -> Result<Option<&[u8]>, SnapshotError> {
        if self.body_remaining == 0 {
            self.verify_end()?;
            return Ok(None);
        }
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.resize(self.next_payload_bytes(), 0);
        let filled = self.fill(&mut chunk);
        self.chunk = chunk;
        self.chunk_pos = self.chunk.len();
        filled?;
        Ok(Some(&self.chunk))
    }

    /// Payload bytes of the next chunk (0 at the end of the body).
    fn next_payload_bytes(&self) -> usize {
        (self.header.chunk_bytes as u64).min(self.body_remaining) as usize
    }

    /// Reads the next chunk's payload into `dst` (exactly `next_payload_bytes` long) and
    /// checks it.
    fn fill(&mut self, dst: &mut [u8]) -> Result<(), SnapshotError> {
        let frame_offset = self.offset;
        let expected = dst.len() as u32;
        let mut frame = [0u8; CHUNK_FRAME_BYTES as usize];
        self.read_exact_at(&mut frame, frame_offset)?;
        let (stored_len, stored_crc) = parse_chunk_frame(&frame);
        if stored_len != expected {
            return Err(SnapshotError::corrupt(
                &self.path,
                frame_offset,
                CorruptKind::ChunkLength {
                    stored: stored_len,
                    expected,
                },
            ));
        }
        self.read_exact_at(dst, frame_offset)?;
        let computed = crc32fast::hash(dst);
        if computed != stored_crc {
            return Err(SnapshotError::corrupt(
                &self.path,
                frame_offset,
                CorruptKind::ChunkCrc {
                    stored: stored_crc,
                    computed,
                },
            ));
        }
        self.hasher.update(dst);
        self.offset += CHUNK_FRAME_BYTES + u64::from(expected);
        self.body_remaining -= u64::from(expected);
        if self.body_remaining == 0 {
            self.verify_end()?;
        }
        Ok(())
    }

    /// Reads and checks whatever of the body is left, discarding it.
    pub fn verify_to_end(&mut self) -> Result<(), SnapshotError> {
        while self.next_chunk()?.is_some() {}
        Ok(())
    }

    fn read_exact_at(
        &mut self,
        buf: &mut [u8],
        structure_offset: u64,
    ) -> Result<(), SnapshotError> {
        match self.file.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(SnapshotError::corrupt(
                &self.path,
                structure_offset,
                CorruptKind::Truncated,
            )),
            Err(e) => Err(SnapshotError::io(&self.path, e)),
        }
    }

    fn verify_end(&mut self) -> Result<(), SnapshotError> {
        if self.verified {
            return Ok(());
        }
        let computed = self.hasher.finish();
        if computed != self.header.body_digest {
            return Err(SnapshotError::corrupt(
                &self.path,
                self.header.encoded_bytes() as u64,
                CorruptKind::BodyDigest {
                    stored: self.header.body_digest,
                    computed,
                },
            ));
        }
        let mut probe = [0u8; 1];
        match self.file.read(&mut probe) {
            Ok(0) => {}
            Ok(_) => {
                return Err(SnapshotError::corrupt(
                    &self.path,
                    self.offset,
                    CorruptKind::TrailingBytes,
                ))
            }
            Err(e) => return Err(SnapshotError::io(&self.path, e)),
        }
        self.verified = true;
        Ok(())
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.chunk_pos == self.chunk.len() {
            let payload_bytes = self.next_payload_bytes();
            if payload_bytes > 0 && out.len() >= payload_bytes {
                // The caller's buffer holds a whole chunk: verify it in place, saving a copy.
                // On error the caller gets no bytes of the chunk, only the error.
                self.fill(&mut out[..payload_bytes])
                    .map_err(SnapshotError::into_io)?;
                return Ok(payload_bytes);
            }
            match self.next_chunk() {
                Ok(Some(_)) => self.chunk_pos = 0,
                Ok(None) => return Ok(0),
                Err(e) => {
                    self.chunk.clear();
                    self.chunk_pos = 0;
                    return Err(e.into_io());
                }
            }
        }
        let n = (self.chunk.len() - self.chunk_pos).min(out.len());
        out[..n].copy_from_slice(&self.chunk[self.chunk_pos..self.chunk_pos + n]);
        self.chunk_pos += n;
        Ok(n)
    }
}

/// Reads until `buf` is full or the end of the file; returns the count read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Restores `state_machine` from a snapshot and checks that the restored state digests to
/// what the header recorded. Reads and checks the whole body even if `restore` stopped
/// early, so a damaged tail is never silently accepted.
///
/// On error `state_machine` is in an unspecified state and must be discarded.
pub fn restore_state_machine<S: StateMachine>(
    mut reader: SnapshotReader,
    state_machine: &mut S,
) -> Result<SnapshotHeader, SnapshotError> {
    let path = reader.path.clone();
    if let Err(err) = state_machine.restore(&mut reader) {
        return Err(match err {
            RestoreError::Io(e) => match SnapshotError::from_io(&path, e) {
                SnapshotError::Io { source, .. } => SnapshotError::Restore {
                    path,
                    source: RestoreError::Io(source),
                },
                corrupt => corrupt,
            },
            malformed => SnapshotError::Restore {
                path,
                source: malformed,
            },
        });
    }
    reader.verify_to_end()?;
    let actual = state_machine.digest();
    if actual != reader.header.state_digest {
        return Err(SnapshotError::StateDigestMismatch {
            path,
            expected: reader.header.state_digest,
            actual,
        });
    }
    Ok(reader.header)
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
