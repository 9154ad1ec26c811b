//! The HTTP port against one in-process node, over raw TCP so that the cases a client
//! library would smooth over (chunked uploads, conflicting lengths, `Expect`, keep-alive,
//! half-closed clients) are sent byte for byte. Limits and slow clients are in
//! `http_limits.rs`, tokens and HTTPS in `http_access.rs`, metrics in `http_metrics.rs`;
//! the harness is `http_common/mod.rs`.

use raft_node::auth::Auth;
use raft_node::limits::ClientLimits;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

mod http_common;

use http_common::*;

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
