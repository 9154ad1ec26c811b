//! Framing: `[u32 big-endian length][format version: u8][postcard body]`.
//!
//! The length counts the version byte and the body. It is checked against the configured
//! maximum before a single byte of the frame is buffered beyond the header, so a hostile
//! length costs nothing. The decoder is generic over any `DeserializeOwned` type; the
//! transport uses it for handshakes and snapshot frames (the message lane reads with
//! [`crate::message_reader`], which decodes `raft_core::Message`s without copying payloads).

use std::io;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::{Decoder, LengthDelimitedCodec, LengthDelimitedCodecError};

/// The wire format version carried in every frame. A frame of another version is refused.
///
/// 2: messages of groups other than 0 and coalesced heartbeats ([`crate::group_codec`]);
/// a group-0 message frame is unchanged from 1.
pub const FORMAT_VERSION: u8 = 2;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Spare room the decoder keeps in the read buffer, so one read can carry many frames.
pub const READ_BYTES_MIN: usize = 64 * 1024;

/// Default [`crate::TransportConfig::frame_bytes_max`]: 16 MiB.
pub const DEFAULT_FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Why a frame could not be read or written. Every variant but `Io` is the peer's fault
/// (or ours, for `TooLarge` on encode); the transport closes that one connection and logs it.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// A frame longer than `frame_bytes_max`, refused before it is read.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// `frame_bytes_max`.
        max: usize,
    },
    /// The connection closed in the middle of a frame.
    #[error("connection closed inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the unfinished frame received.
        buffered: usize,
    },
    /// A frame of length 0.
    #[error("empty frame (no format version byte)")]
    Empty,
    /// A version byte other than [`FORMAT_VERSION`].
    #[error("unsupported format version {0} (expected {FORMAT_VERSION})")]
    BadVersion(u8),
    /// The body is not a valid postcard value of the expected type.
    #[error("undecodable frame body: {0}")]
    Decode(postcard::Error),
    /// The body decoded with this many bytes left over.
    #[error("frame body has {0} trailing bytes")]
    TrailingBytes(usize),
    /// Our own value did not encode.
    #[error("unencodable value: {0}")]
    Encode(postcard::Error),
    /// A multi-group frame of a kind this version does not know
    /// (see [`crate::group_codec`]).
    #[error("unknown kind {0} of multi-group frame")]
    UnknownKind(u64),
    /// A coalesced heartbeat frame with no entries or more than the maximum.
    #[error("coalesced frame of {count} entries (1..={max} allowed)")]
    TooManyHeartbeats {
        /// Entries it announced (or held, on encode).
        count: usize,
        /// [`crate::group::HEARTBEATS_PER_FRAME_MAX`].
        max: usize,
    },
    /// A frame of a group other than 0, or a coalesced one, on a single-group transport.
    #[error("a multi-group frame on a single-group transport")]
    NotSingleGroup,
}

/// Decodes frames of `T`. Wraps tokio-util's [`LengthDelimitedCodec`], whose
/// `max_frame_length` is checked as soon as the 4-byte header has arrived.
///
/// ```
/// use bytes::BytesMut;
/// use raft_net::frame::{encode_frame, FrameDecoder};
/// use tokio_util::codec::Decoder;
///
/// let mut buf = BytesMut::new();
/// encode_frame(&(7u64, "hello".to_string()), &mut buf, 1024).unwrap();
/// let mut dec = FrameDecoder::<(u64, String)>::new(1024);
/// assert_eq!(dec.decode(&mut buf).unwrap(), Some((7, "hello".to_string())));
/// ```
pub struct FrameDecoder<T> {
    inner: LengthDelimitedCodec,
    max: usize,
    bytes: u64,
    /// The inner codec consumed a header whose body has not fully arrived.
    mid_frame: bool,
    /// Turns a de-framed body into a `T`: postcard through serde, or a specialised decoder
    /// such as [`crate::message_codec::decode_message`] (see [`Self::with_body_decoder`]).
    body: fn(Bytes) -> Result<T, FrameError>,
    /// Decodes a body shorter than the given length in place, from the read buffer: no
    /// split, no reference count per frame. Longer frames go through `body`.
    body_in_place: Option<(BodyInPlace<T>, usize)>,
    _t: PhantomData<fn() -> T>,
}

type BodyInPlace<T> = fn(&[u8]) -> Result<T, FrameError>;

impl<T: DeserializeOwned> FrameDecoder<T> {
    /// A decoder refusing frames longer than `frame_bytes_max` (version byte + body).
    pub fn new(frame_bytes_max: usize) -> Self {
        let mut d = Self::with_body_decoder(frame_bytes_max, |b| decode_body(&b));
        d.body_in_place = Some((decode_body::<T>, usize::MAX));
        d
    }

    /// Reuse the buffered state for frames of another type (handshake, then messages).
    pub fn retype<U: DeserializeOwned>(self, frame_bytes_max: usize) -> FrameDecoder<U> {
        let mut d = self.retype_with(frame_bytes_max, |b| decode_body(&b));
        d.body_in_place = Some((decode_body::<U>, usize::MAX));
        d
    }
}

impl<T> FrameDecoder<T> {
    /// A decoder whose frame bodies are decoded by `body`.
    pub fn with_body_decoder(
        frame_bytes_max: usize,
        body: fn(Bytes) -> Result<T, FrameError>,
    ) -> Self {
        FrameDecoder {
            inner: LengthDelimitedCodec::builder()
                .length_field_length(LENGTH_PREFIX_BYTES)
                .big_endian()
                .max_frame_length(frame_bytes_max)
                .new_codec(),
            max: frame_bytes_max,
            bytes: 0,
            mid_frame: false,
            body,
            body_in_place: None,
            _t: PhantomData,
        }
    }

    /// Bytes of the complete frames decoded so far, length prefixes included.
    pub fn frame_bytes(&self) -> u64 {
        self.bytes
    }

    /// Reuse the buffered state for frames of another type, decoded by `body`.
    pub fn retype_with<U>(
        self,
        frame_bytes_max: usize,
        body: fn(Bytes) -> Result<U, FrameError>,
    ) -> FrameDecoder<U> {
        let mut inner = self.inner;
        inner.set_max_frame_length(frame_bytes_max);
        FrameDecoder {
            inner,
            max: frame_bytes_max,
            bytes: self.bytes,
            mid_frame: self.mid_frame,
            body,
            body_in_place: None,
            _t: PhantomData,
        }
    }
}

/// Decode one frame body (version byte + postcard) that has already been de-framed.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (&version, rest) = body.split_first().ok_or(FrameError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(FrameError::BadVersion(version));
    }
    let (value, trailing) = postcard::take_from_bytes::<T>(rest).map_err(FrameError::Decode)?;
    if !trailing.is_empty() {
        return Err(FrameError::TrailingBytes(trailing.len()));
    }
    Ok(value)
}

impl<T> Decoder for FrameDecoder<T> {
    type Item = T;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<T>, FrameError> {
        // The fast path: a whole small frame at the front of the buffer (the inner codec
        // holds no header of its own), decoded where it lies. Anything else, including
        // every error about the length, is the inner codec's.
        if let (false, Some((in_place, below))) = (self.mid_frame, self.body_in_place) {
            if let Some(header) = src.first_chunk::<LENGTH_PREFIX_BYTES>() {
                let len = u32::from_be_bytes(*header) as usize;
                let whole = LENGTH_PREFIX_BYTES + len;
                if len <= self.max && len < below && src.len() >= whole {
                    let value = in_place(&src[LENGTH_PREFIX_BYTES..whole]);
                    src.advance(whole);
                    self.bytes += whole as u64;
                    return value.map(Some);
                }
            }
        }
        let before = src.len();
        match self.inner.decode(src) {
            Ok(Some(frame)) => {
                self.mid_frame = false;
                self.bytes += (frame.len() + LENGTH_PREFIX_BYTES) as u64;
                (self.body)(frame.freeze()).map(Some)
            }
            Ok(None) => {
                self.mid_frame |= src.len() < before;
                // Let the next read pull in many frames at once: fewer recv syscalls and
                // window-update ACKs. A fixed amount, never one derived from a peer's header.
                if src.capacity() - src.len() < READ_BYTES_MIN {
                    src.reserve(READ_BYTES_MIN);
                }
                Ok(None)
            }
            // The inner codec fails only on an oversized length, checked before it
            // consumes the header or reserves room for the body: the header is still at
            // the front of `src`, so read it back for the error message.
            Err(e)
                if e.get_ref()
                    .is_some_and(|r| r.is::<LengthDelimitedCodecError>()) =>
            {
                let len = if src.len() >= LENGTH_PREFIX_BYTES {
                    (&src[..LENGTH_PREFIX_BYTES]).get_u32() as usize
                } else {
                    0
                };
                Err(FrameError::TooLarge { len, max: self.max })
            }
            Err(e) => Err(FrameError::Io(e)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<T>, FrameError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() && !self.mid_frame => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

/// Postcard output straight into the write buffer: no intermediate `Vec` per message.
struct BufFlavor<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for BufFlavor<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_u8(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Append one frame of `value` to `dst`. On error `dst` is left as it was, so a batch
/// already encoded in it stays intact.
///
/// ```
/// let mut buf = bytes::BytesMut::new();
/// raft_net::frame::encode_frame(&42u32, &mut buf, 1024).unwrap();
/// assert_eq!(&buf[..], &[0, 0, 0, 2, raft_net::frame::FORMAT_VERSION, 42]);
/// ```
pub fn encode_frame<T: Serialize + ?Sized>(
    value: &T,
    dst: &mut BytesMut,
    frame_bytes_max: usize,
) -> Result<usize, FrameError> {
    let start = dst.len();
    dst.put_u32(0);
    dst.put_u8(FORMAT_VERSION);
    if let Err(e) = postcard::serialize_with_flavor(value, BufFlavor(dst)) {
        dst.truncate(start);
        return Err(FrameError::Encode(e));
    }
    let len = dst.len() - start - LENGTH_PREFIX_BYTES;
    if len > frame_bytes_max || len > u32::MAX as usize {
        dst.truncate(start);
        return Err(FrameError::TooLarge {
            len,
            max: frame_bytes_max,
        });
    }
    dst[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(len + LENGTH_PREFIX_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_header_is_refused_before_the_body_arrives() {
        let mut dec = FrameDecoder::<u32>::new(100);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(FrameError::TooLarge {
                len: 0xffff_ffff,
                max: 100
            })
        ));
    }

    #[test]
    fn truncated_frame_at_eof_is_an_error() {
        let mut dec = FrameDecoder::<u32>::new(100);
        let mut buf = BytesMut::from(&[0, 0, 0, 10, 1, 2][..]);
        assert!(matches!(dec.decode(&mut buf), Ok(None)));
        assert!(matches!(
            dec.decode_eof(&mut buf),
            Err(FrameError::Truncated { .. })
        ));
    }

    #[test]
    fn bad_version_and_trailing_bytes_are_errors() {
        let mut dec = FrameDecoder::<u8>::new(100);
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 9, 1][..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(FrameError::BadVersion(9))
        ));
        let mut dec = FrameDecoder::<u8>::new(100);
        let mut buf = BytesMut::from(&[0, 0, 0, 3, FORMAT_VERSION, 1, 1][..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(FrameError::TrailingBytes(1))
        ));
    }

    #[test]
    fn encode_refuses_oversized_values_and_keeps_the_buffer() {
        let mut buf = BytesMut::new();
        encode_frame(&1u8, &mut buf, 10).unwrap();
        let before = buf.clone();
        assert!(matches!(
            encode_frame(&vec![0u8; 100], &mut buf, 10),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(buf, before);
    }
}
