//! raft-log's disk WAL behind the storage seam (its writes are raft-core's `LogWriter`,
//! implemented in raft-log with its own `LogError`).

use std::path::Path;

use raft_core::{HardState, LogStore, Membership, NodeId, SnapshotMeta};
use raft_log::{Log, Options};

use crate::config::ConfigError;
use crate::store::{NodeStore, SyncJob};

impl NodeStore for Log {
    fn sync_job(&mut self) -> SyncJob<Self::Error> {
        // The handle syncs every write issued before it runs (group commit), on the sync
        // thread, while the runtime goes on appending.
        let handle = self.sync_handle();
        Box::new(move || handle.sync())
    }

    fn sync_needed(&self) -> bool {
        self.sync_handle().sync_needed()
    }

    fn describe(&self) -> String {
        format!("raft-log, {} segments", self.segment_count())
    }

    fn is_durable(&self) -> bool {
        true
    }
}

/// Opens (or creates) the log in `dir`. A brand-new log of a bootstrapping node records the
/// initial voters as its snapshot-0 membership, like `MemLog::with_snapshot`; a joining node
/// (`voters` empty) starts with none and waits to be added.
pub fn open_log(dir: &Path, voters: Vec<NodeId>) -> Result<Log, ConfigError> {
    let field = |m: String| ConfigError::new("data_dir", m);
    let mut log = Log::open(dir, Options::default())
        .map_err(|e| field(format!("opening the log in {}: {e}", dir.display())))?;
    let fresh = log.last_index() == 0
        && log.hard_state() == HardState::default()
        && log.snapshot_meta().membership == Membership::default();
    if fresh && !voters.is_empty() {
        log.install_snapshot(SnapshotMeta {
            index: 0,
            term: 0,
            membership: Membership::new_voters(voters),
        })
        .map_err(|e| field(format!("bootstrapping the log: {e}")))?;
    }
    Ok(log)
}
