//! The snapshot format (magic, body length, postcard body) written streamed, the state
//! digest over the same bytes, and the restore that checks the format and rebuilds the
//! derived indexes.

use std::io::{self, Read, Write};

use super::state::{entry_bytes, State};
use super::{KvFrozen, KvStateMachine};
use raft_snapshot::{DigestHasher, RestoreError, SnapshotSource, StateDigest};

/// Format 2: keys carry their version and deadline, the state its clock.
const SNAPSHOT_MAGIC: &[u8; 4] = b"RNK2";
const DIGEST_DOMAIN: &[u8] = b"raft-node kv state v2\0";
/// Largest snapshot body restored: a bound on the allocation a corrupt length could ask for.
const SNAPSHOT_BYTES_MAX: u64 = 4 << 30;

/// Writes the state as a snapshot body, streamed: encoding it into one buffer first cost a
/// transient allocation the size of the whole state (~12 MiB at 100,000 keys) three times
/// per snapshot interval (the digest, the snapshot, the snapshot's own digest), on blocking
/// threads whose malloc arenas kept much of it. The body's length comes first in the format,
/// so the state is encoded twice: once to count its bytes (no memory written), once to
/// write them.
pub(super) fn write_state(state: &State, w: &mut dyn Write) -> io::Result<()> {
    let body_bytes: usize =
        postcard::serialize_with_flavor(state, postcard::ser_flavors::Size::default())
            .map_err(io::Error::other)?;
    w.write_all(SNAPSHOT_MAGIC)?;
    w.write_all(&(body_bytes as u64).to_le_bytes())?;
    let mut out = CountingWriter {
        inner: io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, w),
        written_bytes: 0,
        error: None,
    };
    if let Err(e) = postcard::to_io(state, &mut out) {
        // postcard reports a failed write as its own error: give back the writer's.
        return Err(out.error.take().unwrap_or_else(|| io::Error::other(e)));
    }
    out.inner.flush()?;
    // The length written up front must be the length of what followed.
    assert_eq!(out.written_bytes, body_bytes as u64, "snapshot body length");
    Ok(())
}

/// Buffer between postcard's many small writes and the snapshot file or hasher.
const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// Keeps the first IO error of a write (postcard replaces it by its own error) and counts
/// the bytes written.
struct CountingWriter<W: Write> {
    inner: W,
    written_bytes: u64,
    error: Option<io::Error>,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.inner.write(buf) {
            Ok(n) => {
                self.written_bytes += n as u64;
                Ok(n)
            }
            Err(e) => {
                let kind = e.kind();
                self.error.get_or_insert(e);
                Err(kind.into())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn digest_state(state: &State) -> StateDigest {
    let mut hasher = DigestHasher::new();
    hasher.update(DIGEST_DOMAIN);
    // Writing into a hasher cannot fail.
    let _ = write_state(state, &mut hasher);
    hasher.finish()
}

impl SnapshotSource for KvStateMachine {
    fn snapshot(&self, writer: &mut dyn Write) -> io::Result<()> {
        write_state(&self.state, writer)
    }

    fn digest(&self) -> StateDigest {
        digest_state(&self.state)
    }
}

impl SnapshotSource for KvFrozen {
    fn snapshot(&self, writer: &mut dyn Write) -> io::Result<()> {
        write_state(&self.state, writer)
    }

    fn digest(&self) -> StateDigest {
        digest_state(&self.state)
    }
}

/// Reads a snapshot body written by [`write_state`], refusing a bad magic, a length past
/// the bound, a short body or bytes after it; rebuilds the derived indexes.
pub(super) fn read_state(reader: &mut dyn Read) -> Result<State, RestoreError> {
    let malformed = |what: &str| RestoreError::Malformed(what.to_string());
    let mut header = [0u8; 12];
    reader.read_exact(&mut header)?;
    if &header[..4] != SNAPSHOT_MAGIC {
        return Err(malformed("bad magic"));
    }
    let len = u64::from_le_bytes(header[4..].try_into().expect("8 bytes"));
    if len > SNAPSHOT_BYTES_MAX {
        return Err(malformed("body length beyond the limit"));
    }
    let mut body = Vec::new();
    reader.take(len).read_to_end(&mut body)?;
    if body.len() as u64 != len {
        return Err(malformed("body shorter than its length"));
    }
    let mut probe = [0u8; 1];
    if reader.read(&mut probe)? != 0 {
        return Err(malformed("bytes after the body"));
    }
    let mut state: State =
        postcard::from_bytes(&body).map_err(|e| malformed(&format!("body: {e}")))?;
    state.by_activity = state
        .sessions
        .iter()
        .map(|(id, s)| (s.last_active_index, *id))
        .collect();
    state.used_bytes = state
        .space
        .map
        .iter()
        .map(|(k, i)| entry_bytes(k, &i.value))
        .sum();
    state.space.reindex();
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::test_support::*;

    #[test]
    fn a_body_claiming_more_keys_than_it_holds_is_refused_without_reserving_them() {
        // Found by `cargo xtask fuzz --target snapshot`: applied index 0, then a map of
        // 2^33 pairs (postcard varint), then nothing. This allocated 128 GiB and aborted.
        let body = [0x00, 0x80, 0x80, 0x80, 0x80, 0x20];
        let mut snapshot = SNAPSHOT_MAGIC.to_vec();
        snapshot.extend_from_slice(&(body.len() as u64).to_le_bytes());
        snapshot.extend_from_slice(&body);
        let mut sm = KvStateMachine::new(KvLimits::default());
        assert!(matches!(
            sm.restore(&mut &snapshot[..]),
            Err(RestoreError::Malformed(_))
        ));
        let crash = b"RNK2\x07\0\0\0\0\0\0\0\x01\x80\x80\x80\x80\x08\0";
        assert!(KvStateMachine::new(KvLimits::default())
            .restore(&mut &crash[..])
            .is_err());
    }

    #[test]
    fn snapshot_restore_gives_equal_digest_and_keeps_sessions() {
        let mut sm = KvStateMachine::new(KvLimits::default());
        for i in 1..=50u64 {
            let c = KvCommand::IncrBy {
                key: b(&format!("k{}", i % 7)),
                by: i as i64,
            };
            sm.apply(i, &cmd(session(i % 3 + 1, i), c));
        }
        let frozen = sm.freeze();
        // Writes after the freeze do not leak into it.
        sm.apply(
            51,
            &cmd(
                None,
                KvCommand::Set {
                    key: b("late"),
                    value: b("x"),
                },
            ),
        );
        let mut body = Vec::new();
        frozen.snapshot(&mut body).unwrap();
        let mut restored = KvStateMachine::new(KvLimits::default());
        restored.restore(&mut body.as_slice()).unwrap();
        assert_eq!(restored.digest(), frozen.digest());
        assert_ne!(restored.digest(), sm.digest());
        assert_eq!(restored.applied_index(), 50);
        // The restored session still recognises a duplicate.
        let dup = KvCommand::IncrBy {
            key: b("k1"),
            by: 1000,
        };
        let original = restored.apply(52, &cmd(session(50 % 3 + 1, 50), dup));
        assert_eq!(
            original,
            KvResponse::Int((1..=50).filter(|i| i % 7 == 1).sum())
        );
        // A truncated body is refused.
        let mut fresh = KvStateMachine::new(KvLimits::default());
        assert!(fresh.restore(&mut &body[..body.len() - 1]).is_err());
    }

    /// Fills a machine with `keys` keys and a few sessions, enough for the maps to span many
    /// B-tree nodes.
    fn filled(keys: u64) -> KvStateMachine {
        let mut sm = KvStateMachine::new(KvLimits::default());
        for i in 1..=keys {
            let set = KvCommand::Set {
                key: b(&format!("key-{:08}", i.wrapping_mul(7919) % keys)),
                value: b(&format!("value-{i}")),
            };
            sm.apply(i, &cmd(session(i % 5 + 1, i), set));
        }
        sm
    }

    #[test]
    fn an_old_format_snapshot_is_refused_by_its_magic() {
        let mut body = Vec::new();
        filled(10).freeze().snapshot(&mut body).unwrap();
        body[..4].copy_from_slice(b"RNK1");
        assert!(matches!(
            KvStateMachine::new(KvLimits::default()).restore(&mut body.as_slice()),
            Err(RestoreError::Malformed(m)) if m == "bad magic"
        ));
    }

    #[test]
    fn writes_after_a_freeze_leave_the_frozen_copy_alone() {
        let mut sm = filled(3_000);
        let frozen = sm.freeze();
        let digest_at_freeze = frozen.digest();
        let mut body_at_freeze = Vec::new();
        frozen.snapshot(&mut body_at_freeze).unwrap();
        // Overwrite, delete and add keys all over the key space, and touch every session.
        for i in 3_001..=4_000u64 {
            let c = match i % 3 {
                0 => KvCommand::Set {
                    key: b(&format!("key-{:08}", i % 3_000)),
                    value: b("changed"),
                },
                1 => KvCommand::Del {
                    keys: vec![b(&format!("key-{:08}", (i * 13) % 3_000))],
                },
                _ => KvCommand::Set {
                    key: b(&format!("new-{i}")),
                    value: b("added"),
                },
            };
            sm.apply(i, &cmd(session(i % 5 + 1, i), c));
        }
        assert_ne!(sm.digest(), digest_at_freeze);
        assert_eq!(frozen.digest(), digest_at_freeze);
        let mut body = Vec::new();
        frozen.snapshot(&mut body).unwrap();
        assert_eq!(body, body_at_freeze);
        let mut restored = sm.empty_like();
        restored.restore(&mut body.as_slice()).unwrap();
        assert_eq!(restored.applied_index(), 3_000);
        assert_eq!(restored.len(), 3_000);
    }

    #[test]
    fn replicas_applying_the_same_log_agree_however_they_freeze() {
        // One replica freezes (and so shares nodes) at every 100th entry, the other never:
        // sharing must not change what the state is, nor its digest.
        let mut a = KvStateMachine::new(KvLimits::default());
        let mut b_sm = KvStateMachine::new(KvLimits::default());
        let mut frozen = Vec::new();
        for i in 1..=2_000u64 {
            let c = KvCommand::IncrBy {
                key: b(&format!("k{}", (i * 31) % 257)),
                by: i as i64,
            };
            let command = cmd(session(i % 9 + 1, i), c);
            assert_eq!(a.apply(i, &command), b_sm.apply(i, &command));
            if i % 100 == 0 {
                frozen.push(a.freeze());
            }
        }
        assert_eq!(a.digest(), b_sm.digest());
        assert_eq!(frozen.len(), 20);
    }

    #[test]
    fn a_failing_writer_gives_its_own_error_back() {
        struct FullAfter(usize);
        impl Write for FullAfter {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 < buf.len() {
                    return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
                }
                self.0 -= buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let sm = filled(3_000);
        let mut body = Vec::new();
        sm.freeze().snapshot(&mut body).unwrap();
        // Past the header, inside the body (which reaches the writer in 64 KiB pieces).
        let err = sm
            .freeze()
            .snapshot(&mut FullAfter(body.len() / 2))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(err.to_string(), "disk full");
    }

    #[test]
    fn replicas_agree_on_a_mixed_log_and_across_snapshot_and_restore() {
        // A log of every kind of command with stamps that jump both ways.
        let mut log = Vec::new();
        let mut t = 5_000u64;
        for i in 0..3_000u64 {
            t = match i % 97 {
                0 => t.saturating_sub(700),
                13 => t + 5_000,
                _ => t + (i * 7919) % 23,
            };
            let k = |n: u64| b(&format!("k{}", (i * 31 + n) % 61));
            let c = match i % 14 {
                0 => set_with(
                    &format!("k{}", i % 61),
                    "v",
                    SetCondition::Always,
                    false,
                    Expiry::In(i % 400),
                ),
                1 => KvCommand::Append {
                    key: k(1),
                    value: b("ab"),
                },
                2 => KvCommand::IncrBy { key: k(2), by: 3 },
                3 => KvCommand::IncrByFloat {
                    key: k(3),
                    by: b("0.25"),
                },
                4 => KvCommand::Expire {
                    key: k(4),
                    when: Expiry::In(i % 300),
                    condition: ExpireCondition::Always,
                },
                5 => KvCommand::Persist { key: k(5) },
                6 => KvCommand::Rename {
                    from: k(6),
                    to: k(7),
                    nx: i % 2 == 0,
                },
                7 => KvCommand::SetRange {
                    key: k(8),
                    offset: i % 5,
                    value: b("zz"),
                },
                8 => KvCommand::GetDel { key: k(9) },
                9 => KvCommand::Sweep { keys_max: 3 },
                10 => KvCommand::Exec {
                    watches: vec![(k(10), i % 3)],
                    commands: vec![KvCommand::SetNx {
                        key: k(11),
                        value: b("n"),
                    }],
                },
                11 => KvCommand::GetEx {
                    key: k(12),
                    expiry: Expiry::In(50),
                },
                12 => KvCommand::MSetNx {
                    pairs: vec![(k(13), b("1")), (k(14), b("2"))],
                },
                _ => KvCommand::Del { keys: vec![k(15)] },
            };
            log.push(log_command_at(session(i % 4 + 1, i + 1), c.encode(), t));
        }
        let mut a = KvStateMachine::new(KvLimits::default());
        let mut b_sm = KvStateMachine::new(KvLimits::default());
        let mut restored: Option<KvStateMachine> = None;
        for (i, entry) in log.iter().enumerate() {
            let index = i as u64 + 1;
            let ra = a.apply(index, entry);
            assert_eq!(ra, b_sm.apply(index, entry), "at {index}");
            if let Some(r) = restored.as_mut() {
                assert_eq!(r.apply(index, entry), ra, "restored replica at {index}");
            }
            if index == 1_500 {
                let mut body = Vec::new();
                a.freeze().snapshot(&mut body).unwrap();
                let mut r = a.empty_like();
                r.restore(&mut body.as_slice()).unwrap();
                assert_eq!(r.digest(), a.digest());
                assert_eq!(r.used_bytes(), a.used_bytes());
                assert_eq!(r.next_deadline_ms(), a.next_deadline_ms());
                restored = Some(r);
            }
        }
        assert_eq!(a.digest(), b_sm.digest());
        let r = restored.unwrap();
        assert_eq!(r.digest(), a.digest());
        assert_eq!(r.clock_ms(), a.clock_ms());
        // Versions and deadlines are part of the digest: a replica differing only there
        // is told apart.
        let mut c = a.clone();
        let key = c.state.space.map.keys().next().unwrap().clone();
        c.state.set_deadline(&key, Some(u64::MAX));
        assert_ne!(c.digest(), a.digest());
    }
}
