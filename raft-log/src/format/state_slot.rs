//! The hard-state file's slots: a [`StateRecord`] (hard state, snapshot and membership
//! bookkeeping) framed with a magic, a CRC and a sequence number, so that of the two slots
//! the newer intact one wins. Apart from the segment format: it is a different file.

use raft_core::{HardState, SnapshotMeta};
use serde::{Deserialize, Serialize};

use super::{u32_at, u64_at, STATE_SLOT_BYTES, STATE_SLOT_HEADER_BYTES};

const STATE_MAGIC: [u8; 4] = *b"RST1";

/// What the state file records: everything that is not an entry but must survive a crash.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// The newest snapshot's metadata (index, term, membership); the log starts after it.
    pub snapshot: SnapshotMeta,
    /// The segment epoch in force; segments of older epochs predate the last snapshot install.
    pub epoch: u64,
}

/// Encodes `record` with sequence number `seq` as one slot image (header and payload).
pub fn encode_state_slot(seq: u64, record: &StateRecord) -> Result<Vec<u8>, usize> {
    let payload = postcard::to_stdvec(record).map_err(|_| usize::MAX)?;
    if STATE_SLOT_HEADER_BYTES + payload.len() > STATE_SLOT_BYTES {
        return Err(payload.len());
    }
    let mut out = vec![0u8; STATE_SLOT_HEADER_BYTES];
    out[0..4].copy_from_slice(&STATE_MAGIC);
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes one slot; `None` when it is empty, torn or otherwise invalid.
pub fn decode_state_slot(slot: &[u8]) -> Option<(u64, StateRecord)> {
    let header = slot.get(..STATE_SLOT_HEADER_BYTES)?;
    if header[0..4] != STATE_MAGIC {
        return None;
    }
    let len = u32_at(header, 16) as usize;
    let payload = slot.get(STATE_SLOT_HEADER_BYTES..STATE_SLOT_HEADER_BYTES.checked_add(len)?)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&header[8..]);
    h.update(payload);
    if h.finalize() != u32_at(header, 4) {
        return None;
    }
    let record: StateRecord = postcard::from_bytes(payload).ok()?;
    Some((u64_at(header, 8), record))
}

#[cfg(test)]
mod tests {
    use raft_core::Membership;

    use super::*;

    #[test]
    fn state_slot_round_trips_and_rejects_flips() {
        let record = StateRecord {
            hard_state: HardState {
                term: 5,
                vote: Some(2),
                commit: 9,
            },
            snapshot: SnapshotMeta {
                index: 3,
                term: 2,
                membership: Membership::new_voters([1, 2]),
            },
            epoch: 1,
        };
        let image = encode_state_slot(42, &record).unwrap();
        assert_eq!(decode_state_slot(&image), Some((42, record)));
        for bit in 0..image.len() * 8 {
            let mut bad = image.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                decode_state_slot(&bad),
                None,
                "flip of bit {bit} went unnoticed"
            );
        }
    }
}
