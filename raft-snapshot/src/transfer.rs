//! Moving a snapshot file between nodes: the sender's chunk iterator and the receiver's
//! assembler. The transport (raft-net) carries [`TransferChunk`]s; it need not understand
//! them.
//!
//! What travels is the snapshot *file*, byte for byte, cut at arbitrary offsets: the file is
//! self-checking (header CRC, per-chunk CRCs, body digest), so the receiver validates the
//! assembled file exactly as it validates its own snapshots before installing it. The
//! transfer CRC on each [`TransferChunk`] catches damage in flight early, so only that chunk
//! is resent instead of the whole file failing at the end.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use raft_core::{Index, SnapshotMeta, Term};

use crate::error::{CorruptKind, SnapshotError};
use crate::format::{
    header_bytes_from_prefix, SnapshotHeader, HEADER_BYTES_MAX, HEADER_PREFIX_BYTES,
};
use crate::store::{validate_file, FileKind, SnapshotFile, SnapshotStore};

/// Bound on one transfer chunk, for the sender's and the receiver's memory.
pub const TRANSFER_CHUNK_BYTES_MAX: usize = 16 << 20;

/// A slice of a snapshot file in flight. `D` is whatever holds the bytes: a `Vec<u8>` as
/// read from the file, or the transport's own buffer type on the receiving side, so that
/// the receiver checks and writes a chunk where it landed, without copying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferChunk<D = Vec<u8>> {
    /// Offset of `data` in the snapshot file.
    pub offset: u64,
    /// The file's bytes from `offset` on.
    pub data: D,
    /// CRC32 of `data`.
    pub crc32: u32,
}

impl<D: AsRef<[u8]>> TransferChunk<D> {
    /// A chunk of `data` at `offset`, with its CRC computed.
    pub fn new(offset: u64, data: D) -> Self {
        let crc32 = crc32fast::hash(data.as_ref());
        TransferChunk {
            offset,
            data,
            crc32,
        }
    }

    /// Checks `data` against `crc32`.
    pub fn verify(&self) -> Result<(), SnapshotError> {
        let computed = crc32fast::hash(self.data.as_ref());
        if computed != self.crc32 {
            return Err(SnapshotError::TransferChunkCrc {
                offset: self.offset,
                stored: self.crc32,
                computed,
            });
        }
        Ok(())
    }
}

/// The sending side: a snapshot file opened once, read as [`TransferChunk`]s at any offset.
///
/// The file stays open for the whole transfer, so a retention pass deleting it from the
/// store meanwhile does not cut a transfer short (resumes included). Reads are positioned
/// (`pread`), so one `SnapshotChunks` can serve any offset from any thread; as an
/// [`Iterator`] it yields the chunks from the offset it was opened at.
#[derive(Debug)]
pub struct SnapshotChunks {
    path: PathBuf,
    file: File,
    header: SnapshotHeader,
    offset: u64,
    total_bytes: u64,
    chunk_bytes: usize,
}

impl SnapshotChunks {
    /// Opens `file` and checks its header and length (not its body: the receiver checks
    /// every byte before it installs the file). `chunk_bytes` (for the iterator) is clamped
    /// to `1..=TRANSFER_CHUNK_BYTES_MAX`; `from_offset` beyond the end yields nothing.
    pub fn open(
        file: &SnapshotFile,
        from_offset: u64,
        chunk_bytes: usize,
    ) -> Result<SnapshotChunks, SnapshotError> {
        let path = file.path.clone();
        let f = File::open(&path).map_err(|e| SnapshotError::io(&path, e))?;
        let total_bytes = f.metadata().map_err(|e| SnapshotError::io(&path, e))?.len();
        let mut prefix = vec![0u8; (HEADER_PREFIX_BYTES as u64).min(total_bytes) as usize];
        f.read_exact_at(&mut prefix, 0)
            .map_err(|e| SnapshotError::io(&path, e))?;
        let header_bytes = header_bytes_from_prefix(&prefix, &path)?;
        if (header_bytes as u64) > total_bytes {
            return Err(SnapshotError::corrupt(
                &path,
                total_bytes,
                CorruptKind::Truncated,
            ));
        }
        let mut header_buf = vec![0u8; header_bytes];
        f.read_exact_at(&mut header_buf, 0)
            .map_err(|e| SnapshotError::io(&path, e))?;
        let header = SnapshotHeader::decode(&header_buf, &path)?;
        if header.file_bytes() != total_bytes {
            let kind = if total_bytes < header.file_bytes() {
                CorruptKind::Truncated
            } else {
                CorruptKind::TrailingBytes
            };
            return Err(SnapshotError::corrupt(
                &path,
                total_bytes.min(header.file_bytes()),
                kind,
            ));
        }
        Ok(SnapshotChunks {
            path,
            file: f,
            header,
            offset: from_offset.min(total_bytes),
            total_bytes,
            chunk_bytes: chunk_bytes.clamp(1, TRANSFER_CHUNK_BYTES_MAX),
        })
    }

    /// The file's header: the snapshot's metadata is `header().meta`.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// The file being sent.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length: the offset at which the transfer is complete.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The chunk at `offset`: `chunk_bytes` (clamped to `1..=TRANSFER_CHUNK_BYTES_MAX`) or
    /// what is left of the file. `offset` at or past the end is an error.
    pub fn read_at(&self, offset: u64, chunk_bytes: usize) -> Result<TransferChunk, SnapshotError> {
        if offset >= self.total_bytes {
            return Err(SnapshotError::TransferOverrun {
                offset,
                total_bytes: self.total_bytes,
            });
        }
        let chunk_bytes = chunk_bytes.clamp(1, TRANSFER_CHUNK_BYTES_MAX) as u64;
        let len = (self.total_bytes - offset).min(chunk_bytes) as usize;
        let mut data = vec![0u8; len];
        // The file is immutable once installed; a short read means someone else changed
        // it. Fail rather than send garbage.
        self.file
            .read_exact_at(&mut data, offset)
            .map_err(|e| SnapshotError::io(&self.path, e))?;
        Ok(TransferChunk::new(offset, data))
    }
}

impl Iterator for SnapshotChunks {
    type Item = Result<TransferChunk, SnapshotError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.offset >= self.total_bytes {
            return None;
        }
        let chunk = self.read_at(self.offset, self.chunk_bytes);
        match &chunk {
            Ok(c) => self.offset += c.data.len() as u64,
            Err(_) => self.offset = self.total_bytes,
        }
        Some(chunk)
    }
}

/// Where an [`SnapshotAssembler`] stands after a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AssemblyProgress {
    /// The offset of the next chunk the assembler accepts: what to ask the sender for.
    pub next_offset: u64,
    /// The file's length, once the header has arrived.
    pub total_bytes: Option<u64>,
}

impl AssemblyProgress {
    /// Whether every byte of the file has arrived.
    pub fn is_complete(&self) -> bool {
        self.total_bytes == Some(self.next_offset)
    }
}

/// The receiving side of a snapshot transfer: accepts [`TransferChunk`]s in order into a
/// `.snap.recv` file, and on [`SnapshotAssembler::finish`] validates the whole file and
/// installs it atomically as a complete snapshot.
///
/// The partial file survives a restart: [`SnapshotStore::receive`] for the same index and
/// term resumes at its length. Its unsynced tail may be garbage after a power loss; that is
/// caught by the final validation, which then discards it and the install starts over.
#[derive(Debug)]
pub struct SnapshotAssembler {
    store: SnapshotStore,
    meta: SnapshotMeta,
    path: PathBuf,
    file: File,
    next_offset: u64,
    /// The first bytes of the file, until the header can be decoded. Bounded by
    /// `HEADER_BYTES_MAX`.
    header_prefix: Vec<u8>,
    total_bytes: Option<u64>,
    /// The incoming file's header, once it has arrived.
    header: Option<SnapshotHeader>,
}

impl SnapshotStore {
    /// Starts or resumes receiving the snapshot described by `meta` (as carried by the
    /// `InstallSnapshot` message). Any other partial receive is discarded: one at a time.
    pub fn receive(&self, meta: SnapshotMeta) -> Result<SnapshotAssembler, SnapshotError> {
        let path = self.path_of(meta.index, meta.term, FileKind::Receiving);
        for entry in std::fs::read_dir(self.dir()).map_err(|e| SnapshotError::io(self.dir(), e))? {
            let entry = entry.map_err(|e| SnapshotError::io(self.dir(), e))?;
            let name = entry.file_name();
            let ours = name
                .to_str()
                .and_then(crate::store::parse_file_name)
                .is_some_and(|(_, _, kind)| kind == FileKind::Receiving);
            if ours && entry.path() != path {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| SnapshotError::io(&path, e))?;
        let len = file
            .metadata()
            .map_err(|e| SnapshotError::io(&path, e))?
            .len();
        let mut header_prefix = vec![0u8; len.min(HEADER_BYTES_MAX as u64) as usize];
        file.read_exact(&mut header_prefix)
            .map_err(|e| SnapshotError::io(&path, e))?;
        let mut assembler = SnapshotAssembler {
            store: self.clone(),
            meta,
            path,
            file,
            next_offset: len,
            header_prefix,
            total_bytes: None,
            header: None,
        };
        let resumable = assembler
            .try_decode_header()
            .map(|()| assembler.total_bytes.is_none_or(|t| len <= t));
        if !matches!(resumable, Ok(true)) {
            tracing::warn!(path = %assembler.path.display(), "discarding unusable partial snapshot receive");
            assembler.reset()?;
        } else if len > 0 {
            tracing::info!(path = %assembler.path.display(), offset = len, "resuming snapshot receive");
        }
        assembler
            .file
            .seek(SeekFrom::Start(assembler.next_offset))
            .map_err(|e| SnapshotError::io(&assembler.path, e))?;
        Ok(assembler)
    }
}

impl SnapshotAssembler {
    /// Where the transfer stands.
    pub fn progress(&self) -> AssemblyProgress {
        AssemblyProgress {
            next_offset: self.next_offset,
            total_bytes: self.total_bytes,
        }
    }

    /// The incoming file's header, once it has arrived: it identifies the exact file being
    /// assembled. Two files of the same snapshot (same index, term and state) can differ in
    /// bytes (another leader with another `chunk_bytes`), and resuming one with the other's
    /// bytes fails the final validation. Before resuming at
    /// [`AssemblyProgress::next_offset`], compare this with the sender's header and
    /// [`SnapshotAssembler::restart`] if they differ.
    pub fn header(&self) -> Option<&SnapshotHeader> {
        self.header.as_ref()
    }

    /// Discards what was received and expects offset 0 next.
    pub fn restart(&mut self) -> Result<(), SnapshotError> {
        self.reset()
    }

    /// The partial `.snap.recv` file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `chunk` if it starts at [`AssemblyProgress::next_offset`] and its CRC holds.
    ///
    /// Out-of-order and damaged chunks are rejected without effect (the transfer can go on
    /// from `next_offset`). A header that does not describe the expected snapshot, or a
    /// body beyond `body_bytes_max`, discards the partial file and restarts at offset 0.
    pub fn accept<D: AsRef<[u8]>>(
        &mut self,
        chunk: &TransferChunk<D>,
    ) -> Result<AssemblyProgress, SnapshotError> {
        let data = chunk.data.as_ref();
        if data.is_empty() || data.len() > TRANSFER_CHUNK_BYTES_MAX {
            return Err(SnapshotError::TransferChunkSize {
                offset: chunk.offset,
                len_bytes: data.len(),
                bound_bytes: TRANSFER_CHUNK_BYTES_MAX,
            });
        }
        if chunk.offset != self.next_offset {
            return Err(SnapshotError::ChunkOutOfOrder {
                expected: self.next_offset,
                got: chunk.offset,
            });
        }
        chunk.verify()?;
        let end = chunk.offset + data.len() as u64;
        if let Some(total_bytes) = self.total_bytes {
            if end > total_bytes {
                return Err(SnapshotError::TransferOverrun {
                    offset: chunk.offset,
                    total_bytes,
                });
            }
        }
        if let Err(e) = self.file.write_all(data) {
            // The file position is now unknown: start over rather than guess.
            let _ = self.reset();
            return Err(SnapshotError::io(&self.path, e));
        }
        self.next_offset = end;
        if self.total_bytes.is_none() {
            let wanted = HEADER_BYTES_MAX.saturating_sub(self.header_prefix.len());
            let take = wanted.min(data.len());
            self.header_prefix.extend_from_slice(&data[..take]);
            let decoded = self.try_decode_header();
            let total_bytes = self.total_bytes;
            let overrun = total_bytes.is_some_and(|t| end > t);
            if decoded.is_err() || overrun {
                self.reset()?;
                decoded?;
                return Err(SnapshotError::TransferOverrun {
                    offset: chunk.offset,
                    total_bytes: total_bytes.unwrap_or(0),
                });
            }
        }
        Ok(self.progress())
    }

    /// Validates the complete file (header, every chunk CRC, body digest, length), fsyncs
    /// it and installs it atomically under its final name. A file that fails validation is
    /// deleted and the error (naming the receive path and offset) returned.
    ///
    /// The *state* digest in the header can only be checked by restoring: do that with
    /// [`crate::restore_state_machine`], which compares it.
    pub fn finish(self) -> Result<SnapshotFile, SnapshotError> {
        if !self.progress().is_complete() {
            return Err(SnapshotError::TransferIncomplete {
                received_bytes: self.next_offset,
                total_bytes: self.total_bytes,
            });
        }
        let SnapshotAssembler {
            store,
            meta,
            path,
            file,
            ..
        } = self;
        file.sync_all().map_err(|e| SnapshotError::io(&path, e))?;
        drop(file);
        let candidate = SnapshotFile {
            index: meta.index,
            term: meta.term,
            path: path.clone(),
        };
        if let Err(e) = validate_file(&candidate) {
            tracing::error!(error = %e, "received snapshot failed validation; discarded");
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let installed = store.install(&path, meta.index, meta.term)?;
        tracing::info!(path = %installed.path.display(), index = meta.index, "snapshot received and installed");
        Ok(installed)
    }

    /// Gives up on this transfer and deletes the partial file.
    pub fn abort(self) -> Result<(), SnapshotError> {
        drop(self.file);
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SnapshotError::io(&self.path, e)),
            _ => Ok(()),
        }
    }

    fn reset(&mut self) -> Result<(), SnapshotError> {
        self.next_offset = 0;
        self.header_prefix.clear();
        self.total_bytes = None;
        self.header = None;
        self.file
            .set_len(0)
            .and_then(|_| self.file.seek(SeekFrom::Start(0)).map(|_| ()))
            .map_err(|e| SnapshotError::io(&self.path, e))
    }

    /// Decodes the header once enough of it has arrived, checking it describes `meta` and
    /// fits the bounds; sets `total_bytes`.
    fn try_decode_header(&mut self) -> Result<(), SnapshotError> {
        if self.total_bytes.is_some() || self.header_prefix.is_empty() {
            return Ok(());
        }
        if self.header_prefix.len() < HEADER_PREFIX_BYTES {
            // Still check the magic we have, so garbage is refused at the first chunk.
            return match header_bytes_from_prefix(&self.header_prefix, &self.path) {
                Err(e) if !is_truncated(&e) => Err(e),
                _ => Ok(()),
            };
        }
        let header_bytes = header_bytes_from_prefix(&self.header_prefix, &self.path)?;
        if self.header_prefix.len() < header_bytes {
            return Ok(());
        }
        let header = SnapshotHeader::decode(&self.header_prefix, &self.path)?;
        self.check_header(&header)?;
        self.total_bytes = Some(header.file_bytes());
        self.header = Some(header);
        Ok(())
    }

    fn check_header(&self, header: &SnapshotHeader) -> Result<(), SnapshotError> {
        let (index, term): (Index, Term) = (header.meta.index, header.meta.term);
        if (index, term) != (self.meta.index, self.meta.term) {
            return Err(SnapshotError::TransferMismatch {
                expected_index: self.meta.index,
                expected_term: self.meta.term,
                got_index: index,
                got_term: term,
            });
        }
        let bound_bytes = self.store.config().body_bytes_max;
        if header.body_bytes > bound_bytes {
            return Err(SnapshotError::TooLarge {
                body_bytes: header.body_bytes,
                bound_bytes,
            });
        }
        Ok(())
    }
}

fn is_truncated(e: &SnapshotError) -> bool {
    matches!(
        e,
        SnapshotError::Corrupt {
            kind: crate::error::CorruptKind::Truncated,
            ..
        }
    )
}
