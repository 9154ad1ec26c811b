//! Reading batches back: the header and CRC checked against the segment's key, the term
//! runs and entry offsets recovered, and one entry decoded (borrowing a command's bytes from
//! the mapped segment when it can). Every check that recovery relies on lives here.

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, Index, Membership, Term};
use serde::Deserialize;

use super::{
    align_up, u32_at, u64_at, BatchKey, BATCH_HEADER_BYTES, ENTRY_LEN_BYTES, TERM_RUN_BYTES,
};

/// Why no batch could be read at an offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// A zero length field: the end of written data, if everything after it is zero too.
    Zero,
    /// The batch runs past the end of the buffer.
    Short,
    /// An entry's length exceeds the configured maximum.
    TooLarge,
    /// The CRC does not match the batch's bytes.
    Crc,
    /// The CRC matched but the header, term runs or entries are inconsistent.
    Decode,
    /// The padding after the batch is not zero (the CRC does not cover it).
    Padding,
}

impl RecordError {
    /// The reason in words, for logs and `LogError::Corrupt`.
    pub fn describe(self) -> &'static str {
        match self {
            RecordError::Zero => "zero length field followed by non-zero bytes",
            RecordError::Short => "batch runs past the end of the segment",
            RecordError::TooLarge => "entry length above entry_bytes_max",
            RecordError::Crc => "batch CRC mismatch",
            RecordError::Decode => "batch header, term runs or entries inconsistent",
            RecordError::Padding => "batch padding is not zero",
        }
    }
}

/// A batch located and CRC-checked in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchFrame {
    /// Index of its first entry; for a truncation record, the first index it drops.
    pub first_index: Index,
    /// Entries it holds; 0 for a truncation record.
    pub count: u32,
    /// Offset just past the batch's padding: where the next batch starts.
    pub end_offset: usize,
}

/// Reads and checks the batch at `offset` of `buf`: CRC, header, term runs, and every
/// entry's length and (decoded from its payload) index and term. Appends where each entry
/// (its length field) starts to `entry_offsets` and the batch's term runs to `runs`; on
/// error both are left as they were. Never panics, whatever `buf` holds.
pub fn read_batch(
    buf: &[u8],
    offset: usize,
    entry_bytes_max: usize,
    key: BatchKey,
    entry_offsets: &mut Vec<u32>,
    runs: &mut Vec<(Index, Term)>,
) -> Result<BatchFrame, RecordError> {
    let (offsets_before, runs_before) = (entry_offsets.len(), runs.len());
    let result = read_batch_into(buf, offset, entry_bytes_max, key, entry_offsets, runs);
    if result.is_err() {
        entry_offsets.truncate(offsets_before);
        runs.truncate(runs_before);
    }
    result
}

fn read_batch_into(
    buf: &[u8],
    offset: usize,
    entry_bytes_max: usize,
    key: BatchKey,
    entry_offsets: &mut Vec<u32>,
    runs: &mut Vec<(Index, Term)>,
) -> Result<BatchFrame, RecordError> {
    let len_field = offset
        .checked_add(4)
        .and_then(|end| buf.get(offset..end))
        .ok_or(RecordError::Short)?;
    let total_len = u32_at(len_field, 0) as usize;
    if total_len == 0 {
        return Err(RecordError::Zero);
    }
    let end = offset
        .checked_add(total_len.max(BATCH_HEADER_BYTES))
        .ok_or(RecordError::Short)?;
    let batch = buf.get(offset..end).ok_or(RecordError::Short)?;
    if total_len < BATCH_HEADER_BYTES {
        return Err(RecordError::Decode);
    }
    let crc = crc32fast::hash(&batch[8..]) ^ key.seed ^ total_len as u32;
    if crc != u32_at(batch, 4) {
        return Err(RecordError::Crc);
    }
    let end_offset = offset + align_up(total_len);
    let padding = buf.get(end..end_offset.min(buf.len())).unwrap_or(&[]);
    if padding.iter().any(|&b| b != 0) {
        return Err(RecordError::Padding);
    }
    let first_index = u64_at(batch, 8);
    let count = u32_at(batch, 16);
    let run_count = u32_at(batch, 20) as usize;
    if count == 0 {
        // A truncation record.
        if run_count != 0 || total_len != BATCH_HEADER_BYTES {
            return Err(RecordError::Decode);
        }
        return Ok(BatchFrame {
            first_index,
            count,
            end_offset,
        });
    }
    let last_index = first_index
        .checked_add(u64::from(count) - 1)
        .ok_or(RecordError::Decode)?;
    if run_count == 0 || run_count > count as usize {
        return Err(RecordError::Decode);
    }
    let entries_at = run_count
        .checked_mul(TERM_RUN_BYTES)
        .map(|r| r + BATCH_HEADER_BYTES)
        .filter(|&e| e <= total_len)
        .ok_or(RecordError::Decode)?;
    let runs_from = runs.len();
    let mut prev: Option<(Index, Term)> = None;
    for r in 0..run_count {
        let at = BATCH_HEADER_BYTES + r * TERM_RUN_BYTES;
        let run = (u64_at(batch, at), u64_at(batch, at + 8));
        let in_order = match prev {
            None => run.0 == first_index,
            Some((index, term)) => run.0 > index && run.1 > term && run.0 <= last_index,
        };
        if !in_order {
            return Err(RecordError::Decode);
        }
        runs.push(run);
        prev = Some(run);
    }
    let batch_runs = &runs[runs_from..];
    let mut run = 0;
    let mut at = entries_at;
    for i in 0..u64::from(count) {
        let index = first_index + i;
        if batch_runs
            .get(run + 1)
            .is_some_and(|&(start, _)| start == index)
        {
            run += 1;
        }
        let len = batch
            .get(at..at + ENTRY_LEN_BYTES)
            .map(|b| u32_at(b, 0) as usize)
            .ok_or(RecordError::Decode)?;
        if len > entry_bytes_max {
            return Err(RecordError::TooLarge);
        }
        let payload = batch
            .get(at + ENTRY_LEN_BYTES..at + ENTRY_LEN_BYTES + len)
            .ok_or(RecordError::Decode)?;
        let ((held_index, held_term), _) =
            postcard::take_from_bytes::<(Index, Term)>(payload).map_err(|_| RecordError::Decode)?;
        if (held_index, held_term) != (index, batch_runs[run].1) {
            return Err(RecordError::Decode);
        }
        entry_offsets.push(u32::try_from(offset + at).map_err(|_| RecordError::Short)?);
        at += ENTRY_LEN_BYTES + len;
    }
    if at != total_len || run + 1 != run_count {
        return Err(RecordError::Decode);
    }
    Ok(BatchFrame {
        first_index,
        count,
        end_offset,
    })
}

/// The header fields of a batch at `offset` read without checking its CRC: `(total_len,
/// first_index, count)`. A cheap filter before [`read_batch`] when looking through bytes
/// that are mostly not batches.
pub fn peek_batch(buf: &[u8], offset: usize) -> Option<(usize, Index, u32)> {
    let header = buf.get(offset..offset.checked_add(BATCH_HEADER_BYTES)?)?;
    Some((
        u32_at(header, 0) as usize,
        u64_at(header, 8),
        u32_at(header, 16),
    ))
}

/// Where the payload of the entry whose length field is at `offset` lies in `buf`, for a
/// lookup through the index of entry offsets: the batch's CRC was checked when it was
/// recovered (or it was written by this process), so only the bounds are.
pub fn entry_payload(
    buf: &[u8],
    offset: usize,
    entry_bytes_max: usize,
) -> Result<std::ops::Range<usize>, RecordError> {
    let len = buf
        .get(
            offset
                ..offset
                    .checked_add(ENTRY_LEN_BYTES)
                    .ok_or(RecordError::Short)?,
        )
        .map(|b| u32_at(b, 0) as usize)
        .ok_or(RecordError::Short)?;
    if len > entry_bytes_max {
        return Err(RecordError::TooLarge);
    }
    let from = offset + ENTRY_LEN_BYTES;
    let to = from.checked_add(len).filter(|&to| to <= buf.len());
    to.map(|to| from..to).ok_or(RecordError::Short)
}

/// Mirrors `EntryPayload` with the command's bytes borrowed, so decoding copies nothing.
#[derive(Deserialize)]
enum PayloadRef<'a> {
    Noop,
    Command(&'a [u8]),
    Membership(Membership),
}

#[derive(Deserialize)]
struct EntryRef<'a> {
    index: Index,
    term: Term,
    #[serde(borrow)]
    payload: PayloadRef<'a>,
}

/// Decodes a full entry from a CRC-checked payload. When `backing` is given, `payload` must
/// lie inside it, and a command's bytes become a slice of `backing` instead of a copy.
pub fn decode_entry(payload: &[u8], backing: Option<&Bytes>) -> Result<Entry, RecordError> {
    let (entry, rest) =
        postcard::take_from_bytes::<EntryRef<'_>>(payload).map_err(|_| RecordError::Decode)?;
    if !rest.is_empty() {
        return Err(RecordError::Decode);
    }
    let payload = match entry.payload {
        PayloadRef::Noop => EntryPayload::Noop,
        PayloadRef::Command(data) => EntryPayload::Command(match backing {
            Some(backing) => backing.slice_ref(data),
            None => Bytes::copy_from_slice(data),
        }),
        PayloadRef::Membership(m) => EntryPayload::Membership(m),
    };
    Ok(Entry {
        index: entry.index,
        term: entry.term,
        payload,
    })
}
