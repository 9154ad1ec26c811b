//! What the hardware does without us: fdatasync of a 4 KiB write, a 64-byte TCP ping-pong
//! (with the echoing side idle between messages, and busy), one TCP stream. Raw sockets use
//! blocking threads (no runtime, no epoll): the floor.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::report::Row;
use super::util::{histogram, record, us, RawFile};
use super::Ctx;

/// A stalled peer fails the run instead of hanging it.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
pub const PING_BYTES: usize = 64;
const SAMPLES_MAX: u64 = 1_000_000;
/// The floor is measured in this many interleaved runs (an fdatasync run, then an idle
/// ping-pong run), so its spread on this shared machine is published with it.
const FLOOR_RUNS: usize = 5;
/// Pause before each idle round trip: long enough that the echoing thread blocks and its
/// core may go idle, as a follower's does between the appends of a 1-client cluster (which
/// commits one write every ~300 us). A back-to-back ping-pong keeps both ends hot and
/// measured 13 us against ~55 us with a woken peer: not what a commit meets.
pub const IDLE_GAP: Duration = Duration::from_millis(1);

pub struct Baselines {
    /// Median over [`FLOOR_RUNS`] of each run's fdatasync p50.
    pub fdatasync_us_p50: f64,
    /// Median over [`FLOOR_RUNS`] of each run's idle round-trip p50.
    pub rtt_idle_us_p50: f64,
}

impl Baselines {
    /// The least a replicated commit can take here: the leader's durable write (in parallel
    /// with the follower's, the same cost) plus two round trips with a peer woken for each
    /// message: client to leader and back, leader to follower and back.
    pub fn floor_commit_us(&self) -> f64 {
        Self::floor_of(self.fdatasync_us_p50, self.rtt_idle_us_p50)
    }

    fn floor_of(fdatasync_us: f64, rtt_idle_us: f64) -> f64 {
        fdatasync_us + 2.0 * rtt_idle_us
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

fn fdatasync_run(raw: &mut RawFile, duration: Duration) -> std::io::Result<Histogram<u64>> {
    let block = vec![0x5Au8; 4096];
    let mut h = histogram();
    let deadline = Instant::now() + duration;
    let mut n = 0u64;
    while (Instant::now() < deadline || n < 10) && n < SAMPLES_MAX {
        let start = Instant::now();
        raw.append_sync(&block)?;
        record(&mut h, start.elapsed());
        n += 1;
    }
    Ok(h)
}

pub fn run(ctx: &Ctx, raw: &mut RawFile, rows: &mut Vec<Row>) -> std::io::Result<Baselines> {
    let (mut fsync_all, mut idle_all) = (histogram(), histogram());
    let (mut fsync_p50s, mut idle_p50s) = (Vec::new(), Vec::new());
    for _ in 0..FLOOR_RUNS {
        let h = fdatasync_run(raw, ctx.scale(Duration::from_millis(800)))?;
        fsync_p50s.push(us(&h, 0.5));
        fsync_all.add(&h).expect("same bounds");
        let h = ping_pong(ctx.scale(Duration::from_millis(600)), IDLE_GAP)?;
        idle_p50s.push(us(&h, 0.5));
        idle_all.add(&h).expect("same bounds");
    }
    let spread = |v: &[f64]| {
        let (lo, hi) = min_max(v);
        format!("median of {FLOOR_RUNS} runs' p50s; they spanned {lo:.1}-{hi:.1} us")
    };
    let fsync_p50 = median(&fsync_p50s);
    rows.push(
        Row::new("baseline_fdatasync_4KiB_latency_us_p50", "us", fsync_p50)
            .note(spread(&fsync_p50s)),
    );
    rows.push(Row::new(
        "baseline_fdatasync_4KiB_latency_us_p99",
        "us",
        us(&fsync_all, 0.99),
    ));
    let idle_p50 = median(&idle_p50s);
    rows.push(
        Row::new("baseline_tcp_rtt_idle_64B_us_p50", "us", idle_p50).note(format!(
            "{} ms pause before each round trip, so the echoing side is woken; {}",
            IDLE_GAP.as_millis(),
            spread(&idle_p50s)
        )),
    );
    rows.push(Row::new(
        "baseline_tcp_rtt_idle_64B_us_p99",
        "us",
        us(&idle_all, 0.99),
    ));

    let h = ping_pong(ctx.scale(Duration::from_secs(2)), Duration::ZERO)?;
    rows.push(
        Row::new("baseline_tcp_rtt_64B_us_p50", "us", us(&h, 0.5))
            .note("back to back: both ends stay hot (not part of the floor)"),
    );
    rows.push(Row::new("baseline_tcp_rtt_64B_us_p99", "us", us(&h, 0.99)));

    let chunk = vec![0xC3u8; 1 << 20];
    let (bytes, took) = stream(&chunk, ctx.scale(Duration::from_secs(3)))?;
    rows.push(Row::new(
        "baseline_tcp_stream_MB_per_s",
        "MB/s",
        bytes as f64 / took.as_secs_f64() / 1e6,
    ));
    let b = Baselines {
        fdatasync_us_p50: fsync_p50,
        rtt_idle_us_p50: idle_p50,
    };
    let per_run: Vec<f64> = fsync_p50s
        .iter()
        .zip(&idle_p50s)
        .map(|(&f, &r)| Baselines::floor_of(f, r))
        .collect();
    let (lo, hi) = min_max(&per_run);
    rows.push(
        Row::new("floor_commit_us", "us", b.floor_commit_us()).note(format!(
            "fdatasync 4KiB p50 {fsync_p50:.1} + 2 x idle TCP RTT 64B p50 {idle_p50:.1} (client to leader, leader to follower); per run {lo:.1}-{hi:.1} us over {FLOOR_RUNS} runs"
        )),
    );
    rows.push(Row::new("floor_commit_us_run_min", "us", lo));
    rows.push(Row::new("floor_commit_us_run_max", "us", hi));
    Ok(b)
}

fn pair() -> std::io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    for s in [&client, &server] {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(SOCKET_TIMEOUT))?;
        s.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    }
    Ok((client, server))
}

/// Round trips of a 64-byte message over 127.0.0.1 (TCP_NODELAY) for `duration`, each
/// after a pause of `gap` (zero: back to back).
pub fn ping_pong(duration: Duration, gap: Duration) -> std::io::Result<Histogram<u64>> {
    let (mut client, mut server) = pair()?;
    // The echo thread ends when the client closes its end (read returns 0 or fails).
    let echo = thread::spawn(move || {
        let mut buf = [0u8; PING_BYTES];
        while server.read_exact(&mut buf).is_ok() {
            if server.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut h = histogram();
    let msg = [0x11u8; PING_BYTES];
    let mut buf = [0u8; PING_BYTES];
    let deadline = Instant::now() + duration;
    let mut n = 0u64;
    let result: std::io::Result<()> = (|| {
        while (Instant::now() < deadline || n < 10) && n < SAMPLES_MAX {
            if !gap.is_zero() {
                thread::sleep(gap);
            }
            let start = Instant::now();
            client.write_all(&msg)?;
            client.read_exact(&mut buf)?;
            record(&mut h, start.elapsed());
            n += 1;
        }
        Ok(())
    })();
    let _ = client.shutdown(Shutdown::Both);
    drop(client);
    let _ = echo.join();
    result.map(|()| h)
}

/// Writes `batch` over and over on one connection for about `duration`; after each write
/// the writer waits until the reader has received all of it, as a host waits for a batch
/// to arrive. Returns bytes moved and the time taken.
pub fn stream(batch: &[u8], duration: Duration) -> std::io::Result<(u64, Duration)> {
    let (mut client, mut server) = pair()?;
    let batch_len = batch.len() as u64;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let reader = thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            let n = server.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            got += n as u64;
            while got >= batch_len {
                got -= batch_len;
                if done_tx.send(()).is_err() {
                    return Ok(());
                }
            }
        }
    });
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut batches = 0u64;
    let result: std::io::Result<()> = (|| {
        while (Instant::now() < deadline || batches < 2) && batches < SAMPLES_MAX {
            client.write_all(batch)?;
            done_rx
                .recv_timeout(SOCKET_TIMEOUT)
                .map_err(|e| std::io::Error::other(format!("raw stream reader: {e}")))?;
            bytes += batch_len;
            batches += 1;
        }
        Ok(())
    })();
    let took = start.elapsed();
    let _ = client.shutdown(Shutdown::Both);
    drop(client);
    drop(done_rx);
    let reader_result = reader.join().unwrap_or(Ok(()));
    result?;
    // A reader error after the writer finished (the shutdown) is expected, not a failure.
    let _ = reader_result;
    Ok((bytes, took))
}
