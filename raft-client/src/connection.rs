//! How a request reaches the leader: the retry loop (follow `NotLeader` redirects, rotate
//! through the addresses, back off after `Busy` or a network error, all within
//! `request_timeout_ms` and `attempts_max`), and opening a connection (TCP, TLS, `Auth`).
//! Apart from the client's API because it is the one part with state and timing.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use raft_proto::{RequestFrame, ResponseFrame, FRAME_BYTES_MAX};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::{
    tls, ByteStream, Client, ClientError, Connection, Inner, NodeError, Request, Response,
};

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
    pub(crate) async fn call(&self, request: Request) -> Result<Response, ClientError> {
        let mut inner = self.inner.lock().await;
        self.call_locked(&mut inner, request).await
    }

    pub(crate) async fn call_locked(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientConfig;

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
