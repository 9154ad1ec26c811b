//! A child process that cannot outlive its owner: killed and reaped on drop.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How often [`ChildGuard::stop`] looks whether the child has exited.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A spawned child, killed with SIGKILL and reaped when dropped (also when a panic unwinds
/// through its owner), so a failing test or tool leaves no process and no zombie behind.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    /// Set once the child has been reaped: from then on its PID may name another process,
    /// so no signal is sent to it.
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `command`.
    pub fn spawn(command: &mut Command) -> std::io::Result<ChildGuard> {
        Ok(ChildGuard {
            child: command.spawn()?,
            status: None,
        })
    }

    /// Has the kernel SIGKILL the child when the thread that spawns it ends (which for a
    /// thread that lives as long as its process means: when the process dies, even by
    /// SIGKILL, where no drop runs). Call before [`spawn`](Self::spawn), from a thread that
    /// lives as long as the child should; the setting survives `exec` (so also a program run
    /// under `ip netns exec`, which execs it in place).
    pub fn die_with_spawning_thread(command: &mut Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl(2) only, which is async-signal-safe, between fork and exec; it touches
        // no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// The child's process ID.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, SIGTERM...) unless the child has been reaped.
    pub fn signal(&mut self, signal: i32) -> std::io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: kill(2) on a child we spawned and have not reaped; no memory is touched.
        if unsafe { libc::kill(self.child.id() as i32, signal) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// How the child ended, if it has (`None` while it runs).
    pub fn exited(&mut self) -> Option<String> {
        match self.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// SIGKILL (no shutdown path runs in the child), then reaps it.
    pub fn kill(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        // A child that exited meanwhile makes kill fail (ESRCH) or do nothing: either way
        // the wait below reaps it.
        let _ = self.child.kill();
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }

    /// SIGTERM, then SIGKILL if the child has not exited within `grace`; reaps it.
    pub fn stop(&mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        let _ = self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(STOP_POLL_INTERVAL);
        }
        self.kill()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Opens (creating it if need be) a log file for a child's output, appending, so a
/// restarted process adds to what it wrote before.
pub fn open_log(path: &Path) -> std::io::Result<File> {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> ChildGuard {
        ChildGuard::spawn(Command::new("sleep").arg("30")).expect("spawn sleep")
    }

    /// Whether `pid` names a live process or a zombie (a zombie still has `/proc/PID`).
    fn pid_exists(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn dropping_the_guard_kills_and_reaps_the_child() {
        let child = sleeper();
        let pid = child.id();
        assert!(pid_exists(pid));
        drop(child);
        // Reaped, so not even a zombie is left.
        assert!(!pid_exists(pid), "process {pid} survived its guard");
    }

    #[test]
    fn a_panic_unwinding_through_the_owner_kills_the_child() {
        let (tx, rx) = std::sync::mpsc::channel();
        let result = std::thread::spawn(move || {
            let child = sleeper();
            tx.send(child.id()).unwrap();
            panic!("a failing test");
        })
        .join();
        assert!(result.is_err());
        let pid = rx.recv().unwrap();
        assert!(!pid_exists(pid), "process {pid} survived the panic");
    }

    #[test]
    fn kill_stop_and_exited_report_how_the_child_ended() {
        let mut child = sleeper();
        assert_eq!(child.exited(), None);
        let status = child.kill().unwrap();
        assert!(!status.success());
        assert_eq!(
            child.kill().unwrap(),
            status,
            "a second kill reports the first"
        );
        assert!(child.exited().unwrap().contains("signal: 9"));
        // A signal to a reaped child is not sent (its PID may be another process's now).
        child.signal(libc::SIGTERM).unwrap();

        let mut child = sleeper();
        let status = child.stop(Duration::from_secs(10)).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(libc::SIGTERM),
            "sleep ends on SIGTERM"
        );

        let mut child = ChildGuard::spawn(&mut Command::new("true")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = child.kill().unwrap();
        assert!(
            status.success(),
            "exited on its own before the kill: {status}"
        );
    }
}
