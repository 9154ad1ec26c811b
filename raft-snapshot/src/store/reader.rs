//! Reading a snapshot: [`SnapshotReader`] checks each chunk's CRC as it streams the body
//! and the length, digest and end of file once it is through; [`restore_state_machine`]
//! feeds one into a state machine and checks the restored digest. Apart from the writer
//! because it is what every untrusted file goes through.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::digest::DigestHasher;
use crate::error::{CorruptKind, SnapshotError};
use crate::format::{
    header_bytes_from_prefix, parse_chunk_frame, SnapshotHeader, CHUNK_FRAME_BYTES,
    HEADER_PREFIX_BYTES,
};
use crate::state_machine::{RestoreError, StateMachine};

const READ_BUFFER_BYTES: usize = 64 << 10;

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
