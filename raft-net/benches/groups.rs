//! Many groups over one connection, each row beside its raw-TCP baseline measured in the
//! same run (the same wire bytes, pre-encoded, written in the transport's write-batch size
//! and counted by a plain read loop). Prints a ratio summary at the end.
//!
//! * `groups/{transport,raw_tcp}/heartbeats_1000`: one iteration is 100 ticks, each the
//!   heartbeats of 1,000 groups sent with one `send_heartbeats` (one coalesced frame) and
//!   delivered to node 2's host.
//! * `groups/{transport,raw_tcp}/heartbeats_1000_each`: the same heartbeats sent as one
//!   group-tagged `Heartbeat` message each (`send_group`), 10 ticks an iteration: what
//!   coalescing saves.
//! * `groups/{transport,raw_tcp}/append_64x64`: one iteration is 10 rounds, each one
//!   AppendEntries of 64 entries of 100 bytes for each of 64 groups, sent interleaved
//!   (`send_group`, group after group) and delivered to node 2's host.
//!
//! `RAFT_NET_BENCH_WORKERS` sets the runtime's worker threads (default 2).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft_core::{Entry, EntryPayload, Message, MessageBody};
use raft_net::group_codec::encode_envelope;
use raft_net::message_codec::SegmentedBuf;
use raft_net::{
    Envelope, GroupHeartbeat, GroupIncoming, GroupSnapshotStores, Transport, TransportConfig,
    TransportHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// (units moved, total time) per row, for the closing ratio summary.
static RESULTS: Mutex<BTreeMap<String, (u64, Duration)>> = Mutex::new(BTreeMap::new());

fn record(name: &str, units: u64, took: Duration) {
    let mut r = RESULTS.lock().unwrap();
    let e = r.entry(name.to_string()).or_default();
    e.0 += units;
    e.1 += took;
}

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

const HEARTBEAT_GROUPS: u64 = 1000;
const TICKS: u64 = 100;
const APPEND_GROUPS: u64 = 64;
const APPEND_ENTRIES: u64 = 64;
const APPEND_ROUNDS: u64 = 10;

fn heartbeats(tick: u64) -> Vec<GroupHeartbeat> {
    (1..=HEARTBEAT_GROUPS)
        .map(|group| GroupHeartbeat {
            group,
            term: 7,
            commit: 100_000 + tick,
            read_seq: tick,
        })
        .collect()
}

fn append(group: u64, round: u64, payload: &Bytes) -> Message {
    let first = round * APPEND_ENTRIES;
    Message {
        from: 1,
        to: 2,
        term: 7,
        body: MessageBody::AppendEntries {
            prev_log_index: first,
            prev_log_term: 7,
            entries: (0..APPEND_ENTRIES)
                .map(|k| Entry {
                    index: first + k + 1,
                    term: 7,
                    payload: EntryPayload::Command(payload.clone()),
                })
                .collect(),
            leader_commit: first + group % 3,
        },
    }
}

/// One iteration's traffic: what the host sends, as envelopes, and how many Raft messages.
struct Load {
    label: &'static str,
    rounds: Vec<Vec<Envelope>>,
}

impl Load {
    fn messages(&self) -> u64 {
        self.rounds
            .iter()
            .flatten()
            .map(|e| e.messages() as u64)
            .sum()
    }

    fn wire(&self) -> Bytes {
        let mut out = SegmentedBuf::with_capacity(1 << 20);
        for env in self.rounds.iter().flatten() {
            encode_envelope(env, &mut out, 1 << 24).unwrap();
        }
        Bytes::from(out.finish().concat())
    }
}

async fn pair() -> (
    TransportHandle,
    TransportHandle,
    mpsc::Receiver<GroupIncoming>,
) {
    let no_stores: GroupSnapshotStores = Arc::new(|_| None);
    let cfg = |id| {
        let mut c = TransportConfig::new(id, 1, "127.0.0.1:0".parse().unwrap());
        c.queue_messages_max = 1 << 16;
        c
    };
    let (tx, _a_rx) = mpsc::channel::<GroupIncoming>(64);
    let a = Transport::start_groups(cfg(1), no_stores.clone(), tx)
        .await
        .unwrap();
    let (tx, b_rx) = mpsc::channel(64);
    let b = Transport::start_groups(cfg(2), no_stores, tx)
        .await
        .unwrap();
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    (a, b, b_rx)
}

fn on_worker<T: Send + 'static>(
    rt: &Runtime,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    rt.block_on(rt.spawn(f)).unwrap()
}

fn bench_load(c: &mut Criterion, rt: &Runtime, load: Load) {
    let mut g = c.benchmark_group("groups");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let wire = load.wire();
    let messages = load.messages();
    g.throughput(Throughput::Bytes(wire.len() as u64));
    let label = load.label;
    let load = Arc::new(load);

    let (a, b, b_rx) = rt.block_on(pair());
    let mut b_rx = Some(b_rx);
    g.bench_function(BenchmarkId::new("transport", label), |bench| {
        bench.iter_custom(|iters| {
            let (a, mut rx, load) = (a.clone(), b_rx.take().unwrap(), load.clone());
            let (total, rx) = on_worker(rt, async move {
                let mut total = Duration::ZERO;
                let mut got = Vec::with_capacity(64);
                for _ in 0..iters {
                    // The host builds its messages each time: that is part of its cost.
                    let rounds = load.rounds.clone();
                    let start = Instant::now();
                    for round in rounds {
                        for env in round {
                            match env {
                                Envelope::Message { group, message } => {
                                    a.send_group(group, message).unwrap()
                                }
                                Envelope::Heartbeats(beats) => a.send_heartbeats(2, beats).unwrap(),
                                Envelope::HeartbeatResponses(r) => {
                                    a.send_heartbeat_responses(2, r).unwrap()
                                }
                            }
                        }
                    }
                    let mut n = 0;
                    while n < messages {
                        got.clear();
                        rx.recv_many(&mut got, 64).await;
                        for item in &got {
                            if let GroupIncoming::Frames { frames, .. } = item {
                                n += frames.iter().map(|f| f.messages() as u64).sum::<u64>();
                            }
                        }
                    }
                    total += start.elapsed();
                }
                (total, rx)
            });
            b_rx = Some(rx);
            record(&format!("transport/{label}"), iters * messages, total);
            total
        })
    });
    assert_eq!(a.stats().messages_dropped, 0);
    assert_eq!(a.stats().connects, 1);
    rt.block_on(async {
        a.shutdown().await;
        b.shutdown().await;
    });

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
            let (total, tx, done) = on_worker(rt, async move {
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
            record(&format!("raw_tcp/{label}"), iters * messages, total);
            total
        })
    });
    drop(raw);
    rt.block_on(reader).unwrap();
    g.finish();
}

async fn raw_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    c.set_nodelay(true).unwrap();
    s.set_nodelay(true).unwrap();
    (c, s)
}

fn groups(c: &mut Criterion) {
    let rt = runtime();
    let heartbeat_load = Load {
        label: "heartbeats_1000",
        rounds: (0..TICKS)
            .map(|tick| vec![Envelope::Heartbeats(heartbeats(tick))])
            .collect(),
    };
    bench_load(c, &rt, heartbeat_load);
    // The same heartbeats as one group-tagged message each: what coalescing saves (10
    // ticks an iteration, so that a burst stays within the queue bound).
    let uncoalesced_load = Load {
        label: "heartbeats_1000_each",
        rounds: (0..TICKS / 10)
            .map(|tick| {
                heartbeats(tick)
                    .iter()
                    .map(|h| Envelope::Message {
                        group: h.group,
                        message: h.to_message(1, 2),
                    })
                    .collect()
            })
            .collect(),
    };
    bench_load(c, &rt, uncoalesced_load);
    let payload = Bytes::from(vec![0xAB; 100]);
    let append_load = Load {
        label: "append_64x64",
        rounds: (0..APPEND_ROUNDS)
            .map(|round| {
                (1..=APPEND_GROUPS)
                    .map(|group| Envelope::Message {
                        group,
                        message: append(group, round, &payload),
                    })
                    .collect()
            })
            .collect(),
    };
    bench_load(c, &rt, append_load);
    summary();
}

fn summary() {
    let r = RESULTS.lock().unwrap();
    println!("\ngroups summary (per Raft message; transport / raw TCP of the same bytes):");
    for label in ["heartbeats_1000", "heartbeats_1000_each", "append_64x64"] {
        let per = |side: &str| {
            r.get(&format!("{side}/{label}"))
                .filter(|(n, _)| *n > 0)
                .map(|(n, t)| t.as_nanos() as f64 / *n as f64)
        };
        if let (Some(t), Some(raw)) = (per("transport"), per("raw_tcp")) {
            println!(
                "  {label:21} transport {t:8.1} ns  raw {raw:8.1} ns  ratio {:.2}x",
                t / raw
            );
        }
    }
}

criterion_group!(benches, groups);
criterion_main!(benches);
