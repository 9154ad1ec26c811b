//! The write path: appends, segment rolls, reuse of segment files freed by compaction.

use super::*;

impl Log {
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
