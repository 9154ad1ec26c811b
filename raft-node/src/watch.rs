//! The watch hub: a bounded history of the key changes this node applied, read by watchers
//! (keyspace notifications, `WATCHLOG`, HTTP `/watch`) from any index it still holds.
//!
//! The hub is the state machine's [`ChangeSink`]. Each applied entry that changed keys
//! becomes one [`AppliedChanges`] record at the end of the history; the oldest records are
//! evicted once the history holds more than `watch_history_changes_max` changes or
//! `watch_history_bytes_max` bytes. The history covers every change with an index in
//! `(floor, last]`: a [`Watcher`] positioned at `p >= floor` reads the records after `p`
//! in log order, exactly once each, and then waits for new ones; a watcher at `p < floor`
//! (it asked for an index the history no longer reaches, or it read more slowly than the
//! history evicts) gets [`WatchError::Compacted`] and must resync from a fresh read.
//!
//! Watchers have no queue of their own: the history is their shared queue, read through a
//! cursor. Recording a change never waits for a watcher (one short lock, one `watch`
//! channel send), a watcher holds at most one batch of records of its own
//! ([`WATCH_BATCH_CHANGES_MAX`], [`WATCH_BATCH_BYTES_MAX`]), and one that falls behind costs
//! nothing until it is cut off. A watcher that stops reading its socket is cut off by the
//! connection's write timeout.
//!
//! After a restart the state machine is restored from its snapshot (the history starts at
//! the snapshot's index) and the log after it is replayed through the hub, so the history
//! is rebuilt from there. A snapshot installed from the leader cuts the history at the
//! snapshot's index: the changes before it are known only as a state.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use raft_core::Index;
use tokio::sync::watch;

use crate::changes::{ChangeSink, KeyChange, KeyEvent};

/// Bytes counted for each change besides its key and value (the record, the `Vec` slot,
/// the `Bytes` handles).
pub const CHANGE_OVERHEAD_BYTES: usize = 64;
/// Records a watcher takes from the history at once.
pub const WATCH_BATCH_CHANGES_MAX: usize = 1_024;
/// Bytes of records a watcher takes from the history at once (at least one record is
/// always taken, whatever its size).
pub const WATCH_BATCH_BYTES_MAX: usize = 1 << 20;

/// Default of `watch_history_changes_max`.
pub const WATCH_HISTORY_CHANGES_MAX_DEFAULT: usize = 100_000;
/// Default of `watch_history_bytes_max`: 64 MiB.
pub const WATCH_HISTORY_BYTES_MAX_DEFAULT: usize = 64 << 20;

/// The bounds of the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchLimits {
    /// Changes held at most.
    pub history_changes_max: usize,
    /// Bytes held at most (keys, values and [`CHANGE_OVERHEAD_BYTES`] a change). The newest
    /// record is held even if it alone is larger.
    pub history_bytes_max: usize,
}

impl WatchLimits {
    /// The `[limits]` fields that bound the history.
    pub fn from_client_limits(limits: &crate::limits::ClientLimits) -> Self {
        WatchLimits {
            history_changes_max: limits.watch_history_changes_max,
            history_bytes_max: limits.watch_history_bytes_max,
        }
    }
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits {
            history_changes_max: WATCH_HISTORY_CHANGES_MAX_DEFAULT,
            history_bytes_max: WATCH_HISTORY_BYTES_MAX_DEFAULT,
        }
    }
}

/// The changes one applied entry made, in the order its commands made them.
#[derive(Debug, PartialEq, Eq)]
pub struct AppliedChanges {
    /// The log index of the entry.
    pub index: Index,
    /// What it changed.
    pub changes: Vec<KeyChange>,
    bytes: usize,
}

impl AppliedChanges {
    fn new(index: Index, changes: Vec<KeyChange>) -> Self {
        let bytes = changes.iter().map(change_bytes).sum();
        AppliedChanges {
            index,
            changes,
            bytes,
        }
    }

    /// Bytes this record counts against the history's bound.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The changes to keys starting with `prefix` (published messages are no key's).
    pub fn matching<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = &'a KeyChange> {
        self.changes
            .iter()
            .filter(move |c| c.event != KeyEvent::Publish && c.key.starts_with(prefix))
    }
}

fn change_bytes(c: &KeyChange) -> usize {
    c.key.len() + c.value.as_ref().map_or(0, Bytes::len) + CHANGE_OVERHEAD_BYTES
}

/// Why a watcher cannot go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchError {
    /// The history no longer reaches back to the watcher's position.
    Compacted {
        /// The last index the watcher has (its position).
        position: Index,
        /// The history holds changes after this index only.
        floor: Index,
        /// The watcher had caught up and then fell behind: it read more slowly than the
        /// history evicts.
        fell_behind: bool,
    },
    /// The node is shutting down.
    Closed,
}

impl fmt::Display for WatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchError::Compacted {
                position,
                floor,
                fell_behind: false,
            } => write!(
                f,
                "compacted, resync: the changes after index {position} are no longer held \
                 (this node's history starts after index {floor}); read the keys again and \
                 watch from a newer index"
            ),
            WatchError::Compacted {
                position, floor, ..
            } => write!(
                f,
                "compacted, resync: slow watcher cut off at index {position}: it read more \
                 slowly than the history (now starting after index {floor}) evicts; read \
                 the keys again and watch from a newer index"
            ),
            WatchError::Closed => write!(f, "the node is shutting down"),
        }
    }
}

impl std::error::Error for WatchError {}

#[derive(Debug, Default)]
struct History {
    records: VecDeque<Arc<AppliedChanges>>,
    /// Every change with an index in `(floor, last]` is in `records`.
    floor: Index,
    last: Index,
    changes: usize,
    bytes: usize,
    /// Records evicted for the bounds (not by a restore), for metrics and tests.
    evicted: u64,
}

impl History {
    fn evict_over(&mut self, limits: &WatchLimits) {
        while self.records.len() > 1
            && (self.changes > limits.history_changes_max || self.bytes > limits.history_bytes_max)
        {
            let old = self.records.pop_front().expect("len > 1");
            self.changes -= old.changes.len();
            self.bytes -= old.bytes;
            self.floor = old.index;
            self.evicted += 1;
        }
    }
}

/// See the module documentation.
pub struct WatchHub {
    history: Mutex<History>,
    limits: WatchLimits,
    /// The hub's `last` index, for waiting watchers.
    last_tx: watch::Sender<Index>,
    /// Who subscribes to what on this node, for PUBLISH's answer.
    subscribers: Subscribers,
}

/// The channels and patterns this node's connections subscribe to, counted, so that
/// PUBLISH answers how many subscriptions here a message reaches (Redis' answer, for this
/// node alone). Each connection registers what it subscribes and removes it when it
/// unsubscribes or closes.
#[derive(Debug, Default)]
pub struct Subscribers {
    counts: Mutex<SubscriberCounts>,
}

#[derive(Debug, Default)]
struct SubscriberCounts {
    channels: std::collections::HashMap<Bytes, usize>,
    patterns: std::collections::HashMap<Bytes, (crate::glob::Pattern, usize)>,
}

impl Subscribers {
    fn lock(&self) -> std::sync::MutexGuard<'_, SubscriberCounts> {
        // Counters only: a poisoned lock still holds usable numbers.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more connection subscribes to `channel`.
    pub fn add_channel(&self, channel: &Bytes) {
        *self.lock().channels.entry(channel.clone()).or_default() += 1;
    }

    /// One connection fewer subscribes to `channel`.
    pub fn remove_channel(&self, channel: &Bytes) {
        let mut c = self.lock();
        if let Some(n) = c.channels.get_mut(channel) {
            *n -= 1;
            if *n == 0 {
                c.channels.remove(channel);
            }
        }
    }

    /// One more connection subscribes to `pattern`.
    pub fn add_pattern(&self, pattern: &Bytes) {
        let mut c = self.lock();
        c.patterns
            .entry(pattern.clone())
            .or_insert_with(|| (crate::glob::Pattern::new(pattern), 0))
            .1 += 1;
    }

    /// One connection fewer subscribes to `pattern`.
    pub fn remove_pattern(&self, pattern: &Bytes) {
        let mut c = self.lock();
        if let Some((_, n)) = c.patterns.get_mut(pattern) {
            *n -= 1;
            if *n == 0 {
                c.patterns.remove(pattern);
            }
        }
    }

    /// The subscriptions a message on `channel` reaches: its subscribers plus, per
    /// pattern matching it, that pattern's subscribers, as Redis counts.
    pub fn receivers(&self, channel: &[u8]) -> usize {
        let c = self.lock();
        let direct = c.channels.get(channel).copied().unwrap_or(0);
        let by_pattern: usize = c
            .patterns
            .values()
            .filter(|(p, _)| p.matches(channel))
            .map(|(_, n)| n)
            .sum();
        direct + by_pattern
    }
}

impl fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = self.lock();
        f.debug_struct("WatchHub")
            .field("floor", &h.floor)
            .field("last", &h.last)
            .field("records", &h.records.len())
            .field("bytes", &h.bytes)
            .finish()
    }
}

/// A snapshot of the hub's extent, for status and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubExtent {
    /// Changes after this index are held.
    pub floor: Index,
    /// The newest index the hub knows of.
    pub last: Index,
    /// Changes held.
    pub changes: usize,
    /// Bytes held.
    pub bytes: usize,
    /// Records evicted for the bounds since the start.
    pub evicted: u64,
}

impl WatchHub {
    /// An empty hub whose history starts at index 0.
    pub fn new(limits: WatchLimits) -> Arc<WatchHub> {
        Arc::new(WatchHub {
            history: Mutex::new(History::default()),
            limits,
            last_tx: watch::channel(0).0,
            subscribers: Subscribers::default(),
        })
    }

    /// Who subscribes to what on this node.
    pub fn subscribers(&self) -> &Subscribers {
        &self.subscribers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        // Nothing under the lock can panic half-way through a change of the history, so a
        // poisoned lock still guards a consistent history.
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the history starts and ends.
    pub fn extent(&self) -> HubExtent {
        let h = self.lock();
        HubExtent {
            floor: h.floor,
            last: h.last,
            changes: h.changes,
            bytes: h.bytes,
            evicted: h.evicted,
        }
    }

    /// A watcher that gets every change with an index above `from`. Fails at once if the
    /// history does not reach back to `from`.
    pub fn watch_from(self: &Arc<Self>, from: Index) -> Result<Watcher, WatchError> {
        let h = self.lock();
        if from < h.floor {
            return Err(WatchError::Compacted {
                position: from,
                floor: h.floor,
                fell_behind: false,
            });
        }
        let caught_up = from >= h.last;
        drop(h);
        Ok(Watcher {
            hub: self.clone(),
            position: from,
            caught_up,
            last_rx: self.last_tx.subscribe(),
        })
    }

    /// A watcher of the changes applied from now on (Redis' SUBSCRIBE).
    pub fn watch_now(self: &Arc<Self>) -> Watcher {
        let from = self.lock().last;
        self.watch_from(from)
            .expect("the newest index is always held")
    }

    /// Records after `position`, at most one batch; `Err` if the history no longer reaches
    /// back to `position`.
    fn read_after(
        &self,
        position: Index,
        fell_behind: bool,
    ) -> Result<(Vec<Arc<AppliedChanges>>, Index), WatchError> {
        let h = self.lock();
        if position < h.floor {
            return Err(WatchError::Compacted {
                position,
                floor: h.floor,
                fell_behind,
            });
        }
        let start = h.records.partition_point(|r| r.index <= position);
        let mut batch = Vec::new();
        let mut bytes = 0;
        for r in h.records.range(start..) {
            if !batch.is_empty()
                && (batch.len() >= WATCH_BATCH_CHANGES_MAX
                    || bytes + r.bytes > WATCH_BATCH_BYTES_MAX)
            {
                break;
            }
            bytes += r.bytes;
            batch.push(r.clone());
        }
        // Past the batch's last record, or, when nothing is left to read, at the hub's last
        // index: every change up to there has been handed over.
        let reached = match batch.last() {
            Some(r) => r.index,
            None => h.last.max(position),
        };
        Ok((batch, reached))
    }
}

impl ChangeSink for WatchHub {
    fn applied(&self, index: Index, changes: &[KeyChange]) {
        let mut h = self.lock();
        if index <= h.last {
            // Below a snapshot restored meanwhile (a leader's snapshot is restored off the
            // apply path while older entries still apply), or an entry applied again after
            // a restore: already accounted for.
            return;
        }
        let record = Arc::new(AppliedChanges::new(index, changes.to_vec()));
        h.changes += record.changes.len();
        h.bytes += record.bytes;
        h.last = index;
        h.records.push_back(record);
        h.evict_over(&self.limits);
        drop(h);
        self.last_tx.send_replace(index);
    }

    fn restored(&self, index: Index) {
        let mut h = self.lock();
        if index <= h.last {
            // A snapshot older than what the hub already holds (one prepared but refused
            // because the node had applied past it): the history stays true.
            return;
        }
        h.records.clear();
        h.changes = 0;
        h.bytes = 0;
        h.floor = index;
        h.last = index;
        drop(h);
        self.last_tx.send_replace(index);
    }
}

/// A cursor into the hub's history; see the module documentation.
pub struct Watcher {
    hub: Arc<WatchHub>,
    /// Every change up to this index has been handed to the watcher.
    position: Index,
    /// Whether the watcher has read up to the hub's last index at some point.
    caught_up: bool,
    last_rx: watch::Receiver<Index>,
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher")
            .field("position", &self.position)
            .field("caught_up", &self.caught_up)
            .finish()
    }
}

impl Watcher {
    /// Every change up to this index has been handed over: the index to resume from.
    pub fn position(&self) -> Index {
        self.position
    }

    /// The next records (one batch at most), without waiting: empty when there is nothing
    /// new yet.
    pub fn try_next(&mut self) -> Result<Vec<Arc<AppliedChanges>>, WatchError> {
        let (batch, reached) = self.hub.read_after(self.position, self.caught_up)?;
        self.position = reached;
        if batch.is_empty() {
            self.caught_up = true;
        }
        Ok(batch)
    }

    /// The next records (one batch at most), waiting for some.
    pub async fn next(&mut self) -> Result<Vec<Arc<AppliedChanges>>, WatchError> {
        loop {
            // Marked seen before reading, so a record recorded after the read wakes us.
            self.last_rx.borrow_and_update();
            let batch = self.try_next()?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            if self.last_rx.changed().await.is_err() {
                return Err(WatchError::Closed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::KeyEvent;

    fn set(key: &str, value: &str) -> KeyChange {
        KeyChange {
            key: Bytes::copy_from_slice(key.as_bytes()),
            event: KeyEvent::Set,
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
        }
    }

    fn indexes(batch: &[Arc<AppliedChanges>]) -> Vec<Index> {
        batch.iter().map(|r| r.index).collect()
    }

    /// Reads everything available now.
    fn drain(w: &mut Watcher) -> Result<Vec<Index>, WatchError> {
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let batch = w.try_next()?;
            if batch.is_empty() {
                return Ok(out);
            }
            out.extend(indexes(&batch));
        }
        panic!("the watcher never ran dry");
    }

    #[test]
    fn a_watcher_gets_every_change_after_its_index_once_in_order() {
        let hub = WatchHub::new(WatchLimits::default());
        // Entries that changed nothing never reach the sink: indexes are sparse.
        for i in [1, 2, 5, 6, 9] {
            hub.applied(i, &[set(&format!("k{i}"), "v")]);
        }
        let mut from0 = hub.watch_from(0).unwrap();
        assert_eq!(drain(&mut from0).unwrap(), vec![1, 2, 5, 6, 9]);
        let mut from5 = hub.watch_from(5).unwrap();
        assert_eq!(drain(&mut from5).unwrap(), vec![6, 9]);
        // An index between records: the next record after it.
        let mut from7 = hub.watch_from(7).unwrap();
        assert_eq!(drain(&mut from7).unwrap(), vec![9]);
        // Ahead of the node (a lagging replica): waits for what comes after it.
        let mut ahead = hub.watch_from(20).unwrap();
        assert!(drain(&mut ahead).unwrap().is_empty());
        hub.applied(12, &[set("a", "1")]);
        hub.applied(21, &[set("b", "2")]);
        assert_eq!(drain(&mut from0).unwrap(), vec![12, 21]);
        assert_eq!(drain(&mut ahead).unwrap(), vec![21]);
        assert_eq!(from0.position(), 21);
    }

    #[test]
    fn resuming_from_the_last_seen_index_repeats_nothing_and_skips_nothing() {
        let hub = WatchHub::new(WatchLimits::default());
        let mut seen = Vec::new();
        let mut last = 0;
        for round in 0..20u64 {
            for j in 0..7 {
                let i = round * 10 + j + 1;
                hub.applied(i, &[set("k", &i.to_string())]);
            }
            // A watcher that reads part of what is there, then disconnects.
            let mut w = hub.watch_from(last).unwrap();
            let batch = w.try_next().unwrap();
            let take = (round as usize % 3 + 1).min(batch.len());
            for r in &batch[..take] {
                seen.push(r.index);
                last = r.index;
            }
        }
        let mut w = hub.watch_from(last).unwrap();
        seen.extend(drain(&mut w).unwrap());
        let expected: Vec<Index> = (0..20u64)
            .flat_map(|r| (0..7).map(move |j| r * 10 + j + 1))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn an_index_the_history_no_longer_holds_is_refused_as_compacted() {
        let hub = WatchHub::new(WatchLimits {
            history_changes_max: 3,
            history_bytes_max: usize::MAX,
        });
        for i in 1..=10 {
            hub.applied(i, &[set("k", "v")]);
        }
        let extent = hub.extent();
        assert_eq!((extent.floor, extent.last, extent.changes), (7, 10, 3));
        let err = hub.watch_from(6).unwrap_err();
        assert_eq!(
            err,
            WatchError::Compacted {
                position: 6,
                floor: 7,
                fell_behind: false
            }
        );
        assert!(err.to_string().starts_with("compacted, resync"), "{err}");
        let mut w = hub.watch_from(7).unwrap();
        assert_eq!(drain(&mut w).unwrap(), vec![8, 9, 10]);
    }

    #[test]
    fn a_restored_snapshot_cuts_the_history_at_its_index() {
        let hub = WatchHub::new(WatchLimits::default());
        for i in 1..=5 {
            hub.applied(i, &[set("k", "v")]);
        }
        let mut behind = hub.watch_from(3).unwrap();
        let mut at_snapshot = hub.watch_from(5).unwrap();
        drain(&mut at_snapshot).unwrap();
        hub.restored(40);
        // Older entries still applying beside the restore are below the cut: ignored.
        hub.applied(6, &[set("k", "old")]);
        hub.applied(41, &[set("k", "new")]);
        assert!(matches!(
            behind.try_next(),
            Err(WatchError::Compacted { floor: 40, .. })
        ));
        // At 5 the watcher misses 6..=40, which only the snapshot knows.
        assert!(at_snapshot.try_next().is_err());
        let mut w = hub.watch_from(40).unwrap();
        assert_eq!(drain(&mut w).unwrap(), vec![41]);
        // A snapshot older than what the hub holds (prepared, then refused) changes nothing.
        hub.restored(30);
        let mut w = hub.watch_from(40).unwrap();
        assert_eq!(drain(&mut w).unwrap(), vec![41]);
        // Re-applied entries after a restore are not delivered twice.
        hub.applied(41, &[set("k", "again")]);
        assert_eq!(hub.extent().changes, 1);
    }

    #[test]
    fn a_slow_watcher_is_cut_off_and_holds_no_memory() {
        let limits = WatchLimits {
            history_changes_max: 1_000,
            history_bytes_max: 64 << 10,
        };
        let hub = WatchHub::new(limits);
        let mut slow = hub.watch_now();
        let mut fast = hub.watch_now();
        assert!(drain(&mut slow).unwrap().is_empty());
        let value = "x".repeat(900);
        let mut fast_seen = Vec::new();
        for i in 1..=10_000 {
            hub.applied(i, &[set(&format!("key{i}"), &value)]);
            let e = hub.extent();
            assert!(e.bytes <= limits.history_bytes_max, "{e:?}");
            assert!(e.changes <= limits.history_changes_max, "{e:?}");
            if i % 10 == 0 {
                fast_seen.extend(drain(&mut fast).unwrap());
            }
        }
        assert_eq!(fast_seen, (1..=10_000).collect::<Vec<_>>());
        let err = slow.try_next().unwrap_err();
        assert!(
            matches!(
                err,
                WatchError::Compacted {
                    position: 0,
                    fell_behind: true,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("slow watcher"), "{err}");
        assert!(hub.extent().evicted > 9_000);
    }

    #[test]
    fn a_batch_is_bounded_but_always_makes_progress() {
        let hub = WatchHub::new(WatchLimits::default());
        let big = "y".repeat(WATCH_BATCH_BYTES_MAX + 1);
        hub.applied(1, &[set("big", &big)]);
        for i in 2..=3_000 {
            hub.applied(i, &[set("k", "v")]);
        }
        let mut w = hub.watch_from(0).unwrap();
        assert_eq!(indexes(&w.try_next().unwrap()), vec![1]);
        let batch = w.try_next().unwrap();
        assert_eq!(batch.len(), WATCH_BATCH_CHANGES_MAX);
        assert_eq!(batch[0].index, 2);
        assert_eq!(
            drain(&mut w).unwrap().len(),
            3_000 - 1 - WATCH_BATCH_CHANGES_MAX
        );
    }

    #[test]
    fn a_waiting_watcher_wakes_for_a_new_change() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let hub = WatchHub::new(WatchLimits::default());
            let mut w = hub.watch_now();
            let writer = {
                let hub = hub.clone();
                tokio::spawn(async move {
                    for i in 1..=50 {
                        hub.applied(i, &[set("k", &i.to_string())]);
                        tokio::task::yield_now().await;
                    }
                })
            };
            let mut seen = Vec::new();
            while seen.len() < 50 {
                let batch = tokio::time::timeout(std::time::Duration::from_secs(5), w.next())
                    .await
                    .expect("woken within 5 s")
                    .unwrap();
                seen.extend(indexes(&batch));
            }
            writer.await.unwrap();
            assert_eq!(seen, (1..=50).collect::<Vec<_>>());
        });
    }

    #[test]
    fn prefix_filtering_keeps_the_entry_order() {
        let r = AppliedChanges::new(
            7,
            vec![set("app/a", "1"), set("other", "2"), set("app/b", "3")],
        );
        let keys: Vec<&[u8]> = r.matching(b"app/").map(|c| c.key.as_ref()).collect();
        assert_eq!(keys, vec![b"app/a".as_ref(), b"app/b".as_ref()]);
        // A published message on a channel under the prefix is no key's change.
        let published = KeyChange {
            key: Bytes::from_static(b"app/channel"),
            event: KeyEvent::Publish,
            value: Some(Bytes::from_static(b"hi")),
        };
        let r = AppliedChanges::new(8, vec![published, set("app/c", "4")]);
        let keys: Vec<&[u8]> = r.matching(b"app/").map(|c| c.key.as_ref()).collect();
        assert_eq!(keys, vec![&b"app/c"[..]]);
    }
}
