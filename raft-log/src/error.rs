//! The log's typed errors.

use std::io;
use std::path::PathBuf;

use raft_core::Index;

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A system call on `path` failed (a full disk shows up here as `ENOSPC`).
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory the call was on.
        path: PathBuf,
        /// What the system call returned.
        #[source]
        source: io::Error,
    },
    /// Stored data is invalid somewhere other than a torn tail. Nothing has been deleted.
    #[error("corrupt log file {} at byte offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The file holding the bad data.
        path: PathBuf,
        /// Where in it the bad data starts.
        offset: u64,
        /// What check it failed.
        reason: String,
    },
    /// Another process (or another `Log` in this process) holds the directory's lock file.
    #[error("log directory {} is locked by another process", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An entry's encoding exceeds `Options::entry_bytes_max`.
    #[error("entry {index} encodes to {bytes} bytes, above entry_bytes_max {entry_bytes_max}")]
    EntryTooLarge {
        /// The entry's index.
        index: Index,
        /// Its encoded size.
        bytes: u64,
        /// The bound it broke.
        entry_bytes_max: u64,
    },
    /// The hard state and snapshot metadata do not fit in a state slot.
    #[error("state record of {bytes} bytes does not fit a {slot_bytes}-byte slot")]
    StateTooLarge {
        /// The encoded state's size.
        bytes: usize,
        /// Room in one slot.
        slot_bytes: usize,
    },
    /// The call would break the log's shape (a gap, a rewrite of the snapshot, terms going
    /// backwards, a compaction past the last entry, ...).
    #[error("invalid log operation: {0}")]
    Invalid(String),
    /// An `fsync` failed earlier. The kernel may have dropped the unsynced pages, so nothing
    /// written since the last successful sync can be trusted: reopen the log.
    #[error("log poisoned by an earlier failed sync; reopen it")]
    Poisoned,
    /// Invalid `Options`.
    #[error("invalid options: {0}")]
    Options(String),
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> LogError {
        LogError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> LogError {
        LogError::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}
