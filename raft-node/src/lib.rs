//! A replicated key-value service: the node runtime that wires raft-core, storage and
//! transport together, the built-in key-value state machine, and the client interfaces
//! (native, RESP, HTTP). The `raft-node` binary is a thin CLI over this library.

pub mod kv;
