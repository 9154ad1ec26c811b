//! A state machine of your own with raft-snapshot alone: apply a few commands to the small
//! key-value machine of `machine.rs`, write a snapshot of its frozen state to a snapshot
//! store, open the newest snapshot again and restore a fresh machine from it, whose digest
//! matches. Run with `cargo run -p raft-snapshot --example kv`.

mod machine;

use machine::{KvCommand, KvStateMachine};
use raft_core::SnapshotMeta;
use raft_snapshot::{restore_state_machine, SnapshotSource, SnapshotStore, StateMachine};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("raft-snapshot-kv-example-{}", std::process::id()));
    let result = run(&dir);
    // The store's directory goes whether or not the run succeeded.
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let (store, _report) = SnapshotStore::open(dir, Default::default())?;
    let mut sm = KvStateMachine::new();
    let put = |key: &str, value: &str| {
        KvCommand::Put {
            key: key.into(),
            value: value.into(),
        }
        .encode()
    };
    sm.apply(1, &put("greeting", "hello"));
    sm.apply(2, &put("subject", "world"));
    sm.apply(
        3,
        &KvCommand::Delete {
            key: "subject".into(),
        }
        .encode(),
    );

    let meta = SnapshotMeta {
        index: 3,
        term: 1,
        ..Default::default()
    };
    store.write_snapshot(meta, &sm.freeze())?;

    let latest = store
        .open_latest()?
        .snapshot
        .ok_or("the snapshot just written is not found")?;
    let mut restored = KvStateMachine::new();
    restore_state_machine(latest, &mut restored)?;
    assert_eq!(restored.digest(), sm.digest());
    println!(
        "restored {} key(s) at index {}, digest {}",
        restored.len(),
        restored.applied_index(),
        restored.digest()
    );
    Ok(())
}
