//! The messages between a raft-node and its clients, shared by `raft-client` and `raft-node`
//! so that both sides encode the same bytes from one definition. Types and encodings only:
//! no sockets, no files, no runtime.
//!
//! - [`frame`]: the native protocol's frames ([`RequestFrame`], [`ResponseFrame`]), postcard
//!   bodies behind a 4-byte big-endian length, at most [`FRAME_BYTES_MAX`] bytes.
//! - [`log`]: what the node stores in its log for a client write ([`LogCommand`], with the
//!   client's exactly-once [`Session`]).
//! - [`kv`]: the built-in key-value state machine's commands and answers ([`KvCommand`],
//!   [`KvResponse`], [`KvError`]), so that a client encodes an operation once and the node
//!   stores exactly those bytes.
//! - [`status`]: a node's view of the cluster ([`NodeStatus`]).
//! - [`anti_entropy`]: the state digests a node reports and the leader's comparison
//!   ([`DigestInfo`], [`AntiEntropyStatus`]).
//!
//! Node IDs, log indexes and terms are raft-core's [`NodeId`], [`Index`] and [`Term`].

#![deny(missing_docs)]

pub mod anti_entropy;
pub mod frame;
pub mod kv;
pub mod log;
pub mod status;

pub use anti_entropy::{AntiEntropyStatus, DigestInfo, DivergentReplica};
pub use frame::{
    NodeError, Password, Request, RequestFrame, Response, ResponseFrame, FRAME_BYTES_MAX,
};
pub use kv::{
    ExpireCondition, Expiry, KvCommand, KvError, KvResponse, SetCondition, BATCH_COMMANDS_MAX,
    STRING_BYTES_MAX,
};
pub use log::{LogCommand, Session};
pub use raft_core::{Index, NodeId, Term};
pub use status::{LeaderChange, LoadCounters, MemberAddr, NodeStatus, PeerInfo};
