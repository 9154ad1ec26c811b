//! Restart time of a node holding many log entries, by full replay and from a snapshot.
//!
//! One single-voter raft-node (so that no peer can serve reads for it or feed it entries
//! while it restarts) is loaded with `entries` SETs of the workload's shape, snapshots off.
//! Then, each time SIGTERM and a fresh process on the same data directory, timed from spawn
//! until a linearizable GET succeeds (the node has elected itself, replayed, and applied
//! everything committed):
//! 1. snapshots still off: the whole log is replayed;
//! 2. the node is restarted with `--snapshot-entries-max entries/10`, which makes it
//!    snapshot while it replays; once the snapshot covers at least 90% of the log it is
//!    stopped again (this start is not timed);
//! 3. the same settings: the node loads the snapshot and replays only the tail after it.
//!
//! Elections are shortened to 30-60 ms (3-6 ticks of 10 ms) so that the figure is the
//! node's own start-up, not a timeout chosen for a cluster.

use std::path::Path;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use raft_proto::{
    KvCommand, KvResponse, NodeStatus, Request, RequestFrame, Response, ResponseFrame,
    FRAME_BYTES_MAX,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::load::{key, Conn, Op, Proto, Rng, KEY_SPACE, VALUE_BYTES};
use super::procs::{Proc, Procs};
use raft_testkit::try_free_addr;

/// Connections that load the log, each with [`LOAD_WINDOW`] proposals in flight: together
/// well under the node's `proposals_in_flight_max` (8,192), so none is refused as busy.
const LOAD_CONNS: usize = 4;
const LOAD_WINDOW: usize = 512;
/// Loading 1M entries takes tens of seconds here; past this something is broken.
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Replaying 1M entries takes seconds; past this the restart failed.
const SERVE_TIMEOUT: Duration = Duration::from_secs(300);
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// "Never" for the snapshot policy, without overflowing its arithmetic.
const SNAPSHOTS_OFF: u64 = 1 << 50;

pub struct RestartResult {
    pub replay_ms: f64,
    pub snapshot_ms: f64,
    /// Entries left in the log after the snapshot, replayed in the timed start from it.
    pub snapshot_tail_entries: u64,
    pub log_last_index: u64,
    pub load_entries_per_s: f64,
}

fn args(dir: &Path, peer: &str, client: &str, snapshot_entries_max: u64) -> Vec<String> {
    [
        "run",
        "--id",
        "1",
        "--peer",
        &format!("1={peer},{client}"),
        "--data-dir",
        &dir.display().to_string(),
        "--snapshot-entries-max",
        &snapshot_entries_max.to_string(),
        "--tick-interval-ms",
        "10",
        "--election-timeout-ticks-min",
        "3",
        "--election-timeout-ticks-max",
        "6",
        "--heartbeat-interval-ticks",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub async fn run(binary: &Path, dir: &Path, entries: u64) -> Result<RestartResult, String> {
    let peer = try_free_addr().map_err(|e| e.to_string())?.to_string();
    let client = try_free_addr().map_err(|e| e.to_string())?.to_string();
    let data = dir.join("restart-node");
    let mut procs = Procs::default();
    procs.0.push(
        Proc::new(
            "restart node",
            binary,
            args(&data, &peer, &client, SNAPSHOTS_OFF),
            dir.join("restart-node.log"),
        )
        .with_env("RUST_LOG", "warn"),
    );
    procs.0[0]
        .start()
        .map_err(|e| format!("starting node: {e}"))?;
    wait_serving(&mut procs, &client).await?;
    let load_start = Instant::now();
    load(&client, entries).await?;
    let load_entries_per_s = entries as f64 / load_start.elapsed().as_secs_f64();
    let loaded = status(&client).await?;
    if loaded.last_index < entries {
        return Err(format!(
            "loaded {entries} proposals but the log ends at {}",
            loaded.last_index
        ));
    }
    procs.0[0].stop();

    // 1. Full replay.
    procs.0[0]
        .start()
        .map_err(|e| format!("restarting node: {e}"))?;
    let replay = wait_serving(&mut procs, &client).await?;
    let after = status(&client).await?;
    if after.applied_index < loaded.last_index {
        return Err(format!(
            "restarted node serves at applied {} below the loaded {}",
            after.applied_index, loaded.last_index
        ));
    }
    procs.0[0].stop();

    // 2. Snapshot while replaying (untimed).
    let every = (entries / 10).max(1);
    procs.0[0].set_args(args(&data, &peer, &client, every));
    procs.0[0]
        .start()
        .map_err(|e| format!("restarting node: {e}"))?;
    wait_serving(&mut procs, &client).await?;
    let want = loaded.last_index - loaded.last_index / 10;
    let deadline = Instant::now() + SERVE_TIMEOUT;
    let snapped = loop {
        let s = status(&client).await?;
        // The log keeps its trailing margin below the snapshot (raft-node's
        // `--snapshot-log-margin-entries`): compacted is enough, not compacted to it.
        if s.snapshot_index >= want && s.first_index > 1 {
            break s;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no snapshot at or past {want} with the log compacted within {SERVE_TIMEOUT:?} (snapshot_index {}, first_index {})",
                s.snapshot_index, s.first_index
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    procs.0[0].stop();

    // 3. From the snapshot.
    procs.0[0]
        .start()
        .map_err(|e| format!("restarting node: {e}"))?;
    let from_snapshot = wait_serving(&mut procs, &client).await?;
    let end = status(&client).await?;
    procs.0[0].stop();
    Ok(RestartResult {
        replay_ms: replay.as_secs_f64() * 1e3,
        snapshot_ms: from_snapshot.as_secs_f64() * 1e3,
        snapshot_tail_entries: end.last_index.saturating_sub(snapped.snapshot_index),
        log_last_index: loaded.last_index,
        load_entries_per_s,
    })
}

/// Time from now (just after spawn) until a linearizable GET on `client` succeeds.
async fn wait_serving(procs: &mut Procs, client: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let deadline = start + SERVE_TIMEOUT;
    let mut conn: Option<Conn> = None;
    loop {
        procs.check_alive()?;
        if Instant::now() > deadline {
            return Err(format!("node not serving within {SERVE_TIMEOUT:?}"));
        }
        if conn.is_none() {
            conn = Conn::connect(Proto::Native, &None, client, 1).await.ok();
        }
        if let Some(c) = conn.as_mut() {
            match c.call(Op::Get, &key(0)).await {
                Ok(()) => return Ok(start.elapsed()),
                Err(e) if e.contains("closed") || e.contains("read") || e.contains("write") => {
                    conn = None
                }
                Err(_) => {}
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn status(client: &str) -> Result<NodeStatus, String> {
    let mut config = raft_client::ClientConfig::new([client.to_string()]);
    config.request_timeout_ms = 5_000;
    raft_client::Client::new(config)
        .status()
        .await
        .map_err(|e| format!("status of {client}: {e}"))
}

/// `entries` sessionless SET proposals, pipelined: each is one log entry.
async fn load(client: &str, entries: u64) -> Result<(), String> {
    let per_conn = entries.div_ceil(LOAD_CONNS as u64);
    let mut tasks = Vec::new();
    for c in 0..LOAD_CONNS {
        let n = per_conn.min(entries.saturating_sub(per_conn * c as u64));
        let client = client.to_string();
        tasks.push(tokio::spawn(async move {
            tokio::time::timeout(LOAD_TIMEOUT, load_conn(&client, n, c as u64))
                .await
                .map_err(|_| format!("loading did not finish within {LOAD_TIMEOUT:?}"))?
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("load task: {e}"))??;
    }
    Ok(())
}

async fn load_conn(client: &str, n: u64, seed: u64) -> Result<(), String> {
    let mut s = TcpStream::connect(client)
        .await
        .map_err(|e| format!("connect {client}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut rng = Rng::new(seed + 17);
    let value = Bytes::from(vec![b'r'; VALUE_BYTES]);
    let mut rbuf = BytesMut::with_capacity(64 << 10);
    let mut wbuf = Vec::with_capacity(LOAD_WINDOW * 160);
    let mut sent = 0u64;
    let mut id = 0u64;
    while sent < n {
        let batch = (n - sent).min(LOAD_WINDOW as u64);
        wbuf.clear();
        for _ in 0..batch {
            id += 1;
            let frame = RequestFrame {
                id,
                body: Request::Propose {
                    session: None,
                    op: KvCommand::Set {
                        key: Bytes::copy_from_slice(&key(rng.below(KEY_SPACE))),
                        value: value.clone(),
                    }
                    .encode(),
                },
            };
            let at = wbuf.len();
            wbuf.extend_from_slice(&[0; 4]);
            wbuf = postcard::to_extend(&frame, wbuf).map_err(|e| e.to_string())?;
            let len = (wbuf.len() - at - 4) as u32;
            wbuf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        s.write_all(&wbuf)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut got = 0;
        while got < batch {
            if rbuf.len() >= 4 {
                let len = u32::from_be_bytes(rbuf[..4].try_into().expect("4 bytes")) as usize;
                if len > FRAME_BYTES_MAX {
                    return Err(format!("frame of {len} bytes"));
                }
                if rbuf.len() >= 4 + len {
                    rbuf.advance(4);
                    let body = rbuf.split_to(len);
                    let reply: ResponseFrame =
                        postcard::from_bytes(&body).map_err(|e| format!("decode: {e}"))?;
                    match reply.body {
                        Response::Applied(b)
                            if matches!(KvResponse::decode(&b), Some(KvResponse::Ok)) => {}
                        other => return Err(format!("load: unexpected reply {other:?}")),
                    }
                    got += 1;
                    continue;
                }
            }
            let r = s
                .read_buf(&mut rbuf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if r == 0 {
                return Err("node closed the load connection".into());
            }
        }
        sent += batch;
    }
    Ok(())
}
