//! The on-disk snapshot format, version 1.
//!
//! ```text
//! header (little-endian, `header_bytes` long):
//!   0  magic            8   b"RAFTSNAP"
//!   8  format_version   u32 1
//!  12  header_bytes     u32 length of the whole header, CRC included
//!  16  index            u64 last included index
//!  24  term             u64 term of `index`
//!  32  state_digest     16  StateMachine::digest() of the state at `index`
//!  48  body_digest      16  XXH3-128 of the body bytes (chunk payloads concatenated)
//!  64  body_bytes       u64
//!  72  chunk_bytes      u32 payload bytes of every chunk but the last
//!  76  voters, voters_outgoing, learners counts: 3 x u32
//!  88  node IDs of the three sets in that order, ascending: u64 each
//!  ..  header_crc       u32 CRC32 of every header byte before it
//! body: ceil(body_bytes / chunk_bytes) chunks, each
//!   payload_bytes u32 | payload_crc u32 (CRC32 of the payload) | payload
//! ```
//!
//! Every chunk's length is implied by `body_bytes` and `chunk_bytes`, so the stored length
//! is only a cross-check; the file's total length is implied too, so truncation and
//! trailing garbage are both detected. The header is written last (into space reserved
//! at the start), because the digests and length are known only once the body is out.

use std::collections::BTreeSet;
use std::path::Path;

use raft_core::{Membership, NodeId, SnapshotMeta};

use crate::digest::StateDigest;
use crate::error::{CorruptKind, SnapshotError};

/// The first bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RAFTSNAP";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bound on each of the three membership sets, so a corrupt count cannot ask for gigabytes.
pub const MEMBERSHIP_NODES_PER_SET_MAX: usize = 4096;
/// Bound on a body chunk's payload: the reader holds one chunk in memory at a time.
pub const CHUNK_BYTES_MAX: u32 = 16 << 20;
/// Hard bound on a body, whatever the store's configuration says (1 TiB).
pub const BODY_BYTES_MAX: u64 = 1 << 40;
pub(crate) const HEADER_FIXED_BYTES: usize = 88;
pub(crate) const HEADER_PREFIX_BYTES: usize = 16;
pub(crate) const HEADER_BYTES_MAX: usize =
    HEADER_FIXED_BYTES + 3 * MEMBERSHIP_NODES_PER_SET_MAX * 8 + 4;
pub(crate) const CHUNK_FRAME_BYTES: u64 = 8;

/// A snapshot file's header, as decoded and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Last included index and term, and the membership in force there.
    pub meta: SnapshotMeta,
    /// The state machine's digest of the state at `meta.index`; checked after restore.
    pub state_digest: StateDigest,
    /// XXH3-128 of the body bytes; checked by the reader at the end of the body.
    pub body_digest: StateDigest,
    /// Length of the body (chunk payloads only).
    pub body_bytes: u64,
    /// Payload bytes of every chunk but the last.
    pub chunk_bytes: u32,
}

impl SnapshotHeader {
    /// The header's encoded length: it depends on the membership's size only.
    pub fn encoded_bytes(&self) -> usize {
        header_bytes_for(&self.meta.membership)
    }

    /// Number of body chunks.
    pub fn chunk_count(&self) -> u64 {
        self.body_bytes.div_ceil(u64::from(self.chunk_bytes.max(1)))
    }

    /// The whole file's length as implied by the header.
    pub fn file_bytes(&self) -> u64 {
        self.encoded_bytes() as u64 + self.chunk_count() * CHUNK_FRAME_BYTES + self.body_bytes
    }

    /// The header's bytes, CRC included.
    pub fn encode(&self) -> Vec<u8> {
        let m = &self.meta.membership;
        let len = self.encoded_bytes();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&self.meta.index.to_le_bytes());
        out.extend_from_slice(&self.meta.term.to_le_bytes());
        out.extend_from_slice(&self.state_digest.to_le_bytes());
        out.extend_from_slice(&self.body_digest.to_le_bytes());
        out.extend_from_slice(&self.body_bytes.to_le_bytes());
        out.extend_from_slice(&self.chunk_bytes.to_le_bytes());
        for set in [&m.voters, &m.voters_outgoing, &m.learners] {
            out.extend_from_slice(&(set.len() as u32).to_le_bytes());
        }
        for set in [&m.voters, &m.voters_outgoing, &m.learners] {
            for id in set {
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(out.len(), len);
        out
    }

    /// Decodes and checks a header from the start of a file. `buf` may be longer than the
    /// header; if it is shorter, the result is `Truncated`.
    pub fn decode(buf: &[u8], path: &Path) -> Result<SnapshotHeader, SnapshotError> {
        let corrupt = |kind| SnapshotError::corrupt(path, 0, kind);
        let header_bytes = header_bytes_from_prefix(buf, path)?;
        if buf.len() < header_bytes {
            return Err(corrupt(CorruptKind::Truncated));
        }
        let (covered, crc_bytes) = buf[..header_bytes].split_at(header_bytes - 4);
        let stored = u32_at(crc_bytes, 0);
        let computed = crc32fast::hash(covered);
        if stored != computed {
            return Err(corrupt(CorruptKind::HeaderCrc { stored, computed }));
        }
        let counts = [u32_at(buf, 76), u32_at(buf, 80), u32_at(buf, 84)].map(|c| c as usize);
        if counts.iter().any(|&c| c > MEMBERSHIP_NODES_PER_SET_MAX) {
            return Err(corrupt(CorruptKind::HeaderField("membership count")));
        }
        if HEADER_FIXED_BYTES + counts.iter().sum::<usize>() * 8 + 4 != header_bytes {
            return Err(corrupt(CorruptKind::HeaderField("header_bytes")));
        }
        let mut at = HEADER_FIXED_BYTES;
        let mut sets: [BTreeSet<NodeId>; 3] = Default::default();
        for (set, count) in sets.iter_mut().zip(counts) {
            for _ in 0..count {
                set.insert(u64_at(buf, at));
                at += 8;
            }
            if set.len() != count {
                return Err(corrupt(CorruptKind::HeaderField(
                    "membership (duplicate node)",
                )));
            }
        }
        let [voters, voters_outgoing, learners] = sets;
        let header = SnapshotHeader {
            meta: SnapshotMeta {
                index: u64_at(buf, 16),
                term: u64_at(buf, 24),
                membership: Membership {
                    voters,
                    voters_outgoing,
                    learners,
                },
            },
            state_digest: StateDigest(u128_at(buf, 32)),
            body_digest: StateDigest(u128_at(buf, 48)),
            body_bytes: u64_at(buf, 64),
            chunk_bytes: u32_at(buf, 72),
        };
        if header.chunk_bytes == 0 || header.chunk_bytes > CHUNK_BYTES_MAX {
            return Err(corrupt(CorruptKind::HeaderField("chunk_bytes")));
        }
        if header.body_bytes > BODY_BYTES_MAX {
            return Err(corrupt(CorruptKind::HeaderField("body_bytes")));
        }
        Ok(header)
    }
}

/// The encoded header length for a membership.
pub(crate) fn header_bytes_for(m: &Membership) -> usize {
    HEADER_FIXED_BYTES + (m.voters.len() + m.voters_outgoing.len() + m.learners.len()) * 8 + 4
}

pub(crate) fn check_membership_bounds(m: &Membership) -> Result<(), SnapshotError> {
    for set in [&m.voters, &m.voters_outgoing, &m.learners] {
        if set.len() > MEMBERSHIP_NODES_PER_SET_MAX {
            return Err(SnapshotError::MembershipTooLarge {
                nodes: set.len(),
                bound: MEMBERSHIP_NODES_PER_SET_MAX,
            });
        }
    }
    Ok(())
}

/// Reads magic, version and header length from the first [`HEADER_PREFIX_BYTES`] bytes.
pub(crate) fn header_bytes_from_prefix(buf: &[u8], path: &Path) -> Result<usize, SnapshotError> {
    let corrupt = |kind| SnapshotError::corrupt(path, 0, kind);
    if buf.len() < HEADER_PREFIX_BYTES {
        // A short prefix that is not even a magic prefix is reported as such.
        let n = buf.len().min(SNAPSHOT_MAGIC.len());
        if buf[..n] != SNAPSHOT_MAGIC[..n] {
            return Err(corrupt(CorruptKind::BadMagic));
        }
        return Err(corrupt(CorruptKind::Truncated));
    }
    if buf[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt(CorruptKind::BadMagic));
    }
    let version = u32_at(buf, 8);
    if version != FORMAT_VERSION {
        return Err(corrupt(CorruptKind::UnsupportedVersion(version)));
    }
    let header_bytes = u32_at(buf, 12) as usize;
    if !(HEADER_FIXED_BYTES + 4..=HEADER_BYTES_MAX).contains(&header_bytes) {
        return Err(corrupt(CorruptKind::HeaderField("header_bytes")));
    }
    Ok(header_bytes)
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

fn u128_at(buf: &[u8], at: usize) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&buf[at..at + 16]);
    u128::from_le_bytes(b)
}

pub(crate) fn chunk_frame(payload: &[u8]) -> [u8; 8] {
    let mut frame = [0u8; 8];
    frame[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    frame[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    frame
}

pub(crate) fn parse_chunk_frame(frame: &[u8; 8]) -> (u32, u32) {
    (u32_at(frame, 0), u32_at(frame, 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            meta: SnapshotMeta {
                index: 42,
                term: 7,
                membership: Membership {
                    voters: [1, 2, 3].into(),
                    voters_outgoing: [3, 4].into(),
                    learners: [9].into(),
                },
            },
            state_digest: StateDigest(0x1234),
            body_digest: StateDigest(0x5678),
            body_bytes: 1000,
            chunk_bytes: 300,
        }
    }

    #[test]
    fn header_round_trips_and_sizes_agree() {
        let h = header();
        let bytes = h.encode();
        assert_eq!(bytes.len(), h.encoded_bytes());
        assert_eq!(SnapshotHeader::decode(&bytes, Path::new("x")).unwrap(), h);
        assert_eq!(h.chunk_count(), 4);
        assert_eq!(h.file_bytes(), bytes.len() as u64 + 4 * 8 + 1000);
    }

    #[test]
    fn every_flipped_header_byte_and_every_truncation_is_rejected() {
        let bytes = header().encode();
        for at in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[at] ^= bit;
                let err = SnapshotHeader::decode(&b, Path::new("x")).unwrap_err();
                assert!(err.is_corrupt(), "byte {at}: {err}");
            }
        }
        for len in 0..bytes.len() {
            assert!(SnapshotHeader::decode(&bytes[..len], Path::new("x"))
                .unwrap_err()
                .is_corrupt());
        }
    }
}
