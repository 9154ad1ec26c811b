//! The message lane's frames for many groups ([`Envelope`]s), beside the single-group
//! message frame that [`crate::message_codec`] reads and writes.
//!
//! A frame's body is `[version u8]` and then either
//! * a postcard `Message` (a message of group 0: the single-group frame, unchanged), whose
//!   first byte, the sender's node ID, is never 0 (no node has ID 0); or
//! * [`EXTENDED_MARK`] (0), a kind, and the kind's fields, every integer a postcard
//!   varint (LEB128):
//!   - [`KIND_GROUP_MESSAGE`]: `group`, then the postcard `Message`, its large command
//!     payloads written and read without copies as in `message_codec`;
//!   - [`KIND_HEARTBEATS`]: `count` (1..=[`HEARTBEATS_PER_FRAME_MAX`]), then `count`
//!     times `group, term, commit, read_seq`;
//!   - [`KIND_HEARTBEAT_RESPONSES`]: `count`, then `count` times `group, term, read_seq`.
//!
//! An unknown kind, a count of 0 or over the maximum (refused before anything is
//! allocated for it), a truncated entry or trailing bytes are errors, and the transport
//! closes the connection that carried them.
//!
//! ```
//! use raft_core::{Message, MessageBody};
//! use raft_net::group::{Envelope, GroupHeartbeat};
//! use raft_net::group_codec::{decode_envelope, encode_envelope};
//! use raft_net::message_codec::SegmentedBuf;
//!
//! let beats = Envelope::Heartbeats(
//!     (1..=1000).map(|g| GroupHeartbeat { group: g, term: 5, commit: 90, read_seq: 7 }).collect(),
//! );
//! let mut out = SegmentedBuf::with_capacity(64 * 1024);
//! let n = encode_envelope(&beats, &mut out, 1 << 20).unwrap();
//! assert!(n < 1000 * 7); // about 6 bytes a group
//! let wire = out.finish().concat();
//! assert_eq!(decode_envelope(bytes::Bytes::from(wire).slice(4..)).unwrap(), beats);
//! ```

use bytes::{BufMut, Bytes};

use crate::frame::{FrameError, FORMAT_VERSION, LENGTH_PREFIX_BYTES};
use crate::group::{
    Envelope, GroupHeartbeat, GroupHeartbeatResponse, GroupId, HEARTBEATS_PER_FRAME_MAX,
    SINGLE_GROUP,
};
use crate::message_codec::{
    encode_message, encode_message_after, message_len, open_cursor, put_varint, varint_len, Cursor,
    DecodeError, SegmentedBuf, ZERO_COPY_BYTES_MIN,
};

/// The byte after the version that marks a frame other than a group-0 message.
pub const EXTENDED_MARK: u8 = 0;
/// Kind of a frame carrying one message of a group.
pub const KIND_GROUP_MESSAGE: u8 = 0;
/// Kind of a frame carrying coalesced heartbeats.
pub const KIND_HEARTBEATS: u8 = 1;
/// Kind of a frame carrying coalesced heartbeat responses.
pub const KIND_HEARTBEAT_RESPONSES: u8 = 2;

/// Most bytes one coalesced heartbeat takes (four varints of at most 10 bytes).
pub const HEARTBEAT_BYTES_MAX: usize = 40;
/// Fewest bytes one coalesced heartbeat response takes (three one-byte varints): bounds
/// a hostile count against the bytes that could carry it.
const HEARTBEAT_RESPONSE_BYTES_MIN: usize = 3;
/// Fewest bytes one coalesced heartbeat takes.
const HEARTBEAT_BYTES_MIN: usize = 4;
/// Bytes of a frame besides its entries: length, version, mark, kind, count.
const HEARTBEATS_HEADER_BYTES_MAX: usize = LENGTH_PREFIX_BYTES + 3 + 10;

/// Whether a de-framed body (version byte + rest) is a group-0 message frame, the only
/// kind a single-group transport accepts. A body of another version counts as one, so
/// that its decoder reports the version.
pub fn is_single_group_message(body: &[u8]) -> bool {
    body.first() != Some(&FORMAT_VERSION) || body.get(1) != Some(&EXTENDED_MARK)
}

/// Most heartbeats one frame of at most `frame_bytes_max` bytes carries, whatever their
/// values: [`HEARTBEATS_PER_FRAME_MAX`] or fewer.
pub fn heartbeats_per_frame(frame_bytes_max: usize) -> usize {
    (frame_bytes_max.saturating_sub(HEARTBEATS_HEADER_BYTES_MAX) / HEARTBEAT_BYTES_MAX)
        .clamp(1, HEARTBEATS_PER_FRAME_MAX)
}

/// Bytes of the frame [`encode_envelope`] writes for `env`, length prefix included.
pub fn envelope_len(env: &Envelope) -> usize {
    LENGTH_PREFIX_BYTES
        + 1
        + match env {
            Envelope::Message { group, message } if *group == SINGLE_GROUP => message_len(message),
            Envelope::Message { group, message } => 2 + varint_len(*group) + message_len(message),
            Envelope::Heartbeats(h) => {
                2 + varint_len(h.len() as u64)
                    + h.iter()
                        .map(|b| {
                            varint_len(b.group)
                                + varint_len(b.term)
                                + varint_len(b.commit)
                                + varint_len(b.read_seq)
                        })
                        .sum::<usize>()
            }
            Envelope::HeartbeatResponses(h) => {
                2 + varint_len(h.len() as u64)
                    + h.iter()
                        .map(|b| varint_len(b.group) + varint_len(b.term) + varint_len(b.read_seq))
                        .sum::<usize>()
            }
        }
}

/// Append one frame carrying `env` to `out`. A group-0 message is the single-group frame
/// of [`encode_message`]. Returns the frame's bytes; `TooLarge` (leaving `out` unchanged)
/// if it would exceed `frame_bytes_max`, `TooManyHeartbeats` for a coalesced envelope that
/// is empty or holds more than [`HEARTBEATS_PER_FRAME_MAX`].
pub fn encode_envelope(
    env: &Envelope,
    out: &mut SegmentedBuf,
    frame_bytes_max: usize,
) -> Result<usize, FrameError> {
    match env {
        Envelope::Message { group, message } if *group == SINGLE_GROUP => {
            encode_message(message, out, frame_bytes_max)
        }
        Envelope::Message { group, message } => {
            let mut tag = [0u8; 12];
            tag[0] = EXTENDED_MARK;
            tag[1] = KIND_GROUP_MESSAGE;
            let mut n = 2;
            let mut v = *group;
            while v >= 0x80 {
                tag[n] = (v as u8) | 0x80;
                v >>= 7;
                n += 1;
            }
            tag[n] = v as u8;
            encode_message_after(message, &tag[..=n], out, frame_bytes_max)
        }
        Envelope::Heartbeats(h) => {
            encode_entries(out, frame_bytes_max, KIND_HEARTBEATS, h, |buf, b| {
                put_varint(buf, b.group);
                put_varint(buf, b.term);
                put_varint(buf, b.commit);
                put_varint(buf, b.read_seq);
            })
        }
        Envelope::HeartbeatResponses(h) => encode_entries(
            out,
            frame_bytes_max,
            KIND_HEARTBEAT_RESPONSES,
            h,
            |buf, b| {
                put_varint(buf, b.group);
                put_varint(buf, b.term);
                put_varint(buf, b.read_seq);
            },
        ),
    }
}

fn encode_entries<T>(
    out: &mut SegmentedBuf,
    frame_bytes_max: usize,
    kind: u8,
    entries: &[T],
    put: impl Fn(&mut bytes::BytesMut, &T),
) -> Result<usize, FrameError> {
    if entries.is_empty() || entries.len() > HEARTBEATS_PER_FRAME_MAX {
        return Err(FrameError::TooManyHeartbeats {
            count: entries.len(),
            max: HEARTBEATS_PER_FRAME_MAX,
        });
    }
    // Written first, the length patched in after: one pass over the entries.
    let buf = &mut out.buf;
    let start = buf.len();
    buf.reserve(HEARTBEATS_HEADER_BYTES_MAX + entries.len() * 8);
    buf.put_u32(0);
    buf.put_u8(FORMAT_VERSION);
    buf.put_u8(EXTENDED_MARK);
    buf.put_u8(kind);
    put_varint(buf, entries.len() as u64);
    for e in entries {
        put(buf, e);
    }
    let len = buf.len() - start - LENGTH_PREFIX_BYTES;
    if len > frame_bytes_max || len > u32::MAX as usize {
        buf.truncate(start);
        return Err(FrameError::TooLarge {
            len,
            max: frame_bytes_max,
        });
    }
    buf[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(len + LENGTH_PREFIX_BYTES)
}

/// Decode one de-framed body (version byte + rest), slicing command payloads of at least
/// [`ZERO_COPY_BYTES_MIN`] bytes out of `frame`.
pub fn decode_envelope(frame: Bytes) -> Result<Envelope, FrameError> {
    decode_from(&frame, Some(&frame), ZERO_COPY_BYTES_MIN)
}

/// Decode one de-framed body that lies inside `owner`, slicing every command payload of at
/// least `slice_bytes_min` bytes out of `owner` (as
/// [`crate::message_codec::decode_message_in`] does).
///
/// # Panics
/// If `frame` is not a part of `owner`.
pub fn decode_envelope_in(
    owner: &Bytes,
    frame: &[u8],
    slice_bytes_min: usize,
) -> Result<Envelope, FrameError> {
    decode_from(frame, Some(owner), slice_bytes_min)
}

fn decode_from(
    frame: &[u8],
    owner: Option<&Bytes>,
    slice_bytes_min: usize,
) -> Result<Envelope, FrameError> {
    let mut c = open_cursor(frame, owner, slice_bytes_min)?;
    let env = if is_single_group_message(frame) {
        Envelope::Message {
            group: SINGLE_GROUP,
            message: c.message().map_err(FrameError::Decode)?,
        }
    } else {
        c.varint().map_err(FrameError::Decode)?; // the mark
        extended(&mut c)?
    };
    c.finish()?;
    Ok(env)
}

fn extended(c: &mut Cursor<'_>) -> Result<Envelope, FrameError> {
    let kind = c.varint().map_err(FrameError::Decode)?;
    let decode = |e: DecodeError| FrameError::Decode(e);
    Ok(match kind {
        k if k == u64::from(KIND_GROUP_MESSAGE) => {
            let group: GroupId = c.varint().map_err(decode)?;
            Envelope::Message {
                group,
                message: c.message().map_err(decode)?,
            }
        }
        k if k == u64::from(KIND_HEARTBEATS) => {
            let count = entry_count(c, HEARTBEAT_BYTES_MIN)?;
            let mut beats = Vec::with_capacity(count);
            for _ in 0..count {
                beats.push(GroupHeartbeat {
                    group: c.varint().map_err(decode)?,
                    term: c.varint().map_err(decode)?,
                    commit: c.varint().map_err(decode)?,
                    read_seq: c.varint().map_err(decode)?,
                });
            }
            Envelope::Heartbeats(beats)
        }
        k if k == u64::from(KIND_HEARTBEAT_RESPONSES) => {
            let count = entry_count(c, HEARTBEAT_RESPONSE_BYTES_MIN)?;
            let mut answers = Vec::with_capacity(count);
            for _ in 0..count {
                answers.push(GroupHeartbeatResponse {
                    group: c.varint().map_err(decode)?,
                    term: c.varint().map_err(decode)?,
                    read_seq: c.varint().map_err(decode)?,
                });
            }
            Envelope::HeartbeatResponses(answers)
        }
        other => return Err(FrameError::UnknownKind(other)),
    })
}

/// A coalesced frame's entry count, checked before anything is allocated for it: within
/// 1..=[`HEARTBEATS_PER_FRAME_MAX`], and no more than the rest of the frame could hold.
fn entry_count(c: &mut Cursor<'_>, entry_bytes_min: usize) -> Result<usize, FrameError> {
    let count = c.varint().map_err(FrameError::Decode)?;
    if count == 0 || count > HEARTBEATS_PER_FRAME_MAX as u64 {
        return Err(FrameError::TooManyHeartbeats {
            count: usize::try_from(count).unwrap_or(usize::MAX),
            max: HEARTBEATS_PER_FRAME_MAX,
        });
    }
    if count > (c.rest().len() / entry_bytes_min) as u64 {
        return Err(FrameError::Decode(
            postcard::Error::DeserializeUnexpectedEnd,
        ));
    }
    Ok(count as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::{Message, MessageBody};

    fn frame_of(env: &Envelope) -> Vec<u8> {
        let mut out = SegmentedBuf::with_capacity(1024);
        let n = encode_envelope(env, &mut out, 1 << 20).unwrap();
        let wire = out.finish().concat();
        assert_eq!(wire.len(), n);
        assert_eq!(n, envelope_len(env));
        wire
    }

    #[test]
    fn group_zero_messages_are_the_single_group_frame() {
        let m = Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::TimeoutNow,
        };
        let env = Envelope::Message {
            group: SINGLE_GROUP,
            message: m.clone(),
        };
        let mut plain = bytes::BytesMut::new();
        crate::frame::encode_frame(&m, &mut plain, 1024).unwrap();
        assert_eq!(frame_of(&env), plain.to_vec());
        assert!(is_single_group_message(&plain[4..]));
    }

    #[test]
    fn hostile_counts_are_refused_before_allocating() {
        // A heartbeat frame claiming the maximum + 1 entries, and one claiming more than
        // its bytes could hold.
        let mut body = vec![FORMAT_VERSION, EXTENDED_MARK, KIND_HEARTBEATS];
        let mut tmp = bytes::BytesMut::new();
        put_varint(&mut tmp, HEARTBEATS_PER_FRAME_MAX as u64 + 1);
        body.extend_from_slice(&tmp);
        assert!(matches!(
            decode_envelope(Bytes::from(body)),
            Err(FrameError::TooManyHeartbeats { .. })
        ));
        let body = vec![
            FORMAT_VERSION,
            EXTENDED_MARK,
            KIND_HEARTBEATS,
            100,
            1,
            1,
            1,
            1,
        ];
        assert!(matches!(
            decode_envelope(Bytes::from(body)),
            Err(FrameError::Decode(_))
        ));
        let body = vec![FORMAT_VERSION, EXTENDED_MARK, 9];
        assert!(matches!(
            decode_envelope(Bytes::from(body)),
            Err(FrameError::UnknownKind(9))
        ));
    }

    #[test]
    fn an_empty_or_overfull_coalesced_envelope_is_not_encoded() {
        let mut out = SegmentedBuf::with_capacity(64);
        assert!(encode_envelope(&Envelope::Heartbeats(vec![]), &mut out, 1024).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn the_per_frame_count_fits_any_values() {
        let frame_bytes_max = 4096;
        let n = heartbeats_per_frame(frame_bytes_max);
        let worst = GroupHeartbeat {
            group: u64::MAX,
            term: u64::MAX,
            commit: u64::MAX,
            read_seq: u64::MAX,
        };
        let env = Envelope::Heartbeats(vec![worst; n]);
        let mut out = SegmentedBuf::with_capacity(64);
        assert!(encode_envelope(&env, &mut out, frame_bytes_max).is_ok());
    }
}
