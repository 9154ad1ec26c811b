//! Child processes of the cluster bench (raft-node and etcd members) and what `/proc` says
//! about them: CPU time and resident memory. The process type, the free ports and the
//! `/proc` readers are raft-testkit's, shared with chaos and the tests.

use std::path::PathBuf;

pub use raft_testkit::procfs::{cpu_s, cpu_s_sum, status_mib};
pub use raft_testkit::Proc;

/// Every process a bench step started. Each is killed and reaped when dropped (a
/// [`Proc`] owns a `raft_testkit::ChildGuard`), so an error or a panic in the middle of a
/// run (which unwinds through here) leaves no server running; `PR_SET_PDEATHSIG` (set by
/// [`Proc::start`]) covers a bench that is itself killed.
#[derive(Default)]
pub struct Procs(pub Vec<Proc>);

impl Procs {
    pub fn pids(&self) -> Vec<u32> {
        self.0.iter().filter_map(Proc::pid).collect()
    }

    pub fn check_alive(&mut self) -> Result<(), String> {
        self.0.iter_mut().try_for_each(Proc::check_alive)
    }
}

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
