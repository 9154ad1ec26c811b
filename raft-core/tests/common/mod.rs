//! An in-test host for a cluster of `RawNode<MemLog>`s where the test decides everything:
//! which messages are delivered, dropped or held, when a node's writes become durable, when
//! it crashes and restarts, and when it ticks.
//!
//! The host follows the contract of `Ready` (see `raft_core::Ready`) the way `sim::SimNode`
//! does, but with no randomness: a node with `auto_sync` makes every Ready durable as soon as
//! it is handled; without it, writes sit in a journal until `sync` and a crash loses them.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use raft_core::{
    Config, Entry, HardState, Index, MemLog, Membership, Message, MessageBody, NodeId, RawNode,
    ReadState, Role, SnapshotMeta, Term,
};

/// A write the host made to a node's store, durable only once synced.
#[derive(Clone, Debug)]
enum Write {
    HardState(HardState),
    Append(Vec<Entry>),
    InstallSnapshot(SnapshotMeta),
    Compact(SnapshotMeta),
}

fn apply_write(log: &mut MemLog, w: &Write) {
    match w {
        Write::HardState(hs) => log.set_hard_state(*hs),
        Write::Append(entries) => log.append(entries),
        Write::InstallSnapshot(meta) => log.install_snapshot(meta.clone()),
        Write::Compact(meta) => log.compact(meta.clone()),
    }
}

struct PendingSync {
    seq: u64,
    journal_upto: usize,
    messages: Vec<Message>,
}

/// What one Ready asked for, kept so tests can check which list a message travelled in.
#[derive(Clone, Debug)]
pub struct ReadyRecord {
    pub seq: u64,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<SnapshotMeta>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub messages_after_persist: Vec<Message>,
    pub committed: Vec<Entry>,
}

pub struct Host {
    pub id: NodeId,
    pub config: Config,
    pub raw: Option<RawNode<MemLog>>,
    /// What survives a crash.
    pub durable: MemLog,
    journal: Vec<Write>,
    syncs: VecDeque<PendingSync>,
    /// Make each Ready durable at once (the common case); off to model a slow disk.
    pub auto_sync: bool,
    /// Entries applied in this incarnation, in order.
    pub applied: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    pub readies: Vec<ReadyRecord>,
    /// How many Readies carried vote requests: lets `campaign` see a new round start.
    pub campaigns: usize,
}

pub struct Cluster {
    pub hosts: BTreeMap<NodeId, Host>,
    /// Messages in flight, oldest first.
    pub net: Vec<Message>,
    /// Every message ever put on the network, in order.
    pub sent: Vec<Message>,
    /// Every message stepped into a node, in order.
    pub delivered: Vec<Message>,
    /// Directed links that lose everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// The (term, payload) applied at each index by any node: State Machine Safety is checked
    /// on every apply.
    applied_at: BTreeMap<Index, Entry>,
}

/// Production defaults with pre-vote and check-quorum, as `Config::new` gives.
pub fn defaults(_: &mut Config) {}

/// The protocol of the paper: no pre-vote, no check-quorum.
pub fn plain(c: &mut Config) {
    c.pre_vote = false;
    c.check_quorum = false;
}

pub fn is_append(m: &Message) -> bool {
    matches!(m.body, MessageBody::AppendEntries { .. })
}

pub fn is_vote(m: &Message) -> bool {
    matches!(
        m.body,
        MessageBody::RequestVote { .. } | MessageBody::RequestVoteResponse { .. }
    )
}

/// The entries an AppendEntries carries (empty for any other message).
pub fn append_entries(m: &Message) -> &[Entry] {
    match &m.body {
        MessageBody::AppendEntries { entries, .. } => entries,
        _ => &[],
    }
}

pub fn cmd(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A store bootstrapped with `voters`, holding entries of the given terms from index 1 and
/// the hard state `term`.
pub fn store_with_log(voters: &[NodeId], terms: &[Term], term: Term) -> MemLog {
    let mut log = MemLog::with_snapshot(SnapshotMeta {
        membership: Membership::new_voters(voters.iter().copied()),
        ..Default::default()
    });
    let entries: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| Entry {
            index: i as Index + 1,
            term: t,
            payload: raft_core::EntryPayload::Command(cmd(&format!("{i}@{t}"))),
        })
        .collect();
    log.append(&entries);
    log.set_hard_state(HardState {
        term,
        vote: None,
        commit: 0,
    });
    log
}

impl Cluster {
    /// A fresh cluster whose nodes all start from the same initial configuration.
    pub fn new(ids: &[NodeId], tweak: impl Fn(&mut Config)) -> Self {
        let membership = Membership::new_voters(ids.iter().copied());
        let stores = ids
            .iter()
            .map(|&id| {
                let store = MemLog::with_snapshot(SnapshotMeta {
                    membership: membership.clone(),
                    ..Default::default()
                });
                (id, store)
            })
            .collect();
        Self::with_stores(stores, tweak)
    }

    /// A cluster whose nodes start from the given stores (to set up a scenario's logs).
    pub fn with_stores(stores: Vec<(NodeId, MemLog)>, tweak: impl Fn(&mut Config)) -> Self {
        let mut c = Cluster {
            hosts: BTreeMap::new(),
            net: Vec::new(),
            sent: Vec::new(),
            delivered: Vec::new(),
            cut: BTreeSet::new(),
            applied_at: BTreeMap::new(),
        };
        for (id, store) in stores {
            c.add_host(id, store, &tweak);
        }
        c
    }

    /// Adds a node that is not (yet) in any configuration: it waits to be contacted.
    pub fn add_node(&mut self, id: NodeId, tweak: impl Fn(&mut Config)) {
        self.add_host(id, MemLog::new(), tweak);
    }

    fn add_host(&mut self, id: NodeId, store: MemLog, tweak: impl Fn(&mut Config)) {
        let mut config = Config::new(id);
        tweak(&mut config);
        let raw = RawNode::new(config.clone(), store.clone()).expect("valid node");
        self.hosts.insert(
            id,
            Host {
                id,
                config,
                raw: Some(raw),
                durable: store,
                journal: Vec::new(),
                syncs: VecDeque::new(),
                auto_sync: true,
                applied: Vec::new(),
                read_states: Vec::new(),
                readies: Vec::new(),
                campaigns: 0,
            },
        );
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.hosts.keys().copied().collect()
    }

    pub fn host(&mut self, id: NodeId) -> &mut Host {
        self.hosts.get_mut(&id).expect("no such node")
    }

    pub fn node(&self, id: NodeId) -> &RawNode<MemLog> {
        self.hosts[&id].raw.as_ref().expect("node is down")
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut RawNode<MemLog> {
        self.host(id).raw.as_mut().expect("node is down")
    }

    /// Calls into a node (propose, read, change...) and then handles what it asks for.
    pub fn with<R>(&mut self, id: NodeId, f: impl FnOnce(&mut RawNode<MemLog>) -> R) -> R {
        let r = f(self.node_mut(id));
        self.drive(id);
        r
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.hosts[&id].raw.is_some()
    }

    pub fn leaders(&self) -> Vec<NodeId> {
        self.hosts
            .values()
            .filter(|h| h.raw.as_ref().is_some_and(|r| r.is_leader()))
            .map(|h| h.id)
            .collect()
    }

    /// `(index, term)` of every entry a node holds (written to its store).
    pub fn log(&self, id: NodeId) -> Vec<(Index, Term)> {
        self.node(id)
            .storage()
            .all_entries()
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    pub fn log_terms(&self, id: NodeId) -> Vec<Term> {
        self.log(id).into_iter().map(|(_, t)| t).collect()
    }

    // ----- host -------------------------------------------------------------------------

    /// Handles every Ready the node has, as the `Ready` contract asks.
    pub fn drive(&mut self, id: NodeId) {
        for _ in 0..1000 {
            let host = self.hosts.get_mut(&id).expect("no such node");
            let Some(raw) = host.raw.as_mut() else { return };
            if !raw.has_ready() {
                return;
            }
            let ready = raw.ready();
            if let Some(meta) = &ready.snapshot {
                raw.storage_mut().install_snapshot(meta.clone());
                host.journal.push(Write::InstallSnapshot(meta.clone()));
            }
            if !ready.entries.is_empty() {
                raw.storage_mut().append(&ready.entries);
                host.journal.push(Write::Append(ready.entries.clone()));
            }
            if let Some(hs) = ready.hard_state {
                raw.storage_mut().set_hard_state(hs);
                host.journal.push(Write::HardState(hs));
            }
            if ready
                .messages
                .iter()
                .chain(&ready.messages_after_persist)
                .any(|m| matches!(m.body, MessageBody::RequestVote { .. }))
            {
                host.campaigns += 1;
            }
            host.readies.push(ReadyRecord {
                seq: ready.seq,
                hard_state: ready.hard_state,
                snapshot: ready.snapshot.clone(),
                entries: ready.entries.clone(),
                messages: ready.messages.clone(),
                messages_after_persist: ready.messages_after_persist.clone(),
                committed: ready.committed_entries.clone(),
            });
            self.sent.extend(ready.messages.iter().cloned());
            self.net.extend(ready.messages);
            if ready.seq > 0 {
                host.syncs.push_back(PendingSync {
                    seq: ready.seq,
                    journal_upto: host.journal.len(),
                    messages: ready.messages_after_persist,
                });
            } else {
                assert!(ready.messages_after_persist.is_empty());
            }
            let raw = host.raw.as_mut().expect("up");
            for e in &ready.committed_entries {
                match self.applied_at.get(&e.index) {
                    Some(prev) => assert_eq!(
                        prev, e,
                        "State Machine Safety: node {id} applies {e:?} where {prev:?} was applied"
                    ),
                    None => {
                        self.applied_at.insert(e.index, e.clone());
                    }
                }
                host.applied.push(e.clone());
            }
            if let Some(last) = ready.committed_entries.last() {
                raw.advance_applied(last.index);
            }
            host.read_states.extend(ready.read_states);
            if host.auto_sync {
                self.complete_syncs(id, u64::MAX);
            }
        }
        panic!("node {id} never ran out of Readies");
    }

    fn complete_syncs(&mut self, id: NodeId, upto: u64) {
        let host = self.hosts.get_mut(&id).expect("no such node");
        let mut last = None;
        while host.syncs.front().is_some_and(|s| s.seq <= upto) {
            let sync = host.syncs.pop_front().expect("checked");
            for w in host.journal.drain(..sync.journal_upto) {
                apply_write(&mut host.durable, &w);
            }
            for later in host.syncs.iter_mut() {
                later.journal_upto -= sync.journal_upto;
            }
            self.sent.extend(sync.messages.iter().cloned());
            self.net.extend(sync.messages);
            last = Some(sync.seq);
        }
        if let (Some(seq), Some(raw)) = (last, host.raw.as_mut()) {
            raw.on_persisted(seq);
        }
    }

    /// Makes every write so far durable: the messages that waited go out, then the node is
    /// told.
    pub fn sync(&mut self, id: NodeId) {
        self.complete_syncs(id, u64::MAX);
        self.drive(id);
    }

    pub fn pending_syncs(&self, id: NodeId) -> usize {
        self.hosts[&id].syncs.len()
    }

    /// Loses the node's process and every write not yet synced (and the messages waiting
    /// for them).
    pub fn crash(&mut self, id: NodeId) {
        let host = self.host(id);
        host.raw = None;
        host.journal.clear();
        host.syncs.clear();
    }

    /// Restarts the node from what its disk holds.
    pub fn restart(&mut self, id: NodeId) {
        let host = self.host(id);
        assert!(host.raw.is_none(), "restart a crashed node");
        host.raw = Some(RawNode::new(host.config.clone(), host.durable.clone()).expect("restart"));
        host.applied.clear();
        self.drive(id);
    }

    /// Compacts the node's log up to `index` (which it must have applied), on disk too.
    pub fn compact(&mut self, id: NodeId, index: Index) {
        let raw = self.node_mut(id);
        assert!(raw.applied_index() >= index);
        let meta = SnapshotMeta {
            index,
            term: raw.log_term(index).expect("held"),
            membership: raw.applied_membership().clone(),
        };
        raw.storage_mut().compact(meta.clone());
        let host = self.host(id);
        host.journal.push(Write::Compact(meta));
        if host.auto_sync {
            let upto = host.journal.len();
            for w in host.journal.drain(..upto) {
                apply_write(&mut host.durable, &w);
            }
            for s in host.syncs.iter_mut() {
                s.journal_upto = 0;
            }
        }
    }

    // ----- time -------------------------------------------------------------------------

    pub fn tick(&mut self, id: NodeId) {
        if let Some(raw) = self.host(id).raw.as_mut() {
            raw.tick();
            self.drive(id);
        }
    }

    pub fn tick_all(&mut self) {
        for id in self.ids() {
            self.tick(id);
        }
    }

    /// Ticks a node until it starts an election round (a pre-vote or a vote).
    pub fn campaign(&mut self, id: NodeId) {
        let before = self.hosts[&id].campaigns;
        let max = 2 * self.hosts[&id].config.election_timeout_ticks_max;
        for _ in 0..max {
            self.tick(id);
            if self.hosts[&id].campaigns > before {
                return;
            }
        }
        panic!("node {id} did not campaign within {max} ticks");
    }

    /// Campaigns and delivers everything; the node must win.
    pub fn elect(&mut self, id: NodeId) {
        self.campaign(id);
        self.deliver_all();
        assert!(self.node(id).is_leader(), "node {id} was not elected");
    }

    // ----- network ----------------------------------------------------------------------

    /// Drops every message on `from -> to` from now on.
    pub fn cut_one_way(&mut self, from: NodeId, to: NodeId) {
        self.cut.insert((from, to));
    }

    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Steps one message into its destination (unless the link is cut or the node is down)
    /// and handles the Readies that follow.
    pub fn deliver(&mut self, m: Message) {
        if self.cut.contains(&(m.from, m.to))
            || self.hosts.get(&m.to).is_none_or(|h| h.raw.is_none())
        {
            return;
        }
        let to = m.to;
        self.delivered.push(m.clone());
        self.node_mut(to).step(m).expect("step");
        self.drive(to);
    }

    /// Delivers messages, and those they cause, until the network is empty.
    pub fn deliver_all(&mut self) {
        self.deliver_if(|_| true);
    }

    /// Delivers matching messages, and matching messages they cause, in order, until none
    /// is left; others stay in flight.
    pub fn deliver_if(&mut self, pred: impl Fn(&Message) -> bool) {
        for _ in 0..1_000_000 {
            let Some(pos) = self.net.iter().position(&pred) else {
                return;
            };
            let m = self.net.remove(pos);
            self.deliver(m);
        }
        panic!("messages never stopped");
    }

    pub fn drop_if(&mut self, pred: impl Fn(&Message) -> bool) {
        self.net.retain(|m| !pred(m));
    }

    /// Removes matching messages from the network, to deliver (or not) later.
    pub fn take_if(&mut self, pred: impl Fn(&Message) -> bool) -> Vec<Message> {
        let (taken, kept) = std::mem::take(&mut self.net).into_iter().partition(pred);
        self.net = kept;
        taken
    }

    /// Ticks every node (leaders first, so heartbeats go out before followers time out) and
    /// delivers everything, `rounds` times.
    pub fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let mut ids = self.ids();
            ids.sort_by_key(|&id| {
                !self.hosts[&id]
                    .raw
                    .as_ref()
                    .is_some_and(|r| r.role() == Role::Leader)
            });
            for id in ids {
                self.tick(id);
            }
            self.deliver_all();
        }
    }

    /// Propose on `id` and deliver everything.
    pub fn propose(&mut self, id: NodeId, data: &str) -> raft_core::ProposalId {
        let p = self
            .with(id, |r| r.propose(cmd(data)))
            .expect("proposal accepted");
        self.deliver_all();
        p
    }
}
