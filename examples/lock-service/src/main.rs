//! A replicated lock service in one process: three raft-core nodes on in-memory logs,
//! exchanging messages through queues, each applying committed commands to its own
//! [`Locks`] state machine. It shows what an application needs to embed the protocol:
//! a `StateMachine`, a loop that handles each `Ready` in the documented order, and a
//! transport (here a `VecDeque`). `cargo run -p lock-service` prints the outcome.
//!
//! Nothing here is durable: a real deployment writes `Ready` entries to raft-log and sends
//! messages with raft-net, exactly where this loop appends to `MemLog` and pushes to the
//! queue.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};

use raft_core::{
    Config, EntryPayload, Index, MemLog, Membership, Message, NodeId, RawNode, SnapshotMeta,
};
use raft_snapshot::{DigestHasher, RestoreError, SnapshotSource, StateDigest, StateMachine};

/// A lock command: `A name owner` acquires, `R name owner` releases.
fn encode(acquire: bool, name: &str, owner: &str) -> Vec<u8> {
    format!("{} {name} {owner}", if acquire { "A" } else { "R" }).into_bytes()
}

/// Which owner holds each lock. A BTreeMap so snapshots and digests are canonical.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Locks {
    held: BTreeMap<String, String>,
    applied: Index,
}

impl Locks {
    fn write(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(w, "{}", self.applied)?;
        for (name, owner) in &self.held {
            writeln!(w, "{name} {owner}")?;
        }
        Ok(())
    }
}

impl SnapshotSource for Locks {
    fn snapshot(&self, writer: &mut dyn Write) -> io::Result<()> {
        self.write(writer)
    }

    fn digest(&self) -> StateDigest {
        let mut h = DigestHasher::new();
        let _ = self.write(&mut h);
        h.finish()
    }
}

impl StateMachine for Locks {
    /// `Ok(())` when granted or released, `Err(holder)` when someone else holds it.
    type Response = Result<(), String>;
    type Frozen = Locks;

    fn apply(&mut self, index: Index, command: &[u8]) -> Self::Response {
        self.applied = index;
        let text = String::from_utf8_lossy(command);
        let mut parts = text.split(' ');
        let (Some(op), Some(name), Some(owner)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("malformed".into());
        };
        match (op, self.held.get(name)) {
            ("A", None) => {
                self.held.insert(name.into(), owner.into());
                Ok(())
            }
            ("A", Some(holder)) | ("R", Some(holder)) if holder != owner => Err(holder.clone()),
            ("A", Some(_)) => Ok(()),
            ("R", Some(_)) => {
                self.held.remove(name);
                Ok(())
            }
            ("R", None) => Ok(()),
            _ => Err("malformed".into()),
        }
    }

    fn applied_index(&self) -> Index {
        self.applied
    }

    fn freeze(&self) -> Locks {
        self.clone()
    }

    fn restore(&mut self, reader: &mut dyn Read) -> Result<(), RestoreError> {
        let mut text = String::new();
        reader.read_to_string(&mut text)?;
        let mut lines = text.lines();
        let applied = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| RestoreError::Malformed("no applied index".into()))?;
        let mut held = BTreeMap::new();
        for line in lines {
            let (name, owner) = line
                .split_once(' ')
                .ok_or_else(|| RestoreError::Malformed(line.into()))?;
            held.insert(name.into(), owner.into());
        }
        *self = Locks { held, applied };
        Ok(())
    }
}

struct Replica {
    raw: RawNode<MemLog>,
    locks: Locks,
    /// Answers for proposals made here: `(index, term)` → response.
    answers: BTreeMap<Index, Result<(), String>>,
}

/// Handles one node's Ready in the order `raft_core::Ready` documents. Storage writes
/// and "syncs" are immediate here, so `on_persisted` follows at once.
fn drive(replica: &mut Replica, network: &mut VecDeque<Message>) {
    for _ in 0..16 {
        if !replica.raw.has_ready() {
            return;
        }
        let ready = replica.raw.ready();
        // This example never compacts its log, so no leader sends a snapshot; `persist`
        // would install one in the log all the same.
        replica.raw.storage_mut().persist(&ready);
        network.extend(ready.messages);
        network.extend(ready.messages_after_persist);
        if ready.seq > 0 {
            replica.raw.on_persisted(ready.seq);
        }
        for entry in &ready.committed_entries {
            if let EntryPayload::Command(data) = &entry.payload {
                let response = replica.locks.apply(entry.index, data);
                replica.answers.insert(entry.index, response);
            }
        }
        if let Some(last) = ready.committed_entries.last() {
            replica.raw.advance_applied(last.index);
        }
    }
}

struct Cluster {
    replicas: BTreeMap<NodeId, Replica>,
    network: VecDeque<Message>,
}

impl Cluster {
    fn new(ids: &[NodeId]) -> Cluster {
        let replicas = ids
            .iter()
            .map(|&id| {
                let log = MemLog::with_snapshot(SnapshotMeta {
                    membership: Membership::new_voters(ids.iter().copied()),
                    ..Default::default()
                });
                let raw = RawNode::new(Config::new(id), log).expect("valid config");
                let replica = Replica {
                    raw,
                    locks: Locks::default(),
                    answers: BTreeMap::new(),
                };
                (id, replica)
            })
            .collect();
        Cluster {
            replicas,
            network: VecDeque::new(),
        }
    }

    /// One round: every node ticks, then messages are delivered until the network is quiet.
    fn round(&mut self) {
        for r in self.replicas.values_mut() {
            r.raw.tick();
            drive(r, &mut self.network);
        }
        for _ in 0..10_000 {
            let Some(m) = self.network.pop_front() else {
                break;
            };
            if let Some(r) = self.replicas.get_mut(&m.to) {
                r.raw.step(m).expect("step");
                drive(r, &mut self.network);
            }
        }
    }

    fn leader(&mut self) -> NodeId {
        for _ in 0..1_000 {
            if let Some((&id, _)) = self.replicas.iter().find(|(_, r)| r.raw.is_leader()) {
                return id;
            }
            self.round();
        }
        panic!("no leader elected");
    }

    /// Proposes at the leader and runs rounds until the command is applied there.
    fn request(&mut self, command: Vec<u8>) -> Result<(), String> {
        let leader = self.leader();
        let id = self
            .replicas
            .get_mut(&leader)
            .unwrap()
            .raw
            .propose(command.into());
        let id = id.map_err(|e| format!("{e:?}"))?;
        for _ in 0..100 {
            self.round();
            let r = &self.replicas[&leader];
            if r.raw.applied_index() >= id.index {
                // Committed iff the entry applied at the index has the proposal's term.
                if r.raw.log_term(id.index) != Some(id.term) {
                    return Err("lost to a leader change; retry".into());
                }
                return r.answers[&id.index].clone();
            }
        }
        Err("not committed in time".into())
    }
}

fn main() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    println!("leader: node {}", cluster.leader());
    let script = [
        (true, "printer", "alice"),
        (true, "printer", "bob"),
        (false, "printer", "bob"),
        (false, "printer", "alice"),
        (true, "printer", "bob"),
    ];
    for (acquire, name, owner) in script {
        let verb = if acquire { "acquire" } else { "release" };
        match cluster.request(encode(acquire, name, owner)) {
            Ok(()) => println!("{owner} {verb} {name}: ok"),
            Err(holder) => println!("{owner} {verb} {name}: refused, held by {holder}"),
        }
    }
    for _ in 0..5 {
        cluster.round();
    }
    for (id, r) in &cluster.replicas {
        println!(
            "node {id}: applied {} locks {:?} digest {}",
            r.locks.applied,
            r.locks.held,
            r.locks.digest()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_agree_and_locks_exclude() {
        let mut cluster = Cluster::new(&[1, 2, 3]);
        assert_eq!(cluster.request(encode(true, "l", "a")), Ok(()));
        assert_eq!(cluster.request(encode(true, "l", "b")), Err("a".into()));
        assert_eq!(cluster.request(encode(false, "l", "b")), Err("a".into()));
        assert_eq!(cluster.request(encode(false, "l", "a")), Ok(()));
        assert_eq!(cluster.request(encode(true, "l", "b")), Ok(()));
        for _ in 0..5 {
            cluster.round();
        }
        let digests: Vec<_> = cluster
            .replicas
            .values()
            .map(|r| r.locks.digest())
            .collect();
        assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
        // Snapshot round trip.
        let leader_id = cluster.leader();
        let leader = &cluster.replicas[&leader_id];
        let mut body = Vec::new();
        leader.locks.freeze().snapshot(&mut body).unwrap();
        let mut restored = Locks::default();
        restored.restore(&mut body.as_slice()).unwrap();
        assert_eq!(restored.digest(), leader.locks.digest());
    }
}
