//! Multi-group log against the single-group log, same run, same directory: rounds of
//! `ENTRIES_PER_SYNC` appends of 100-byte entries, spread round-robin over 1, 64 and 1,000
//! groups of one `MultiLog`, then one sync; the single-group `Log` appends the same entries
//! in one call and syncs. Variants alternate trial by trial so the noise of a shared disk
//! hits all alike; both logs compact as they go so their disk use stays bounded. Prints
//! entries/s per variant (median and range of the trials) and each one's ratio to the single
//! log.
//!
//! Env: `RAFT_LOG_BENCH_DIR` (default: a temp dir), `RAFT_LOG_MULTI_BENCH_TRIALS` (default
//! 3), `RAFT_LOG_MULTI_BENCH_SECS` (seconds per trial, default 2),
//! `RAFT_LOG_MULTI_BENCH_GROUPS=1,64` (only these group counts, beside the single log).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, LogStore, SnapshotMeta};
use raft_log::{Log, MultiLog, MultiOptions, Options};

const ENTRY_BYTES: usize = 100;
const ENTRIES_PER_SYNC: u64 = 1024;
const GROUP_COUNTS: [u64; 3] = [1, 64, 1000];
/// Entries each group (or the single log) keeps behind its last when it compacts, and how
/// many it holds before it does: compacting rarely keeps the single log's extra state-file
/// sync (its compaction point lives there) out of most rounds, so rounds compare appends.
const KEEP_ENTRIES: u64 = 2048;
const COMPACT_AT_ENTRIES: u64 = 16 * KEEP_ENTRIES;
/// Rounds (syncs) per trial, at most, whatever the time budget.
const ROUNDS_MAX: u64 = 100_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench_root() -> (tempfile::TempDir, PathBuf) {
    let dir = match std::env::var_os("RAFT_LOG_BENCH_DIR") {
        Some(root) => {
            std::fs::create_dir_all(&root).unwrap();
            tempfile::tempdir_in(root).unwrap()
        }
        None => tempfile::tempdir().unwrap(),
    };
    let path = dir.path().to_owned();
    (dir, path)
}

fn entry(index: u64, payload: &Bytes) -> Entry {
    Entry {
        index,
        term: 1,
        payload: EntryPayload::Command(payload.clone()),
    }
}

/// One variant's trial: entries/s over `budget`.
fn trial_single(dir: &Path, payload: &Bytes, budget: Duration) -> f64 {
    let mut log = Log::open(dir, Options::default()).unwrap();
    // Its background thread zero-fills the next segment after open; time the steady state,
    // as the single-log bench does (bounded wait).
    let waiting = Instant::now();
    while !log.spare_idle() && waiting.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let start = Instant::now();
    let mut written = 0u64;
    for _ in 0..ROUNDS_MAX {
        let next = log.last_index() + 1;
        let batch: Vec<Entry> = (next..next + ENTRIES_PER_SYNC)
            .map(|i| entry(i, payload))
            .collect();
        log.append(&batch).unwrap();
        log.sync().unwrap();
        written += ENTRIES_PER_SYNC;
        let last = log.last_index();
        if last - log.first_index() > COMPACT_AT_ENTRIES {
            let index = last - KEEP_ENTRIES;
            log.compact(SnapshotMeta {
                index,
                term: 1,
                membership: Default::default(),
            })
            .unwrap();
        }
        if start.elapsed() >= budget {
            break;
        }
    }
    written as f64 / start.elapsed().as_secs_f64()
}

fn trial_multi(dir: &Path, groups: u64, payload: &Bytes, budget: Duration) -> f64 {
    let mut log = MultiLog::open(dir, MultiOptions::default()).unwrap();
    for g in 1..=groups {
        if !log.has_group(g) {
            log.create_group(g, SnapshotMeta::default()).unwrap();
        }
    }
    log.sync().unwrap();
    let per_group = (ENTRIES_PER_SYNC / groups).max(1);
    let mut next_group = 1;
    let start = Instant::now();
    let mut written = 0u64;
    let mut batch = Vec::with_capacity(per_group as usize);
    for _ in 0..ROUNDS_MAX {
        let mut in_round = 0;
        while in_round < ENTRIES_PER_SYNC {
            let g = next_group;
            next_group = next_group % groups + 1;
            let next = log.last_index(g).unwrap() + 1;
            let n = per_group.min(ENTRIES_PER_SYNC - in_round);
            batch.clear();
            batch.extend((next..next + n).map(|i| entry(i, payload)));
            log.append(g, &batch).unwrap();
            in_round += n;
            let last = next + n - 1;
            if last - log.first_index(g).unwrap() > COMPACT_AT_ENTRIES {
                let index = last - KEEP_ENTRIES;
                log.compact(
                    g,
                    SnapshotMeta {
                        index,
                        term: 1,
                        membership: Default::default(),
                    },
                )
                .unwrap();
            }
        }
        log.sync().unwrap();
        written += ENTRIES_PER_SYNC;
        if start.elapsed() >= budget {
            break;
        }
    }
    // Every round must have cost exactly one sync: the point of sharing the log.
    assert!(log.sync_count() <= written / ENTRIES_PER_SYNC + 1);
    written as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes libtest flags; `--list` (from `cargo test --benches`) gets none.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let trials = env_u64("RAFT_LOG_MULTI_BENCH_TRIALS", 3).max(1);
    let budget = Duration::from_secs(env_u64("RAFT_LOG_MULTI_BENCH_SECS", 2).max(1));
    let payload = Bytes::from(vec![0xA5u8; ENTRY_BYTES]);
    let (_root, root) = bench_root();
    // Always the single log first (the ratios' base), then the group counts asked for.
    let only: Option<Vec<u64>> = std::env::var("RAFT_LOG_MULTI_BENCH_GROUPS")
        .ok()
        .map(|v| v.split(',').filter_map(|g| g.parse().ok()).collect());
    let variants: Vec<Option<u64>> = std::iter::once(None)
        .chain(
            GROUP_COUNTS
                .iter()
                .filter(|g| only.as_ref().is_none_or(|o| o.contains(g)))
                .map(|&g| Some(g)),
        )
        .collect();
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for trial in 0..trials {
        for (i, v) in variants.iter().enumerate() {
            let dir = root.join(format!("t{trial}-v{i}"));
            let rate = match v {
                None => trial_single(&dir, &payload, budget),
                Some(groups) => trial_multi(&dir, *groups, &payload, budget),
            };
            std::fs::remove_dir_all(&dir).unwrap();
            results[i].push(rate);
        }
    }
    let single = median(results[0].clone());
    println!(
        "multi-group log vs single-group log: {ENTRY_BYTES} B entries, {ENTRIES_PER_SYNC} per \
         sync, {trials} trials of {}s, dir {}",
        budget.as_secs(),
        root.display()
    );
    for (v, r) in variants.iter().zip(&results) {
        let name = match v {
            None => "single Log".to_string(),
            Some(g) => format!("MultiLog, {g} groups"),
        };
        let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.iter().copied().fold(0.0, f64::max);
        let m = median(r.clone());
        println!(
            "{name:>24}: {m:>10.0} entries/s [{lo:.0}-{hi:.0}]  ratio {:.2}",
            m / single
        );
    }
}
