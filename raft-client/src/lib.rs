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

#![deny(missing_docs)]

pub mod tls;
/// The wire format, defined in `raft-proto`; re-exported so that `raft_client::wire::...`
/// paths keep working for the client's users.
pub use raft_proto as wire;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

pub use raft_proto::Password;
pub use raft_proto::{
    AntiEntropyStatus, DigestInfo, DivergentReplica, ExpireCondition, Expiry, KvCommand, KvError,
    KvResponse, LeaderChange, LoadCounters, MemberAddr, NodeError, NodeId, NodeStatus, PeerInfo,
    SetCondition,
};
pub use raft_proto::{Request, Response};
use raft_proto::{RequestFrame, ResponseFrame, Session, FRAME_BYTES_MAX};

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

/// Checks that `addr` is `HOST:PORT` (`[V6]:PORT` for IPv6).
fn check_addr(addr: &str) -> Result<(), ClientError> {
    let port = addr.rsplit_once(':').and_then(|(host, port)| {
        let bare_v6 = host.contains(':') && !host.starts_with('[');
        (!host.is_empty() && !bare_v6).then_some(port)
    });
    match port.map(str::parse::<u16>) {
        Some(Ok(p)) if p != 0 => Ok(()),
        _ => Err(ClientError::Address(format!(
            "{addr:?} is not HOST:PORT: give the node's client port (native protocol and \
             RESP), e.g. 127.0.0.1:6381"
        ))),
    }
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

/// Outcome of one attempt, as the retry loop sees it.
enum Attempt {
    Done(Response),
    /// A failure no retry can mend.
    Fail(ClientError),
    Retry {
        reason: String,
        backoff: bool,
        /// The node's refusal, when the attempt got one: returned if retries run out.
        refusal: Option<NodeError>,
    },
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

    // ----- typed key-value helpers -------------------------------------------------------

    /// Runs a key-value command: writes through the log with a session, reads linearizably.
    pub async fn kv(&self, command: KvCommand) -> Result<KvResponse, ClientError> {
        let bytes = if command.is_read() {
            self.query(command.encode(), true).await?
        } else {
            self.propose(command.encode()).await?
        };
        match KvResponse::decode(&bytes) {
            Some(KvResponse::Error(e)) => Err(ClientError::Kv(e)),
            Some(r) => Ok(r),
            None => Err(ClientError::Protocol("undecodable KvResponse".into())),
        }
    }

    /// GET, linearizable.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, ClientError> {
        match self.kv(KvCommand::Get { key: key.into() }).await? {
            KvResponse::Value(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// GET from the answering node's replica without a ReadIndex round: may be stale.
    pub async fn get_stale(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, ClientError> {
        let bytes = self
            .query(KvCommand::Get { key: key.into() }.encode(), false)
            .await?;
        match KvResponse::decode(&bytes) {
            Some(KvResponse::Value(v)) => Ok(v),
            Some(other) => Err(unexpected(other)),
            None => Err(ClientError::Protocol("undecodable KvResponse".into())),
        }
    }

    /// SET.
    pub async fn set(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let command = KvCommand::Set {
            key: key.into(),
            value: value.into(),
        };
        match self.kv(command).await? {
            KvResponse::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// MGET, linearizable: one value per key, in order.
    pub async fn mget(&self, keys: Vec<Bytes>) -> Result<Vec<Option<Bytes>>, ClientError> {
        match self.kv(KvCommand::MGet { keys }).await? {
            KvResponse::Values(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// EXISTS, linearizable: how many of `keys` exist.
    pub async fn exists(&self, keys: Vec<Bytes>) -> Result<i64, ClientError> {
        match self.kv(KvCommand::Exists { keys }).await? {
            KvResponse::Int(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// MSET: sets every pair in one log entry.
    pub async fn mset(&self, pairs: Vec<(Bytes, Bytes)>) -> Result<(), ClientError> {
        match self.kv(KvCommand::MSet { pairs }).await? {
            KvResponse::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// DEL: how many of `keys` existed.
    pub async fn del(&self, keys: Vec<Bytes>) -> Result<i64, ClientError> {
        match self.kv(KvCommand::Del { keys }).await? {
            KvResponse::Int(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// INCRBY: the new value.
    pub async fn incr_by(&self, key: impl Into<Bytes>, by: i64) -> Result<i64, ClientError> {
        match self
            .kv(KvCommand::IncrBy {
                key: key.into(),
                by,
            })
            .await?
        {
            KvResponse::Int(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// Compare-and-set: whether it swapped, and the key's value afterwards.
    pub async fn compare_and_set(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<(bool, Option<Bytes>), ClientError> {
        let command = KvCommand::Cas {
            key: key.into(),
            expected,
            new,
        };
        match self.kv(command).await? {
            KvResponse::Cas { swapped, current } => Ok((swapped, current)),
            other => Err(unexpected(other)),
        }
    }

    /// SET with NX/XX (`condition`) and a time to live (`expiry`; [`Expiry::Persist`] for
    /// none, [`Expiry::Keep`] for KEEPTTL): whether it wrote.
    pub async fn set_with(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        condition: SetCondition,
        expiry: Expiry,
    ) -> Result<bool, ClientError> {
        let command = KvCommand::SetWith {
            key: key.into(),
            value: value.into(),
            condition,
            get: false,
            expiry,
        };
        match self.kv(command).await? {
            KvResponse::Ok => Ok(true),
            KvResponse::Value(None) => Ok(false),
            other => Err(unexpected(other)),
        }
    }

    /// GETDEL: the value the key held, now removed.
    pub async fn get_del(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, ClientError> {
        match self.kv(KvCommand::GetDel { key: key.into() }).await? {
            KvResponse::Value(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// APPEND: the value's new length.
    pub async fn append(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<i64, ClientError> {
        let command = KvCommand::Append {
            key: key.into(),
            value: value.into(),
        };
        self.int(command).await
    }

    /// INCRBYFLOAT: the new value, as stored (Redis' decimal text).
    pub async fn incr_by_float(
        &self,
        key: impl Into<Bytes>,
        by: f64,
    ) -> Result<Bytes, ClientError> {
        let command = KvCommand::IncrByFloat {
            key: key.into(),
            by: Bytes::from(by.to_string()),
        };
        match self.kv(command).await? {
            KvResponse::Value(Some(v)) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// RENAME (`nx`: RENAMENX): whether it renamed.
    pub async fn rename(
        &self,
        from: impl Into<Bytes>,
        to: impl Into<Bytes>,
        nx: bool,
    ) -> Result<bool, ClientError> {
        let command = KvCommand::Rename {
            from: from.into(),
            to: to.into(),
            nx,
        };
        match self.kv(command).await? {
            KvResponse::Ok | KvResponse::Int(1) => Ok(true),
            KvResponse::Int(0) => Ok(false),
            other => Err(unexpected(other)),
        }
    }

    /// EXPIRE and its variants ([`Expiry::In`] or [`Expiry::At`], in milliseconds):
    /// whether the time to live was set.
    pub async fn expire(
        &self,
        key: impl Into<Bytes>,
        when: Expiry,
        condition: ExpireCondition,
    ) -> Result<bool, ClientError> {
        let command = KvCommand::Expire {
            key: key.into(),
            when,
            condition,
        };
        Ok(self.int(command).await? == 1)
    }

    /// PERSIST: whether a time to live was removed.
    pub async fn persist(&self, key: impl Into<Bytes>) -> Result<bool, ClientError> {
        Ok(self.int(KvCommand::Persist { key: key.into() }).await? == 1)
    }

    /// PTTL, linearizable: milliseconds left, -1 without a time to live, -2 if absent
    /// (Redis' answers), by the cluster's leader-stamped clock.
    pub async fn pttl(&self, key: impl Into<Bytes>) -> Result<i64, ClientError> {
        let command = KvCommand::Ttl {
            key: key.into(),
            millis: true,
        };
        self.int(command).await
    }

    /// KEYS, linearizable: every key matching the glob `pattern`, in key order (refused
    /// past the node's `reply_bytes_max`).
    pub async fn keys(&self, pattern: impl Into<Bytes>) -> Result<Vec<Bytes>, ClientError> {
        match self
            .kv(KvCommand::Keys {
                pattern: pattern.into(),
            })
            .await?
        {
            KvResponse::Keys(keys) => Ok(keys),
            other => Err(unexpected(other)),
        }
    }

    /// SCAN, linearizable: `(next cursor, keys)`; start at 0, done when the cursor is 0.
    /// Any node continues a cursor another node answered.
    pub async fn scan(
        &self,
        cursor: u64,
        pattern: Option<Bytes>,
        count: u64,
    ) -> Result<(u64, Vec<Bytes>), ClientError> {
        let command = KvCommand::Scan {
            cursor,
            pattern,
            count,
            type_name: None,
        };
        match self.kv(command).await? {
            KvResponse::Scan { cursor, keys } => Ok((cursor, keys)),
            other => Err(unexpected(other)),
        }
    }

    /// DBSIZE, linearizable: keys that exist (expired ones not counted).
    pub async fn db_size(&self) -> Result<i64, ClientError> {
        self.int(KvCommand::DbSize).await
    }

    /// The versions of `keys` (the log index that last changed each, 0 if absent): what a
    /// transaction watches.
    pub async fn versions(&self, keys: Vec<Bytes>) -> Result<Vec<u64>, ClientError> {
        match self.kv(KvCommand::Versions { keys }).await? {
            KvResponse::Versions(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// A transaction: `commands` applied in one log entry if every `(key, version)` in
    /// `watches` still holds (see [`Client::versions`]), one answer each (a failing command
    /// answers its error, the others apply); `None` if a watched key changed and nothing
    /// was applied.
    pub async fn exec(
        &self,
        watches: Vec<(Bytes, u64)>,
        commands: Vec<KvCommand>,
    ) -> Result<Option<Vec<KvResponse>>, ClientError> {
        match self.kv(KvCommand::Exec { watches, commands }).await? {
            KvResponse::Batch(answers) => Ok(Some(answers)),
            KvResponse::Aborted => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    async fn int(&self, command: KvCommand) -> Result<i64, ClientError> {
        match self.kv(command).await? {
            KvResponse::Int(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    // ----- transport ---------------------------------------------------------------------

    /// Sends any [`Request`] with this client's leader tracking, retries and timeouts, and
    /// returns the node's answer. `Response::Error` answers become [`ClientError::Node`].
    /// A `Propose` sent this way is retried as is: give it a session for exactly-once.
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        self.call(request).await
    }

    async fn call(&self, request: Request) -> Result<Response, ClientError> {
        let mut inner = self.inner.lock().await;
        self.call_locked(&mut inner, request).await
    }

    fn applied(response: Response) -> Result<Bytes, ClientError> {
        match response {
            Response::Applied(b) => Ok(b),
            other => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        }
    }

    async fn call_locked(
        &self,
        inner: &mut Inner,
        request: Request,
    ) -> Result<Response, ClientError> {
        if self.config.addrs.is_empty() {
            return Err(ClientError::Protocol("no node address configured".into()));
        }
        for addr in &self.config.addrs {
            check_addr(addr)?;
        }
        let deadline = Instant::now() + Duration::from_millis(self.config.request_timeout_ms);
        let mut last_error = String::from("no attempt made");
        let mut last_refusal = None;
        let mut attempts = 0;
        while attempts < self.config.attempts_max && Instant::now() < deadline {
            attempts += 1;
            match self.attempt(inner, &request, deadline).await {
                Attempt::Done(Response::Error(e)) => return Err(ClientError::Node(e)),
                Attempt::Fail(e) => return Err(e),
                Attempt::Done(response) => return Ok(response),
                Attempt::Retry {
                    reason,
                    backoff,
                    refusal,
                } => {
                    tracing::debug!(attempts, %reason, "retrying request");
                    last_error = reason;
                    // The most recent refusal by a node says more than a later network error.
                    if refusal.is_some() {
                        last_refusal = refusal;
                    }
                    if backoff {
                        let pause = Duration::from_millis(self.config.retry_backoff_ms);
                        tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
                    }
                }
            }
        }
        // A node's own answer (no quorum, busy, no leader) says more than a bare timeout.
        if let Some(e) = last_refusal {
            return Err(ClientError::Node(e));
        }
        Err(ClientError::Timeout {
            attempts,
            last_error,
        })
    }

    fn rotate(&self, inner: &mut Inner) {
        inner.target = None;
        inner.next_addr = (inner.next_addr + 1) % self.config.addrs.len();
    }

    async fn attempt(&self, inner: &mut Inner, request: &Request, deadline: Instant) -> Attempt {
        let addr = inner
            .target
            .clone()
            .unwrap_or_else(|| self.config.addrs[inner.next_addr].clone());
        if inner.conn.as_ref().is_none_or(|(a, _)| *a != addr) {
            inner.conn = None;
            let limit = Duration::from_millis(self.config.connect_timeout_ms);
            match tokio::time::timeout(limit, self.connect(&addr, &mut inner.next_frame_id)).await {
                Ok(Ok(conn)) => inner.conn = Some((addr.clone(), conn)),
                // Wrong credentials: no other node will accept them either.
                Ok(Err(ConnectError::Refused(e))) => {
                    return Attempt::Done(Response::Error(e));
                }
                Ok(Err(ConnectError::Io(e))) => {
                    self.rotate(inner);
                    return Attempt::Retry {
                        reason: format!("connect {addr}: {e}"),
                        backoff: true,
                        refusal: None,
                    };
                }
                Err(_) => {
                    self.rotate(inner);
                    return Attempt::Retry {
                        reason: format!("connect {addr}: timed out"),
                        backoff: false,
                        refusal: None,
                    };
                }
            }
        }
        let id = inner.next_frame_id;
        inner.next_frame_id += 1;
        let frame = RequestFrame {
            id,
            body: request.clone(),
        };
        let bytes = match postcard::to_allocvec(&frame) {
            Ok(b) => Bytes::from(b),
            Err(e) => return Attempt::Done(Response::Error(NodeError::Invalid(e.to_string()))),
        };
        let attempt_deadline =
            deadline.min(Instant::now() + Duration::from_millis(self.config.attempt_timeout_ms));
        let (_, framed) = inner.conn.as_mut().expect("connected above");
        let exchange = async {
            framed.send(bytes).await?;
            loop {
                match framed.next().await {
                    Some(Ok(buf)) => {
                        let reply: ResponseFrame = postcard::from_bytes(&buf)
                            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                        // An answer to an earlier, abandoned attempt: skip it.
                        if reply.id == id {
                            return Ok(reply.body);
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "connection closed",
                        ))
                    }
                }
            }
        };
        let outcome = tokio::time::timeout_at(attempt_deadline, exchange).await;
        match outcome {
            Ok(Ok(response)) => self.judge(inner, response),
            Ok(Err(e)) => {
                // A frame header that reads "HTTP": an HTTP server answered our frame.
                let http = inner
                    .conn
                    .as_ref()
                    .is_some_and(|(_, f)| f.read_buffer().starts_with(b"HTTP/"));
                inner.conn = None;
                if http {
                    return Attempt::Fail(ClientError::Address(format!(
                        "{addr} answered in HTTP: it is a node's HTTP port (status page, \
                         /status, /kv); give its client port (native protocol and RESP) \
                         instead"
                    )));
                }
                self.rotate(inner);
                Attempt::Retry {
                    reason: format!("{addr}: {e}"),
                    backoff: true,
                    refusal: None,
                }
            }
            Err(_) => {
                // The connection may still deliver the late answer; it is skipped by id.
                inner.conn = None;
                self.rotate(inner);
                Attempt::Retry {
                    reason: format!("{addr}: no answer in time"),
                    backoff: false,
                    refusal: None,
                }
            }
        }
    }

    /// Opens a connection to `addr`: TCP, then TLS if configured, then `Auth` if
    /// credentials are configured.
    async fn connect(
        &self,
        addr: &str,
        next_frame_id: &mut u64,
    ) -> Result<Connection, ConnectError> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn ByteStream> = match &self.config.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let name = tls::server_name(addr)?;
                let connector = tokio_rustls::TlsConnector::from(tls.clone());
                Box::new(connector.connect(name, tcp).await?)
            }
        };
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(FRAME_BYTES_MAX)
            .new_codec();
        let mut framed = Framed::new(stream, codec);
        if let Some(c) = &self.config.credentials {
            let id = *next_frame_id;
            *next_frame_id += 1;
            let frame = RequestFrame {
                id,
                body: Request::Auth {
                    user: c.user.clone(),
                    password: c.password.clone(),
                },
            };
            let bytes = postcard::to_allocvec(&frame).map_err(std::io::Error::other)?;
            framed.send(Bytes::from(bytes)).await?;
            let reply = framed.next().await.ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed during authentication",
                )
            })??;
            let reply: ResponseFrame = postcard::from_bytes(&reply)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            match reply.body {
                Response::Done if reply.id == id => {}
                Response::Error(e) => return Err(ConnectError::Refused(e)),
                other => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("unexpected answer to Auth: {other:?}"),
                    )
                    .into())
                }
            }
        }
        Ok(framed)
    }

    fn judge(&self, inner: &mut Inner, response: Response) -> Attempt {
        match response {
            Response::Error(NodeError::NotLeader {
                leader_addr: Some(addr),
                leader,
            }) => {
                let reason = format!("redirected to node {leader:?} at {addr}");
                // A node that names itself (stale view) must not loop us without a pause.
                let backoff = inner.target.as_deref() == Some(addr.as_str());
                inner.target = Some(addr);
                Attempt::Retry {
                    reason,
                    backoff,
                    refusal: None,
                }
            }
            Response::Error(e @ NodeError::NotLeader { .. }) => {
                self.rotate(inner);
                Attempt::Retry {
                    reason: e.to_string(),
                    backoff: true,
                    refusal: Some(e),
                }
            }
            Response::Error(e @ NodeError::Busy) => Attempt::Retry {
                reason: e.to_string(),
                backoff: true,
                refusal: Some(e),
            },
            Response::Error(e @ NodeError::Unavailable(_)) => {
                // That node may be the one cut off (or removed): another may know a leader.
                inner.conn = None;
                self.rotate(inner);
                Attempt::Retry {
                    reason: e.to_string(),
                    backoff: true,
                    refusal: Some(e),
                }
            }
            Response::Error(NodeError::ShuttingDown) => {
                inner.conn = None;
                self.rotate(inner);
                Attempt::Retry {
                    reason: "node shutting down".into(),
                    backoff: true,
                    refusal: None,
                }
            }
            other => Attempt::Done(other),
        }
    }
}

/// Why a connection could not be set up.
enum ConnectError {
    /// The node refused the credentials: final.
    Refused(NodeError),
    /// TCP, TLS or framing failed: another attempt (or node) may do better.
    Io(std::io::Error),
}

impl From<std::io::Error> for ConnectError {
    fn from(e: std::io::Error) -> Self {
        ConnectError::Io(e)
    }
}

fn unexpected(response: KvResponse) -> ClientError {
    ClientError::Protocol(format!("unexpected response {response:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_port_is_refused_naming_it() {
        for good in [
            "127.0.0.1:6381",
            "localhost:1",
            "[::1]:6380",
            "node-1.example:7000",
        ] {
            assert!(check_addr(good).is_ok(), "{good}");
        }
        for bad in [
            "127.0.0.1",
            "localhost",
            ":6380",
            "::1",
            "host:0",
            "host:99999",
            "",
        ] {
            let e = check_addr(bad).expect_err(bad).to_string();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn an_address_without_a_port_fails_at_once() {
        let client = Client::new(ClientConfig::new(["127.0.0.1"]));
        let started = std::time::Instant::now();
        let e = client.status().await.expect_err("no port");
        assert!(matches!(e, ClientError::Address(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(1), "not retried");
    }

    #[tokio::test]
    async fn an_http_server_is_named_as_the_wrong_port_kind() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // Answers every connection as an HTTP server answers bytes it cannot parse.
            for _ in 0..60 {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                });
            }
        });
        let client = Client::new(ClientConfig::new([addr.to_string()]));
        let e = client.status().await.expect_err("an HTTP server");
        server.abort();
        let text = e.to_string();
        assert!(matches!(e, ClientError::Address(_)), "{text}");
        assert!(
            text.contains("HTTP port") && text.contains("client port"),
            "{text}"
        );
    }
}
