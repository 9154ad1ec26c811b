//! [`RawNode`]: one Raft participant as a deterministic state machine.
//!
//! Inputs: [`tick`](RawNode::tick), [`step`](RawNode::step), [`propose`](RawNode::propose),
//! [`read_index`](RawNode::read_index), [`transfer_leader`](RawNode::transfer_leader),
//! [`change_membership`](RawNode::change_membership), and the host's reports
//! [`on_persisted`](RawNode::on_persisted) and [`advance_applied`](RawNode::advance_applied).
//! Output: [`Ready`]. Section numbers refer to the Raft paper (Ongaro and Ousterhout, 2014) and
//! Ongaro's dissertation (2014).

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::config::{Config, ConfigError};
use crate::membership::{ConfChange, Membership, MembershipError, VoteResult};
use crate::message::{ConflictHint, Message, MessageBody};
use crate::mutant::{self, Mutant};
use crate::progress::{Progress, ProgressState};
use crate::raft_log::RaftLog;
use crate::ready::{ReadError, ReadState, Ready};
use crate::rng::SplitMix64;
use crate::storage::{LogStore, StorageError};
use crate::types::{Entry, EntryPayload, HardState, Index, NodeId, Role, SnapshotMeta, Term};

/// Entries scanned at most when computing a conflict hint; past that the hint is less precise
/// (the leader just takes more round trips), never wrong.
const CONFLICT_SCAN_ENTRIES_MAX: u64 = 4096;
/// Heartbeat rounds remembered for lease accounting.
const HEARTBEAT_ROUNDS_TRACKED_MAX: usize = 1024;

/// Why the node could not be created or could not read its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The configuration is invalid.
    Config(ConfigError),
    /// The log could not be read.
    Storage(StorageError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(e) => e.fmt(f),
            Error::Storage(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Storage(e)
    }
}

/// Identifies an appended entry: it is committed if and only if the entry applied at `index`
/// has `term`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProposalId {
    /// Log index of the entry.
    pub index: Index,
    /// Term of the entry.
    pub term: Term,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// Why a proposal was refused. Nothing was appended.
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader` is where to retry, if known.
    /// This node is not the leader.
    NotLeader {
        /// Where to retry, if known.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is under way; retry at the new leader.
    TransferInProgress,
    /// Too many bytes are proposed and not yet committed; retry later.
    Busy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// Why a membership change was refused. Nothing was appended.
pub enum ChangeError {
    /// This node is not the leader.
    NotLeader {
        /// Where to retry, if known.
        leader: Option<NodeId>,
    },
    /// The leader has not yet committed an entry of its own term. Changing membership before
    /// that can lose a committed configuration (the single-server-change bug).
    NotReady,
    /// A previous change has not been committed yet (at most one in flight).
    ChangeInProgress,
    /// A leadership transfer is under way.
    TransferInProgress,
    /// The change itself is invalid.
    Invalid(MembershipError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// Why a leadership transfer was refused.
pub enum TransferError {
    /// This node is not the leader.
    NotLeader {
        /// Where to retry, if known.
        leader: Option<NodeId>,
    },
    /// The target is not a voter of the current configuration.
    NotAVoter,
}

/// A snapshot of the node's consensus state, for status views.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// Whom it voted for in `term`.
    pub vote: Option<NodeId>,
    /// The leader it follows, if known.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: Index,
    /// Applied index (as reported by the host).
    pub applied: Index,
    /// Highest index reported durable.
    pub persisted: Index,
    /// First index held in the log.
    pub first_index: Index,
    /// Last index held in the log.
    pub last_index: Index,
    /// Last index covered by the latest snapshot.
    pub snapshot_index: Index,
    /// The configuration in force.
    pub membership: Membership,
    /// The leader's view of each follower (empty on other roles).
    pub peers: Vec<PeerStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// The leader's view of one follower.
pub struct PeerStatus {
    /// The follower.
    pub id: NodeId,
    /// Highest index known to match the leader's log.
    pub match_index: Index,
    /// Next index to send.
    pub next_index: Index,
    /// `probe`, `replicate` or `snapshot`.
    pub state: &'static str,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
}

struct Transfer {
    target: NodeId,
    elapsed_ticks: u32,
    timeout_now_sent: bool,
}

/// A linearizable read waiting for its leadership confirmation.
struct PendingRead {
    ctx: u64,
    origin: NodeId,
    index: Index,
    seq: u64,
}

/// One Raft node. `S` is the log it reads; the host writes it (see [`Ready`]).
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

    /// Configurations in log order: the latest one at or below `applied`, then every later one.
    /// The last is in force (a configuration takes effect when appended).
    configs: Vec<(Index, Membership)>,

    ticks: u64,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,

    votes: BTreeMap<NodeId, bool>,

    progress: BTreeMap<NodeId, Progress>,
    term_start_index: Index,
    uncommitted: VecDeque<(Index, usize)>,
    uncommitted_bytes: usize,
    transfer: Option<Transfer>,
    needs_broadcast: bool,
    commit_broadcast: bool,

    read_seq: u64,
    read_broadcast_needed: bool,
    heartbeat_rounds: VecDeque<(u64, u64)>,
    lease_until_tick: u64,
    /// Set once this leader started a transfer: a TimeoutNow may reach the target at any later
    /// moment, even after the transfer was abandoned, and the target's election bypasses the
    /// voters' lease, so this leader must not serve lease reads again in its term.
    lease_forfeited: bool,
    reads_unconfirmed: VecDeque<PendingRead>,
    reads_awaiting_term_commit: VecDeque<(u64, NodeId)>,
    reads_awaiting_apply: Vec<(u64, Index)>,
    reads_forwarded: VecDeque<(u64, u64)>,
    read_states: Vec<ReadState>,

    persist_seq_next: u64,
    /// Readies handed out whose writes are not yet reported durable: (seq, last index written),
    /// the index lowered whenever a later write cuts the log below it.
    persist_pending: VecDeque<(u64, Index)>,
    persisted_index: Index,
    hard_state_written: HardState,

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
        let mut configs = vec![(snapshot.index, snapshot.membership.clone())];
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
            configs,
            ticks: 0,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            term_start_index: 0,
            uncommitted: VecDeque::new(),
            uncommitted_bytes: 0,
            transfer: None,
            needs_broadcast: false,
            commit_broadcast: false,
            read_seq: 0,
            read_broadcast_needed: false,
            heartbeat_rounds: VecDeque::new(),
            lease_until_tick: 0,
            lease_forfeited: false,
            reads_unconfirmed: VecDeque::new(),
            reads_awaiting_term_commit: VecDeque::new(),
            reads_awaiting_apply: Vec::new(),
            reads_forwarded: VecDeque::new(),
            read_states: Vec::new(),
            persist_seq_next: 1,
            persist_pending: VecDeque::new(),
            persisted_index: last,
            hard_state_written: HardState {
                commit,
                ..hard_state
            },
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
        self.persisted_index
    }
    /// The term of the entry at `index`, if this node holds it (or it is the snapshot's).
    pub fn log_term(&self, index: Index) -> Option<Term> {
        self.log.term(index).ok()
    }
    /// The configuration in force (the latest appended).
    pub fn membership(&self) -> &Membership {
        &self.configs.last().expect("configs is never empty").1
    }
    /// The configuration as of the applied index: what a snapshot taken now must record.
    pub fn applied_membership(&self) -> &Membership {
        let pos = self
            .configs
            .iter()
            .rposition(|(i, _)| *i <= self.applied)
            .unwrap_or(0);
        &self.configs[pos].1
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

    /// The consensus state and, on a leader, each follower's progress: the status view.
    pub fn status(&self) -> Status {
        let peers = self
            .progress
            .iter()
            .map(|(&id, p)| PeerStatus {
                id,
                match_index: p.match_index,
                next_index: p.next_index,
                state: match p.state {
                    ProgressState::Probe => "probe",
                    ProgressState::Replicate => "replicate",
                    ProgressState::Snapshot { .. } => "snapshot",
                },
                recent_active: p.recent_active,
            })
            .collect();
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            commit: self.commit,
            applied: self.applied,
            persisted: self.persisted_index,
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            snapshot_index: self.log.snapshot_meta().index,
            membership: self.membership().clone(),
            peers,
        }
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
        }
    }

    fn promotable(&self) -> bool {
        self.membership().is_voter(self.id)
    }

    fn peers(&self) -> Vec<NodeId> {
        self.progress.keys().copied().collect()
    }

    fn pending_reads(&self) -> usize {
        self.reads_unconfirmed.len()
            + self.reads_awaiting_term_commit.len()
            + self.reads_awaiting_apply.len()
            + self.reads_forwarded.len()
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
        if let Some(transfer) = &mut self.transfer {
            transfer.elapsed_ticks += 1;
            if transfer.elapsed_ticks >= self.config.election_timeout_ticks_max {
                // The target did not take over in time: resume normal service.
                self.transfer = None;
            }
        }
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
            MessageBody::ReadIndex { ctx } => {
                if self.role == Role::Leader && self.pending_reads() < self.config.pending_reads_max
                {
                    self.leader_read(ctx, m.from);
                } else {
                    self.send(m.from, MessageBody::ReadIndexResponse { ctx, index: None });
                }
            }
            MessageBody::ReadIndexResponse { ctx, index } => {
                if let Some(pos) = self.reads_forwarded.iter().position(|&(c, _)| c == ctx) {
                    self.reads_forwarded.remove(pos);
                    match index {
                        Some(index) => self.reads_awaiting_apply.push((ctx, index)),
                        None => self.read_states.push(ReadState {
                            ctx,
                            result: Err(ReadError::NotLeader { leader: None }),
                        }),
                    }
                }
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

    /// Proposes an application command. On success the command is appended to the leader's log;
    /// it is committed once an entry with the returned index and term is applied.
    pub fn propose(&mut self, command: Bytes) -> Result<ProposalId, ProposeError> {
        self.check_can_append()?;
        let entry_bytes = 24 + command.len();
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + entry_bytes > self.config.uncommitted_bytes_max
        {
            return Err(ProposeError::Busy);
        }
        let id = self.append_leader_entry(EntryPayload::Command(command));
        self.uncommitted.push_back((id.index, entry_bytes));
        self.uncommitted_bytes += entry_bytes;
        Ok(id)
    }

    fn check_can_append(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        Ok(())
    }

    /// Changes the membership. A change of at most one voter is made in one step; anything
    /// larger goes through a joint configuration (C_old,new, then C_new appended automatically
    /// once the joint one commits).
    pub fn change_membership(&mut self, changes: &[ConfChange]) -> Result<ProposalId, ChangeError> {
        self.check_can_append().map_err(|e| match e {
            ProposeError::NotLeader { leader } => ChangeError::NotLeader { leader },
            _ => ChangeError::TransferInProgress,
        })?;
        if self.commit < self.term_start_index
            && !mutant::active(Mutant::MembershipChangeBeforeTermCommit)
        {
            return Err(ChangeError::NotReady);
        }
        let (latest_index, current) = self.configs.last().expect("configs is never empty");
        if *latest_index > self.commit || current.is_joint() {
            return Err(ChangeError::ChangeInProgress);
        }
        let target = current
            .apply_changes(changes)
            .map_err(ChangeError::Invalid)?;
        let next = if current.voter_difference(&target) <= 1 {
            target
        } else {
            Membership {
                voters: target.voters,
                voters_outgoing: current.voters.clone(),
                learners: target.learners,
            }
        };
        Ok(self.append_leader_entry(EntryPayload::Membership(next)))
    }

    /// Hands leadership to `to` (§3.10): proposals are refused while the target catches up,
    /// then it is told to campaign at once. Any leader lease ends here.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.id {
            return Ok(());
        }
        if !self.membership().voters.contains(&to) || !self.progress.contains_key(&to) {
            return Err(TransferError::NotAVoter);
        }
        self.transfer = Some(Transfer {
            target: to,
            elapsed_ticks: 0,
            timeout_now_sent: false,
        });
        self.lease_until_tick = 0;
        self.lease_forfeited = true;
        self.maybe_send_timeout_now();
        if self.transfer.as_ref().is_some_and(|t| !t.timeout_now_sent) {
            self.send_append(to, true);
        }
        Ok(())
    }

    /// Asks for a linearizable read. Its outcome arrives as a [`ReadState`] with this `ctx`
    /// in a later [`Ready`]: on a follower the read is confirmed by the leader (§6.4).
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ReadError> {
        if self.pending_reads() >= self.config.pending_reads_max {
            return Err(ReadError::Busy);
        }
        if self.role == Role::Leader {
            self.leader_read(ctx, self.id);
            return Ok(());
        }
        match self.leader {
            Some(leader) => {
                self.send(leader, MessageBody::ReadIndex { ctx });
                self.reads_forwarded.push_back((ctx, self.ticks));
                Ok(())
            }
            None => Err(ReadError::NotLeader { leader: None }),
        }
    }

    /// Reports that every write of the Readies up to `seq` is durable.
    pub fn on_persisted(&mut self, seq: u64) {
        while let Some(&(s, last)) = self.persist_pending.front() {
            if s > seq {
                break;
            }
            self.persist_pending.pop_front();
            self.persisted_index = self.persisted_index.max(last);
        }
        debug_assert!(self.persisted_index <= self.log.last_index());
        if self.role == Role::Leader {
            self.maybe_commit();
        }
        self.check_invariants();
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
        if let Some(pos) = self.configs.iter().rposition(|(i, _)| *i <= index) {
            self.configs.drain(..pos);
        }
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
            || self.read_broadcast_needed
            || self.log.has_unstable()
            || self.hard_state() != self.hard_state_written
            || !self.messages.is_empty()
            || !self.messages_after_persist.is_empty()
            || !self.read_states.is_empty()
            || self.commit > self.apply_handed_out
            || self
                .reads_awaiting_apply
                .iter()
                .any(|&(_, i)| i <= self.applied)
    }

    /// Takes the next batch of work. See [`Ready`] for what the host must do with it.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            if self.needs_broadcast {
                self.bcast_append();
            }
            if self.read_broadcast_needed {
                self.bcast_heartbeat();
            }
        }
        self.needs_broadcast = false;
        self.commit_broadcast = false;

        let applied = self.applied;
        let mut read_states = std::mem::take(&mut self.read_states);
        self.reads_awaiting_apply.retain(|&(ctx, index)| {
            if index <= applied {
                read_states.push(ReadState {
                    ctx,
                    result: Ok(index),
                });
                false
            } else {
                true
            }
        });

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
        let hard_state_changed = hard_state != self.hard_state_written;
        self.hard_state_written = hard_state;
        let messages_after_persist = std::mem::take(&mut self.messages_after_persist);
        let seq = if snapshot.is_some()
            || !entries.is_empty()
            || hard_state_changed
            || !messages_after_persist.is_empty()
        {
            let seq = self.persist_seq_next;
            self.persist_seq_next += 1;
            self.persist_pending.push_back((seq, last_index));
            seq
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

    // ----- roles -----------------------------------------------------------------------

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_timeout = self.rng.range(
            self.config.election_timeout_ticks_min as u64,
            self.config.election_timeout_ticks_max as u64,
        ) as u32;
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(
            term >= self.term,
            "term going backwards: {} -> {term}",
            self.term
        );
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        if self.role == Role::Leader {
            self.step_down_as_leader();
        }
        if self.leader != leader {
            self.fail_forwarded_reads();
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.reset_election_timer();
    }

    fn step_down_as_leader(&mut self) {
        self.progress.clear();
        self.transfer = None;
        self.lease_until_tick = 0;
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        self.needs_broadcast = false;
        self.read_broadcast_needed = false;
        self.heartbeat_rounds.clear();
        let unconfirmed: Vec<(u64, NodeId)> = self
            .reads_unconfirmed
            .drain(..)
            .map(|r| (r.ctx, r.origin))
            .chain(self.reads_awaiting_term_commit.drain(..))
            .collect();
        for (ctx, origin) in unconfirmed {
            if origin == self.id {
                self.read_states.push(ReadState {
                    ctx,
                    result: Err(ReadError::LeadershipLost),
                });
            } else {
                self.send(origin, MessageBody::ReadIndexResponse { ctx, index: None });
            }
        }
    }

    fn fail_forwarded_reads(&mut self) {
        for (ctx, _) in self.reads_forwarded.drain(..) {
            self.read_states.push(ReadState {
                ctx,
                result: Err(ReadError::LeadershipLost),
            });
        }
    }

    fn expire_forwarded_reads(&mut self) {
        let deadline_ticks = 2 * self.config.election_timeout_ticks_max as u64;
        while let Some(&(ctx, sent)) = self.reads_forwarded.front() {
            if self.ticks - sent < deadline_ticks {
                break;
            }
            self.reads_forwarded.pop_front();
            self.read_states.push(ReadState {
                ctx,
                result: Err(ReadError::Timeout),
            });
        }
    }

    /// A message from the current term's leader: follow it.
    fn accept_leader(&mut self, leader: NodeId) {
        if self.role != Role::Follower || self.leader != Some(leader) {
            self.become_follower(self.term, Some(leader));
        }
        self.election_elapsed = 0;
    }

    /// Whether this node has heard from a leader recently enough that it must not help elect
    /// another (check-quorum's lease; with lease reads also the first election timeout after a
    /// restart, since a restarted node cannot know whose lease it had promised).
    fn in_leader_lease(&self) -> bool {
        if !self.config.check_quorum {
            return false;
        }
        let min = self.config.election_timeout_ticks_min;
        (self.leader.is_some() && self.election_elapsed < min)
            || (self.config.lease_read && self.ticks < min as u64)
    }

    fn campaign(&mut self, pre_vote: bool, leadership_transfer: bool) {
        let term = if pre_vote {
            self.fail_forwarded_reads();
            self.role = Role::PreCandidate;
            self.leader = None;
            self.votes.clear();
            self.reset_election_timer();
            self.term + 1
        } else {
            self.fail_forwarded_reads();
            self.term += 1;
            self.vote = Some(self.id);
            self.role = Role::Candidate;
            self.leader = None;
            self.votes.clear();
            self.reset_election_timer();
            self.term
        };
        self.votes.insert(self.id, true);
        if self.poll() == VoteResult::Won {
            if pre_vote {
                self.campaign(false, leadership_transfer);
            } else {
                self.become_leader();
            }
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        let membership = self.membership();
        let voters: Vec<NodeId> = membership
            .voters
            .iter()
            .chain(membership.voters_outgoing.iter())
            .copied()
            .filter(|&v| v != self.id)
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for voter in voters {
            if !seen.insert(voter) {
                continue;
            }
            self.send_with_term(
                voter,
                term,
                MessageBody::RequestVote {
                    pre_vote,
                    last_log_index,
                    last_log_term,
                    leadership_transfer,
                },
            );
        }
    }

    fn poll(&self) -> VoteResult {
        self.membership()
            .vote_result(|id| self.votes.get(&id).copied())
    }

    fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        assert_eq!(
            self.vote,
            Some(self.id),
            "a leader has voted for itself in its term"
        );
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.transfer = None;
        self.lease_until_tick = 0;
        self.lease_forfeited = false;
        self.heartbeat_rounds.clear();
        let next = self.log.last_index() + 1;
        self.progress = self
            .membership()
            .nodes()
            .into_iter()
            .filter(|&id| id != self.id)
            .map(|id| (id, Progress::new(next)))
            .collect();
        // §5.4.2 / §8: a new leader cannot count replicas of older terms' entries; its no-op
        // commits them, and tells it the commit index for reads.
        let noop = self.append_leader_entry(EntryPayload::Noop);
        self.term_start_index = noop.index;
        self.maybe_commit();
    }

    fn append_leader_entry(&mut self, payload: EntryPayload) -> ProposalId {
        let id = ProposalId {
            index: self.log.last_index() + 1,
            term: self.term,
        };
        self.append_to_log(vec![Entry {
            index: id.index,
            term: id.term,
            payload,
        }]);
        self.needs_broadcast = true;
        id
    }

    /// Every append to the log goes through here: it keeps the configuration list and the
    /// durability bookkeeping in step with the log.
    fn append_to_log(&mut self, entries: Vec<Entry>) {
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
            self.clamp_persisted(cut - 1);
        }
        let before = self.configs.len();
        self.configs.retain(|(i, _)| *i < first);
        assert!(
            !self.configs.is_empty(),
            "the committed configuration was truncated"
        );
        let changed = self.configs.len() != before || !new_configs.is_empty();
        self.configs.extend(new_configs);
        if changed {
            self.on_membership_changed();
        }
    }

    fn clamp_persisted(&mut self, index: Index) {
        self.persisted_index = self.persisted_index.min(index);
        for (_, last) in self.persist_pending.iter_mut() {
            *last = (*last).min(index);
        }
    }

    fn on_membership_changed(&mut self) {
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
        let voters = self.membership().voters.clone();
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| !voters.contains(&t.target))
        {
            self.transfer = None;
        }
    }

    // ----- replication (leader) --------------------------------------------------------

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.term, body);
    }

    /// Queues a message. Whatever tells another node about this node's durable state (a vote,
    /// a vote request carrying the self-vote, an append acknowledgement) waits until that state
    /// is durable; everything else goes at once.
    fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
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

    fn bcast_append(&mut self) {
        let allow_empty = self.commit_broadcast;
        for id in self.peers() {
            let mut sent = self.send_append(id, allow_empty);
            // Pipeline as far as the in-flight window allows.
            while sent {
                sent = self.send_append(id, false);
            }
        }
    }

    fn bcast_heartbeat(&mut self) {
        self.read_broadcast_needed = false;
        self.read_seq += 1;
        if self.heartbeat_rounds.len() >= HEARTBEAT_ROUNDS_TRACKED_MAX {
            self.heartbeat_rounds.pop_front();
        }
        self.heartbeat_rounds.push_back((self.read_seq, self.ticks));
        let read_seq = self.read_seq;
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
    fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
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

    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let meta = self.log.snapshot_meta();
        let ticks = self.ticks;
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.become_snapshot(meta.index, ticks);
        }
        self.send(to, MessageBody::InstallSnapshot { meta });
        false
    }

    fn handle_append_response(
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
                ProgressState::Replicate => index <= pr.match_index,
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

    fn handle_heartbeat_response(&mut self, from: NodeId, read_seq: u64) -> Result<(), Error> {
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

    fn maybe_send_timeout_now(&mut self) {
        let last = self.log.last_index();
        let Some(transfer) = &self.transfer else {
            return;
        };
        if transfer.timeout_now_sent {
            return;
        }
        let target = transfer.target;
        if self
            .progress
            .get(&target)
            .is_some_and(|p| p.match_index == last)
        {
            if let Some(t) = &mut self.transfer {
                t.timeout_now_sent = true;
            }
            self.send(target, MessageBody::TimeoutNow);
        }
    }

    /// The highest value a quorum has reached: this node's `own`, each follower's `of_peer`.
    fn quorum_value(&self, own: u64, of_peer: impl Fn(&Progress) -> u64) -> u64 {
        self.membership().committed_index(|peer| {
            if peer == self.id {
                own
            } else {
                self.progress.get(&peer).map_or(0, &of_peer)
            }
        })
    }

    fn maybe_commit(&mut self) {
        let quorum_index = self.quorum_value(self.persisted_index, |p| p.match_index);
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
        while self
            .uncommitted
            .front()
            .is_some_and(|&(i, _)| i <= quorum_index)
        {
            let (_, bytes) = self.uncommitted.pop_front().expect("checked");
            self.uncommitted_bytes -= bytes;
        }
        if self.commit >= self.term_start_index {
            let waiting: Vec<(u64, NodeId)> = self.reads_awaiting_term_commit.drain(..).collect();
            for (ctx, origin) in waiting {
                self.leader_read(ctx, origin);
            }
        }
        let (config_index, config) = self.configs.last().expect("configs is never empty").clone();
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

    fn commit_to(&mut self, index: Index) {
        assert!(index > self.commit, "commit going backwards");
        assert!(
            index <= self.log.last_index(),
            "commit {index} beyond last index {}",
            self.log.last_index()
        );
        self.commit = index;
    }

    // ----- replication (follower) ------------------------------------------------------

    fn handle_append(
        &mut self,
        from: NodeId,
        prev: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        leader_commit: Index,
    ) -> Result<(), Error> {
        if prev < self.commit {
            // Everything up to our commit index already matches the leader.
            let index = self.commit;
            self.send(
                from,
                MessageBody::AppendEntriesResponse {
                    index,
                    reject: None,
                },
            );
            return Ok(());
        }
        if self.log.matches(prev, prev_term) {
            let last_new = prev + entries.len() as Index;
            // Skip entries already held with the same term: a stale or duplicated message must
            // never truncate the log (§5.3; etcd's findConflict).
            let conflict = entries
                .iter()
                .position(|e| !self.log.matches(e.index, e.term));
            if let Some(pos) = conflict {
                let mut entries = entries;
                let tail = entries.split_off(pos);
                assert!(
                    tail[0].index > self.commit,
                    "conflict with a committed entry"
                );
                self.append_to_log(tail);
            }
            let commit = leader_commit.min(last_new);
            if commit > self.commit {
                self.commit_to(commit);
            }
            self.send(
                from,
                MessageBody::AppendEntriesResponse {
                    index: last_new,
                    reject: None,
                },
            );
            return Ok(());
        }
        let last = self.log.last_index();
        let hint = if prev > last {
            ConflictHint {
                term: None,
                index: last + 1,
            }
        } else {
            let term = self.log.term(prev)?;
            let floor = (self.commit + 1).max(self.log.first_index());
            let mut first = prev;
            let mut scanned = 0;
            while first > floor
                && scanned < CONFLICT_SCAN_ENTRIES_MAX
                && self.log.term(first - 1) == Ok(term)
            {
                first -= 1;
                scanned += 1;
            }
            ConflictHint {
                term: Some(term),
                index: first,
            }
        };
        self.send(
            from,
            MessageBody::AppendEntriesResponse {
                index: prev,
                reject: Some(hint),
            },
        );
        Ok(())
    }

    fn handle_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) {
        if meta.index <= self.commit {
            let index = self.commit;
            self.send(
                from,
                MessageBody::AppendEntriesResponse {
                    index,
                    reject: None,
                },
            );
            return;
        }
        let index = meta.index;
        if self.log.matches(meta.index, meta.term) {
            // Figure 13, step 6: the log already holds the snapshot's last entry, so keep the
            // entries after it and commit up to it; they are applied from the log.
            self.commit_to(meta.index);
        } else {
            self.log.restore(meta.clone());
            self.configs = vec![(meta.index, meta.membership.clone())];
            self.commit = meta.index;
            self.applied = meta.index;
            self.apply_handed_out = meta.index;
            self.clamp_persisted(meta.index);
            self.on_membership_changed();
        }
        self.send(
            from,
            MessageBody::AppendEntriesResponse {
                index,
                reject: None,
            },
        );
    }

    // ----- elections -------------------------------------------------------------------

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        last_index: Index,
        last_term: Term,
    ) {
        let up_to_date = (last_term, last_index) >= (self.log.last_term(), self.log.last_index())
            || mutant::active(Mutant::VoteWithoutLogCheck);
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && term > self.term);
        if can_vote && up_to_date {
            if !pre_vote {
                self.vote = Some(from);
                self.election_elapsed = 0;
            }
            // A granted pre-vote answers in the term it was asked for.
            self.send_with_term(
                from,
                term,
                MessageBody::RequestVoteResponse {
                    pre_vote,
                    granted: true,
                },
            );
        } else {
            self.send(
                from,
                MessageBody::RequestVoteResponse {
                    pre_vote,
                    granted: false,
                },
            );
        }
    }

    fn handle_vote_response(&mut self, from: NodeId, pre_vote: bool, granted: bool) {
        let expected = if pre_vote {
            Role::PreCandidate
        } else {
            Role::Candidate
        };
        if self.role != expected {
            return;
        }
        self.votes.insert(from, granted);
        match self.poll() {
            VoteResult::Won if pre_vote => self.campaign(false, false),
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => self.become_follower(self.term, None),
            VoteResult::Pending => {}
        }
    }

    // ----- reads -----------------------------------------------------------------------

    fn leader_read(&mut self, ctx: u64, origin: NodeId) {
        if self.commit < self.term_start_index && !mutant::active(Mutant::ReadBeforeTermCommit) {
            // §6.4: until an entry of its term commits, the leader does not know the commit
            // index of its predecessors.
            self.reads_awaiting_term_commit.push_back((ctx, origin));
            return;
        }
        let lone_voter = {
            let m = self.membership();
            m.voters.len() == 1 && m.voters.contains(&self.id) && !m.is_joint()
        };
        let lease_valid =
            self.config.lease_read && !self.lease_forfeited && self.ticks < self.lease_until_tick;
        if lone_voter || lease_valid {
            let index = self.commit;
            self.confirm_read(ctx, origin, index);
            return;
        }
        self.reads_unconfirmed.push_back(PendingRead {
            ctx,
            origin,
            index: self.commit,
            seq: self.read_seq + 1,
        });
        self.read_broadcast_needed = true;
    }

    fn confirm_read(&mut self, ctx: u64, origin: NodeId, index: Index) {
        if origin == self.id {
            self.reads_awaiting_apply.push((ctx, index));
        } else {
            self.send(
                origin,
                MessageBody::ReadIndexResponse {
                    ctx,
                    index: Some(index),
                },
            );
        }
    }

    /// Confirms the reads whose heartbeat round a quorum has answered, and extends the lease.
    fn process_read_acks(&mut self) {
        let confirmed = self.quorum_value(self.read_seq, |p| p.read_seq_acked);
        while self
            .reads_unconfirmed
            .front()
            .is_some_and(|r| r.seq <= confirmed)
        {
            let r = self.reads_unconfirmed.pop_front().expect("checked");
            self.confirm_read(r.ctx, r.origin, r.index);
        }
        let mut round_tick = None;
        while self
            .heartbeat_rounds
            .front()
            .is_some_and(|&(seq, _)| seq <= confirmed)
        {
            round_tick = self.heartbeat_rounds.pop_front().map(|(_, tick)| tick);
        }
        if let Some(tick) = round_tick {
            if self.config.lease_read && !self.lease_forfeited {
                // Followers that answered this round will not vote for another node until
                // election_timeout_ticks_min after they received it, which is after it was sent.
                let lease_ticks = (self.config.election_timeout_ticks_min
                    - self.config.lease_ticks_margin) as u64;
                self.lease_until_tick = self.lease_until_tick.max(tick + lease_ticks);
            }
        }
    }

    // ----- invariants ------------------------------------------------------------------

    fn check_invariants(&self) {
        assert!(
            self.commit <= self.log.last_index(),
            "commit beyond the log"
        );
        assert!(self.applied <= self.commit, "applied beyond commit");
        assert!(
            self.persisted_index <= self.log.last_index(),
            "persisted beyond the log"
        );
        assert!(!self.configs.is_empty());
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
