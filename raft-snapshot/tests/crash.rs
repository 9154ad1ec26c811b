//! Crash consistency: a child process writes and installs snapshots in a loop and is killed
//! with SIGKILL at random moments, hundreds of times, in the same directory. After every
//! kill, `open_latest` must return a complete, valid snapshot at least as new as the last one
//! the child reported durable, and never a partial or corrupt one.
//!
//! The child is this test binary itself, re-executed with `CHILD_DIR_ENV` set and filtered
//! to `crash_child`. Knobs: `RAFT_SNAPSHOT_CRASH_KILLS` (default 300) and
//! `RAFT_SNAPSHOT_CRASH_SEED` (default: from the clock, printed so a failure can be replayed).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use raft_core::rng::SplitMix64;
use raft_core::{Index, SnapshotMeta};
use raft_snapshot::{
    SnapshotChunks, SnapshotSource, SnapshotStore, SnapshotStoreConfig, StateDigest,
};

const CHILD_DIR_ENV: &str = "RAFT_SNAPSHOT_CRASH_CHILD_DIR";
const KILLS_DEFAULT: u64 = 300;
/// Bound on the child's work if nobody kills it.
const CHILD_SNAPSHOTS_MAX: u64 = 10_000;
const BODY_BYTES_MAX: u64 = 200_000;
const READY_TIMEOUT: Duration = Duration::from_secs(20);

fn store_config() -> SnapshotStoreConfig {
    SnapshotStoreConfig {
        snapshots_kept_max: 3,
        chunk_bytes: 4096,
        ..Default::default()
    }
}

/// A state whose bytes are a pure function of its index, so the parent can check what it
/// loads without having seen the child's memory.
struct Synthetic {
    index: Index,
}

impl Synthetic {
    fn body_bytes(&self) -> u64 {
        self.index.wrapping_mul(7919) % BODY_BYTES_MAX
    }

    fn bytes(&self) -> Vec<u8> {
        let mut rng = SplitMix64::new(self.index);
        let mut out = Vec::with_capacity(self.body_bytes() as usize + 8);
        while (out.len() as u64) < self.body_bytes() {
            out.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        out.truncate(self.body_bytes() as usize);
        out
    }
}

impl SnapshotSource for Synthetic {
    fn snapshot(&self, writer: &mut dyn Write) -> io::Result<()> {
        // Odd write sizes, so chunk boundaries and writes never line up.
        for piece in self.bytes().chunks(1237) {
            writer.write_all(piece)?;
        }
        Ok(())
    }

    fn digest(&self) -> StateDigest {
        StateDigest::of(&self.bytes())
    }
}

fn meta(index: Index) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term: index,
        membership: raft_core::Membership::new_voters([1, 2, 3]),
    }
}

/// The child: alternately writes a snapshot locally and installs one through the assembler
/// (from a source store beside it), printing `begin N` and `done N` (after `finish`
/// returned, i.e. the snapshot is durable).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let (store, _) = SnapshotStore::open(dir.join("store"), store_config()).unwrap();
    let (source, _) = SnapshotStore::open(
        dir.join("source"),
        SnapshotStoreConfig {
            snapshots_kept_max: 1,
            ..store_config()
        },
    )
    .unwrap();
    let first = store.list().unwrap().last().map_or(1, |f| f.index + 1);
    let mut out = io::stdout();
    writeln!(out, "ready").unwrap();
    for index in first..first + CHILD_SNAPSHOTS_MAX {
        let state = Synthetic { index };
        if index % 2 == 0 {
            writeln!(out, "begin {index} write").unwrap();
            store.write_snapshot(meta(index), &state).unwrap();
        } else {
            let file = source.write_snapshot(meta(index), &state).unwrap();
            writeln!(out, "begin {index} install").unwrap();
            let mut assembler = store.receive(meta(index)).unwrap();
            let resume_offset = assembler.progress().next_offset;
            if resume_offset > 0 {
                writeln!(out, "resume {index} {resume_offset}").unwrap();
            }
            let chunk_bytes = 1000 + (index as usize * 131) % 20_000;
            for chunk in
                SnapshotChunks::open(&file, assembler.progress().next_offset, chunk_bytes).unwrap()
            {
                assembler.accept(&chunk.unwrap()).unwrap();
            }
            assembler.finish().unwrap();
        }
        writeln!(out, "done {index}").unwrap();
    }
}

struct ChildRun {
    lines: Vec<String>,
}

impl ChildRun {
    /// The index on the last line starting with `word`, and the rest of that line.
    fn last(&self, word: &str) -> Option<(Index, &str)> {
        self.lines.iter().rev().find_map(|l| {
            let mut fields = l.strip_prefix(word)?.split_whitespace();
            let index = fields.next()?.parse().ok()?;
            Some((index, fields.next().unwrap_or("")))
        })
    }
}

fn run_child_and_kill(dir: &Path, delay: Duration) -> ChildRun {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            // libtest prints "test crash_child ... " without a newline before it.
            Ok(line) if line.ends_with("ready") => break,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("child never became ready: {e}");
            }
        }
    }
    std::thread::sleep(delay);
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    ChildRun { lines }
}

#[test]
fn sigkill_while_writing_and_installing_snapshots_never_leaves_a_partial_one() {
    if std::env::var(CHILD_DIR_ENV).is_ok() {
        return;
    }
    let kills: u64 = std::env::var("RAFT_SNAPSHOT_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KILLS_DEFAULT);
    let seed: u64 = std::env::var("RAFT_SNAPSHOT_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test: {kills} kills, RAFT_SNAPSHOT_CRASH_SEED={seed}");
    let mut rng = SplitMix64::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (mut durable_max, mut temp_files_removed, mut resumed_installs) = (0, 0, 0);
    // Kills between `begin` and `done` of a local write, of an install, and anywhere else
    // (startup, writing the install's source, between snapshots).
    let (mut kills_mid_write, mut kills_mid_install, mut kills_elsewhere) = (0, 0, 0);
    for kill in 0..kills {
        let delay = Duration::from_micros(rng.range(0, 25_000));
        let run = run_child_and_kill(dir.path(), delay);
        let done = run.last("done ").map(|(index, _)| index);
        if let Some(done) = done {
            durable_max = durable_max.max(done);
        }
        match run.last("begin ") {
            Some((index, "write")) if Some(index) > done => kills_mid_write += 1,
            Some((index, "install")) if Some(index) > done => kills_mid_install += 1,
            _ => kills_elsewhere += 1,
        }
        resumed_installs += run
            .lines
            .iter()
            .filter(|l| l.starts_with("resume "))
            .count();

        let (store, report) =
            SnapshotStore::open(dir.path().join("store"), store_config()).unwrap();
        temp_files_removed += report.temp_files_removed.len();
        assert!(
            report.unknown_files.is_empty(),
            "{:?}",
            report.unknown_files
        );
        let latest = store.open_latest().unwrap();
        assert!(
            latest.rejected.is_empty(),
            "kill {kill} (seed {seed}) left a corrupt snapshot: {:?}",
            latest.rejected
        );
        match latest.snapshot {
            None => assert_eq!(
                durable_max, 0,
                "kill {kill} (seed {seed}): durable snapshot lost"
            ),
            Some(mut reader) => {
                let index = reader.header().meta.index;
                assert!(
                    index >= durable_max,
                    "kill {kill} (seed {seed}): loaded {index}, but {durable_max} was durable"
                );
                let expected = Synthetic { index };
                let mut body = Vec::new();
                reader.read_to_end(&mut body).unwrap();
                assert!(
                    body == expected.bytes(),
                    "kill {kill}: body of {index} differs"
                );
                assert_eq!(reader.header().state_digest, expected.digest());
            }
        }
        assert!(store.list().unwrap().len() <= store_config().snapshots_kept_max);
    }
    eprintln!(
        "crash test: {kills} SIGKILLs in {:.1?}: {kills_mid_write} during a snapshot write, \
         {kills_mid_install} during an install, {kills_elsewhere} elsewhere; \
         {resumed_installs} installs resumed, {temp_files_removed} temp files cleaned, \
         newest durable index {durable_max}",
        started.elapsed()
    );
    assert!(
        durable_max > 0,
        "the child never completed a snapshot: delays too short"
    );
    assert!(
        kills_mid_write > 0 && kills_mid_install > 0,
        "kills missed the snapshot code: delays badly tuned"
    );
}
