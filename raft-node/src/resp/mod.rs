//! RESP2 and RESP3, the Redis protocol: a bounded request parser (`parser.rs`), reply
//! values and their encoding in either version (`value.rs`), and the mapping of Redis
//! commands onto the key-value state machine (`command.rs`; the key-type commands are in
//! [`crate::resp_keys`]). The connection loop that drives them is [`crate::server`]'s.
//!
//! Hand-written rather than taken from a crate: the server side of RESP2 is two request
//! forms (arrays of bulk strings, and inline commands) and five reply types, about two
//! hundred lines, while the maintained crates (`redis-protocol`) bring a parser-combinator
//! stack and client-oriented types this node would not use, on a machine where compile
//! time is shared. The `redis` crate's tests and `redis-cli` exercise it as an outside
//! implementation would.

mod command;
mod parser;
mod value;

pub use command::{info_text, kv_reply, to_command, Parsed, WatchSlot, Watched};
pub use parser::{ParserLimits, ProtocolError, RespParser};
pub use value::{format_double, Protocol, Value};
