//! Files of a log directory: names, the lock, mappings, positioned writes.

use super::*;

pub(super) fn segment_name(first_index: Index) -> String {
    format!(
        "{first_index:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_NAME_DIGITS
    )
}

pub(super) fn parse_segment_name(name: &str) -> Option<Index> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(super) fn is_all_zero(bytes: &[u8]) -> bool {
    // OR-folding fixed chunks vectorises; `iter().all` would not.
    bytes
        .chunks(4096)
        .all(|chunk| chunk.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Offset just past the last non-zero byte of `bytes` (0 if all zero).
pub(super) fn nonzero_end(bytes: &[u8]) -> usize {
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
pub(super) struct MapOwner(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

pub(super) fn map_file(file: &FileRef) -> Result<(Bytes, Arc<memmap2::Mmap>), LogError> {
    // SAFETY: the mapping is read-only and the log never shrinks a mapped file, so every
    // mapped page stays backed. Other processes are kept out by the lock file; a process that
    // ignores it and truncates a segment could make reads fault, which no check can prevent.
    let map = unsafe { memmap2::MmapOptions::new().map(&file.file) }
        .map_err(|e| LogError::io(&file.path, e))?;
    let owner = Arc::new(map);
    Ok((Bytes::from_owner(MapOwner(owner.clone())), owner))
}

pub(crate) fn lock_dir(dir: &Path) -> Result<File, LogError> {
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

pub(super) fn write_at(
    shared: &Shared,
    file: &FileRef,
    data: &[u8],
    offset: u64,
) -> Result<(), LogError> {
    shared
        .fault(FaultPoint::Write)
        .and_then(|()| file.file.write_all_at(data, offset))
        .map_err(|e| LogError::io(&file.path, e))
}

/// The byte slices making up the laid-out `entries` in a batch, in order: heads from `buf`
/// (merged when adjacent) and borrowed command bytes.
pub(super) fn record_slices<'a>(
    entries: &'a [Entry],
    buf: &'a [u8],
    parts: &[(usize, EntryParts)],
) -> Vec<&'a [u8]> {
    let mut slices: Vec<&'a [u8]> = Vec::with_capacity(2 * parts.len());
    let mut pending: Option<(usize, usize)> = None;
    for (entry, &(start, p)) in entries.iter().zip(parts) {
        let head = (start, start + p.head_bytes);
        pending = match pending {
            Some((a, b)) if b == head.0 => Some((a, head.1)),
            Some((a, b)) => {
                slices.push(&buf[a..b]);
                Some(head)
            }
            None => Some(head),
        };
        if p.borrowed {
            let (a, b) = pending.take().expect("set above");
            slices.push(&buf[a..b]);
            slices.push(format::borrowed_data(entry, p));
        }
    }
    if let Some((a, b)) = pending {
        slices.push(&buf[a..b]);
    }
    slices
}

/// `pwritev` of all of `slices` at `offset`, in calls of at most `IOV_MAX` slices.
pub(super) fn write_vectored_at(
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

pub(super) fn read_up_to(file: &File, buf: &mut [u8]) -> io::Result<usize> {
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
