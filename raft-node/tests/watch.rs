//! Watching on a real cluster of `raft-node` processes: HTTP `/watch` as server-sent events,
//! and a watcher that reconnects (resuming with the last index it saw, switching nodes)
//! while a writer writes and nodes are killed and restarted.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{runtime, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes of one SSE response the test reads at most.
const SSE_BYTES_MAX: usize = 16 << 20;

/// One server-sent event.
#[derive(Clone, Debug, PartialEq)]
struct Event {
    id: Option<u64>,
    kind: String,
    data: serde_json::Value,
}

/// A server-sent-event stream read over raw HTTP/1.1 (chunked), so that nothing between
/// the test and the node smooths over what the node sends.
#[derive(Debug)]
struct SseStream {
    stream: TcpStream,
    /// Undecoded bytes of the chunked body.
    raw: Vec<u8>,
    /// Decoded body text not yet split into events.
    text: String,
    total: usize,
}

/// The status line and head of an answer to a `/watch` request, and the stream if it is 200.
async fn open_watch(
    addr: SocketAddr,
    path: &str,
    last_event_id: Option<u64>,
) -> std::io::Result<Result<SseStream, String>> {
    let mut stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))??;
    let resume = last_event_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{resume}\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "head"))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    if !head.starts_with("HTTP/1.1 200") {
        // The rest of a short error answer, for the message.
        let mut rest = raw[head_end..].to_vec();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await
        {
            if n == 0 || rest.len() > 64 << 10 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
        }
        return Ok(Err(format!("{head}{}", String::from_utf8_lossy(&rest))));
    }
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    Ok(Ok(SseStream {
        stream,
        raw: raw[head_end..].to_vec(),
        text: String::new(),
        total: 0,
    }))
}

impl SseStream {
    /// Moves whole chunks from `raw` to `text`; `false` at the last chunk.
    fn dechunk(&mut self) -> bool {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return true;
            };
            let size_hex = String::from_utf8_lossy(&self.raw[..line_end]).to_string();
            let size = usize::from_str_radix(size_hex.trim(), 16).expect("chunk size");
            if size == 0 {
                return false;
            }
            if self.raw.len() < line_end + 2 + size + 2 {
                return true;
            }
            let chunk = self.raw[line_end + 2..line_end + 2 + size].to_vec();
            self.text
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8 events"));
            self.raw.drain(..line_end + 2 + size + 2);
        }
    }

    /// The next event (comments skipped), or `None` when the stream ends or `within`
    /// passes.
    async fn next(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut event = Event {
                    id: None,
                    kind: "message".into(),
                    data: serde_json::Value::Null,
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        event.id = Some(v.parse().expect("numeric id"));
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event.kind = v.into();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        event.data = serde_json::from_str(v).expect("JSON data");
                        any = true;
                    }
                }
                if any {
                    return Some(event);
                }
            }
            if !self.dechunk() {
                return None;
            }
            if self.text.contains("\n\n") {
                continue;
            }
            let mut buf = [0u8; 16 << 10];
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => return None,
            };
            self.total += n;
            assert!(self.total < SSE_BYTES_MAX, "event stream too long");
            self.raw.extend_from_slice(&buf[..n]);
        }
    }
}

/// `(index, key, value)` of every change in an event.
fn changes(event: &Event) -> Vec<(u64, String, Option<String>)> {
    let index = event.data["index"].as_u64().expect("index");
    assert_eq!(event.id, Some(index), "the event's id is its index");
    event.data["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                index,
                c["key"].as_str().expect("key").to_string(),
                c["value"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn redis_conn(addr: SocketAddr) -> redis::Connection {
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    con.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    con
}

#[test]
fn sse_watch_streams_changes_by_index_and_resumes_with_last_event_id() {
    let cluster = Cluster::start_with(3, &["--watch-history-changes-max", "60"]);
    let rt = runtime();
    rt.block_on(cluster.wait_leader(Duration::from_secs(15)));
    let mut con = redis_conn(cluster.node(1).client);
    for i in 1..=20 {
        redis::cmd("SET")
            .arg(format!("app/{i}"))
            .arg(format!("v{i}"))
            .query::<()>(&mut con)
            .unwrap();
        redis::cmd("SET")
            .arg(format!("other/{i}"))
            .arg("x")
            .query::<()>(&mut con)
            .unwrap();
    }
    redis::cmd("DEL")
        .arg("app/3")
        .query::<()>(&mut con)
        .unwrap();
    rt.block_on(async {
        // A follower serves it from its own applied state.
        let http = cluster.node(2).http;
        let mut s = open_watch(http, "/watch/app/?from=0", None)
            .await
            .unwrap()
            .expect("200");
        let mut seen = Vec::new();
        while seen.len() < 21 {
            let e = s
                .next(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("stream ended after {seen:?}"));
            assert_eq!(e.kind, "message", "{e:?}");
            seen.extend(changes(&e));
        }
        let keys: Vec<(String, Option<String>)> = seen
            .iter()
            .map(|(_, k, v)| (k.clone(), v.clone()))
            .collect();
        let mut expected: Vec<(String, Option<String>)> = (1..=20)
            .map(|i| (format!("app/{i}"), Some(format!("v{i}"))))
            .collect();
        expected.push(("app/3".into(), None));
        assert_eq!(keys, expected);
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");

        // Live: a new write arrives on the open stream.
        redis::cmd("SET")
            .arg("app/live")
            .arg("1")
            .query::<()>(&mut con)
            .unwrap();
        let e = s.next(Duration::from_secs(10)).await.expect("live event");
        let live = changes(&e);
        assert_eq!(live[0].1, "app/live");

        // Resuming after the 10th event gets the 11th on, once each.
        let tenth = seen[9].0;
        let mut r = open_watch(http, "/watch/app/?from=0", Some(tenth))
            .await
            .unwrap()
            .expect("200");
        let mut resumed = Vec::new();
        while resumed.len() < 12 {
            let e = r
                .next(Duration::from_secs(10))
                .await
                .expect("resumed event");
            resumed.extend(changes(&e));
        }
        let mut tail = seen[10..].to_vec();
        tail.extend(live);
        assert_eq!(resumed, tail);

        // Writes of other keys push the start of the history past index 0.
        for i in 0..80 {
            redis::cmd("SET")
                .arg(format!("other/more/{i}"))
                .arg("x")
                .query::<()>(&mut con)
                .unwrap();
        }
        let refused = open_watch(http, "/watch/app/?from=0", None)
            .await
            .unwrap()
            .expect_err("index 0 is no longer held");
        assert!(refused.starts_with("HTTP/1.1 410"), "{refused}");
        assert!(refused.contains("compacted, resync"), "{refused}");

        let bad = open_watch(http, "/watch/app/?from=abc", None)
            .await
            .unwrap()
            .expect_err("from must be a number");
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");

        // The stream that was open all along read fast enough: it goes on.
        redis::cmd("SET")
            .arg("app/after")
            .arg("2")
            .query::<()>(&mut con)
            .unwrap();
        let e = s
            .next(Duration::from_secs(10))
            .await
            .expect("still streaming");
        assert_eq!(changes(&e)[0].1, "app/after");
    });
}

/// The test: a watcher that reconnects to another node with the last index it saw,
/// while a writer writes and nodes are killed and restarted, sees exactly the sequence of
/// changes a fresh watcher from index 0 sees at the end (the log's), and every write the
/// writer saw acknowledged appears in it exactly once.
#[test]
fn a_reconnecting_watcher_sees_the_log_exactly_once_across_kills_and_restarts() {
    let mut cluster = Cluster::start(3);
    let rt = runtime();
    rt.block_on(cluster.wait_leader(Duration::from_secs(15)));
    let https: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.http).collect();
    let client = cluster.client();
    let deadline = Instant::now() + Duration::from_secs(90);

    // The watcher: runs on its own thread and runtime, so the test's kills and restarts
    // (blocking) do not stall it.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let watcher = std::thread::spawn(move || {
        let rt = runtime();
        rt.block_on(async move {
            let mut seen: Vec<(u64, String, Option<String>)> = Vec::new();
            let mut last: Option<u64> = Some(0);
            let mut reconnects = 0u32;
            let mut node = 0usize;
            let started = Instant::now();
            'outer: while started.elapsed() < Duration::from_secs(120) {
                node = (node + 1) % https.len();
                let resume = last.unwrap_or(0);
                let stream = match open_watch(https[node], "/watch/w/", Some(resume)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(answer)) => {
                        assert!(
                            !answer.contains("compacted"),
                            "no snapshot was taken, so no history is compacted: {answer}"
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                reconnects += 1;
                let mut stream = stream;
                // Leave each node after a while even if it stays up, to switch nodes.
                let leave_at = Instant::now() + Duration::from_millis(700);
                while Instant::now() < leave_at {
                    let Some(e) = stream.next(Duration::from_millis(300)).await else {
                        if stop_rx.try_recv().is_ok() {
                            break 'outer;
                        }
                        break;
                    };
                    assert_eq!(e.kind, "message", "{e:?}");
                    let index = e.id.expect("id");
                    assert!(index > last.unwrap_or(0), "index {index} after {last:?}");
                    last = Some(index);
                    let c = changes(&e);
                    let done = c.iter().any(|(_, k, _)| k == "w/done");
                    seen.extend(c);
                    if done {
                        break 'outer;
                    }
                }
            }
            (seen, reconnects)
        })
    });

    // The writer, with kills and restarts of one node at a time in between.
    let mut acked: Vec<(String, String)> = Vec::new();
    rt.block_on(async {
        let mut attempt = 0u64;
        for round in 0..6u64 {
            let victim = round % 3 + 1;
            for i in 0..40u64 {
                if Instant::now() > deadline {
                    break;
                }
                let key = format!("w/{}", round * 40 + i);
                attempt += 1;
                let value = format!("{attempt}");
                if client.set(key.clone(), value.clone()).await.is_ok() {
                    acked.push((key, value));
                }
                if i == 10 {
                    cluster.kill(victim);
                }
                if i == 30 {
                    cluster.spawn(victim);
                }
            }
        }
        assert!(
            acked.len() > 100,
            "too few writes acknowledged: {}",
            acked.len()
        );
        cluster.wait_leader(Duration::from_secs(15)).await;
        client
            .set("w/done".to_string(), "1".to_string())
            .await
            .expect("the last write");
    });
    let (seen, reconnects) = watcher.join().expect("the watcher thread");
    drop(stop_tx);
    assert!(
        seen.last().is_some_and(|(_, k, _)| k == "w/done"),
        "the watcher never saw the last write; saw {} changes\n{}",
        seen.len(),
        cluster.logs()
    );
    assert!(
        reconnects >= 3,
        "the watcher reconnected {reconnects} times"
    );

    // The log's sequence, from a fresh watcher at index 0 on node 1.
    let fresh = rt.block_on(async {
        let mut s = open_watch(cluster.node(1).http, "/watch/w/?from=0", None)
            .await
            .unwrap()
            .expect("200");
        let mut all = Vec::new();
        while !all
            .iter()
            .any(|(_, k, _): &(u64, String, Option<String>)| k == "w/done")
        {
            let e = s
                .next(Duration::from_secs(10))
                .await
                .expect("the fresh watcher's events");
            all.extend(changes(&e));
        }
        all
    });
    assert_eq!(
        seen, fresh,
        "the reconnecting watcher's sequence differs from the log's"
    );
    for (key, value) in &acked {
        let n = fresh
            .iter()
            .filter(|(_, k, v)| k == key && v.as_deref() == Some(value.as_str()))
            .count();
        assert_eq!(n, 1, "acknowledged write {key}={value} seen {n} times");
    }
    println!(
        "{} acknowledged writes, {} changes seen, {} connections",
        acked.len(),
        seen.len(),
        reconnects
    );
}

/// Keyspace notifications with the `redis` crate (RESP2 subscribe mode) on a follower:
/// SUBSCRIBE to a key's channel and PSUBSCRIBE to every keyevent channel, then leave
/// subscribe mode and use the connection normally again.
#[test]
fn subscribe_and_psubscribe_get_keyspace_events_with_the_redis_crate() {
    let cluster = Cluster::start(3);
    let rt = runtime();
    rt.block_on(cluster.wait_leader(Duration::from_secs(15)));
    let follower = cluster.node(2).client;
    let mut sub_con = redis_conn(follower);
    let mut writer = redis_conn(cluster.node(1).client);
    let mut pubsub = sub_con.as_pubsub();
    pubsub
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    pubsub.subscribe("__keyspace@0__:k1").unwrap();
    pubsub.psubscribe("__keyevent@0__:*").unwrap();
    redis::cmd("SET")
        .arg("k1")
        .arg("a")
        .query::<()>(&mut writer)
        .unwrap();
    redis::cmd("SET")
        .arg("k2")
        .arg("b")
        .query::<()>(&mut writer)
        .unwrap();
    redis::cmd("DEL")
        .arg("k1")
        .query::<()>(&mut writer)
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        let m = pubsub.get_message().expect("a message within 10 s");
        let pattern: Option<String> = m.get_pattern().ok();
        got.push((
            pattern,
            m.get_channel_name().to_string(),
            m.get_payload::<String>().unwrap(),
        ));
    }
    let ks = |ev: &str| (None, "__keyspace@0__:k1".to_string(), ev.to_string());
    let ke = |ev: &str, key: &str| {
        (
            Some("__keyevent@0__:*".to_string()),
            format!("__keyevent@0__:{ev}"),
            key.to_string(),
        )
    };
    assert_eq!(
        got,
        vec![
            ks("set"),
            ke("set", "k1"),
            ke("set", "k2"),
            ks("del"),
            ke("del", "k1"),
        ]
    );
    pubsub.unsubscribe("__keyspace@0__:k1").unwrap();
    pubsub.punsubscribe("__keyevent@0__:*").unwrap();
    drop(pubsub);
    // Back in normal mode.
    let v: Option<String> = redis::cmd("GET").arg("k2").query(&mut sub_con).unwrap();
    assert_eq!(v.as_deref(), Some("b"));
    let cfg: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query(&mut sub_con)
        .unwrap();
    assert_eq!(cfg, vec!["notify-keyspace-events", "KEA"]);
}

/// Reads one RESP2 value from `s` as text lines (enough for the replies here).
fn read_resp(r: &mut std::io::BufReader<std::net::TcpStream>) -> String {
    use std::io::{BufRead, Read};
    let mut line = String::new();
    r.read_line(&mut line).expect("a reply line");
    let line = line.trim_end().to_string();
    match line.as_bytes().first() {
        Some(b'*') => {
            let n: i64 = line[1..].parse().unwrap();
            let items: Vec<String> = (0..n.max(0)).map(|_| read_resp(r)).collect();
            format!("[{}]", items.join(" "))
        }
        Some(b'$') => {
            let n: i64 = line[1..].parse().unwrap();
            if n < 0 {
                return "nil".into();
            }
            let mut b = vec![0u8; n as usize + 2];
            r.read_exact(&mut b).unwrap();
            String::from_utf8_lossy(&b[..n as usize]).to_string()
        }
        _ => line,
    }
}

/// WATCHLOG over raw RESP: history from an index, live changes, a resume, the compacted
/// error, and the commands subscribe mode refuses.
#[test]
fn watchlog_resumes_by_index_and_refuses_a_compacted_one() {
    use std::io::Write;
    let cluster = Cluster::start_with(3, &["--watch-history-changes-max", "30"]);
    let rt = runtime();
    rt.block_on(cluster.wait_leader(Duration::from_secs(15)));
    let mut writer = redis_conn(cluster.node(1).client);
    for i in 1..=5 {
        redis::cmd("SET")
            .arg(format!("p/{i}"))
            .arg(i)
            .query::<()>(&mut writer)
            .unwrap();
        redis::cmd("SET")
            .arg("q")
            .arg(i)
            .query::<()>(&mut writer)
            .unwrap();
    }
    let open = |from: &str| {
        let s = std::net::TcpStream::connect(cluster.node(3).client).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        w.write_all(format!("WATCHLOG p/ FROM {from}\r\n").as_bytes())
            .unwrap();
        (std::io::BufReader::new(s), w)
    };
    let (mut r, mut w) = open("0");
    assert_eq!(read_resp(&mut r), "[watchlog p/ :0]");
    let mut indexes = Vec::new();
    for i in 1..=5 {
        let m = read_resp(&mut r);
        let parts: Vec<&str> = m.trim_matches(['[', ']']).split(' ').collect();
        assert_eq!(parts[0], "watchlog", "{m}");
        indexes.push(parts[1].trim_start_matches(':').parse::<u64>().unwrap());
        assert!(m.ends_with(&format!("[[set p/{i} {i}]]]")), "{m}");
    }
    assert!(indexes.windows(2).all(|p| p[0] < p[1]));
    w.write_all(b"GET q\r\nPING\r\n").unwrap();
    assert!(read_resp(&mut r).starts_with("-ERR Can't execute 'get'"));
    assert_eq!(read_resp(&mut r), "[pong ]");
    // Resuming after the second change gets the third on.
    let (mut r2, _w2) = open(&indexes[1].to_string());
    read_resp(&mut r2);
    let m = read_resp(&mut r2);
    assert!(m.starts_with(&format!("[watchlog :{} ", indexes[2])), "{m}");
    // Live.
    redis::cmd("SET")
        .arg("p/live")
        .arg("x")
        .query::<()>(&mut writer)
        .unwrap();
    let m = read_resp(&mut r);
    assert!(m.ends_with("[[set p/live x]]]"), "{m}");
    // Push the history past index 0.
    for i in 0..40 {
        redis::cmd("SET")
            .arg("q")
            .arg(i)
            .query::<()>(&mut writer)
            .unwrap();
    }
    let (mut r3, _w3) = open("0");
    let m = read_resp(&mut r3);
    assert!(m.starts_with("-ERR compacted, resync"), "{m}");
}

/// A node restarted from a snapshot rebuilds its history from the snapshot's index by
/// replaying its log: it answers "compacted" for older indexes and, from the snapshot's
/// index on, exactly what a node that never restarted sends.
#[test]
fn a_restarted_node_serves_the_history_after_its_snapshot() {
    let mut cluster = Cluster::start_with(3, &["--snapshot-entries-max", "15"]);
    let rt = runtime();
    rt.block_on(cluster.wait_leader(Duration::from_secs(15)));
    let client = cluster.client();
    rt.block_on(async {
        for i in 0..40 {
            client.set(format!("s/{i}"), format!("{i}")).await.unwrap();
        }
        // Snapshots are written off the runtime's task: under load node 2 may not have
        // finished one yet, and a node restarted without one replays (and serves) its whole
        // history. Kill it only once it holds a snapshot file.
        cluster
            .wait_status(2, "node 2 wrote a snapshot", |s| s.snapshot_index > 0)
            .await;
    });
    cluster.kill(2);
    cluster.spawn(2);
    rt.block_on(async {
        let status = cluster
            .wait_status(2, "node 2 replayed its log", |s| {
                s.snapshot_index > 0 && s.applied_index >= s.commit_index && s.commit_index > 40
            })
            .await
            .status()
            .await
            .unwrap();
        // The newest snapshot, at or after the one node 2 started from: held by its history.
        let snapshot = status.snapshot_index;
        client
            .set("s/done".to_string(), "1".to_string())
            .await
            .unwrap();
        let refused = open_watch(cluster.node(2).http, "/watch/s/?from=0", None)
            .await
            .unwrap()
            .expect_err("the history starts at the snapshot");
        assert!(refused.starts_with("HTTP/1.1 410"), "{refused}");
        let mut sequences = Vec::new();
        for id in [2, 1] {
            let path = format!("/watch/s/?from={snapshot}");
            let mut s = open_watch(cluster.node(id).http, &path, None)
                .await
                .unwrap()
                .expect("200");
            let mut seen = Vec::new();
            while !seen
                .iter()
                .any(|(_, k, _): &(u64, String, Option<String>)| k == "s/done")
            {
                let e = s.next(Duration::from_secs(10)).await.expect("an event");
                seen.extend(changes(&e));
            }
            sequences.push(seen);
        }
        assert!(!sequences[0].is_empty(), "{sequences:?}");
        assert!(sequences[0].iter().all(|(i, _, _)| *i > snapshot));
        assert_eq!(sequences[0], sequences[1]);
    });
}

/// After `HELLO 3`, subscription confirmations and messages are RESP3 pushes (`>`).
#[test]
fn resp3_subscribers_get_push_frames() {
    use std::io::{Read, Write};
    let cluster = Cluster::start(3);
    let rt = runtime();
    rt.block_on(cluster.wait_leader(Duration::from_secs(15)));
    let mut s = std::net::TcpStream::connect(cluster.node(2).client).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let mut read_until = |s: &mut std::net::TcpStream, want: &[u8]| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !got.windows(want.len()).any(|w| w == want) {
            assert!(
                Instant::now() < deadline,
                "waited for {:?}; got {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&got)
            );
            let mut buf = [0u8; 4096];
            if let Ok(n) = s.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
    };
    s.write_all(b"HELLO 3\r\nSUBSCRIBE __keyspace@0__:k\r\n")
        .unwrap();
    read_until(
        &mut s,
        b">3\r\n$9\r\nsubscribe\r\n$16\r\n__keyspace@0__:k\r\n:1\r\n",
    );
    let mut writer = redis_conn(cluster.node(1).client);
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut writer)
        .unwrap();
    read_until(
        &mut s,
        b">3\r\n$7\r\nmessage\r\n$16\r\n__keyspace@0__:k\r\n$3\r\nset\r\n",
    );
}
