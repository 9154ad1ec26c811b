//! The protocol core alone: a 3-node cluster in memory, no IO, no serialization, committing
//! empty proposals with 1 and 256 proposals in flight. Reported as commits per second.

use std::collections::VecDeque;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft_core::{Config, MemLog, Membership, Message, RawNode, SnapshotMeta};

struct Cluster {
    nodes: Vec<RawNode<MemLog>>,
    inbox: VecDeque<Message>,
}

impl Cluster {
    fn new() -> Cluster {
        let membership = Membership::new_voters([1, 2, 3]);
        let nodes = (1..=3)
            .map(|id| {
                let store = MemLog::with_snapshot(SnapshotMeta {
                    membership: membership.clone(),
                    ..Default::default()
                });
                RawNode::new(Config::new(id), store).expect("valid config")
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            inbox: VecDeque::new(),
        };
        while !cluster.nodes[0].is_leader() {
            cluster.nodes[0].tick();
            cluster.pump();
        }
        cluster
    }

    /// Handles every Ready and delivers every message until the cluster is quiet.
    /// Persistence is immediate, so this measures the protocol's own CPU cost.
    fn pump(&mut self) -> u64 {
        let mut applied = 0;
        loop {
            let mut busy = false;
            for node in &mut self.nodes {
                while node.has_ready() {
                    busy = true;
                    let ready = node.ready();
                    node.storage_mut().persist(&ready);
                    self.inbox.extend(ready.messages);
                    self.inbox.extend(ready.messages_after_persist);
                    node.on_persisted(ready.seq);
                    if let Some(last) = ready.committed_entries.last() {
                        if node.id() == 1 {
                            applied += ready.committed_entries.len() as u64;
                        }
                        node.advance_applied(last.index);
                    }
                    // Keep the in-memory log short so the run measures the protocol, not memcpy.
                    let applied_index = node.applied_index();
                    if applied_index > node.first_index() + 4096 {
                        let meta = SnapshotMeta {
                            index: applied_index - 1024,
                            term: node.log_term(applied_index - 1024).expect("held"),
                            membership: node.applied_membership().clone(),
                        };
                        node.storage_mut().compact(meta);
                    }
                }
            }
            while let Some(m) = self.inbox.pop_front() {
                busy = true;
                let to = (m.to - 1) as usize;
                self.nodes[to].step(m).expect("in-memory log never fails");
            }
            if !busy {
                return applied;
            }
        }
    }

    /// Commits `total` proposals keeping `in_flight` outstanding.
    fn commit(&mut self, total: u64, in_flight: u64) {
        let mut proposed = 0;
        let mut committed = 0;
        while committed < total {
            while proposed < total && proposed - committed < in_flight {
                self.nodes[0].propose(Bytes::new()).expect("leader accepts");
                proposed += 1;
            }
            committed += self.pump();
        }
    }
}

fn core_commits(c: &mut Criterion) {
    let mut group = c.benchmark_group("core_3_nodes_commit");
    const PROPOSALS: u64 = 20_000;
    group.throughput(Throughput::Elements(PROPOSALS));
    group.sample_size(10);
    for in_flight in [1u64, 256] {
        group.bench_with_input(
            BenchmarkId::new("proposers", in_flight),
            &in_flight,
            |b, &w| {
                let mut cluster = Cluster::new();
                b.iter(|| cluster.commit(PROPOSALS, w));
            },
        );
    }
    group.finish();
}

criterion_group!(benches, core_commits);
criterion_main!(benches);
