//! The leader's side of replication (§5.3, §5.4.2): AppendEntries pipelined per follower
//! under its flow control ([`Progress`]), snapshots to followers behind the log's start,
//! heartbeats (which also confirm reads), the followers' answers, and the commit rule.

use crate::message::{ConflictHint, MessageBody};
use crate::mutant::{self, Mutant};
use crate::progress::{Progress, ProgressState};
use crate::storage::LogStore;
use crate::types::{EntryPayload, Index, NodeId, Term};
use crate::Membership;

use super::{Error, RawNode, CONFLICT_SCAN_ENTRIES_MAX};

impl<S: LogStore> RawNode<S> {
    pub(super) fn bcast_append(&mut self) {
        let allow_empty = self.commit_broadcast;
        for id in self.peers() {
            let mut sent = self.send_append(id, allow_empty);
            // Pipeline as far as the in-flight window allows.
            while sent {
                sent = self.send_append(id, false);
            }
        }
    }

    pub(super) fn bcast_heartbeat(&mut self) {
        let read_seq = self.reads.start_round(self.ticks);
        let commit = self.commit;
        let targets: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .map(|(&id, p)| (id, commit.min(p.match_index)))
            .collect();
        for (id, commit) in targets {
            self.send(id, MessageBody::Heartbeat { commit, read_seq });
        }
        // A lone voter confirms its own reads.
        self.process_read_acks();
    }

    /// Sends the next AppendEntries (or a snapshot) to `to`, if its flow control allows.
    /// Returns whether anything with entries (or a probe) was sent.
    pub(super) fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let last = self.log.last_index();
        let inflight_max = self.config.inflight_messages_max;
        let Some(pr) = self.progress.get_mut(&to) else {
            return false;
        };
        if pr.is_paused(inflight_max) {
            return false;
        }
        if pr.next_index > last + 1 {
            pr.next_index = last + 1;
        }
        let replicate = pr.state == ProgressState::Replicate;
        let next = pr.next_index;
        if replicate && next > last && !allow_empty {
            return false;
        }
        let prev = next - 1;
        let prev_term = match self.log.term(prev) {
            Ok(t) => t,
            Err(_) => return self.send_snapshot(to),
        };
        let high = (last + 1).min(next + self.config.append_entries_max as Index);
        let entries = match self.log.entries(next, high, self.config.append_bytes_max) {
            Ok(e) => e,
            Err(_) => return self.send_snapshot(to),
        };
        let last_sent = entries.last().map(|e| e.index);
        let pr = self.progress.get_mut(&to).expect("checked above");
        pr.on_sent(last_sent);
        let commit = self.commit;
        self.send(
            to,
            MessageBody::AppendEntries {
                prev_log_index: prev,
                prev_log_term: prev_term,
                entries,
                leader_commit: commit,
            },
        );
        last_sent.is_some() && replicate
    }

    /// Sends `to` the snapshot the core chose (`snapshot_to_send`). Only committed state is
    /// sent: a snapshot the host reported beyond the commit index (a restart whose commit
    /// index lags its snapshot files) waits, as raft-rs' "snapshot temporarily unavailable",
    /// until the commit index passes it; the follower stays in probe and the next heartbeat
    /// answer tries again.
    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let meta = self.snapshot_to_send();
        if meta.index > self.commit {
            return false;
        }
        let ticks = self.ticks;
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.become_snapshot(meta.index, ticks);
        }
        self.send(to, MessageBody::InstallSnapshot { meta });
        false
    }

    pub(super) fn handle_append_response(
        &mut self,
        from: NodeId,
        index: Index,
        reject: Option<ConflictHint>,
    ) -> Result<(), Error> {
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        pr.recent_active = true;
        if let Some(hint) = reject {
            let stale = match pr.state {
                // At or past `next_index`: sent before the leader last moved back, and
                // everything from `next_index` on is being sent again anyway.
                ProgressState::Replicate => index <= pr.match_index || index >= pr.next_index,
                ProgressState::Probe => index + 1 != pr.next_index,
                ProgressState::Snapshot { .. } => true,
            };
            if stale || index <= pr.match_index {
                return Ok(());
            }
            let match_index = pr.match_index;
            let mut next = match hint.term {
                Some(term) => match self.last_index_of_term(term, index.min(last)) {
                    Some(i) => i + 1,
                    None => hint.index,
                },
                None => hint.index,
            };
            next = next.min(index).max(match_index + 1);
            let pr = self.progress.get_mut(&from).expect("present");
            if pr.state == ProgressState::Replicate && hint.term.is_none() {
                // The follower's log ends before `index`: a message of the window was lost or
                // overtaken, not refused. Resend from where its log ends and keep pipelining
                // (TCP's fast retransmit) rather than probe one message per round trip: each
                // AppendEntries still carries its own consistency check, so a mismatch there is
                // answered with a term hint and sends the follower to probe.
                pr.resend_from(next);
                while self.send_append(from, false) {}
                return Ok(());
            }
            pr.become_probe();
            pr.next_index = next;
            self.send_append(from, true);
            return Ok(());
        }

        let advanced = pr.on_ack(index);
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot { index: snap, .. } if pr.match_index >= snap => {
                pr.become_probe();
                pr.become_replicate();
            }
            _ => {}
        }
        if advanced {
            self.maybe_commit();
        }
        self.maybe_send_timeout_now();
        while self.send_append(from, false) {}
        Ok(())
    }

    pub(super) fn handle_heartbeat_response(
        &mut self,
        from: NodeId,
        read_seq: u64,
    ) -> Result<(), Error> {
        let last = self.log.last_index();
        let snapshot_retry_ticks = 4 * self.config.election_timeout_ticks_max as u64;
        let ticks = self.ticks;
        let inflight_max = self.config.inflight_messages_max;
        let Some(pr) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        pr.recent_active = true;
        pr.read_seq_acked = pr.read_seq_acked.max(read_seq);
        match pr.state {
            ProgressState::Probe => pr.probe_sent = false,
            ProgressState::Replicate if pr.inflight.len() >= inflight_max => {
                // Acks may have been lost: free a slot so replication cannot stall for good.
                pr.inflight.pop_front();
            }
            ProgressState::Snapshot { sent_at_tick, .. }
                if ticks - sent_at_tick > snapshot_retry_ticks =>
            {
                pr.become_probe();
            }
            _ => {}
        }
        if pr.match_index < last {
            self.send_append(from, true);
        }
        self.process_read_acks();
        Ok(())
    }

    /// The last index at or below `from` whose term is `term`, if the log holds one.
    fn last_index_of_term(&self, term: Term, from: Index) -> Option<Index> {
        let mut i = from;
        let floor = self.log.first_index().saturating_sub(1);
        let mut scanned = 0;
        while i >= floor && scanned < CONFLICT_SCAN_ENTRIES_MAX {
            match self.log.term(i) {
                Ok(t) if t == term => return Some(i),
                Ok(t) if t < term => return None,
                Ok(_) => {}
                Err(_) => return None,
            }
            if i == 0 {
                break;
            }
            i -= 1;
            scanned += 1;
        }
        None
    }

    /// The highest value a quorum has reached: this node's `own`, each follower's `of_peer`.
    pub(super) fn quorum_value(&self, own: u64, of_peer: impl Fn(&Progress) -> u64) -> u64 {
        self.membership().committed_index(|peer| {
            if peer == self.id {
                own
            } else {
                self.progress.get(&peer).map_or(0, &of_peer)
            }
        })
    }

    pub(super) fn maybe_commit(&mut self) {
        let quorum_index = self.quorum_value(self.persistence.persisted_index(), |p| p.match_index);
        if quorum_index <= self.commit {
            return;
        }
        // §5.4.2: only an entry of the leader's own term is committed by counting replicas.
        if self.log.term(quorum_index) != Ok(self.term)
            && !mutant::active(Mutant::CommitEarlierTermByCount)
        {
            return;
        }
        self.commit_to(quorum_index);
        self.commit_broadcast = true;
        self.needs_broadcast = true;
        self.uncommitted.release_through(quorum_index);
        if self.commit >= self.term_start_index {
            for (ctx, origin) in self.reads.take_awaiting_term_commit() {
                self.leader_read(ctx, origin);
            }
        }
        let (config_index, config) = self.configs.latest();
        let config = config.clone();
        if config_index <= self.commit {
            if config.is_joint() {
                // The joint configuration is committed: move on to C_new (§6).
                let leave = Membership {
                    voters: config.voters.clone(),
                    voters_outgoing: Default::default(),
                    learners: config.learners.clone(),
                };
                self.append_leader_entry(EntryPayload::Membership(leave));
            } else if !config.is_voter(self.id) {
                // Removed, and C_new is committed: tell followers the commit index, then step
                // down so that the remaining voters elect a leader among themselves.
                self.bcast_append();
                self.become_follower(self.term, None);
            }
        }
    }
}
