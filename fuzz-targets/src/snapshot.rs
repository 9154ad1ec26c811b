//! Snapshot restore, both ways a node gets one: a key-value body straight into
//! [`KvStateMachine::restore`] (what a follower installs from the leader), and a whole
//! snapshot file through raft-snapshot ([`SnapshotReader::open`], then
//! [`restore_state_machine`]), once as the input is and once with its checksums made to
//! match, so that mutations reach the chunk framing and the body behind them.

use bytes::Bytes;
use raft_core::{Membership, SnapshotMeta};
use raft_node::kv::{log_command, KvLimits, KvStateMachine};
use raft_proto::{KvCommand, KvResponse, Session};
use raft_snapshot::{
    restore_state_machine, DigestHasher, SnapshotReader, SnapshotSource, SnapshotStore,
    SnapshotStoreConfig, StateMachine,
};

/// Offsets in a snapshot file's header (raft-snapshot's `format.rs`).
const HEADER_LEN_AT: usize = 12;
const BODY_DIGEST_AT: usize = 48;
const BODY_BYTES_AT: usize = 64;
const CHUNK_BYTES_AT: usize = 72;
const HEADER_FIXED_BYTES: usize = 88;
const CHUNK_FRAME_BYTES: usize = 8;
/// Chunks fixed up at most.
const CHUNKS_MAX: usize = 1024;

fn limits() -> KvLimits {
    KvLimits {
        session_expiry_entries: 8,
        sessions_max: 4,
        session_responses_max: 4,
        // Small, so that writes reach the memory bound and reads the reply bound.
        memory_bytes_max: 4 << 10,
        reply_bytes_max: 1 << 10,
        request_keys_max: 16,
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut sm = KvStateMachine::new(limits());
    if sm.restore(&mut &data[..]).is_ok() {
        restored(&mut sm);
    }
    file(data);
    let mut fixed = data.to_vec();
    if fix_checksums(&mut fixed) {
        file(&fixed);
    }
}

/// A restored state snapshots to bytes that restore to the same state, and it keeps
/// applying commands (its session table is whatever the bytes said).
fn restored(sm: &mut KvStateMachine) {
    let digest = sm.digest();
    let mut bytes = Vec::new();
    sm.snapshot(&mut bytes).expect("a snapshot into memory");
    let mut again = sm.empty_like();
    again
        .restore(&mut &bytes[..])
        .expect("our own snapshot restores");
    assert_eq!(again.digest(), digest);
    let mut twice = Vec::new();
    again.snapshot(&mut twice).expect("a snapshot into memory");
    assert_eq!(twice, bytes, "a restored state snapshots differently");
    let base = sm.applied_index().saturating_add(1);
    for (i, client_id) in [1u64, 2, 3, 4, 5, 1].into_iter().enumerate() {
        let op = KvCommand::Set {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        }
        .encode();
        let session = Session {
            client_id,
            seq: 1,
            acked_below: 0,
        };
        let response = sm.apply(
            base.saturating_add(i as u64),
            &log_command(Some(session), op),
        );
        assert_eq!(KvResponse::decode(&response.encode()), Some(response));
    }
}

/// The input as a snapshot file, restored as a node restores its newest snapshot.
fn file(data: &[u8]) {
    let path = crate::scratch_dir().join("snapshot");
    std::fs::write(&path, data).expect("write the scratch file");
    if let Ok(reader) = SnapshotReader::open(&path) {
        let mut sm = KvStateMachine::new(limits());
        if restore_state_machine(reader, &mut sm).is_ok() {
            restored(&mut sm);
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

/// Rewrites the chunk CRCs, the body digest and the header CRC to match the bytes; false
/// if the input does not have a header's shape.
fn fix_checksums(file: &mut [u8]) -> bool {
    let (Some(header_bytes), Some(chunk_bytes)) =
        (u32_at(file, HEADER_LEN_AT), u32_at(file, CHUNK_BYTES_AT))
    else {
        return false;
    };
    if header_bytes < HEADER_FIXED_BYTES + 4 || header_bytes > file.len() || chunk_bytes == 0 {
        return false;
    }
    let Some(body_bytes) = file
        .get(BODY_BYTES_AT..BODY_BYTES_AT + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    else {
        return false;
    };
    let mut hasher = DigestHasher::new();
    let mut at = header_bytes;
    let mut left = body_bytes;
    for _ in 0..CHUNKS_MAX {
        if left == 0 || at + CHUNK_FRAME_BYTES > file.len() {
            break;
        }
        let len = (chunk_bytes as u64).min(left) as usize;
        let payload = at + CHUNK_FRAME_BYTES;
        let Some(end) = payload.checked_add(len).filter(|&e| e <= file.len()) else {
            break;
        };
        let crc = crc32fast::hash(&file[payload..end]);
        file[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
        file[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        hasher.update(&file[payload..end]);
        left -= len as u64;
        at = end;
    }
    file[BODY_DIGEST_AT..BODY_DIGEST_AT + 16].copy_from_slice(&hasher.finish().to_le_bytes());
    let crc = crc32fast::hash(&file[..header_bytes - 4]);
    file[header_bytes - 4..header_bytes].copy_from_slice(&crc.to_le_bytes());
    true
}

/// Seeds: key-value bodies (empty, keys, sessions with cached responses) and snapshot files
/// of them written by raft-snapshot, with small chunks.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut states = Vec::new();
    let mut sm = KvStateMachine::new(limits());
    states.push(sm.clone());
    let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let commands = [
        KvCommand::Set {
            key: b("k"),
            value: b("v"),
        },
        KvCommand::MSet {
            pairs: vec![(b("a"), b("1")), (b("b"), b("2"))],
        },
        KvCommand::IncrBy { key: b("n"), by: 3 },
        KvCommand::Batch {
            commands: vec![KvCommand::Del { keys: vec![b("a")] }],
        },
    ];
    for (i, cmd) in commands.iter().enumerate() {
        let session = (i % 2 == 1).then_some(Session {
            client_id: 9,
            seq: i as u64,
            acked_below: 0,
        });
        sm.apply(i as u64 + 1, &log_command(session, cmd.encode()));
        states.push(sm.clone());
    }
    let mut seeds = Vec::new();
    let dir = crate::scratch_dir().join("seeds");
    let _ = std::fs::remove_dir_all(&dir);
    let config = SnapshotStoreConfig {
        chunk_bytes: 16,
        ..SnapshotStoreConfig::default()
    };
    let (store, _) = SnapshotStore::open(&dir, config).expect("a snapshot store");
    for (i, state) in states.iter().enumerate() {
        let mut body = Vec::new();
        state.snapshot(&mut body).expect("a snapshot into memory");
        seeds.push(body);
        let meta = SnapshotMeta {
            index: state.applied_index().max(1),
            term: i as u64 + 1,
            membership: Membership::new_voters([1, 2, 3]),
        };
        let file = store.write_snapshot(meta, state).expect("a snapshot file");
        seeds.push(std::fs::read(&file.path).expect("read the snapshot file"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    seeds
}
