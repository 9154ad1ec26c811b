//! The HTTP port against one in-process node, over raw TCP so that the cases a client
//! library would smooth over (chunked uploads, conflicting lengths, `Expect`, keep-alive,
//! clients that never read) are sent byte for byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_node::auth::Auth;
use raft_node::config::NodeConfig;
use raft_node::http;
use raft_node::limits::ClientLimits;
use raft_node::node::RunningNode;
use raft_node::router::Router;
use raft_testkit::free_addr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Time any single answer may take before a test fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of one response the helpers read at most.
const RESPONSE_BYTES_MAX: usize = 16 << 20;

/// One node (alone, or the only one started of `members`) with its HTTP port served with
/// `limits` on an address of the test's own. Shuts down when dropped.
struct Node {
    node: Option<RunningNode>,
    http: SocketAddr,
    stop_http: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(limits: ClientLimits) -> Node {
        Node::start_member(limits, 1, Auth::disabled(), None).await
    }

    /// Alone, with a budget of `reply_bytes` for responses not yet taken by their clients.
    async fn start_with_reply_budget(limits: ClientLimits, reply_bytes: usize) -> Node {
        Node::start_full(limits, 1, Auth::disabled(), None, reply_bytes).await
    }

    /// Node 1 of a cluster of `members` voters (the others are never started), its HTTP
    /// port checking credentials against `auth`, over TLS with `tls`.
    async fn start_member(
        limits: ClientLimits,
        members: u64,
        auth: Auth,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Node {
        let reply_bytes = http::REPLY_BYTES_IN_FLIGHT_MAX;
        Node::start_full(limits, members, auth, tls, reply_bytes).await
    }

    async fn start_full(
        limits: ClientLimits,
        members: u64,
        auth: Auth,
        tls: Option<Arc<rustls::ServerConfig>>,
        reply_bytes: usize,
    ) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut toml = format!(
            // A cluster of several members is given its shared ID.
            "id = 1\ndata_dir = {:?}\nstorage = \"memory\"\ncluster_id = \"7e57\"\n",
            dir.path().display().to_string()
        );
        for id in 1..=members {
            toml += &format!(
                "[[peers]]\nid = {id}\naddr = \"{}\"\nclient_addr = \"{}\"\n",
                free_addr(),
                free_addr()
            );
        }
        let config = NodeConfig::from_toml(&toml).unwrap_or_else(|e| panic!("{e}"));
        let node = RunningNode::start(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = listener.local_addr().unwrap();
        let router = Arc::new(Router::new(
            node.handle.clone(),
            Arc::new(auth),
            // One node: nothing is forwarded, so no login on peers is needed.
            &raft_node::auth::InternalClient::default(),
            vec![node.client_addr.to_string()],
            5_000,
        ));
        let (stop_http, stop_rx) = watch::channel(false);
        tokio::spawn(http::serve(
            listener,
            router,
            Arc::new(limits),
            tls,
            reply_bytes,
            stop_rx,
        ));
        Node {
            node: Some(node),
            http,
            stop_http,
            _dir: dir,
        }
    }

    /// Waits until the node can serve a write (it has elected itself).
    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = request(self.http, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
            if r.status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "never ready: {r:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop_http.send(true);
        if let Some(node) = self.node.take() {
            // The runtime stops with its tokio runtime if this does not get to run.
            tokio::spawn(node.shutdown());
        }
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Reads one response from `s` (`Content-Length` bodies only: all ours have one); `head_only`
/// for the answer to a HEAD. `buf` carries bytes read past it to the next call.
async fn read_reply(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Reply {
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let status: u16 = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("bad status line: {head}"));
                let mut reply = Reply {
                    status,
                    head,
                    body: Vec::new(),
                };
                let len: usize = if head_only || status == 100 {
                    0
                } else {
                    reply
                        .header("content-length")
                        .map(|v| v.parse().unwrap())
                        .unwrap_or(0)
                };
                while buf.len() < end + 4 + len {
                    let mut chunk = vec![0u8; 64 << 10];
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "closed mid-body: {}", reply.head);
                    buf.extend_from_slice(&chunk[..n]);
                }
                reply.body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return reply;
            }
            assert!(buf.len() < RESPONSE_BYTES_MAX, "no end of head");
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before a response head");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(ANSWER_TIMEOUT, read)
        .await
        .expect("an answer in time")
}

/// Sends `raw` on a new connection and reads one response.
async fn request(addr: SocketAddr, raw: impl AsRef<[u8]>) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_ref()).await.unwrap();
    let head_only = raw.as_ref().starts_with(b"HEAD ");
    read_reply(&mut s, &mut Vec::new(), head_only).await
}

/// True once the server has closed `s` (EOF or reset) within `within`; bytes the server
/// still sends meanwhile are read and dropped.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

async fn get_value(addr: SocketAddr, key: &str) -> Reply {
    request(addr, format!("GET /kv/{key} HTTP/1.1\r\nHost: x\r\n\r\n")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_put_stores_the_whole_body() {
    let n = Node::start(ClientLimits::default()).await;
    n.ready().await;
    let put = request(
        n.http,
        "PUT /kv/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(put.status, 200, "{put:?}");
    let got = get_value(n.http, "k").await;
    assert_eq!((got.status, &got.body[..]), (200, &b"hello world"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_are_refused_and_nothing_is_stored() {
    let n = Node::start(ClientLimits::default()).await;
    n.ready().await;
    let put = request(
        n.http,
        "PUT /kv/dup HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 3\r\n\r\nhello",
    )
    .await;
    assert_eq!(put.status, 400, "{put:?}");
    // Content-Length beside chunked is not trusted either: the chunked framing wins and the
    // whole body is stored, never a prefix of the declared length.
    let put = request(
        n.http,
        "PUT /kv/te HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(put.status, 200, "{put:?}");
    assert_eq!(get_value(n.http, "te").await.body, b"hello");
    assert_eq!(get_value(n.http, "dup").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_refused_without_being_stored() {
    let limits = ClientLimits {
        http_body_bytes_max: 1_024,
        ..ClientLimits::default()
    };
    let n = Node::start(limits).await;
    n.ready().await;
    // Declared too large: refused from the head alone.
    let declared = request(
        n.http,
        "PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n",
    )
    .await;
    assert_eq!(declared.status, 413, "{declared:?}");
    assert_eq!(declared.header("connection").as_deref(), Some("close"));
    // Chunked past the limit: refused once the limit is crossed, while chunks keep coming.
    let mut s = TcpStream::connect(n.http).await.unwrap();
    s.write_all(b"PUT /kv/big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("200\r\n{}\r\n", "x".repeat(0x200));
    for _ in 0..3 {
        s.write_all(chunk.as_bytes()).await.unwrap();
    }
    let streamed = read_reply(&mut s, &mut Vec::new(), false).await;
    assert_eq!(streamed.status, 413, "{streamed:?}");
    assert!(closed_within(&mut s, ANSWER_TIMEOUT).await);
    // At the limit exactly: stored.
    let body = "y".repeat(1_024);
    let ok = request(
        n.http,
        format!("PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n{body}"),
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(get_value(n.http, "big").await.body, body.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_headers_only_and_methods_are_checked() {
    let n = Node::start(ClientLimits::default()).await;
    n.ready().await;
    let mut s = TcpStream::connect(n.http).await.unwrap();
    let mut buf = Vec::new();
    // HEAD then GET on one connection: if HEAD's answer carried a body, the GET's status
    // line would not come next.
    s.write_all(b"HEAD /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_reply(&mut s, &mut buf, true).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-type").as_deref(),
        Some("application/json")
    );
    let declared: usize = head.header("content-length").unwrap().parse().unwrap();
    assert!(declared > 0);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let health = read_reply(&mut s, &mut buf, false).await;
    assert_eq!((health.status, &health.body[..]), (200, &b"ok\n"[..]));
    assert!(buf.is_empty(), "stray bytes after the responses: {buf:?}");

    for path in ["/metrics", "/readyz", "/healthz", "/kv/nothing"] {
        let r = request(n.http, format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        assert!(r.status == 200 || r.status == 404, "HEAD {path}: {r:?}");
    }

    let post = request(
        n.http,
        "POST /kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
    )
    .await;
    assert_eq!(post.status, 405);
    assert_eq!(
        post.header("allow").as_deref(),
        Some("GET, HEAD, PUT, DELETE")
    );
    let patch = request(n.http, "PATCH /kv/k HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(patch.status, 405);
    let put_status = request(
        n.http,
        "PUT /status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(put_status.status, 405);
    assert_eq!(put_status.header("allow").as_deref(), Some("GET, HEAD"));
    assert_eq!(
        request(n.http, "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let n = Node::start(ClientLimits::default()).await;
    n.ready().await;
    let mut s = TcpStream::connect(n.http).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nv1")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut s, &mut buf, false).await.status, 200);
    s.write_all(b"GET /kv/a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_reply(&mut s, &mut buf, false).await;
    assert_eq!((got.status, &got.body[..]), (200, &b"v1"[..]));
    // Two pipelined requests in one write are answered in order.
    s.write_all(b"DELETE /kv/a HTTP/1.1\r\nHost: x\r\n\r\nGET /kv/a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut s, &mut buf, false).await.status, 200);
    assert_eq!(read_reply(&mut s, &mut buf, false).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_its_sending_side_still_gets_its_answer() {
    // `nc -N` and HTTP/1.0 tools shut their write side right after the request; hyper's
    // default took that EOF as the client gone and dropped the `/status` answer it was
    // still preparing (the fuzz target's health check found it).
    let n = Node::start(ClientLimits::default()).await;
    n.ready().await;
    for path in ["/status", "/kv/missing", "/healthz"] {
        let mut s = TcpStream::connect(n.http).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let mut buf = Vec::new();
        let got = read_reply(&mut s, &mut buf, false).await;
        assert!(
            got.status == 200 || got.status == 404,
            "{path}: {}",
            got.status
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_answered_before_the_body() {
    let limits = ClientLimits {
        http_body_bytes_max: 1_024,
        ..ClientLimits::default()
    };
    let n = Node::start(limits).await;
    n.ready().await;
    let mut s = TcpStream::connect(n.http).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(
        b"PUT /kv/e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let go = read_reply(&mut s, &mut buf, false).await;
    assert_eq!(go.status, 100, "{go:?}");
    s.write_all(b"hello").await.unwrap();
    assert_eq!(read_reply(&mut s, &mut buf, false).await.status, 200);
    assert_eq!(get_value(n.http, "e").await.body, b"hello");

    // Too large: refused at once, no 100, so the client never sends the body.
    let refused = request(
        n.http,
        "PUT /kv/e HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert_eq!(refused.status, 413, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_why_a_node_without_a_leader_is_not_ready() {
    // Node 1 of three, alone: it can never elect a leader.
    let n = Node::start_member(ClientLimits::default(), 3, Auth::disabled(), None).await;
    let health = request(n.http, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(health.status, 200);
    let ready = request(n.http, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(ready.status, 503, "{ready:?}");
    let why = String::from_utf8_lossy(&ready.body);
    assert!(why.contains("no known leader"), "{why}");
    // `/status` keeps its shape.
    let status = request(n.http, "GET /status HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let json: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    for field in [
        "id",
        "role",
        "term",
        "leader",
        "commit_index",
        "applied_index",
        "log",
        "voters",
        "peers",
        "anti_entropy",
    ] {
        assert!(json.get(field).is_some(), "/status lacks {field}: {json}");
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_required_and_roles_checked() {
    let users = [
        ("default", "admin", "root-pw"),
        ("reader", "read", "read-pw"),
        ("writer", "read-write", "write-pw"),
    ];
    let mut toml = String::new();
    for (name, role, password) in users {
        toml += &format!(
            "[[users]]\nname = \"{name}\"\nrole = \"{role}\"\npassword_sha256 = \"{}\"\n",
            raft_node::auth::password_sha256_hex(password.as_bytes())
        );
    }
    let auth = Auth::from_toml(&toml).unwrap_or_else(|e| panic!("{e:?}"));
    let n = Node::start_member(ClientLimits::default(), 1, auth, None).await;
    // Health and readiness need no token (probes carry none).
    n.ready().await;
    assert_eq!(
        request(n.http, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .status,
        200
    );

    let put = |token: &str| {
        let auth = if token.is_empty() {
            String::new()
        } else {
            format!("Authorization: Bearer {token}\r\n")
        };
        format!("PUT /kv/t HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1\r\n\r\nv")
    };
    let get = |path: &str, token: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n")
    };
    // No token, a wrong one, another scheme: 401 with the challenge; nothing stored.
    for raw in [
        put(""),
        put("wrong"),
        put("writer:read-pw"),
        "PUT /kv/t HTTP/1.1\r\nHost: x\r\nAuthorization: Basic d3JpdGVyOndyaXRlLXB3\r\nContent-Length: 1\r\n\r\nv".into(),
    ] {
        let r = request(n.http, &raw).await;
        assert_eq!(r.status, 401, "{raw}: {r:?}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"), "{r:?}");
    }
    for path in ["/status", "/metrics", "/kv/t"] {
        let r = request(n.http, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        assert_eq!(r.status, 401, "GET {path} without a token: {r:?}");
    }
    // A reader reads but may not write.
    assert_eq!(
        request(n.http, get("/kv/t", "reader:read-pw")).await.status,
        404
    );
    assert_eq!(
        request(n.http, get("/status", "reader:read-pw"))
            .await
            .status,
        200
    );
    let denied = request(n.http, put("reader:read-pw")).await;
    assert_eq!(denied.status, 403, "{denied:?}");
    // A writer and the default user (password alone) write.
    assert_eq!(request(n.http, put("writer:write-pw")).await.status, 200);
    assert_eq!(request(n.http, put("root-pw")).await.status, 200);
    let got = request(n.http, get("/kv/t", "reader:read-pw")).await;
    assert_eq!((got.status, &got.body[..]), (200, &b"v"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_and_its_data_need_the_status_token() {
    let toml = format!(
        "[[users]]\nname = \"reader\"\nrole = \"read\"\npassword_sha256 = \"{}\"\n",
        raft_node::auth::password_sha256_hex(b"read-pw")
    );
    let auth = Auth::from_toml(&toml).unwrap_or_else(|e| panic!("{e:?}"));
    let n = Node::start_member(ClientLimits::default(), 1, auth, None).await;
    n.ready().await;
    let with = |path: &str, auth: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
    // Refused: the page (which holds no data, and asks for a token) with the refusal's
    // status; the data not at all.
    for auth in ["", "Authorization: Bearer reader:wrong\r\n"] {
        let page = request(n.http, with("/", auth)).await;
        assert_eq!(page.status, 401, "{page:?}");
        assert!(page
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer"));
        let html = String::from_utf8_lossy(&page.body);
        assert!(html.contains("<title>Rafter cluster</title>"), "{html}");
        for secret in [
            "\"term\":",
            "\"applied_index\":",
            n.node.as_ref().unwrap().client_addr.to_string().as_str(),
        ] {
            assert!(!html.contains(secret), "the refused page leaks {secret}");
        }
        let data = request(n.http, with("/cluster", auth)).await;
        assert_eq!(data.status, 401, "{data:?}");
        assert!(
            !String::from_utf8_lossy(&data.body).contains("applied"),
            "{data:?}"
        );
    }
    let token = "Authorization: Bearer reader:read-pw\r\n";
    let page = request(n.http, with("/", token)).await;
    assert_eq!(page.status, 200, "{page:?}");
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let data = request(n.http, with("/cluster", token)).await;
    assert_eq!(data.status, 200, "{data:?}");
    let view: serde_json::Value = serde_json::from_slice(&data.body).unwrap();
    assert_eq!(view["from"], 1);
    assert_eq!(view["leader"]["id"], 1, "{view:#}");
    assert_eq!(view["members"][0]["status"]["role"], "Leader", "{view:#}");
    assert_eq!(view["alarms"], serde_json::json!([]), "{view:#}");
    // HEAD answers as GET does, without the body.
    let head = request(
        n.http,
        format!("HEAD /cluster HTTP/1.1\r\nHost: x\r\n{token}\r\n"),
    )
    .await;
    assert_eq!((head.status, head.body.len()), (200, 0), "{head:?}");
}

/// Every series name a scrape declares: counters with `_total`, histograms with their
/// `_bucket`, `_sum` and `_count`, infos with `_info`; and the samples' label sets.
fn scrape_names(text: &str) -> (std::collections::BTreeSet<String>, Vec<String>) {
    let mut names = std::collections::BTreeSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            samples.push(line.to_string());
        }
    }
    (names, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_naming_rules_and_the_dashboard_reads_only_real_series() {
    let n = Node::start(ClientLimits::default()).await;
    n.ready().await;
    let r = request(n.http, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let (names, samples) = scrape_names(&text);
    for sample in &samples {
        assert!(
            sample.contains("node=\"1\""),
            "a series without the node label: {sample}"
        );
    }
    for name in [
        "raft_has_leader",
        "raft_leader_changes_total",
        "raft_proposals_pending",
        "raft_peer_match_lag_entries",
        "raft_peer_rtt_seconds",
        "raft_peer_sent_bytes_total",
        "raft_peer_sent_messages_total",
        "raft_net_sent_bytes_total",
        "raft_proposal_latency_seconds_bucket",
        "raft_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(names.contains(name), "{name} missing from\n{text}");
    }
    assert!(text.contains("raft_has_leader{node=\"1\"} 1"), "{text}");
    assert!(
        text.contains("raft_build_info{node=\"1\",version="),
        "{text}"
    );

    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/grafana/raft-node.json"))
            .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => collect(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "{exprs:?}");
    let mut queried = 0;
    for expr in &exprs {
        let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        for word in words.filter(|w| w.starts_with("raft_") || w.starts_with("process_")) {
            queried += 1;
            assert!(
                names.contains(word),
                "the dashboard queries {word}, which /metrics lacks"
            );
        }
    }
    assert!(queried > 30, "{queried}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_when_the_node_has_tls() {
    let certs = tempfile::tempdir().unwrap();
    raft_node::certs::generate(certs.path(), None, &[1], &["127.0.0.1".to_string()]).unwrap();
    let setup = raft_node::tls::TlsConfig {
        ca_file: certs.path().join(raft_node::certs::CA_CERT_FILE),
        cert_file: certs.path().join(raft_node::certs::node_cert_file(1)),
        key_file: certs.path().join(raft_node::certs::node_key_file(1)),
        client_cert_required: false,
    }
    .load()
    .unwrap_or_else(|e| panic!("{e}"));
    let limits = ClientLimits {
        handshake_timeout_ms: 500,
        ..ClientLimits::default()
    };
    let n = Node::start_member(
        limits,
        1,
        Auth::disabled(),
        Some(setup.client_server.clone()),
    )
    .await;

    let connector = tokio_rustls::TlsConnector::from(setup.client.clone());
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tcp = TcpStream::connect(n.http).await.unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    // Two requests on the one TLS connection.
    let mut buf = Vec::new();
    for _ in 0..2 {
        tls.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut chunk = vec![0u8; 64 << 10];
        let reply = tokio::time::timeout(ANSWER_TIMEOUT, async {
            loop {
                let n = tls.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed");
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if body.len() >= len {
                        buf.clear();
                        return head.to_string();
                    }
                }
            }
        })
        .await
        .expect("an HTTPS answer in time");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }

    // Plain HTTP on the TLS port gets no answer and the connection is closed.
    let mut plain = TcpStream::connect(n.http).await.unwrap();
    plain
        .write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, plain.read_to_end(&mut got)).await;
    assert!(
        !got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // A client that connects and never starts the handshake is dropped.
    let mut silent = TcpStream::connect(n.http).await.unwrap();
    assert!(closed_within(&mut silent, ANSWER_TIMEOUT).await);
}
