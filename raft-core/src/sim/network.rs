//! The simulated network: every message is delayed, possibly lost or duplicated, and dropped
//! on links the faults have cut.

use std::collections::{BTreeSet, BinaryHeap};
use std::sync::Arc;

use crate::message::Message;
use crate::rng::SplitMix64;
use crate::types::NodeId;

use super::kv::Kv;
use super::Stats;

pub(super) struct Packet {
    pub(super) at: u64,
    pub(super) seq: u64,
    pub(super) message: Message,
    pub(super) snapshot: Option<Arc<Kv>>,
}

impl PartialEq for Packet {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Packet {}
impl PartialOrd for Packet {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Packet {
    // BinaryHeap is a max-heap: reverse, so the earliest packet comes first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

pub(super) struct Network {
    pub(super) in_flight: BinaryHeap<Packet>,
    pub(super) seq: u64,
    /// Directed links that drop everything.
    pub(super) blocked: BTreeSet<(NodeId, NodeId)>,
    pub(super) loss: f64,
    pub(super) duplication: f64,
    pub(super) delay_ticks_max: u64,
}

impl Network {
    pub(super) fn send(
        &mut self,
        rng: &mut SplitMix64,
        now: u64,
        message: Message,
        snapshot: Option<Arc<Kv>>,
        stats: &mut Stats,
    ) {
        stats.messages_sent += 1;
        if self.blocked.contains(&(message.from, message.to)) || rng.chance(self.loss) {
            return;
        }
        let copies = if rng.chance(self.duplication) { 2 } else { 1 };
        for _ in 0..copies {
            self.seq += 1;
            self.in_flight.push(Packet {
                at: now + rng.range(1, self.delay_ticks_max + 1),
                seq: self.seq,
                message: message.clone(),
                snapshot: snapshot.clone(),
            });
        }
    }

    pub(super) fn pop_due(&mut self, now: u64) -> Option<Packet> {
        if self.in_flight.peek().is_some_and(|p| p.at <= now) {
            self.in_flight.pop()
        } else {
            None
        }
    }
}
