//! The simulation's state machine: a few integer registers, written and read by clients.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::types::Index;

/// A register write, as carried in a log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write {
    /// The client operation that wrote it.
    pub op_id: u64,
    /// Register.
    pub key: u8,
    /// Value written (unique per operation).
    pub value: u64,
}

impl Write {
    const ENCODED_BYTES: usize = 17;

    /// The entry payload.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(Self::ENCODED_BYTES);
        out.extend_from_slice(&self.op_id.to_le_bytes());
        out.push(self.key);
        out.extend_from_slice(&self.value.to_le_bytes());
        Bytes::from(out)
    }

    /// Parses an entry payload; `None` if it is not a write.
    pub fn decode(data: &[u8]) -> Option<Write> {
        if data.len() != Self::ENCODED_BYTES {
            return None;
        }
        Some(Write {
            op_id: u64::from_le_bytes(data[0..8].try_into().ok()?),
            key: data[8],
            value: u64::from_le_bytes(data[9..17].try_into().ok()?),
        })
    }
}

/// Registers plus the index of the last entry applied to them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kv {
    /// Register values.
    pub registers: BTreeMap<u8, u64>,
    /// Index of the last entry applied.
    pub applied: Index,
}

impl Kv {
    /// Applies the entry at `index` (the next one).
    pub fn apply(&mut self, index: Index, write: Option<Write>) {
        assert_eq!(index, self.applied + 1, "applying out of order");
        if let Some(w) = write {
            self.registers.insert(w.key, w.value);
        }
        self.applied = index;
    }

    /// The value of register `key`.
    pub fn get(&self, key: u8) -> Option<u64> {
        self.registers.get(&key).copied()
    }
}
