//! raft-log benchmarks, each beside a raw baseline measured in the same run on the same
//! directory:
//! - `append_sync/{entry}B/batch{n}`: append `n` entries and sync, vs writing the same framed
//!   bytes with `pwrite` + `fdatasync` into preallocated files (`raw_pwrite`);
//! - `write_path`: `pwrite`+`fdatasync` vs `memcpy` into a shared mapping + `msync`;
//! - `open_1GiB`: opening (recovery scan of) a 1 GiB log vs mapping and CRC-ing its bytes;
//! - `read_range`: reading 4 MiB of 1 KiB entries vs `pread` + CRC of the same bytes.
//!
//! After criterion, an interleaved pass (log and raw alternating, so the noise of a shared
//! disk hits both alike) prints the ratios the targets are stated in.
//!
//! Env: `RAFT_LOG_BENCH_DIR` (default: a temp dir), `RAFT_LOG_BENCH_OPEN_BYTES` (default 1 GiB),
//! `RAFT_LOG_BENCH_RATIO_ONLY` (skip criterion, print only the interleaved ratios),
//! `RAFT_LOG_BENCH_OPEN_ONLY` (only the open and read benchmarks),
//! `RAFT_LOG_BENCH_CASES=100x1,16384x1024` (ratio pass cases), `RAFT_LOG_BENCH_NO_ZERO_FILL`,
//! `RAFT_LOG_BENCH_OPEN_ENTRY_BYTES` (entry size of the open/read log, default 1024),
//! `RAFT_LOG_BENCH_SUSTAINED_MIB` (bytes each variant of the sustained pass writes, default
//! 768 MiB), `RAFT_LOG_BENCH_SUSTAINED_ONLY` (print only the sustained pass).
//!
//! Kept in one file although over ~800 lines: one bench target whose `main` runs criterion,
//! then the interleaved ratio pass and the sustained pass, on the same directory and with the
//! switches above; split into several targets, those runs and switches would be split too.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use raft_core::{Entry, EntryPayload, LogStore};
use raft_log::format::{encode_batch, BatchKey, SEGMENT_HEADER_BYTES};
use raft_log::{Log, Options};

const SEGMENT_BYTES: u64 = 64 << 20;
const ENTRY_SIZES: [usize; 3] = [100, 1024, 16 * 1024];
const BATCHES: [usize; 3] = [1, 64, 1024];

fn bench_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("RAFT_LOG_BENCH_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir).unwrap();
            let sub = tempfile::tempdir_in(&dir).unwrap();
            let path = sub.path().to_owned();
            (Some(sub), path)
        }
        None => {
            let sub = tempfile::tempdir().unwrap();
            let path = sub.path().to_owned();
            (Some(sub), path)
        }
    }
}

fn fallocate(file: &File, bytes: u64) {
    // SAFETY: valid descriptor.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, bytes as libc::off_t) };
    assert_eq!(rc, 0, "posix_fallocate failed");
}

/// How the raw baseline's file was preallocated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Raw {
    /// One file filled with real zeroes (and synced) before timing; appends wrap around at
    /// its end. Every write is an overwrite of written blocks: the fastest durable append.
    Overwrite,
    /// Fresh `posix_fallocate`d files (unwritten extents), a new one (and a directory
    /// fsync) whenever one fills up.
    Fallocate,
}

/// The baseline: the same bytes written with `pwrite` + `fdatasync` into a preallocated file.
struct RawAppender {
    mode: Raw,
    dir: PathBuf,
    dir_file: File,
    file: File,
    path: PathBuf,
    offset: u64,
    capacity: u64,
    files: u64,
}

impl RawAppender {
    fn new(dir: &Path, capacity: u64, mode: Raw) -> RawAppender {
        let dir = dir.join(match mode {
            Raw::Overwrite => "raw-overwrite",
            Raw::Fallocate => "raw-fallocate",
        });
        std::fs::create_dir_all(&dir).unwrap();
        let (file, path) = Self::create(&dir, 0, capacity, mode);
        RawAppender {
            mode,
            dir_file: File::open(&dir).unwrap(),
            dir,
            file,
            path,
            offset: 0,
            capacity,
            files: 0,
        }
    }

    fn create(dir: &Path, n: u64, capacity: u64, mode: Raw) -> (File, PathBuf) {
        let path = dir.join(format!("raw-{n}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        fallocate(&file, capacity);
        if mode == Raw::Overwrite {
            let zeroes = vec![0u8; 1 << 20];
            for at in (0..capacity).step_by(zeroes.len()) {
                file.write_all_at(&zeroes[..(capacity - at).min(1 << 20) as usize], at)
                    .unwrap();
            }
            file.sync_all().unwrap();
        }
        (file, path)
    }

    fn append_sync(&mut self, bytes: &[u8]) {
        let mut rolled = false;
        if self.offset + bytes.len() as u64 > self.capacity {
            match self.mode {
                Raw::Overwrite => self.offset = 0,
                Raw::Fallocate => {
                    std::fs::remove_file(&self.path).unwrap();
                    self.files += 1;
                    let (file, path) =
                        Self::create(&self.dir, self.files, self.capacity, self.mode);
                    self.file = file;
                    self.path = path;
                    self.offset = 0;
                    rolled = true;
                }
            }
        }
        self.file.write_all_at(bytes, self.offset).unwrap();
        self.offset += bytes.len() as u64;
        self.file.sync_data().unwrap();
        if rolled {
            self.dir_file.sync_all().unwrap();
        }
    }
}

/// The log under test, appending batches of `batch` entries of `entry_bytes` bytes.
struct LogAppender {
    log: Log,
    payload: Bytes,
    batch: usize,
    /// Log directories are replaced when they grow past this, to bound disk use.
    dir: PathBuf,
    generation: u64,
    options: Options,
}

const LOG_BYTES_MAX: u64 = 1 << 30;

impl LogAppender {
    fn new(dir: &Path, entry_bytes: usize, batch: usize) -> LogAppender {
        Self::with_options(dir, entry_bytes, batch, options())
    }

    fn with_options(dir: &Path, entry_bytes: usize, batch: usize, options: Options) -> LogAppender {
        let path = dir.join("log-0");
        let mut appender = LogAppender {
            log: Log::open(&path, options.clone()).unwrap(),
            payload: Bytes::from(vec![0xA5u8; entry_bytes]),
            batch,
            dir: dir.to_owned(),
            generation: 0,
            options,
        };
        // The first append makes the first segment (zero-filled inline) and starts the
        // background zero-fill of the next; like the raw baseline's file, both are made
        // before timing starts. Their cost is per 64 MiB of log, not per sync.
        let first = appender.next_batch();
        appender.append_sync(&first);
        appender.wait_for_spare();
        appender
    }

    fn wait_for_spare(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log.spare_idle() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn next_batch(&mut self) -> Vec<Entry> {
        // What the log holds (a compacted log never gets here).
        let held = self.log.last_index() + 1 - self.log.first_index();
        if held * self.payload.len() as u64 > LOG_BYTES_MAX {
            let old = self.dir.join(format!("log-{}", self.generation));
            self.generation += 1;
            self.log = Log::open(
                self.dir.join(format!("log-{}", self.generation)),
                self.options.clone(),
            )
            .unwrap();
            std::fs::remove_dir_all(old).unwrap();
        }
        let next = self.log.last_index() + 1;
        (next..next + self.batch as u64)
            .map(|index| Entry {
                index,
                term: 1,
                payload: EntryPayload::Command(self.payload.clone()),
            })
            .collect()
    }

    fn append_sync(&mut self, entries: &[Entry]) {
        self.log.append(entries).unwrap();
        self.log.sync().unwrap();
    }

    /// Compacts to one segment behind the end once two segments' worth is held, as a node
    /// that snapshots does, so the log stays bounded (like the raw baseline's ring) and new
    /// segments reuse freed files. Once per segment, like a roll: the state write it makes
    /// is forced by the next sync, and compacting after every append would force one per
    /// sync. Untimed, as a snapshot is not part of an append. `cargo xtask bench` uses the
    /// same rule.
    fn compact_behind(&mut self) {
        let entries_per_segment = SEGMENT_BYTES / (self.payload.len() as u64 + 8);
        let (first, last) = (self.log.first_index(), self.log.last_index());
        if last + 1 - first > 2 * entries_per_segment {
            let index = last - entries_per_segment;
            let term = self.log.term(index).unwrap();
            self.log
                .compact(raft_core::SnapshotMeta {
                    index,
                    term,
                    membership: Default::default(),
                })
                .unwrap();
        }
    }
}

fn options() -> Options {
    let defaults = Options::default();
    Options {
        segment_bytes: SEGMENT_BYTES,
        segment_zero_fill: std::env::var_os("RAFT_LOG_BENCH_NO_ZERO_FILL").is_none(),
        ..defaults
    }
}

/// `RAFT_LOG_BENCH_CASES=100x1,16384x1024` limits the ratio pass to those cases.
fn case_selected(entry_bytes: usize, batch: usize) -> bool {
    match std::env::var("RAFT_LOG_BENCH_CASES") {
        Ok(cases) => cases
            .split(',')
            .any(|c| c.trim() == format!("{entry_bytes}x{batch}")),
        Err(_) => true,
    }
}

/// The bytes the log writes for one batch (one batch record), for the raw baseline to
/// write too.
fn framed(entry_bytes: usize, batch: usize) -> Vec<u8> {
    let payload = Bytes::from(vec![0xA5u8; entry_bytes]);
    let entries: Vec<Entry> = (1..=batch as u64)
        .map(|index| Entry {
            index: 1_000_000 + index,
            term: 1,
            payload: EntryPayload::Command(payload.clone()),
        })
        .collect();
    let mut out = Vec::new();
    encode_batch(&entries, BatchKey::default(), &mut out).unwrap();
    out
}

fn bench_append(c: &mut Criterion, dir: &Path) {
    for entry_bytes in ENTRY_SIZES {
        let mut group = c.benchmark_group(format!("append_sync/{entry_bytes}B"));
        group.sampling_mode(SamplingMode::Flat);
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(300));
        group.measurement_time(Duration::from_secs(1));
        for batch in BATCHES {
            group.throughput(Throughput::Bytes((entry_bytes * batch) as u64));
            let case_dir = dir.join(format!("append-{entry_bytes}-{batch}"));
            std::fs::create_dir_all(&case_dir).unwrap();
            let mut log = LogAppender::new(&case_dir, entry_bytes, batch);
            group.bench_function(BenchmarkId::new("raft_log", format!("batch{batch}")), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let entries = log.next_batch();
                        let start = Instant::now();
                        log.append_sync(&entries);
                        total += start.elapsed();
                        log.compact_behind();
                    }
                    total
                })
            });
            drop(log);
            let bytes = framed(entry_bytes, batch);
            let mut raw = RawAppender::new(&case_dir, SEGMENT_BYTES, Raw::Overwrite);
            group.bench_function(
                BenchmarkId::new("raw_pwrite", format!("batch{batch}")),
                |b| b.iter(|| raw.append_sync(&bytes)),
            );
            drop(raw);
            std::fs::remove_dir_all(&case_dir).unwrap();
        }
        group.finish();
    }
}

/// `memcpy` into a shared writable mapping + `msync`, the alternative write path.
struct MsyncAppender {
    map: memmap2::MmapMut,
    offset: usize,
    _file: File,
}

impl MsyncAppender {
    fn new(dir: &Path, capacity: u64) -> MsyncAppender {
        let path = dir.join("msync");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        fallocate(&file, capacity);
        file.write_all_at(&vec![0u8; capacity as usize], 0).unwrap();
        file.sync_all().unwrap();
        // SAFETY: a private benchmark file nobody else touches or truncates.
        let map = unsafe { memmap2::MmapOptions::new().map_mut(&file) }.unwrap();
        MsyncAppender {
            map,
            offset: 0,
            _file: file,
        }
    }

    fn append_sync(&mut self, bytes: &[u8]) {
        if self.offset + bytes.len() > self.map.len() {
            self.offset = 0;
        }
        self.map[self.offset..self.offset + bytes.len()].copy_from_slice(bytes);
        self.map.flush_range(self.offset, bytes.len()).unwrap();
        self.offset += bytes.len();
    }
}

fn bench_write_path(c: &mut Criterion, dir: &Path) {
    let mut group = c.benchmark_group("write_path");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    for (entry_bytes, batch) in [(1024, 1), (1024, 64)] {
        let bytes = framed(entry_bytes, batch);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        let case_dir = dir.join("write-path");
        std::fs::create_dir_all(&case_dir).unwrap();
        let mut raw = RawAppender::new(&case_dir, SEGMENT_BYTES, Raw::Overwrite);
        group.bench_function(BenchmarkId::new("pwrite_fdatasync", bytes.len()), |b| {
            b.iter(|| raw.append_sync(&bytes))
        });
        drop(raw);
        let mut msync = MsyncAppender::new(&case_dir, SEGMENT_BYTES);
        group.bench_function(BenchmarkId::new("mmap_msync", bytes.len()), |b| {
            b.iter(|| msync.append_sync(&bytes))
        });
        drop(msync);
        std::fs::remove_dir_all(&case_dir).unwrap();
    }
    group.finish();
}

fn open_bytes() -> u64 {
    std::env::var("RAFT_LOG_BENCH_OPEN_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30)
}

fn open_entry_bytes() -> u64 {
    std::env::var("RAFT_LOG_BENCH_OPEN_ENTRY_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// Builds a log of about `bytes` of entries of `open_entry_bytes()` (default 1 KiB).
fn build_log(path: &Path, bytes: u64) -> u64 {
    let mut log = Log::open(path, options()).unwrap();
    let entry_bytes = open_entry_bytes();
    let payload = Bytes::from(vec![0x5Au8; entry_bytes as usize]);
    let batch = 4096u64;
    while log.last_index() * entry_bytes < bytes {
        let next = log.last_index() + 1;
        let entries: Vec<Entry> = (next..next + batch)
            .map(|index| Entry {
                index,
                term: 1 + index / 100_000,
                payload: EntryPayload::Command(payload.clone()),
            })
            .collect();
        log.append(&entries).unwrap();
    }
    log.sync().unwrap();
    log.last_index()
}

/// Maps every segment and CRCs all of its bytes: the floor for a recovery scan.
fn raw_scan(path: &Path) -> u32 {
    let mut crc = 0;
    for dirent in std::fs::read_dir(path).unwrap() {
        let p = dirent.unwrap().path();
        if p.extension().is_some_and(|e| e == "seg") {
            let file = File::open(&p).unwrap();
            // SAFETY: read-only mapping of a file nobody modifies during the bench.
            let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
            crc ^= crc32fast::hash(&map);
        }
    }
    crc
}

fn bench_open_and_read(c: &mut Criterion, dir: &Path) {
    let path = dir.join("big");
    let bytes = open_bytes();
    let start = Instant::now();
    let last = build_log(&path, bytes);
    eprintln!(
        "built a {} MiB log ({last} entries) in {:?}",
        bytes >> 20,
        start.elapsed()
    );

    let mut group = c.benchmark_group(format!("open_{}MiB", bytes >> 20));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("raft_log_open", |b| {
        b.iter(|| Log::open(&path, options()).unwrap().last_index())
    });
    group.bench_function("raw_mmap_crc32", |b| b.iter(|| raw_scan(&path)));
    group.finish();

    let log = Log::open(&path, options()).unwrap();
    let (low, high) = (last / 2, last / 2 + 4096);
    let mut group = c.benchmark_group("read_range");
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    group.throughput(Throughput::Bytes(4096 * 1024));
    group.bench_function("raft_log_entries_4MiB", |b| {
        b.iter(|| log.entries(low, high, usize::MAX).unwrap().len())
    });
    let (file, offsets, offset, len) = range_location(&path, low, high);
    // The decode step alone, zero-copy (command bytes sliced from the mapping) vs copying,
    // over the same mapped entries.
    // SAFETY: read-only mapping of a file nobody modifies during the bench.
    let map = Bytes::from_owner(unsafe { memmap2::Mmap::map(&file) }.unwrap());
    let decode_all = |zero_copy: bool| {
        let mut n = 0;
        for &at in &offsets {
            let range = raft_log::format::entry_payload(&map, at as usize, 1 << 20).unwrap();
            let entry =
                raft_log::format::decode_entry(&map[range], zero_copy.then_some(&map)).unwrap();
            n += entry.size_bytes();
        }
        n
    };
    group.bench_function("decode_zero_copy_4MiB", |b| b.iter(|| decode_all(true)));
    group.bench_function("decode_copying_4MiB", |b| b.iter(|| decode_all(false)));
    let mut buf = vec![0u8; len];
    group.bench_function("raw_pread_crc32_4MiB", |b| {
        b.iter(|| {
            file.read_exact_at(&mut buf, offset).unwrap();
            crc32fast::hash(&buf)
        })
    });
    group.finish();
}

/// The segment file holding `low..high`, where each of those entries starts in it, and the
/// byte range they span, found by walking the batches.
fn range_location(path: &Path, low: u64, high: u64) -> (File, Vec<u32>, u64, usize) {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(path)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let name_index = |p: &PathBuf| {
        p.file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let seg = segments
        .iter()
        .rev()
        .find(|p| name_index(p) <= low)
        .unwrap();
    let first = name_index(seg);
    let file = File::open(seg).unwrap();
    // SAFETY: read-only mapping of a file nobody modifies during the bench.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let key = raft_log::format::SegmentHeader::decode(&map)
        .unwrap()
        .batch_key();
    let (mut offsets, mut runs) = (Vec::new(), Vec::new());
    let mut at = SEGMENT_HEADER_BYTES;
    while offsets.len() < (high - first) as usize {
        let frame =
            raft_log::format::read_batch(&map, at, 1 << 20, key, &mut offsets, &mut runs).unwrap();
        at = frame.end_offset;
    }
    let wanted = offsets[(low - first) as usize..(high - first) as usize].to_vec();
    let start = wanted[0] as usize;
    let last = *wanted.last().unwrap() as usize;
    let end = raft_log::format::entry_payload(&map, last, 1 << 20)
        .unwrap()
        .end;
    (file, wanted, start as u64, end - start)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Log and raw alternate round by round, so disk noise from other tenants hits both.
fn ratio_pass(dir: &Path) {
    println!();
    println!("interleaved ratios, p50 of append+sync per round; baseline = pwrite+fdatasync of the same bytes into a zero-filled preallocated file");
    println!("throughput ratio = raw p50 / log p50 (target >= 0.90); latency ratio = log p50 / raw p50 (target <= 1.10); raw-falloc = same into fresh fallocated files, for context");
    println!("the log is compacted (untimed) to one segment behind its end whenever it holds two, as a node that snapshots is, so it stays bounded like the raw ring and reuses freed segments");
    println!(
        "{:>8} {:>6} {:>12} {:>12} {:>12} {:>10} {:>10} {:>11}",
        "entry", "batch", "log p50", "raw p50", "raw-falloc", "thr ratio", "lat ratio", "log MiB/s"
    );
    for entry_bytes in ENTRY_SIZES {
        for batch in BATCHES {
            if !case_selected(entry_bytes, batch) {
                continue;
            }
            let bytes_per_sync = entry_bytes * batch;
            let rounds = ((64 << 20) / bytes_per_sync.max(1)).clamp(16, 300);
            let case_dir = dir.join(format!("ratio-{entry_bytes}-{batch}"));
            std::fs::create_dir_all(&case_dir).unwrap();
            let mut log = LogAppender::new(&case_dir, entry_bytes, batch);
            let mut raw = RawAppender::new(&case_dir, SEGMENT_BYTES, Raw::Overwrite);
            let mut falloc = RawAppender::new(&case_dir, SEGMENT_BYTES, Raw::Fallocate);
            let bytes = framed(entry_bytes, batch);
            let (mut log_times, mut raw_times, mut falloc_times) =
                (Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds {
                let entries = log.next_batch();
                let mut order = [0, 1, 2];
                order.rotate_left(round % 3);
                for which in order {
                    let start = Instant::now();
                    match which {
                        0 => log.append_sync(&entries),
                        1 => raw.append_sync(&bytes),
                        _ => falloc.append_sync(&bytes),
                    }
                    let took = start.elapsed();
                    [&mut log_times, &mut raw_times, &mut falloc_times][which].push(took);
                }
                // Untimed, as a node's snapshot-driven compaction is not part of a sync.
                log.compact_behind();
            }
            let (log_p50, raw_p50, falloc_p50) =
                (median(log_times), median(raw_times), median(falloc_times));
            let thr = raw_p50.as_secs_f64() / log_p50.as_secs_f64();
            let lat = log_p50.as_secs_f64() / raw_p50.as_secs_f64();
            let mib_s = bytes_per_sync as f64 / log_p50.as_secs_f64() / (1 << 20) as f64;
            println!(
                "{:>7}B {:>6} {:>12.1?} {:>12.1?} {:>12.1?} {:>10.3} {:>10.3} {:>11.1}",
                entry_bytes, batch, log_p50, raw_p50, falloc_p50, thr, lat, mib_s
            );
            drop(log);
            drop(raw);
            drop(falloc);
            std::fs::remove_dir_all(&case_dir).unwrap();
        }
    }
}

/// Group commit as the host runs it: one thread appends batches back to back, another
/// syncs in a loop through a `SyncHandle`, so encoding overlaps the previous flush. The
/// baseline does the same with the raw bytes (pwrite on one thread, fdatasync on another).
/// Returns (log, raw) wall time for `batches` batches, both ending with a final sync.
fn pipelined(dir: &Path, entry_bytes: usize, batch: usize, batches: usize) -> (Duration, Duration) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut log = LogAppender::new(&dir.join("pipelined-log"), entry_bytes, batch);
    let all: Vec<Vec<Entry>> = (0..batches)
        .map(|i| {
            let next = log.log.last_index() + 1 + (i * batch) as u64;
            (next..next + batch as u64)
                .map(|index| Entry {
                    index,
                    term: 1,
                    payload: EntryPayload::Command(log.payload.clone()),
                })
                .collect()
        })
        .collect();
    let handle = log.log.sync_handle();
    let done = Arc::new(AtomicBool::new(false));
    let syncer = {
        let (handle, done) = (handle.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                handle.sync().unwrap();
            }
        })
    };
    let start = Instant::now();
    for entries in &all {
        log.log.append(entries).unwrap();
    }
    done.store(true, Ordering::Release);
    syncer.join().unwrap();
    handle.sync().unwrap();
    let log_time = start.elapsed();

    let raw = RawAppender::new(&dir.join("pipelined-raw"), SEGMENT_BYTES, Raw::Overwrite);
    let bytes = framed(entry_bytes, batch);
    let file = Arc::new(raw.file.try_clone().unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let syncer = {
        let (file, done) = (file.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                file.sync_data().unwrap();
            }
        })
    };
    let start = Instant::now();
    let mut offset = 0u64;
    for _ in 0..batches {
        if offset + bytes.len() as u64 > SEGMENT_BYTES {
            offset = 0;
        }
        file.write_all_at(&bytes, offset).unwrap();
        offset += bytes.len() as u64;
    }
    done.store(true, Ordering::Release);
    syncer.join().unwrap();
    file.sync_data().unwrap();
    let raw_time = start.elapsed();
    drop(log);
    let _ = std::fs::remove_dir_all(dir.join("pipelined-log"));
    let _ = std::fs::remove_dir_all(dir.join("pipelined-raw"));
    (log_time, raw_time)
}

fn pipelined_pass(dir: &Path) {
    println!();
    println!("group commit, pipelined: one thread appends batches back to back while another syncs in a loop (SyncHandle);");
    println!("raw: pwrite of the prebuilt bytes + an fdatasync thread. The appender is not paced by syncs, so this measures");
    println!("the append path's CPU cost (framing, CRC, index) against a bare memcpy into the page cache. ratio = raw / log, best of 3");
    println!(
        "{:>8} {:>6} {:>8} {:>12} {:>12} {:>8}",
        "entry", "batch", "batches", "log", "raw", "ratio"
    );
    for (entry_bytes, batch) in [
        (100, 64),
        (100, 1024),
        (1024, 64),
        (1024, 1024),
        (16384, 64),
    ] {
        if !case_selected(entry_bytes, batch) {
            continue;
        }
        let batches = ((32 << 20) / (entry_bytes * batch)).clamp(16, 2000);
        let (mut log_best, mut raw_best) = (Duration::MAX, Duration::MAX);
        for _ in 0..3 {
            let (log, raw) = pipelined(dir, entry_bytes, batch, batches);
            log_best = log_best.min(log);
            raw_best = raw_best.min(raw);
        }
        println!(
            "{:>7}B {:>6} {:>8} {:>12.1?} {:>12.1?} {:>8.3}",
            entry_bytes,
            batch,
            batches,
            log_best,
            raw_best,
            raw_best.as_secs_f64() / log_best.as_secs_f64()
        );
    }
}

/// CPU time this thread has used: unlike wall time, not inflated by waiting for a core on
/// a loaded machine.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Where the CPU goes in an append, without the sync: `RAFT_LOG_BENCH_CPU=1`. Both the log
/// and the raw baseline sync after every batch, untimed, so that each write goes into clean
/// pages as in the ratio pass; the difference of their thread CPU is what the log adds.
/// `RAFT_LOG_BENCH_CPU_ROUNDS` (default 50) batches per size, for a profiler to sample;
/// `RAFT_LOG_BENCH_CASES` selects sizes (`100x1024`).
fn cpu_profile(dir: &Path) {
    let rounds: usize = std::env::var("RAFT_LOG_BENCH_CPU_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
        .clamp(1, 100_000);
    for entry_bytes in ENTRY_SIZES {
        if !case_selected(entry_bytes, 1024) {
            continue;
        }
        let mut log = LogAppender::new(&dir.join(format!("cpu-{entry_bytes}")), entry_bytes, 1024);
        let mut append = Duration::ZERO;
        let mut append_cpu = Duration::ZERO;
        for _ in 0..rounds {
            let entries = log.next_batch();
            let (start, start_cpu) = (Instant::now(), thread_cpu());
            log.log.append(&entries).unwrap();
            append_cpu += thread_cpu() - start_cpu;
            append += start.elapsed();
            // Untimed, so that the next append writes into clean pages, as in the ratio pass.
            log.log.sync().unwrap();
            log.compact_behind();
        }
        let entries = log.next_batch();
        let mut buf = Vec::new();
        let mut parts = Vec::new();
        let start = thread_cpu();
        for _ in 0..rounds {
            buf.clear();
            parts.clear();
            raft_log::format::lay_out_entries(
                &entries,
                &mut buf,
                &mut parts,
                raft_log::format::VECTORED_MIN_BYTES,
                u64::MAX,
            )
            .unwrap();
        }
        let encode = thread_cpu() - start;
        let mut x = 0;
        let bytes = framed(entry_bytes, 1024);
        let start = thread_cpu();
        for _ in 0..rounds {
            x ^= crc32fast::hash(&bytes);
        }
        let crc = thread_cpu() - start;
        // The raw baseline's share: `pwrite` of the same bytes (no sync), round a file of
        // one segment's size in the same directory, as the log writes round its segments.
        let raw_path = dir.join(format!("cpu-raw-{entry_bytes}"));
        let raw_file = File::create(&raw_path).unwrap();
        // Written once before timing, as the log's reused segments were.
        let zeroes = vec![0u8; 1 << 20];
        for at in (0..SEGMENT_BYTES).step_by(zeroes.len()) {
            raw_file.write_all_at(&zeroes, at).unwrap();
        }
        let (mut offset, mut raw) = (0u64, Duration::ZERO);
        for _ in 0..rounds {
            if offset + bytes.len() as u64 > SEGMENT_BYTES {
                offset = 0;
            }
            let start = thread_cpu();
            raw_file.write_all_at(&bytes, offset).unwrap();
            raw += thread_cpu() - start;
            raw_file.sync_data().unwrap();
            offset += bytes.len() as u64;
        }
        drop(raw_file);
        std::fs::remove_file(raw_path).unwrap();
        let per = |d: Duration| d.as_nanos() as f64 / (rounds * 1024) as f64;
        println!(
            "{entry_bytes:>6}B x1024, ns/entry: append (no sync) {:.1} wall, {:.1} thread CPU, raw pwrite {:.1} thread CPU; thread CPU of: laying out the entries {:.1}, the batch's crc32 {:.1} ({x})",
            per(append),
            per(append_cpu),
            per(raw),
            per(encode),
            per(crc)
        );
    }
}

/// Variants take turns this many times in the sustained pass, each writing its share.
const SUSTAINED_REPEATS: usize = 3;

/// One variant of the sustained pass.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sustained {
    /// The log, compacted after every sync to about one segment behind its end, as a node
    /// that snapshots does: new segments reuse the files compaction frees.
    LogCompacting,
    /// The same with `Options::segment_reuse` off: freed files are deleted and new
    /// segments are new files, as before reuse existed.
    LogCompactingNoReuse,
    /// The log growing: every new segment is a new file (zero-filled by the spare thread if
    /// it keeps up, else fallocated).
    LogGrowing,
    /// pwrite + fdatasync of the same bytes round a zero-filled 64 MiB file.
    Raw,
}

/// `rounds` append+sync rounds of `batch` x `entry_bytes` back to back; per-round times,
/// and for the log the time to reopen it afterwards (with reuse, its last segment is a
/// reused file whose earlier records recovery must look through).
fn sustained_run(
    dir: &Path,
    which: Sustained,
    entry_bytes: usize,
    batch: usize,
    rounds: usize,
) -> (Vec<Duration>, Option<Duration>) {
    let mut reopen = None;
    let mut times = Vec::with_capacity(rounds);
    let case_dir = dir.join("sustained");
    std::fs::create_dir_all(&case_dir).unwrap();
    if which == Sustained::Raw {
        let bytes = framed(entry_bytes, batch);
        let mut raw = RawAppender::new(&case_dir, SEGMENT_BYTES, Raw::Overwrite);
        for _ in 0..rounds {
            let start = Instant::now();
            raw.append_sync(&bytes);
            times.push(start.elapsed());
        }
    } else {
        let options = Options {
            segment_reuse: which != Sustained::LogCompactingNoReuse,
            ..options()
        };
        let mut log = LogAppender::with_options(&case_dir, entry_bytes, batch, options);
        let compacting = matches!(
            which,
            Sustained::LogCompacting | Sustained::LogCompactingNoReuse
        );
        // Untimed warm-up to the steady state: two segments filled, so that compaction has
        // freed one and (with reuse) a freed file has become a segment; then the spare
        // thread's one-off work is waited for.
        let rounds_per_segment = (SEGMENT_BYTES as usize).div_ceil(entry_bytes * batch);
        for round in 0..2 * rounds_per_segment + 1 + rounds {
            let entries = log.next_batch();
            let start = Instant::now();
            log.append_sync(&entries);
            if round > 2 * rounds_per_segment {
                times.push(start.elapsed());
            } else if round == 2 * rounds_per_segment {
                log.wait_for_spare();
            }
            if compacting {
                log.compact_behind();
            }
        }
        let path = case_dir.join(format!("log-{}", log.generation));
        let options = log.options.clone();
        drop(log);
        let start = Instant::now();
        let reopened = Log::open(&path, options).unwrap();
        reopen = Some(start.elapsed());
        drop(reopened);
    }
    std::fs::remove_dir_all(&case_dir).unwrap();
    (times, reopen)
}

/// Sustained writes, each variant back to back for `RAFT_LOG_BENCH_SUSTAINED_MIB` (so work
/// the log does in the background, like zero-filling the next segment, is not hidden in
/// another variant's turn as it is in the interleaved pass). Variants alternate, twice.
fn sustained_pass(dir: &Path) {
    let total_bytes: usize = std::env::var("RAFT_LOG_BENCH_SUSTAINED_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(768usize)
        .clamp(16, 8192)
        << 20;
    println!();
    println!("sustained append+sync, back to back, {} MiB per variant in {SUSTAINED_REPEATS} turns; p50 and mean per sync; ratio = raw mean / log mean (throughput)", total_bytes >> 20);
    println!(
        "{:>8} {:>6} {:>16} {:>10} {:>10} {:>10} {:>10}",
        "entry", "batch", "variant", "p50", "mean", "MiB/s", "ratio"
    );
    for (entry_bytes, batch) in [(16384, 1024), (1024, 1024), (16384, 64)] {
        if !case_selected(entry_bytes, batch) {
            continue;
        }
        let rounds = (total_bytes / (entry_bytes * batch)).clamp(4, 100_000);
        let variants = [
            Sustained::Raw,
            Sustained::LogCompacting,
            Sustained::LogCompactingNoReuse,
            Sustained::LogGrowing,
        ];
        let mut all: [Vec<Duration>; 4] = Default::default();
        let mut reopens: [Vec<Duration>; 4] = Default::default();
        for _ in 0..SUSTAINED_REPEATS {
            for (i, &which) in variants.iter().enumerate() {
                let rounds = (rounds / SUSTAINED_REPEATS).max(4);
                let (times, reopen) = sustained_run(dir, which, entry_bytes, batch, rounds);
                all[i].extend(times);
                reopens[i].extend(reopen);
            }
        }
        let mean = |v: &[Duration]| v.iter().sum::<Duration>() / v.len() as u32;
        let raw_mean = mean(&all[0]);
        for (i, name) in ["raw", "log-compacting", "log-no-reuse", "log-growing"]
            .into_iter()
            .enumerate()
        {
            let m = mean(&all[i]);
            println!(
                "{:>7}B {:>6} {:>16} {:>10.1?} {:>10.1?} {:>10.1} {:>10.3}",
                entry_bytes,
                batch,
                name,
                median(all[i].clone()),
                m,
                (entry_bytes * batch) as f64 / m.as_secs_f64() / (1 << 20) as f64,
                raw_mean.as_secs_f64() / m.as_secs_f64()
            );
        }
        println!(
            "{:>8} {:>6} reopen after the run (max of {SUSTAINED_REPEATS}): compacting {:.1?}, no-reuse {:.1?}, growing {:.1?}",
            "", "",
            reopens[1].iter().max().unwrap(),
            reopens[2].iter().max().unwrap(),
            reopens[3].iter().max().unwrap()
        );
    }
}

fn main() {
    let (_guard, dir) = bench_dir();
    if std::env::var_os("RAFT_LOG_BENCH_CPU").is_some() {
        cpu_profile(&dir);
        return;
    }
    if std::env::var_os("RAFT_LOG_BENCH_SUSTAINED_ONLY").is_some() {
        sustained_pass(&dir);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    if std::env::var_os("RAFT_LOG_BENCH_OPEN_ONLY").is_some() {
        bench_open_and_read(&mut c, &dir);
        c.final_summary();
        return;
    }
    if std::env::var_os("RAFT_LOG_BENCH_RATIO_ONLY").is_none() {
        bench_append(&mut c, &dir);
        bench_write_path(&mut c, &dir);
        bench_open_and_read(&mut c, &dir);
        c.final_summary();
    }
    // Only under `cargo bench` (criterion's test mode, `cargo test --benches`, skips it).
    if std::env::args().any(|a| a == "--bench") {
        ratio_pass(&dir);
        pipelined_pass(&dir);
        sustained_pass(&dir);
    }
}
