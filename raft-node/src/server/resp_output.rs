//! A RESP connection's output: replies encoded into one buffer and written once many are
//! gathered (large bulk payloads written from the stored bytes, not copied), each write
//! held to `write_timeout_ms` and the whole to `output_buffer_bytes_max`. Apart from the
//! read loop and the dispatch because both normal and subscribe mode write through it.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{Closed, Conn, READ_CHUNK_BYTES};
use crate::limits::ClientLimits;
use crate::metrics::DisconnectReason;
use crate::resp::{Protocol, Value};

/// A RESP bulk reply at least this large is written from the stored value's bytes rather
/// than copied into the connection's output buffer.
const REPLY_COPY_BYTES_MAX: usize = 16 << 10;
/// Bytes of small RESP replies gathered before they are written: one write for many.
const REPLY_GATHER_BYTES: usize = 64 << 10;

/// A RESP connection's pending output: small replies gathered in one buffer, large bulk
/// payloads kept as the stored bytes, written in order.
pub(super) struct RespOutput {
    /// The protocol replies are encoded in.
    pub(super) proto: Protocol,
    small: Vec<u8>,
    pieces: Vec<Bytes>,
    queued_bytes: usize,
    bytes_max: usize,
    write_timeout: Duration,
}

impl RespOutput {
    pub(super) fn new(limits: &ClientLimits) -> RespOutput {
        RespOutput {
            proto: Protocol::Resp2,
            small: Vec::with_capacity(READ_CHUNK_BYTES),
            pieces: Vec::new(),
            queued_bytes: 0,
            bytes_max: limits.output_buffer_bytes_max,
            write_timeout: Conn::ms(limits.write_timeout_ms),
        }
    }

    fn encode(&mut self, v: &Value) {
        match v {
            Value::Bulk(Some(b)) if b.len() >= REPLY_COPY_BYTES_MAX => {
                self.small.extend(format!("${}\r\n", b.len()).as_bytes());
                self.pieces
                    .push(Bytes::from(std::mem::take(&mut self.small)));
                self.pieces.push(b.clone());
                self.small.extend_from_slice(b"\r\n");
                self.queued_bytes += b.len();
            }
            Value::Array(items) | Value::Set(items) | Value::Push(items) => {
                v.write_header(self.proto, &mut self.small);
                for item in items {
                    self.encode(item);
                }
            }
            Value::Map(pairs) => {
                v.write_header(self.proto, &mut self.small);
                for (k, item) in pairs {
                    self.encode(k);
                    self.encode(item);
                }
            }
            other => other.encode(self.proto, &mut self.small),
        }
    }

    /// Queues a reply; writes what is queued once it is large. Past `output_buffer_bytes_max`
    /// the connection is closed.
    pub(super) async fn push<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        v: &Value,
    ) -> Result<(), Closed> {
        self.encode(v);
        if self.queued_bytes + self.small.len() > self.bytes_max {
            return Err(Some(DisconnectReason::OutputBuffer));
        }
        if !self.pieces.is_empty() || self.small.len() >= REPLY_GATHER_BYTES {
            self.flush(stream).await?;
        }
        Ok(())
    }

    /// Writes the large pieces, then the small bytes gathered after the last of them (kept
    /// in the same buffer, whose capacity is reused).
    pub(super) async fn flush<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<(), Closed> {
        for piece in std::mem::take(&mut self.pieces) {
            if !piece.is_empty() {
                write_timed(stream, &piece, self.write_timeout).await?;
            }
        }
        if !self.small.is_empty() {
            write_timed(stream, &self.small, self.write_timeout).await?;
            self.small.clear();
        }
        self.queued_bytes = 0;
        Ok(())
    }
}

/// Writes `bytes` whole within `timeout`.
async fn write_timed<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), Closed> {
    match tokio::time::timeout(timeout, stream.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => Err(Some(DisconnectReason::WriteTimeout)),
    }
}
