//! Batching of linearizable reads: at most one ReadIndex round in flight per node, shared by
//! every read that arrived before it started.
//!
//! A ReadIndex round costs a heartbeat to every follower and their answers (or, on a
//! follower, a forwarded request and its answer). One round per read made reads cost ~3.6
//! peer messages each at 16-64 clients; one round for all the reads waiting when it starts
//! costs the same per round however many reads share it.
//!
//! Linearizability: a read may only be answered by a round that *started after the read
//! arrived* (the round's quorum check then happened after the read's invocation, and its
//! read index covers every write acknowledged before it). Reads are therefore only ever
//! queued; [`ReadBatcher::start`] takes the whole queue into the new round, and a read that
//! arrives while a round is in flight waits for the next one. A round abandoned
//! ([`ReadBatcher::abandon_if_started_before`]) hands its reads back to the front of the
//! queue, and the round that takes them next also started after they arrived.
//!
//! The batcher holds read IDs only; the runtime keeps each read's reply and deadline, and
//! skips IDs whose read has already been answered (a deadline passed).

/// Read IDs waiting for a round, and the round in flight.
#[derive(Debug, Default)]
pub(crate) struct ReadBatcher {
    /// Reads that arrived after the round in flight started (or while none was), oldest
    /// first. Bounded by the runtime's `reads_in_flight_max` plus IDs of reads answered
    /// meanwhile, which [`ReadBatcher::retain`] drops.
    queued: Vec<u64>,
    round: Option<Round>,
}

#[derive(Debug)]
struct Round {
    /// The ctx given to `RawNode::read_index` for this round.
    ctx: u64,
    /// The reads it answers.
    ids: Vec<u64>,
    /// The runtime's tick count when it started.
    started_tick: u64,
}

impl ReadBatcher {
    /// Queues a read that has just arrived, for the next round.
    pub fn push(&mut self, id: u64) {
        self.queued.push(id);
    }

    /// Whether a round should start now: reads wait and none is in flight.
    pub fn should_start(&self) -> bool {
        self.round.is_none() && !self.queued.is_empty()
    }

    /// Records that the round `ctx` started (`RawNode::read_index(ctx)` succeeded) at
    /// `tick`: every queued read belongs to it.
    pub fn start(&mut self, ctx: u64, tick: u64) {
        assert!(self.round.is_none(), "a read round is already in flight");
        let ids = std::mem::take(&mut self.queued);
        self.round = Some(Round {
            ctx,
            ids,
            started_tick: tick,
        });
    }

    /// Takes every queued read (a round could not start: the caller answers or parks them).
    pub fn take_queued(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.queued)
    }

    /// The reads of round `ctx` once its outcome is known; `None` for a ctx that is not the
    /// round in flight (one abandoned earlier).
    pub fn finish(&mut self, ctx: u64) -> Option<Vec<u64>> {
        if self.round.as_ref().is_some_and(|r| r.ctx == ctx) {
            self.round.take().map(|r| r.ids)
        } else {
            None
        }
    }

    /// Gives up on a round started before `tick` (its outcome never came, e.g. a message
    /// was lost in a way the core does not time out): its reads go back to the front of the
    /// queue, for the next round. Returns whether it did.
    pub fn abandon_if_started_before(&mut self, tick: u64) -> bool {
        if self.round.as_ref().is_none_or(|r| r.started_tick >= tick) {
            return false;
        }
        let mut ids = self.round.take().expect("checked").ids;
        ids.append(&mut self.queued);
        self.queued = ids;
        true
    }

    /// Keeps only the reads for which `keep` holds (drops reads already answered).
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.queued.retain(|&id| keep(id));
        if let Some(r) = &mut self.round {
            r.ids.retain(|&id| keep(id));
        }
    }

    /// Forgets every read and the round in flight.
    pub fn clear(&mut self) {
        self.queued.clear();
        self.round = None;
    }

    /// Reads queued or in the round in flight.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queued.len() + self.round.as_ref().map_or(0, |r| r.ids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_arriving_during_a_round_waits_for_the_next() {
        let mut b = ReadBatcher::default();
        assert!(!b.should_start());
        b.push(1);
        b.push(2);
        assert!(b.should_start());
        b.start(100, 0);
        b.push(3);
        assert!(!b.should_start(), "one round in flight at most");
        // A stale outcome does not answer anything.
        assert_eq!(b.finish(99), None);
        assert_eq!(b.finish(100), Some(vec![1, 2]));
        assert_eq!(b.finish(100), None, "a round is answered once");
        assert!(b.should_start());
        b.start(101, 1);
        assert_eq!(b.finish(101), Some(vec![3]));
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn an_abandoned_round_hands_its_reads_to_the_next_one_first() {
        let mut b = ReadBatcher::default();
        b.push(1);
        b.start(10, 5);
        b.push(2);
        assert!(!b.abandon_if_started_before(5));
        assert!(b.abandon_if_started_before(6));
        // The outcome of the abandoned round arriving late answers nothing.
        assert_eq!(b.finish(10), None);
        assert!(b.should_start());
        b.start(11, 6);
        assert_eq!(b.finish(11), Some(vec![1, 2]));
    }

    #[test]
    fn answered_reads_are_dropped_and_a_failed_start_returns_the_queue() {
        let mut b = ReadBatcher::default();
        b.push(1);
        b.start(10, 0);
        b.push(2);
        b.push(3);
        b.retain(|id| id != 1 && id != 3);
        assert_eq!(b.len(), 1);
        assert_eq!(b.finish(10), Some(vec![]));
        assert_eq!(b.take_queued(), vec![2]);
        assert!(!b.should_start());
        b.push(4);
        b.start(11, 0);
        b.clear();
        assert_eq!(b.len(), 0);
        assert!(!b.should_start());
    }
}
