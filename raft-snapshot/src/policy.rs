//! When to take a snapshot and how far to compact the log after one: pure decisions, so
//! that the node's wiring holds no arithmetic worth testing.

use raft_core::Index;

/// The snapshot and compaction policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Take a snapshot once more than this many entries were applied since the last one.
    pub entries_since_snapshot_max: u64,
    /// ... or once the applied entries since the last one exceed this many bytes (as counted
    /// by `raft_core::Entry::size_bytes`).
    pub bytes_since_snapshot_max: u64,
    /// Entries kept in the log below a snapshot's index, so that followers slightly behind
    /// are sent entries rather than a whole snapshot.
    pub trailing_margin_entries: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            entries_since_snapshot_max: 100_000,
            bytes_since_snapshot_max: 256 << 20,
            trailing_margin_entries: 10_000,
        }
    }
}

impl SnapshotPolicy {
    /// Whether the log since the last snapshot is long enough to take a new one.
    pub fn should_snapshot(&self, entries_since_snapshot: u64, bytes_since_snapshot: u64) -> bool {
        entries_since_snapshot > self.entries_since_snapshot_max
            || bytes_since_snapshot > self.bytes_since_snapshot_max
    }

    /// After a snapshot at `snapshot_index` is durable: the index up to which (inclusive) the
    /// log may drop its prefix, given that it already starts at `log_first_index`.
    /// `None` when the margin leaves nothing new to drop.
    pub fn compact_through(&self, snapshot_index: Index, log_first_index: Index) -> Option<Index> {
        let through = snapshot_index.saturating_sub(self.trailing_margin_entries);
        (through >= log_first_index && through > 0).then_some(through)
    }
}

/// Tracks what was applied since the last snapshot and whether one is in progress, and asks
/// the [`SnapshotPolicy`]. One per node, driven from the apply loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotTrigger {
    policy: SnapshotPolicy,
    last_snapshot_index: Index,
    applied_index: Index,
    bytes_since_snapshot: u64,
    /// The index of the snapshot being written, if one is: never two at once, since a
    /// second would only compete for the disk with the first.
    in_flight: Option<Index>,
    /// Failed attempts since the last snapshot that was written: each doubles the wait
    /// before the next, so a full disk costs a bounded number of attempts (and warnings).
    failures_in_a_row: u32,
    /// No new attempt before this index is applied.
    retry_after_index: Index,
    /// Where this node's snapshots fall within the entry threshold, as a fraction of 2^32
    /// (see [`SnapshotTrigger::staggered`]).
    phase: u32,
    /// Entries by which the next snapshot comes early: the phase applied to the first
    /// snapshot after start or install, 0 once one is taken.
    head_start_entries: u64,
}

/// The most a staggered snapshot comes early, as a share of the entry threshold: half, so a
/// node never snapshots more often than twice per threshold.
const HEAD_START_SHARE_MAX_DIVISOR: u64 = 2;

impl SnapshotTrigger {
    /// Starts from the snapshot the node restored (0 if none).
    pub fn new(policy: SnapshotPolicy, last_snapshot_index: Index) -> Self {
        SnapshotTrigger {
            policy,
            last_snapshot_index,
            applied_index: last_snapshot_index,
            bytes_since_snapshot: 0,
            in_flight: None,
            failures_in_a_row: 0,
            retry_after_index: 0,
            phase: 0,
            head_start_entries: 0,
        }
    }

    /// Spreads the snapshots of a cluster's nodes over the entry threshold. Every node
    /// applies the same entries, so with one threshold all of them would freeze, serialise
    /// and write their state at the same moment, and the leader's snapshot would coincide
    /// with its followers' (measured: 250-600 ms slow periods of open-loop writes every
    /// 100,000 entries on two cores). The first snapshot comes early by a share of the
    /// threshold drawn from `node_id` (below half of it, golden-ratio spread so that any
    /// number of consecutive IDs land apart); later ones keep that offset, since each
    /// counts from the last. A snapshot installed from the leader re-aligns a node with
    /// it, so the head start is applied again after an install.
    pub fn staggered(mut self, node_id: u64) -> Self {
        const GOLDEN_RATIO_FRACTION_Q64: u64 = 0x9E37_79B9_7F4A_7C15;
        self.phase = (node_id.wrapping_mul(GOLDEN_RATIO_FRACTION_Q64) >> 32) as u32;
        self.head_start_entries = self.head_start();
        self
    }

    fn head_start(&self) -> u64 {
        let span = self.policy.entries_since_snapshot_max / HEAD_START_SHARE_MAX_DIVISOR;
        ((span as u128 * self.phase as u128) >> 32) as u64
    }

    /// The policy this trigger asks.
    pub fn policy(&self) -> &SnapshotPolicy {
        &self.policy
    }

    /// Records an applied entry of `entry_bytes` at `index`. Returns `Some(index)` when a
    /// snapshot should be taken now, of the state just after `index`; the caller then
    /// freezes the state machine and must report back with [`SnapshotTrigger::on_snapshot_done`]
    /// or [`SnapshotTrigger::on_snapshot_failed`].
    pub fn on_applied(&mut self, index: Index, entry_bytes: u64) -> Option<Index> {
        if index <= self.applied_index {
            return None;
        }
        self.applied_index = index;
        self.bytes_since_snapshot = self.bytes_since_snapshot.saturating_add(entry_bytes);
        if self.in_flight.is_some() || index < self.retry_after_index {
            return None;
        }
        let entries =
            (self.applied_index - self.last_snapshot_index).saturating_add(self.head_start_entries);
        if self
            .policy
            .should_snapshot(entries, self.bytes_since_snapshot)
        {
            self.in_flight = Some(index);
            return Some(index);
        }
        None
    }

    /// A snapshot at `index` is durable. Returns the index through which the log may now be
    /// compacted, given the log's current first index.
    pub fn on_snapshot_done(&mut self, index: Index, log_first_index: Index) -> Option<Index> {
        if self.in_flight == Some(index) {
            self.in_flight = None;
        }
        self.failures_in_a_row = 0;
        self.retry_after_index = 0;
        if index > self.last_snapshot_index {
            // Bytes applied after `index` are not known separately; counting all of them as
            // still outstanding would re-trigger at once, so the byte count restarts. The
            // entry count, which is exact, keeps the policy honest.
            self.bytes_since_snapshot = 0;
            self.last_snapshot_index = index;
            self.head_start_entries = 0;
        }
        self.policy
            .compact_through(self.last_snapshot_index, log_first_index)
    }

    /// The snapshot at `index` could not be written. The next attempt waits for more
    /// entries to be applied: 1/16 of the entry threshold after the first failure, doubling
    /// with each failure in a row up to the whole threshold.
    pub fn on_snapshot_failed(&mut self, index: Index) {
        if self.in_flight == Some(index) {
            self.in_flight = None;
        }
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        let threshold = self.policy.entries_since_snapshot_max.max(1);
        let base = (threshold / 16).max(1);
        let wait = base
            .saturating_mul(1u64 << (self.failures_in_a_row - 1).min(32))
            .min(threshold);
        self.retry_after_index = self.applied_index.saturating_add(wait);
    }

    /// A snapshot from the leader replaced the state at `index`.
    pub fn on_snapshot_installed(&mut self, index: Index) {
        let phase = self.phase;
        *self = SnapshotTrigger::new(self.policy, index);
        self.phase = phase;
        self.head_start_entries = self.head_start();
    }

    /// The index of the snapshot being written, if any.
    pub fn in_flight(&self) -> Option<Index> {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(entries: u64, bytes: u64, margin: u64) -> SnapshotPolicy {
        SnapshotPolicy {
            entries_since_snapshot_max: entries,
            bytes_since_snapshot_max: bytes,
            trailing_margin_entries: margin,
        }
    }

    #[test]
    fn thresholds_are_strict_exceedances() {
        let p = policy(100, 1000, 10);
        assert!(!p.should_snapshot(100, 1000));
        assert!(p.should_snapshot(101, 0));
        assert!(p.should_snapshot(0, 1001));
    }

    #[test]
    fn compaction_keeps_the_margin_and_never_goes_backwards() {
        let p = policy(100, 1000, 10);
        assert_eq!(p.compact_through(500, 1), Some(490));
        assert_eq!(
            p.compact_through(500, 491),
            None,
            "already compacted past 490"
        );
        assert_eq!(p.compact_through(500, 490), Some(490));
        assert_eq!(p.compact_through(5, 1), None, "margin larger than the log");
        assert_eq!(policy(1, 1, 0).compact_through(7, 1), Some(7));
        assert_eq!(policy(1, 1, 0).compact_through(0, 1), None);
    }

    #[test]
    fn trigger_fires_once_per_threshold_and_not_while_in_flight() {
        let mut t = SnapshotTrigger::new(policy(3, u64::MAX, 1), 0);
        assert_eq!(t.on_applied(1, 10), None);
        assert_eq!(t.on_applied(2, 10), None);
        assert_eq!(t.on_applied(3, 10), None);
        assert_eq!(t.on_applied(4, 10), Some(4));
        assert_eq!(t.on_applied(5, 10), None, "one in flight");
        assert_eq!(t.on_applied(5, 10), None, "replayed index ignored");
        assert_eq!(t.on_snapshot_done(4, 1), Some(3));
        assert_eq!(t.on_applied(8, 10), Some(8), "8 - 4 = 4 > 3");
        t.on_snapshot_failed(8);
        assert_eq!(t.in_flight(), None);
        assert_eq!(t.on_applied(9, 10), Some(9), "retries after a failure");
        t.on_snapshot_failed(9);
        assert_eq!(
            t.on_applied(10, 10),
            None,
            "a second failure waits 2 entries"
        );
        assert_eq!(t.on_applied(11, 10), Some(11));
        assert_eq!(t.on_snapshot_done(11, 1), Some(10));
        assert_eq!(
            t.on_applied(15, 10),
            Some(15),
            "success forgets the failures"
        );
    }

    #[test]
    fn failed_snapshots_back_off_up_to_the_threshold() {
        let mut t = SnapshotTrigger::new(policy(1_600, u64::MAX, 0), 0);
        let mut index = 1_601;
        assert_eq!(t.on_applied(index, 1), Some(index));
        let mut attempts = 1;
        // Every attempt fails for 100,000 entries: each wait doubles from 100 to 1,600.
        while index < 101_600 {
            t.on_snapshot_failed(index);
            loop {
                index += 1;
                if t.on_applied(index, 1).is_some() {
                    break;
                }
            }
            attempts += 1;
        }
        assert!(attempts < 70, "{attempts} attempts");
    }

    #[test]
    fn trigger_fires_on_bytes() {
        let mut t = SnapshotTrigger::new(policy(u64::MAX, 100, 0), 50);
        assert_eq!(t.on_applied(51, 60), None);
        assert_eq!(t.on_applied(52, 60), Some(52));
        assert_eq!(t.on_snapshot_done(52, 1), Some(52));
        assert_eq!(t.on_applied(53, 60), None, "byte count restarted");
        t.on_snapshot_installed(1000);
        assert_eq!(
            t.on_applied(1000, 1000),
            None,
            "at or below the installed snapshot"
        );
        assert_eq!(t.on_applied(1001, 101), Some(1001));
    }

    #[test]
    fn staggered_nodes_snapshot_apart_and_keep_their_offset() {
        let threshold = 100_000;
        let first_snapshots: Vec<Index> = (1..=5)
            .map(|id| {
                let mut t = SnapshotTrigger::new(policy(threshold, u64::MAX, 0), 0).staggered(id);
                let first = (1..).find(|&i| t.on_applied(i, 1).is_some()).unwrap();
                assert!(
                    first > threshold / 2 && first <= threshold + 1,
                    "node {id}: first snapshot at {first}"
                );
                t.on_snapshot_done(first, 1);
                // The next counts a whole threshold from the first: the offset stays.
                assert_eq!(t.on_applied(first + threshold, 1), None, "node {id}");
                assert_eq!(
                    t.on_applied(first + threshold + 1, 1),
                    Some(first + threshold + 1)
                );
                first
            })
            .collect();
        for (a, i) in first_snapshots.iter().zip(0..) {
            for b in &first_snapshots[i + 1..] {
                assert!(
                    a.abs_diff(*b) >= threshold / 20,
                    "nodes snapshot too close together: {first_snapshots:?}"
                );
            }
        }
    }

    #[test]
    fn an_install_applies_the_stagger_again() {
        let mut t = SnapshotTrigger::new(policy(1_000, u64::MAX, 0), 0).staggered(1);
        let head_start = t.head_start_entries;
        assert!(head_start > 0 && head_start < 500, "{head_start}");
        t.on_snapshot_installed(10_000);
        let first = (10_001..).find(|&i| t.on_applied(i, 1).is_some()).unwrap();
        assert_eq!(first - 10_000, 1_000 + 1 - head_start);
    }

    #[test]
    fn an_unstaggered_trigger_and_a_disabled_threshold_are_unchanged() {
        let mut t = SnapshotTrigger::new(policy(3, u64::MAX, 0), 0).staggered(0);
        assert_eq!(t.on_applied(3, 1), None);
        assert_eq!(t.on_applied(4, 1), Some(4));
        let mut off = SnapshotTrigger::new(policy(u64::MAX, u64::MAX, 0), 0).staggered(7);
        assert_eq!(off.on_applied(1 << 40, 1), None);
    }

    proptest! {
        #[test]
        fn compaction_point_is_bounded(snapshot in 0u64..1_000_000, first in 1u64..1_000_000, margin in 0u64..10_000) {
            let p = policy(1, 1, margin);
            if let Some(through) = p.compact_through(snapshot, first) {
                prop_assert!(through <= snapshot);
                prop_assert!(snapshot - through >= margin);
                prop_assert!(through >= first);
            }
        }
    }
}
