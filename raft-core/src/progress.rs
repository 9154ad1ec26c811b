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

    /// In Replicate: the messages in flight from `next_index` on are lost; send again from
    /// there, with the whole window free.
    pub fn resend_from(&mut self, next_index: Index) {
        assert_eq!(self.state, ProgressState::Replicate);
        assert!(
            next_index > self.match_index,
            "resending what the follower holds"
        );
        self.next_index = next_index;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn replicating(match_index: Index) -> Progress {
        let mut p = Progress::new(1);
        p.match_index = match_index;
        p.become_replicate();
        p
    }

    #[test]
    fn a_probe_sends_one_message_then_waits_for_its_answer() {
        let mut p = Progress::new(5);
        assert_eq!(
            (p.state, p.next_index, p.match_index),
            (ProgressState::Probe, 5, 0)
        );
        assert!(!p.is_paused(8));
        p.on_sent(Some(7));
        // A probe does not move next_index: the follower may still refuse it.
        assert_eq!(p.next_index, 5);
        assert!(p.is_paused(8));
        assert!(p.on_ack(7));
        assert_eq!((p.match_index, p.next_index), (7, 8));
        assert!(!p.is_paused(8), "an answer releases the probe");
    }

    #[test]
    fn replication_pipelines_up_to_the_inflight_bound_and_acks_release_in_order() {
        let mut p = replicating(10);
        assert_eq!(p.next_index, 11);
        p.on_sent(Some(12));
        p.on_sent(Some(15));
        assert_eq!(
            p.next_index, 16,
            "advanced optimistically as messages go out"
        );
        assert!(p.is_paused(2));
        assert!(!p.is_paused(3));
        // A heartbeat (no entries) takes no inflight slot.
        p.on_sent(None);
        assert_eq!(p.inflight, VecDeque::from([12, 15]));

        assert!(p.on_ack(13));
        assert_eq!(
            p.inflight,
            VecDeque::from([15]),
            "acked through 13 frees the first"
        );
        assert!(!p.is_paused(2));
        assert!(!p.on_ack(13), "a duplicate ack advances nothing");
        assert!(!p.on_ack(11), "a stale ack advances nothing");
        assert_eq!((p.match_index, p.next_index), (13, 16));
        assert!(p.on_ack(15));
        assert!(p.inflight.is_empty());
    }

    #[test]
    fn falling_back_to_probe_resends_from_after_the_match() {
        let mut p = replicating(10);
        p.on_sent(Some(20));
        p.become_probe();
        assert_eq!(
            (p.state, p.next_index, p.inflight.len(), p.probe_sent),
            (ProgressState::Probe, 11, 0, false)
        );
    }

    #[test]
    fn a_snapshot_pauses_everything_and_probing_resumes_after_it() {
        let mut p = replicating(3);
        p.on_sent(Some(9));
        p.become_snapshot(100, 42);
        assert!(p.is_paused(usize::MAX));
        assert!(p.inflight.is_empty());
        p.on_sent(Some(120));
        assert_eq!(
            p.next_index, 10,
            "nothing is sent while the snapshot is on its way"
        );
        p.become_probe();
        assert_eq!(
            p.next_index, 101,
            "after the snapshot, not at the stale match + 1"
        );
        // If the follower had acknowledged beyond the snapshot, resume from there.
        let mut q = replicating(3);
        q.become_snapshot(100, 42);
        q.on_ack(150);
        q.become_probe();
        assert_eq!(q.next_index, 151);
    }

    #[test]
    fn resending_frees_the_window_and_stays_in_replicate() {
        let mut p = replicating(10);
        for last in 11..=14 {
            p.on_sent(Some(last));
        }
        assert!(p.is_paused(4));
        p.resend_from(12);
        assert_eq!(
            (p.state, p.next_index, p.match_index, p.inflight.len()),
            (ProgressState::Replicate, 12, 10, 0)
        );
        assert!(!p.is_paused(4));
    }

    #[test]
    fn replicate_restarts_the_window_at_the_match() {
        let mut p = Progress::new(50);
        p.on_ack(30);
        p.become_replicate();
        assert_eq!((p.state, p.next_index), (ProgressState::Replicate, 31));
        assert!(!p.is_paused(1));
    }
}
