//! Writing batches: each entry laid out as its length field and postcard payload (a large
//! command's bytes left in the entry, to be written with `pwritev`), the batch head with its
//! term runs, the CRC sealing it, and the truncation record. The reverse is `decode.rs`.

use raft_core::{Entry, EntryPayload, Index};

use super::{
    align_up, batch_head_bytes, term_run_count, u32_at, BatchKey, ENTRY_LEN_BYTES, TRUNCATION_BYTES,
};

/// postcard's variant indexes of `EntryPayload`.
const NOOP_VARIANT: u64 = 0;
const COMMAND_VARIANT: u64 = 1;
/// Longest postcard varint of a u64.
const VARINT_BYTES_MAX: usize = 10;

/// Longest prefix postcard writes before a command's bytes: index, term, variant, length.
const PREFIX_BYTES_MAX: usize = 4 * VARINT_BYTES_MAX;

/// Stores postcard's unsigned varint (LEB128) of `v` at `at`; returns the address after it.
///
/// # Safety
/// `at` must be valid for writes of `VARINT_BYTES_MAX` bytes.
#[inline(always)]
unsafe fn put_varint(mut at: *mut u8, mut v: u64) -> *mut u8 {
    while v >= 0x80 {
        at.write(v as u8 | 0x80);
        at = at.add(1);
        v >>= 7;
    }
    at.write(v as u8);
    at.add(1)
}

/// Command payloads at least this long are not copied into the encoding buffer: the batch
/// is written with `pwritev` straight from the entry's `Bytes` (see [`lay_out_entry`]).
/// Below a page, an extra iovec per entry is not clearly cheaper than the copy.
pub const VECTORED_MIN_BYTES: usize = 4096;

/// How one entry was laid out by [`lay_out_entry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryParts {
    /// Bytes appended to the buffer: the whole entry (length field and payload), or its
    /// length field and the payload's prefix when `borrowed`.
    pub head_bytes: usize,
    /// The command's bytes follow the head, taken from the entry itself.
    pub borrowed: bool,
    /// The entry's size in the batch: length field and payload.
    pub entry_bytes: usize,
    /// The encoded entry's size (postcard), without the length field.
    pub payload_bytes: usize,
}

/// Why [`lay_out_entries`] stopped.
#[derive(Debug, PartialEq)]
pub enum BatchError {
    /// The entry at `index` does not encode.
    Encode {
        /// The entry's index.
        index: Index,
        /// postcard's reason.
        error: postcard::Error,
    },
    /// The entry at `index` encodes to a payload above the maximum.
    TooLarge {
        /// The entry's index.
        index: Index,
        /// Its encoded size.
        payload_bytes: u64,
    },
}

/// The command bytes an entry laid out as `parts` leaves out of the buffer.
#[inline]
pub fn borrowed_data(entry: &Entry, parts: EntryParts) -> &[u8] {
    match (&entry.payload, parts.borrowed) {
        (EntryPayload::Command(data), true) => data,
        _ => &[],
    }
}

/// Appends the entries of `entries` to `out` (length field and postcard payload each, no
/// batch header) and where each starts and how it was laid out to `parts`; returns whether
/// any entry borrows its command's bytes (see [`lay_out_entry`]). Stops at the first entry
/// that does not encode or whose payload is above `payload_bytes_max`; the entries before
/// it stay in `out`.
pub fn lay_out_entries(
    entries: &[Entry],
    out: &mut Vec<u8>,
    parts: &mut Vec<(usize, EntryParts)>,
    borrow_min_bytes: usize,
    payload_bytes_max: u64,
) -> Result<bool, BatchError> {
    parts.reserve(entries.len());
    let mut any_borrowed = false;
    for e in entries {
        let start = out.len();
        let p = lay_out_entry(e, out, borrow_min_bytes).map_err(|error| BatchError::Encode {
            index: e.index,
            error,
        })?;
        if p.payload_bytes as u64 > payload_bytes_max {
            out.truncate(start);
            return Err(BatchError::TooLarge {
                index: e.index,
                payload_bytes: p.payload_bytes as u64,
            });
        }
        any_borrowed |= p.borrowed;
        parts.push((start, p));
    }
    Ok(any_borrowed)
}

/// Appends `entry` to `out` as a batch holds it: `len u32 | postcard(entry)`. A command of
/// at least `borrow_min_bytes` is left out of `out`: the entry in the batch is then
/// `out[head] ++ data`, one copy fewer. Noops and commands, the hot path, are encoded by
/// hand (postcard's generic serializer cost ~60 ns an entry); the `same_bytes_as_postcard`
/// tests hold the two encodings equal. On error `out` is as it was.
#[inline(always)]
pub fn lay_out_entry(
    entry: &Entry,
    out: &mut Vec<u8>,
    borrow_min_bytes: usize,
) -> Result<EntryParts, postcard::Error> {
    let start = out.len();
    let data: &[u8] = match &entry.payload {
        EntryPayload::Noop => &[],
        EntryPayload::Command(data) => data,
        EntryPayload::Membership(_) => {
            // Rare: through postcard, into a buffer of its own so that an error leaves
            // `out` as it was.
            let payload = postcard::to_stdvec(entry)?;
            let len =
                u32::try_from(payload.len()).map_err(|_| postcard::Error::SerializeBufferFull)?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&payload);
            let entry_bytes = ENTRY_LEN_BYTES + payload.len();
            return Ok(EntryParts {
                head_bytes: entry_bytes,
                borrowed: false,
                entry_bytes,
                payload_bytes: payload.len(),
            });
        }
    };
    let borrowed = data.len() >= borrow_min_bytes;
    let copied_bytes = if borrowed { 0 } else { data.len() };
    out.reserve(ENTRY_LEN_BYTES + PREFIX_BYTES_MAX + copied_bytes);
    // The prefix postcard writes for `Entry` before a command's bytes (index, term, variant
    // and, for a command, the bytes' length, all varints) and the bytes, stored straight
    // into the reserved capacity: with `push` and `extend_from_slice` every byte paid for a
    // capacity check and the copy went through a length update.
    //
    // SAFETY: `reserve` made room for the bytes written below past `start`: the 4-byte
    // length, at most `PREFIX_BYTES_MAX` prefix bytes and `copied_bytes` bytes. `set_len`
    // covers only bytes written.
    let prefix_bytes = unsafe {
        let base = out.as_mut_ptr().add(start);
        let mut at = base.add(ENTRY_LEN_BYTES);
        at = put_varint(at, entry.index);
        at = put_varint(at, entry.term);
        if matches!(entry.payload, EntryPayload::Noop) {
            at = put_varint(at, NOOP_VARIANT);
        } else {
            at = put_varint(at, COMMAND_VARIANT);
            at = put_varint(at, data.len() as u64);
        }
        let prefix_bytes = at.offset_from(base) as usize - ENTRY_LEN_BYTES;
        std::ptr::copy_nonoverlapping(data.as_ptr(), at, copied_bytes);
        prefix_bytes
    };
    let payload_bytes = prefix_bytes + data.len();
    let len = u32::try_from(payload_bytes).map_err(|_| postcard::Error::SerializeBufferFull)?;
    let entry_bytes = ENTRY_LEN_BYTES + payload_bytes;
    let head_bytes = if borrowed {
        ENTRY_LEN_BYTES + prefix_bytes
    } else {
        entry_bytes
    };
    // SAFETY: as above; the length's 4 bytes are inside the reserved room.
    unsafe {
        std::ptr::write_unaligned(out.as_mut_ptr().add(start).cast(), len.to_le_bytes());
        out.set_len(start + head_bytes);
    }
    Ok(EntryParts {
        head_bytes,
        borrowed,
        entry_bytes,
        payload_bytes,
    })
}

/// Appends a batch's header and term runs for `entries` to `out`, with `total_len` set for
/// `entry_bytes` bytes of entries and the CRC left zero for [`seal_batch`]. Returns the
/// header's length. `entries` must be non-empty, of consecutive indexes.
pub fn put_batch_head(out: &mut Vec<u8>, entries: &[Entry], entry_bytes: usize) -> usize {
    let runs = term_run_count(entries);
    let head_bytes = batch_head_bytes(runs);
    let total_len = head_bytes + entry_bytes;
    out.reserve(head_bytes);
    out.extend_from_slice(&(total_len as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&entries[0].index.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&(runs as u32).to_le_bytes());
    let mut term = None;
    for e in entries {
        if term != Some(e.term) {
            term = Some(e.term);
            out.extend_from_slice(&e.index.to_le_bytes());
            out.extend_from_slice(&e.term.to_le_bytes());
        }
    }
    head_bytes
}

/// Computes the CRC of a batch whose bytes are `head` (header and runs, as
/// [`put_batch_head`] wrote them) followed by `body` (the entries, in pieces) and stores it
/// in `head`.
pub fn seal_batch(head: &mut [u8], key: BatchKey, body: &[&[u8]]) {
    let total_len = u32_at(head, 0);
    let mut h = crc32fast::Hasher::new();
    h.update(&head[8..]);
    for part in body {
        h.update(part);
    }
    let crc = h.finalize() ^ key.seed ^ total_len;
    head[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends `entries` (non-empty, consecutive indexes) to `out` as one whole batch under
/// `key`, padding included, every command's bytes copied. Returns the batch's size.
pub fn encode_batch(
    entries: &[Entry],
    key: BatchKey,
    out: &mut Vec<u8>,
) -> Result<usize, BatchError> {
    let start = out.len();
    let mut body = Vec::new();
    let mut parts = Vec::new();
    lay_out_entries(entries, &mut body, &mut parts, usize::MAX, u64::MAX)?;
    let head_bytes = put_batch_head(out, entries, body.len());
    seal_batch(&mut out[start..start + head_bytes], key, &[&body]);
    out.extend_from_slice(&body);
    out.resize(start + align_up(head_bytes + body.len()), 0);
    Ok(out.len() - start)
}

/// A truncation record under `key`: the entries from `first_index` on of the batch just
/// before it are dropped.
pub fn encode_truncation(first_index: Index, key: BatchKey) -> [u8; TRUNCATION_BYTES] {
    let mut out = [0u8; TRUNCATION_BYTES];
    out[0..4].copy_from_slice(&(TRUNCATION_BYTES as u32).to_le_bytes());
    out[8..16].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32fast::hash(&out[8..]) ^ key.seed ^ TRUNCATION_BYTES as u32;
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}
