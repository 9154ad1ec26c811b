//! A small deterministic key-value [`StateMachine`]: the example of `cargo run -p
//! raft-snapshot --example kv`, and the state the snapshot store's tests write and restore
//! (`tests/store.rs` includes this file). raft-node's real key-value machine is
//! `raft_node::kv::KvStateMachine`; this one only shows the contract.
//!
//! Commands (all integers little-endian):
//! - put:    `0x01 | key_bytes u32 | key | value_bytes u32 | value` → previous value
//! - delete: `0x02 | key_bytes u32 | key` → previous value
//!
//! Snapshot body: `b"KVS1" | applied_index u64 | pair_count u64 | (key_bytes u32 | key |
//! value_bytes u32 | value)*` with keys strictly ascending, so the body is canonical and the
//! state digest is XXH3-128 of it (prefixed by a domain tag).

// Each includer (the example, the store tests) uses part of the machine.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::Arc;

use raft_core::Index;
use raft_snapshot::{DigestHasher, RestoreError, SnapshotSource, StateDigest, StateMachine};

/// Bound on a key.
pub const KV_KEY_BYTES_MAX: usize = 64 << 10;
/// Bound on a value.
pub const KV_VALUE_BYTES_MAX: usize = 16 << 20;
const SNAPSHOT_MAGIC: &[u8; 4] = b"KVS1";
const DIGEST_DOMAIN: &[u8] = b"raft-snapshot kv state v1\0";

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// A command for [`KvStateMachine`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvCommand {
    /// Sets `key` to `value`.
    Put {
        /// At most [`KV_KEY_BYTES_MAX`].
        key: Vec<u8>,
        /// At most [`KV_VALUE_BYTES_MAX`].
        value: Vec<u8>,
    },
    /// Removes `key`.
    Delete {
        /// At most [`KV_KEY_BYTES_MAX`].
        key: Vec<u8>,
    },
}

impl KvCommand {
    /// The command's bytes, as proposed to the log.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            KvCommand::Put { key, value } => {
                out.push(1);
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            KvCommand::Delete { key } => {
                out.push(2);
                put_bytes(&mut out, key);
            }
        }
        out
    }

    /// `None` for anything [`KvCommand::encode`] would not produce, including oversized
    /// keys or values and trailing bytes.
    pub fn decode(mut bytes: &[u8]) -> Option<KvCommand> {
        let tag = take(&mut bytes, 1)?[0];
        let key = take_bytes(&mut bytes, KV_KEY_BYTES_MAX)?;
        let command = match tag {
            1 => KvCommand::Put {
                key,
                value: take_bytes(&mut bytes, KV_VALUE_BYTES_MAX)?,
            },
            2 => KvCommand::Delete { key },
            _ => return None,
        };
        bytes.is_empty().then_some(command)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if bytes.len() < n {
        return None;
    }
    let (head, tail) = bytes.split_at(n);
    *bytes = tail;
    Some(head)
}

fn take_bytes(bytes: &mut &[u8], bound: usize) -> Option<Vec<u8>> {
    let len = u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?) as usize;
    if len > bound {
        return None;
    }
    take(bytes, len).map(<[u8]>::to_vec)
}

/// What a [`KvCommand`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvResponse {
    /// The key's value before the command.
    Previous(Option<Vec<u8>>),
    /// The command could not be decoded; the state is unchanged (on every replica alike).
    Malformed,
}

/// The key-value state machine. The map sits behind an `Arc`, so
/// [`StateMachine::freeze`] is O(1) and the first write after it copies the map once
/// (copy-on-write), off the snapshot writer's thread.
#[derive(Clone, Debug, Default)]
pub struct KvStateMachine {
    map: Arc<Map>,
    applied_index: Index,
}

/// A frozen [`KvStateMachine`], written out by the snapshot writer.
#[derive(Clone, Debug)]
pub struct KvFrozen {
    map: Arc<Map>,
    applied_index: Index,
}

impl KvStateMachine {
    /// An empty map at index 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Changes the state behind Raft's back, as a disk fault or a bug would; for
    /// anti-entropy tests only.
    pub fn corrupt_for_test(&mut self, key: &[u8], value: &[u8]) {
        Arc::make_mut(&mut self.map).insert(key.to_vec(), value.to_vec());
    }
}

fn write_map(map: &Map, applied_index: Index, w: &mut dyn Write) -> io::Result<()> {
    w.write_all(SNAPSHOT_MAGIC)?;
    w.write_all(&applied_index.to_le_bytes())?;
    w.write_all(&(map.len() as u64).to_le_bytes())?;
    for (key, value) in map {
        w.write_all(&(key.len() as u32).to_le_bytes())?;
        w.write_all(key)?;
        w.write_all(&(value.len() as u32).to_le_bytes())?;
        w.write_all(value)?;
    }
    Ok(())
}

fn digest_map(map: &Map, applied_index: Index) -> StateDigest {
    let mut hasher = DigestHasher::new();
    hasher.update(DIGEST_DOMAIN);
    // Writing into a hasher cannot fail.
    let _ = write_map(map, applied_index, &mut hasher);
    hasher.finish()
}

impl SnapshotSource for KvStateMachine {
    fn snapshot(&self, writer: &mut dyn Write) -> io::Result<()> {
        write_map(&self.map, self.applied_index, writer)
    }

    fn digest(&self) -> StateDigest {
        digest_map(&self.map, self.applied_index)
    }
}

impl SnapshotSource for KvFrozen {
    fn snapshot(&self, writer: &mut dyn Write) -> io::Result<()> {
        write_map(&self.map, self.applied_index, writer)
    }

    fn digest(&self) -> StateDigest {
        digest_map(&self.map, self.applied_index)
    }
}

impl KvFrozen {
    /// The index the frozen state is at.
    pub fn applied_index(&self) -> Index {
        self.applied_index
    }
}

impl StateMachine for KvStateMachine {
    type Response = KvResponse;
    type Frozen = KvFrozen;

    fn apply(&mut self, index: Index, command: &[u8]) -> KvResponse {
        self.applied_index = index;
        match KvCommand::decode(command) {
            Some(KvCommand::Put { key, value }) => {
                KvResponse::Previous(Arc::make_mut(&mut self.map).insert(key, value))
            }
            Some(KvCommand::Delete { key }) => {
                KvResponse::Previous(Arc::make_mut(&mut self.map).remove(&key))
            }
            None => KvResponse::Malformed,
        }
    }

    fn applied_index(&self) -> Index {
        self.applied_index
    }

    fn freeze(&self) -> KvFrozen {
        KvFrozen {
            map: Arc::clone(&self.map),
            applied_index: self.applied_index,
        }
    }

    fn restore(&mut self, reader: &mut dyn Read) -> Result<(), RestoreError> {
        let malformed = |what: &str| RestoreError::Malformed(what.to_string());
        let mut magic = [0u8; 4];
        reader.read_exact(&mut magic)?;
        if &magic != SNAPSHOT_MAGIC {
            return Err(malformed("bad magic"));
        }
        let applied_index = read_u64(reader)?;
        let count = read_u64(reader)?;
        let mut map = Map::new();
        let mut previous: Option<Vec<u8>> = None;
        // `count` is not trusted for preallocation; the loop is bounded by the body, which
        // the snapshot reader bounds.
        for _ in 0..count {
            let key = read_bytes(reader, KV_KEY_BYTES_MAX).map_err(|e| e.or_malformed("key"))?;
            let value =
                read_bytes(reader, KV_VALUE_BYTES_MAX).map_err(|e| e.or_malformed("value"))?;
            if previous.as_ref().is_some_and(|p| *p >= key) {
                return Err(malformed("keys not strictly ascending"));
            }
            previous = Some(key.clone());
            map.insert(key, value);
        }
        let mut probe = [0u8; 1];
        if reader.read(&mut probe)? != 0 {
            return Err(malformed("bytes after the last pair"));
        }
        self.map = Arc::new(map);
        self.applied_index = applied_index;
        Ok(())
    }
}

fn read_u64(reader: &mut dyn Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    reader.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

enum ReadBytesError {
    Io(io::Error),
    TooLong,
}

impl ReadBytesError {
    fn or_malformed(self, what: &str) -> RestoreError {
        match self {
            ReadBytesError::Io(e) => RestoreError::Io(e),
            ReadBytesError::TooLong => RestoreError::Malformed(format!("{what} exceeds its bound")),
        }
    }
}

fn read_bytes(reader: &mut dyn Read, bound: usize) -> Result<Vec<u8>, ReadBytesError> {
    let mut b = [0u8; 4];
    reader.read_exact(&mut b).map_err(ReadBytesError::Io)?;
    let len = u32::from_le_bytes(b) as usize;
    if len > bound {
        return Err(ReadBytesError::TooLong);
    }
    let mut out = vec![0u8; len];
    reader.read_exact(&mut out).map_err(ReadBytesError::Io)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Vec<u8> {
        KvCommand::Put {
            key: k.into(),
            value: v.into(),
        }
        .encode()
    }

    #[test]
    fn apply_is_deterministic_and_restore_reproduces_the_digest() {
        let mut a = KvStateMachine::new();
        let mut responses = Vec::new();
        let cmds = [
            put("a", "1"),
            put("b", "2"),
            put("a", "3"),
            b"\xffjunk".to_vec(),
        ];
        let batch: Vec<(Index, &[u8])> = cmds
            .iter()
            .enumerate()
            .map(|(i, c)| (i as Index + 1, c.as_slice()))
            .collect();
        a.apply_batch(&batch, &mut responses);
        assert_eq!(
            responses,
            vec![
                KvResponse::Previous(None),
                KvResponse::Previous(None),
                KvResponse::Previous(Some(b"1".to_vec())),
                KvResponse::Malformed
            ]
        );
        let frozen = a.freeze();
        a.apply(5, &KvCommand::Delete { key: "b".into() }.encode());
        assert_ne!(
            frozen.digest(),
            a.digest(),
            "freeze is a point-in-time copy"
        );

        let mut body = Vec::new();
        frozen.snapshot(&mut body).unwrap();
        let mut b = KvStateMachine::new();
        b.restore(&mut body.as_slice()).unwrap();
        assert_eq!(b.digest(), frozen.digest());
        assert_eq!(b.applied_index(), 4);
        assert_eq!(b.get(b"a"), Some(&b"3"[..]));
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let mut sm = KvStateMachine::new();
        sm.apply(1, &put("k", "v"));
        let mut body = Vec::new();
        sm.snapshot(&mut body).unwrap();
        for len in 0..body.len() {
            assert!(KvStateMachine::new().restore(&mut &body[..len]).is_err());
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(KvStateMachine::new()
            .restore(&mut longer.as_slice())
            .is_err());
        let mut huge = body.clone();
        huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(KvStateMachine::new().restore(&mut huge.as_slice()).is_err());
    }
}
