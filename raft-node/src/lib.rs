//! A replicated key-value service: the node runtime that wires raft-core, storage and
//! transport together, the built-in key-value state machine, and the client interfaces
//! (native protocol and RESP on the client port, HTTP). The `raft-node` binary is a thin
//! CLI over this library.
//!
//! - [`runtime`]: the one task that owns the `RawNode` and the state machine.
//! - [`store`] and [`transport`]: the seams where the disk log and the network plug in;
//!   [`transport_net`] puts raft-net behind the latter.
//! - [`kv`]: the deterministic key-value state machine with exactly-once sessions;
//!   [`changes`]: the key changes each applied entry made, for notifications and watches;
//!   [`watch`]: the bounded history of those changes that watchers read.
//! - [`server`], [`resp`], [`http`], [`router`]: the client interfaces; [`session`]: the
//!   login and role check every client-port request passes.
//! - [`auth`]: users, roles and password checks for every client interface.
//! - [`anti_entropy`]: state digests at fixed indexes, compared by the leader.
//! - [`membership_check`]: the leader's rules for safe membership changes.
//! - [`recover`]: `raft-node recover`, a one-node cluster from a survivor's data.
//! - [`tls`]: the TLS settings and the rustls configurations of every port; [`certs`]:
//!   generated CA and node certificates (`raft-node certs`); [`cluster_id`]: the
//!   cluster's random ID and how the members agree on it.
//! - [`node`]: starting and stopping a node; [`config`]: its configuration; [`limits`]:
//!   the bounds on what clients can make a node hold or do.

#![deny(missing_docs)]

pub mod admission;
pub mod anti_entropy;
pub mod auth;
pub mod certs;
pub mod changes;
pub mod clock;
pub mod cluster_id;
pub mod cluster_view;
pub mod commands;
pub mod config;
pub mod glob;
pub mod http;
pub mod kv;
pub mod limits;
pub mod membership_check;
pub mod metrics;
pub mod node;
mod process_metrics;
mod read_batch;
pub mod recover;
pub mod resp;
pub mod resp_keys;
pub mod router;
pub mod runtime;
pub mod server;
pub mod session;
pub mod store;
pub mod store_log;
pub mod tls;
pub mod transport;
pub mod transport_net;
pub mod watch;
