//! What a state machine must offer to be hosted by the node ([`HostedMachine`]), and the
//! views reads are answered from off the runtime task.

use std::sync::Arc;

use bytes::Bytes;
use raft_core::Index;
use raft_snapshot::StateMachine;

/// A state machine the node can host: raft-snapshot's [`StateMachine`] plus what the
/// node's client paths need. The built-in [`crate::kv::KvStateMachine`] is one; a library
/// user embeds the node (log, transport, snapshots, servers) with their own through
/// [`crate::node::RunningNode::start_with`].
///
/// Each command `apply` receives is the bytes the client proposed as they are stored in the
/// log: a postcard [`raft_proto::LogCommand`], the client's exactly-once session (if
/// any) and its `op`. Honouring the session (answering a duplicate `(client_id, seq)` with
/// the cached response) is the machine's part, as [`crate::kv`] shows; a machine that
/// ignores it applies a retried request again.
pub trait HostedMachine: StateMachine + Send + 'static {
    /// Answers a read-only query (`Request::Read`'s `op`) from the current state.
    fn query(&self, op: &[u8]) -> Bytes;
    /// The bytes a client receives for `response`.
    fn encode_response(response: &Self::Response) -> Bytes;
    /// The entry at `index` carried no command (a leader's no-op, a membership change):
    /// the machine's applied index must still reach it, because a snapshot taken right
    /// after is labelled with it and a restored one is checked against it.
    fn skip_to(&mut self, index: Index);
    /// A fresh, empty machine with the same settings, to restore a snapshot into.
    fn empty_like(&self) -> Self;
    /// The estimated bytes the state holds and the bound on them, for the status view's
    /// memory alarm; `(0, 0)` (the default) when the machine keeps no such account.
    fn memory_bytes(&self) -> (u64, u64) {
        (0, 0)
    }
    /// FAULT INJECTION for tests (`--debug-corrupt-apply-at`): make this replica's state
    /// differ from the others'. The default does nothing.
    fn debug_corrupt(&mut self, _index: Index) {}
    /// A cheap copy of the state that reads can be answered from off the runtime task, or
    /// `None` (the default) to answer them on the task with [`HostedMachine::query`]. Worth
    /// it when a copy costs O(1), as the key-value store's persistent maps do: building a
    /// large reply on the task holds up heartbeats (a 512 MiB MGET cost a leader its term).
    fn view(&self) -> Option<Arc<dyn MachineView>> {
        None
    }
    /// On the leader, once a tick while no earlier one is unapplied: an encoded
    /// `LogCommand` the machine wants proposed for its own upkeep (the key-value store's
    /// sweep of expired keys), or `None` (the default). Nobody waits for its answer.
    fn housekeeping(&self) -> Option<Bytes> {
        None
    }
}

/// The state at one applied index, answering reads off the runtime task
/// (see [`HostedMachine::view`]).
pub trait MachineView: Send + Sync + 'static {
    /// As [`HostedMachine::query`].
    fn query(&self, op: &[u8]) -> Bytes;
    /// For callers that know the concrete machine (RESP and HTTP reach into the key-value
    /// store's values without encoding them).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A shared [`MachineView`].
pub type ReadView = Arc<dyn MachineView>;

/// How a read is answered: the encoded response built on the task, or a view to build it
/// from off the task.
pub enum ReadAnswer {
    /// The machine has no view: its [`HostedMachine::query`] answer.
    Bytes(Bytes),
    /// The state at an applied index at or after the read's index.
    View(ReadView),
}
