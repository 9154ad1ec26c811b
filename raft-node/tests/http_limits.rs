//! The HTTP port's limits against hostile clients: slow heads, idle connections and slow
//! bodies cut, connections capped per source, clients that never read disconnected with
//! memory bounded.

use std::time::{Duration, Instant};

use raft_node::limits::ClientLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod http_common;

use http_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_idle_connections_and_slow_bodies_are_cut() {
    let limits = ClientLimits {
        read_timeout_ms: 300,
        idle_timeout_ms: 4_000,
        handshake_timeout_ms: 300,
        http_head_bytes_max: 1_024,
        ..ClientLimits::default()
    };
    let n = Node::start(limits).await;
    n.ready().await;
    // A head started and never finished: closed after the head timeout, well before idle.
    let mut slow_head = TcpStream::connect(n.http).await.unwrap();
    slow_head
        .write_all(b"GET /status HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut slow_head, ANSWER_TIMEOUT).await);
    assert!(started.elapsed() < Duration::from_millis(3_000));

    // A connection that never sends a byte: closed after the handshake timeout.
    let mut silent = TcpStream::connect(n.http).await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut silent, ANSWER_TIMEOUT).await);
    assert!(started.elapsed() < Duration::from_millis(3_000));

    // A kept-alive connection that stays quiet lives past the head timeout, then is closed.
    let mut idle = TcpStream::connect(n.http).await.unwrap();
    let mut buf = Vec::new();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut idle, &mut buf, false).await.status, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut idle, &mut buf, false).await.status, 200);
    assert!(closed_within(&mut idle, ANSWER_TIMEOUT).await);

    // A body that stops halfway: 408.
    let mut slow_body = TcpStream::connect(n.http).await.unwrap();
    slow_body
        .write_all(b"PUT /kv/s HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let r = read_reply(&mut slow_body, &mut Vec::new(), false).await;
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(get_value(n.http, "s").await.status, 404);

    // A head over the limit: 431.
    let big = request(
        n.http,
        format!(
            "GET /status HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(2_000)
        ),
    )
    .await;
    assert_eq!(big.status, 431, "{big:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_source() {
    let limits = ClientLimits {
        connections_per_source_max: 4,
        ..ClientLimits::default()
    };
    let n = Node::start(limits).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(n.http).await.unwrap();
        // A full request and answer, so the connection is surely accepted and counted.
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_reply(&mut s, &mut Vec::new(), false).await.status, 200);
        held.push(s);
    }
    let over = request(n.http, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(over.status, 503);
    assert_eq!(over.body, b"too many connections\n");
    drop(held);
    // Places are given back when connections close.
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        let r = request(n.http, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slots never freed: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident set of this process, from `/proc/self/status`.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_disconnected() {
    const CLIENTS: usize = 50;
    const VALUE_BYTES: usize = 4 << 20;
    // Room for 16 of the 50 responses at once; the others get 503 at once. The write
    // timeout is long enough for all 50 requests to arrive before budget is freed.
    const REPLY_BUDGET_BYTES: usize = 16 * VALUE_BYTES;
    let limits = ClientLimits {
        write_timeout_ms: 3_000,
        ..ClientLimits::default()
    };
    let n = Node::start_with_reply_budget(limits, REPLY_BUDGET_BYTES).await;
    n.ready().await;
    let value = vec![b'v'; VALUE_BYTES];
    let mut put =
        format!("PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: {VALUE_BYTES}\r\n\r\n")
            .into_bytes();
    put.extend_from_slice(&value);
    assert_eq!(request(n.http, put).await.status, 200);

    let rss_before = rss_bytes();
    let mut idle_readers = Vec::new();
    for _ in 0..CLIENTS {
        // A small receive buffer, so the response cannot all sit in the kernel.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 << 10).unwrap();
        let mut s = socket.connect(n.http).await.unwrap();
        s.write_all(b"GET /kv/big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        idle_readers.push(s);
    }
    // Let the budget fill and the responses stall against the clients' windows.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let rss_peak = rss_bytes();

    // Meanwhile others are served.
    let other = get_value(n.http, "missing").await;
    assert_eq!(other.status, 404);
    // Reading a stalled connection would let its write go on, so wait until every one of
    // them has been cut off before looking.
    tokio::time::sleep(Duration::from_millis(4_500)).await;

    // Each was either refused for lack of budget (503) or cut off by the write timeout
    // before the whole value went out; either way the server closed or answered it.
    let (mut refused, mut cut) = (0, 0);
    for s in &mut idle_readers {
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        let closed = loop {
            match tokio::time::timeout(ANSWER_TIMEOUT, s.read(&mut chunk)).await {
                Err(_) => break false,
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(k)) => {
                    got.extend_from_slice(&chunk[..k]);
                    if got.starts_with(b"HTTP/1.1 503") && got.ends_with(b"retry\n") {
                        break true;
                    }
                }
            }
        };
        assert!(
            closed,
            "a non-reading client was neither refused nor disconnected"
        );
        if got.starts_with(b"HTTP/1.1 503") {
            refused += 1;
        } else {
            assert!(
                got.len() < VALUE_BYTES,
                "the whole value went out ({} bytes)",
                got.len()
            );
            cut += 1;
        }
    }
    assert!(cut >= 16 && refused > 0, "{cut} cut off, {refused} refused");
    assert_eq!(cut + refused, CLIENTS);
    let metrics = request(n.http, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let text = String::from_utf8_lossy(&metrics.body);
    let timeouts: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("raft_http_timeouts_total{node=\"1\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(timeouts >= cut as u64, "{timeouts} timeouts");
    // The budget came back: the value is served again.
    let again = get_value(n.http, "big").await;
    assert_eq!((again.status, again.body.len()), (200, VALUE_BYTES));
    eprintln!(
        "RSS before {} MiB, with {CLIENTS} stalled readers {} MiB, after {} MiB; \
         {cut} cut off by the write timeout, {refused} refused",
        rss_before >> 20,
        rss_peak >> 20,
        rss_bytes() >> 20
    );
}
