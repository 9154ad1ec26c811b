//! A server process that a tool starts, stops, signals and restarts, its output appended to
//! one log file across restarts: how `cargo xtask chaos` runs its nodes and `cargo xtask
//! bench` its nodes and etcd members.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::child::{open_log, ChildGuard};

/// How long [`Proc::stop`] waits after SIGTERM before SIGKILL, unless set otherwise.
pub const STOP_GRACE_DEFAULT: Duration = Duration::from_secs(5);

/// One server process: how to start it, and the running child if any (killed and reaped
/// when the `Proc` is dropped).
#[derive(Debug)]
pub struct Proc {
    /// How the process is named in errors ("raft-node 2", "etcd 1").
    pub name: String,
    /// Program and arguments the binary runs under (`ip netns exec NS`), if any.
    prefix: Vec<String>,
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log_path: PathBuf,
    /// How long [`stop`](Self::stop) waits after SIGTERM before SIGKILL.
    stop_grace: Duration,
    child: Option<ChildGuard>,
    /// Stopped by [`pause`](Self::pause) and not resumed since.
    paused: bool,
}

impl Proc {
    /// A process of `binary` with `args`, not started, whose stdout and stderr go to
    /// `log_path`.
    pub fn new(
        name: impl Into<String>,
        binary: &Path,
        args: Vec<String>,
        log_path: PathBuf,
    ) -> Proc {
        Proc {
            name: name.into(),
            prefix: Vec::new(),
            binary: binary.to_owned(),
            args,
            env: Vec::new(),
            log_path,
            stop_grace: STOP_GRACE_DEFAULT,
            child: None,
            paused: false,
        }
    }

    /// Runs the binary under `prefix` (a program and its arguments, like `ip netns exec NS`,
    /// which must exec the binary in place).
    pub fn with_prefix(mut self, prefix: Vec<String>) -> Proc {
        self.prefix = prefix;
        self
    }

    /// Sets an environment variable of the process.
    pub fn with_env(mut self, key: &str, value: &str) -> Proc {
        self.env.push((key.into(), value.into()));
        self
    }

    /// How long [`stop`](Self::stop) waits after SIGTERM before SIGKILL.
    pub fn with_stop_grace(mut self, grace: Duration) -> Proc {
        self.stop_grace = grace;
        self
    }

    /// Replaces the arguments used by the next [`start`](Self::start).
    pub fn set_args(&mut self, args: Vec<String>) {
        self.args = args;
    }

    /// The file the process's output is appended to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Spawns the process, its output appended to its log file; a child that had exited is
    /// replaced, one still running is an error. Spawn from a thread that lives for the whole
    /// run: the child is killed by the kernel when that thread ends (PR_SET_PDEATHSIG), so
    /// even a SIGKILLed tool, whose drops never run, leaves no server behind.
    pub fn start(&mut self) -> std::io::Result<()> {
        if self.running() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} already running", self.name),
            ));
        }
        let log = open_log(&self.log_path)?;
        let mut command = match self.prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        ChildGuard::die_with_spawning_thread(&mut command);
        self.child = Some(ChildGuard::spawn(&mut command)?);
        self.paused = false;
        Ok(())
    }

    /// The process ID while a child exists (running or exited but not yet replaced).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::id)
    }

    fn running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// How the process ended, if it is not running (never started, stopped by us, or
    /// exited on its own).
    pub fn exited(&mut self) -> Option<String> {
        match &mut self.child {
            None => Some("not running".into()),
            Some(child) => child.exited(),
        }
    }

    /// Fails if the process is not running (it should be serving), naming its log.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.exited() {
            None => Ok(()),
            Some(how) => Err(format!(
                "{} exited ({how}); see {}",
                self.name,
                self.log_path.display()
            )),
        }
    }

    /// Sends `signal` to the running process, if any.
    pub fn signal(&mut self, signal: i32) {
        if let Some(child) = &mut self.child {
            let _ = child.signal(signal);
        }
    }

    /// SIGSTOP: the process freezes (a node that stops answering without its sockets
    /// closing) until [`resume`](Self::resume).
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT to a process [`pause`](Self::pause) stopped; nothing otherwise.
    pub fn resume(&mut self) {
        if self.paused {
            self.signal(libc::SIGCONT);
            self.paused = false;
        }
    }

    /// Whether the process is stopped by [`pause`](Self::pause).
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// SIGTERM, then SIGKILL if the process has not exited within its stop grace
    /// ([`STOP_GRACE_DEFAULT`] unless set); reaps the child. A paused process is resumed
    /// first, or it could not act on the SIGTERM.
    pub fn stop(&mut self) {
        self.resume();
        if let Some(mut child) = self.child.take() {
            let _ = child.stop(self.stop_grace);
        }
    }

    /// SIGKILL at once; reaps the child.
    pub fn kill(&mut self) {
        // SIGKILL ends a stopped process too; resuming keeps `paused` true to the process.
        self.resume();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str, log: &Path) -> Proc {
        Proc::new(
            "sh",
            Path::new("/bin/sh"),
            vec!["-c".into(), script.into()],
            log.to_owned(),
        )
    }

    fn temp_log(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("raft-testkit-{name}-{}.log", std::process::id()))
    }

    #[test]
    fn output_and_environment_go_to_the_log_across_restarts() {
        let log = temp_log("restart");
        let _ = std::fs::remove_file(&log);
        let mut p = shell("echo \"out $GREETING\"; echo err >&2", &log).with_env("GREETING", "hi");
        for _ in 0..2 {
            p.start().unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while p.exited().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let err = p.check_alive().unwrap_err();
            assert!(err.contains("sh exited (exit status: 0)"), "{err}");
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.matches("out hi\n").count(), 2, "{text}");
        assert_eq!(text.matches("err\n").count(), 2, "{text}");
        std::fs::remove_file(&log).unwrap();
    }

    #[test]
    fn a_running_process_is_not_started_twice_and_stops_on_request() {
        let log = temp_log("twice");
        let mut p = shell("exec sleep 30", &log)
            .with_prefix(vec!["env".into()])
            .with_stop_grace(Duration::from_secs(10));
        assert_eq!(p.exited().as_deref(), Some("not running"));
        p.start().unwrap();
        p.check_alive().unwrap();
        let err = p.start().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        p.pause();
        assert!(p.is_paused());
        p.stop();
        assert!(!p.is_paused());
        assert_eq!(p.exited().as_deref(), Some("not running"));
        assert_eq!(p.pid(), None);
        let _ = std::fs::remove_file(&log);
    }
}
