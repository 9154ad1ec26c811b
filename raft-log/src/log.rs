//! The log itself: open and recovery, writes, reads.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use raft_core::{
    Entry, EntryPayload, HardState, Index, LogStore, SnapshotMeta, StorageError, Term,
};
use tracing::{info, warn};

use crate::error::LogError;
use crate::format::{
    self, decode_state_slot, encode_state_slot, read_frame, BatchError, RecordEncoder, RecordError,
    RecordKey, RecordParts, SegmentHeader, StateRecord, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
    STATE_SLOT_BYTES, VECTORED_MIN_BYTES,
};
use crate::spare::{is_spare_name, zero_fill, Preparer};
use crate::sync::{FaultHook, FaultPoint, FileRef, Shared, SyncHandle};

const LOCK_FILE: &str = "LOCK";
const STATE_FILE: &str = "state";
const SEGMENT_SUFFIX: &str = ".seg";
/// Digits of the zero-padded first index in a segment's name, so names sort by index.
const SEGMENT_NAME_DIGITS: usize = 20;
/// Segment files are sized in whole pages.
const PAGE_BYTES: u64 = 4096;
/// Bytes of zeroes written per call when erasing a truncated region.
const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// How often, and how far apart, a held lock is tried again before `Locked` is returned.
const LOCK_RETRIES: u32 = 5;
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);
/// Upper bound on `segment_bytes` and `entry_bytes_max`: record offsets are kept as `u32`.
const SEGMENT_BYTES_LIMIT: u64 = 1 << 31;
/// Segments freed by compaction wait under these names to be reused (see `Log::retire`).
const RECYCLE_PREFIX: &str = "recycle-";
const RECYCLE_SUFFIX: &str = ".tmp";
/// Freed segment files kept for reuse; more are deleted. Two cover a compaction that frees
/// one segment while the previous one is still waiting.
const RECYCLED_FILES_MAX: usize = 2;

fn is_recycle_name(name: &str) -> bool {
    name.strip_prefix(RECYCLE_PREFIX)
        .and_then(|rest| rest.strip_suffix(RECYCLE_SUFFIX))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Tunables of a [`Log`].
#[derive(Clone)]
pub struct Options {
    /// Size of each preallocated segment file. Default 64 MiB.
    pub segment_bytes: u64,
    /// Largest accepted encoded entry (postcard payload); larger appends are refused with
    /// [`LogError::EntryTooLarge`]. An entry that does not fit `segment_bytes` gets a segment
    /// of its own. Default 64 MiB.
    pub entry_bytes_max: u64,
    /// Whether a sync also forces a hard state that differs from the previous one only in
    /// its commit index. Default `false`: raft-core treats the persisted commit index as an
    /// optimisation and clamps it on restart, so a sync after a commit-only change costs one
    /// `fdatasync` (the segment) instead of two; the state write still reaches the disk with
    /// the kernel's writeback or the next forced state write. Term, vote and snapshot changes
    /// are always forced.
    pub sync_commit_index: bool,
    /// Fill new segments with real zeroes (on a background thread, one segment ahead of
    /// need) rather than only `posix_fallocate` them. On ext4 a write into fallocated
    /// (unwritten) blocks makes the following `fdatasync` also journal the extent
    /// conversion; measured here that costs more than writing the zeroes, for small and
    /// large syncs alike (see ARCHITECTURE.md). Default `true`.
    pub segment_zero_fill: bool,
    /// Keep up to two segment files freed by compaction and reuse them for new segments
    /// instead of creating (and zero-filling) new files. A reused file is overwritten in
    /// place: no zero-filling competes with appends for the disk, and the disk overwrites
    /// blocks it has already written, which on this machine's disk is much faster than
    /// writing new ones (see ARCHITECTURE.md). Default `true`.
    pub segment_reuse: bool,
    /// How open treats a bad record in the last segment that is followed by a valid one.
    /// `false` (default): as corruption, the open fails and nothing is deleted, because a
    /// flipped bit in synced data must not silently drop acknowledged entries. `true`: as a
    /// torn tail, cut there (logged). A power loss in the middle of an unsynced batch can
    /// leave such a hole when the disk wrote its pages out of order; an operator who knows
    /// that is what happened reopens with `true`.
    pub recovery_point_in_time: bool,
    /// Fault injection for tests; `None` in production.
    #[doc(hidden)]
    pub fault_hook: Option<FaultHook>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 64 << 20,
            entry_bytes_max: 64 << 20,
            sync_commit_index: false,
            segment_zero_fill: true,
            segment_reuse: true,
            recovery_point_in_time: false,
            fault_hook: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("segment_bytes", &self.segment_bytes)
            .field("entry_bytes_max", &self.entry_bytes_max)
            .field("sync_commit_index", &self.sync_commit_index)
            .field("segment_zero_fill", &self.segment_zero_fill)
            .field("segment_reuse", &self.segment_reuse)
            .field("recovery_point_in_time", &self.recovery_point_in_time)
            .field("fault_hook", &self.fault_hook.is_some())
            .finish()
    }
}

impl Options {
    fn validate(&self) -> Result<(), LogError> {
        if self.segment_bytes < PAGE_BYTES || self.segment_bytes > SEGMENT_BYTES_LIMIT {
            return Err(LogError::Options(format!(
                "segment_bytes {} outside {PAGE_BYTES}..={SEGMENT_BYTES_LIMIT}",
                self.segment_bytes
            )));
        }
        if self.entry_bytes_max == 0 || self.entry_bytes_max > SEGMENT_BYTES_LIMIT - 2 * PAGE_BYTES
        {
            return Err(LogError::Options(format!(
                "entry_bytes_max {} outside 1..={}",
                self.entry_bytes_max,
                SEGMENT_BYTES_LIMIT - 2 * PAGE_BYTES
            )));
        }
        Ok(())
    }
}

/// One segment file: records of consecutive indexes starting at `first_index`.
struct Segment {
    first_index: Index,
    /// How its records are checksummed (from its header).
    key: RecordKey,
    file: Arc<FileRef>,
    /// Read-only shared mapping of the whole (preallocated) file; command payloads handed
    /// out by reads are slices of it.
    map: Bytes,
    /// The mapping `map` (and every slice of it handed out) keeps alive: when this is the
    /// last reference, nobody holds bytes of the file and it may be reused.
    map_owner: Arc<memmap2::Mmap>,
    capacity: u64,
    /// Where the next record goes. Everything from here to `capacity` is zero on disk,
    /// unless `stale_tail`.
    write_offset: u64,
    /// The file is a recycled one: past `write_offset` it may hold records of its earlier
    /// life (which fail this segment's CRC key) behind a zeroed record header. Only the last
    /// segment can have one: sealing zeroes it.
    stale_tail: bool,
    /// `offsets[i]` is where the record of index `first_index + i` starts.
    offsets: Vec<u32>,
}

impl Segment {
    fn next_index(&self) -> Index {
        self.first_index + self.offsets.len() as Index
    }
}

/// A segmented, memory-mapped write-ahead log. See the crate documentation.
pub struct Log {
    options: Options,
    /// Held for its `flock`, released when the log is dropped.
    _lock: File,
    shared: Arc<Shared>,
    state_file: Arc<FileRef>,
    /// Sequence number of the last state slot written.
    state_seq: u64,
    state: StateRecord,
    segments: Vec<Segment>,
    /// `(first index, term)` of each run of equal terms, covering the held entries.
    term_runs: Vec<(Index, Term)>,
    last_index: Index,
    unknown_files: Vec<PathBuf>,
    /// Encoding buffer reused across appends.
    buf: Vec<u8>,
    /// Where in `buf` each record of the current append starts, and how it was encoded.
    records: Vec<(usize, RecordParts)>,
    /// Prepares zero-filled spare segments; started on first need.
    preparer: Option<Preparer>,
    /// Segment files freed by compaction, waiting to be reused by `roll`.
    recycled: Vec<PathBuf>,
    /// Numbers the names of recycled files.
    recycle_seq: u64,
    /// Segments compaction dropped, each with the sequence number of the state write that
    /// recorded that compaction, in order. A file is deleted or recycled only once that
    /// state is durable (see `retire_durable`), so compaction itself never waits for a sync.
    retiring: Vec<(u64, Segment)>,
}

fn segment_name(first_index: Index) -> String {
    format!(
        "{first_index:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_NAME_DIGITS
    )
}

fn parse_segment_name(name: &str) -> Option<Index> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn is_all_zero(bytes: &[u8]) -> bool {
    // OR-folding fixed chunks vectorises; `iter().all` would not.
    bytes
        .chunks(4096)
        .all(|chunk| chunk.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Offset just past the last non-zero byte of `bytes` (0 if all zero).
fn nonzero_end(bytes: &[u8]) -> usize {
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(4096);
        let chunk = &bytes[start..end];
        if let Some(pos) = chunk.iter().rposition(|&b| b != 0) {
            return start + pos + 1;
        }
        end = start;
    }
    0
}

/// Lets a `Bytes` own a shared mapping.
struct MapOwner(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn map_file(file: &FileRef) -> Result<(Bytes, Arc<memmap2::Mmap>), LogError> {
    // SAFETY: the mapping is read-only and the log never shrinks a mapped file, so every
    // mapped page stays backed. Other processes are kept out by the lock file; a process that
    // ignores it and truncates a segment could make reads fault, which no check can prevent.
    let map = unsafe { memmap2::MmapOptions::new().map(&file.file) }
        .map_err(|e| LogError::io(&file.path, e))?;
    let owner = Arc::new(map);
    Ok((Bytes::from_owner(MapOwner(owner.clone())), owner))
}

fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| LogError::io(&path, e))?;
    // A process that forks (to spawn a child) shares the lock until the child execs, so a
    // log closed just before by this very process can look locked for a moment: retry
    // briefly before calling it held by someone else.
    for attempt in 0..=LOCK_RETRIES {
        // SAFETY: flock on a valid descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(file);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock {
            return Err(LogError::io(&path, err));
        }
        if attempt < LOCK_RETRIES {
            std::thread::sleep(LOCK_RETRY_PAUSE);
        }
    }
    Err(LogError::Locked {
        path: dir.to_owned(),
    })
}

pub(crate) fn preallocate(shared: &Shared, file: &FileRef, bytes: u64) -> Result<(), LogError> {
    shared
        .fault(FaultPoint::Allocate)
        .map_err(|e| LogError::io(&file.path, e))?;
    let len = libc::off_t::try_from(bytes)
        .map_err(|_| LogError::Options(format!("file size {bytes} too large")))?;
    // posix_fallocate reserves the blocks, so later writes inside the file neither fail for
    // lack of space nor change its size (which would make every fdatasync a journal commit).
    // SAFETY: valid descriptor; the call only reads its arguments.
    let rc = unsafe { libc::posix_fallocate(file.file.as_raw_fd(), 0, len) };
    if rc != 0 {
        return Err(LogError::io(&file.path, io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

fn write_at(shared: &Shared, file: &FileRef, data: &[u8], offset: u64) -> Result<(), LogError> {
    shared
        .fault(FaultPoint::Write)
        .and_then(|()| file.file.write_all_at(data, offset))
        .map_err(|e| LogError::io(&file.path, e))
}

/// The byte slices making up `records` on disk, in order: heads from `buf` (merged when
/// adjacent), borrowed command bytes, padding.
fn record_slices<'a>(
    entries: &'a [Entry],
    buf: &'a [u8],
    records: &[(usize, RecordParts)],
) -> Vec<&'a [u8]> {
    static PAD: [u8; format::RECORD_ALIGN_BYTES] = [0; format::RECORD_ALIGN_BYTES];
    let mut slices: Vec<&'a [u8]> = Vec::new();
    let mut pending: Option<(usize, usize)> = None;
    for (entry, &(start, parts)) in entries.iter().zip(records) {
        let head = (start, start + parts.head_bytes);
        pending = match pending {
            Some((a, b)) if b == head.0 => Some((a, head.1)),
            Some((a, b)) => {
                slices.push(&buf[a..b]);
                Some(head)
            }
            None => Some(head),
        };
        if parts.borrowed {
            let EntryPayload::Command(data) = &entry.payload else {
                unreachable!("only commands are borrowed")
            };
            let (a, b) = pending.take().expect("set above");
            slices.push(&buf[a..b]);
            slices.push(data);
            if parts.pad > 0 {
                slices.push(&PAD[..parts.pad]);
            }
        }
    }
    if let Some((a, b)) = pending {
        slices.push(&buf[a..b]);
    }
    slices
}

/// `pwritev` of all of `slices` at `offset`, in calls of at most `IOV_MAX` slices.
fn write_vectored_at(
    shared: &Shared,
    file: &FileRef,
    slices: &[&[u8]],
    mut offset: u64,
) -> Result<(), LogError> {
    const IOV_MAX: usize = 1024;
    shared
        .fault(FaultPoint::Write)
        .map_err(|e| LogError::io(&file.path, e))?;
    let mut iovs: Vec<io::IoSlice<'_>> = slices.iter().map(|s| io::IoSlice::new(s)).collect();
    let mut rest: &mut [io::IoSlice<'_>] = &mut iovs;
    while !rest.is_empty() {
        let count = rest.len().min(IOV_MAX);
        let at = libc::off_t::try_from(offset)
            .map_err(|_| LogError::io(&file.path, io::Error::other("offset overflow")))?;
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix, and the slices outlive
        // the call.
        let written = unsafe {
            libc::pwritev(
                file.file.as_raw_fd(),
                rest.as_ptr().cast(),
                count as libc::c_int,
                at,
            )
        };
        if written < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(LogError::io(&file.path, err));
        }
        if written == 0 {
            return Err(LogError::io(
                &file.path,
                io::Error::from(io::ErrorKind::WriteZero),
            ));
        }
        offset += written as u64;
        io::IoSlice::advance_slices(&mut rest, written as usize);
    }
    Ok(())
}

pub(crate) fn write_zeroes(
    shared: &Shared,
    file: &FileRef,
    mut from: u64,
    to: u64,
) -> Result<(), LogError> {
    static ZEROES: [u8; ZERO_CHUNK_BYTES] = [0; ZERO_CHUNK_BYTES];
    while from < to {
        let n = (to - from).min(ZERO_CHUNK_BYTES as u64) as usize;
        write_at(shared, file, &ZEROES[..n], from)?;
        from += n as u64;
    }
    Ok(())
}

/// What scanning one segment found.
struct Scan {
    offsets: Vec<u32>,
    /// `(first index, term)` runs of the segment's records.
    term_runs: Vec<(Index, Term)>,
    /// Where the written data ends (after a cut, where the cut is).
    end: usize,
    /// A torn tail was found at `end`; bytes up to `garbage_end` must be erased.
    garbage_end: Option<usize>,
    /// The data ends at a zeroed record header followed by bytes that are not records of
    /// this segment: a recycled file's earlier life.
    stale_tail: bool,
}

/// Looks for a valid record (under `key`) at an aligned offset at or after `from` whose
/// index is at least `index_min`. Such a record after a bad one means the bad one is not a
/// torn tail.
///
/// A reused segment's tail can be tens of MiB of earlier records and payload bytes, every
/// aligned word a candidate length: before a candidate's CRC is computed (over up to
/// `payload_bytes_max` bytes), it must look like part of a run of this log's records.
fn find_valid_record(
    map: &[u8],
    from: usize,
    index_min: Index,
    payload_bytes_max: usize,
    key: RecordKey,
) -> Option<usize> {
    // Records written after `index_min - 1` in this segment are at least 8 bytes each, so
    // no valid one can hold an index beyond this.
    let index_max = index_min.saturating_add((map.len() / format::RECORD_ALIGN_BYTES) as Index);
    let mut at = format::align_up(from);
    while at + RECORD_HEADER_BYTES <= map.len() {
        if plausible_record(map, at, index_min, index_max, payload_bytes_max) {
            if let Ok(frame) = read_frame(map, at, payload_bytes_max, key) {
                if frame.index >= index_min {
                    return Some(at);
                }
            }
        }
        at += format::RECORD_ALIGN_BYTES;
    }
    None
}

/// Cheap checks, without the CRC: a length that fits, zero padding, an index in range, and
/// after it either a zeroed record header, the end of the file, or a record claiming the
/// next index (the way a run of real records continues; stale records of a reused file hold
/// lower indexes and fail the range).
fn plausible_record(
    map: &[u8],
    at: usize,
    index_min: Index,
    index_max: Index,
    payload_bytes_max: usize,
) -> bool {
    let len = u32::from_le_bytes(map[at..at + 4].try_into().expect("4 bytes")) as usize;
    if len == 0 || len > payload_bytes_max {
        return false;
    }
    let payload_end = at + RECORD_HEADER_BYTES + len;
    let end = format::align_up(payload_end);
    if end > map.len() || map[payload_end..end].iter().any(|&b| b != 0) {
        return false;
    }
    let Some(index) = format::peek_index(map, at).filter(|i| (index_min..=index_max).contains(i))
    else {
        return false;
    };
    match map.get(end..end + RECORD_HEADER_BYTES) {
        None => true,
        Some(next) if next.iter().all(|&b| b == 0) => true,
        Some(_) => format::peek_index(map, end) == index.checked_add(1),
    }
}

#[allow(clippy::too_many_arguments)]
fn scan_segment(
    path: &Path,
    map: &[u8],
    first_index: Index,
    key: RecordKey,
    term_min: Term,
    is_last: bool,
    payload_bytes_max: usize,
    point_in_time: bool,
) -> Result<Scan, LogError> {
    let mut offsets = Vec::new();
    let mut term_runs: Vec<(Index, Term)> = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    let mut next = first_index;
    let mut last_term = term_min;
    let reason = loop {
        match read_frame(map, at, payload_bytes_max, key) {
            Ok(frame) if frame.index == next && frame.term >= last_term => {
                if term_runs.last().is_none_or(|&(_, t)| t != frame.term) {
                    term_runs.push((frame.index, frame.term));
                }
                offsets.push(at as u32);
                last_term = frame.term;
                next += 1;
                at = frame.end_offset;
            }
            Ok(frame) => {
                break format!(
                    "record of index {} term {} where index {next} with term >= {last_term} was expected",
                    frame.index, frame.term
                )
            }
            Err(RecordError::Zero | RecordError::Short) if is_all_zero(map.get(at..).unwrap_or(&[])) => {
                return Ok(Scan {
                    offsets,
                    term_runs,
                    end: at.min(map.len()),
                    garbage_end: None,
                    stale_tail: false,
                });
            }
            Err(e) => break e.describe().to_owned(),
        }
    };
    if !is_last {
        return Err(LogError::corrupt(
            path,
            at as u64,
            format!("{reason} in a sealed segment"),
        ));
    }
    // A recycled segment's data ends at a zeroed record header (every write puts one after
    // its last record) followed by the file's earlier records, which fail this segment's key.
    let zero_header = key != RecordKey::V1
        && is_all_zero(&map[at.min(map.len())..(at + RECORD_HEADER_BYTES).min(map.len())]);
    let valid = find_valid_record(map, at + RECORD_HEADER_BYTES, next, payload_bytes_max, key);
    if zero_header && valid.is_none() {
        return Ok(Scan {
            offsets,
            term_runs,
            end: at.min(map.len()),
            garbage_end: None,
            stale_tail: true,
        });
    }
    if let Some(valid) = valid {
        if !point_in_time {
            return Err(LogError::corrupt(
                path,
                at as u64,
                format!("{reason}, followed by a valid record at byte {valid}"),
            ));
        }
        warn!(
            file = %path.display(),
            offset = at,
            valid_record_at = valid,
            "bad record followed by a valid one in the last segment: cutting there (point-in-time recovery)"
        );
    }
    warn!(
        file = %path.display(),
        offset = at,
        reason = %reason,
        "cutting the torn tail of the last segment back to its last whole record"
    );
    Ok(Scan {
        offsets,
        term_runs,
        end: at,
        garbage_end: Some(nonzero_end(map).max(at)),
        stale_tail: false,
    })
}

impl Log {
    /// Opens the log in `dir`, creating it if needed, and recovers from any crash: a torn
    /// tail of the last segment is cut back (and logged), any other bad record fails the
    /// open with [`LogError::Corrupt`] and deletes nothing.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Log, LogError> {
        options.validate()?;
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let lock = lock_dir(dir)?;
        let dir_file = FileRef {
            path: dir.to_owned(),
            file: File::open(dir).map_err(|e| LogError::io(dir, e))?,
        };

        let mut segment_names = Vec::new();
        let mut unknown_files = Vec::new();
        let mut state_exists = false;
        for dirent in fs::read_dir(dir).map_err(|e| LogError::io(dir, e))? {
            let dirent = dirent.map_err(|e| LogError::io(dir, e))?;
            let name = dirent.file_name();
            match name.to_str() {
                Some(LOCK_FILE) => {}
                Some(n) if is_spare_name(n) || is_recycle_name(n) => {
                    // A spare segment being prepared when the last process stopped.
                    fs::remove_file(dirent.path()).map_err(|e| LogError::io(dirent.path(), e))?;
                }
                Some(STATE_FILE) => state_exists = true,
                Some(n) if parse_segment_name(n).is_some() => {
                    segment_names.push((parse_segment_name(n).expect("checked"), dirent.path()))
                }
                _ => {
                    warn!(file = %dirent.path().display(), "unknown file in the log directory; leaving it alone");
                    unknown_files.push(dirent.path());
                }
            }
        }
        segment_names.sort();

        let state_path = dir.join(STATE_FILE);
        let mut slots: Option<([u64; 2], u64, StateRecord)> = None;
        let state_file = if state_exists {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&state_path)
                .map_err(|e| LogError::io(&state_path, e))?;
            let mut image = vec![0u8; 2 * STATE_SLOT_BYTES];
            let len = read_up_to(&file, &mut image).map_err(|e| LogError::io(&state_path, e))?;
            image.truncate(len);
            let decoded: Vec<Option<(u64, StateRecord)>> = (0..2)
                .map(|s| decode_state_slot(image.get(s * STATE_SLOT_BYTES..).unwrap_or(&[])))
                .collect();
            let seqs = [0, 1].map(|s| decoded[s].as_ref().map_or(0, |d| d.0));
            let best = decoded.into_iter().flatten().max_by_key(|d| d.0);
            match best {
                Some((seq, record)) => slots = Some((seqs, seq, record)),
                None if segment_names.is_empty() => {
                    warn!(file = %state_path.display(), "state file holds no valid slot and there is no segment: initialising");
                }
                None => {
                    return Err(LogError::corrupt(
                        &state_path,
                        0,
                        "neither state slot is valid",
                    ));
                }
            }
            file
        } else {
            if let Some((_, path)) = segment_names.first() {
                return Err(LogError::corrupt(
                    path,
                    0,
                    format!(
                        "segments exist but the state file {} is missing",
                        state_path.display()
                    ),
                ));
            }
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&state_path)
                .map_err(|e| LogError::io(&state_path, e))?
        };
        let state_file = Arc::new(FileRef {
            path: state_path.clone(),
            file: state_file,
        });

        let fresh = slots.is_none();
        let (slot_seqs, state_seq, state) = slots.unwrap_or(([0, 0], 0, StateRecord::default()));
        let shared = Arc::new(Shared::new(
            dir_file,
            slot_seqs,
            state_seq,
            options.fault_hook.clone(),
        ));
        let mut log = Log {
            options,
            _lock: lock,
            shared,
            state_file,
            state_seq,
            state,
            segments: Vec::new(),
            term_runs: Vec::new(),
            last_index: 0,
            unknown_files,
            buf: Vec::new(),
            records: Vec::new(),
            preparer: None,
            recycled: Vec::new(),
            recycle_seq: 0,
            retiring: Vec::new(),
        };
        if fresh {
            preallocate(&log.shared, &log.state_file, 2 * STATE_SLOT_BYTES as u64)?;
            log.shared.mark_dir_dirty();
            log.write_state(true)?;
        }
        // What was read back may sit only in the page cache (the last process died before
        // syncing it) and the node will act on it: flush it before going on.
        log.shared.mark_state_dirty(&log.state_file);
        log.recover_segments(segment_names)?;
        if let Some(last) = log.segments.last() {
            log.shared.mark_dirty(&last.file);
        }
        log.shared.sync()?;
        Ok(log)
    }

    fn recover_segments(&mut self, names: Vec<(Index, PathBuf)>) -> Result<(), LogError> {
        let snapshot_index = self.state.snapshot.index;
        let payload_bytes_max = self.options.entry_bytes_max as usize;
        let count = names.len();
        type Opened = (SegmentHeader, Arc<FileRef>, Bytes, Arc<memmap2::Mmap>);
        let mut opened: Vec<Opened> = Vec::new();
        for (position, (name_index, path)) in names.into_iter().enumerate() {
            let is_last = position + 1 == count;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| LogError::io(&path, e))?;
            let len = file.metadata().map_err(|e| LogError::io(&path, e))?.len();
            let file = Arc::new(FileRef { path, file });
            if len == 0 {
                let empty = SegmentHeader::decode(&[]).expect_err("empty");
                if is_last {
                    warn!(file = %file.path.display(), "removing an empty last segment file");
                    fs::remove_file(&file.path).map_err(|e| LogError::io(&file.path, e))?;
                    self.shared.mark_dir_dirty();
                    continue;
                }
                return Err(LogError::corrupt(&file.path, 0, empty));
            }
            let (map, map_owner) = map_file(&file)?;
            let header = match SegmentHeader::decode(&map) {
                Ok(h) => h,
                Err(_) if is_last && is_all_zero(&map[..map.len().min(SEGMENT_HEADER_BYTES)]) => {
                    // Created but its header never reached the disk: nothing in it was synced.
                    warn!(file = %file.path.display(), "removing a last segment whose header was never written");
                    fs::remove_file(&file.path).map_err(|e| LogError::io(&file.path, e))?;
                    self.shared.mark_dir_dirty();
                    continue;
                }
                Err(reason) => return Err(LogError::corrupt(&file.path, 0, reason)),
            };
            if header.first_index != name_index {
                return Err(LogError::corrupt(
                    &file.path,
                    24,
                    format!(
                        "header says first index {} but the name says {name_index}",
                        header.first_index
                    ),
                ));
            }
            if header.epoch < self.state.epoch {
                info!(file = %file.path.display(), "removing a segment that predates the installed snapshot");
                fs::remove_file(&file.path).map_err(|e| LogError::io(&file.path, e))?;
                self.shared.mark_dir_dirty();
                continue;
            }
            if header.epoch > self.state.epoch {
                return Err(LogError::corrupt(
                    &file.path,
                    16,
                    format!(
                        "segment epoch {} is newer than the state's {}",
                        header.epoch, self.state.epoch
                    ),
                ));
            }
            opened.push((header, file, map, map_owner));
        }
        // Segments wholly covered by the snapshot are leftovers of a compaction that crashed
        // before its deletions reached the disk.
        while opened.len() > 1 && opened[1].0.first_index <= snapshot_index + 1 {
            let (_, file, _, _) = opened.remove(0);
            info!(file = %file.path.display(), "removing a segment covered by the snapshot");
            fs::remove_file(&file.path).map_err(|e| LogError::io(&file.path, e))?;
            self.shared.mark_dir_dirty();
        }

        let count = opened.len();
        let mut prev_last: Option<(Index, Term)> = None;
        for (position, (header, file, map, map_owner)) in opened.into_iter().enumerate() {
            let is_last = position + 1 == count;
            let first_index = header.first_index;
            let key = header.record_key();
            match prev_last {
                None if first_index > snapshot_index + 1 => {
                    return Err(LogError::corrupt(
                        &file.path,
                        0,
                        format!("log starts at {first_index}, leaving a gap after snapshot index {snapshot_index}"),
                    ));
                }
                Some((last, _)) if first_index != last + 1 => {
                    return Err(LogError::corrupt(
                        &file.path,
                        0,
                        format!(
                            "segment starts at {first_index} but the previous one ends at {last}"
                        ),
                    ));
                }
                _ => {}
            }
            let term_min = prev_last.map_or(0, |(_, t)| t);
            let scan = scan_segment(
                &file.path,
                &map,
                first_index,
                key,
                term_min,
                is_last,
                payload_bytes_max,
                self.options.recovery_point_in_time,
            )?;
            if let Some(garbage_end) = scan.garbage_end {
                write_zeroes(&self.shared, &file, scan.end as u64, garbage_end as u64)?;
                file.file
                    .sync_data()
                    .map_err(|e| LogError::io(&file.path, e))?;
            }
            let segment = Segment {
                first_index,
                key,
                capacity: map.len() as u64,
                map,
                map_owner,
                write_offset: scan.end as u64,
                stale_tail: scan.stale_tail,
                offsets: scan.offsets,
                file,
            };
            if segment.offsets.is_empty() && !is_last {
                return Err(LogError::corrupt(
                    &segment.file.path,
                    SEGMENT_HEADER_BYTES as u64,
                    "sealed segment holds no record",
                ));
            }
            if let Some(&(_, term)) = scan.term_runs.last() {
                prev_last = Some((segment.next_index() - 1, term));
            } else if prev_last.is_none() {
                prev_last = Some((first_index - 1, term_min));
            }
            for run in scan.term_runs {
                if self.term_runs.last().is_none_or(|&(_, t)| t != run.1) {
                    self.term_runs.push(run);
                }
            }
            self.segments.push(segment);
        }
        let last_entry = self
            .segments
            .last()
            .map_or(0, |s| s.next_index().saturating_sub(1));
        self.last_index = last_entry.max(snapshot_index);
        self.trim_term_runs();
        Ok(())
    }

    /// Drops term runs wholly before the first held entry.
    fn trim_term_runs(&mut self) {
        let first = self.first_index();
        let keep_from = self
            .term_runs
            .partition_point(|&(start, _)| start <= first)
            .saturating_sub(1);
        self.term_runs.drain(..keep_from);
    }

    /// A handle that syncs this log from another thread; see [`SyncHandle`] for the guarantee.
    pub fn sync_handle(&self) -> SyncHandle {
        SyncHandle {
            shared: self.shared.clone(),
        }
    }

    /// Makes everything appended and set so far durable: one `fdatasync` of each file
    /// written since the last sync (normally only the active segment, plus the state file if
    /// the hard state changed, plus the directory if a segment was created or deleted).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.shared.sync()?;
        self.retire_durable()
    }

    /// Syncs that flushed something since open, for tests and metrics.
    pub fn sync_count(&self) -> u64 {
        self.shared.sync_count()
    }

    /// Files in the directory the log does not know; reported at open, never deleted.
    pub fn unknown_files(&self) -> &[PathBuf] {
        &self.unknown_files
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Whether the background thread is idle (the next spare segment is ready, or none is
    /// needed). For benchmarks that want to time the steady state apart from the one-off
    /// zero-filling of the next segment.
    #[doc(hidden)]
    pub fn spare_idle(&self) -> bool {
        self.preparer.as_ref().is_none_or(Preparer::idle)
    }

    /// Number of segment files held.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn write_state(&mut self, force: bool) -> Result<(), LogError> {
        let seq = self.state_seq + 1;
        let image =
            encode_state_slot(seq, &self.state).map_err(|bytes| LogError::StateTooLarge {
                bytes,
                slot_bytes: STATE_SLOT_BYTES - format::STATE_SLOT_HEADER_BYTES,
            })?;
        debug_assert_eq!(decode_state_slot(&image).map(|d| d.0), Some(seq));
        let shared = &self.shared;
        let file = &self.state_file;
        shared
            .write_state_slot(file, seq, force, |slot| {
                shared.fault(FaultPoint::Write)?;
                file.file
                    .write_all_at(&image, (slot * STATE_SLOT_BYTES) as u64)
            })
            .map_err(|e| LogError::io(&file.path, e))?;
        self.state_seq = seq;
        Ok(())
    }

    /// Replaces the state record, restoring the old one in memory if the write fails.
    fn update_state(&mut self, update: impl FnOnce(&mut StateRecord)) -> Result<(), LogError> {
        let old = self.state.clone();
        update(&mut self.state);
        if self.state == old {
            return Ok(());
        }
        let new = &self.state;
        let commit_only = new.snapshot == old.snapshot
            && new.epoch == old.epoch
            && new.hard_state.term == old.hard_state.term
            && new.hard_state.vote == old.hard_state.vote;
        let force = self.options.sync_commit_index || !commit_only;
        self.write_state(force).inspect_err(|_| self.state = old)
    }

    /// Records the hard state; durable after the next sync. Unchanged values write nothing.
    pub fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), LogError> {
        self.shared.check_poisoned()?;
        self.update_state(|s| s.hard_state = hard_state)
    }

    /// Appends `entries` (consecutive indexes), first dropping every held entry at or after
    /// `entries[0].index`, as `MemLog::append` does. Entries already held with the same
    /// index and term are kept rather than rewritten (by the log matching property they are
    /// the same entries), so only a real conflict costs a truncation.
    ///
    /// Durable after the next sync. On error a prefix of `entries` (possibly empty) may have
    /// been appended: `last_index()` tells how far it got, and the log stays usable.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        self.shared.check_poisoned()?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let snapshot_index = self.state.snapshot.index;
        if first.index <= snapshot_index || first.index > self.last_index + 1 {
            return Err(LogError::Invalid(format!(
                "append at {} leaves a gap or rewrites the snapshot (snapshot {snapshot_index}, last {})",
                first.index, self.last_index
            )));
        }
        let mut term_prev = self
            .term(first.index - 1)
            .map_err(|e| LogError::Invalid(e.to_string()))?;
        for (i, e) in entries.iter().enumerate() {
            if e.index != first.index + i as Index || e.term < term_prev {
                return Err(LogError::Invalid(format!(
                    "entry {} term {} does not follow index {} term {term_prev}",
                    e.index,
                    e.term,
                    first.index + i as Index - 1
                )));
            }
            term_prev = e.term;
        }
        let same = entries
            .iter()
            .take_while(|e| e.index <= self.last_index && self.term(e.index) == Ok(e.term))
            .count();
        let cut = first.index + same as Index;
        if cut <= self.last_index {
            self.truncate_suffix(cut)?;
        }
        let entries = &entries[same..];
        if entries.is_empty() {
            return Ok(());
        }

        let mut buf = std::mem::take(&mut self.buf);
        let mut record_ends = std::mem::take(&mut self.records);
        buf.clear();
        record_ends.clear();
        let key = self.segments.last().map_or(RecordKey::default(), |s| s.key);
        let result = self
            .encode_batch(entries, &mut buf, &mut record_ends, key)
            .and_then(|any_borrowed| {
                self.write_batch(entries, &mut buf, &record_ends, key, any_borrowed)
            });
        // Keep big buffers from a one-off huge batch from pinning memory forever.
        if buf.capacity() > 64 << 20 {
            buf = Vec::new();
        }
        self.buf = buf;
        self.records = record_ends;
        result
    }

    /// Encodes `entries` into `buf` under `key`; returns whether any record borrows its
    /// command's bytes (is not wholly in `buf`).
    fn encode_batch(
        &self,
        entries: &[Entry],
        buf: &mut Vec<u8>,
        records: &mut Vec<(usize, RecordParts)>,
        key: RecordKey,
    ) -> Result<bool, LogError> {
        let any_borrowed = RecordEncoder::new(key)
            .encode_batch(
                entries,
                buf,
                records,
                VECTORED_MIN_BYTES,
                self.options.entry_bytes_max,
            )
            .map_err(|e| match e {
                BatchError::Encode { index, error } => {
                    LogError::Invalid(format!("entry {index} does not encode: {error}"))
                }
                BatchError::TooLarge {
                    index,
                    payload_bytes,
                } => LogError::EntryTooLarge {
                    index,
                    bytes: payload_bytes,
                    entry_bytes_max: self.options.entry_bytes_max,
                },
            })?;
        debug_assert!(
            records.iter().zip(entries).all(|(&(start, parts), e)| {
                let mut whole = buf[start..start + parts.head_bytes].to_vec();
                if let (true, EntryPayload::Command(data)) = (parts.borrowed, &e.payload) {
                    whole.extend_from_slice(data);
                    whole.resize(parts.record_bytes, 0);
                }
                read_frame(&whole, 0, parts.payload_bytes, key).is_ok_and(|f| f.index == e.index)
            }),
            "a record fails its own CRC before being written"
        );
        Ok(any_borrowed)
    }

    fn write_batch(
        &mut self,
        entries: &[Entry],
        buf: &mut [u8],
        records: &[(usize, RecordParts)],
        mut key: RecordKey,
        any_borrowed: bool,
    ) -> Result<(), LogError> {
        static MARKER: [u8; RECORD_HEADER_BYTES] = [0; RECORD_HEADER_BYTES];
        let mut done = 0;
        while done < entries.len() {
            let first_len = records[done].1.record_bytes as u64;
            let index = entries[done].index;
            let needs_roll = match self.segments.last() {
                None => true,
                Some(s) => {
                    s.next_index() != index
                        || s.write_offset + first_len > s.capacity
                        // An oversized segment holds its one big entry and nothing else.
                        || (s.capacity > self.options.segment_bytes && !s.offsets.is_empty())
                }
            };
            if needs_roll {
                self.roll(index, first_len)?;
            }
            let seg = self.segments.last_mut().expect("rolled");
            if seg.key != key {
                // The batch rolled over into a new segment, whose records carry its key.
                let encoder = RecordEncoder::new(seg.key);
                for (&(start, parts), entry) in records[done..].iter().zip(&entries[done..]) {
                    let data: &[u8] = match (&entry.payload, parts.borrowed) {
                        (EntryPayload::Command(data), true) => data,
                        _ => &[],
                    };
                    encoder.seal(&mut buf[start..start + parts.head_bytes], parts, data);
                }
                key = seg.key;
            }
            let room = if seg.capacity > self.options.segment_bytes {
                first_len
            } else {
                seg.capacity - seg.write_offset
            };
            // Records of this batch that fit in the active segment go in one write.
            let (end, run_bytes) = if any_borrowed {
                let mut end = done + 1;
                let mut run_bytes = first_len;
                while end < entries.len() && run_bytes + records[end].1.record_bytes as u64 <= room
                {
                    run_bytes += records[end].1.record_bytes as u64;
                    end += 1;
                }
                (end, run_bytes)
            } else {
                // Whole records lie back to back in `buf`: where they end there tells how
                // many fit, without a step per record.
                let from = records[done].0;
                let fit = records[done..].partition_point(|&(start, parts)| {
                    (start + parts.record_bytes - from) as u64 <= room
                });
                // The first record fits: `roll` made room for it.
                debug_assert!(fit >= 1, "the first record of a run does not fit");
                let fit = fit.max(1);
                let (start, parts) = records[done + fit - 1];
                (done + fit, (start + parts.record_bytes - from) as u64)
            };
            // A recycled segment keeps a zeroed record header after its last record: where
            // recovery sees its data end (see `scan_segment`).
            let marker = if seg.stale_tail {
                (seg.capacity - seg.write_offset - run_bytes).min(RECORD_HEADER_BYTES as u64)
                    as usize
            } else {
                0
            };
            let written = if !any_borrowed {
                // Whole records lie back to back in `buf`: one plain write.
                let from = records[done].0;
                let run = &buf[from..from + run_bytes as usize];
                if marker == 0 {
                    write_at(&self.shared, &seg.file, run, seg.write_offset)
                } else {
                    write_vectored_at(
                        &self.shared,
                        &seg.file,
                        &[run, &MARKER[..marker]],
                        seg.write_offset,
                    )
                }
            } else {
                let mut slices = record_slices(&entries[done..end], buf, &records[done..end]);
                if marker > 0 {
                    slices.push(&MARKER[..marker]);
                }
                write_vectored_at(&self.shared, &seg.file, &slices, seg.write_offset)
            };
            if let Err(e) = written {
                // Keep "zero past write_offset" true for recovery, if the disk lets us.
                let _ = write_zeroes(
                    &self.shared,
                    &seg.file,
                    seg.write_offset,
                    seg.write_offset + run_bytes,
                );
                return Err(e);
            }
            if any_borrowed {
                let mut at = seg.write_offset;
                seg.offsets
                    .extend(records[done..end].iter().map(|(_, parts)| {
                        let offset = at as u32;
                        at += parts.record_bytes as u64;
                        offset
                    }));
            } else {
                let (base, from) = (seg.write_offset as usize, records[done].0);
                seg.offsets.extend(
                    records[done..end]
                        .iter()
                        .map(|&(start, _)| (base + start - from) as u32),
                );
            }
            seg.write_offset += run_bytes;
            // Terms never decrease within a batch (checked by `append`): when the run's first
            // and last terms equal the last run's, no run starts in it.
            let run = &entries[done..end];
            let term_last = self.term_runs.last().map(|&(_, t)| t);
            if term_last != Some(run[0].term) || run[0].term != run[run.len() - 1].term {
                for entry in run {
                    if self.term_runs.last().is_none_or(|&(_, t)| t != entry.term) {
                        self.term_runs.push((entry.index, entry.term));
                    }
                }
            }
            self.last_index = entries[end - 1].index;
            self.shared.mark_dirty(&seg.file);
            done = end;
        }
        Ok(())
    }

    /// Seals the active segment (durably, so a bad record in a sealed segment is always
    /// corruption) and starts a new one at `first_index` with room for `record_bytes`.
    fn roll(&mut self, first_index: Index, record_bytes: u64) -> Result<(), LogError> {
        // Files of compactions that are durable by now can become this segment.
        self.retire_durable()?;
        if self.segments.last().is_some_and(|s| s.offsets.is_empty()) {
            // An empty segment must not be sealed: recovery treats that as a gap.
            let seg = self.segments.pop().expect("checked");
            fs::remove_file(&seg.file.path).map_err(|e| LogError::io(&seg.file.path, e))?;
            self.shared.mark_dir_dirty();
        }
        if let Some(active) = self.segments.last_mut() {
            if active.stale_tail {
                // A sealed segment is zero past its last record (recovery's rule for sealed
                // segments), so a recycled one's earlier records go before it is sealed:
                // normally less than one record's worth, since it rolls when full.
                write_zeroes(
                    &self.shared,
                    &active.file,
                    active.write_offset,
                    active.capacity,
                )?;
                active.stale_tail = false;
            }
            self.shared
                .fault(FaultPoint::Sync)
                .and_then(|()| active.file.file.sync_data())
                .map_err(|e| {
                    self.shared.poison();
                    LogError::io(&active.file.path, e)
                })?;
        }
        let capacity = self
            .options
            .segment_bytes
            .max((SEGMENT_HEADER_BYTES as u64 + record_bytes).div_ceil(PAGE_BYTES) * PAGE_BYTES);
        let path = self.shared_dir().join(segment_name(first_index));
        let normal = capacity == self.options.segment_bytes;
        let zero = normal && self.options.segment_zero_fill;
        let header = SegmentHeader::new(self.state.epoch, first_index);
        let header_bytes = header.encode();
        // A file freed by compaction first (its blocks are overwritten, not allocated anew,
        // and a zero-filled spare, if ready, stays ready), then the spare.
        let recycled = if normal {
            self.reuse_recycled(&path, &header_bytes)
        } else {
            None
        };
        let stale_tail = recycled.is_some();
        let spare = match (&recycled, &self.preparer) {
            (None, Some(preparer)) if normal => preparer.take(capacity),
            _ => None,
        };
        let renamed = spare.and_then(|spare| match fs::rename(&spare.path, &path) {
            Ok(()) => Some(spare.file),
            Err(e) => {
                warn!(error = %e, "cannot rename the spare segment into place; making one inline");
                let _ = fs::remove_file(&spare.path);
                None
            }
        });
        let (file, prepared) = match recycled.or(renamed) {
            Some(file) => (Arc::new(FileRef { path, file }), Ok(())),
            None => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| LogError::io(&path, e))?;
                let file = Arc::new(FileRef { path, file });
                // Zero-filling inline stalls the append for a whole segment's worth of
                // writes: do it only for the first segment a log opens (when nothing can
                // have been prepared yet). Later, a spare that is not ready means the log
                // fills segments faster than they can be zeroed, and the extent conversion
                // of a fallocated one costs less than that stall.
                let prepared = if zero && self.preparer.is_none() {
                    zero_fill(&self.shared, &file, capacity, &|| false)
                } else {
                    preallocate(&self.shared, &file, capacity)
                };
                (file, prepared)
            }
        };
        let created = prepared
            .and_then(|()| match stale_tail {
                // A reused file got its header before it was renamed into place.
                true => Ok(()),
                false => write_at(&self.shared, &file, &header_bytes, 0),
            })
            .and_then(|()| map_file(&file));
        let (map, map_owner) = match created {
            Ok(map) => map,
            Err(e) => {
                // Leave no half-made segment behind: it would have to be told apart on open.
                let _ = fs::remove_file(&file.path);
                return Err(e);
            }
        };
        self.shared.mark_dirty(&file);
        self.shared.mark_dir_dirty();
        if zero && self.recycled.is_empty() {
            let shared = &self.shared;
            let dir = self.shared_dir();
            self.preparer
                .get_or_insert_with(|| Preparer::new(shared.clone(), dir))
                .request(capacity);
        }
        self.segments.push(Segment {
            first_index,
            key: header.record_key(),
            file,
            capacity: map.len() as u64,
            map,
            map_owner,
            write_offset: SEGMENT_HEADER_BYTES as u64,
            stale_tail,
            offsets: Vec::new(),
        });
        Ok(())
    }

    /// A recycled file made into the segment at `path`, with `header` and a zeroed record
    /// header after it written and synced before the rename: a crash leaves either a
    /// `recycle-*` file (deleted on open) or a segment whose header matches its name and
    /// whose data ends at once. `None` if there is none, or it fails (then it is deleted).
    fn reuse_recycled(&mut self, path: &Path, header: &[u8]) -> Option<File> {
        while let Some(from) = self.recycled.pop() {
            let mut head = [0u8; SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES];
            head[..SEGMENT_HEADER_BYTES].copy_from_slice(header);
            let shared = &self.shared;
            let reused = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&from)
                .and_then(|file| {
                    shared.fault(FaultPoint::Write)?;
                    file.write_all_at(&head, 0)?;
                    shared.fault(FaultPoint::Sync)?;
                    file.sync_data()?;
                    fs::rename(&from, path)?;
                    Ok(file)
                });
            match reused {
                Ok(file) => return Some(file),
                Err(e) => {
                    warn!(file = %from.display(), error = %e, "cannot reuse a recycled segment file; deleting it");
                    let _ = fs::remove_file(&from);
                }
            }
        }
        None
    }

    /// Disposes of a segment that compaction freed: its file is kept for reuse by `roll`
    /// (no zero-filling, and its blocks are overwritten rather than allocated anew) when it
    /// has the normal size, the pool has room, and nobody holds bytes of its mapping (reads
    /// hand out slices of it, and a reused file is overwritten). Otherwise it is deleted.
    fn retire(&mut self, seg: Segment) -> Result<(), LogError> {
        let Segment {
            file,
            map,
            map_owner,
            capacity,
            ..
        } = seg;
        drop(map);
        let reusable = self.options.segment_reuse
            && capacity == self.options.segment_bytes
            && self.recycled.len() < RECYCLED_FILES_MAX
            && Arc::strong_count(&map_owner) == 1;
        drop(map_owner);
        self.shared.mark_dir_dirty();
        if reusable {
            let to = self.shared_dir().join(format!(
                "{RECYCLE_PREFIX}{}{RECYCLE_SUFFIX}",
                self.recycle_seq
            ));
            self.recycle_seq += 1;
            match fs::rename(&file.path, &to) {
                Ok(()) => {
                    self.recycled.push(to);
                    return Ok(());
                }
                Err(e) => {
                    warn!(file = %file.path.display(), error = %e, "cannot keep a compacted segment for reuse; deleting it")
                }
            }
        }
        fs::remove_file(&file.path).map_err(|e| LogError::io(&file.path, e))
    }

    /// Retires every segment dropped by a compaction whose state write is durable by now.
    /// Nothing here syncs: the directory change is made durable by the next sync (until
    /// then a crash may bring a covered file back, which open removes).
    fn retire_durable(&mut self) -> Result<(), LogError> {
        let durable = self.shared.durable_state_seq();
        let ready = self
            .retiring
            .iter()
            .take_while(|(seq, _)| *seq <= durable)
            .count();
        for (_, seg) in self.retiring.drain(..ready).collect::<Vec<_>>() {
            self.retire(seg)?;
        }
        Ok(())
    }

    /// Files kept for reuse, for tests.
    #[doc(hidden)]
    pub fn recycled_count(&self) -> usize {
        self.recycled.len()
    }

    /// Segment files dropped by compaction and still on disk because the compaction is not
    /// durable yet, for tests.
    #[doc(hidden)]
    pub fn retiring_count(&self) -> usize {
        self.retiring.len()
    }

    fn shared_dir(&self) -> PathBuf {
        self.state_file
            .path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default()
    }

    /// Drops every entry at or after `index`. Durable when it returns: it syncs, because a
    /// later hard state (say a commit index) may reach the disk before the next sync's log
    /// data, and must never meet the stale entries again.
    pub fn truncate_suffix(&mut self, index: Index) -> Result<(), LogError> {
        self.shared.check_poisoned()?;
        if index <= self.state.snapshot.index {
            return Err(LogError::Invalid(format!(
                "cannot truncate at {index}, inside the snapshot ending at {}",
                self.state.snapshot.index
            )));
        }
        if index > self.last_index {
            return Ok(());
        }
        let position = self.segment_position(index).ok_or_else(|| {
            LogError::Invalid(format!("index {index} is not held in any segment"))
        })?;
        let result = self
            .truncate_from(position, index)
            .and_then(|()| self.shared.sync());
        if result.is_err() {
            // Memory and disk may now disagree on where the log ends.
            self.shared.poison();
        }
        result
    }

    fn truncate_from(&mut self, position: usize, index: Index) -> Result<(), LogError> {
        while self.segments.len() > position + 1 {
            let seg = self.segments.pop().expect("non-empty");
            fs::remove_file(&seg.file.path).map_err(|e| LogError::io(&seg.file.path, e))?;
            self.shared.mark_dir_dirty();
        }
        let seg = self.segments.last_mut().expect("position is held");
        let rel = (index - seg.first_index) as usize;
        let cut = u64::from(seg.offsets[rel]);
        write_zeroes(&self.shared, &seg.file, cut, seg.write_offset)?;
        seg.offsets.truncate(rel);
        seg.write_offset = cut;
        self.shared.mark_dirty(&seg.file);
        self.last_index = index - 1;
        let keep = self.term_runs.partition_point(|&(start, _)| start < index);
        self.term_runs.truncate(keep);
        Ok(())
    }

    /// Records that a snapshot covers everything up to `meta.index` and drops those entries;
    /// whole segments are deleted (or kept for reuse), a partly covered one is kept.
    /// `meta.index` must be held with term `meta.term`.
    ///
    /// It does not sync: the compaction is durable after the next sync, like an append, and
    /// the files of the dropped segments stay on disk until then (they are deleted or
    /// recycled by the first `sync`, compaction or segment roll after it), so a crash never
    /// leaves a gap. The cost on the caller is one state-slot write.
    pub fn compact(&mut self, meta: SnapshotMeta) -> Result<(), LogError> {
        self.shared.check_poisoned()?;
        if meta.index <= self.state.snapshot.index {
            return Ok(());
        }
        if meta.index > self.last_index {
            return Err(LogError::Invalid(format!(
                "compaction to {} beyond the last entry {}",
                meta.index, self.last_index
            )));
        }
        let held = self
            .term(meta.index)
            .map_err(|e| LogError::Invalid(e.to_string()))?;
        if held != meta.term {
            return Err(LogError::Invalid(format!(
                "snapshot term {} disagrees with the log's term {held} at {}",
                meta.term, meta.index
            )));
        }
        let index = meta.index;
        self.update_state(|s| s.snapshot = meta)?;
        // Every later state record carries this snapshot too, so once any state at or past
        // this sequence number is durable, so is the compaction.
        let seq = self.state_seq;
        let covered = self
            .segments
            .iter()
            .skip(1)
            .take_while(|s| s.first_index <= index + 1)
            .count();
        for seg in self.segments.drain(..covered) {
            self.retiring.push((seq, seg));
        }
        self.trim_term_runs();
        // Those of earlier compactions may be durable by now.
        self.retire_durable()
    }

    /// Replaces the whole log by a snapshot received from a leader: every entry is dropped
    /// and `meta` recorded; the commit index rises to at least `meta.index`. Durable when it
    /// returns. Old segments are invalidated by bumping the epoch before they are deleted, so
    /// a crash in between cannot resurrect them.
    pub fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), LogError> {
        self.shared.check_poisoned()?;
        let index = meta.index;
        self.update_state(|s| {
            s.hard_state.commit = s.hard_state.commit.max(meta.index);
            s.snapshot = meta;
            s.epoch += 1;
        })?;
        self.shared.sync()?;
        self.term_runs.clear();
        self.last_index = index;
        while let Some(seg) = self.segments.pop() {
            self.shared.mark_dir_dirty();
            fs::remove_file(&seg.file.path).map_err(|e| LogError::io(&seg.file.path, e))?;
        }
        // The synced state covers every earlier compaction too.
        self.retire_durable()
    }

    /// Position in `segments` of the segment holding `index`.
    fn segment_position(&self, index: Index) -> Option<usize> {
        let position = self
            .segments
            .partition_point(|s| s.first_index <= index)
            .checked_sub(1)?;
        (index < self.segments[position].next_index()).then_some(position)
    }

    fn read_entry(&self, index: Index) -> Result<Entry, StorageError> {
        let position = self
            .segment_position(index)
            .ok_or_else(|| StorageError::Io(format!("index {index} is not in any segment")))?;
        let seg = &self.segments[position];
        let offset = seg.offsets[(index - seg.first_index) as usize] as usize;
        let bad = |reason: &str| {
            StorageError::Io(format!(
                "{} at byte {offset}: {reason}",
                seg.file.path.display()
            ))
        };
        let frame = read_frame(
            &seg.map,
            offset,
            self.options.entry_bytes_max as usize,
            seg.key,
        )
        .map_err(|e| bad(e.describe()))?;
        if frame.index != index {
            return Err(bad("record holds another index"));
        }
        let payload = &seg.map[frame.payload_offset..frame.payload_offset + frame.payload_bytes];
        format::decode_entry(payload, Some(&seg.map)).map_err(|e| bad(e.describe()))
    }
}

fn read_up_to(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl LogStore for Log {
    fn hard_state(&self) -> HardState {
        self.state.hard_state
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.state.snapshot.clone()
    }

    fn first_index(&self) -> Index {
        self.state.snapshot.index + 1
    }

    fn last_index(&self) -> Index {
        self.last_index
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        let snapshot = &self.state.snapshot;
        if index == snapshot.index {
            return Ok(snapshot.term);
        }
        if index < snapshot.index {
            return Err(StorageError::Compacted);
        }
        if index > self.last_index {
            return Err(StorageError::Unavailable);
        }
        let run = self.term_runs.partition_point(|&(start, _)| start <= index);
        run.checked_sub(1)
            .map(|r| self.term_runs[r].1)
            .ok_or_else(|| StorageError::Io(format!("no term known for index {index}")))
    }

    fn entries(
        &self,
        low: Index,
        high: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        if low <= self.state.snapshot.index {
            return Err(StorageError::Compacted);
        }
        if high > self.last_index + 1 {
            return Err(StorageError::Unavailable);
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for index in low..high {
            let entry = self.read_entry(index)?;
            bytes = bytes.saturating_add(entry.size_bytes());
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // Stop the spare thread before the lock is released, so that no other process can
        // open the directory while it still writes there.
        self.preparer.take();
        for path in &self.recycled {
            let _ = fs::remove_file(path);
        }
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.shared_dir())
            .field("snapshot_index", &self.state.snapshot.index)
            .field("last_index", &self.last_index)
            .field("segments", &self.segments.len())
            .finish()
    }
}
