//! The interface applications implement to be replicated.

use std::io::{self, Read, Write};

use raft_core::Index;

use crate::digest::StateDigest;

/// Why a state machine could not restore itself from a snapshot body.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Reading the body failed. When the reader is a [`crate::SnapshotReader`], a corrupt
    /// chunk surfaces here as an `InvalidData` error wrapping a [`crate::SnapshotError`].
    #[error("reading the snapshot body: {0}")]
    Io(#[from] io::Error),
    /// The bytes were intact but not a state this state machine understands.
    #[error("malformed snapshot body: {0}")]
    Malformed(String),
}

/// A state that can be written out as a snapshot body and digested. Both a live
/// [`StateMachine`] and its [`StateMachine::freeze`]-d copy implement it.
pub trait SnapshotSource {
    /// Writes the whole state to `writer`.
    ///
    /// The output must be a function of the state alone (the same state writes the same
    /// bytes on every node), because [`StateMachine::restore`] of it must reproduce
    /// [`SnapshotSource::digest`] exactly.
    fn snapshot(&self, writer: &mut dyn Write) -> io::Result<()>;

    /// A digest of the logical state, equal on every replica that applied the same entries.
    ///
    /// It must not depend on anything but the state: not on insertion order of a hash map,
    /// allocation addresses or the time. [`crate::DigestHasher`] is the intended hash
    /// (XXH3-128); writing the canonical serialisation into it is the simplest correct
    /// implementation.
    fn digest(&self) -> StateDigest;
}

/// A replicated, deterministic state machine.
///
/// # Determinism
///
/// [`StateMachine::apply`] runs on every replica with the same `(index, command)` sequence
/// and must produce the same state and the same response on each: no clock, no randomness,
/// no iteration over hash maps with per-process seeds, no IO that can succeed on one node
/// and fail on another. A command that is invalid is answered with an error *response*
/// (deterministically), never by panicking or by a different state. Anti-entropy digests
/// ([`crate::compare_digests`]) exist to catch violations of this rule.
///
/// # Snapshots off the apply path
///
/// Taking a snapshot must not stall applying. The node calls [`StateMachine::freeze`] on
/// the apply path, which returns a point-in-time copy; streaming that copy to disk happens
/// on another thread while `apply` continues. The simplest correct `freeze` clones the
/// state (the seed's "assume the state is small enough to copy"); persistent or
/// copy-on-write structures make it O(1), as the example state machine (`examples/kv`) does
/// with an `Arc` and `Arc::make_mut`.
pub trait StateMachine: SnapshotSource {
    /// What a command returns to its client. An associated type rather than `Vec<u8>` so
    /// that in-process callers do not pay for an encoding they do not need.
    type Response;
    /// A point-in-time copy of the state that can be written out on another thread.
    type Frozen: SnapshotSource + Send + 'static;

    /// Applies the committed command at `index`. Indexes arrive strictly increasing, once
    /// each; entries that carry no command (no-ops, membership changes) are not passed here,
    /// so indexes may skip. `command` is borrowed so that the node can apply straight from
    /// the log's buffers without a copy.
    fn apply(&mut self, index: Index, command: &[u8]) -> Self::Response;

    /// Applies a batch of committed commands, appending one response per command to
    /// `responses`, in order. Override it to amortise per-batch costs (one lock, one
    /// transaction); it must be equivalent to calling [`StateMachine::apply`] for each.
    fn apply_batch(&mut self, batch: &[(Index, &[u8])], responses: &mut Vec<Self::Response>) {
        responses.reserve(batch.len());
        for &(index, command) in batch {
            responses.push(self.apply(index, command));
        }
    }

    /// The last index applied, or the index of the snapshot restored, or 0.
    fn applied_index(&self) -> Index;

    /// A copy of the current state for [`SnapshotSource::snapshot`] off the apply path.
    fn freeze(&self) -> Self::Frozen;

    /// Replaces the whole state with the one `reader` yields, as written by
    /// [`SnapshotSource::snapshot`]. On error the state is unspecified and the caller must
    /// discard this instance (restore into a fresh one), which is why restoring into the
    /// live state machine is never done before the snapshot file has been validated.
    fn restore(&mut self, reader: &mut dyn Read) -> Result<(), RestoreError>;
}
