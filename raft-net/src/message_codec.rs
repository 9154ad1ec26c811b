//! A hand-written decoder for the postcard encoding of [`raft_core::Message`], byte for
//! byte the format serde's derive produces (the tests check both ways against postcard),
//! that slices large command payloads out of the received frame instead of copying them.
//!
//! Why: through serde, every `Bytes` payload is copied out of the read buffer into a fresh
//! allocation; for 16 KiB entries that copy is as costly as the kernel's own. Small
//! payloads are still copied, so that a 100-byte command kept in a log cache does not pin
//! a whole read buffer in memory.

use bytes::Bytes;
use raft_core::{
    ConflictHint, Entry, EntryPayload, Membership, Message, MessageBody, SnapshotMeta,
};
use serde::de::DeserializeOwned;

use crate::frame::{FrameError, FORMAT_VERSION};

/// Command payloads at least this long are sliced out of the frame rather than copied.
pub const ZERO_COPY_BYTES_MIN: usize = 2048;

/// Smallest encoding of one entry (index, term, payload tag): bounds a hostile entry count.
const ENTRY_BYTES_MIN: usize = 3;

struct Cursor {
    frame: Bytes,
    pos: usize,
}

impl Cursor {
    fn rest(&self) -> &[u8] {
        &self.frame[self.pos..]
    }

    fn byte(&mut self) -> Result<u8, FrameError> {
        let b = *self.frame.get(self.pos).ok_or(FrameError::Decode(
            postcard::Error::DeserializeUnexpectedEnd,
        ))?;
        self.pos += 1;
        Ok(b)
    }

    /// LEB128 as postcard writes it: at most 10 bytes, no bits beyond 64.
    fn varint(&mut self) -> Result<u64, FrameError> {
        let mut out = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            if i == 9 && b > 1 {
                return Err(FrameError::Decode(postcard::Error::DeserializeBadVarint));
            }
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(FrameError::Decode(postcard::Error::DeserializeBadVarint))
    }

    fn varint_u32(&mut self) -> Result<u32, FrameError> {
        u32::try_from(self.varint()?)
            .map_err(|_| FrameError::Decode(postcard::Error::DeserializeBadVarint))
    }

    fn bool(&mut self) -> Result<bool, FrameError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(FrameError::Decode(postcard::Error::DeserializeBadBool)),
        }
    }

    fn option_tag(&mut self) -> Result<bool, FrameError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(FrameError::Decode(postcard::Error::DeserializeBadOption)),
        }
    }

    fn opt_u64(&mut self) -> Result<Option<u64>, FrameError> {
        Ok(if self.option_tag()? {
            Some(self.varint()?)
        } else {
            None
        })
    }

    fn bytes(&mut self) -> Result<Bytes, FrameError> {
        let len = self.varint()?;
        if len > self.rest().len() as u64 {
            return Err(FrameError::Decode(
                postcard::Error::DeserializeUnexpectedEnd,
            ));
        }
        let (start, end) = (self.pos, self.pos + len as usize);
        self.pos = end;
        Ok(if end - start >= ZERO_COPY_BYTES_MIN {
            self.frame.slice(start..end)
        } else {
            Bytes::copy_from_slice(&self.frame[start..end])
        })
    }

    /// The rarely sent, set-shaped parts go through postcard itself.
    fn postcard<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        let before = self.rest().len();
        let (value, rest) =
            postcard::take_from_bytes::<T>(self.rest()).map_err(FrameError::Decode)?;
        self.pos += before - rest.len();
        Ok(value)
    }

    fn entry(&mut self) -> Result<Entry, FrameError> {
        let index = self.varint()?;
        let term = self.varint()?;
        let payload = match self.varint_u32()? {
            0 => EntryPayload::Noop,
            1 => EntryPayload::Command(self.bytes()?),
            2 => EntryPayload::Membership(self.postcard::<Membership>()?),
            _ => return Err(FrameError::Decode(postcard::Error::DeserializeBadEnum)),
        };
        Ok(Entry {
            index,
            term,
            payload,
        })
    }

    fn body(&mut self) -> Result<MessageBody, FrameError> {
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
                    return Err(FrameError::Decode(
                        postcard::Error::DeserializeUnexpectedEnd,
                    ));
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
            _ => return Err(FrameError::Decode(postcard::Error::DeserializeBadEnum)),
        })
    }
}

/// Decode one de-framed body (version byte + postcard `Message`), slicing large command
/// payloads out of `frame`. Accepts exactly what `postcard::from_bytes` accepts.
pub fn decode_message(frame: Bytes) -> Result<Message, FrameError> {
    let (&version, _) = frame.split_first().ok_or(FrameError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(FrameError::BadVersion(version));
    }
    let mut c = Cursor { frame, pos: 1 };
    let msg = Message {
        from: c.varint()?,
        to: c.varint()?,
        term: c.varint()?,
        body: c.body()?,
    };
    if !c.rest().is_empty() {
        return Err(FrameError::TrailingBytes(c.rest().len()));
    }
    Ok(msg)
}
