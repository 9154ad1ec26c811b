//! A snapshot installed over raft-net's snapshot lane, beside a raw loopback copy of the
//! same bytes with fsync, in the same run (issue 17: the install at >= 0.8x the raw copy).
//!
//! - install: node 1's `TransportHandle::send_snapshot` of a snapshot file (chunks read
//!   from it as they go) to node 2, which writes them into its snapshot store's partial
//!   file, fsyncs it, reads it all again to check it (header, chunk CRCs, body digest) and
//!   renames it into place with a directory fsync; timed from the send until node 2 hands
//!   over the installed file;
//! - raw: the same file read in 1 MiB pieces into a loopback TCP socket by one thread, read
//!   by another into a new file, fsynced.
//!
//! Both write into the bench's scratch directory (the project's filesystem); each round's
//! output file is removed before the next round, outside the timing. The sender's file was
//! just written, so both read it from the page cache. Rounds alternate which side goes first.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use raft_core::rng::SplitMix64;
use raft_core::{Membership, SnapshotMeta};
use raft_net::{Incoming, Transport, TransportConfig};
use raft_snapshot::{
    SnapshotChunks, SnapshotFile, SnapshotStore, SnapshotStoreConfig, StateDigest,
};

use super::report::Row;
use super::util::subject_first;
use super::Ctx;

/// Pieces of the raw copy and of writing the body, as the store writes its chunks.
const PIECE_BYTES: usize = 1 << 20;
/// One install or copy must finish within this, or the bench fails rather than hangs.
const ROUND_TIMEOUT: Duration = Duration::from_secs(300);

pub fn run(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<(), String> {
    let body_mib: usize = if ctx.quick { 128 } else { 512 };
    let rounds = if ctx.quick { 2 } else { 4 };
    let dir = ctx.scratch.join("snapshot");
    let result = run_in(&dir, body_mib, rounds, rows);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(dir: &Path, body_mib: usize, rounds: usize, rows: &mut Vec<Row>) -> Result<(), String> {
    let store_config = SnapshotStoreConfig {
        snapshots_kept_max: 1,
        ..Default::default()
    };
    let e = |e: raft_snapshot::SnapshotError| e.to_string();
    let (sender, _) = SnapshotStore::open(dir.join("sender"), store_config.clone()).map_err(e)?;
    let (receiver, _) = SnapshotStore::open(dir.join("receiver"), store_config).map_err(e)?;
    let meta = SnapshotMeta {
        index: 1,
        term: 1,
        membership: Membership::new_voters([1, 2]),
    };
    let file = write_snapshot(&sender, meta, body_mib << 20)?;
    let file_bytes = std::fs::metadata(&file.path)
        .map_err(|e| e.to_string())?
        .len();
    let raw_copy = dir.join("raw-copy");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (a, b, mut b_rx) = rt
        .block_on(async {
            let config = |id| TransportConfig::new(id, 0x5AB, "127.0.0.1:0".parse().unwrap());
            let mut cb = config(2);
            cb.snapshot_store = Some(receiver.clone());
            let (a, _a_rx) = Transport::start(config(1)).await?;
            let (b, b_rx) = Transport::start(cb).await?;
            a.add_peer(2, b.local_addr());
            b.add_peer(1, a.local_addr());
            Ok::<_, std::io::Error>((a, b, b_rx))
        })
        .map_err(|e| e.to_string())?;

    let (mut lane_time, mut raw_time) = (Duration::ZERO, Duration::ZERO);
    let mut outcome = Ok(());
    'rounds: for r in 0..rounds {
        for subject_turn in [subject_first(r), !subject_first(r)] {
            let took = if subject_turn {
                for f in receiver.list().map_err(e)? {
                    let _ = std::fs::remove_file(f.path);
                }
                let chunks = SnapshotChunks::open(&file, 0, 0).map_err(e)?;
                let started = Instant::now();
                let done = a.send_snapshot(2, chunks).map_err(|e| e.to_string())?;
                let got = rt.block_on(async {
                    tokio::time::timeout(ROUND_TIMEOUT, async {
                        while let Some(item) = b_rx.recv().await {
                            if let Incoming::Snapshot { file, .. } = item {
                                return Ok(file);
                            }
                        }
                        Err("the transport closed".to_string())
                    })
                    .await
                    .map_err(|_| "no install within the timeout".to_string())?
                });
                let took = started.elapsed();
                let sent = rt.block_on(async { tokio::time::timeout(ROUND_TIMEOUT, done).await });
                match (got, sent) {
                    (Ok(_), Ok(Ok(Ok(())))) => took,
                    (got, sent) => {
                        outcome = Err(format!("install round {r}: {got:?}, sender {sent:?}"));
                        break 'rounds;
                    }
                }
            } else {
                let _ = std::fs::remove_file(&raw_copy);
                match raw_copy_fsync(&file.path, &raw_copy, file_bytes) {
                    Ok(took) => took,
                    Err(err) => {
                        outcome = Err(format!("raw copy round {r}: {err}"));
                        break 'rounds;
                    }
                }
            };
            if subject_turn {
                lane_time += took;
            } else {
                raw_time += took;
            }
        }
    }
    rt.block_on(async {
        a.shutdown().await;
        b.shutdown().await;
    });
    outcome?;
    let mb_per_s = |t: Duration| (file_bytes * rounds as u64) as f64 / t.as_secs_f64() / 1e6;
    rows.push(
        Row::new(
            format!("snapshot_install_{body_mib}mib_mb_per_s"),
            "MB/s",
            mb_per_s(lane_time),
        )
        .vs("raw_tcp_copy_fsync", mb_per_s(raw_time))
        .note(format!(
            "{rounds} rounds each, alternating; install = lane transfer + fsync + full re-read check + rename"
        )),
    );
    Ok(())
}

/// A snapshot with a body of `body_bytes` pseudo-random (incompressible) bytes.
fn write_snapshot(
    store: &SnapshotStore,
    meta: SnapshotMeta,
    body_bytes: usize,
) -> Result<SnapshotFile, String> {
    let mut writer = store.begin(meta).map_err(|e| e.to_string())?;
    let mut rng = SplitMix64::new(17);
    let mut piece = vec![0u8; PIECE_BYTES];
    let mut left = body_bytes;
    while left > 0 {
        for word in piece.chunks_exact_mut(8) {
            word.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        let n = left.min(PIECE_BYTES);
        writer.write_all(&piece[..n]).map_err(|e| e.to_string())?;
        left -= n;
    }
    writer.finish(StateDigest(0)).map_err(|e| e.to_string())
}

/// `source` read into a loopback TCP socket by one thread and written from it into `dest` by
/// another, then fsynced.
fn raw_copy_fsync(source: &Path, dest: &Path, len: u64) -> Result<Duration, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut input = File::open(source).map_err(|e| e.to_string())?;
    let mut output = File::create(dest).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut out = TcpStream::connect(addr)?;
        let mut piece = vec![0u8; PIECE_BYTES];
        loop {
            let n = input.read(&mut piece)?;
            if n == 0 {
                return Ok(());
            }
            out.write_all(&piece[..n])?;
        }
    });
    let (mut conn, _) = listener.accept().map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(ROUND_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut piece = vec![0u8; PIECE_BYTES];
    let mut got = 0u64;
    while got < len {
        let n = conn.read(&mut piece).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("raw copy ended after {got} of {len} bytes"));
        }
        output.write_all(&piece[..n]).map_err(|e| e.to_string())?;
        got += n as u64;
    }
    output.sync_all().map_err(|e| e.to_string())?;
    let took = started.elapsed();
    sender
        .join()
        .map_err(|_| "raw sender panicked".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(took)
}
