//! The fault schedule: drawn from the seed alone, before the run starts, so the same seed
//! replays the same faults in the same order with the same holds. Only "the leader" is left
//! to the moment: a step may aim at whichever node leads when it fires, with a node drawn in
//! advance for when none does.

use raft_core::rng::SplitMix64;

/// Shortest pause between two faults.
const GAP_MS_MIN: u64 = 500;
/// Longest pause between two faults (exclusive).
const GAP_MS_MAX: u64 = 2000;

/// Whom a fault hits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Aim at the leader of the moment, if there is one.
    pub leader: bool,
    /// The node hit when `leader` is false or no leader is known.
    pub node: u64,
}

/// One fault and how long it lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, then restart after the hold.
    Kill { target: Target, hold_ms: u64 },
    /// SIGSTOP, then SIGCONT after the hold.
    Pause { target: Target, hold_ms: u64 },
    /// Every link to and from the node cut.
    Isolate { target: Target, hold_ms: u64 },
    /// These nodes (a minority) cut off from the rest.
    Split { minority: Vec<u64>, hold_ms: u64 },
    /// The link `from` -> `to` cut, the reverse left open.
    OneWay { from: Target, to: u64, hold_ms: u64 },
    /// Two sides that only `through` joins; `sides[i]` is node `i + 1`'s side.
    Bridge {
        through: Target,
        sides: Vec<bool>,
        hold_ms: u64,
    },
    /// Connections dropped at random moments, drawn from `seed`.
    Lossy { hold_ms: u64, seed: u64 },
    /// Leadership handed to `to`.
    Transfer { to: u64 },
    /// Removed from the membership (process and data kept), then added back as a learner and
    /// promoted once it has caught up.
    RemoveReadd { target: Target, hold_ms: u64 },
    /// Removed, its data wiped, restarted empty with `--join`, added as a learner and promoted
    /// once it has caught up: a replaced machine.
    Replace { target: Target, hold_ms: u64 },
    /// The disk of the node with the small file system fills up, then space returns.
    DiskFull { hold_ms: u64 },
}

impl Fault {
    /// A short name for summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill",
            Fault::Pause { .. } => "pause",
            Fault::Isolate { .. } => "isolate",
            Fault::Split { .. } => "split",
            Fault::OneWay { .. } => "one-way",
            Fault::Bridge { .. } => "bridge",
            Fault::Lossy { .. } => "lossy",
            Fault::Transfer { .. } => "transfer",
            Fault::RemoveReadd { .. } => "remove-readd",
            Fault::Replace { .. } => "replace",
            Fault::DiskFull { .. } => "disk-full",
        }
    }
}

/// A fault and the pause before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub gap_ms: u64,
    pub fault: Fault,
}

/// Everything a seed decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The node whose data directory is a small file system (filled by `DiskFull`).
    pub disk_node: u64,
    /// More steps than the run can use: faults take at least their gap, so `duration / gap
    /// min` steps always suffice; the run stops taking them when its time is up.
    pub steps: Vec<Step>,
}

/// The schedule for `nodes` nodes (IDs 1..=nodes) running `duration_ms`.
pub fn plan(seed: u64, nodes: u64, duration_ms: u64) -> Plan {
    assert!(nodes >= 2, "a schedule needs at least two nodes");
    let mut rng = SplitMix64::new(seed);
    let disk_node = rng.range(1, nodes + 1);
    let steps_max = duration_ms / GAP_MS_MIN + 1;
    let mut steps = Vec::with_capacity(steps_max as usize);
    for _ in 0..steps_max {
        let gap_ms = rng.range(GAP_MS_MIN, GAP_MS_MAX);
        let target = |rng: &mut SplitMix64| Target {
            leader: rng.chance(0.5),
            node: rng.range(1, nodes + 1),
        };
        let hold_ms = rng.range(1000, 4000);
        let fault = match rng.range(0, 11) {
            0 => Fault::Kill {
                target: target(&mut rng),
                hold_ms,
            },
            1 => Fault::Pause {
                target: target(&mut rng),
                hold_ms,
            },
            2 => Fault::Isolate {
                target: target(&mut rng),
                hold_ms,
            },
            3 => {
                // A minority of 1 to n/2 nodes, drawn without repeats.
                let mut shuffled: Vec<u64> = (1..=nodes).collect();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, rng.range(0, i as u64 + 1) as usize);
                }
                let size = rng.range(1, nodes / 2 + 1) as usize;
                let mut minority = shuffled[..size].to_vec();
                minority.sort_unstable();
                Fault::Split { minority, hold_ms }
            }
            4 => Fault::OneWay {
                from: target(&mut rng),
                to: rng.range(1, nodes + 1),
                hold_ms,
            },
            5 => Fault::Bridge {
                through: target(&mut rng),
                sides: (0..nodes).map(|_| rng.chance(0.5)).collect(),
                hold_ms,
            },
            6 => Fault::Lossy {
                hold_ms,
                seed: rng.next_u64(),
            },
            7 => Fault::Transfer {
                to: rng.range(1, nodes + 1),
            },
            8 => Fault::RemoveReadd {
                target: target(&mut rng),
                hold_ms,
            },
            9 => Fault::Replace {
                target: target(&mut rng),
                hold_ms,
            },
            _ => Fault::DiskFull {
                // Longer than the others: raft-log writes into preallocated segments, so the
                // node meets the full disk when it snapshots (every 2,000 entries) or needs a
                // new segment; a few seconds of writes get it there.
                hold_ms: hold_ms + 5000,
            },
        };
        steps.push(Step { gap_ms, fault });
    }
    Plan { disk_node, steps }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        for seed in [1, 2, 77, u64::MAX] {
            assert_eq!(plan(seed, 5, 300_000), plan(seed, 5, 300_000));
        }
        assert_ne!(plan(1, 5, 300_000), plan(2, 5, 300_000));
    }

    #[test]
    fn a_longer_run_extends_the_plan_without_changing_its_start() {
        let short = plan(9, 3, 60_000);
        let long = plan(9, 3, 300_000);
        assert_eq!(short.disk_node, long.disk_node);
        assert_eq!(short.steps[..], long.steps[..short.steps.len()]);
    }

    #[test]
    fn a_plan_has_steps_for_the_whole_duration() {
        let p = plan(3, 3, 60_000);
        let min_total_ms: u64 = p.steps.iter().map(|s| s.gap_ms).sum();
        assert!(min_total_ms >= 60_000, "{min_total_ms}");
    }

    #[test]
    fn every_kind_of_fault_appears_and_names_only_real_nodes() {
        for nodes in 3..=7 {
            let p = plan(nodes * 1000 + 1, nodes, 300_000);
            assert!((1..=nodes).contains(&p.disk_node));
            let kinds: BTreeSet<&str> = p.steps.iter().map(|s| s.fault.kind()).collect();
            assert_eq!(kinds.len(), 11, "{kinds:?}");
            let real = |n: u64| (1..=nodes).contains(&n);
            for step in &p.steps {
                assert!((GAP_MS_MIN..GAP_MS_MAX).contains(&step.gap_ms));
                match &step.fault {
                    Fault::Kill { target, .. }
                    | Fault::Pause { target, .. }
                    | Fault::Isolate { target, .. }
                    | Fault::RemoveReadd { target, .. }
                    | Fault::Replace { target, .. } => assert!(real(target.node)),
                    Fault::Split { minority, .. } => {
                        assert!(!minority.is_empty() && minority.len() as u64 <= nodes / 2);
                        assert!(minority.windows(2).all(|w| w[0] < w[1]));
                        assert!(minority.iter().all(|&n| real(n)));
                    }
                    Fault::OneWay { from, to, .. } => assert!(real(from.node) && real(*to)),
                    Fault::Bridge { through, sides, .. } => {
                        assert!(real(through.node) && sides.len() as u64 == nodes)
                    }
                    Fault::Transfer { to } => assert!(real(*to)),
                    Fault::Lossy { .. } | Fault::DiskFull { .. } => {}
                }
            }
        }
    }
}
