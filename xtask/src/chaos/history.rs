//! The history of the clients' operations, and the checks of it that are not the
//! linearizability search: acknowledged writes the final state lost, and the report files.

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use tokio::sync::Mutex;

use super::linearizability::RegisterOp;

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
    pub(super) fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// Acknowledged writes of `key` that the final value contradicts: the final value was written
/// by an operation that completed before the acknowledged write began (values are unique), or
/// the key is absent although a write was acknowledged.
pub(super) fn lost_writes(
    history: &[Record],
    key: usize,
    final_value: Option<&Option<String>>,
) -> usize {
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
