//! Timeouts hyper's HTTP/1 server does not enforce on its own, applied at the byte stream:
//! a new connection that sends nothing, a connection idle between requests, a request head
//! that trickles in, and a write the client does not take.
//!
//! hyper's own `header_read_timeout` starts when the connection becomes idle, so it cannot
//! tell a quiet keep-alive connection (allowed `idle_timeout_ms`) from a request head sent a
//! byte at a time (allowed `read_timeout_ms` from its first byte). The service marks
//! where each request starts and ends in [`ConnState`]; this wrapper reads those marks.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;

/// Where a connection is between requests, shared by its service and its [`TimedIo`].
#[derive(Debug, Default)]
pub(super) struct ConnState {
    /// A request's head has been parsed and its response is not fully handed to hyper.
    in_request: AtomicBool,
    /// Responses finished; a change tells the reader a new idle period began.
    responses_done: AtomicU64,
    /// The connection's task, if a read is pending with no deadline (during a request): the
    /// request's end must wake it so that the idle deadline gets armed.
    reader: AtomicWaker,
}

impl ConnState {
    /// Marks a request as started; dropping the guard marks it finished.
    pub(super) fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_request.store(true, Ordering::Release);
        RequestGuard(self.clone())
    }
}

/// Held by a response body until hyper has taken all of it (or dropped it).
#[derive(Debug)]
pub(super) struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.responses_done.fetch_add(1, Ordering::Relaxed);
        self.0.in_request.store(false, Ordering::Release);
        self.0.reader.wake();
    }
}

/// The timeouts [`TimedIo`] enforces.
#[derive(Clone, Copy, Debug)]
pub(super) struct IoTimeouts {
    /// A new connection sends its first byte within this.
    pub first_byte: Duration,
    /// No request and no bytes either way for this long: the connection is closed.
    pub idle: Duration,
    /// From a request head's first byte to its end.
    pub header_read: Duration,
    /// A write that makes no progress for this long fails the connection.
    pub write: Duration,
}

/// A byte stream with the timeouts of [`IoTimeouts`]; a timeout is an `io::ErrorKind::TimedOut`
/// error, on which hyper closes the connection.
pub(super) struct TimedIo<S> {
    inner: S,
    conn: Arc<ConnState>,
    timeouts: IoTimeouts,
    metrics: Arc<Metrics>,
    responses_seen: u64,
    idle_since: Instant,
    head_started: Option<Instant>,
    write_blocked_since: Option<Instant>,
    read_sleep: Option<Pin<Box<Sleep>>>,
    write_sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> TimedIo<S> {
    pub(super) fn new(
        inner: S,
        conn: Arc<ConnState>,
        timeouts: IoTimeouts,
        metrics: Arc<Metrics>,
    ) -> Self {
        TimedIo {
            inner,
            conn,
            timeouts,
            metrics,
            responses_seen: 0,
            idle_since: Instant::now(),
            head_started: None,
            write_blocked_since: None,
            read_sleep: None,
            write_sleep: None,
        }
    }

    /// When a pending read must give up, or `None` while a request is being served (its
    /// body reads have their own deadline in the handler).
    fn read_deadline(&mut self) -> Option<Instant> {
        if self.conn.in_request.load(Ordering::Acquire) {
            return None;
        }
        let done = self.conn.responses_done.load(Ordering::Relaxed);
        if done != self.responses_seen {
            self.responses_seen = done;
            self.idle_since = Instant::now();
            self.head_started = None;
        }
        Some(match self.head_started {
            Some(t) => t + self.timeouts.header_read,
            None if done == 0 => self.idle_since + self.timeouts.first_byte,
            None => self.idle_since + self.timeouts.idle,
        })
    }

    fn on_read_progress(&mut self) {
        if self.read_deadline().is_some() && self.head_started.is_none() {
            self.head_started = Some(Instant::now());
        }
    }

    fn on_write_progress(&mut self) {
        self.write_blocked_since = None;
        if self.head_started.is_none() {
            // A long response still going out is not idleness.
            self.idle_since = Instant::now();
        }
    }

    fn timed_out(&self, what: &str) -> io::Error {
        self.metrics.http_timeouts.fetch_add(1, Ordering::Relaxed);
        io::Error::new(io::ErrorKind::TimedOut, format!("HTTP {what} timed out"))
    }
}

/// Polls a sleep armed for `deadline`, creating or moving it as needed.
fn expired(sleep: &mut Option<Pin<Box<Sleep>>>, deadline: Instant, cx: &mut Context<'_>) -> bool {
    let sleep = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if sleep.deadline() != deadline {
        sleep.as_mut().reset(deadline);
    }
    sleep.as_mut().poll(cx).is_ready()
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.on_read_progress();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = this.read_deadline() else {
                    this.conn.reader.register(cx.waker());
                    // The request may have ended between the check and the registration.
                    if this.conn.in_request.load(Ordering::Acquire) {
                        return Poll::Pending;
                    }
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                };
                if !expired(&mut this.read_sleep, deadline, cx) {
                    return Poll::Pending;
                }
                let what = if this.head_started.is_some() {
                    "request head read"
                } else {
                    "idle connection"
                };
                Poll::Ready(Err(this.timed_out(what)))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> TimedIo<S> {
    fn after_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                if r.is_ok() {
                    self.on_write_progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let since = *self.write_blocked_since.get_or_insert_with(Instant::now);
                if expired(&mut self.write_sleep, since + self.timeouts.write, cx) {
                    Poll::Ready(Err(self.timed_out("response write")))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.after_write(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.after_write(cx, r)
    }
}
