//! A hand-written encoder and decoder for the postcard encoding of [`raft_core::Message`], byte for
//! byte the format serde's derive produces (the tests check both ways against postcard),
//! that slices large command payloads out of the received frame instead of copying them.
//!
//! Why: through serde, every `Bytes` payload is copied into the write buffer and again out
//! of the read buffer into a fresh allocation; for 16 KiB entries each copy is as costly as
//! the kernel's own. The encoder queues large payloads as their own segments of one
//! vectored write, the decoder slices them out of the received frame.
//! [`decode_message`] slices only payloads of [`ZERO_COPY_BYTES_MIN`] or more, so that a
//! 100-byte command kept in a log does not pin a whole frame; the transport's reader
//! decodes with [`decode_message_in`] instead, whose allocations it bounds itself
//! (see [`crate::message_reader`]).

use bytes::{BufMut, Bytes, BytesMut};
use raft_core::{
    ConflictHint, Entry, EntryPayload, Membership, Message, MessageBody, SnapshotMeta,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::frame::{FrameError, FORMAT_VERSION, LENGTH_PREFIX_BYTES};

/// Command payloads at least this long are written from where they lie (their own segment
/// of the vectored write) and sliced out of the frame by [`decode_message`].
pub const ZERO_COPY_BYTES_MIN: usize = 2048;

/// Smallest encoding of one entry (index, term, payload tag): bounds a hostile entry count.
const ENTRY_BYTES_MIN: usize = 3;

pub(crate) struct Cursor<'a> {
    frame: &'a [u8],
    /// The `Bytes` that `frame` lies in, to slice payloads out of; without it every payload
    /// is copied.
    owner: Option<&'a Bytes>,
    /// Where `frame` starts in `owner`.
    base: usize,
    /// Payloads shorter than this are copied even with an owner.
    slice_bytes_min: usize,
    pos: usize,
}

/// Postcard's error: one byte, cheap to return from every field read.
pub(crate) type DecodeError = postcard::Error;

impl Cursor<'_> {
    pub(crate) fn rest(&self) -> &[u8] {
        &self.frame[self.pos..]
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .frame
            .get(self.pos)
            .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
        self.pos += 1;
        Ok(b)
    }

    /// LEB128 as postcard writes it: at most 10 bytes, no bits beyond 64.
    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        // Most fields (small IDs, terms, counts, lengths) take one byte.
        if let Some(&b) = self.frame.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        self.varint_multi_byte()
    }

    fn varint_multi_byte(&mut self) -> Result<u64, DecodeError> {
        let mut out = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            if i == 9 && b > 1 {
                return Err(postcard::Error::DeserializeBadVarint);
            }
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(postcard::Error::DeserializeBadVarint)
    }

    fn varint_u32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.varint()?).map_err(|_| postcard::Error::DeserializeBadVarint)
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(postcard::Error::DeserializeBadBool),
        }
    }

    fn option_tag(&mut self) -> Result<bool, DecodeError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(postcard::Error::DeserializeBadOption),
        }
    }

    fn opt_u64(&mut self) -> Result<Option<u64>, DecodeError> {
        Ok(if self.option_tag()? {
            Some(self.varint()?)
        } else {
            None
        })
    }

    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.varint()?;
        if len > self.rest().len() as u64 {
            return Err(postcard::Error::DeserializeUnexpectedEnd);
        }
        let (start, end) = (self.pos, self.pos + len as usize);
        self.pos = end;
        Ok(match self.owner {
            Some(owner) if end - start >= self.slice_bytes_min => {
                owner.slice(self.base + start..self.base + end)
            }
            _ => Bytes::copy_from_slice(&self.frame[start..end]),
        })
    }

    /// The rarely sent, set-shaped parts go through postcard itself.
    fn postcard<T: DeserializeOwned>(&mut self) -> Result<T, DecodeError> {
        let before = self.rest().len();
        let (value, rest) = postcard::take_from_bytes::<T>(self.rest())?;
        self.pos += before - rest.len();
        Ok(value)
    }

    fn entry(&mut self) -> Result<Entry, DecodeError> {
        let index = self.varint()?;
        let term = self.varint()?;
        let payload = match self.varint_u32()? {
            0 => EntryPayload::Noop,
            1 => EntryPayload::Command(self.bytes()?),
            2 => EntryPayload::Membership(self.postcard::<Membership>()?),
            _ => return Err(postcard::Error::DeserializeBadEnum),
        };
        Ok(Entry {
            index,
            term,
            payload,
        })
    }

    pub(crate) fn message(&mut self) -> Result<Message, DecodeError> {
        Ok(Message {
            from: self.varint()?,
            to: self.varint()?,
            term: self.varint()?,
            body: self.body()?,
        })
    }

    fn body(&mut self) -> Result<MessageBody, DecodeError> {
        Ok(match self.varint_u32()? {
            0 => MessageBody::RequestVote {
                pre_vote: self.bool()?,
                last_log_index: self.varint()?,
                last_log_term: self.varint()?,
                leadership_transfer: self.bool()?,
            },
            1 => MessageBody::RequestVoteResponse {
                pre_vote: self.bool()?,
                granted: self.bool()?,
            },
            2 => {
                let prev_log_index = self.varint()?;
                let prev_log_term = self.varint()?;
                let count = self.varint()?;
                if count > (self.rest().len() / ENTRY_BYTES_MIN) as u64 {
                    // Cannot fit: refuse before reserving room for a hostile count.
                    return Err(postcard::Error::DeserializeUnexpectedEnd);
                }
                let mut entries = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    entries.push(self.entry()?);
                }
                MessageBody::AppendEntries {
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit: self.varint()?,
                }
            }
            3 => MessageBody::AppendEntriesResponse {
                index: self.varint()?,
                reject: if self.option_tag()? {
                    Some(ConflictHint {
                        term: self.opt_u64()?,
                        index: self.varint()?,
                    })
                } else {
                    None
                },
            },
            4 => MessageBody::Heartbeat {
                commit: self.varint()?,
                read_seq: self.varint()?,
            },
            5 => MessageBody::HeartbeatResponse {
                read_seq: self.varint()?,
            },
            6 => MessageBody::InstallSnapshot {
                meta: self.postcard::<SnapshotMeta>()?,
            },
            7 => MessageBody::ReadIndex {
                ctx: self.varint()?,
            },
            8 => MessageBody::ReadIndexResponse {
                ctx: self.varint()?,
                index: self.opt_u64()?,
            },
            9 => MessageBody::TimeoutNow,
            _ => return Err(postcard::Error::DeserializeBadEnum),
        })
    }
}

/// Decode one de-framed body (version byte + postcard `Message`), slicing large command
/// payloads out of `frame`. Accepts exactly what `postcard::from_bytes` accepts.
pub fn decode_message(frame: Bytes) -> Result<Message, FrameError> {
    decode_from(&frame, Some(&frame), ZERO_COPY_BYTES_MIN)
}

/// Decode one de-framed body (version byte + postcard `Message`) that lies inside `owner`,
/// slicing every command payload of at least `slice_bytes_min` bytes out of `owner`
/// rather than copying it (each slice keeps all of `owner`'s allocation alive).
///
/// # Panics
/// If `frame` is not a part of `owner`.
pub fn decode_message_in(
    owner: &Bytes,
    frame: &[u8],
    slice_bytes_min: usize,
) -> Result<Message, FrameError> {
    decode_from(frame, Some(owner), slice_bytes_min)
}

/// [`decode_message`] from a borrowed body, copying every payload: for frames too short
/// to hold a payload worth slicing, which then need not be split off the read buffer.
pub fn decode_message_slice(frame: &[u8]) -> Result<Message, FrameError> {
    decode_from(frame, None, usize::MAX)
}

fn decode_from(
    frame: &[u8],
    owner: Option<&Bytes>,
    slice_bytes_min: usize,
) -> Result<Message, FrameError> {
    let mut c = open_cursor(frame, owner, slice_bytes_min)?;
    let msg = c.message().map_err(FrameError::Decode)?;
    c.finish()?;
    Ok(msg)
}

impl Cursor<'_> {
    /// The whole body was read: `TrailingBytes` otherwise.
    pub(crate) fn finish(&self) -> Result<(), FrameError> {
        match self.rest().len() {
            0 => Ok(()),
            n => Err(FrameError::TrailingBytes(n)),
        }
    }
}

/// A cursor after the version byte of `frame` (checked), slicing payloads of at least
/// `slice_bytes_min` bytes out of `owner` if given.
pub(crate) fn open_cursor<'a>(
    frame: &'a [u8],
    owner: Option<&'a Bytes>,
    slice_bytes_min: usize,
) -> Result<Cursor<'a>, FrameError> {
    let (&version, _) = frame.split_first().ok_or(FrameError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(FrameError::BadVersion(version));
    }
    let base = owner.map_or(0, |o| {
        let base = (frame.as_ptr() as usize).wrapping_sub(o.as_ptr() as usize);
        assert!(
            base <= o.len() && frame.len() <= o.len() - base,
            "the frame lies outside its owner"
        );
        base
    });
    Ok(Cursor {
        frame,
        owner,
        base,
        slice_bytes_min,
        pos: 1,
    })
}

// ---------------------------------------------------------------------------------------
// Encoding

pub(crate) fn varint_len(v: u64) -> usize {
    // 7 bits per byte; 0 still takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

pub(crate) fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn opt_len(v: Option<u64>) -> usize {
    1 + v.map_or(0, varint_len)
}

fn put_opt(buf: &mut BytesMut, v: Option<u64>) {
    match v {
        None => buf.put_u8(0),
        Some(v) => {
            buf.put_u8(1);
            put_varint(buf, v);
        }
    }
}

fn postcard_len<T: Serialize>(v: &T) -> usize {
    postcard::serialize_with_flavor(v, postcard::ser_flavors::Size::default()).unwrap_or(0)
}

fn put_postcard<T: Serialize>(buf: &mut BytesMut, v: &T) {
    let mut w = buf.writer();
    // Writing into memory cannot fail; the length was accounted for by `postcard_len`.
    let _ = postcard::to_io(v, &mut w);
}

fn entry_len(e: &Entry) -> usize {
    varint_len(e.index)
        + varint_len(e.term)
        + match &e.payload {
            EntryPayload::Noop => 1,
            EntryPayload::Command(b) => 1 + varint_len(b.len() as u64) + b.len(),
            EntryPayload::Membership(m) => 1 + postcard_len(m),
        }
}

/// Bytes of the postcard encoding of `msg` (without version byte or length prefix).
pub fn message_len(msg: &Message) -> usize {
    varint_len(msg.from)
        + varint_len(msg.to)
        + varint_len(msg.term)
        + 1 // every variant index is below 128
        + match &msg.body {
            MessageBody::RequestVote {
                last_log_index,
                last_log_term,
                ..
            } => 2 + varint_len(*last_log_index) + varint_len(*last_log_term),
            MessageBody::RequestVoteResponse { .. } => 2,
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                varint_len(*prev_log_index)
                    + varint_len(*prev_log_term)
                    + varint_len(entries.len() as u64)
                    + entries.iter().map(entry_len).sum::<usize>()
                    + varint_len(*leader_commit)
            }
            MessageBody::AppendEntriesResponse { index, reject } => {
                varint_len(*index)
                    + 1
                    + reject.map_or(0, |h| opt_len(h.term) + varint_len(h.index))
            }
            MessageBody::Heartbeat { commit, read_seq } => {
                varint_len(*commit) + varint_len(*read_seq)
            }
            MessageBody::HeartbeatResponse { read_seq } => varint_len(*read_seq),
            MessageBody::InstallSnapshot { meta } => postcard_len(meta),
            MessageBody::ReadIndex { ctx } => varint_len(*ctx),
            MessageBody::ReadIndexResponse { ctx, index } => varint_len(*ctx) + opt_len(*index),
            MessageBody::TimeoutNow => 0,
        }
}

/// Where an encoded batch goes: small parts are copied into `buf`; large command payloads
/// are not copied but queued as their own segments, for one vectored write.
pub struct SegmentedBuf {
    /// The copied bytes not yet cut into a segment.
    pub buf: BytesMut,
    /// The batch so far, in write order: copied runs and large payloads.
    pub segments: Vec<Bytes>,
    queued: usize,
}

impl SegmentedBuf {
    /// An empty batch whose copy buffer starts with `capacity` bytes.
    ///
    /// ```
    /// use raft_core::{Message, MessageBody};
    /// use raft_net::message_codec::{encode_message, SegmentedBuf};
    ///
    /// let mut out = SegmentedBuf::with_capacity(1024);
    /// let m = Message { from: 1, to: 2, term: 1, body: MessageBody::TimeoutNow };
    /// let n = encode_message(&m, &mut out, 1 << 20).unwrap();
    /// assert_eq!(out.len(), n);
    /// assert_eq!(out.finish().len(), 1); // small messages stay in one segment
    /// ```
    pub fn with_capacity(capacity: usize) -> Self {
        SegmentedBuf {
            buf: BytesMut::with_capacity(capacity),
            segments: Vec::new(),
            queued: 0,
        }
    }

    /// Bytes encoded so far.
    pub fn len(&self) -> usize {
        self.queued + self.buf.len()
    }

    /// Whether nothing has been encoded since the last `clear`.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_payload(&mut self, payload: &Bytes) {
        if !self.buf.is_empty() {
            self.queued += self.buf.len();
            self.segments.push(self.buf.split().freeze());
        }
        self.queued += payload.len();
        self.segments.push(payload.clone());
    }

    /// Everything encoded, in order, ready for a vectored write.
    pub fn finish(&mut self) -> &[Bytes] {
        if !self.buf.is_empty() {
            self.queued += self.buf.len();
            self.segments.push(self.buf.split().freeze());
        }
        &self.segments
    }

    /// Forget what was written, keeping the buffer's memory for the next batch.
    pub fn clear(&mut self) {
        self.segments.clear();
        self.buf.clear();
        self.queued = 0;
    }
}

/// Append one frame carrying `msg` (length prefix, version, postcard body) to `out`,
/// byte for byte what [`crate::frame::encode_frame`] produces, without copying large
/// command payloads. Returns the frame's bytes, or `TooLarge` (leaving `out` unchanged).
pub fn encode_message(
    msg: &Message,
    out: &mut SegmentedBuf,
    frame_bytes_max: usize,
) -> Result<usize, FrameError> {
    encode_message_after(msg, &[], out, frame_bytes_max)
}

/// [`encode_message`] with `tag` between the version byte and the message: the header of
/// a group's message (see [`crate::group_codec`]).
pub(crate) fn encode_message_after(
    msg: &Message,
    tag: &[u8],
    out: &mut SegmentedBuf,
    frame_bytes_max: usize,
) -> Result<usize, FrameError> {
    let zero_copy = match &msg.body {
        MessageBody::AppendEntries { entries, .. } => entries.iter().any(
            |e| matches!(&e.payload, EntryPayload::Command(b) if b.len() >= ZERO_COPY_BYTES_MIN),
        ),
        _ => false,
    };
    if zero_copy {
        // The length goes out before the payloads it counts, which leave in segments of
        // their own: it must be known first.
        let len = 1 + tag.len() + message_len(msg);
        if len > frame_bytes_max || len > u32::MAX as usize {
            return Err(FrameError::TooLarge {
                len,
                max: frame_bytes_max,
            });
        }
        out.buf.reserve(64);
        out.buf.put_u32(len as u32);
        put_body(msg, tag, out);
        return Ok(len + LENGTH_PREFIX_BYTES);
    }
    // Everything lands in `buf`: write first, then patch the length in, one pass fewer
    // over the message.
    let start = out.buf.len();
    out.buf.reserve(64);
    out.buf.put_u32(0);
    put_body(msg, tag, out);
    let len = out.buf.len() - start - LENGTH_PREFIX_BYTES;
    if len > frame_bytes_max || len > u32::MAX as usize {
        out.buf.truncate(start);
        return Err(FrameError::TooLarge {
            len,
            max: frame_bytes_max,
        });
    }
    out.buf[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(len + LENGTH_PREFIX_BYTES)
}

/// The version byte, `tag` and the postcard body of `msg`.
fn put_body(msg: &Message, tag: &[u8], out: &mut SegmentedBuf) {
    let buf = &mut out.buf;
    buf.put_u8(FORMAT_VERSION);
    buf.extend_from_slice(tag);
    put_varint(buf, msg.from);
    put_varint(buf, msg.to);
    put_varint(buf, msg.term);
    match &msg.body {
        MessageBody::RequestVote {
            pre_vote,
            last_log_index,
            last_log_term,
            leadership_transfer,
        } => {
            buf.put_u8(0);
            buf.put_u8(*pre_vote as u8);
            put_varint(buf, *last_log_index);
            put_varint(buf, *last_log_term);
            buf.put_u8(*leadership_transfer as u8);
        }
        MessageBody::RequestVoteResponse { pre_vote, granted } => {
            buf.put_u8(1);
            buf.put_u8(*pre_vote as u8);
            buf.put_u8(*granted as u8);
        }
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => {
            buf.put_u8(2);
            put_varint(buf, *prev_log_index);
            put_varint(buf, *prev_log_term);
            put_varint(buf, entries.len() as u64);
            for e in entries {
                let buf = &mut out.buf;
                put_varint(buf, e.index);
                put_varint(buf, e.term);
                match &e.payload {
                    EntryPayload::Noop => buf.put_u8(0),
                    EntryPayload::Command(b) => {
                        buf.put_u8(1);
                        put_varint(buf, b.len() as u64);
                        if b.len() >= ZERO_COPY_BYTES_MIN {
                            out.push_payload(b);
                        } else {
                            buf.extend_from_slice(b);
                        }
                    }
                    EntryPayload::Membership(m) => {
                        buf.put_u8(2);
                        put_postcard(buf, m);
                    }
                }
            }
            put_varint(&mut out.buf, *leader_commit);
        }
        MessageBody::AppendEntriesResponse { index, reject } => {
            buf.put_u8(3);
            put_varint(buf, *index);
            match reject {
                None => buf.put_u8(0),
                Some(h) => {
                    buf.put_u8(1);
                    put_opt(buf, h.term);
                    put_varint(buf, h.index);
                }
            }
        }
        MessageBody::Heartbeat { commit, read_seq } => {
            buf.put_u8(4);
            put_varint(buf, *commit);
            put_varint(buf, *read_seq);
        }
        MessageBody::HeartbeatResponse { read_seq } => {
            buf.put_u8(5);
            put_varint(buf, *read_seq);
        }
        MessageBody::InstallSnapshot { meta } => {
            buf.put_u8(6);
            put_postcard(buf, meta);
        }
        MessageBody::ReadIndex { ctx } => {
            buf.put_u8(7);
            put_varint(buf, *ctx);
        }
        MessageBody::ReadIndexResponse { ctx, index } => {
            buf.put_u8(8);
            put_varint(buf, *ctx);
            put_opt(buf, *index);
        }
        MessageBody::TimeoutNow => buf.put_u8(9),
    }
}
