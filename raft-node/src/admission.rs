//! Admission of client connections: a cap in total (`connections_max`) and per source IP
//! address (`connections_per_source_max`), slots of the total kept for the cluster's own
//! nodes (`connections_reserved`: followers forward writes to the leader over the client
//! port), and eviction of idle connections so that idle sockets cannot lock anyone out.
//!
//! When a cap is reached, the connection that has been idle longest (no request under way,
//! nothing buffered) among those of the source holding the most connections is closed to
//! make room; only when every connection is busy is the new one refused. An attacker's
//! thousands of silent sockets thus cost a newcomer one eviction, and a client that keeps
//! its connections busy is held to its source's share.
//!
//! A source is one of the cluster's nodes when its IP address is that of a configured peer.
//! On a cluster whose nodes share one host every local process looks like a node, so the
//! reserved slots tell nothing apart there; eviction still keeps the port open.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use crate::limits::ClientLimits;
use crate::metrics::{DisconnectReason, Metrics};

/// One connection's shared state: whether a request is under way, since when it is idle,
/// and the signal that closes it.
#[derive(Debug)]
struct ConnState {
    busy: AtomicBool,
    /// An operator's connection (authenticated as admin): never evicted.
    privileged: AtomicBool,
    /// Milliseconds since the table's epoch at which the connection last became idle.
    idle_since_ms: AtomicU64,
    evict: Notify,
}

#[derive(Debug)]
struct Entry {
    source: IpAddr,
    state: Arc<ConnState>,
}

#[derive(Debug, Default)]
struct Table {
    conns: HashMap<u64, Entry>,
    per_source: HashMap<IpAddr, usize>,
    next_id: u64,
}

impl Table {
    fn remove(&mut self, id: u64) -> bool {
        let Some(entry) = self.conns.remove(&id) else {
            return false;
        };
        if let Some(n) = self.per_source.get_mut(&entry.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&entry.source);
            }
        }
        true
    }

    /// Closes the idle connection (among those `eligible`) of the source holding the most
    /// connections, idle longest; whether there was one.
    fn evict_idle(&mut self, eligible: impl Fn(&Entry) -> bool) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, e)| {
                eligible(e)
                    && !e.state.busy.load(Ordering::Relaxed)
                    && !e.state.privileged.load(Ordering::Relaxed)
            })
            .max_by_key(|(_, e)| {
                (
                    self.per_source.get(&e.source).copied().unwrap_or(0),
                    std::cmp::Reverse(e.state.idle_since_ms.load(Ordering::Relaxed)),
                )
            })
            .map(|(&id, e)| (id, e.state.clone()));
        let Some((id, state)) = victim else {
            return false;
        };
        self.remove(id);
        // A permit is stored if the connection is not waiting right now: it sees it at its
        // next wait.
        state.evict.notify_one();
        true
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Admission {
    limits: Arc<ClientLimits>,
    nodes: HashSet<IpAddr>,
    metrics: Arc<Metrics>,
    epoch: Instant,
    table: Mutex<Table>,
}

impl Admission {
    /// A table enforcing `limits`, where `nodes` are the IP addresses of the cluster's
    /// members (their connections may take the reserved slots).
    pub fn new(
        limits: Arc<ClientLimits>,
        nodes: HashSet<IpAddr>,
        metrics: Arc<Metrics>,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            nodes,
            metrics,
            epoch: Instant::now(),
            table: Mutex::new(Table::default()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Admits a connection from `source`, closing an idle one if a cap is reached, or says
    /// which cap refused it (counted in the metrics).
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Ticket, DisconnectReason> {
        let result = self.admit_inner(source);
        if let Err(reason) = result {
            self.metrics.client_disconnect(reason);
        }
        result
    }

    fn admit_inner(self: &Arc<Self>, source: IpAddr) -> Result<Ticket, DisconnectReason> {
        let mut table = self.table.lock().expect("not poisoned");
        let from_source = table.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.limits.connections_per_source_max {
            if !table.evict_idle(|e| e.source == source) {
                return Err(DisconnectReason::RefusedPerSource);
            }
            self.metrics.client_disconnect(DisconnectReason::Evicted);
        }
        let cap = if self.nodes.contains(&source) {
            self.limits.connections_max
        } else {
            self.limits.connections_max - self.limits.connections_reserved
        };
        if table.conns.len() >= cap {
            if !table.evict_idle(|_| true) {
                return Err(DisconnectReason::RefusedTotal);
            }
            self.metrics.client_disconnect(DisconnectReason::Evicted);
        }
        let id = table.next_id;
        table.next_id += 1;
        let state = Arc::new(ConnState {
            busy: AtomicBool::new(false),
            privileged: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            evict: Notify::new(),
        });
        table.conns.insert(
            id,
            Entry {
                source,
                state: state.clone(),
            },
        );
        *table.per_source.entry(source).or_insert(0) += 1;
        Metrics::set(&self.metrics.client_connections, table.conns.len() as u64);
        Ok(Ticket {
            admission: self.clone(),
            id,
            state,
        })
    }

    /// Connections admitted and open.
    pub fn len(&self) -> usize {
        self.table.lock().expect("not poisoned").conns.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection's place in the [`Admission`] table, given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    state: Arc<ConnState>,
}

impl Ticket {
    /// Marks a request under way (`true`: not evictable) or the connection idle again.
    pub fn set_busy(&self, busy: bool) {
        if !busy && self.state.busy.load(Ordering::Relaxed) {
            self.state
                .idle_since_ms
                .store(self.admission.now_ms(), Ordering::Relaxed);
        }
        self.state.busy.store(busy, Ordering::Relaxed);
    }

    /// Marks the connection as an operator's (for the AUTH path, once a client proved an
    /// admin role): it is never evicted to make room, so an idle admin session survives a
    /// flood of newcomers.
    pub fn set_privileged(&self) {
        self.state.privileged.store(true, Ordering::Relaxed);
    }

    /// Resolves when the connection was chosen to be closed to make room.
    pub async fn evicted(&self) {
        self.state.evict.notified().await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut table = self.admission.table.lock().expect("not poisoned");
        table.remove(self.id);
        Metrics::set(
            &self.admission.metrics.client_connections,
            table.conns.len() as u64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(total: usize, per_source: usize, reserved: usize, nodes: &[&str]) -> Arc<Admission> {
        let limits = ClientLimits {
            connections_max: total,
            connections_per_source_max: per_source,
            connections_reserved: reserved,
            ..ClientLimits::default()
        };
        Admission::new(
            Arc::new(limits),
            nodes.iter().map(|a| a.parse().unwrap()).collect(),
            Arc::new(Metrics::default()),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn busy_connections_hold_their_caps_and_idle_ones_make_room() {
        let t = table(4, 2, 1, &["10.0.0.9"]);
        let a1 = t.admit(ip("10.0.0.1")).unwrap();
        let a2 = t.admit(ip("10.0.0.1")).unwrap();
        a1.set_busy(true);
        a2.set_busy(true);
        // Per source: both busy, so the third from 10.0.0.1 is refused.
        assert_eq!(
            t.admit(ip("10.0.0.1")).unwrap_err(),
            DisconnectReason::RefusedPerSource
        );
        let b1 = t.admit(ip("10.0.0.2")).unwrap();
        b1.set_busy(true);
        // Three of four taken, one reserved for the cluster's nodes: a stranger is refused,
        // a node gets the reserved slot.
        assert_eq!(
            t.admit(ip("10.0.0.3")).unwrap_err(),
            DisconnectReason::RefusedTotal
        );
        let node = t.admit(ip("10.0.0.9")).unwrap();
        assert_eq!(t.len(), 4);
        // Once a2 is idle, a newcomer takes its place and a2 is told to close.
        a2.set_busy(false);
        let c = t.admit(ip("10.0.0.3")).unwrap();
        assert_eq!(t.len(), 4);
        {
            let evicted = a2.evicted();
            futures::pin_mut!(evicted);
            assert!(futures::FutureExt::now_or_never(evicted).is_some());
        }
        drop(a2);
        assert_eq!(t.len(), 4, "an evicted ticket gives nothing back twice");
        drop((a1, b1, node, c));
        assert!(t.is_empty());
    }

    #[test]
    fn the_source_with_the_most_idle_connections_loses_one_first() {
        let t = table(6, 6, 0, &[]);
        let crowd: Vec<Ticket> = (0..4).map(|_| t.admit(ip("10.0.0.1")).unwrap()).collect();
        let other = t.admit(ip("10.0.0.2")).unwrap();
        let other2 = t.admit(ip("10.0.0.2")).unwrap();
        let _new = t.admit(ip("10.0.0.3")).unwrap();
        let evicted = |tk: &Ticket| {
            let f = tk.evicted();
            futures::pin_mut!(f);
            futures::FutureExt::now_or_never(f).is_some()
        };
        assert_eq!(crowd.iter().filter(|c| evicted(c)).count(), 1);
        assert!(!evicted(&other) && !evicted(&other2));
    }

    #[test]
    fn a_privileged_connection_is_never_evicted() {
        let t = table(2, 2, 0, &[]);
        let admin = t.admit(ip("10.0.0.1")).unwrap();
        admin.set_privileged();
        let _idle = t.admit(ip("10.0.0.1")).unwrap();
        // The idle one makes room, the admin does not.
        let busy = t.admit(ip("10.0.0.2")).unwrap();
        busy.set_busy(true);
        assert_eq!(
            t.admit(ip("10.0.0.3")).unwrap_err(),
            DisconnectReason::RefusedTotal
        );
        let f = admin.evicted();
        futures::pin_mut!(f);
        assert!(futures::FutureExt::now_or_never(f).is_none());
    }
}
