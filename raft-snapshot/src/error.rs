//! Errors of the snapshot store, reader, writer and transfer.

use std::fmt;
use std::io;
use std::path::PathBuf;

use raft_core::{Index, Term};

use crate::digest::StateDigest;
use crate::state_machine::RestoreError;

/// What exactly is wrong with a corrupt snapshot file.
// Fields are the stored and the recomputed values; the Display impl names them.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorruptKind {
    /// The file does not start with [`crate::format::SNAPSHOT_MAGIC`].
    BadMagic,
    /// Written by a newer (or unknown) format version.
    UnsupportedVersion(u32),
    /// The header's CRC32 does not match its bytes.
    HeaderCrc { stored: u32, computed: u32 },
    /// A header field holds a value out of its bounds; the field is named.
    HeaderField(&'static str),
    /// A chunk's stored length disagrees with what the header implies.
    ChunkLength { stored: u32, expected: u32 },
    /// A body chunk's payload does not match its CRC32.
    ChunkCrc { stored: u32, computed: u32 },
    /// Every chunk was intact but the body as a whole does not hash to the header's digest.
    BodyDigest {
        stored: StateDigest,
        computed: StateDigest,
    },
    /// The file ends before the header or body says it should.
    Truncated,
    /// Bytes follow the last chunk.
    TrailingBytes,
    /// The file's name says one index and term, its header another.
    NameMismatch { index: Index, term: Term },
}

impl fmt::Display for CorruptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorruptKind::BadMagic => write!(f, "not a snapshot file (bad magic)"),
            CorruptKind::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            CorruptKind::HeaderCrc { stored, computed } => {
                write!(
                    f,
                    "header CRC mismatch (stored {stored:08x}, computed {computed:08x})"
                )
            }
            CorruptKind::HeaderField(field) => write!(f, "header field `{field}` out of bounds"),
            CorruptKind::ChunkLength { stored, expected } => {
                write!(f, "chunk length {stored} where {expected} was expected")
            }
            CorruptKind::ChunkCrc { stored, computed } => {
                write!(
                    f,
                    "chunk CRC mismatch (stored {stored:08x}, computed {computed:08x})"
                )
            }
            CorruptKind::BodyDigest { stored, computed } => {
                write!(
                    f,
                    "body digest mismatch (stored {stored}, computed {computed})"
                )
            }
            CorruptKind::Truncated => write!(f, "truncated"),
            CorruptKind::TrailingBytes => write!(f, "unexpected bytes after the last chunk"),
            CorruptKind::NameMismatch { index, term } => write!(
                f,
                "file name does not match header (header says index {index}, term {term})"
            ),
        }
    }
}

/// Errors of this crate. Every variant that concerns a file names it.
// Fields are named in each variant's `#[error]` message.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file system failed on `path`; says nothing about the file's contents.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is damaged; `offset` is where the damaged structure starts (the header at 0,
    /// or the chunk's frame).
    #[error("corrupt snapshot {path} at offset {offset}: {kind}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        kind: CorruptKind,
    },
    /// A state machine restored from `path` does not digest to what the header recorded:
    /// its `snapshot`/`restore`/`digest` disagree, or it is not deterministic.
    #[error(
        "state digest mismatch after restoring {path}: header {expected}, restored state {actual}"
    )]
    StateDigestMismatch {
        path: PathBuf,
        expected: StateDigest,
        actual: StateDigest,
    },
    /// The state machine refused an intact body, or reading it failed.
    #[error("restoring the state machine from {path}: {source}")]
    Restore {
        path: PathBuf,
        #[source]
        source: RestoreError,
    },
    /// The state machine's own writer failed while streaming a snapshot.
    #[error("writing snapshot body to {path}: {source}")]
    Source {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A body over [`crate::SnapshotStoreConfig::body_bytes_max`].
    #[error("snapshot body of {body_bytes} bytes exceeds the bound of {bound_bytes} bytes")]
    TooLarge { body_bytes: u64, bound_bytes: u64 },
    /// A membership set over [`crate::format::MEMBERSHIP_NODES_PER_SET_MAX`].
    #[error("membership of {nodes} nodes in one set exceeds the bound of {bound} nodes")]
    MembershipTooLarge { nodes: usize, bound: usize },
    /// A [`crate::SnapshotStoreConfig`] field out of its bounds.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// A transfer chunk did not start where the assembler expects; resend from `expected`.
    #[error("snapshot chunk at offset {got} out of order: expected offset {expected}")]
    ChunkOutOfOrder { expected: u64, got: u64 },
    /// A transfer chunk was damaged in flight; resend it.
    #[error("snapshot chunk at offset {offset} failed its CRC (carried {stored:08x}, computed {computed:08x})")]
    TransferChunkCrc {
        offset: u64,
        stored: u32,
        computed: u32,
    },
    /// A transfer chunk that is empty or over [`crate::TRANSFER_CHUNK_BYTES_MAX`].
    #[error("snapshot chunk at offset {offset} of {len_bytes} bytes is empty or exceeds the bound of {bound_bytes} bytes")]
    TransferChunkSize {
        offset: u64,
        len_bytes: usize,
        bound_bytes: usize,
    },
    /// A transfer chunk goes past the end of the file the header announced.
    #[error("snapshot chunk at offset {offset} ends past the snapshot's {total_bytes} bytes")]
    TransferOverrun { offset: u64, total_bytes: u64 },
    /// The incoming file's header describes another snapshot than the one announced.
    #[error("incoming snapshot is index {got_index} term {got_term}, expected index {expected_index} term {expected_term}")]
    TransferMismatch {
        expected_index: Index,
        expected_term: Term,
        got_index: Index,
        got_term: Term,
    },
    /// `finish` was called before every byte arrived.
    #[error("snapshot transfer incomplete: {received_bytes} of {total_bytes:?} bytes received")]
    TransferIncomplete {
        received_bytes: u64,
        total_bytes: Option<u64>,
    },
}

impl SnapshotError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        SnapshotError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, offset: u64, kind: CorruptKind) -> Self {
        SnapshotError::Corrupt {
            path: path.into(),
            offset,
            kind,
        }
    }

    /// Whether the error proves the file's bytes are bad (as opposed to the disk or the
    /// state machine failing): only such files are quarantined.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, SnapshotError::Corrupt { .. })
    }

    /// Recovers a `SnapshotError` that travelled through an [`io::Error`] (as the
    /// [`crate::SnapshotReader`]'s `Read` impl must report them).
    pub fn from_io(path: impl Into<PathBuf>, err: io::Error) -> Self {
        if !err.get_ref().is_some_and(|e| e.is::<SnapshotError>()) {
            return SnapshotError::io(path, err);
        }
        let kind = err.kind();
        match err
            .into_inner()
            .map(|inner| inner.downcast::<SnapshotError>())
        {
            Some(Ok(inner)) => *inner,
            Some(Err(other)) => SnapshotError::io(path, io::Error::new(kind, other)),
            None => SnapshotError::io(path, io::Error::from(kind)),
        }
    }

    pub(crate) fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}
