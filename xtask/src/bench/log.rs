//! raft-log append+sync through its public API, beside the raw baseline: the same framed
//! bytes (`raft_log::format::encode_batch`) written with `pwrite` + `fdatasync` into a
//! preallocated, zero-filled file. Subject and baseline rounds alternate.
//!
//! The raw baseline overwrites a ring of already-written blocks. The log is measured the way
//! a node runs it in its steady state: compacted (untimed, as a snapshot would) to one
//! segment behind its end whenever it holds two, so new segments reuse the files compaction
//! frees and are overwritten too, and the disk writes the log's bytes once. Without
//! compaction every 64 MiB segment is a new file zero-filled in the background, so the disk
//! writes every byte twice and a bandwidth-bound row can reach only about half of the raw
//! loop; `XTASK_BENCH_LOG_GROWING=1` measures that instead.

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
/// The log's segment size (`Options::default`), for the compaction that keeps it bounded.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Bytes per append of the untimed warm-up.
const WARM_UP_APPEND_BYTES: usize = 4 << 20;
/// Environment variable: measure a growing log (no compaction, every segment a new file).
const GROWING_VAR: &str = "XTASK_BENCH_LOG_GROWING";

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
    /// Compact to one segment behind the end whenever two are held.
    compacting: bool,
}

impl Subject {
    fn open(root: &Path, compacting: bool) -> Result<Subject, String> {
        Ok(Subject {
            root: root.to_owned(),
            generation: 0,
            log: Subject::open_generation(root, 0)?,
            compacting,
        })
    }

    /// Untimed, as a node's snapshot-driven compaction is not part of an append: once the
    /// log holds two segments' worth of entries, drops all but the last one's worth. The
    /// state write it makes is forced by the next (timed) sync, once per segment, as the
    /// segment roll's extra syncs are.
    fn compact_if_long(&mut self, entry_bytes: usize) -> Result<(), String> {
        if !self.compacting {
            return Ok(());
        }
        // Entries per segment, with the few bytes of framing each entry carries.
        let per_segment = SEGMENT_BYTES / (entry_bytes as u64 + 8);
        let (first, last) = (self.log.first_index(), self.log.last_index());
        if last + 1 - first <= 2 * per_segment {
            return Ok(());
        }
        let index = last - per_segment;
        let term = self.log.term(index).map_err(|e| e.to_string())?;
        self.log
            .compact(raft_core::SnapshotMeta {
                index,
                term,
                membership: Default::default(),
            })
            .map_err(|e| e.to_string())
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

    /// Untimed: fills and compacts three segments' worth, so that compaction has freed a
    /// segment file and the next segment reuses one, as in a node's steady state (the raw
    /// baseline's ring was written before any timing too).
    fn warm_up(&mut self, payload: &Bytes) -> Result<(), String> {
        if !self.compacting {
            return Ok(());
        }
        let per_append = (WARM_UP_APPEND_BYTES / payload.len()).max(1);
        let appends = (3 * SEGMENT_BYTES as usize).div_ceil(per_append * payload.len());
        for _ in 0..appends {
            let entries = self.batch(per_append, payload);
            self.append_sync(&entries)?;
            self.compact_if_long(payload.len())?;
        }
        self.settle();
        Ok(())
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
        // A compacting log is bounded already (three segments and two recycled files).
        if self.compacting || self.log.last_index() * entry_bytes as u64 <= LOG_BYTES_MAX {
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
    let compacting = std::env::var_os(GROWING_VAR).is_none();
    for entry_bytes in ENTRY_BYTES {
        let dir = ctx.scratch.join(format!("raft-log-{entry_bytes}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut subject = Subject::open(&dir, compacting)?;
        let payload = Bytes::from(vec![0xA5u8; entry_bytes]);
        subject.warm_up(&payload)?;
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
                            subject.compact_if_long(entry_bytes)?;
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
