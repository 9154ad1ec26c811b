//! What the node asks of its host, one batch at a time.

use crate::message::Message;
use crate::types::{Entry, HardState, Index, NodeId, SnapshotMeta};

/// One batch of work for the host, taken with [`RawNode::ready`](crate::RawNode::ready).
///
/// The host handles it in this order:
/// 1. write `snapshot` (if any), then `entries` (dropping stored entries at or after the first
///    one's index), then `hard_state` to its store, before it calls into the node again;
/// 2. send `messages` at once: they do not depend on this node's durable state;
/// 3. make the writes durable (fsync), then send `messages_after_persist` and call
///    [`on_persisted(seq)`](crate::RawNode::on_persisted). Syncs complete in `seq` order,
///    and `messages_after_persist` of a Ready wait for every earlier Ready's writes too;
/// 4. install `snapshot` into the state machine, apply `committed_entries` in order and report
///    it with [`advance_applied`](crate::RawNode::advance_applied);
/// 5. serve `read_states` from the state machine (they are safe once step 4 is done).
///
/// Steps 3 and 4 may run concurrently with later Readies (asynchronous persistence): the leader
/// counts its own log toward the quorum only after `on_persisted`.
#[derive(Debug, Default)]
pub struct Ready {
    /// Sequence number of this batch's writes, for [`on_persisted`](crate::RawNode::on_persisted).
    /// `0` when the batch has nothing to persist and no message waits on persistence.
    pub seq: u64,
    /// Hard state to write, when it changed.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader that replaces the whole log and state machine.
    pub snapshot: Option<SnapshotMeta>,
    /// Entries to append; stored entries at or after the first one's index are dropped first.
    pub entries: Vec<Entry>,
    /// Messages to send now.
    pub messages: Vec<Message>,
    /// Messages to send once this Ready's writes (and all earlier ones) are durable.
    pub messages_after_persist: Vec<Message>,
    /// Committed entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Reads that are now safe to serve, or that failed.
    pub read_states: Vec<ReadState>,
}

impl Ready {
    /// Whether the batch holds nothing at all.
    pub fn is_empty(&self) -> bool {
        self.seq == 0
            && self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.messages.is_empty()
            && self.messages_after_persist.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
    }
}

/// The outcome of a linearizable read asked for with
/// [`RawNode::read_index`](crate::RawNode::read_index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's identifier for the read.
    pub ctx: u64,
    /// `Ok(index)`: the state machine has applied at least `index`, and serving the read from
    /// it now is linearizable. `Err`: the read could not be confirmed; retry it.
    pub result: Result<Index, ReadError>,
}

/// Why a read could not be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// No leader is known, or the leader refused; `leader` is a hint where to retry.
    /// No leader is known here; `leader` is a hint.
    NotLeader {
        /// Where to retry, if known.
        leader: Option<NodeId>,
    },
    /// Leadership changed before the read was confirmed.
    LeadershipLost,
    /// Too many reads are pending on this node.
    Busy,
    /// The leader did not answer a forwarded read in time.
    Timeout,
}
