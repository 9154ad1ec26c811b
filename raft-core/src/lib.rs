//! The Raft consensus protocol as a deterministic, sans-IO state machine.
//!
//! This crate does no IO, reads no clock and draws no global randomness: time arrives as
//! [`RawNode::tick`], messages as [`RawNode::step`], and every effect the host must carry
//! out (messages to send, entries and hard state to persist, committed entries to apply,
//! reads that are safe to serve) leaves as one [`Ready`] batch. The same inputs always give
//! the same outputs, which is what lets `cargo xtask sim` replay any run from its seed.
//!
//! ```
//! use raft_core::{Config, MemLog, Membership, RawNode, SnapshotMeta};
//!
//! // A one-node cluster bootstrapped from an initial configuration.
//! let store = MemLog::with_snapshot(SnapshotMeta {
//!     membership: Membership::new_voters([1]),
//!     ..Default::default()
//! });
//! let mut node = RawNode::new(Config::new(1), store).unwrap();
//! while !node.is_leader() {
//!     node.tick();
//!     let ready = node.ready();
//!     node.storage_mut().persist(&ready);
//!     node.on_persisted(ready.seq);
//! }
//! let proposal = node.propose(b"set x 1".to_vec().into()).unwrap();
//! let ready = node.ready();
//! node.storage_mut().persist(&ready);
//! node.on_persisted(ready.seq);
//! let ready = node.ready();
//! assert!(ready.committed_entries.iter().any(|e| e.index == proposal.index));
//! ```

#![deny(missing_docs)]

pub mod config;
pub mod membership;
pub mod message;
pub mod mutant;
mod node;
mod progress;
mod raft_log;
mod ready;
pub mod rng;
#[cfg(feature = "sim")]
pub mod sim;
pub mod storage;
pub mod types;

pub use config::{Config, ConfigError};
pub use membership::{ConfChange, Membership, MembershipError, VoteResult};
pub use message::{ConflictHint, Message, MessageBody};
pub use node::{
    ChangeError, Error, PeerStatus, ProposalId, ProposeError, RawNode, SnapshotError, Status,
    TransferError,
};
pub use ready::{ReadError, ReadState, Ready};
pub use storage::{EntryBytesLimit, LogStore, LogWriter, MemLog, StorageError};
pub use types::{Entry, EntryPayload, HardState, Index, NodeId, Role, SnapshotMeta, Term};
