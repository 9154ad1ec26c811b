//! Snapshot files end to end: round trips, corruption, truncation, retention, recovery of
//! the directory, transfer and assembly, anti-entropy over real state machines.
//!
//! Kept in one file although over ~800 lines: every test builds its state with the example
//! machine included below by `#[path]`, whose own unit tests would run once more in each
//! test binary if this file were split into several.

/// The example key-value state machine (`examples/kv`), the state these tests write; its
/// own unit tests run here too.
#[path = "../examples/kv/machine.rs"]
mod kv;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use kv::{KvCommand, KvStateMachine};
use proptest::prelude::*;
use raft_core::{Index, Membership, SnapshotMeta};
use raft_snapshot::{
    compare_digests, restore_state_machine, CorruptKind, DigestReport, DigestVerdict,
    SnapshotChunks, SnapshotError, SnapshotReader, SnapshotSource, SnapshotStore,
    SnapshotStoreConfig, StateDigest, StateMachine, TransferChunk,
};

fn config(chunk_bytes: u32, snapshots_kept_max: usize) -> SnapshotStoreConfig {
    SnapshotStoreConfig {
        snapshots_kept_max,
        chunk_bytes,
        ..Default::default()
    }
}

fn meta(index: Index) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term: index / 10 + 1,
        membership: Membership {
            voters: [1, 2, 3].into(),
            voters_outgoing: Default::default(),
            learners: [4].into(),
        },
    }
}

/// A KV state after `entries` deterministic puts and deletes.
fn kv_state(entries: u64, seed: u64) -> KvStateMachine {
    let mut sm = KvStateMachine::new();
    for i in 1..=entries {
        let key = format!("key-{}", (i * 7 + seed) % 50).into_bytes();
        let command = if i % 5 == 0 {
            KvCommand::Delete { key }
        } else {
            KvCommand::Put {
                key,
                value: format!("value-{i}-{seed}")
                    .repeat((i % 4) as usize)
                    .into_bytes(),
            }
        };
        sm.apply(i, &command.encode());
    }
    sm
}

fn corrupt_path(err: &SnapshotError) -> (&Path, u64, &CorruptKind) {
    match err {
        SnapshotError::Corrupt { path, offset, kind } => (path, *offset, kind),
        other => panic!("expected a corrupt-snapshot error, got {other}"),
    }
}

#[test]
fn snapshot_then_restore_gives_equal_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (store, report) = SnapshotStore::open(dir.path(), config(64, 3)).unwrap();
    assert_eq!(report, Default::default());
    let sm = kv_state(200, 1);
    let written = store.write_snapshot(meta(200), &sm.freeze()).unwrap();

    let latest = store.open_latest().unwrap();
    assert!(latest.rejected.is_empty());
    let reader = latest.snapshot.unwrap();
    assert_eq!(reader.path(), written.path);
    assert_eq!(reader.header().meta, meta(200));
    let mut restored = KvStateMachine::new();
    let header = restore_state_machine(reader, &mut restored).unwrap();
    assert_eq!(restored.digest(), sm.digest());
    assert_eq!(header.state_digest, sm.digest());
    assert_eq!(restored.applied_index(), 200);
    assert_eq!(restored.len(), sm.len());
}

#[test]
fn empty_store_and_empty_body() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = SnapshotStore::open(dir.path(), config(64, 3)).unwrap();
    assert!(store.open_latest().unwrap().snapshot.is_none());
    let writer = store.begin(meta(1)).unwrap();
    writer.finish(StateDigest(9)).unwrap();
    let mut reader = store.open_latest().unwrap().snapshot.unwrap();
    assert_eq!(reader.header().body_bytes, 0);
    assert!(reader.next_chunk().unwrap().is_none());
}

#[test]
fn state_digest_mismatch_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = SnapshotStore::open(dir.path(), config(64, 3)).unwrap();
    let sm = kv_state(20, 1);
    let mut writer = store.begin(meta(20)).unwrap();
    sm.snapshot(&mut writer).unwrap();
    writer.finish(StateDigest(12345)).unwrap();
    let reader = store.open_latest().unwrap().snapshot.unwrap();
    let err = restore_state_machine(reader, &mut KvStateMachine::new()).unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotError::StateDigestMismatch {
                expected: StateDigest(12345),
                ..
            }
        ),
        "{err}"
    );
}

/// The file offset of the structure holding byte `at`: the header (0) or a chunk's frame.
fn structure_offset(at: u64, header_bytes: u64, chunk_bytes: u64) -> u64 {
    if at < header_bytes {
        0
    } else {
        header_bytes + (at - header_bytes) / (8 + chunk_bytes) * (8 + chunk_bytes)
    }
}

#[test]
fn every_flipped_byte_is_rejected_with_path_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let chunk_bytes = 48;
    let (store, _) = SnapshotStore::open(dir.path(), config(chunk_bytes, 3)).unwrap();
    let file = store
        .write_snapshot(meta(30), &kv_state(30, 2).freeze())
        .unwrap();
    let pristine = fs::read(&file.path).unwrap();
    let header_bytes = SnapshotReader::open(&file.path)
        .unwrap()
        .header()
        .encoded_bytes() as u64;
    let probe = dir.path().join("probe");
    for at in 0..pristine.len() {
        let mut bytes = pristine.clone();
        bytes[at] ^= 1 << (at % 8);
        fs::write(&probe, &bytes).unwrap();
        let err = SnapshotReader::open(&probe)
            .and_then(|mut r| r.verify_to_end())
            .expect_err("flipped byte accepted");
        let (path, offset, kind) = corrupt_path(&err);
        assert_eq!(path, probe);
        assert_eq!(
            offset,
            structure_offset(at as u64, header_bytes, chunk_bytes as u64),
            "byte {at}: {kind}"
        );
        let message = err.to_string();
        assert!(message.contains("probe") && message.contains(&format!("offset {offset}")));
    }
}

#[test]
fn flipped_bytes_fall_back_to_the_previous_valid_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = SnapshotStore::open(dir.path(), config(48, 3)).unwrap();
    let older_state = kv_state(10, 3);
    let older = store
        .write_snapshot(meta(10), &older_state.freeze())
        .unwrap();
    let newer = store
        .write_snapshot(meta(20), &kv_state(20, 3).freeze())
        .unwrap();
    let pristine = fs::read(&newer.path).unwrap();
    // Header fields, header CRC, a chunk frame's length and CRC, payload, the last byte.
    let len = pristine.len();
    for at in [0, 9, 20, 40, 70, 100, 120, 124, 130, 140, len / 2, len - 1] {
        let mut bytes = pristine.clone();
        bytes[at] ^= 0x40;
        fs::write(&newer.path, &bytes).unwrap();
        let latest = store.open_latest().unwrap();
        assert_eq!(latest.rejected.len(), 1, "byte {at}");
        let (path, _, _) = corrupt_path(&latest.rejected[0]);
        assert_eq!(path, newer.path);
        let reader = latest.snapshot.expect("fell back");
        assert_eq!(reader.path(), older.path);
        let mut restored = KvStateMachine::new();
        restore_state_machine(reader, &mut restored).unwrap();
        assert_eq!(restored.digest(), older_state.digest());
        // Quarantined, not deleted, and never considered again.
        assert!(!newer.path.exists());
        let quarantined = PathBuf::from(format!("{}.corrupt", newer.path.display()));
        assert!(quarantined.exists());
        assert_eq!(store.open_latest().unwrap().rejected.len(), 0);
    }
    // The quarantine is bounded.
    let corrupt = fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".corrupt")
        })
        .count();
    assert!(corrupt <= store.config().corrupt_kept_max);
}

#[test]
fn truncated_files_are_rejected_and_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = SnapshotStore::open(dir.path(), config(40, 3)).unwrap();
    let older = store
        .write_snapshot(meta(5), &kv_state(5, 4).freeze())
        .unwrap();
    let newer = store
        .write_snapshot(meta(25), &kv_state(25, 4).freeze())
        .unwrap();
    let pristine = fs::read(&newer.path).unwrap();
    let probe = dir.path().join("probe");
    for len in 0..pristine.len() {
        fs::write(&probe, &pristine[..len]).unwrap();
        let err = SnapshotReader::open(&probe)
            .and_then(|mut r| r.verify_to_end())
            .expect_err("truncated file accepted");
        let (path, _, kind) = corrupt_path(&err);
        assert_eq!(path, probe);
        assert!(
            matches!(kind, CorruptKind::Truncated | CorruptKind::BadMagic),
            "len {len}: {kind}"
        );
    }
    fs::write(&newer.path, &pristine[..pristine.len() - 3]).unwrap();
    let latest = store.open_latest().unwrap();
    assert_eq!(latest.snapshot.unwrap().path(), older.path);
    assert!(matches!(
        corrupt_path(&latest.rejected[0]).2,
        CorruptKind::Truncated
    ));
    // Bytes appended after a complete file are rejected too.
    let mut longer = pristine.clone();
    longer.extend_from_slice(b"xx");
    fs::write(&probe, &longer).unwrap();
    let err = SnapshotReader::open(&probe).unwrap_err();
    assert!(matches!(corrupt_path(&err).2, CorruptKind::TrailingBytes));
}

#[test]
fn a_file_renamed_to_another_index_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = SnapshotStore::open(dir.path(), config(64, 3)).unwrap();
    let file = store
        .write_snapshot(meta(7), &kv_state(7, 5).freeze())
        .unwrap();
    let renamed = dir.path().join(
        file.path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace("00000000000000000007-", "00000000000000000009-"),
    );
    fs::rename(&file.path, &renamed).unwrap();
    let latest = store.open_latest().unwrap();
    assert!(latest.snapshot.is_none());
    assert!(matches!(
        corrupt_path(&latest.rejected[0]).2,
        CorruptKind::NameMismatch { index: 7, .. }
    ));
}

#[test]
fn only_the_last_k_snapshots_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = SnapshotStore::open(dir.path(), config(64, 3)).unwrap();
    for index in [10, 20, 30, 40, 50, 60] {
        store
            .write_snapshot(meta(index), &kv_state(index, 6).freeze())
            .unwrap();
    }
    let kept: Vec<Index> = store.list().unwrap().iter().map(|f| f.index).collect();
    assert_eq!(kept, vec![40, 50, 60]);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[test]
fn open_removes_our_temp_files_and_reports_unknown_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = SnapshotStore::open(dir.path(), config(64, 3)).unwrap();
    store
        .write_snapshot(meta(10), &kv_state(10, 7).freeze())
        .unwrap();
    let temp = dir
        .path()
        .join("snap-00000000000000000020-00000000000000000003.snap.tmp");
    let stale_recv = dir
        .path()
        .join("snap-00000000000000000005-00000000000000000001.snap.recv");
    let fresh_recv = dir
        .path()
        .join("snap-00000000000000000030-00000000000000000004.snap.recv");
    let unknown = [
        dir.path().join("notes.txt"),
        dir.path().join("snap-1-1.snap.tmp"),
        dir.path()
            .join("snap-00000000000000000020-00000000000000000003.snap.tmp.bak"),
    ];
    for path in [&temp, &stale_recv, &fresh_recv]
        .into_iter()
        .chain(&unknown)
    {
        fs::write(path, b"partial").unwrap();
    }
    fs::create_dir(
        dir.path()
            .join("snap-00000000000000000040-00000000000000000005.snap"),
    )
    .unwrap();

    let (store, report) = SnapshotStore::open(dir.path(), config(64, 3)).unwrap();
    let mut removed = report.temp_files_removed.clone();
    removed.sort();
    assert_eq!(removed, vec![stale_recv.clone(), temp.clone()]);
    assert_eq!(report.partial_receive, Some((30, 4)));
    assert_eq!(report.unknown_files.len(), 4, "{:?}", report.unknown_files);
    for path in &unknown {
        assert!(path.exists(), "{} must not be deleted", path.display());
    }
    assert!(!temp.exists() && !stale_recv.exists() && fresh_recv.exists());
    assert_eq!(
        store
            .open_latest()
            .unwrap()
            .snapshot
            .unwrap()
            .header()
            .meta
            .index,
        10
    );
}

#[test]
fn an_abandoned_writer_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = SnapshotStore::open(dir.path(), config(64, 3)).unwrap();
    let mut writer = store.begin(meta(3)).unwrap();
    writer.write_all(&[7u8; 1000]).unwrap();
    drop(writer);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn body_bound_is_enforced_on_write() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SnapshotStoreConfig {
        body_bytes_max: 100,
        ..config(64, 3)
    };
    let (store, _) = SnapshotStore::open(dir.path(), cfg).unwrap();
    let err = store
        .write_snapshot(meta(200), &kv_state(200, 1).freeze())
        .unwrap_err();
    assert!(matches!(err, SnapshotError::TooLarge { .. }), "{err}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn transfer_installs_an_identical_file_and_rejects_bad_chunks() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (leader, _) = SnapshotStore::open(a.path(), config(100, 3)).unwrap();
    let (follower, _) = SnapshotStore::open(b.path(), config(100, 3)).unwrap();
    let state = kv_state(100, 8);
    let source = leader.write_snapshot(meta(100), &state.freeze()).unwrap();

    let mut assembler = follower.receive(meta(100)).unwrap();
    let chunks: Vec<TransferChunk> = SnapshotChunks::open(&source, 0, 333)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assembler.accept(&chunks[0]).unwrap();
    // Out of order: rejected, no effect.
    let err = assembler.accept(&chunks[2]).unwrap_err();
    assert!(matches!(
        err,
        SnapshotError::ChunkOutOfOrder {
            expected: 333,
            got: 666
        }
    ));
    // Damaged in flight: rejected, no effect.
    let mut damaged = chunks[1].clone();
    damaged.data[5] ^= 1;
    assert!(matches!(
        assembler.accept(&damaged).unwrap_err(),
        SnapshotError::TransferChunkCrc { offset: 333, .. }
    ));
    assert!(matches!(
        assembler
            .accept(&TransferChunk::new(333, Vec::new()))
            .unwrap_err(),
        SnapshotError::TransferChunkSize { .. }
    ));
    for chunk in &chunks[1..chunks.len() - 1] {
        assert!(!assembler.accept(chunk).unwrap().is_complete());
    }
    let unfinished = follower.receive(meta(100)).unwrap();
    drop(assembler);
    assert!(matches!(
        unfinished.finish().unwrap_err(),
        SnapshotError::TransferIncomplete { .. }
    ));
    let mut assembler = follower.receive(meta(100)).unwrap();
    assert!(assembler
        .accept(chunks.last().unwrap())
        .unwrap()
        .is_complete());
    let installed = assembler.finish().unwrap();
    assert_eq!(
        fs::read(&installed.path).unwrap(),
        fs::read(&source.path).unwrap()
    );

    let mut restored = KvStateMachine::new();
    restore_state_machine(
        follower.open_latest().unwrap().snapshot.unwrap(),
        &mut restored,
    )
    .unwrap();
    assert_eq!(restored.digest(), state.digest());
}

#[test]
fn transfer_of_the_wrong_snapshot_or_a_corrupt_source_is_refused() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (leader, _) = SnapshotStore::open(a.path(), config(100, 3)).unwrap();
    let (follower, _) = SnapshotStore::open(b.path(), config(100, 3)).unwrap();
    let source = leader
        .write_snapshot(meta(50), &kv_state(50, 9).freeze())
        .unwrap();

    // The header announces index 50 where 60 was expected.
    let mut assembler = follower.receive(meta(60)).unwrap();
    let first = SnapshotChunks::open(&source, 0, 4096)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert!(matches!(
        assembler.accept(&first).unwrap_err(),
        SnapshotError::TransferMismatch {
            expected_index: 60,
            got_index: 50,
            ..
        }
    ));
    assert_eq!(assembler.progress().next_offset, 0, "partial discarded");
    assembler.abort().unwrap();

    // The sender's file is damaged at rest (transfer CRCs are computed over the damage):
    // only the final validation can catch it, and it names the receive file and offset.
    let mut bytes = fs::read(&source.path).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x10;
    fs::write(&source.path, &bytes).unwrap();
    let mut assembler = follower.receive(meta(50)).unwrap();
    for chunk in SnapshotChunks::open(&source, 0, 64).unwrap() {
        assembler.accept(&chunk.unwrap()).unwrap();
    }
    let recv_path = assembler.path().to_path_buf();
    let err = assembler.finish().unwrap_err();
    let (path, offset, _) = corrupt_path(&err);
    assert_eq!(path, recv_path);
    assert!(offset > 0 && offset <= at as u64);
    assert!(follower.list().unwrap().is_empty());
    assert_eq!(fs::read_dir(b.path()).unwrap().count(), 0);
}

#[test]
fn anti_entropy_names_the_corrupted_replica() {
    let dir = tempfile::tempdir().unwrap();
    let mut replicas: Vec<KvStateMachine> = (0..5).map(|_| kv_state(300, 11)).collect();
    replicas[3].corrupt_for_test(b"key-1", b"bit rot");
    // Each replica snapshots and restores, as a restart would, then reports its digest.
    let mut reports = Vec::new();
    for (i, replica) in replicas.iter().enumerate() {
        let (store, _) =
            SnapshotStore::open(dir.path().join(i.to_string()), config(256, 2)).unwrap();
        store.write_snapshot(meta(300), &replica.freeze()).unwrap();
        let mut restored = KvStateMachine::new();
        let header = restore_state_machine(
            store.open_latest().unwrap().snapshot.unwrap(),
            &mut restored,
        )
        .unwrap();
        // The digest recorded when the snapshot was taken is what the restored state has.
        assert_eq!(header.state_digest, restored.digest());
        reports.push(DigestReport::from_header(i as u64 + 1, &header));
    }
    let comparison = compare_digests(&reports).unwrap();
    assert_eq!(
        comparison.verdict,
        DigestVerdict::Divergent {
            majority: replicas[0].digest(),
            divergent: vec![4]
        }
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Any body, any chunk size, any way the state machine splits its writes: the body reads
    /// back identical and its digest does not depend on the chunking.
    #[test]
    fn writer_chunking_round_trips(
        body in proptest::collection::vec(any::<u8>(), 0..3000),
        chunk_bytes in 1u32..700,
        splits in proptest::collection::vec(1usize..900, 1..20),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = SnapshotStore::open(dir.path(), config(chunk_bytes, 1)).unwrap();
        let mut writer = store.begin(meta(1)).unwrap();
        let mut rest = body.as_slice();
        for split in splits.iter().cycle() {
            if rest.is_empty() { break; }
            let n = (*split).min(rest.len());
            writer.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
        }
        writer.finish(StateDigest(1)).unwrap();
        let mut reader = store.open_latest().unwrap().snapshot.unwrap();
        prop_assert_eq!(reader.header().body_digest, StateDigest::of(&body));
        prop_assert_eq!(reader.header().chunk_count(), (body.len() as u64).div_ceil(chunk_bytes as u64));
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut read).unwrap();
        prop_assert_eq!(read, body);
    }

    /// Whatever the chunk size and body, one flipped bit anywhere in the file is caught, and
    /// the error names the file and the structure holding the bit.
    #[test]
    fn any_flipped_bit_is_caught(
        body in proptest::collection::vec(any::<u8>(), 0..2000),
        chunk_bytes in 1u32..300,
        position_permille in 0u64..1000,
        bit in 0u8..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = SnapshotStore::open(dir.path(), config(chunk_bytes, 1)).unwrap();
        let mut writer = store.begin(meta(9)).unwrap();
        writer.write_all(&body).unwrap();
        let file = writer.finish(StateDigest::of(&body)).unwrap();
        let mut bytes = fs::read(&file.path).unwrap();
        let header_bytes = SnapshotReader::open(&file.path).unwrap().header().encoded_bytes() as u64;
        let at = bytes.len() as u64 * position_permille / 1000;
        bytes[at as usize] ^= 1 << bit;
        fs::write(&file.path, &bytes).unwrap();
        let err = SnapshotReader::open(&file.path)
            .and_then(|mut r| r.verify_to_end())
            .expect_err("flipped bit accepted");
        let (path, offset, _) = corrupt_path(&err);
        prop_assert_eq!(path, file.path.as_path());
        prop_assert_eq!(offset, structure_offset(at, header_bytes, chunk_bytes as u64));
    }

    /// Any transfer chunk sizes, any resume offset (the receiver "crashes" there and
    /// resumes from its partial file): the installed file is byte-identical.
    #[test]
    fn assembly_resumes_from_any_offset(
        entries in 0u64..120,
        chunk_bytes_before in 1usize..700,
        chunk_bytes_after in 1usize..700,
        resume_permille in 0u64..=1000,
    ) {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (leader, _) = SnapshotStore::open(a.path(), config(97, 1)).unwrap();
        let (follower, _) = SnapshotStore::open(b.path(), config(97, 1)).unwrap();
        let m = meta(entries.max(1));
        let source = leader.write_snapshot(m.clone(), &kv_state(entries, 12).freeze()).unwrap();
        let total_bytes = fs::metadata(&source.path).unwrap().len();
        let resume = total_bytes * resume_permille / 1000;

        let mut assembler = follower.receive(m.clone()).unwrap();
        for chunk in SnapshotChunks::open(&source, 0, chunk_bytes_before).unwrap() {
            let chunk = chunk.unwrap();
            if chunk.offset >= resume { break; }
            let end = (resume - chunk.offset).min(chunk.data.len() as u64) as usize;
            let cut = TransferChunk::new(chunk.offset, chunk.data[..end].to_vec());
            assembler.accept(&cut).unwrap();
        }
        drop(assembler);

        let (follower, report) = SnapshotStore::open(b.path(), config(97, 1)).unwrap();
        if resume > 0 && resume < total_bytes {
            prop_assert_eq!(report.partial_receive, Some((m.index, m.term)));
        }
        let mut assembler = follower.receive(m.clone()).unwrap();
        prop_assert_eq!(assembler.progress().next_offset, resume);
        for chunk in SnapshotChunks::open(&source, resume, chunk_bytes_after).unwrap() {
            assembler.accept(&chunk.unwrap()).unwrap();
        }
        prop_assert!(assembler.progress().is_complete());
        let installed = assembler.finish().unwrap();
        prop_assert_eq!(fs::read(&installed.path).unwrap(), fs::read(&source.path).unwrap());
    }
}

/// The pieces composed as the node will: apply entries, let the trigger decide, freeze and
/// write the snapshot on another thread while applying goes on, compact the log behind it
/// with the trailing margin; then "restart" from the newest snapshot plus the log tail and
/// compare with the state that applied everything.
#[test]
fn restart_from_snapshot_plus_log_tail_equals_full_replay() {
    use raft_core::{Entry, EntryPayload, LogStore, MemLog};
    use raft_snapshot::{SnapshotPolicy, SnapshotTrigger};

    let dir = tempfile::tempdir().unwrap();
    let (store, _) = SnapshotStore::open(dir.path(), config(512, 2)).unwrap();
    let policy = SnapshotPolicy {
        entries_since_snapshot_max: 300,
        bytes_since_snapshot_max: 16 << 10,
        trailing_margin_entries: 50,
    };
    let membership = meta(0).membership;
    let mut log = MemLog::with_snapshot(SnapshotMeta {
        membership: membership.clone(),
        ..Default::default()
    });
    let mut trigger = SnapshotTrigger::new(policy, 0);
    let mut live = KvStateMachine::new();
    let mut in_flight = None;
    let (mut snapshots_taken, mut compactions) = (0, 0);
    for index in 1..=2_000u64 {
        let payload = if index % 97 == 0 {
            EntryPayload::Noop
        } else {
            let command = KvCommand::Put {
                key: format!("k{}", index % 113).into_bytes(),
                value: vec![index as u8; (index % 61) as usize],
            };
            EntryPayload::Command(command.encode().into())
        };
        let entry = Entry {
            index,
            term: index / 400 + 1,
            payload,
        };
        log.append(std::slice::from_ref(&entry));
        if let EntryPayload::Command(command) = &entry.payload {
            live.apply(index, command);
        }
        if let Some(at) = trigger.on_applied(index, entry.size_bytes() as u64) {
            let frozen = live.freeze();
            let (store, m) = (
                store.clone(),
                SnapshotMeta {
                    index: at,
                    term: log.term(at).unwrap(),
                    membership: membership.clone(),
                },
            );
            in_flight = Some((
                at,
                std::thread::spawn(move || store.write_snapshot(m, &frozen)),
            ));
        }
        // Applying went on meanwhile; collect the snapshot a few entries later.
        if let Some((at, _)) = &in_flight {
            if index >= at + 7 {
                let (at, handle) = in_flight.take().unwrap();
                handle.join().unwrap().unwrap();
                snapshots_taken += 1;
                if let Some(through) = trigger.on_snapshot_done(at, log.first_index()) {
                    log.compact(SnapshotMeta {
                        index: through,
                        term: log.term(through).unwrap(),
                        membership: membership.clone(),
                    });
                    compactions += 1;
                }
            }
        }
    }
    if let Some((at, handle)) = in_flight.take() {
        handle.join().unwrap().unwrap();
        trigger.on_snapshot_done(at, log.first_index());
    }
    assert!(
        snapshots_taken >= 5 && compactions >= 5,
        "{snapshots_taken} {compactions}"
    );
    assert!(store.list().unwrap().len() <= 2);

    let reader = store.open_latest().unwrap().snapshot.unwrap();
    let snapshot_index = reader.header().meta.index;
    assert!(
        snapshot_index + 1 >= log.first_index(),
        "the log must still hold every entry after the snapshot"
    );
    assert!(
        snapshot_index - log.first_index() + 1 >= policy.trailing_margin_entries,
        "the trailing margin is kept"
    );
    let mut restarted = KvStateMachine::new();
    restore_state_machine(reader, &mut restarted).unwrap();
    for entry in log
        .entries(snapshot_index + 1, log.last_index() + 1, usize::MAX)
        .unwrap()
    {
        if let EntryPayload::Command(command) = &entry.payload {
            restarted.apply(entry.index, command);
        }
    }
    assert_eq!(restarted.digest(), live.digest());

    let mut full_replay = KvStateMachine::new();
    for index in 1..=2_000u64 {
        if index % 97 != 0 {
            let command = KvCommand::Put {
                key: format!("k{}", index % 113).into_bytes(),
                value: vec![index as u8; (index % 61) as usize],
            };
            full_replay.apply(index, &command.encode());
        }
    }
    assert_eq!(full_replay.digest(), live.digest());
}

/// Two files of the same snapshot (same index, term and state) written with different
/// chunk sizes differ in bytes: a receive resumed from one must not be completed with the
/// other. Comparing headers tells them apart before any byte is wasted; without that check
/// the final validation still refuses the mixture.
#[test]
fn a_resumed_receive_from_a_different_file_is_detected() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (old_leader, _) = SnapshotStore::open(a.path(), config(100, 1)).unwrap();
    let (new_leader, _) = SnapshotStore::open(b.path(), config(64, 1)).unwrap();
    let (follower, _) = SnapshotStore::open(c.path(), config(64, 1)).unwrap();
    let state = kv_state(80, 13);
    let old_file = old_leader
        .write_snapshot(meta(80), &state.freeze())
        .unwrap();
    let new_file = new_leader
        .write_snapshot(meta(80), &state.freeze())
        .unwrap();
    let new_header = SnapshotReader::open(&new_file.path)
        .unwrap()
        .header()
        .clone();

    let receive_half = || {
        let mut assembler = follower.receive(meta(80)).unwrap();
        for chunk in SnapshotChunks::open(&old_file, 0, 300).unwrap().take(2) {
            assembler.accept(&chunk.unwrap()).unwrap();
        }
        drop(assembler);
        follower.receive(meta(80)).unwrap()
    };

    let mut resumed = receive_half();
    assert_eq!(resumed.progress().next_offset, 600);
    let resumed_header = resumed.header().unwrap();
    assert_eq!(
        resumed_header.body_digest, new_header.body_digest,
        "same state, same body"
    );
    assert_ne!(resumed_header, &new_header, "but another file");
    resumed.restart().unwrap();
    for chunk in SnapshotChunks::open(&new_file, 0, 300).unwrap() {
        resumed.accept(&chunk.unwrap()).unwrap();
    }
    let installed = resumed.finish().unwrap();
    assert_eq!(
        fs::read(&installed.path).unwrap(),
        fs::read(&new_file.path).unwrap()
    );
    fs::remove_file(&installed.path).unwrap();

    let mut mixed = receive_half();
    let chunks = SnapshotChunks::open(&new_file, mixed.progress().next_offset, 300).unwrap();
    let mut refused = false;
    for chunk in chunks {
        if mixed.accept(&chunk.unwrap()).is_err() {
            refused = true; // the lengths disagree: the header announced another total
            break;
        }
    }
    if !refused && mixed.progress().is_complete() {
        assert!(mixed.finish().unwrap_err().is_corrupt());
    }
    assert!(follower.list().unwrap().is_empty());
}

#[test]
fn chunks_are_read_at_any_offset_from_a_file_whose_header_and_length_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = SnapshotStore::open(dir.path(), config(100, 3)).unwrap();
    let file = store
        .write_snapshot(meta(50), &kv_state(50, 3).freeze())
        .unwrap();
    let bytes = fs::read(&file.path).unwrap();
    let chunks = SnapshotChunks::open(&file, 0, 0).unwrap();
    assert_eq!(chunks.header().meta, meta(50));
    assert_eq!(chunks.total_bytes(), bytes.len() as u64);
    // Positioned reads: any offset, any order, the last one short.
    let last = bytes.len() as u64 - 10;
    for (offset, len) in [(last, 10), (0, 64), (7, 64)] {
        let chunk = chunks.read_at(offset, 64).unwrap();
        assert_eq!(chunk.data, bytes[offset as usize..][..len]);
        chunk.verify().unwrap();
    }
    assert!(matches!(
        chunks.read_at(bytes.len() as u64, 64),
        Err(SnapshotError::TransferOverrun { .. })
    ));
    // The file stays readable through the open handle once the store deletes it.
    fs::remove_file(&file.path).unwrap();
    assert_eq!(chunks.read_at(0, 16).unwrap().data, bytes[..16]);
    // A file cut short is refused at open, naming the file.
    fs::write(&file.path, &bytes[..bytes.len() - 1]).unwrap();
    let err = SnapshotChunks::open(&file, 0, 0).unwrap_err();
    assert!(
        matches!(corrupt_path(&err), (p, _, CorruptKind::Truncated) if p == file.path),
        "{err}"
    );
}
