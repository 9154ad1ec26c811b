//! Open and recovery: the scan of each segment, torn tails cut, corruption reported.

use super::*;

/// What scanning one segment found.
pub(super) struct Scan {
    offsets: Vec<u32>,
    /// `(first index, term)` runs of the segment's entries.
    term_runs: Vec<(Index, Term)>,
    batches: Vec<BatchSpan>,
    /// Where the written data ends (after a cut, where the cut is).
    end: usize,
    /// A torn tail was found at `end`; bytes up to `garbage_end` must be erased.
    garbage_end: Option<usize>,
    /// The data ends at end-marker zeroes followed by bytes that are not batches of this
    /// segment: a recycled file's earlier life.
    stale_tail: bool,
}

/// Looks for a valid batch (under `key`) at an aligned offset at or after `from` whose
/// first index is at least `index_min`. Such a batch after a bad one means the bad one is
/// not a torn tail.
///
/// A reused segment's tail can be tens of MiB of earlier batches and payload bytes, every
/// aligned word a candidate length: before a candidate's CRC is computed (over up to the
/// rest of the segment), it must look like part of a run of this log's batches.
pub(super) fn find_valid_record(
    map: &[u8],
    from: usize,
    index_min: Index,
    entry_bytes_max: usize,
    key: BatchKey,
) -> Option<usize> {
    // Batches written after `index_min - 1` in this segment are at least 8 bytes each, so
    // no valid one can hold an index beyond this.
    let index_max = index_min.saturating_add((map.len() / format::BATCH_ALIGN_BYTES) as Index);
    let (mut offsets, mut runs) = (Vec::new(), Vec::new());
    let mut at = format::align_up(from);
    while at + format::BATCH_HEADER_BYTES <= map.len() {
        if plausible_record(map, at, index_min, index_max) {
            offsets.clear();
            runs.clear();
            if let Ok(frame) = read_batch(map, at, entry_bytes_max, key, &mut offsets, &mut runs) {
                if frame.first_index >= index_min {
                    return Some(at);
                }
            }
        }
        at += format::BATCH_ALIGN_BYTES;
    }
    None
}

/// Cheap checks, without the CRC: a length that fits, zero padding, a first index in range,
/// and after it either end-marker zeroes, the end of the file, or a batch claiming an index
/// the way a run of real batches continues (the next index, or one inside this batch for a
/// truncation record); stale batches of a reused file hold lower indexes and fail the range.
pub(super) fn plausible_record(map: &[u8], at: usize, index_min: Index, index_max: Index) -> bool {
    let Some((total_len, first_index, count)) = format::peek_batch(map, at) else {
        return false;
    };
    if total_len < format::BATCH_HEADER_BYTES || !(index_min..=index_max).contains(&first_index) {
        return false;
    }
    let end = at.saturating_add(format::align_up(total_len));
    if end > map.len() || map[at + total_len..end].iter().any(|&b| b != 0) {
        return false;
    }
    let next_min = first_index + u64::from(count > 0);
    let next_max = first_index.saturating_add(u64::from(count));
    match map.get(end..end + END_MARKER_BYTES) {
        None => true,
        Some(next) if next.iter().all(|&b| b == 0) => true,
        Some(_) => format::peek_batch(map, end)
            .is_some_and(|(_, next, _)| (next_min..=next_max).contains(&next)),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn scan_segment(
    path: &Path,
    map: &[u8],
    first_index: Index,
    key: BatchKey,
    term_min: Term,
    is_last: bool,
    entry_bytes_max: usize,
    point_in_time: bool,
) -> Result<Scan, LogError> {
    let mut offsets = Vec::new();
    let mut term_runs: Vec<(Index, Term)> = Vec::new();
    let mut batches: Vec<BatchSpan> = Vec::new();
    let mut batch_runs: Vec<(Index, Term)> = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    let mut next = first_index;
    let mut last_term = term_min;
    // The last record read was a batch of entries (a truncation record may follow only one).
    let mut after_batch = false;
    let reason = loop {
        batch_runs.clear();
        let held = offsets.len();
        match read_batch(map, at, entry_bytes_max, key, &mut offsets, &mut batch_runs) {
            Ok(frame) if frame.count == 0 => {
                // A truncation record: right after the batch holding its index, strictly
                // inside it (see `Log::truncate_suffix`).
                let index = frame.first_index;
                let inside = after_batch
                    && batches
                        .last()
                        .is_some_and(|b| b.first_index < index && index < next);
                if !inside {
                    break format!(
                        "truncation record at index {index} where none can be (entries {first_index}..{next})"
                    );
                }
                offsets.truncate((index - first_index) as usize);
                let keep = term_runs.partition_point(|&(start, _)| start < index);
                term_runs.truncate(keep);
                last_term = term_runs.last().map_or(term_min, |&(_, t)| t);
                next = index;
                after_batch = false;
                at = frame.end_offset;
            }
            Ok(frame) if frame.first_index == next && batch_runs[0].1 >= last_term => {
                for &run in &batch_runs {
                    if term_runs.last().is_none_or(|&(_, t)| t != run.1) {
                        term_runs.push(run);
                    }
                }
                batches.push(BatchSpan {
                    first_index: next,
                    start: at as u32,
                    end: frame.end_offset as u32,
                });
                last_term = batch_runs.last().expect("a batch has a run").1;
                next += u64::from(frame.count);
                after_batch = true;
                at = frame.end_offset;
            }
            Ok(frame) => {
                offsets.truncate(held);
                break format!(
                    "batch of index {} term {} where index {next} with term >= {last_term} was expected",
                    frame.first_index, batch_runs[0].1
                );
            }
            Err(RecordError::Zero | RecordError::Short)
                if is_all_zero(map.get(at..).unwrap_or(&[])) =>
            {
                return Ok(Scan {
                    offsets,
                    term_runs,
                    batches,
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
    // A recycled segment's data ends at end-marker zeroes (every write puts them after its
    // last batch) followed by the file's earlier batches, which fail this segment's key.
    let zero_header = is_all_zero(&map[at.min(map.len())..(at + END_MARKER_BYTES).min(map.len())]);
    let valid = find_valid_record(map, at + END_MARKER_BYTES, next, entry_bytes_max, key);
    if zero_header && valid.is_none() {
        return Ok(Scan {
            offsets,
            term_runs,
            batches,
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
                format!("{reason}, followed by a valid batch at byte {valid}"),
            ));
        }
        warn!(
            file = %path.display(),
            offset = at,
            valid_batch_at = valid,
            "bad batch followed by a valid one in the last segment: cutting there (point-in-time recovery)"
        );
    }
    warn!(
        file = %path.display(),
        offset = at,
        reason = %reason,
        "cutting the torn tail of the last segment back to its last whole batch"
    );
    Ok(Scan {
        offsets,
        term_runs,
        batches,
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
            parts: Vec::new(),
            head: Vec::new(),
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
        let entry_bytes_max = self.options.entry_bytes_max as usize;
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
            let key = header.batch_key();
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
                entry_bytes_max,
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
                batches: scan.batches,
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
}
