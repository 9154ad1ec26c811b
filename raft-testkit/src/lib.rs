//! Helpers shared by the workspace's tests, examples and `xtask` (never by product code):
//!
//! - [`free_addrs`]: ephemeral ports on 127.0.0.1 for servers a test or tool starts;
//! - [`ChildGuard`]: a child process killed (SIGKILL) and reaped when dropped, also when a
//!   panic unwinds through its owner;
//! - [`Proc`]: a restartable server process with its log file, as chaos and the bench run
//!   `raft-node` (and etcd);
//! - [`procfs`]: what `/proc` says about a process (CPU time, memory, start time).
//!
//! Linux only, as the tools that use it are (`/proc`, `PR_SET_PDEATHSIG`).

#![deny(missing_docs)]

mod addr;
mod child;
mod process;
pub mod procfs;

pub use addr::{free_addr, free_addrs, try_free_addr, try_free_addrs};
pub use child::{open_log, ChildGuard};
pub use process::{Proc, STOP_GRACE_DEFAULT};
