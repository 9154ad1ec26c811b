//! A node whose log lost its tail below its newest snapshot file (a crash after the snapshot
//! was written but before the log's last entries reached the disk, here a truncation of the
//! real log files) starts from that snapshot: the log then begins at it, so new entries go
//! after it (not at indexes the state machine already applied, where they would be skipped)
//! and the snapshot is the one the core offers to followers.

mod common;

use std::time::Duration;

use common::{runtime, Cluster};
use raft_core::LogStore;

#[test]
fn a_log_cut_below_the_newest_snapshot_restarts_from_the_snapshot() {
    let mut cluster = Cluster::start_with(1, &["--snapshot-entries-max", "15"]);
    let rt = runtime();
    rt.block_on(cluster.wait_leader(Duration::from_secs(15)));
    let client = cluster.client();
    let snapshot = rt.block_on(async {
        for i in 0..40 {
            client.set(format!("s/{i}"), format!("{i}")).await.unwrap();
        }
        cluster
            .wait_status(1, "a snapshot taken", |s| s.snapshot_index > 15)
            .await
            .status()
            .await
            .unwrap()
            .snapshot_index
    });
    cluster.kill(1);

    // Cut the log right after its compaction point: every snapshot file is ahead of it.
    let log_dir = cluster.data_dir(1).join("log");
    let mut log = raft_log::Log::open(&log_dir, raft_log::Options::default()).unwrap();
    let compacted = log.snapshot_meta().index;
    log.truncate_suffix(compacted + 1).unwrap();
    let log_last = log.last_index();
    drop(log);
    assert!(
        log_last < snapshot,
        "the log ends at {log_last}, the snapshot is at {snapshot}"
    );

    cluster.spawn(1);
    rt.block_on(async {
        cluster.wait_leader(Duration::from_secs(15)).await;
        let status = cluster
            .wait_status(1, "node 1 serving after the snapshot", |s| {
                s.commit_index > snapshot && s.applied_index >= s.commit_index
            })
            .await
            .status()
            .await
            .unwrap();
        assert!(
            status.first_index > snapshot,
            "the log starts at the snapshot, not before: {status:?}"
        );
        // Written after the restart: it must land after the snapshot and be applied.
        client
            .set("after".to_string(), "1".to_string())
            .await
            .unwrap();
        assert_eq!(
            client.get("after").await.unwrap().as_deref(),
            Some(&b"1"[..]),
            "a write after the restart was lost\n{}",
            cluster.logs()
        );
        assert_eq!(
            client.get("s/0").await.unwrap().as_deref(),
            Some(&b"0"[..]),
            "the snapshot's state is served"
        );
    });
    assert!(
        std::fs::read_to_string(cluster.log_path(1))
            .unwrap()
            .contains("it now starts at the snapshot"),
        "{}",
        cluster.logs()
    );
}
