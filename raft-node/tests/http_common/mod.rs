//! The harness of the HTTP tests (`http*.rs`): one in-process node with its HTTP port on
//! an address of the test's own, and a raw-TCP client that reads replies byte for byte.
#![allow(dead_code)] // Each test file uses its own part.

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
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of one response the helpers read at most.
pub const RESPONSE_BYTES_MAX: usize = 16 << 20;

/// One node (alone, or the only one started of `members`) with its HTTP port served with
/// `limits` on an address of the test's own. Shuts down when dropped.
pub struct Node {
    pub node: Option<RunningNode>,
    pub http: SocketAddr,
    pub stop_http: watch::Sender<bool>,
    pub _dir: tempfile::TempDir,
}

impl Node {
    pub async fn start(limits: ClientLimits) -> Node {
        Node::start_member(limits, 1, Auth::disabled(), None).await
    }

    /// Alone, with a budget of `reply_bytes` for responses not yet taken by their clients.
    pub async fn start_with_reply_budget(limits: ClientLimits, reply_bytes: usize) -> Node {
        Node::start_full(limits, 1, Auth::disabled(), None, reply_bytes).await
    }

    /// Node 1 of a cluster of `members` voters (the others are never started), its HTTP
    /// port checking credentials against `auth`, over TLS with `tls`.
    pub async fn start_member(
        limits: ClientLimits,
        members: u64,
        auth: Auth,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Node {
        let reply_bytes = http::REPLY_BYTES_IN_FLIGHT_MAX;
        Node::start_full(limits, members, auth, tls, reply_bytes).await
    }

    pub async fn start_full(
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
    pub async fn ready(&self) {
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
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
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
pub async fn read_reply(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Reply {
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
pub async fn request(addr: SocketAddr, raw: impl AsRef<[u8]>) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_ref()).await.unwrap();
    let head_only = raw.as_ref().starts_with(b"HEAD ");
    read_reply(&mut s, &mut Vec::new(), head_only).await
}

/// True once the server has closed `s` (EOF or reset) within `within`; bytes the server
/// still sends meanwhile are read and dropped.
pub async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
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

pub async fn get_value(addr: SocketAddr, key: &str) -> Reply {
    request(addr, format!("GET /kv/{key} HTTP/1.1\r\nHost: x\r\n\r\n")).await
}
