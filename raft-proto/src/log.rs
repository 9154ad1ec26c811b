//! What the node stores in its log for one client write.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Identifies a client's request for exactly-once application.
///
/// A client picks a random `client_id` and numbers its requests `seq = 1, 2, ...`. A retry
/// reuses the same `seq`. `acked_below` tells the state machine that every request below it
/// has been answered, so their cached responses can be dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Random, never 0.
    pub client_id: u64,
    /// This request's number, at least 1.
    pub seq: u64,
    /// Every request with `seq < acked_below` has been answered and will not be retried.
    pub acked_below: u64,
}

/// What the node puts in the log for one client write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCommand {
    /// `None` for clients without exactly-once (RESP, HTTP): a retry may apply twice.
    pub session: Option<Session>,
    /// The state machine's command (for the built-in one, a postcard
    /// [`KvCommand`](crate::KvCommand)).
    pub op: Bytes,
    /// The proposing leader's wall-clock time, Unix milliseconds, stamped when it built the
    /// entry (never by a client or a follower). The key-value state machine's clock is the
    /// largest stamp applied so far: expiry is decided from it, never from the clock of
    /// the node applying the entry, so every replica expires the same keys at the same
    /// index. 0 for an unstamped entry, which leaves the clock where it is.
    pub stamp_ms: u64,
}

impl LogCommand {
    /// The bytes stored in the log (postcard).
    pub fn encode(&self) -> Bytes {
        postcard::to_allocvec(self)
            .expect("a LogCommand always serializes")
            .into()
    }

    /// Reads what [`LogCommand::encode`] wrote; `None` for anything else. A hosted state
    /// machine decodes each applied command with this.
    pub fn decode(bytes: &[u8]) -> Option<LogCommand> {
        postcard::from_bytes(bytes).ok()
    }
}
