//! One in-process node with small `[limits]`: each bound refuses what passes it with a clear
//! error or closes only the offending connection, and the node keeps serving others.

use std::time::{Duration, Instant};

use raft_client::{Client, ClientConfig};
use raft_node::config::NodeConfig;
use raft_node::metrics::DisconnectReason;
use raft_node::node::RunningNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound on anything a test waits for; the limits under test are far shorter.
const WAIT: Duration = Duration::from_secs(10);

struct Node {
    node: Option<RunningNode>,
    /// What [`Node::client`] logs in with, when the node requires it.
    credentials: Option<raft_client::Credentials>,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(limits: &str) -> Node {
        Node::start_with("", limits, None).await
    }

    /// As [`Node::start`], with `top` (top-level TOML lines) before the peers, and the clients of [`Node::client`] logging in
    /// with `credentials`.
    async fn start_with(
        top: &str,
        limits: &str,
        credentials: Option<raft_client::Credentials>,
    ) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addrs = (peer.local_addr().unwrap(), client.local_addr().unwrap());
        // Both held until both are chosen, then freed for the node to bind.
        drop((peer, client));
        let (peer, client) = addrs;
        let config = NodeConfig::from_toml(&format!(
            "id = 1\ndata_dir = {:?}\n{top}\n[[peers]]\nid = 1\naddr = \"{peer}\"\n\
             client_addr = \"{client}\"\n[limits]\n{limits}\n",
            dir.path().join("node").display().to_string(),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let node = RunningNode::start(config).await.unwrap();
        let n = Node {
            node: Some(node),
            credentials,
            _dir: dir,
        };
        // A single node leads after its first election.
        n.client().set("warm", "up").await.unwrap();
        n
    }

    fn running(&self) -> &RunningNode {
        self.node.as_ref().unwrap()
    }

    fn client(&self) -> Client {
        let mut config = ClientConfig::new([self.running().client_addr.to_string()]);
        config.credentials = self.credentials.clone();
        Client::new(config)
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.running().client_addr)
            .await
            .unwrap()
    }

    fn disconnects(&self, reason: DisconnectReason) -> u64 {
        self.running().handle.metrics.client_disconnects_for(reason)
    }

    /// A RESP round trip on a new connection: the node still serves others.
    async fn assert_serving(&self) {
        let mut s = self.connect().await;
        let reply = command(&mut s, &["SET", "probe", "1"]).await;
        assert_eq!(reply, "+OK\r\n");
        let reply = command(&mut s, &["GET", "probe"]).await;
        assert_eq!(reply, "$1\r\n1\r\n");
    }

    async fn stop(mut self) {
        self.node.take().unwrap().shutdown().await;
    }
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Sends one command and reads what comes back until a pause (small replies only).
async fn command(s: &mut TcpStream, args: &[&str]) -> String {
    s.write_all(&encode(args)).await.unwrap();
    read_reply(s).await
}

async fn read_reply(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 64 << 10];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("a reply in time")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Reads until the node closes the connection; what it sent, and how long that took.
async fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {WAIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, start.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_length_digits_is_refused_at_once() {
    let node = Node::start("").await;
    let mut s = node.connect().await;
    s.write_all(b"*1\r\n$").await.unwrap();
    // 10 MB of digits; the node stops reading after a few bytes, so writing fails early.
    let digits = vec![b'9'; 1 << 20];
    for _ in 0..10 {
        if s.write_all(&digits).await.is_err() {
            break;
        }
    }
    let (got, _) = read_until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    // The error line may be lost to a reset (the node closes with input unread).
    assert!(
        text.is_empty() || text.starts_with("-ERR Protocol error: bulk length line too long"),
        "{text}"
    );
    assert_eq!(node.disconnects(DisconnectReason::ProtocolError), 1);
    node.assert_serving().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_from_their_headers() {
    let node = Node::start("request_bytes_max = 1048576\nbulk_bytes_max = 524288").await;
    // 65,536 arguments: past request_args_max (16,384 by default), refused from `*N`.
    let mut s = node.connect().await;
    s.write_all(b"*65536\r\n").await.unwrap();
    let (got, took) = read_until_closed(&mut s).await;
    assert!(
        String::from_utf8_lossy(&got).contains("request_args_max"),
        "{got:?}"
    );
    assert!(took < WAIT);
    // A bulk past bulk_bytes_max, refused from its `$N` line.
    let mut s = node.connect().await;
    s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$8388608\r\n")
        .await
        .unwrap();
    let (got, _) = read_until_closed(&mut s).await;
    assert!(
        String::from_utf8_lossy(&got).contains("bulk_bytes_max"),
        "{got:?}"
    );
    // Bulks each within bounds, together past request_bytes_max.
    let mut s = node.connect().await;
    let mut req = b"*4\r\n$4\r\nMSET\r\n".to_vec();
    for _ in 0..2 {
        req.extend(b"$524288\r\n");
        req.extend(vec![b'x'; 524_288]);
        req.extend(b"\r\n");
    }
    let _ = s.write_all(&req).await;
    let (got, _) = read_until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.contains("request_bytes_max"),
        "{text}"
    );
    assert_eq!(node.disconnects(DisconnectReason::ProtocolError), 3);
    node.assert_serving().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_silent_and_half_sent_connections_are_closed_after_their_timeouts() {
    let node =
        Node::start("idle_timeout_ms = 300\nread_timeout_ms = 300\nhandshake_timeout_ms = 300")
            .await;
    // Idle after a request.
    let mut idle = node.connect().await;
    assert_eq!(command(&mut idle, &["PING"]).await, "+PONG\r\n");
    // Silent from the start.
    let mut silent = node.connect().await;
    // Half a request.
    let mut half = node.connect().await;
    half.write_all(b"*1\r\n$4\r\nPI").await.unwrap();
    for s in [&mut idle, &mut silent, &mut half] {
        let (_, took) = read_until_closed(s).await;
        assert!(took < WAIT);
    }
    assert_eq!(node.disconnects(DisconnectReason::IdleTimeout), 1);
    assert_eq!(node.disconnects(DisconnectReason::HandshakeTimeout), 1);
    assert_eq!(node.disconnects(DisconnectReason::ReadTimeout), 1);
    node.assert_serving().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_cannot_lock_anyone_out_and_busy_ones_hold_their_source_cap() {
    let node = Node::start(
        "connections_max = 64\nconnections_per_source_max = 32\nconnections_reserved = 4",
    )
    .await;
    // Far more silent sockets than the caps: each new one evicts the oldest idle one.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(node.connect().await);
    }
    node.assert_serving().await;
    let status = node.client().status().await.unwrap();
    assert_eq!(status.id, 1);
    assert!(node.disconnects(DisconnectReason::Evicted) >= 300 - 32);
    drop(silent);
    let deadline = Instant::now() + WAIT;
    while node
        .running()
        .handle
        .metrics
        .client_connections
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0
    {
        assert!(Instant::now() < deadline, "closed sockets still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Connections each with half a request under way are busy: the source's cap holds
    // and the next one is refused, not let in by evicting a busy one.
    let mut busy = Vec::new();
    for _ in 0..32 {
        let mut s = node.connect().await;
        s.write_all(b"*1\r\n").await.unwrap();
        busy.push(s);
    }
    // A connection the node had not read from yet was idle and may have been evicted by a
    // later one (or something else of this host's held a slot): a newcomer that is let in
    // joins the busy ones until the source is full.
    let deadline = Instant::now() + WAIT;
    let got = loop {
        assert!(Instant::now() < deadline, "never refused");
        let mut s = node.connect().await;
        let mut buf = vec![0u8; 256];
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => break buf[..n].to_vec(),
            Ok(_) => continue,
            Err(_) => {
                s.write_all(b"*1\r\n").await.unwrap();
                busy.push(s);
            }
        }
    };
    assert_eq!(
        String::from_utf8_lossy(&got),
        "-ERR max number of clients reached\r\n"
    );
    assert!(node.disconnects(DisconnectReason::RefusedPerSource) >= 1);
    drop(busy);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_admin_keeps_its_connection_through_a_flood_that_evicts_idle_users() {
    let auth = r#"
internal_password = "internal-password-for-the-test"
[[users]]
name = "default"
role = "admin"
password_sha256 = "dc2408a56bac9ea737f8ed4aac2d1bcb319a1bc285caddb81ebed43fee6bfe66"
[[users]]
name = "reader"
role = "read"
password_sha256 = "7f1caa80a41ad0199263fbcc801773457a39dfdf86b43c6b3cec4e5da14f79de"
"#;
    let auth_dir = tempfile::tempdir().unwrap();
    let auth_path = auth_dir.path().join("auth.toml");
    std::fs::write(&auth_path, auth).unwrap();
    let top = format!("auth_file = {:?}", auth_path.display().to_string());
    let node = Node::start_with(
        &top,
        "connections_max = 16\nconnections_per_source_max = 8\nconnections_reserved = 2",
        Some(raft_client::Credentials::new(None, "admin-password-123")),
    )
    .await;
    let mut admin = node.connect().await;
    assert_eq!(
        command(&mut admin, &["AUTH", "admin-password-123"]).await,
        "+OK\r\n"
    );
    let mut reader = node.connect().await;
    assert_eq!(
        command(&mut reader, &["AUTH", "reader", "reader-password-123"]).await,
        "+OK\r\n"
    );
    // Both idle now; a flood of silent sockets from the same source makes room by
    // evicting idle connections, the reader's among them, never the admin's.
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(node.connect().await);
    }
    assert_eq!(command(&mut admin, &["PING"]).await, "+PONG\r\n");
    let (_, waited) = read_until_closed(&mut reader).await;
    assert!(waited < WAIT, "the idle reader was never evicted");
    assert!(node.disconnects(DisconnectReason::Evicted) >= 1);
    drop(silent);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxmemory_refuses_writes_with_oom_while_reads_and_deletes_go_on() {
    let node = Node::start("kv_memory_bytes_max = 20000").await;
    let mut s = node.connect().await;
    let value = "v".repeat(1_000);
    let mut stored = 0;
    let reply = loop {
        let reply = command(&mut s, &["SET", &format!("k{stored}"), &value]).await;
        if reply != "+OK\r\n" || stored > 100 {
            break reply;
        }
        stored += 1;
    };
    assert_eq!(
        reply,
        "-OOM command not allowed when used memory > 'maxmemory'.\r\n"
    );
    assert!(stored > 5, "{stored}");
    let reply = command(&mut s, &["GET", "k0"]).await;
    assert!(reply.starts_with("$1000\r\n"), "{reply}");
    // The native protocol gets the same refusal.
    let err = node
        .client()
        .set("native", value.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("maxmemory"), "{err}");
    assert_eq!(command(&mut s, &["DEL", "k0", "k1"]).await, ":2\r\n");
    assert_eq!(command(&mut s, &["SET", "again", &value]).await, "+OK\r\n");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_past_the_reply_or_key_bound_is_refused() {
    let node = Node::start("reply_bytes_max = 1048576\nrequest_keys_max = 4").await;
    let client = node.client();
    client.set("big", vec![b'b'; 600_000]).await.unwrap();
    let mut s = node.connect().await;
    let reply = command(&mut s, &["MGET", "big", "big"]).await;
    assert_eq!(
        reply,
        "-ERR reply of 1200000 bytes exceeds reply_bytes_max (1048576); ask for fewer keys\r\n"
    );
    let reply = command(&mut s, &["MGET", "a", "b", "c", "d", "e"]).await;
    assert_eq!(reply, "-ERR 5 keys exceed request_keys_max (4)\r\n");
    let reply = command(&mut s, &["DEL", "a", "b", "c", "d", "e"]).await;
    assert_eq!(reply, "-ERR 5 keys exceed request_keys_max (4)\r\n");
    // The native protocol is held to the same bounds.
    let err = client
        .mget(vec!["big".into(), "big".into()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("reply_bytes_max"), "{err}");
    // One copy fits.
    s.write_all(&encode(&["MGET", "big"])).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while got.len() < 600_000 {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"*1\r\n$600000\r\n"));
    node.stop().await;
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_read_their_replies_are_disconnected() {
    let node = Node::start("write_timeout_ms = 500").await;
    node.client().set("big", vec![b'b'; 4 << 20]).await.unwrap();
    let before = rss_bytes();
    // Five connections, each with 64 pipelined GETs of a 4 MiB value (1.25 GiB of replies
    // in all) and never a read.
    let mut conns = Vec::new();
    let pipeline: Vec<u8> = (0..64).flat_map(|_| encode(&["GET", "big"])).collect();
    for _ in 0..5 {
        let mut s = node.connect().await;
        s.write_all(&pipeline).await.unwrap();
        conns.push(s);
    }
    let deadline = Instant::now() + WAIT;
    while node.disconnects(DisconnectReason::WriteTimeout) < 5 {
        assert!(
            Instant::now() < deadline,
            "non-reading clients still connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown = rss_bytes().saturating_sub(before);
    eprintln!(
        "RSS before {} MiB, grown by {} MiB",
        before >> 20,
        grown >> 20
    );
    // What sits in socket buffers is the kernel's; the node holds at most one reply per
    // connection, and those share the stored value.
    assert!(grown < 256 << 20, "RSS grew by {} MiB", grown >> 20);
    drop(conns);
    node.assert_serving().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_clients_that_do_not_read_are_cut_off_too() {
    use raft_proto::{KvCommand, Request, RequestFrame};
    let node = Node::start("write_timeout_ms = 500\noutput_buffer_bytes_max = 8388608").await;
    node.client().set("big", vec![b'b'; 4 << 20]).await.unwrap();
    let before = rss_bytes();
    let get = KvCommand::Get { key: "big".into() }.encode();
    let mut pipeline = Vec::new();
    for id in 0..64u64 {
        let frame = postcard::to_allocvec(&RequestFrame {
            id,
            body: Request::Read {
                op: get.clone(),
                linearizable: true,
            },
        })
        .unwrap();
        pipeline.extend((frame.len() as u32).to_be_bytes());
        pipeline.extend(frame);
    }
    let mut conns = Vec::new();
    for _ in 0..5 {
        let mut s = node.connect().await;
        s.write_all(&pipeline).await.unwrap();
        conns.push(s);
    }
    let cut = || {
        node.disconnects(DisconnectReason::WriteTimeout)
            + node.disconnects(DisconnectReason::OutputBuffer)
    };
    let deadline = Instant::now() + WAIT;
    while cut() < 5 {
        assert!(
            Instant::now() < deadline,
            "non-reading native clients still connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown = rss_bytes().saturating_sub(before);
    eprintln!(
        "native: RSS before {} MiB, grown by {} MiB",
        before >> 20,
        grown >> 20
    );
    assert!(grown < 256 << 20, "RSS grew by {} MiB", grown >> 20);
    drop(conns);
    node.assert_serving().await;
    node.stop().await;
}
