//! A replicated counter: a state machine of our own, hosted by raft-node's runtime.
//!
//! Commands are `i64` amounts (8 bytes, little-endian) to add; the response and every query
//! answer is the counter's value (8 bytes, little-endian). Exactly-once: the machine keeps
//! each client's last request number and response, and answers a duplicate from it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use bytes::Bytes;
use raft_core::Index;
use raft_node::runtime::HostedMachine;
use raft_proto::LogCommand;
use raft_snapshot::{DigestHasher, RestoreError, SnapshotSource, StateDigest, StateMachine};

/// Clients remembered at most; the least recently active is forgotten first. Every replica
/// forgets the same one at the same index, so this stays deterministic.
const CLIENTS_MAX: usize = 1024;

/// The counter and its client table. BTreeMaps keep the snapshot bytes canonical.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    applied: Index,
    value: i64,
    /// client ID → (last request number, its response, index it was applied at).
    clients: BTreeMap<u64, (u64, i64, Index)>,
}

impl Counter {
    fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        w.write_all(&self.applied.to_le_bytes())?;
        w.write_all(&self.value.to_le_bytes())?;
        w.write_all(&(self.clients.len() as u64).to_le_bytes())?;
        for (client, (seq, response, at)) in &self.clients {
            for n in [*client, *seq, *response as u64, *at] {
                w.write_all(&n.to_le_bytes())?;
            }
        }
        Ok(())
    }

    fn forget_idlest_client(&mut self) {
        let idlest: BTreeSet<(Index, u64)> = self
            .clients
            .iter()
            .map(|(c, (_, _, at))| (*at, *c))
            .collect();
        if let Some((_, client)) = idlest.first() {
            self.clients.remove(client);
        }
    }
}

fn read_u64(r: &mut dyn Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

impl SnapshotSource for Counter {
    fn snapshot(&self, writer: &mut dyn Write) -> io::Result<()> {
        self.write_to(writer)
    }

    fn digest(&self) -> StateDigest {
        let mut hasher = DigestHasher::new();
        // Writing into a hasher cannot fail.
        let _ = self.write_to(&mut hasher);
        hasher.finish()
    }
}

impl StateMachine for Counter {
    type Response = i64;
    type Frozen = Counter;

    fn apply(&mut self, index: Index, command: &[u8]) -> i64 {
        self.applied = index;
        let Some(cmd) = LogCommand::decode(command) else {
            return self.value;
        };
        if let Some(session) = cmd.session {
            if let Some(&(seq, response, _)) = self.clients.get(&session.client_id) {
                if session.seq <= seq {
                    // A retry of a request already applied: its answer, not a second add.
                    return response;
                }
            }
        }
        let amount = <[u8; 8]>::try_from(cmd.op.as_ref()).map_or(0, i64::from_le_bytes);
        self.value = self.value.wrapping_add(amount);
        if let Some(session) = cmd.session {
            if !self.clients.contains_key(&session.client_id) && self.clients.len() >= CLIENTS_MAX {
                self.forget_idlest_client();
            }
            self.clients
                .insert(session.client_id, (session.seq, self.value, index));
        }
        self.value
    }

    fn applied_index(&self) -> Index {
        self.applied
    }

    fn freeze(&self) -> Counter {
        // Small enough to copy: the seed's first approach.
        self.clone()
    }

    fn restore(&mut self, reader: &mut dyn Read) -> Result<(), RestoreError> {
        let applied = read_u64(reader)?;
        let value = read_u64(reader)? as i64;
        let count = read_u64(reader)?;
        if count > CLIENTS_MAX as u64 {
            return Err(RestoreError::Malformed(format!("{count} clients")));
        }
        let mut clients = BTreeMap::new();
        for _ in 0..count {
            let (client, seq) = (read_u64(reader)?, read_u64(reader)?);
            let (response, at) = (read_u64(reader)? as i64, read_u64(reader)?);
            clients.insert(client, (seq, response, at));
        }
        *self = Counter {
            applied,
            value,
            clients,
        };
        Ok(())
    }
}

impl HostedMachine for Counter {
    fn query(&self, _op: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&self.value.to_le_bytes())
    }

    fn encode_response(response: &i64) -> Bytes {
        Bytes::copy_from_slice(&response.to_le_bytes())
    }

    fn skip_to(&mut self, index: Index) {
        self.applied = self.applied.max(index);
    }

    fn empty_like(&self) -> Self {
        Counter::default()
    }
}

/// An amount to add, as the machine reads it.
pub fn add(amount: i64) -> Bytes {
    Bytes::copy_from_slice(&amount.to_le_bytes())
}

/// A response or query answer, as the machine writes it.
pub fn value_of(bytes: &[u8]) -> Option<i64> {
    <[u8; 8]>::try_from(bytes).ok().map(i64::from_le_bytes)
}
