//! [`RawNode`]: one Raft participant as a deterministic state machine.
//!
//! Inputs: [`tick`](RawNode::tick), [`step`](RawNode::step), [`propose`](RawNode::propose),
//! [`read_index`](RawNode::read_index), [`transfer_leader`](RawNode::transfer_leader),
//! [`change_membership`](RawNode::change_membership), and the host's reports
//! [`on_persisted`](RawNode::on_persisted) and [`advance_applied`](RawNode::advance_applied).
//! Output: [`Ready`]. Section numbers refer to the Raft paper (Ongaro and Ousterhout, 2014) and
//! Ongaro's dissertation (2014).

mod config_history;
mod election;
mod errors;
mod follower;
mod persistence;
mod propose;
mod reads;
mod replication;
mod snapshots;
mod status;
#[cfg(test)]
mod tests;
mod transfer;

use std::collections::BTreeMap;

use crate::config::Config;
use crate::membership::Membership;
use crate::message::{Message, MessageBody};
use crate::progress::{Progress, ProgressState};
use crate::raft_log::RaftLog;
use crate::ready::Ready;
use crate::rng::SplitMix64;
use crate::storage::{LogStore, StorageError};
use crate::types::{Entry, EntryPayload, HardState, Index, NodeId, Role, SnapshotMeta, Term};

use config_history::ConfigHistory;
pub use errors::{ChangeError, Error, ProposalId, ProposeError, SnapshotError, TransferError};
use persistence::Persistence;
use propose::Uncommitted;
use reads::Reads;
pub use status::{PeerStatus, Status};
use transfer::Transfer;

/// Entries scanned at most when computing a conflict hint; past that the hint is less precise
/// (the leader just takes more round trips), never wrong.
const CONFLICT_SCAN_ENTRIES_MAX: u64 = 4096;

/// One Raft node. `S` is the log it reads; the host writes it (see [`Ready`]).
///
/// Its state is grouped by concern: the log and the persistent state (term, vote, commit);
/// the configurations in the log (`ConfigHistory`); election timers and votes; the leader's
/// followers (`Progress`), proposals (`Uncommitted`) and leadership transfer
/// (`Transfer`); reads and the lease (`Reads`); what the host has made durable
/// (`Persistence`); and the messages for the next Ready.
pub struct RawNode<S> {
    config: Config,
    id: NodeId,
    rng: SplitMix64,
    log: RaftLog<S>,

    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    commit: Index,
    /// Reported by the host; the state machine reflects every entry up to here.
    applied: Index,
    /// Last index handed out in `committed_entries` (or installed by snapshot).
    apply_handed_out: Index,

    /// The configuration in force at the log's compaction point (or at `applied`, if lower),
    /// then every later one.
    configs: ConfigHistory,
    /// The newest snapshot the host reported built or this node installed (see `snapshots`).
    snapshot_sendable: SnapshotMeta,

    /// Ticks since the node started (its logical clock).
    ticks: u64,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,
    /// Votes received in the current (pre-)campaign.
    votes: BTreeMap<NodeId, bool>,

    /// Leader: each follower's replication state.
    progress: BTreeMap<NodeId, Progress>,
    /// Leader: the index of its term's first entry (its no-op).
    term_start_index: Index,
    /// Leader: proposals not yet committed.
    uncommitted: Uncommitted,
    /// Leader: a leadership transfer under way.
    transfer: Option<Transfer>,
    /// Leader: new entries (or a commit) to send with the next Ready.
    needs_broadcast: bool,
    /// Leader: the commit index advanced; followers that have every entry still hear of it.
    commit_broadcast: bool,

    reads: Reads,
    persistence: Persistence,

    messages: Vec<Message>,
    messages_after_persist: Vec<Message>,
}

impl<S: LogStore> RawNode<S> {
    /// Starts (or restarts) a node from what `store` holds. A fresh cluster's nodes start from
    /// a store whose snapshot metadata holds the initial membership (see
    /// [`MemLog::with_snapshot`](crate::MemLog::with_snapshot)); a node that will be added later
    /// starts with an empty membership and waits to be contacted.
    pub fn new(config: Config, store: S) -> Result<Self, Error> {
        config.validate().map_err(Error::Config)?;
        let hard_state = store.hard_state();
        let snapshot = store.snapshot_meta();
        let (first, last) = (store.first_index(), store.last_index());
        let mut configs = Vec::new();
        // Configurations take effect when appended, so the one in force may be anywhere in the
        // log: scan it once at start.
        let mut next = first.max(snapshot.index + 1);
        while next <= last {
            let batch = store.entries(next, last + 1, 4 << 20)?;
            for entry in &batch {
                if let EntryPayload::Membership(m) = &entry.payload {
                    configs.push((entry.index, m.clone()));
                }
            }
            next += batch.len() as Index;
        }
        let commit = hard_state.commit.clamp(snapshot.index, last);
        let mut history = ConfigHistory::new(snapshot.index, snapshot.membership.clone());
        history.replace_from(snapshot.index + 1, configs);
        let mut rng = SplitMix64::new(config.seed ^ config.id.rotate_left(32));
        let randomized_election_timeout = rng.range(
            config.election_timeout_ticks_min as u64,
            config.election_timeout_ticks_max as u64,
        ) as u32;
        Ok(RawNode {
            id: config.id,
            rng,
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            commit,
            applied: snapshot.index,
            apply_handed_out: snapshot.index,
            configs: history,
            snapshot_sendable: snapshot,
            ticks: 0,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            term_start_index: 0,
            uncommitted: Uncommitted::default(),
            transfer: None,
            needs_broadcast: false,
            commit_broadcast: false,
            reads: Reads::default(),
            persistence: Persistence::new(
                last,
                HardState {
                    commit,
                    ..hard_state
                },
            ),
            messages: Vec::new(),
            messages_after_persist: Vec::new(),
            log: RaftLog::new(store),
            config,
        })
    }

    // ----- accessors -------------------------------------------------------------------

    /// This node's ID.
    pub fn id(&self) -> NodeId {
        self.id
    }
    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }
    /// Whom this node voted for in the current term.
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }
    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
    /// The leader this node follows, if it knows one (itself when leader).
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// The highest index known committed.
    pub fn commit_index(&self) -> Index {
        self.commit
    }
    /// The highest index the host reported applied.
    pub fn applied_index(&self) -> Index {
        self.applied
    }
    /// The last index in the log (including entries not yet handed to the host).
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }
    /// The first index still held as an entry.
    pub fn first_index(&self) -> Index {
        self.log.first_index()
    }
    /// The highest index this node has reported durable and still holds.
    pub fn persisted_index(&self) -> Index {
        self.persistence.persisted_index()
    }
    /// The term of the entry at `index`, if this node holds it (or it is the snapshot's).
    pub fn log_term(&self, index: Index) -> Option<Term> {
        self.log.term(index).ok()
    }
    /// The configuration in force (the latest appended).
    pub fn membership(&self) -> &Membership {
        self.configs.latest().1
    }
    /// The configuration as of the applied index: what a snapshot taken now must record.
    pub fn applied_membership(&self) -> &Membership {
        self.configs.at_or_oldest(self.applied)
    }
    /// The configuration in force at `index` (set by the latest configuration entry at or
    /// below it), for any index from the log's compaction point to its last index; `None`
    /// outside that range. What a snapshot or a compaction at `index` must record.
    pub fn membership_at(&self, index: Index) -> Option<&Membership> {
        if index > self.log.last_index() {
            return None;
        }
        self.configs.at(index)
    }
    /// The metadata of a snapshot of the state at `index`, or of a compaction of the log
    /// through `index` ([`LogWriter::compact_to`](crate::LogWriter::compact_to)): the term of
    /// the entry there and the configuration in force. `None` when this node does not hold
    /// that entry's term or configuration (before the log's compaction point, beyond its end).
    pub fn snapshot_meta_at(&self, index: Index) -> Option<SnapshotMeta> {
        Some(SnapshotMeta {
            index,
            term: self.log.term(index).ok()?,
            membership: self.membership_at(index)?.clone(),
        })
    }
    /// The store, for reading.
    pub fn storage(&self) -> &S {
        &self.log.store
    }
    /// The store, for the host to write what a [`Ready`] asks (and to compact it after a
    /// snapshot). Writing anything else into it breaks the node.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.log.store
    }
    /// The settings this node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(super) fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
        }
    }

    pub(super) fn promotable(&self) -> bool {
        self.membership().is_voter(self.id)
    }

    pub(super) fn peers(&self) -> Vec<NodeId> {
        self.progress.keys().copied().collect()
    }

    // ----- inputs ----------------------------------------------------------------------

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed += 1;
            if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
                self.election_elapsed = 0;
                self.campaign(self.config.pre_vote, false);
            }
        }
        self.expire_forwarded_reads();
        self.check_invariants();
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        self.tick_transfer();
        if self.election_elapsed >= self.config.election_timeout_ticks_min {
            self.election_elapsed = 0;
            if self.config.check_quorum {
                let id = self.id;
                let active = self.membership().has_quorum(|peer| {
                    peer == id || self.progress.get(&peer).is_some_and(|p| p.recent_active)
                });
                for p in self.progress.values_mut() {
                    p.recent_active = false;
                }
                if !active {
                    // §6.2 / CheckQuorum: a leader cut off from a majority stops serving.
                    self.become_follower(self.term, None);
                    return;
                }
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
        }
    }

    /// Feeds a message from another node. Messages for another node or of a stale term are
    /// dropped as Raft requires; only a failed log read is an error.
    pub fn step(&mut self, m: Message) -> Result<(), Error> {
        if m.to != self.id || m.from == self.id {
            return Ok(());
        }
        let result = self.step_inner(m);
        self.check_invariants();
        result
    }

    fn step_inner(&mut self, m: Message) -> Result<(), Error> {
        if m.term > self.term {
            if let MessageBody::RequestVote {
                leadership_transfer,
                ..
            } = m.body
            {
                if !leadership_transfer && self.in_leader_lease() {
                    // §6 / dissertation §4.2.3: a node that hears from a leader ignores
                    // vote requests, so a removed or partitioned node cannot disrupt it.
                    return Ok(());
                }
            }
            match m.body {
                MessageBody::RequestVote { pre_vote: true, .. } => {}
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: true,
                } => {}
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => self.become_follower(m.term, Some(m.from)),
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. }
                    if self.config.check_quorum || self.config.pre_vote =>
                {
                    // A stale leader would otherwise never learn of the newer term: with
                    // pre-vote, nobody bumps its term by asking it for a vote.
                    self.send(m.from, MessageBody::HeartbeatResponse { read_seq: 0 });
                }
                MessageBody::RequestVote { pre_vote: true, .. } => {
                    self.send(
                        m.from,
                        MessageBody::RequestVoteResponse {
                            pre_vote: true,
                            granted: false,
                        },
                    );
                }
                _ => {}
            }
            return Ok(());
        }

        match m.body {
            MessageBody::RequestVote {
                pre_vote,
                last_log_index,
                last_log_term,
                ..
            } => self.handle_vote_request(m.from, m.term, pre_vote, last_log_index, last_log_term),
            MessageBody::RequestVoteResponse { pre_vote, granted } => {
                self.handle_vote_response(m.from, pre_vote, granted)
            }
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                self.accept_leader(m.from);
                self.handle_append(
                    m.from,
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit,
                )?;
            }
            MessageBody::Heartbeat { commit, read_seq } => {
                self.accept_leader(m.from);
                let commit = commit.min(self.log.last_index());
                if commit > self.commit {
                    self.commit_to(commit);
                }
                self.send(m.from, MessageBody::HeartbeatResponse { read_seq });
            }
            MessageBody::InstallSnapshot { meta } => {
                self.accept_leader(m.from);
                self.handle_snapshot(m.from, meta);
            }
            MessageBody::AppendEntriesResponse { index, reject } => {
                if self.role == Role::Leader {
                    self.handle_append_response(m.from, index, reject)?;
                }
            }
            MessageBody::HeartbeatResponse { read_seq } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(m.from, read_seq)?;
                }
            }
            MessageBody::ReadIndex { ctx } => self.handle_read_index(m.from, ctx),
            MessageBody::ReadIndexResponse { ctx, index } => {
                self.handle_read_index_response(ctx, index)
            }
            MessageBody::TimeoutNow => {
                if self.promotable() && self.role != Role::Leader {
                    // §3.10: the transfer target campaigns at once, skipping pre-vote.
                    self.campaign(false, true);
                }
            }
        }
        Ok(())
    }

    /// Reports that the state machine has applied every entry up to `index`.
    pub fn advance_applied(&mut self, index: Index) {
        assert!(
            index <= self.apply_handed_out,
            "applied {index} beyond what was handed out ({})",
            self.apply_handed_out
        );
        if index <= self.applied {
            return;
        }
        self.applied = index;
        // Keep the configuration in force at the log's compaction point and every later one
        // (the host may compact anywhere up to the applied index: `snapshot_meta_at`).
        let compacted_through = self.log.first_index().saturating_sub(1);
        self.configs.on_applied(index.min(compacted_through));
    }

    /// Tells the leader that sending a snapshot to `to` failed, so it probes again.
    pub fn report_snapshot_failure(&mut self, to: NodeId) {
        if let Some(p) = self.progress.get_mut(&to) {
            if matches!(p.state, ProgressState::Snapshot { .. }) {
                p.become_probe();
            }
        }
    }

    // ----- output ----------------------------------------------------------------------

    /// Whether [`ready`](Self::ready) would return work.
    pub fn has_ready(&self) -> bool {
        self.needs_broadcast
            || self.reads.broadcast_needed()
            || self.log.has_unstable()
            || self.persistence.hard_state_changed(&self.hard_state())
            || !self.messages.is_empty()
            || !self.messages_after_persist.is_empty()
            || self.commit > self.apply_handed_out
            || self.reads.has_ready(self.applied)
    }

    /// Takes the next batch of work. See [`Ready`] for what the host must do with it.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            if self.needs_broadcast {
                self.bcast_append();
            }
            if self.reads.broadcast_needed() {
                self.bcast_heartbeat();
            }
        }
        self.needs_broadcast = false;
        self.commit_broadcast = false;

        let read_states = self.reads.take_ready(self.applied);

        // Committed entries are read before the unstable ones are handed out: until the host
        // writes them, the unstable buffer is their only copy.
        let mut committed_entries = Vec::new();
        let apply_from = self.apply_handed_out + 1;
        if self.commit >= apply_from {
            match self.log.entries(
                apply_from,
                self.commit + 1,
                self.config.apply_batch_bytes_max,
            ) {
                Ok(entries) => committed_entries = entries,
                // Committed entries are never compacted before they are applied, so this is a
                // failed disk read: continuing would stall apply forever, so fail loudly.
                Err(e) => panic!(
                    "node {}: cannot read committed entries {apply_from}..={}: {e}",
                    self.id, self.commit
                ),
            }
            if let Some(last) = committed_entries.last() {
                self.apply_handed_out = last.index;
            }
        }

        let last_index = self.log.last_index();
        let (snapshot, entries) = self.log.take_unstable();
        let hard_state = self.hard_state();
        let hard_state_changed = self.persistence.write_hard_state(hard_state);
        let messages_after_persist = std::mem::take(&mut self.messages_after_persist);
        let seq = if snapshot.is_some()
            || !entries.is_empty()
            || hard_state_changed
            || !messages_after_persist.is_empty()
        {
            self.persistence.next_seq(last_index)
        } else {
            0
        };
        Ready {
            seq,
            hard_state: hard_state_changed.then_some(hard_state),
            snapshot,
            entries,
            messages: std::mem::take(&mut self.messages),
            messages_after_persist,
            committed_entries,
            read_states,
        }
    }

    // ----- the log and the configuration --------------------------------------------------

    /// Every append to the log goes through here: it keeps the configuration list and the
    /// durability bookkeeping in step with the log.
    pub(super) fn append_to_log(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first().map(|e| e.index) else {
            return;
        };
        let new_configs: Vec<(Index, Membership)> = entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Membership(m) => Some((e.index, m.clone())),
                _ => None,
            })
            .collect();
        if let Some(cut) = self.log.append(entries) {
            assert!(
                cut > self.commit,
                "node {} truncating committed entry {cut} (commit {})",
                self.id,
                self.commit
            );
            self.persistence.clamp(cut - 1);
        }
        if self.configs.replace_from(first, new_configs) {
            self.on_membership_changed();
        }
    }

    pub(super) fn on_membership_changed(&mut self) {
        if self.role != Role::Leader {
            if !self.promotable() && matches!(self.role, Role::Candidate | Role::PreCandidate) {
                self.become_follower(self.term, None);
            }
            return;
        }
        let nodes = self.membership().nodes();
        self.progress.retain(|id, _| nodes.contains(id));
        let next = self.log.last_index();
        for id in nodes {
            if id != self.id {
                self.progress.entry(id).or_insert_with(|| {
                    let mut p = Progress::new(next);
                    p.recent_active = true;
                    p
                });
            }
        }
        self.abandon_transfer_unless_voter();
    }

    // ----- messages and commit ---------------------------------------------------------

    pub(super) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.term, body);
    }

    /// Queues a message. Whatever tells another node about this node's durable state (a vote,
    /// a vote request carrying the self-vote, an append acknowledgement) waits until that state
    /// is durable; everything else goes at once.
    pub(super) fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        let after_persist = matches!(
            body,
            MessageBody::RequestVote {
                pre_vote: false,
                ..
            } | MessageBody::RequestVoteResponse {
                pre_vote: false,
                ..
            } | MessageBody::AppendEntriesResponse { .. }
        );
        let m = Message {
            from: self.id,
            to,
            term,
            body,
        };
        if after_persist {
            self.messages_after_persist.push(m);
        } else {
            self.messages.push(m);
        }
    }

    pub(super) fn commit_to(&mut self, index: Index) {
        assert!(index > self.commit, "commit going backwards");
        assert!(
            index <= self.log.last_index(),
            "commit {index} beyond last index {}",
            self.log.last_index()
        );
        self.commit = index;
    }

    // ----- invariants ------------------------------------------------------------------

    pub(super) fn check_invariants(&self) {
        assert!(
            self.commit <= self.log.last_index(),
            "commit beyond the log"
        );
        assert!(self.applied <= self.commit, "applied beyond commit");
        assert!(
            self.persistence.persisted_index() <= self.log.last_index(),
            "persisted beyond the log"
        );
        if self.role == Role::Leader {
            assert_eq!(self.leader, Some(self.id));
            assert_eq!(self.vote, Some(self.id));
            assert!(self.term_start_index > 0);
            // The leader's first entry of its term is its own, unless compacted since.
            match self.log.term(self.term_start_index) {
                Ok(t) => assert_eq!(t, self.term, "leader's term-start entry has another term"),
                Err(e) => assert_eq!(e, StorageError::Compacted),
            }
        }
    }
}
