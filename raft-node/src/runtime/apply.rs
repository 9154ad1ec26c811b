//! Applying committed entries: the state machine, the answers to the writes that wait on
//! them, and what is taken at applied points (snapshots, state digests, the
//! fault-injection hook).

use raft_core::{EntryPayload, Index};
use raft_snapshot::SnapshotSource;

use crate::metrics::Metrics;
use crate::store::NodeStore;

use super::{off_task, HostedMachine, Runtime, SnapshotEvent};

impl<S: NodeStore, M: HostedMachine> Runtime<S, M> {
    pub(super) fn apply(&mut self, entries: Vec<raft_core::Entry>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        let mut batch_bytes = 0u64;
        for entry in entries {
            batch_bytes += entry.size_bytes() as u64;
            let response = match &entry.payload {
                // A restored snapshot may be ahead of the log's own snapshot point (a crash
                // between writing the file and compacting): those entries are in it already.
                EntryPayload::Command(_) if entry.index <= self.sm.applied_index() => None,
                EntryPayload::Command(data) => {
                    let response = self.sm.apply(entry.index, data);
                    self.maybe_inject_corruption(entry.index);
                    Some(response)
                }
                EntryPayload::Membership(_) | EntryPayload::Noop => {
                    self.sm.skip_to(entry.index);
                    None
                }
            };
            let interval = self.config.digest_interval_entries;
            // Only when the state is exactly the one after this index (a restored snapshot
            // ahead of the log has no state at the earlier indexes).
            if interval > 0 && entry.index % interval == 0 && self.sm.applied_index() == entry.index
            {
                self.take_digest(entry.index);
            }
            if let Some(p) = self.pending_writes.remove(&entry.index) {
                match response {
                    Some(r) if p.term == entry.term => {
                        let us = p.started.elapsed().as_micros() as u64;
                        self.metrics.proposal_latency.observe_us(us);
                        let _ = p.reply.send(Ok(M::encode_response(&r)));
                    }
                    _ => {
                        // Another leader's entry took this index: ours was never committed.
                        Metrics::add(&self.metrics.proposals_failed, 1);
                        let err = self.leader_error(self.raw.leader());
                        let _ = p.reply.send(Err(err));
                    }
                }
            }
        }
        self.raw.advance_applied(last);
        if self.trigger.on_applied(last, batch_bytes).is_some() {
            self.take_snapshot(last);
        }
    }

    /// Freezes the state (O(1)) and hashes the copy on a blocking thread. At most one digest
    /// is in flight; a point reached while one is still running is skipped and counted, so
    /// a state too large to hash within one interval costs a bounded share of a core.
    fn take_digest(&mut self, index: Index) {
        if self.digest_in_flight {
            Metrics::add(&self.metrics.digests_skipped, 1);
            return;
        }
        self.digest_in_flight = true;
        let frozen = self.sm.freeze();
        let bg = self.bg_tx.clone();
        tokio::task::spawn_blocking(move || {
            // A panicking machine must not leave `digest_in_flight` set for ever.
            let digest = off_task(|| Ok(frozen.digest()));
            let _ = bg.send(SnapshotEvent::Digested { index, digest });
        });
    }

    /// FAULT INJECTION for tests (`--debug-corrupt-apply-at`): makes this replica's state
    /// differ from every other's, once, as a non-deterministic state machine would.
    fn maybe_inject_corruption(&mut self, index: Index) {
        match self.config.debug_corrupt_apply_at {
            Some(at) if index >= at && !self.corrupted => {
                self.corrupted = true;
                self.sm.debug_corrupt(index);
                tracing::warn!(
                    index,
                    "FAULT INJECTION: corrupted this replica's state on purpose"
                );
            }
            _ => {}
        }
    }
}
