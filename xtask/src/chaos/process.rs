//! One node's process: a [`Proc`] (run under `ip netns exec` when the nodes are namespaced)
//! and what chaos adds to it: the node's ID, its data directory, and `--join` once its data
//! was wiped.

use std::path::{Path, PathBuf};

use raft_testkit::Proc;

pub(super) struct NodeProc {
    pub(super) id: u64,
    pub(super) data_dir: PathBuf,
    /// The node's arguments, without `--join`.
    args: Vec<String>,
    /// Started with `--join` (no membership of its own until the leader adds it): set once
    /// its data was wiped, so that a restart before it is added cannot bootstrap a cluster.
    pub(super) join: bool,
    /// The process; killed and reaped when dropped.
    pub(super) proc: Proc,
}

impl NodeProc {
    /// Node `id`, not started: `binary args` under `prefix`, its output in `log_path`.
    pub(super) fn new(
        id: u64,
        binary: &Path,
        prefix: Vec<String>,
        args: Vec<String>,
        data_dir: PathBuf,
        log_path: PathBuf,
    ) -> NodeProc {
        let proc = Proc::new(format!("node {id}"), binary, args.clone(), log_path)
            .with_prefix(prefix)
            // Info, not the bench's warn: a failing run is diagnosed from these logs.
            .with_env("RUST_LOG", "info");
        NodeProc {
            id,
            data_dir,
            args,
            join: false,
            proc,
        }
    }

    /// Starts (or restarts) the node, with `--join` if set. Called from one of xtask's
    /// runtime threads, which live as long as xtask: the node dies with it (see
    /// [`Proc::start`]).
    pub(super) fn start(&mut self) -> std::io::Result<()> {
        let mut args = self.args.clone();
        if self.join {
            args.push("--join".into());
        }
        self.proc.set_args(args);
        self.proc.start()
    }
}
