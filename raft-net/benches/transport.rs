//! Transport throughput and round-trip latency over loopback, each beside its raw-TCP
//! baseline measured in the same run. Prints a ratio summary at the end.
//!
//! * `throughput/{transport,raw_tcp}/{100B,16KiB}`: one iteration moves a batch of
//!   AppendEntries messages, each carrying one entry of that payload, from node 1 to
//!   node 2's incoming channel. The raw baseline writes exactly the bytes the transport puts
//!   on the wire (the same frames, pre-encoded) in a plain write loop, and a plain reader
//!   counts them.
//! * `round_trip/{transport,raw_tcp}`: a Heartbeat answered by a HeartbeatResponse from the
//!   host task on the other node, versus a raw ping-pong of the same frame bytes.
//!
//! The closing paired section also prints the process's CPU time per message and per
//! round trip on each side: on a machine shared with other work, wall-time ratios swing
//! with the load, CPU-time ratios much less.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft_core::{Entry, EntryPayload, Message, MessageBody};
use raft_net::frame::encode_frame;
use raft_net::{Incoming, Transport, TransportConfig, TransportHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// (iterations, total time) per benchmark, for the closing ratio summary.
static RESULTS: Mutex<BTreeMap<String, (u64, Duration)>> = Mutex::new(BTreeMap::new());

fn record(name: &str, iters: u64, took: Duration) {
    let mut r = RESULTS.lock().unwrap();
    let e = r.entry(name.to_string()).or_default();
    e.0 += iters;
    e.1 += took;
}

/// Two workers, one per core of the CI machine; `RAFT_NET_BENCH_WORKERS` overrides it.
fn runtime() -> Runtime {
    let workers = std::env::var("RAFT_NET_BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

fn append(payload: &Bytes, i: u64) -> Message {
    Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::AppendEntries {
            prev_log_index: i,
            prev_log_term: 3,
            entries: vec![Entry {
                index: i + 1,
                term: 3,
                payload: EntryPayload::Command(payload.clone()),
            }],
            leader_commit: i,
        },
    }
}

async fn pair(
    queue: usize,
) -> (
    TransportHandle,
    mpsc::Receiver<Incoming>,
    TransportHandle,
    mpsc::Receiver<Incoming>,
) {
    let mut ca = TransportConfig::new(1, 1, "127.0.0.1:0".parse().unwrap());
    ca.queue_messages_max = queue;
    let mut cb = TransportConfig::new(2, 1, "127.0.0.1:0".parse().unwrap());
    cb.queue_messages_max = queue;
    let (a, a_rx) = Transport::start(ca).await.unwrap();
    let (b, b_rx) = Transport::start(cb).await.unwrap();
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    (a, a_rx, b, b_rx)
}

async fn raw_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    c.set_nodelay(true).unwrap();
    s.set_nodelay(true).unwrap();
    (c, s)
}

/// Run `f` inside a spawned task: the host is a tokio task in raft-node, and the raw
/// baselines run the same way so that neither side gets the block_on thread's advantage.
fn on_worker<T: Send + 'static>(
    rt: &Runtime,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    rt.block_on(rt.spawn(f)).unwrap()
}

/// Messages in the batches a host received.
fn messages_in(got: &[Incoming]) -> usize {
    got.iter()
        .map(|i| match i {
            Incoming::Messages(batch) => batch.len(),
            Incoming::Snapshot { .. } => 0,
        })
        .sum()
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("throughput");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (label, size, batch) in [("100B", 100usize, 20_000u64), ("16KiB", 16 * 1024, 2_000)] {
        let payload = Bytes::from(vec![0xAB; size]);
        g.throughput(Throughput::Bytes(size as u64 * batch));

        let (a, _a_rx, b, b_rx) = rt.block_on(pair(batch as usize * 2));
        let mut b_rx = Some(b_rx);
        g.bench_function(BenchmarkId::new("transport", label), |bench| {
            bench.iter_custom(|iters| {
                let (a, mut rx, payload) = (a.clone(), b_rx.take().unwrap(), payload.clone());
                let (total, rx) = on_worker(&rt, async move {
                    let mut total = Duration::ZERO;
                    // A host drains its channel in batches (of batches).
                    let mut got = Vec::with_capacity(1024);
                    for _ in 0..iters {
                        let msgs: Vec<_> = (0..batch).map(|i| append(&payload, i)).collect();
                        let start = Instant::now();
                        for m in msgs {
                            a.send(m).unwrap();
                        }
                        let mut n = 0;
                        while n < batch as usize {
                            got.clear();
                            rx.recv_many(&mut got, 1024).await;
                            n += messages_in(&got);
                        }
                        total += start.elapsed();
                    }
                    (total, rx)
                });
                b_rx = Some(rx);
                record(
                    &format!("throughput/transport/{label}"),
                    iters * batch,
                    total,
                );
                total
            })
        });
        assert_eq!(a.stats().messages_dropped, 0);
        rt.block_on(async {
            a.shutdown().await;
            b.shutdown().await;
        });

        // The raw baseline: the transport's exact wire bytes, written in chunks of the
        // transport's write batch size, read by a plain read loop.
        let mut wire = BytesMut::new();
        for i in 0..batch {
            encode_frame(&append(&payload, i), &mut wire, 1 << 24).unwrap();
        }
        let wire = wire.freeze();
        let write_batch =
            TransportConfig::new(1, 1, "127.0.0.1:0".parse().unwrap()).write_batch_bytes_max;
        let (tx, mut rx) = rt.block_on(raw_pair());
        let (done_tx, done_rx) = mpsc::channel::<()>(1);
        let mut raw = Some((tx, done_rx));
        let expect = wire.len();
        let reader = rt.spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            loop {
                match rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
                if got >= expect {
                    got -= expect;
                    if done_tx.send(()).await.is_err() {
                        return;
                    }
                }
            }
        });
        g.bench_function(BenchmarkId::new("raw_tcp", label), |bench| {
            bench.iter_custom(|iters| {
                let ((mut tx, mut done), wire) = (raw.take().unwrap(), wire.clone());
                let (total, tx, done) = on_worker(&rt, async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        for chunk in wire.chunks(write_batch) {
                            tx.write_all(chunk).await.unwrap();
                        }
                        done.recv().await.unwrap();
                    }
                    (start.elapsed(), tx, done)
                });
                raw = Some((tx, done));
                record(&format!("throughput/raw_tcp/{label}"), iters * batch, total);
                total
            })
        });
        drop(raw);
        rt.block_on(reader).unwrap();
    }
    g.finish();
}

fn ping(seq: u64) -> Message {
    Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::Heartbeat {
            commit: 1000,
            read_seq: seq,
        },
    }
}

fn round_trip(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("round_trip");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let (a, a_rx, b, mut b_rx) = rt.block_on(pair(1024));
    let mut a_rx = Some(a_rx);
    // Node 2's host: answer every heartbeat.
    let echo = {
        let b = b.clone();
        rt.spawn(async move {
            while let Some(Incoming::Messages(batch)) = b_rx.recv().await {
                for m in batch {
                    if let MessageBody::Heartbeat { read_seq, .. } = m.body {
                        let reply = Message {
                            from: 2,
                            to: 1,
                            term: m.term,
                            body: MessageBody::HeartbeatResponse { read_seq },
                        };
                        if b.send(reply).is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    g.bench_function("transport", |bench| {
        bench.iter_custom(|iters| {
            let (a, mut rx) = (a.clone(), a_rx.take().unwrap());
            let (total, rx) = on_worker(&rt, async move {
                let start = Instant::now();
                for i in 0..iters {
                    a.send(ping(i)).unwrap();
                    rx.recv().await.unwrap();
                }
                (start.elapsed(), rx)
            });
            a_rx = Some(rx);
            record("round_trip/transport", iters, total);
            total
        })
    });
    rt.block_on(async {
        a.shutdown().await;
        b.shutdown().await;
    });
    echo.abort(); // It holds a handle clone, so its channel would never close.
    let _ = rt.block_on(echo);

    // Raw ping-pong of the same frame bytes (the heartbeat's frame each way).
    let mut frame = BytesMut::new();
    encode_frame(&ping(1), &mut frame, 1024).unwrap();
    let frame = frame.freeze();
    let n = frame.len();
    let (cl, mut sv) = rt.block_on(raw_pair());
    let mut cl = Some(cl);
    let server = rt.spawn(async move {
        let mut buf = vec![0u8; n];
        while sv.read_exact(&mut buf).await.is_ok() {
            if sv.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    g.bench_function("raw_tcp", |bench| {
        bench.iter_custom(|iters| {
            let (mut c, frame) = (cl.take().unwrap(), frame.clone());
            let (total, c) = on_worker(&rt, async move {
                let mut buf = vec![0u8; n];
                let start = Instant::now();
                for _ in 0..iters {
                    c.write_all(&frame).await.unwrap();
                    c.read_exact(&mut buf).await.unwrap();
                }
                (start.elapsed(), c)
            });
            cl = Some(c);
            record("round_trip/raw_tcp", iters, total);
            total
        })
    });
    drop(cl);
    rt.block_on(server).unwrap();
    g.finish();
}

fn summary(_: &mut Criterion) {
    let r = RESULTS.lock().unwrap();
    let per = |k: &str| r.get(k).map(|(n, t)| t.as_secs_f64() / *n as f64);
    println!("\n== criterion's sequential measurements (same run) ==");
    for (label, size) in [("100B", 100.0), ("16KiB", 16384.0)] {
        if let (Some(t), Some(raw)) = (
            per(&format!("throughput/transport/{label}")),
            per(&format!("throughput/raw_tcp/{label}")),
        ) {
            println!(
                "throughput {label:>5}: transport {:>10.0} msg/s {:>8.1} MB/s | raw {:>10.0} msg/s {:>8.1} MB/s | ratio {:.2} (target >= 0.80)",
                1.0 / t,
                size / t / 1e6,
                1.0 / raw,
                size / raw / 1e6,
                raw / t
            );
        }
    }
    if let (Some(t), Some(raw)) = (per("round_trip/transport"), per("round_trip/raw_tcp")) {
        println!(
            "round trip: transport {:.1} us | raw {:.1} us | ratio {:.2} (target <= 1.20)",
            t * 1e6,
            raw * 1e6,
            t / raw
        );
    }
}

/// CPU time this process has used, every thread counted: unlike wall time it hardly
/// changes when other work competes for the cores, so it tells what each side costs on a
/// shared, loaded machine.
fn cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

const PAIRED_ROUNDS: usize = 21;

/// Drift-proof ratios. Criterion measures its benchmarks one after the other, and on a
/// machine shared with other work the load changes in between; here the same work goes
/// alternately through the transport and raw TCP, round after round (the order swapped
/// every round), and the medians are compared. Beside wall time, the process's CPU time
/// per message (all threads: sender, writer, reader, host) is compared the same way.
fn paired(_: &mut Criterion) {
    let rt = runtime();
    let write_batch =
        TransportConfig::new(1, 1, "127.0.0.1:0".parse().unwrap()).write_batch_bytes_max;
    println!("\n== paired, interleaved: {PAIRED_ROUNDS} rounds, medians ==");
    for (label, size, batch) in [("100B", 100usize, 20_000u64), ("16KiB", 16 * 1024, 2_000)] {
        let payload = Bytes::from(vec![0xAB; size]);
        let ((t, r), (tc, rc)) = on_worker(&rt, async move {
            let (a, _a_rx, b, mut b_rx) = pair(batch as usize * 2).await;
            let mut wire = BytesMut::new();
            for i in 0..batch {
                encode_frame(&append(&payload, i), &mut wire, 1 << 24).unwrap();
            }
            let expect = wire.len();
            let wire = wire.freeze();
            let (mut tx, mut rx) = raw_pair().await;
            let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0;
                while let Ok(n @ 1..) = rx.read(&mut buf).await {
                    got += n;
                    if got >= expect {
                        got -= expect;
                        if done_tx.send(()).await.is_err() {
                            return;
                        }
                    }
                }
            });
            let (mut ts, mut rs) = (Vec::new(), Vec::new());
            let (mut tcs, mut rcs) = (Vec::new(), Vec::new());
            let mut got = Vec::with_capacity(1024);
            for round in 0..=PAIRED_ROUNDS {
                for raw_turn in [round % 2 == 1, round % 2 == 0] {
                    if raw_turn {
                        let (start, cpu) = (Instant::now(), cpu_s());
                        for chunk in wire.chunks(write_batch) {
                            tx.write_all(chunk).await.unwrap();
                        }
                        done_rx.recv().await.unwrap();
                        rs.push(start.elapsed().as_secs_f64());
                        rcs.push(cpu_s() - cpu);
                    } else {
                        let msgs: Vec<_> = (0..batch).map(|i| append(&payload, i)).collect();
                        let (start, cpu) = (Instant::now(), cpu_s());
                        for m in msgs {
                            a.send(m).unwrap();
                        }
                        let mut n = 0;
                        while n < batch as usize {
                            got.clear();
                            b_rx.recv_many(&mut got, 1024).await;
                            n += messages_in(&got);
                        }
                        got.clear();
                        ts.push(start.elapsed().as_secs_f64());
                        tcs.push(cpu_s() - cpu);
                    }
                }
            }
            // Round 0 was the warm-up.
            for v in [&mut ts, &mut rs, &mut tcs, &mut rcs] {
                v.remove(0);
            }
            drop(tx);
            reader.await.unwrap();
            assert_eq!(a.stats().messages_dropped, 0);
            a.shutdown().await;
            b.shutdown().await;
            let per = |v: Vec<f64>| median(v) / batch as f64;
            ((per(ts), per(rs)), (per(tcs), per(rcs)))
        });
        println!(
            "throughput {label:>5}: transport {:>10.0} msg/s {:>8.1} MB/s | raw {:>10.0} msg/s {:>8.1} MB/s | ratio {:.2} (target >= 0.80)",
            1.0 / t,
            size as f64 / t / 1e6,
            1.0 / r,
            size as f64 / r / 1e6,
            r / t
        );
        println!(
            "  cpu per message, all threads: transport {:>8.0} ns | raw {:>8.0} ns | ratio {:.2}",
            tc * 1e9,
            rc * 1e9,
            rc / tc
        );
    }

    const RTTS: u64 = 2_000;
    let ((t, r), (tc, rc)) = on_worker(&rt, async move {
        let (a, mut a_rx, b, mut b_rx) = pair(1024).await;
        let echo = {
            let b = b.clone();
            tokio::spawn(async move {
                while let Some(Incoming::Messages(batch)) = b_rx.recv().await {
                    for m in batch {
                        let reply = Message {
                            from: 2,
                            to: 1,
                            term: m.term,
                            body: MessageBody::HeartbeatResponse { read_seq: 0 },
                        };
                        if b.send(reply).is_err() {
                            return;
                        }
                    }
                }
            })
        };
        let mut frame = BytesMut::new();
        encode_frame(&ping(1), &mut frame, 1024).unwrap();
        let n = frame.len();
        let (mut cl, mut sv) = raw_pair().await;
        let server = tokio::spawn(async move {
            let mut buf = vec![0u8; n];
            while sv.read_exact(&mut buf).await.is_ok() {
                if sv.write_all(&buf).await.is_err() {
                    return;
                }
            }
        });
        let mut buf = vec![0u8; n];
        let (mut ts, mut rs) = (Vec::new(), Vec::new());
        let (mut tcs, mut rcs) = (Vec::new(), Vec::new());
        for round in 0..=PAIRED_ROUNDS {
            for raw_turn in [round % 2 == 1, round % 2 == 0] {
                let (start, cpu) = (Instant::now(), cpu_s());
                for i in 0..RTTS {
                    if raw_turn {
                        cl.write_all(&frame).await.unwrap();
                        cl.read_exact(&mut buf).await.unwrap();
                    } else {
                        a.send(ping(i)).unwrap();
                        a_rx.recv().await.unwrap();
                    }
                }
                let took = start.elapsed().as_secs_f64() / RTTS as f64;
                let cpu = (cpu_s() - cpu) / RTTS as f64;
                if raw_turn {
                    rs.push(took);
                    rcs.push(cpu);
                } else {
                    ts.push(took);
                    tcs.push(cpu);
                }
            }
        }
        for v in [&mut ts, &mut rs, &mut tcs, &mut rcs] {
            v.remove(0);
        }
        drop(cl);
        server.await.unwrap();
        a.shutdown().await;
        b.shutdown().await;
        echo.abort();
        ((median(ts), median(rs)), (median(tcs), median(rcs)))
    });
    println!(
        "round trip: transport {:.1} us | raw {:.1} us | ratio {:.2} (target <= 1.20)",
        t * 1e6,
        r * 1e6,
        t / r
    );
    println!(
        "  cpu per round trip, both ends: transport {:.1} us | raw {:.1} us | ratio {:.2}",
        tc * 1e6,
        rc * 1e6,
        tc / rc
    );
}

criterion_group!(benches, throughput, round_trip, summary, paired);
criterion_main!(benches);
