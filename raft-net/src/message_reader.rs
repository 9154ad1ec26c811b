//! The message lane's receive buffer and decoder: frames are read into bounded chunks, and
//! command payloads are decoded as `Bytes` slices of the chunk they arrived in, not copied.
//!
//! Why: copying each payload out of the read buffer cost an allocation, a copy and (in the
//! host) a free per message, about a third of the CPU a small message costs end to end.
//! A slice costs one reference-count increment.
//!
//! The price of a slice is that it keeps its whole allocation alive, so the allocations are
//! bounded. **The retention bound**: a decoded payload of `n` bytes keeps at most
//! `max(READ_CHUNK_BYTES, PIN_RATIO_MAX * n)` bytes of read buffer alive:
//! * Frames of at most [`READ_CHUNK_BYTES`] are read, many per read, into chunks of exactly
//!   that size. Every payload in such a chunk is sliced. A new chunk is started when the
//!   current one has less than [`READ_SPARE_BYTES_MIN`] left or cannot hold the frame that
//!   has begun to arrive; a chunk nothing points into any more is reused instead.
//! * A larger frame is read into an allocation of its own, exactly its size (reads stop at
//!   its end, so no other frame shares it). Its payloads are sliced only if they are at
//!   least `1 / PIN_RATIO_MAX` of it, and copied otherwise.
//!
//! The test `retained_payload_pins_at_most_the_bound` (in `tests/reader_memory.rs`)
//! measures the bound with a counting allocator.
//!
//! ```
//! use bytes::BufMut;
//! use raft_core::{Message, MessageBody};
//! use raft_net::frame::encode_frame;
//! use raft_net::message_reader::MessageReader;
//!
//! let m = Message { from: 1, to: 2, term: 3, body: MessageBody::TimeoutNow };
//! let mut wire = bytes::BytesMut::new();
//! encode_frame(&m, &mut wire, 1024).unwrap();
//! let mut reader = MessageReader::new(1024, &[]);
//! reader.read_buf().unwrap().put_slice(&wire); // what a socket read does
//! let mut out = Vec::new();
//! assert!(reader.decode(&mut out, 100).unwrap()); // drained: every whole frame decoded
//! assert_eq!(out, vec![m]);
//! assert!(reader.finish().is_ok()); // nothing cut off
//! ```

use bytes::buf::Limit;
use bytes::{BufMut, Bytes, BytesMut};
use raft_core::Message;

use crate::frame::{FrameError, LENGTH_PREFIX_BYTES};
use crate::group::Envelope;
use crate::group_codec::{decode_envelope_in, is_single_group_message};
use crate::message_codec::decode_message_in;

/// Size of a read chunk: small frames are read into these, many per read. Also the most
/// read buffer a kept small payload can pin.
pub const READ_CHUNK_BYTES: usize = 128 * 1024;

/// A chunk with less room left than this is not read into again: reads stay large. With
/// 64 KiB chunks and 4 KiB here, reads were small enough that the reader caught up with
/// the socket and parked far more often (40,000-60,000 context switches per 4 million
/// 100-byte messages, against a few hundred), which cost most of what slicing saves.
pub const READ_SPARE_BYTES_MIN: usize = 32 * 1024;

/// A payload sliced out of a frame larger than a chunk is at least this fraction of it.
pub const PIN_RATIO_MAX: usize = 64;

/// Reads and decodes one message connection. See the module documentation.
pub struct MessageReader {
    /// The unconsumed bytes (at most a part of one frame between decodes) and the room
    /// after them, all in one allocation of `alloc_bytes`.
    buf: BytesMut,
    alloc_bytes: usize,
    frame_bytes_max: usize,
    /// Bytes of the complete frames decoded so far, length prefixes included.
    bytes: u64,
}

impl MessageReader {
    /// A reader refusing frames longer than `frame_bytes_max` (version byte + body), that
    /// starts with `pending`: whatever arrived behind the handshake.
    pub fn new(frame_bytes_max: usize, pending: &[u8]) -> Self {
        let mut r = MessageReader {
            buf: BytesMut::new(),
            alloc_bytes: 0,
            frame_bytes_max,
            bytes: 0,
        };
        r.start_allocation(READ_CHUNK_BYTES.max(pending.len()));
        r.buf.extend_from_slice(pending);
        r
    }

    /// Bytes of the complete frames decoded so far, length prefixes included.
    pub fn frame_bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes received but not yet decoded: the start of a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The length the frame at the front announces, once its header is here. Checked
    /// against the maximum before anything is allocated for it.
    fn front_frame_len(&self) -> Result<Option<usize>, FrameError> {
        let Some(header) = self.buf.first_chunk::<LENGTH_PREFIX_BYTES>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > self.frame_bytes_max {
            return Err(FrameError::TooLarge {
                len,
                max: self.frame_bytes_max,
            });
        }
        Ok(Some(len))
    }

    fn start_allocation(&mut self, bytes: usize) {
        let mut fresh = BytesMut::with_capacity(bytes);
        fresh.extend_from_slice(&self.buf);
        self.buf = fresh;
        self.alloc_bytes = bytes;
    }

    /// Where the next read goes: room for at least one byte, within the bounds above.
    /// `TooLarge` if the frame that has begun to arrive announces more than the maximum.
    pub fn read_buf(&mut self) -> Result<Limit<&mut BytesMut>, FrameError> {
        let len = self.buf.len();
        let whole = self
            .front_frame_len()?
            .map_or(LENGTH_PREFIX_BYTES, |n| LENGTH_PREFIX_BYTES + n);
        if whole > READ_CHUNK_BYTES {
            // An allocation of the frame's own, filled by this frame alone.
            if self.alloc_bytes != whole || self.buf.capacity() != whole {
                self.start_allocation(whole);
            }
            return Ok((&mut self.buf).limit(whole - len));
        }
        let spare = self.buf.capacity() - len;
        if spare < READ_SPARE_BYTES_MIN.max(whole - len) {
            // Nothing holds a slice of the chunk any more: read into it again from its start.
            let reused = self.alloc_bytes == READ_CHUNK_BYTES
                && self.buf.try_reclaim(READ_CHUNK_BYTES - len);
            if !reused {
                self.start_allocation(READ_CHUNK_BYTES);
            }
        }
        let room = self.buf.capacity() - len;
        Ok((&mut self.buf).limit(room))
    }

    /// Decode the whole frames at the front, appending them to `out` until it holds
    /// `out_max` messages. Returns whether every whole frame was decoded (false: `out` is
    /// full and more may wait). On a bad frame, the messages before it are in `out` and the
    /// error is returned.
    pub fn decode(&mut self, out: &mut Vec<Message>, out_max: usize) -> Result<bool, FrameError> {
        self.decode_with(out, out_max, |owner, body, slice_bytes_min| {
            // A single-group transport: another group's frame, or a coalesced one, is not
            // a message to it (the decoder would take the 0 that marks it for a node ID).
            if !is_single_group_message(body) {
                return Err(FrameError::NotSingleGroup);
            }
            decode_message_in(owner, body, slice_bytes_min)
        })
    }

    /// [`decode`](Self::decode) for a multi-group transport: every frame, of any group or
    /// coalesced, as an [`Envelope`]. `out_max` counts frames.
    pub fn decode_envelopes(
        &mut self,
        out: &mut Vec<Envelope>,
        out_max: usize,
    ) -> Result<bool, FrameError> {
        self.decode_with(out, out_max, decode_envelope_in)
    }

    fn decode_with<T>(
        &mut self,
        out: &mut Vec<T>,
        out_max: usize,
        decode_one: impl Fn(&Bytes, &[u8], usize) -> Result<T, FrameError>,
    ) -> Result<bool, FrameError> {
        // First find the whole frames, then split them off together: one reference to the
        // chunk per batch, and one per sliced payload.
        let mut end = 0;
        let mut frames = 0;
        let drained = loop {
            if out.len() + frames >= out_max {
                break false;
            }
            let Some(header) = self.buf.get(end..end + LENGTH_PREFIX_BYTES) else {
                break true;
            };
            let len = u32::from_be_bytes(header.try_into().expect("4 bytes")) as usize;
            if len > self.frame_bytes_max {
                if frames == 0 {
                    return Err(FrameError::TooLarge {
                        len,
                        max: self.frame_bytes_max,
                    });
                }
                // Deliver the good frames before it; the next call reports it.
                break false;
            }
            if self.buf.len() - end - LENGTH_PREFIX_BYTES < len {
                break true;
            }
            end += LENGTH_PREFIX_BYTES + len;
            frames += 1;
        };
        if frames == 0 {
            return Ok(drained);
        }
        let chunk = self.buf.split_to(end).freeze();
        let slice_bytes_min = if self.alloc_bytes <= READ_CHUNK_BYTES {
            0
        } else {
            self.alloc_bytes.div_ceil(PIN_RATIO_MAX)
        };
        out.reserve(frames);
        let mut pos = 0;
        while pos < end {
            let len = u32::from_be_bytes(
                chunk[pos..pos + LENGTH_PREFIX_BYTES]
                    .try_into()
                    .expect("4 bytes"),
            ) as usize;
            let body = &chunk[pos + LENGTH_PREFIX_BYTES..pos + LENGTH_PREFIX_BYTES + len];
            match decode_one(&chunk, body, slice_bytes_min) {
                Ok(m) => out.push(m),
                Err(e) => {
                    self.bytes += pos as u64;
                    return Err(e);
                }
            }
            pos += LENGTH_PREFIX_BYTES + len;
        }
        self.bytes += end as u64;
        Ok(drained)
    }

    /// At end of stream, after [`decode`](Self::decode) drained: `Truncated` if part of a
    /// frame was left.
    pub fn finish(&self) -> Result<(), FrameError> {
        self.front_frame_len()?;
        match self.buf.len() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_frame;
    use raft_core::{Entry, EntryPayload, MessageBody};

    fn append(payload: usize) -> Message {
        Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::AppendEntries {
                prev_log_index: 7,
                prev_log_term: 3,
                entries: vec![Entry {
                    index: 8,
                    term: 3,
                    payload: EntryPayload::Command(Bytes::from(vec![5; payload])),
                }],
                leader_commit: 7,
            },
        }
    }

    /// Feed `wire` in reads of at most `step` bytes, as a socket would.
    fn feed(r: &mut MessageReader, wire: &[u8], step: usize) -> Vec<Message> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let mut dst = r.read_buf().unwrap();
            let n = step.min(dst.remaining_mut()).min(wire.len() - at);
            dst.put_slice(&wire[at..at + n]);
            at += n;
            while !r.decode(&mut out, usize::MAX).unwrap() {}
        }
        r.finish().unwrap();
        out
    }

    #[test]
    fn frames_of_every_size_survive_any_read_pattern() {
        let msgs: Vec<_> = [0, 100, 5000, READ_CHUNK_BYTES, 3 * READ_CHUNK_BYTES, 10]
            .into_iter()
            .map(append)
            .collect();
        let mut wire = BytesMut::new();
        for m in &msgs {
            encode_frame(m, &mut wire, 1 << 20).unwrap();
        }
        for step in [1, 7, 4096, READ_CHUNK_BYTES, usize::MAX] {
            let mut r = MessageReader::new(1 << 20, &[]);
            assert_eq!(feed(&mut r, &wire, step), msgs, "step {step}");
            assert_eq!(r.frame_bytes(), wire.len() as u64);
        }
    }

    #[test]
    fn batches_stop_at_the_limit_and_resume() {
        let mut wire = BytesMut::new();
        for _ in 0..10 {
            encode_frame(&append(10), &mut wire, 1024).unwrap();
        }
        let mut r = MessageReader::new(1024, &wire);
        let mut out = Vec::new();
        assert!(!r.decode(&mut out, 4).unwrap());
        assert_eq!(out.len(), 4);
        out.clear();
        assert!(!r.decode(&mut out, 4).unwrap());
        out.clear();
        assert!(r.decode(&mut out, 4).unwrap());
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn an_oversized_header_is_refused_before_any_allocation_for_it() {
        let mut r = MessageReader::new(100, &[0, 0, 0, 101]);
        assert!(matches!(
            r.decode(&mut Vec::new(), 10),
            Err(FrameError::TooLarge { len: 101, max: 100 })
        ));
        assert!(matches!(r.read_buf(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn good_frames_before_a_bad_one_are_kept() {
        let mut wire = BytesMut::new();
        encode_frame(&append(10), &mut wire, 1024).unwrap();
        wire.extend_from_slice(&[0, 0, 0, 2, 99, 0]); // a frame of an unknown version
        let mut r = MessageReader::new(1024, &wire);
        let mut out = Vec::new();
        assert!(matches!(
            r.decode(&mut out, 10),
            Err(FrameError::BadVersion(99))
        ));
        assert_eq!(out, vec![append(10)]);
    }

    #[test]
    fn a_cut_off_frame_is_truncated_at_eof() {
        let mut wire = BytesMut::new();
        encode_frame(&append(10), &mut wire, 1024).unwrap();
        let mut r = MessageReader::new(1024, &wire[..wire.len() - 1]);
        assert!(r.decode(&mut Vec::new(), 10).unwrap());
        assert!(matches!(
            r.finish(),
            Err(FrameError::Truncated { buffered }) if buffered == wire.len() - 1
        ));
    }
}
