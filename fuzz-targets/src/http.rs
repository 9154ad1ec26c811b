//! Raw bytes to the node's HTTP service (hyper, `raft_node::http`): one single-node
//! cluster (in-memory log) runs in this process for many inputs; each input is one
//! connection, an in-memory pipe into [`http::serve_stream`], that sends the bytes, closes
//! its write side and reads the answer, once without credentials configured and once with
//! a user whose bearer token the requests may or may not carry. The service must answer or
//! close, never hang, and the node must keep serving (checked with a status request every
//! so often).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft_node::auth::{Auth, InternalClient};
use raft_node::config::{NodeConfig, PeerConfig, StorageKind};
use raft_node::http;
use raft_node::limits::ClientLimits;
use raft_node::node::RunningNode;
use raft_node::router::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Tokens of the protocol, for the stable mutator.
pub const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"GET ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"POST ",
    b"OPTIONS ",
    b" HTTP/1.1\r\n",
    b" HTTP/1.0\r\n",
    b"/kv/",
    b"/status",
    b"/metrics",
    b"?stale=1",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: keep-alive\r\n",
    b"Authorization: Bearer ",
    b"Host: x\r\n",
    b"0\r\n\r\n",
    b"18446744073709551616",
    b"%",
    b"%ff",
    b"ffffffff\r\n",
];

/// Inputs served by one node before it is replaced: bounds what the fuzzed writes store.
const NODE_INPUTS_MAX: u64 = 5_000;
/// An answer (or the close) must come within this.
const ANSWER_TIMEOUT_MS: u64 = 10_000;
/// Bytes of an answer read at most.
const ANSWER_BYTES_MAX: u64 = 1 << 20;
/// Every this many inputs, the node must still answer `GET /status`.
const HEALTH_CHECK_INPUTS: u64 = 500;
/// Bytes the in-memory pipe buffers each way.
const PIPE_BYTES: usize = 64 << 10;
/// The user the authenticated service knows: password "pw", an admin.
const AUTH_FILE: &str = r#"
[[users]]
name = "fuzz"
role = "admin"
password_sha256 = "30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4"
"#;

struct Node {
    runtime: tokio::runtime::Runtime,
    node: Option<RunningNode>,
    /// Without credentials, and with [`AUTH_FILE`]'s.
    routers: [Arc<Router>; 2],
    limits: Arc<ClientLimits>,
    shutdown: watch::Receiver<bool>,
    _shutdown_tx: watch::Sender<bool>,
    inputs: u64,
}

impl Node {
    fn start(generation: u64) -> Node {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let dir = crate::scratch_dir().join(format!("http-node-{generation}"));
        let _ = std::fs::remove_dir_all(&dir);
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let mut config = NodeConfig::with_defaults(
            1,
            dir,
            vec![PeerConfig {
                id: 1,
                addr: loopback.into(),
                client_addr: None,
            }],
        );
        config.client_addr = Some(loopback);
        config.storage = StorageKind::Memory;
        let node = runtime
            .block_on(RunningNode::start(config))
            .expect("a single-node cluster starts");
        let router = |auth: Auth| {
            Arc::new(Router::new(
                node.handle.clone(),
                Arc::new(auth),
                // A single node never forwards.
                &InternalClient::default(),
                vec![node.client_addr.to_string()],
                5_000,
            ))
        };
        let routers = [
            router(Auth::disabled()),
            router(Auth::from_toml(AUTH_FILE).expect("the fuzz auth file")),
        ];
        let (shutdown_tx, shutdown) = watch::channel(false);
        Node {
            runtime,
            node: Some(node),
            routers,
            limits: Arc::new(ClientLimits::default()),
            shutdown,
            _shutdown_tx: shutdown_tx,
            inputs: 0,
        }
    }

    fn stop(mut self) {
        if let Some(node) = self.node.take() {
            self.runtime.block_on(node.shutdown());
        }
        self.runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

static NODE: Mutex<Option<(u64, Node)>> = Mutex::new(None);

/// Sends `request` on a new connection, closes the write side, and reads the answer.
async fn exchange(node: &Node, router: usize, request: &[u8]) -> Vec<u8> {
    let (mut stream, server) = tokio::io::duplex(PIPE_BYTES);
    tokio::spawn(http::serve_stream(
        server,
        node.routers[router].clone(),
        node.limits.clone(),
        node.shutdown.clone(),
    ));
    // The server may answer and close before reading everything: then writes fail.
    let _ = stream.write_all(request).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let mut limited = (&mut stream).take(ANSWER_BYTES_MAX);
    let read = limited.read_to_end(&mut answer);
    match tokio::time::timeout(Duration::from_millis(ANSWER_TIMEOUT_MS), read).await {
        Ok(_) => answer,
        Err(_) => panic!("no answer or close within {ANSWER_TIMEOUT_MS} ms"),
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut guard = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let generation = guard.as_ref().map_or(0, |(g, _)| *g);
    if guard
        .as_ref()
        .is_none_or(|(_, n)| n.inputs >= NODE_INPUTS_MAX)
    {
        if let Some((_, old)) = guard.take() {
            old.stop();
        }
        *guard = Some((generation + 1, Node::start(generation + 1)));
    }
    let (_, node) = guard.as_mut().expect("started above");
    node.inputs += 1;
    for router in 0..node.routers.len() {
        node.runtime.block_on(exchange(node, router, data));
    }
    if node.inputs % HEALTH_CHECK_INPUTS == 0 {
        let answer = node.runtime.block_on(exchange(
            node,
            0,
            b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n",
        ));
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "the node stopped serving: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
    }
}

/// Seeds: every route and method, bodies by length and chunked, keep-alive pipelines.
pub fn seeds() -> Vec<Vec<u8>> {
    [
        &b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /metrics HTTP/1.1\r\n\r\n",
        b"PUT /kv/k HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /kv/k HTTP/1.1\r\n\r\n",
        b"GET /kv/k?stale=1 HTTP/1.1\r\n\r\n",
        b"DELETE /kv/k HTTP/1.1\r\n\r\n",
        b"HEAD /status HTTP/1.1\r\n\r\n",
        b"POST /kv/k HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"PUT /kv/a%20b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"PUT /kv/k HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
        b"PUT /kv/k HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
        b"GET /kv/k HTTP/1.1\r\nConnection: keep-alive\r\n\r\nGET /status HTTP/1.1\r\n\r\n",
        b"GET /kv/k HTTP/1.1\r\nAuthorization: Bearer token\r\n\r\n",
        b"PUT /kv/k HTTP/1.1\r\nAuthorization: Bearer fuzz:pw\r\nContent-Length: 1\r\n\r\nx",
        b"GET /readyz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
        b"GET /kv/k HTTP/1.0\r\n\r\n",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}
