//! The write path: appends as batch records, segment rolls, reuse of segment files freed by
//! compaction.

use super::*;

impl Log {
    /// Appends `entries` (consecutive indexes), first dropping every held entry at or after
    /// `entries[0].index`, as `MemLog::append` does. Entries already held with the same
    /// index and term are kept rather than rewritten (by the log matching property they are
    /// the same entries), so only a real conflict costs a truncation.
    ///
    /// The entries go into one batch record (one CRC), or one per segment when they do not
    /// fit the active segment's remaining room.
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
        let mut parts = std::mem::take(&mut self.parts);
        buf.clear();
        parts.clear();
        let result = self
            .lay_out(entries, &mut buf, &mut parts)
            .and_then(|any_borrowed| self.write_batches(entries, &buf, &parts, any_borrowed));
        // Keep big buffers from a one-off huge batch from pinning memory forever.
        if buf.capacity() > 64 << 20 {
            buf = Vec::new();
        }
        self.buf = buf;
        self.parts = parts;
        result
    }

    /// Lays `entries` out into `buf` (without batch headers); returns whether any entry
    /// borrows its command's bytes (is not wholly in `buf`).
    fn lay_out(
        &self,
        entries: &[Entry],
        buf: &mut Vec<u8>,
        parts: &mut Vec<(usize, EntryParts)>,
    ) -> Result<bool, LogError> {
        format::lay_out_entries(
            entries,
            buf,
            parts,
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
        })
    }

    /// Writes the laid-out entries as batch records: as many as fit the active segment's
    /// room in one batch, the rest in new segments.
    fn write_batches(
        &mut self,
        entries: &[Entry],
        buf: &[u8],
        parts: &[(usize, EntryParts)],
        any_borrowed: bool,
    ) -> Result<(), LogError> {
        static ZEROES: [u8; format::BATCH_ALIGN_BYTES + END_MARKER_BYTES] =
            [0; format::BATCH_ALIGN_BYTES + END_MARKER_BYTES];
        let mut head = std::mem::take(&mut self.head);
        let mut done = 0;
        let mut result = Ok(());
        while done < entries.len() {
            let index = entries[done].index;
            // Every segment keeps room for a truncation record after its last batch.
            let single =
                (format::batch_bytes(1, parts[done].1.entry_bytes) + TRUNCATION_BYTES) as u64;
            let needs_roll = match self.segments.last() {
                None => true,
                Some(s) => {
                    s.next_index() != index
                        || s.write_offset + single > s.capacity
                        // An oversized segment holds its one big entry and nothing else.
                        || (s.capacity > self.options.segment_bytes && !s.offsets.is_empty())
                }
            };
            if needs_roll {
                if let Err(e) = self.roll(index, single) {
                    result = Err(e);
                    break;
                }
            }
            let seg = self.segments.last_mut().expect("rolled");
            let room = (seg.capacity - seg.write_offset) as usize - TRUNCATION_BYTES;
            // The entries that fit, counting the term runs of all that are left (at least
            // those of the batch; usually there is one): the first one fits, `roll` made
            // room for it as a batch of its own.
            let runs_max = format::term_run_count(&entries[done..]);
            let mut end = done + 1;
            let mut entry_bytes = parts[done].1.entry_bytes;
            while end < entries.len()
                && format::batch_bytes(runs_max, entry_bytes + parts[end].1.entry_bytes) <= room
            {
                entry_bytes += parts[end].1.entry_bytes;
                end += 1;
            }
            let batch = &entries[done..end];
            head.clear();
            let head_bytes = format::put_batch_head(&mut head, batch, entry_bytes);
            let batch_bytes = format::align_up(head_bytes + entry_bytes);
            debug_assert!(batch_bytes <= room, "a batch overruns its segment");
            let pad = batch_bytes - head_bytes - entry_bytes;
            // A recycled segment keeps zeroes after its last batch: where recovery sees its
            // data end (see `scan_segment`).
            let marker = if seg.stale_tail {
                (room - batch_bytes + TRUNCATION_BYTES).min(END_MARKER_BYTES)
            } else {
                0
            };
            let mut slices: Vec<&[u8]> = Vec::with_capacity(if any_borrowed {
                3 * (end - done) + 2
            } else {
                3
            });
            slices.push(&[]);
            if any_borrowed {
                slices.extend(record_slices(batch, buf, &parts[done..end]));
            } else {
                // Whole entries lie back to back in `buf`.
                let from = parts[done].0;
                slices.push(&buf[from..from + entry_bytes]);
            }
            format::seal_batch(&mut head, seg.key, &slices[1..]);
            slices[0] = &head;
            if pad + marker > 0 {
                slices.push(&ZEROES[..pad + marker]);
            }
            if let Err(e) = write_vectored_at(&self.shared, &seg.file, &slices, seg.write_offset) {
                // Keep "zero past write_offset" true for recovery, if the disk lets us.
                let _ = write_zeroes(
                    &self.shared,
                    &seg.file,
                    seg.write_offset,
                    seg.write_offset + batch_bytes as u64,
                );
                result = Err(e);
                break;
            }
            let start = seg.write_offset;
            let mut at = start + head_bytes as u64;
            seg.offsets.extend(parts[done..end].iter().map(|(_, p)| {
                let offset = at as u32;
                at += p.entry_bytes as u64;
                offset
            }));
            seg.write_offset += batch_bytes as u64;
            seg.batches.push(BatchSpan {
                first_index: index,
                start: start as u32,
                end: seg.write_offset as u32,
            });
            debug_assert!(
                {
                    let (mut offsets, mut runs) = (Vec::new(), Vec::new());
                    read_batch(
                        &seg.map,
                        start as usize,
                        self.options.entry_bytes_max as usize,
                        seg.key,
                        &mut offsets,
                        &mut runs,
                    )
                    .is_ok_and(|f| {
                        f.first_index == index
                            && offsets[..] == seg.offsets[seg.offsets.len() - batch.len()..]
                    })
                },
                "a batch just written does not read back"
            );
            // Terms never decrease within a batch (checked by `append`): when the batch's
            // first and last terms equal the last run's, no run starts in it.
            let term_last = self.term_runs.last().map(|&(_, t)| t);
            if term_last != Some(batch[0].term) || batch[0].term != batch[batch.len() - 1].term {
                for entry in batch {
                    if self.term_runs.last().is_none_or(|&(_, t)| t != entry.term) {
                        self.term_runs.push((entry.index, entry.term));
                    }
                }
            }
            self.last_index = entries[end - 1].index;
            self.shared.mark_dirty(&seg.file);
            done = end;
        }
        self.head = head;
        result
    }

    /// Seals the active segment (durably, so a bad batch in a sealed segment is always
    /// corruption) and starts a new one at `first_index` with room for `batch_bytes`.
    fn roll(&mut self, first_index: Index, batch_bytes: u64) -> Result<(), LogError> {
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
            .max((SEGMENT_HEADER_BYTES as u64 + batch_bytes).div_ceil(PAGE_BYTES) * PAGE_BYTES);
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
            key: header.batch_key(),
            file,
            capacity: map.len() as u64,
            map,
            map_owner,
            write_offset: SEGMENT_HEADER_BYTES as u64,
            stale_tail,
            offsets: Vec::new(),
            batches: Vec::new(),
        });
        Ok(())
    }

    /// A recycled file made into the segment at `path`, with `header` and end-marker
    /// zeroes after it written and synced before the rename: a crash leaves either a
    /// `recycle-*` file (deleted on open) or a segment whose header matches its name and
    /// whose data ends at once. `None` if there is none, or it fails (then it is deleted).
    fn reuse_recycled(&mut self, path: &Path, header: &[u8]) -> Option<File> {
        while let Some(from) = self.recycled.pop() {
            let mut head = [0u8; SEGMENT_HEADER_BYTES + END_MARKER_BYTES];
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
    pub(super) fn retire_durable(&mut self) -> Result<(), LogError> {
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
}
