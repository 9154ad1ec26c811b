//! A seed's settings and fault rates, drawn from it.

use crate::rng::SplitMix64;

/// Fault rates and settings, drawn from the seed.
#[derive(Clone, Debug)]
pub(super) struct Params {
    pub(super) nodes: u64,
    pub(super) loss: f64,
    pub(super) duplication: f64,
    pub(super) delay_ticks_max: u64,
    pub(super) crash_rate: f64,
    pub(super) partition_rate: f64,
    pub(super) pause_rate: f64,
    pub(super) membership_rate: f64,
    pub(super) transfer_rate: f64,
    /// Chance that a newly elected leader crashes within a few ticks, before its first
    /// entries spread: the Figure 8 situation.
    pub(super) new_leader_crash: f64,
    /// Chance that a newly elected leader is cut off at once, so its first entries stay its
    /// own (the other half of the Figure 8 situation).
    pub(super) new_leader_isolation: f64,
    /// Chance, each time a leader's commit index advances, that it is cut off at once.
    pub(super) commit_isolation: f64,
    /// Chance that a newly elected leader asks for a membership change at once, before an
    /// entry of its term has committed (the core must refuse: the 2015 single-server-change
    /// bug is a leader that does not).
    pub(super) new_leader_membership: f64,
    /// Chance that a leader which has just appended a membership change is cut off a step or
    /// two later, so that the change reaches only a minority: the other half of that bug.
    pub(super) membership_isolation: f64,
    /// Chance, each time a leader appends a membership change, that the network splits at
    /// once along the new configuration: the leader keeps a bare majority of the new voters,
    /// everyone else (the nodes the change removes among them) is cut off from that side,
    /// messages in flight included, for a few election timeouts. When the change came too
    /// early, the other side may still hold a majority of an older configuration.
    pub(super) membership_split: f64,
    /// Chance of that split when some node holds a configuration entry the leader lacks.
    pub(super) stale_config_split: f64,
    /// Chance that a membership change is one step of a walk that keeps returning to an
    /// even number of voters by single-server changes, rather than drawn uniformly.
    pub(super) even_walk: f64,
    pub(super) sync_delay_ticks_max: u64,
    pub(super) snapshot_interval_entries: u64,
    pub(super) clients: usize,
    pub(super) pre_vote: bool,
    pub(super) check_quorum: bool,
    pub(super) lease_read: bool,
    pub(super) inflight_messages_max: usize,
    pub(super) append_entries_max: usize,
    /// Entries kept in the log below each snapshot, as raft-node's trailing margin: the log's
    /// compaction point is then no snapshot, and a leader must send the newest snapshot it
    /// reported (`RawNode::on_snapshot_built`). 0 compacts at the snapshot, as `MemLog`
    /// hosts do.
    pub(super) snapshot_log_margin_entries: u64,
}

impl Params {
    pub(super) fn election_timeout_ticks_min(&self) -> u32 {
        (10 + 2 * (self.sync_delay_ticks_max + self.delay_ticks_max)) as u32
    }

    /// Long enough for a request to survive one leader change.
    pub(super) fn op_timeout_steps(&self) -> u64 {
        100 + 4 * self.election_timeout_ticks_min() as u64
    }

    pub(super) fn draw(rng: &mut SplitMix64) -> Params {
        let permille = |rng: &mut SplitMix64, max: u64| rng.range(0, max + 1) as f64 / 1000.0;
        let lease_read = rng.chance(0.25);
        let pre_vote = rng.chance(0.8);
        let check_quorum = lease_read || rng.chance(0.8);
        // Without pre-vote or check-quorum, a removed server that never learns of its
        // removal keeps disrupting the cluster with vote requests (dissertation §4.2.3):
        // plain Raft is only run on a fixed membership.
        let membership = pre_vote || check_quorum;
        // Some seeds are about membership: frequent single-server changes on an even number
        // of voters, each new leader changing at once, and the network cut around changes.
        let membership_focus = membership && rng.chance(0.3);
        let rate = |rng: &mut SplitMix64, zero: f64, max: u64| {
            if rng.chance(zero) {
                0.0
            } else {
                permille(rng, max)
            }
        };
        let focused =
            |rng: &mut SplitMix64, min: u64, max: u64| rng.range(min, max + 1) as f64 / 1000.0;
        Params {
            nodes: if rng.chance(0.5) { 3 } else { 5 },
            loss: permille(rng, 300),
            duplication: permille(rng, 100),
            delay_ticks_max: rng.range(1, 6),
            crash_rate: permille(rng, 20),
            partition_rate: permille(rng, 10),
            pause_rate: permille(rng, 3),
            membership_rate: match (membership, membership_focus) {
                (false, _) => 0.0,
                (true, false) => permille(rng, 5),
                (true, true) => focused(rng, 5, 15),
            },
            transfer_rate: permille(rng, 4),
            new_leader_crash: rate(rng, 0.25, 500),
            new_leader_isolation: rate(rng, 0.25, 500),
            commit_isolation: rate(rng, 0.25, 50),
            new_leader_membership: if membership_focus {
                focused(rng, 800, 1000)
            } else {
                rate(rng, 0.25, 800)
            },
            membership_isolation: if membership_focus {
                focused(rng, 500, 900)
            } else {
                rate(rng, 0.25, 600)
            },
            membership_split: rate(rng, 0.25, 600),
            stale_config_split: if membership_focus {
                1.0
            } else if rng.chance(0.25) {
                0.0
            } else {
                focused(rng, 300, 1000)
            },
            even_walk: if membership_focus {
                focused(rng, 1000, 1000)
            } else {
                rate(rng, 0.25, 1000)
            },
            // A quarter of the seeds run on a slow disk, so acknowledgements race syncs.
            sync_delay_ticks_max: if rng.chance(0.25) {
                rng.range(4, 16)
            } else {
                rng.range(0, 4)
            },
            snapshot_interval_entries: rng.range(10, 300),
            clients: rng.range(2, 6) as usize,
            pre_vote,
            check_quorum,
            lease_read,
            inflight_messages_max: rng.range(1, 9) as usize,
            // Small batches make followers catch up in steps, which is when commit rules and
            // elections race (the Figure 8 situation).
            append_entries_max: match rng.range(0, 10) {
                0..=2 => 1,
                3..=4 => rng.range(2, 5),
                _ => rng.range(1, 65),
            } as usize,
            // Drawn last, so that the other parameters of a seed are those of earlier runs.
            snapshot_log_margin_entries: if rng.chance(0.5) {
                0
            } else {
                rng.range(1, 100)
            },
        }
    }
}
