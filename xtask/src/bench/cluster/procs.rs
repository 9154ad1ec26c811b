//! Child processes of the cluster bench (raft-node and etcd members) and what `/proc` says
//! about them: CPU time and resident memory.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Time a process gets to exit after SIGTERM before it is SIGKILLed.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// One server process: how to start it, and the running child if any.
pub struct Proc {
    pub name: String,
    binary: PathBuf,
    args: Vec<String>,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn new(
        name: impl Into<String>,
        binary: &Path,
        args: Vec<String>,
        log_path: PathBuf,
    ) -> Proc {
        Proc {
            name: name.into(),
            binary: binary.to_owned(),
            args,
            log_path,
            child: None,
        }
    }

    /// Replaces the arguments used by the next [`start`](Self::start).
    pub fn set_args(&mut self, args: Vec<String>) {
        self.args = args;
    }

    /// Spawns the process, its output appended to its log file. Spawn from the thread that
    /// lives for the whole run: the child is killed by the kernel when that thread's process
    /// dies (PR_SET_PDEATHSIG), so even a SIGKILLed bench leaves no server behind.
    pub fn start(&mut self) -> std::io::Result<()> {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn()?);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails if the process has exited (it should be serving), naming its log.
    pub fn check_alive(&mut self) -> Result<(), String> {
        let Some(child) = self.child.as_mut() else {
            return Err(format!("{} is not running", self.name));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); see {}",
                self.name,
                self.log_path.display()
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    /// SIGTERM, then SIGKILL after [`TERM_GRACE`]; reaps the child.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL at once; reaps the child.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every process a bench step started; all are killed on drop, so an error or a panic in the
/// middle of a run (which unwinds through here) leaves no server running.
#[derive(Default)]
pub struct Procs(pub Vec<Proc>);

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.0 {
            p.kill();
        }
    }
}

impl Procs {
    pub fn pids(&self) -> Vec<u32> {
        self.0.iter().filter_map(Proc::pid).collect()
    }

    pub fn check_alive(&mut self) -> Result<(), String> {
        self.0.iter_mut().try_for_each(Proc::check_alive)
    }
}

/// A port free at the time of asking on 127.0.0.1.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Ticks of the kernel's CPU clock per second (`_SC_CLK_TCK`, 100 on Linux).
fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User + system CPU seconds used so far by `pid` (its threads included).
pub fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks_per_s())
}

/// The CPU seconds of every pid, summed; `None` if any is unreadable.
pub fn cpu_s_sum(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&p| cpu_s(p)).sum()
}

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`, `RssAnon`), as MiB.
pub fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_memory() {
        let pid = std::process::id();
        // Burn a little CPU so the counter is not necessarily zero; it must parse either way.
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_s(pid).is_some_and(|s| s >= 0.0));
        let rss = status_mib(pid, "VmRSS").expect("VmRSS of this process");
        let hwm = status_mib(pid, "VmHWM").expect("VmHWM of this process");
        assert!(rss > 0.0 && hwm >= rss, "rss {rss} hwm {hwm}");
        assert!(status_mib(pid, "NoSuchField").is_none());
    }
}
