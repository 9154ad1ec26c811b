//! One node's process: how it is started (under `ip netns exec` when namespaced), signalled,
//! killed and reaped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub(super) struct NodeProc {
    pub(super) id: u64,
    /// Program and arguments the node's command runs under (`ip netns exec NS`), if any.
    pub(super) prefix: Vec<String>,
    pub(super) args: Vec<String>,
    pub(super) data_dir: PathBuf,
    pub(super) log_path: PathBuf,
    pub(super) child: Option<Child>,
    pub(super) paused: bool,
    /// Started with `--join` (no membership of its own until the leader adds it): set once
    /// its data was wiped, so that a restart before it is added cannot bootstrap a cluster.
    pub(super) join: bool,
}

impl NodeProc {
    pub(super) fn start(&mut self, binary: &Path) -> std::io::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut command = match self.prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        // SAFETY: prctl(2) only, which is async-signal-safe, between fork and exec. The node
        // dies with the thread that started it (one of xtask's runtime threads, which live as
        // long as xtask), so a killed xtask leaves no node behind; `ip netns exec` execs the
        // node in place, and the setting survives exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .args(&self.args)
            .args(self.join.then_some("--join"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    pub(super) fn signal(&mut self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on a pid we spawned and have not reaped; no memory is touched.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    pub(super) fn kill(&mut self) {
        if self.paused {
            self.signal(libc::SIGCONT);
            self.paused = false;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// How the process ended, if it is not running (it was never started, was killed by us,
    /// or exited on its own).
    pub(super) fn exited(&mut self) -> Option<String> {
        match &mut self.child {
            None => Some("not running".into()),
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(format!("unknown ({e})")),
            },
        }
    }
}

/// Every process the run started; killed on drop, also when the run fails or panics.
pub(super) struct Processes(pub(super) Vec<NodeProc>);

impl Drop for Processes {
    fn drop(&mut self) {
        for node in &mut self.0 {
            node.kill();
        }
    }
}
