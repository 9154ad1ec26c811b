//! Persistence tracking: which Readies' writes the host has reported durable, and so how far
//! this node's log is durable (a leader counts only that toward the quorum) and which hard
//! state was last handed out.

use std::collections::VecDeque;

use crate::storage::LogStore;
use crate::types::{HardState, Index};

use super::RawNode;

/// The writes handed out in Readies and the host's reports that they are durable.
#[derive(Debug)]
pub(super) struct Persistence {
    /// The sequence number the next Ready with writes gets (from 1; 0 means "no writes").
    seq_next: u64,
    /// Readies handed out whose writes are not yet reported durable: (seq, last index written),
    /// the index lowered whenever a later write cuts the log below it. At most one per Ready
    /// the host has not reported yet.
    pending: VecDeque<(u64, Index)>,
    /// The highest index reported durable and still held.
    persisted_index: Index,
    /// The hard state as of the last Ready (what the host has been asked to write).
    hard_state_written: HardState,
}

impl Persistence {
    /// A node restarted from a store holding `last_index` and `hard_state`: all of it durable.
    pub(super) fn new(last_index: Index, hard_state: HardState) -> Self {
        Persistence {
            seq_next: 1,
            pending: VecDeque::new(),
            persisted_index: last_index,
            hard_state_written: hard_state,
        }
    }

    /// The highest index reported durable and still held.
    pub(super) fn persisted_index(&self) -> Index {
        self.persisted_index
    }

    /// Whether `hard_state` differs from what the host was last asked to write.
    pub(super) fn hard_state_changed(&self, hard_state: &HardState) -> bool {
        *hard_state != self.hard_state_written
    }

    /// Records that the next Ready asks to write `hard_state`; returns whether it changed.
    pub(super) fn write_hard_state(&mut self, hard_state: HardState) -> bool {
        let changed = self.hard_state_changed(&hard_state);
        self.hard_state_written = hard_state;
        changed
    }

    /// Gives a Ready whose writes leave the log at `last_index` its sequence number.
    pub(super) fn next_seq(&mut self, last_index: Index) -> u64 {
        let seq = self.seq_next;
        self.seq_next += 1;
        self.pending.push_back((seq, last_index));
        seq
    }

    /// The host reports every write of the Readies up to `seq` durable.
    pub(super) fn on_persisted(&mut self, seq: u64) {
        while let Some(&(s, last)) = self.pending.front() {
            if s > seq {
                break;
            }
            self.pending.pop_front();
            self.persisted_index = self.persisted_index.max(last);
        }
    }

    /// The log was cut after `index` (a conflicting suffix, or a snapshot): nothing beyond it
    /// is held any more, so nothing beyond it can become durable by an earlier write.
    pub(super) fn clamp(&mut self, index: Index) {
        self.persisted_index = self.persisted_index.min(index);
        for (_, last) in self.pending.iter_mut() {
            *last = (*last).min(index);
        }
    }
}

impl<S: LogStore> RawNode<S> {
    /// Reports that every write of the Readies up to `seq` is durable.
    pub fn on_persisted(&mut self, seq: u64) {
        self.persistence.on_persisted(seq);
        debug_assert!(self.persistence.persisted_index() <= self.log.last_index());
        if self.role == crate::types::Role::Leader {
            self.maybe_commit();
        }
        self.check_invariants();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_make_writes_durable_in_sequence_order() {
        let mut p = Persistence::new(3, HardState::default());
        assert_eq!(p.persisted_index(), 3, "a restarted store is durable");
        assert_eq!(p.next_seq(5), 1);
        assert_eq!(p.next_seq(8), 2);
        assert_eq!(p.next_seq(9), 3);
        p.on_persisted(2);
        assert_eq!(p.persisted_index(), 8);
        p.on_persisted(2);
        assert_eq!(p.persisted_index(), 8, "a repeated report changes nothing");
        p.on_persisted(3);
        assert_eq!(p.persisted_index(), 9);
    }

    #[test]
    fn a_cut_log_lowers_what_pending_writes_can_make_durable() {
        let mut p = Persistence::new(4, HardState::default());
        p.next_seq(10);
        p.next_seq(12);
        // A leader's entries 7.. were replaced before seq 1 was reported.
        p.clamp(6);
        assert_eq!(p.persisted_index(), 4);
        p.on_persisted(1);
        assert_eq!(p.persisted_index(), 6, "not 10: entries 7..=10 were cut");
        p.clamp(2);
        assert_eq!(p.persisted_index(), 2);
    }

    #[test]
    fn the_hard_state_is_written_only_when_it_changed() {
        let hs = HardState {
            term: 2,
            vote: Some(1),
            commit: 4,
        };
        let mut p = Persistence::new(4, hs);
        assert!(!p.write_hard_state(hs));
        let later = HardState { commit: 5, ..hs };
        assert!(p.hard_state_changed(&later));
        assert!(p.write_hard_state(later));
        assert!(!p.hard_state_changed(&later));
    }
}
