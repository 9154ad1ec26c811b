//! The history of the clients' operations and its checks: linearizability per key (the
//! search is `linearizability.rs`), acknowledged writes the final state lost, and the report
//! files.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::time::Instant;

use tokio::sync::Mutex;

use super::linearizability::{check, RegisterOp, Timed, Verdict};

/// Search steps allowed per key before the checker gives up.
pub(super) const CHECK_STEPS_MAX: u64 = 20_000_000;

#[derive(Clone, Debug)]
pub(super) enum Outcome {
    Ok,
    /// Definitely had no effect (a read that failed).
    Failed,
    /// The client never learned the outcome.
    Unknown,
}

#[derive(Clone, Debug)]
pub(super) struct Record {
    pub(super) key: usize,
    pub(super) op: RegisterOp,
    pub(super) call_us: u64,
    pub(super) return_us: Option<u64>,
    pub(super) outcome: Outcome,
}

pub(super) struct Shared {
    pub(super) start: Instant,
    pub(super) history: Mutex<Vec<Record>>,
}

impl Shared {
    /// An empty history whose clock starts now.
    pub(super) fn new() -> Shared {
        Shared {
            start: Instant::now(),
            history: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// How many operations ended each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct OutcomeCounts {
    pub(super) ok: usize,
    pub(super) failed: usize,
    pub(super) unknown: usize,
}

impl OutcomeCounts {
    pub(super) fn of(history: &[Record]) -> OutcomeCounts {
        let mut counts = OutcomeCounts::default();
        for r in history {
            match r.outcome {
                Outcome::Ok => counts.ok += 1,
                Outcome::Failed => counts.failed += 1,
                Outcome::Unknown => counts.unknown += 1,
            }
        }
        counts
    }
}

/// What the checks of every key's history found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct KeyChecks {
    /// No key's history was found not linearizable.
    pub(super) linearizable: bool,
    /// The search gave up on some key after [`CHECK_STEPS_MAX`] steps.
    pub(super) inconclusive: bool,
    /// Acknowledged writes the final values contradict, over all keys.
    pub(super) lost: usize,
}

impl KeyChecks {
    /// Linearizable, and proven so for every key.
    pub(super) fn proven_linearizable(&self) -> bool {
        self.linearizable && !self.inconclusive
    }
}

/// Checks keys `0..keys`: each key's history for linearizability (a failed operation had no
/// effect and is left out; one whose outcome is unknown may take effect any time after its
/// call, or never), and its acknowledged writes against `final_values`.
pub(super) fn check_keys(
    history: &[Record],
    keys: usize,
    final_values: &BTreeMap<usize, Option<String>>,
) -> KeyChecks {
    let mut checks = KeyChecks {
        linearizable: true,
        inconclusive: false,
        lost: 0,
    };
    for key in 0..keys {
        let ops: Vec<Timed> = history
            .iter()
            .filter(|r| r.key == key && !matches!(r.outcome, Outcome::Failed))
            .map(|r| Timed {
                op: r.op.clone(),
                call_us: r.call_us,
                return_us: match r.outcome {
                    Outcome::Unknown => None,
                    _ => r.return_us,
                },
            })
            .collect();
        match check(&ops, CHECK_STEPS_MAX) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable => checks.linearizable = false,
            Verdict::Inconclusive => checks.inconclusive = true,
        }
        checks.lost += lost_writes(history, key, final_values.get(&key));
    }
    checks
}

/// Acknowledged writes of `key` that the final value contradicts: the final value was written
/// by an operation that completed before the acknowledged write began (values are unique), or
/// the key is absent although a write was acknowledged.
fn lost_writes(history: &[Record], key: usize, final_value: Option<&Option<String>>) -> usize {
    let Some(final_value) = final_value else {
        return 0;
    };
    let writer_return = |value: &str| {
        history.iter().find(|r| {
            r.key == key
                && match &r.op {
                    RegisterOp::Write(v) => v == value,
                    RegisterOp::Cas { new: Some(v), .. } => v == value,
                    _ => false,
                }
        })
    };
    let acked = history.iter().filter(|r| {
        r.key == key && matches!(r.outcome, Outcome::Ok) && matches!(r.op, RegisterOp::Write(_))
    });
    match final_value {
        None => acked.count(),
        Some(v) => match writer_return(v) {
            Some(writer) => acked
                .filter(|w| {
                    matches!(writer.outcome, Outcome::Ok)
                        && writer.return_us.is_some_and(|t| t < w.call_us)
                })
                .count(),
            None => 1,
        },
    }
}

pub(super) fn write_report(
    dir: &Path,
    history: &[Record],
    timeline: &[String],
) -> std::io::Result<()> {
    use std::io::Write;
    let mut h = File::create(dir.join("history.txt"))?;
    for r in history {
        writeln!(
            h,
            "{} {:?} key={} {:?} {:?}",
            r.call_us, r.return_us, r.key, r.outcome, r.op
        )?;
    }
    std::fs::write(dir.join("faults.txt"), timeline.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: usize, value: &str, call_us: u64, return_us: u64, outcome: Outcome) -> Record {
        Record {
            key,
            op: RegisterOp::Write(value.into()),
            call_us,
            return_us: Some(return_us),
            outcome,
        }
    }

    fn finals(values: &[(usize, Option<&str>)]) -> BTreeMap<usize, Option<String>> {
        values
            .iter()
            .map(|(k, v)| (*k, v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn a_history_that_keeps_every_acknowledged_write_passes() {
        let history = [
            write(0, "a", 0, 10, Outcome::Ok),
            write(0, "b", 20, 30, Outcome::Ok),
            // Unknown outcome: may or may not have taken effect.
            write(0, "c", 40, 50, Outcome::Unknown),
            write(1, "x", 0, 10, Outcome::Ok),
        ];
        let checks = check_keys(&history, 2, &finals(&[(0, Some("b")), (1, Some("x"))]));
        assert_eq!(
            checks,
            KeyChecks {
                linearizable: true,
                inconclusive: false,
                lost: 0
            }
        );
        assert_eq!(
            OutcomeCounts::of(&history),
            OutcomeCounts {
                ok: 3,
                failed: 0,
                unknown: 1
            }
        );
    }

    #[test]
    fn a_final_value_older_than_an_acknowledged_write_is_a_lost_write() {
        // "b" was acknowledged after "a" completed, yet the final state holds "a".
        let history = [
            write(0, "a", 0, 10, Outcome::Ok),
            write(0, "b", 20, 30, Outcome::Ok),
        ];
        let checks = check_keys(&history, 1, &finals(&[(0, Some("a"))]));
        assert_eq!(checks.lost, 1);
        // Without a final read in the history, the search alone cannot see it.
        assert!(checks.proven_linearizable());
        // A key gone although a write was acknowledged loses every acknowledged write.
        assert_eq!(check_keys(&history, 1, &finals(&[(0, None)])).lost, 2);
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_not_linearizable() {
        let history = [
            write(0, "a", 0, 10, Outcome::Ok),
            write(0, "b", 20, 30, Outcome::Ok),
            Record {
                key: 0,
                op: RegisterOp::Read(Some("a".into())),
                call_us: 40,
                return_us: Some(50),
                outcome: Outcome::Ok,
            },
        ];
        let checks = check_keys(&history, 1, &BTreeMap::new());
        assert!(!checks.linearizable && !checks.proven_linearizable());
        assert_eq!(checks.lost, 0, "no final value, nothing to compare");
    }
}
