//! What the hardware does without us: fdatasync of a 4 KiB write, a 64-byte TCP ping-pong,
//! one TCP stream. Raw sockets use blocking threads (no runtime, no epoll): the floor.

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

pub struct Baselines {
    pub fdatasync_us_p50: f64,
    pub rtt_us_p50: f64,
}

impl Baselines {
    /// The least a replicated commit can take here: one durable write plus one round trip.
    pub fn floor_commit_us(&self) -> f64 {
        self.fdatasync_us_p50 + self.rtt_us_p50
    }
}

pub fn run(ctx: &Ctx, raw: &mut RawFile, rows: &mut Vec<Row>) -> std::io::Result<Baselines> {
    let block = vec![0x5Au8; 4096];
    let mut h = histogram();
    let deadline = Instant::now() + ctx.scale(Duration::from_secs(4));
    let mut n = 0u64;
    while (Instant::now() < deadline || n < 10) && n < SAMPLES_MAX {
        let start = Instant::now();
        raw.append_sync(&block)?;
        record(&mut h, start.elapsed());
        n += 1;
    }
    let fsync_p50 = us(&h, 0.5);
    rows.push(Row::new(
        "baseline_fdatasync_4KiB_latency_us_p50",
        "us",
        fsync_p50,
    ));
    rows.push(Row::new(
        "baseline_fdatasync_4KiB_latency_us_p99",
        "us",
        us(&h, 0.99),
    ));

    let h = ping_pong(ctx.scale(Duration::from_secs(3)))?;
    let rtt_p50 = us(&h, 0.5);
    rows.push(Row::new("baseline_tcp_rtt_64B_us_p50", "us", rtt_p50));
    rows.push(Row::new("baseline_tcp_rtt_64B_us_p99", "us", us(&h, 0.99)));

    let chunk = vec![0xC3u8; 1 << 20];
    let (bytes, took) = stream(&chunk, ctx.scale(Duration::from_secs(3)))?;
    rows.push(Row::new(
        "baseline_tcp_stream_MB_per_s",
        "MB/s",
        bytes as f64 / took.as_secs_f64() / 1e6,
    ));
    rows.push(
        Row::new("floor_commit_us", "us", fsync_p50 + rtt_p50)
            .note("fdatasync 4KiB p50 + TCP RTT 64B p50"),
    );
    Ok(Baselines {
        fdatasync_us_p50: fsync_p50,
        rtt_us_p50: rtt_p50,
    })
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

/// Round trips of a 64-byte message over 127.0.0.1 (TCP_NODELAY) for `duration`.
pub fn ping_pong(duration: Duration) -> std::io::Result<Histogram<u64>> {
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
