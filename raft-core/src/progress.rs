//! The leader's view of one follower's replication (Raft §5.3 and the etcd/raft flow control).

use std::collections::VecDeque;

use crate::types::Index;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log matches: one AppendEntries at a time.
    Probe,
    /// The follower is known to match up to `match_index`: AppendEntries are pipelined,
    /// with `next_index` advanced optimistically as they are sent.
    Replicate,
    /// A snapshot at `index` is on its way; nothing else is sent until it is acknowledged.
    Snapshot { index: Index, sent_at_tick: u64 },
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub match_index: Index,
    pub next_index: Index,
    pub state: ProgressState,
    /// In Probe: a probe is outstanding, wait for its answer or the next heartbeat answer.
    pub probe_sent: bool,
    /// In Replicate: the last index of each AppendEntries in flight, oldest first.
    pub inflight: VecDeque<Index>,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// The highest read sequence this follower has echoed in a heartbeat answer.
    pub read_seq_acked: u64,
}

impl Progress {
    pub fn new(next_index: Index) -> Self {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            read_seq_acked: 0,
        }
    }

    pub fn become_probe(&mut self) {
        // After a snapshot, resume right after it rather than at a possibly stale next.
        if let ProgressState::Snapshot { index, .. } = self.state {
            self.next_index = (self.match_index + 1).max(index + 1);
        } else {
            self.next_index = self.match_index + 1;
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_snapshot(&mut self, index: Index, tick: u64) {
        self.state = ProgressState::Snapshot {
            index,
            sent_at_tick: tick,
        };
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Whether the leader must hold back AppendEntries to this follower.
    pub fn is_paused(&self, inflight_max: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= inflight_max,
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Records an acknowledgement of everything up to `index`. Returns whether `match_index`
    /// advanced.
    pub fn on_ack(&mut self, index: Index) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
        }
        if self.next_index < index + 1 {
            self.next_index = index + 1;
        }
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        self.probe_sent = false;
        advanced
    }

    /// Records that an AppendEntries whose last entry is `last_index` went out.
    pub fn on_sent(&mut self, last_index: Option<Index>) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last_index {
                    self.next_index = last + 1;
                    self.inflight.push_back(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => {}
        }
    }
}
