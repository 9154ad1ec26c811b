//! Writing a snapshot: [`SnapshotStore::begin`] opens a temporary file, the
//! [`SnapshotWriter`] streams the body into it in checksummed chunks (one chunk in memory),
//! and `finish` writes the header, fsyncs and installs it. Apart from the directory code
//! because it is the one path that creates snapshot files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::PathBuf;

use raft_core::SnapshotMeta;

use super::{FileKind, SnapshotFile, SnapshotStore};
use crate::digest::{DigestHasher, StateDigest};
use crate::error::SnapshotError;
use crate::format::{check_membership_bounds, chunk_frame, header_bytes_for, SnapshotHeader};
use crate::state_machine::SnapshotSource;

/// Coalesces chunk frames and small chunks into fewer writes; payloads at least this large
/// bypass the buffer.
const WRITE_BUFFER_BYTES: usize = 64 << 10;

impl SnapshotStore {
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

    /// Writes `source` (typically a [`crate::StateMachine::freeze`]-d copy) as the snapshot at
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
