//! Async client for a raft-node cluster, with request IDs that make retries idempotent.
//!
//! ```no_run
//! # async fn demo() -> Result<(), raft_client::ClientError> {
//! use raft_client::{Client, ClientConfig};
//! let client = Client::new(ClientConfig::new(["127.0.0.1:7101", "127.0.0.1:7102"]));
//! client.set("greeting", "hello").await?;
//! assert_eq!(client.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
//! # Ok(()) }
//! ```
//!
//! The client finds the leader by following the nodes' redirects, keeps one connection to
//! it, and retries a failed or timed-out write with the same `(client_id, seq)`: the
//! node's state machine answers a duplicate from its session table instead of applying it
//! again, so a write is applied at most once however often it is retried.
//!
//! Requests through one [`Client`] are sent one at a time (a `seq` is acknowledged before
//! the next is used); use several clients for concurrency.
//!
//! The crate's files: this one holds the settings, the [`Client`] and its log-level calls
//! (propose, query, status, membership); `kv.rs` the typed key-value commands;
//! `connection.rs` how a request reaches the leader (connections, redirects, retries).

#![deny(missing_docs)]

mod connection;
mod kv;
pub mod tls;
/// The wire format, defined in `raft-proto`; re-exported so that `raft_client::wire::...`
/// paths keep working for the client's users.
pub use raft_proto as wire;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

pub use raft_proto::Password;
use raft_proto::Session;
pub use raft_proto::{
    AntiEntropyStatus, DigestInfo, DivergentReplica, ExpireCondition, Expiry, KvCommand, KvError,
    KvResponse, LeaderChange, LoadCounters, MemberAddr, NodeError, NodeId, NodeStatus, PeerInfo,
    SetCondition,
};
pub use raft_proto::{Request, Response};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node refused the request and retrying would not help (or retries ran out).
    #[error("node error: {0}")]
    Node(NodeError),
    /// No node answered successfully within `request_timeout_ms` (a write's outcome is
    /// then unknown; it was applied at most once).
    #[error("request timed out after {attempts} attempts; last error: {last_error}")]
    Timeout {
        /// Attempts made.
        attempts: u32,
        /// What the last attempt ran into.
        last_error: String,
    },
    /// The state machine answered with a deterministic error.
    #[error("state machine error: {0}")]
    Kv(KvError),
    /// The node answered something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// An address cannot reach a node's client port: it has no port, or what answered
    /// there is another kind of port (HTTP). Retrying cannot help, so it is not retried.
    #[error("{0}")]
    Address(String),
}

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Client addresses of the cluster's nodes (`host:port`); any one of them is enough
    /// when the others follow the leader's redirects.
    pub addrs: Vec<String>,
    /// Total time one request may take, across every retry.
    pub request_timeout_ms: u64,
    /// Time to establish a TCP connection.
    pub connect_timeout_ms: u64,
    /// Time to wait for one attempt's answer before retrying elsewhere.
    pub attempt_timeout_ms: u64,
    /// Attempts per request at most.
    pub attempts_max: u32,
    /// Pause before retrying after `Busy`, `Unavailable` or a connection error.
    pub retry_backoff_ms: u64,
    /// Sent first on every new connection (`Request::Auth`), when the nodes require it.
    pub credentials: Option<Credentials>,
    /// TLS to the nodes (see [`tls::client_config_from_pem_files`]); plain TCP when `None`.
    /// The node's certificate must name the host of the address dialled.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A user and password a [`Client`] logs in with on every connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The user; `None` is the node's `default` user.
    pub user: Option<String>,
    /// The password (hidden from `Debug`).
    pub password: Password,
}

impl Credentials {
    /// `user` (or the `default` user) with `password`.
    pub fn new(user: Option<&str>, password: impl Into<Bytes>) -> Credentials {
        Credentials {
            user: user.map(str::to_string),
            password: Password(password.into()),
        }
    }
}

impl ClientConfig {
    /// Defaults: 10 s per request, 1 s to connect, 3 s per attempt, at most 50 attempts,
    /// 50 ms back-off.
    pub fn new<I, S>(addrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            addrs: addrs.into_iter().map(Into::into).collect(),
            request_timeout_ms: 10_000,
            connect_timeout_ms: 1_000,
            attempt_timeout_ms: 3_000,
            attempts_max: 50,
            retry_backoff_ms: 50,
            credentials: None,
            tls: None,
        }
    }
}

/// A connection's byte stream: plain TCP or TLS over it.
trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

type Connection = Framed<Box<dyn ByteStream>, LengthDelimitedCodec>;

struct Inner {
    conn: Option<(String, Connection)>,
    /// Where to send next: the leader's address when known.
    target: Option<String>,
    next_addr: usize,
    next_seq: u64,
    next_frame_id: u64,
}

/// A connection to a cluster. See the crate documentation.
pub struct Client {
    config: ClientConfig,
    client_id: u64,
    inner: Mutex<Inner>,
}

fn random_u64() -> u64 {
    // RandomState is seeded from the OS once per process and varied per instance: enough
    // for client IDs, without a dependency on a random-number crate.
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish().max(1)
}
impl Client {
    /// A client with a fresh random client ID. Connects lazily, on the first request.
    pub fn new(config: ClientConfig) -> Client {
        Self::with_client_id(config, random_u64())
    }

    /// A client that resumes `client_id`'s session; its next request number is 1 unless
    /// [`set_next_seq`](Self::set_next_seq) says otherwise.
    pub fn with_client_id(config: ClientConfig, client_id: u64) -> Client {
        Client {
            config,
            client_id: client_id.max(1),
            inner: Mutex::new(Inner {
                conn: None,
                target: None,
                next_addr: 0,
                next_seq: 1,
                next_frame_id: 1,
            }),
        }
    }

    /// This client's session ID.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Sets the number the next request will carry (for tests and resumed sessions).
    pub async fn set_next_seq(&self, seq: u64) {
        self.inner.lock().await.next_seq = seq.max(1);
    }

    /// Appends `op` to the log with the next request number and returns the state machine's
    /// response bytes. Retries (with the same number) until `request_timeout_ms`.
    pub async fn propose(&self, op: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        let op = op.into();
        let mut inner = self.inner.lock().await;
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let session = Session {
            client_id: self.client_id,
            seq,
            acked_below: seq,
        };
        let request = Request::Propose {
            session: Some(session),
            op,
        };
        Self::applied(self.call_locked(&mut inner, request).await?)
    }

    /// Proposes `op` as request number `seq` of this client, without advancing the client's
    /// own counter: resending an earlier request shows it is applied once.
    pub async fn propose_with_seq(
        &self,
        op: impl Into<Bytes>,
        seq: u64,
    ) -> Result<Bytes, ClientError> {
        let mut inner = self.inner.lock().await;
        let session = Session {
            client_id: self.client_id,
            seq,
            acked_below: seq.min(inner.next_seq),
        };
        let request = Request::Propose {
            session: Some(session),
            op: op.into(),
        };
        Self::applied(self.call_locked(&mut inner, request).await?)
    }

    /// Runs a read-only query: linearizable (ReadIndex) or from the answering node's replica.
    pub async fn query(
        &self,
        op: impl Into<Bytes>,
        linearizable: bool,
    ) -> Result<Bytes, ClientError> {
        let request = Request::Read {
            op: op.into(),
            linearizable,
        };
        Self::applied(self.call(request).await?)
    }

    /// The status of whichever node answers (the leader when known).
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        match self.call(Request::Status).await? {
            Response::Status(s) => Ok(*s),
            other => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// Asks the leader to hand leadership to `to`.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), ClientError> {
        self.admin(Request::TransferLeader { to }).await
    }

    /// Adds `id` as a learner.
    pub async fn add_learner(&self, id: NodeId) -> Result<(), ClientError> {
        self.admin(Request::AddLearner { id }).await
    }

    /// Promotes learner `id` to voter.
    pub async fn promote(&self, id: NodeId) -> Result<(), ClientError> {
        self.admin(Request::Promote { id }).await
    }

    /// Removes member `id`.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ClientError> {
        self.admin(Request::RemoveNode { id }).await
    }

    async fn admin(&self, request: Request) -> Result<(), ClientError> {
        match self.call(request).await? {
            Response::Done => Ok(()),
            other => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        }
    }
    /// Sends any [`Request`] with this client's leader tracking, retries and timeouts, and
    /// returns the node's answer. `Response::Error` answers become [`ClientError::Node`].
    /// A `Propose` sent this way is retried as is: give it a session for exactly-once.
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        self.call(request).await
    }
    fn applied(response: Response) -> Result<Bytes, ClientError> {
        match response {
            Response::Applied(b) => Ok(b),
            other => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        }
    }
}
