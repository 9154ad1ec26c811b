//! Commit notices: a leader's empty AppendEntries that only carry its new commit index,
//! held back until the client replies of the same loop iteration are written.

use raft_core::{Message, MessageBody};

use crate::store::NodeStore;

use super::{HostedMachine, Runtime};

impl<S: NodeStore, M: HostedMachine> Runtime<S, M> {
    /// Whether a Ready's `messages` may wait until its client replies are written: they all
    /// are empty AppendEntries (a leader telling followers its new commit index; nothing
    /// waits on them but the followers' own apply) and the Ready answers clients. Sent
    /// first, each wakes a follower whose handling competes with the reply for a core; on
    /// two cores that put 20-80 us between a commit and its reply.
    pub(super) fn hold_commit_notices(&self, ready: &raft_core::Ready) -> bool {
        !ready.messages.is_empty()
            && ready.entries.is_empty()
            && ready
                .committed_entries
                .iter()
                .any(|e| self.pending_writes.contains_key(&e.index))
            && ready.messages.iter().all(|m| {
                matches!(&m.body, MessageBody::AppendEntries { entries, .. } if entries.is_empty())
            })
    }

    /// Sends the commit notices held back by `hold_commit_notices`, except those that
    /// `next` (the messages about to be sent) supersede: an AppendEntries to the same peer in
    /// the same term carrying at least the same commit index tells it everything the notice
    /// would, and dropping the notice is what losing it on the network would do. The rest
    /// go before `next`, so each peer gets its messages in the order the core made them. A
    /// node that failed sends nothing more.
    pub(super) fn send_commit_notices_before(&mut self, next: &[Message]) {
        for n in std::mem::take(&mut self.commit_notices) {
            let MessageBody::AppendEntries {
                leader_commit: commit,
                ..
            } = n.body
            else {
                continue;
            };
            let superseded = next.iter().any(|m| {
                m.to == n.to
                    && m.term == n.term
                    && matches!(m.body, MessageBody::AppendEntries { leader_commit, .. } if leader_commit >= commit)
            });
            if !superseded && !self.failed {
                self.transport.send(n);
            }
        }
    }

    pub(super) fn send_commit_notices(&mut self) {
        self.send_commit_notices_before(&[]);
    }
}
