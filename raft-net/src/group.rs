//! Many Raft groups over one transport: what a multi-group host sends and receives.
//!
//! Every message carries the [`GroupId`] of the group it belongs to; the messages of all
//! groups to one peer share that peer's one message connection, its queue and its batched
//! writes. Heartbeats are the one kind every group sends every tick, idle or not, so they
//! have a coalesced form: [`Envelope::Heartbeats`] carries one `(group, term, commit,
//! read_seq)` entry per group in one frame, and [`Envelope::HeartbeatResponses`] the
//! answers. With 10,000 groups led from one node, a tick costs one frame per peer rather
//! than 10,000 messages.
//!
//! Group [`SINGLE_GROUP`] (0) is the group of the single-group API
//! ([`crate::TransportHandle::send`], [`crate::Incoming`]): its messages are encoded as
//! they always were, and a single-group transport refuses everything else (the connection
//! that carried it is closed, counted as [`crate::ConnErrorKind::Protocol`]).
//!
//! A transport started with [`crate::Transport::start_groups`] delivers [`GroupIncoming`]
//! and leaves it to the host to know its groups: a message for a group the host does not
//! (yet) hold is the host's to drop or to create the group for, as a replica being added
//! learns of its group from the leader's first message. Closing the connection instead
//! would cut every other group's traffic with that peer for a benign race.

use raft_core::{Index, Message, MessageBody, NodeId, SnapshotMeta, Term};
use raft_snapshot::{SnapshotFile, SnapshotStore};

/// Names a Raft group. The multi-group log's type ([`raft_log::multi::GroupId`]), so that a
/// group's log and its traffic are named alike.
pub use raft_log::multi::GroupId;

/// The group of the single-group API.
pub const SINGLE_GROUP: GroupId = 0;

/// Most entries in one coalesced heartbeat (or heartbeat response) frame. More are sent as
/// several frames; a received frame announcing more is refused before anything is
/// allocated for it, and closes its connection.
pub const HEARTBEATS_PER_FRAME_MAX: usize = 16_384;

/// One group's heartbeat, in a coalesced [`Envelope::Heartbeats`]: the fields of
/// [`MessageBody::Heartbeat`] plus the group and its leader's term. Sender and recipient
/// are the two ends of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupHeartbeat {
    /// The group.
    pub group: GroupId,
    /// The leader's term in that group.
    pub term: Term,
    /// `min(leader commit, follower match)`.
    pub commit: Index,
    /// Echoed back in the response.
    pub read_seq: u64,
}

/// One group's answer to a heartbeat, in a coalesced [`Envelope::HeartbeatResponses`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupHeartbeatResponse {
    /// The group.
    pub group: GroupId,
    /// The follower's term in that group.
    pub term: Term,
    /// The `read_seq` of the heartbeat answered.
    pub read_seq: u64,
}

impl GroupHeartbeat {
    /// The group's `Heartbeat` message from `from` to `to`.
    pub fn to_message(&self, from: NodeId, to: NodeId) -> Message {
        Message {
            from,
            to,
            term: self.term,
            body: MessageBody::Heartbeat {
                commit: self.commit,
                read_seq: self.read_seq,
            },
        }
    }
}

impl GroupHeartbeatResponse {
    /// The group's `HeartbeatResponse` message from `from` to `to`.
    pub fn to_message(&self, from: NodeId, to: NodeId) -> Message {
        Message {
            from,
            to,
            term: self.term,
            body: MessageBody::HeartbeatResponse {
                read_seq: self.read_seq,
            },
        }
    }
}

/// What one frame of the message lane carries, on a multi-group transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Envelope {
    /// One message of one group.
    Message {
        /// Its group.
        group: GroupId,
        /// The message (`from` and `to` are the connection's two ends).
        message: Message,
    },
    /// Heartbeats of many groups, at most [`HEARTBEATS_PER_FRAME_MAX`], never empty.
    Heartbeats(Vec<GroupHeartbeat>),
    /// Answers to heartbeats of many groups, at most [`HEARTBEATS_PER_FRAME_MAX`], never
    /// empty.
    HeartbeatResponses(Vec<GroupHeartbeatResponse>),
}

impl Envelope {
    /// Bytes of memory it holds while queued, in O(1): itself, and its entries or
    /// coalesced heartbeats. Command payloads are not counted: they are reference-counted
    /// slices, most often of the log's own buffers.
    pub fn queued_bytes(&self) -> usize {
        std::mem::size_of::<Envelope>()
            + match self {
                Envelope::Message { message, .. } => match &message.body {
                    MessageBody::AppendEntries { entries, .. } => {
                        entries.len() * std::mem::size_of::<raft_core::Entry>()
                    }
                    _ => 0,
                },
                Envelope::Heartbeats(h) => h.len() * std::mem::size_of::<GroupHeartbeat>(),
                Envelope::HeartbeatResponses(h) => {
                    h.len() * std::mem::size_of::<GroupHeartbeatResponse>()
                }
            }
    }

    /// Raft messages it stands for: 1, or one per coalesced heartbeat.
    pub fn messages(&self) -> usize {
        match self {
            Envelope::Message { .. } => 1,
            Envelope::Heartbeats(h) => h.len(),
            Envelope::HeartbeatResponses(h) => h.len(),
        }
    }
}

/// What a multi-group transport ([`crate::Transport::start_groups`]) hands to the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupIncoming {
    /// Frames from one peer, in the order that peer's transport sent them on one
    /// connection: every whole frame a read brought in, at most
    /// [`crate::TransportConfig::incoming_batch_messages_max`] frames, never empty.
    Frames {
        /// The sending peer (every message's `from`).
        from: NodeId,
        /// The frames, in order.
        frames: Vec<Envelope>,
    },
    /// A snapshot of `group` received whole into that group's store (see
    /// [`GroupSnapshotStores`]), checked as [`crate::Incoming::Snapshot`] is.
    Snapshot {
        /// The sending peer.
        from: NodeId,
        /// The group it belongs to.
        group: GroupId,
        /// The snapshot's index, term and membership, as the sender offered them.
        meta: SnapshotMeta,
        /// The installed file.
        file: SnapshotFile,
    },
}

/// Where a multi-group transport assembles the snapshots it receives: each group's own
/// store (a store holds one partial file at a time, so groups cannot share one). `None`
/// refuses the offer: the group is not (or no longer) hosted here.
pub type GroupSnapshotStores =
    std::sync::Arc<dyn Fn(GroupId) -> Option<SnapshotStore> + Send + Sync>;
