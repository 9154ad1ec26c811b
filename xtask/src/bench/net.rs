//! raft-net over loopback through its public API, beside raw TCP in the same run:
//! - throughput: batches of AppendEntries (one entry of 100 B or 16 KiB each) from node 1's
//!   `TransportHandle::send` to node 2's incoming channel, vs a raw write loop of exactly the
//!   bytes the transport puts on the wire (`raft_net::frame::encode_frame` of the same
//!   messages) read by a plain reader;
//! - round trip: a Heartbeat answered by a HeartbeatResponse from node 2's host task, vs the
//!   raw 64-byte ping-pong.
//!
//! Raw sides use blocking threads (the floor); transport sides run on a 2-worker tokio
//! runtime, as a node would. Rounds alternate.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use raft_core::{Entry, EntryPayload, Message, MessageBody};
use raft_net::{Incoming, Transport, TransportConfig, TransportHandle};
use tokio::runtime::Runtime;
use tokio::sync::mpsc::Receiver;

use super::baseline;
use super::log::size_label;
use super::report::Row;
use super::util::{histogram, record, subject_first, us};
use super::Ctx;

/// (payload bytes, messages per batch): batches of a few MB, so per-batch waits are small.
const CASES: [(usize, u64); 2] = [(100, 20_000), (16 * 1024, 2_000)];
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);
const ROUND_TRIPS_MAX: u64 = 1_000_000;
const BATCHES_MAX: u64 = 100_000;

pub fn run(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<(), String> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = run_on(ctx, &rt, rows);
    // Tasks of a transport that failed mid-run are dropped here rather than left behind.
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

fn run_on(ctx: &Ctx, rt: &Runtime, rows: &mut Vec<Row>) -> Result<(), String> {
    let rounds = if ctx.quick { 2 } else { 4 };
    let round = ctx.scale(Duration::from_millis(1200));
    for (size, batch) in CASES {
        let payload = Bytes::from(vec![0xABu8; size]);
        let msgs: Vec<Message> = (0..batch).map(|i| append(&payload, i)).collect();
        let mut wire = BytesMut::new();
        for m in &msgs {
            raft_net::frame::encode_frame(m, &mut wire, raft_net::frame::DEFAULT_FRAME_BYTES_MAX)
                .map_err(|e| e.to_string())?;
        }
        let wire = wire.freeze();
        let (a, _a_rx, b, b_rx) = rt.block_on(pair(batch as usize * 2))?;
        let mut b_rx = Some(b_rx);
        let (mut t_msgs, mut t_time) = (0u64, Duration::ZERO);
        let (mut r_msgs, mut r_time) = (0u64, Duration::ZERO);
        let mut failure = None;
        for r in 0..rounds {
            for subject_turn in [subject_first(r), !subject_first(r)] {
                if subject_turn {
                    let (a2, rx, msgs) = (a.clone(), b_rx.take().expect("returned"), msgs.clone());
                    let out = rt
                        .block_on(rt.spawn(transport_round(a2, rx, msgs, round)))
                        .map_err(|e| e.to_string())?;
                    b_rx = Some(out.rx);
                    if let Some(e) = out.error {
                        failure = Some(e);
                        break;
                    }
                    t_msgs += out.batches * batch;
                    t_time += out.took;
                } else {
                    let (bytes, took) =
                        baseline::stream(&wire, round).map_err(|e| format!("raw stream: {e}"))?;
                    r_msgs += bytes / wire.len() as u64 * batch;
                    r_time += took;
                }
            }
        }
        let dropped = a.stats().messages_dropped;
        rt.block_on(async {
            a.shutdown().await;
            b.shutdown().await;
        });
        if let Some(e) = failure {
            return Err(e);
        }
        if dropped > 0 {
            return Err(format!(
                "transport dropped {dropped} messages: queue too small"
            ));
        }
        let label = size_label(size);
        let rate = |n: u64, t: Duration| n as f64 / t.as_secs_f64();
        let (t_rate, r_rate) = (rate(t_msgs, t_time), rate(r_msgs, r_time));
        rows.push(
            Row::new(format!("net_{label}_msgs_per_s"), "msgs/s", t_rate)
                .vs(format!("raw_tcp_{label}_frames_per_s"), r_rate),
        );
        let mb = |per_s: f64| per_s * size as f64 / 1e6;
        rows.push(
            Row::new(format!("net_{label}_payload_MB_per_s"), "MB/s", mb(t_rate))
                .vs(format!("raw_tcp_{label}_payload_MB_per_s"), mb(r_rate)),
        );
    }

    let (a, a_rx, b, b_rx) = rt.block_on(pair(1024))?;
    let (mut t_h, mut r_h) = (histogram(), histogram());
    let (mut a_rx, mut b_rx) = (Some(a_rx), Some(b_rx));
    let rtt_round = ctx.scale(Duration::from_millis(800));
    let mut failure = None;
    for r in 0..rounds {
        for subject_turn in [subject_first(r), !subject_first(r)] {
            if subject_turn {
                let out = rt
                    .block_on(rt.spawn(rtt_round_task(
                        a.clone(),
                        a_rx.take().expect("returned"),
                        b.clone(),
                        b_rx.take().expect("returned"),
                        rtt_round,
                    )))
                    .map_err(|e| e.to_string())?;
                a_rx = Some(out.a_rx);
                b_rx = Some(out.b_rx);
                t_h.add(&out.h).expect("same bounds");
                if let Some(e) = out.error {
                    failure = Some(e);
                    break;
                }
            } else {
                let h = baseline::ping_pong(rtt_round, Duration::ZERO)
                    .map_err(|e| format!("raw ping: {e}"))?;
                r_h.add(&h).expect("same bounds");
            }
        }
    }
    rt.block_on(async {
        a.shutdown().await;
        b.shutdown().await;
    });
    if let Some(e) = failure {
        return Err(e);
    }
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        rows.push(
            Row::new(format!("net_heartbeat_rtt_us_{label}"), "us", us(&t_h, q))
                .vs(format!("raw_tcp_rtt_64B_us_{label}"), us(&r_h, q)),
        );
    }
    Ok(())
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

type Pair = (
    TransportHandle,
    Receiver<Incoming>,
    TransportHandle,
    Receiver<Incoming>,
);

async fn pair(queue: usize) -> Result<Pair, String> {
    let mut ca = TransportConfig::new(1, 0xBE, "127.0.0.1:0".parse().expect("addr"));
    // Large enough that a whole batch is queued without the drop-oldest policy kicking in.
    ca.queue_messages_max = queue;
    let mut cb = TransportConfig::new(2, 0xBE, "127.0.0.1:0".parse().expect("addr"));
    cb.queue_messages_max = queue;
    let (a, a_rx) = Transport::start(ca).await.map_err(|e| e.to_string())?;
    let (b, b_rx) = match Transport::start(cb).await {
        Ok(v) => v,
        Err(e) => {
            a.shutdown().await;
            return Err(e.to_string());
        }
    };
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    Ok((a, a_rx, b, b_rx))
}

struct ThroughputRound {
    rx: Receiver<Incoming>,
    batches: u64,
    took: Duration,
    error: Option<String>,
}

async fn transport_round(
    a: TransportHandle,
    mut rx: Receiver<Incoming>,
    msgs: Vec<Message>,
    round: Duration,
) -> ThroughputRound {
    let deadline = Instant::now() + round;
    let mut took = Duration::ZERO;
    let mut batches = 0;
    // A host drains its channel in batches.
    let mut got = Vec::with_capacity(1024);
    while (Instant::now() < deadline || batches < 2) && batches < BATCHES_MAX {
        // Cloning the batch (Bytes payloads: reference counts) is outside the timing.
        let batch = msgs.clone();
        let n = batch.len();
        let start = Instant::now();
        for m in batch {
            if let Err(e) = a.send(m) {
                return ThroughputRound {
                    rx,
                    batches,
                    took,
                    error: Some(format!("send: {e}")),
                };
            }
        }
        let mut received = 0;
        while received < n {
            got.clear();
            match tokio::time::timeout(BATCH_TIMEOUT, rx.recv_many(&mut got, 1024)).await {
                Ok(k) if k > 0 => {
                    received += got
                        .iter()
                        .map(|i| match i {
                            Incoming::Messages(ms) => ms.len(),
                            Incoming::Snapshot { .. } => 0,
                        })
                        .sum::<usize>()
                }
                _ => {
                    return ThroughputRound {
                        rx,
                        batches,
                        took,
                        error: Some(format!("transport: only {received} of {n} arrived")),
                    }
                }
            }
        }
        took += start.elapsed();
        batches += 1;
    }
    ThroughputRound {
        rx,
        batches,
        took,
        error: None,
    }
}

struct RttRound {
    a_rx: Receiver<Incoming>,
    b_rx: Receiver<Incoming>,
    h: Histogram<u64>,
    error: Option<String>,
}

async fn rtt_round_task(
    a: TransportHandle,
    mut a_rx: Receiver<Incoming>,
    b: TransportHandle,
    mut b_rx: Receiver<Incoming>,
    round: Duration,
) -> RttRound {
    // Node 2's host: answers each heartbeat, for as many as node 1 sends this round.
    let responder = tokio::spawn(async move {
        'serve: while let Some(Incoming::Messages(batch)) = b_rx.recv().await {
            for m in batch {
                if let MessageBody::Heartbeat { read_seq, .. } = m.body {
                    if read_seq == u64::MAX {
                        break 'serve;
                    }
                    let reply = Message {
                        from: 2,
                        to: 1,
                        term: m.term,
                        body: MessageBody::HeartbeatResponse { read_seq },
                    };
                    if b.send(reply).is_err() {
                        break 'serve;
                    }
                }
            }
        }
        b_rx
    });
    let mut h = histogram();
    let mut error = None;
    let deadline = Instant::now() + round;
    let mut seq = 0u64;
    while (Instant::now() < deadline || seq < 10) && seq < ROUND_TRIPS_MAX {
        seq += 1;
        let start = Instant::now();
        let hb = Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::Heartbeat {
                commit: seq,
                read_seq: seq,
            },
        };
        if let Err(e) = a.send(hb) {
            error = Some(format!("send: {e}"));
            break;
        }
        match tokio::time::timeout(BATCH_TIMEOUT, a_rx.recv()).await {
            // One heartbeat in flight at a time: its response arrives alone.
            Ok(Some(Incoming::Messages(ms)))
                if ms.len() == 1
                    && ms[0].body == (MessageBody::HeartbeatResponse { read_seq: seq }) =>
            {
                record(&mut h, start.elapsed());
            }
            other => {
                error = Some(format!("round trip {seq}: unexpected {other:?}"));
                break;
            }
        }
    }
    // Ends the responder's loop so its receiver can be handed back for the next round.
    let stop = Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::Heartbeat {
            commit: 0,
            read_seq: u64::MAX,
        },
    };
    let _ = a.send(stop);
    let b_rx = match tokio::time::timeout(BATCH_TIMEOUT, responder).await {
        Ok(Ok(rx)) => rx,
        _ => {
            // Cannot continue without node 2's receiver; the caller stops at the error.
            let (_tx, rx) = tokio::sync::mpsc::channel(1);
            error.get_or_insert_with(|| "responder did not stop".into());
            rx
        }
    };
    RttRound {
        a_rx,
        b_rx,
        h,
        error,
    }
}
