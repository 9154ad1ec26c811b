//! raft-log append+sync through its public API, beside the raw baseline: the same framed
//! bytes (`raft_log::format::encode_batch`) written with `pwrite` + `fdatasync` into a
//! preallocated, zero-filled file. Subject and baseline rounds alternate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use raft_core::{Entry, EntryPayload, LogStore};
use raft_log::{Log, Options};

use super::report::Row;
use super::util::{histogram, record, subject_first, us, RawFile};
use super::Ctx;

pub const ENTRY_BYTES: [usize; 3] = [100, 1024, 16 * 1024];
pub const BATCHES: [usize; 3] = [1, 64, 1024];
/// A log directory is replaced once it holds this much, to bound disk use.
const LOG_BYTES_MAX: u64 = 512 << 20;
const OPS_PER_ROUND_MAX: u64 = 100_000;
/// Each side gets at least this many syncs per round, however slow the disk.
const OPS_PER_ROUND_MIN: u64 = 3;
const SPARE_WAIT_MAX: Duration = Duration::from_secs(20);

struct Side {
    latency: Histogram<u64>,
    ops: u64,
    busy: Duration,
}

impl Side {
    fn new() -> Side {
        Side {
            latency: histogram(),
            ops: 0,
            busy: Duration::ZERO,
        }
    }

    fn time(&mut self, f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        let start = Instant::now();
        f()?;
        let took = start.elapsed();
        record(&mut self.latency, took);
        self.busy += took;
        self.ops += 1;
        Ok(())
    }
}

struct Subject {
    root: PathBuf,
    generation: u64,
    log: Log,
}

impl Subject {
    fn open(root: &Path) -> Result<Subject, String> {
        Ok(Subject {
            root: root.to_owned(),
            generation: 0,
            log: Subject::open_generation(root, 0)?,
        })
    }

    fn batch(&self, n: usize, payload: &Bytes) -> Vec<Entry> {
        let next = self.log.last_index() + 1;
        (next..next + n as u64)
            .map(|index| Entry {
                index,
                term: 1,
                payload: EntryPayload::Command(payload.clone()),
            })
            .collect()
    }

    fn append_sync(&mut self, entries: &[Entry]) -> Result<(), String> {
        self.log.append(entries).map_err(|e| e.to_string())?;
        self.log.sync().map_err(|e| e.to_string())
    }

    /// Waits (untimed) until the background zero-fill of the next segment is done, so that
    /// its disk traffic does not fall into the baseline's round.
    fn settle(&self) {
        let deadline = Instant::now() + SPARE_WAIT_MAX;
        while !self.log.spare_idle() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn rotate_if_big(&mut self, entry_bytes: usize) -> Result<(), String> {
        if self.log.last_index() * entry_bytes as u64 <= LOG_BYTES_MAX {
            return Ok(());
        }
        let old = self.root.join(format!("log-{}", self.generation));
        self.generation += 1;
        let new = Subject::open_generation(&self.root, self.generation)?;
        self.log = new;
        std::fs::remove_dir_all(old).map_err(|e| e.to_string())
    }

    /// Opens a fresh log and appends one entry: the first append creates (and zero-fills)
    /// the first segment, as the raw file was filled before any timing.
    fn open_generation(root: &Path, generation: u64) -> Result<Log, String> {
        let mut log = Log::open(root.join(format!("log-{generation}")), Options::default())
            .map_err(|e| e.to_string())?;
        let e = Entry {
            index: 1,
            term: 1,
            payload: EntryPayload::Command(Bytes::from_static(b"warm-up")),
        };
        log.append(&[e]).map_err(|e| e.to_string())?;
        log.sync().map_err(|e| e.to_string())?;
        Ok(log)
    }
}

pub fn run(ctx: &Ctx, raw: &mut RawFile, rows: &mut Vec<Row>) -> Result<(), String> {
    let rounds = if ctx.quick { 2 } else { 4 };
    let round = ctx.scale(Duration::from_millis(600));
    for entry_bytes in ENTRY_BYTES {
        let dir = ctx.scratch.join(format!("raft-log-{entry_bytes}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut subject = Subject::open(&dir)?;
        let payload = Bytes::from(vec![0xA5u8; entry_bytes]);
        for batch in BATCHES {
            let framed = framed(&payload, batch)?;
            let (mut log_side, mut raw_side) = (Side::new(), Side::new());
            for r in 0..rounds {
                for subject_turn in [subject_first(r), !subject_first(r)] {
                    if subject_turn {
                        subject.rotate_if_big(entry_bytes)?;
                        subject.settle();
                        let deadline = Instant::now() + round;
                        for i in 0..OPS_PER_ROUND_MAX {
                            if i >= OPS_PER_ROUND_MIN && Instant::now() >= deadline {
                                break;
                            }
                            let entries = subject.batch(batch, &payload);
                            log_side.time(|| subject.append_sync(&entries))?;
                        }
                        subject.settle();
                    } else {
                        let deadline = Instant::now() + round;
                        for i in 0..OPS_PER_ROUND_MAX {
                            if i >= OPS_PER_ROUND_MIN && Instant::now() >= deadline {
                                break;
                            }
                            raw_side
                                .time(|| raw.append_sync(&framed).map_err(|e| e.to_string()))?;
                        }
                    }
                }
            }
            let case = format!("{}_batch{batch}", size_label(entry_bytes));
            let mbps = |s: &Side| {
                (s.ops * batch as u64 * entry_bytes as u64) as f64 / s.busy.as_secs_f64() / 1e6
            };
            rows.push(
                Row::new(
                    format!("log_{case}_payload_MB_per_s"),
                    "MB/s",
                    mbps(&log_side),
                )
                .vs(format!("raw_{case}_payload_MB_per_s"), mbps(&raw_side)),
            );
            for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
                rows.push(
                    Row::new(
                        format!("log_{case}_sync_latency_us_{label}"),
                        "us",
                        us(&log_side.latency, q),
                    )
                    .vs(
                        format!("raw_{case}_sync_latency_us_{label}"),
                        us(&raw_side.latency, q),
                    ),
                );
            }
        }
        drop(subject);
        std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{}KiB", bytes / 1024)
    } else {
        format!("{bytes}B")
    }
}

/// The bytes the log writes for one batch of these entries: one batch record.
fn framed(payload: &Bytes, batch: usize) -> Result<Vec<u8>, String> {
    let entries: Vec<Entry> = (0..batch as u64)
        .map(|i| Entry {
            // Indexes of the size the log will be at, so varint lengths match.
            index: 1_000 + i,
            term: 1,
            payload: EntryPayload::Command(payload.clone()),
        })
        .collect();
    let mut out = Vec::new();
    raft_log::format::encode_batch(&entries, Default::default(), &mut out)
        .map_err(|e| format!("{e:?}"))?;
    Ok(out)
}
