//! A connection's two halves, plain TCP or TLS. The plain halves are tokio's owned TCP
//! halves, so the message lane keeps its non-blocking direct writes; the TLS halves are
//! `tokio::io::split` of the TLS stream and always written by a task.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

pub(crate) type TlsConn = TlsStream<TcpStream>;

/// The read half of a connection.
pub(crate) enum Reader {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<TlsConn>),
}

/// The write half of a connection, written by one owner.
pub(crate) enum Writer {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<TlsConn>),
}

/// Split a connection (plain, or after its TLS handshake).
pub(crate) fn split_plain(stream: TcpStream) -> (Reader, Writer) {
    let (rd, wr) = stream.into_split();
    (Reader::Plain(rd), Writer::Plain(wr))
}

pub(crate) fn split_tls(stream: TlsConn) -> (Reader, Writer) {
    let (rd, wr) = tokio::io::split(stream);
    (Reader::Tls(rd), Writer::Tls(wr))
}

impl AsyncRead for Reader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Reader::Plain(r) => Pin::new(r).poll_read(cx, buf),
            Reader::Tls(r) => match Pin::new(r).poll_read(cx, buf) {
                // A peer that closes without TLS's close_notify ends the stream like a TCP
                // close: the framing above still tells a cut-off frame from a clean end.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Ok(()))
                }
                other => other,
            },
        }
    }
}

impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Writer::Plain(w) => Pin::new(w).poll_write(cx, buf),
            Writer::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Writer::Plain(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Writer::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Writer::Plain(w) => w.is_write_vectored(),
            Writer::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Plain(w) => Pin::new(w).poll_flush(cx),
            Writer::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Plain(w) => Pin::new(w).poll_shutdown(cx),
            Writer::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// A message connection's write half, shared by `send` (direct writes, plain only) and the
/// writer task.
pub(crate) enum LinkWriter {
    Plain(OwnedWriteHalf),
    /// Only the writer task writes: the lock is never contended, it only makes the half
    /// usable through the shared link.
    Tls(tokio::sync::Mutex<WriteHalf<TlsConn>>),
}

impl From<Writer> for LinkWriter {
    fn from(w: Writer) -> Self {
        match w {
            Writer::Plain(w) => LinkWriter::Plain(w),
            Writer::Tls(w) => LinkWriter::Tls(tokio::sync::Mutex::new(w)),
        }
    }
}

impl LinkWriter {
    /// The socket, for non-blocking direct writes; `None` over TLS, whose records are
    /// written by the writer task alone.
    pub(crate) fn direct(&self) -> Option<&OwnedWriteHalf> {
        match self {
            LinkWriter::Plain(w) => Some(w),
            LinkWriter::Tls(_) => None,
        }
    }
}

/// Accepted connections that have not finished their handshake, in total and per source
/// address: a source that opens many and stays silent is refused more, and does not keep
/// the real peers from handshaking.
pub(crate) struct Handshakes {
    pending: Mutex<(usize, HashMap<IpAddr, usize>)>,
    total_max: usize,
    per_source_max: usize,
}

impl Handshakes {
    pub(crate) fn new(total_max: usize, per_source_max: usize) -> Arc<Self> {
        Arc::new(Handshakes {
            pending: Mutex::new((0, HashMap::new())),
            total_max,
            per_source_max,
        })
    }

    /// A slot for one handshake from `ip`, or why there is none.
    pub(crate) fn begin(self: &Arc<Self>, ip: IpAddr) -> Result<PendingHandshake, &'static str> {
        let ip = ip.to_canonical();
        let mut pending = self.pending.lock().unwrap();
        if pending.0 >= self.total_max {
            return Err("too many handshakes in progress (handshakes_pending_max)");
        }
        let from_ip = pending.1.entry(ip).or_insert(0);
        if *from_ip >= self.per_source_max {
            return Err("too many handshakes in progress from this address (handshakes_pending_per_source_max)");
        }
        *from_ip += 1;
        pending.0 += 1;
        Ok(PendingHandshake {
            owner: self.clone(),
            ip,
        })
    }
}

/// A handshake in progress; its slot is freed on drop.
pub(crate) struct PendingHandshake {
    owner: Arc<Handshakes>,
    ip: IpAddr,
}

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        let mut pending = self.owner.pending.lock().unwrap();
        pending.0 -= 1;
        if let Some(n) = pending.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                pending.1.remove(&self.ip);
            }
        }
    }
}
