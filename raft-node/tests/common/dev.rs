//! A `raft-node dev` supervisor as a child of the test, on free loopback ports, with its data
//! folder in a temporary directory. Dropping it kills the supervisor and every node PID its
//! state file lists (also when an assertion fails).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use raft_client::{Client, ClientConfig};

use super::BIN;

/// Time the supervisor has to start every node and print its banner.
pub const DEV_START_TIMEOUT: Duration = Duration::from_secs(40);

pub struct DevCluster {
    pub size: u64,
    pub dir: tempfile::TempDir,
    pub supervisor: Option<Child>,
    /// Node N's client port is `client_base + N`, peer `+ 10`, HTTP `+ 20`.
    pub client_base: u16,
}

/// A node as the supervisor's state file lists it.
#[derive(Clone, Debug)]
pub struct DevNodeInfo {
    pub id: u64,
    pub pid: Option<u32>,
    pub client: SocketAddr,
    pub http: SocketAddr,
}

/// A process' start time (`/proc/PID/stat` field 22), `None` if gone or a zombie.
pub use raft_testkit::procfs::start_ticks;

pub fn pid_alive(pid: u32) -> bool {
    start_ticks(pid).is_some()
}

/// A base port with `base+1..=base+5`, `+11..=+15` and `+21..=+25` all free now.
fn free_port_base() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let mut seed = h.finish();
    for _ in 0..200 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let base = 20_000 + (seed >> 33) as u16 % 30_000;
        let free = (1..=25u16)
            .filter(|o| o % 10 != 0 && o % 10 <= 5)
            .all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free run of ports found for a dev cluster");
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let pids: Vec<u32> = self.nodes().iter().filter_map(|n| n.pid).collect();
        if let Some(mut s) = self.supervisor.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        for pid in pids {
            if pid_alive(pid) {
                // SAFETY: kill(2) with a PID read from the state file; a node still alive.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
}

impl DevCluster {
    /// Starts `raft-node dev --nodes SIZE` with `extra` flags and waits for its banner.
    pub fn start(size: u64, extra: &[&str]) -> DevCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cluster = DevCluster {
            size,
            dir,
            supervisor: None,
            client_base: free_port_base(),
        };
        cluster.spawn_supervisor(extra);
        cluster
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("dev")
    }

    pub fn supervisor_out(&self) -> PathBuf {
        self.dir.path().join("supervisor.out")
    }

    pub fn spawn_supervisor(&mut self, extra: &[&str]) {
        assert!(self.supervisor.is_none(), "a supervisor already runs");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.supervisor_out())
            .expect("supervisor output file");
        let base = self.client_base;
        let mut cmd = Command::new(BIN);
        cmd.args(["dev", "--nodes", &self.size.to_string(), "--data-dir"])
            .arg(self.data_dir())
            .args(["--client-port-base", &base.to_string()])
            .args(["--peer-port-base", &(base + 10).to_string()])
            .args(["--http-port-base", &(base + 20).to_string()])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone"))
            .stderr(out);
        self.supervisor = Some(cmd.spawn().expect("spawn raft-node dev"));
        let deadline = Instant::now() + DEV_START_TIMEOUT;
        loop {
            if self.output().contains("Ctrl-C stops every node") {
                return;
            }
            if let Some(status) = self.supervisor.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "raft-node dev exited ({status}) while starting:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "raft-node dev did not start within {DEV_START_TIMEOUT:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the supervisor printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.supervisor_out()).unwrap_or_default()
    }

    pub fn supervisor_pid(&self) -> u32 {
        self.supervisor.as_ref().expect("supervisor runs").id()
    }

    /// The nodes listed in the supervisor's state file.
    pub fn nodes(&self) -> Vec<DevNodeInfo> {
        let Ok(text) = std::fs::read_to_string(self.data_dir().join("dev-cluster.json")) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&text).expect("state file is JSON");
        v["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| DevNodeInfo {
                id: n["id"].as_u64().unwrap(),
                pid: n["pid"].as_u64().map(|p| p as u32),
                client: n["client_addr"].as_str().unwrap().parse().unwrap(),
                http: n["http_addr"].as_str().unwrap().parse().unwrap(),
            })
            .collect()
    }

    pub fn node(&self, id: u64) -> DevNodeInfo {
        self.nodes()
            .into_iter()
            .find(|n| n.id == id)
            .expect("node listed")
    }

    pub fn client_addr(&self, id: u64) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_base + id as u16))
    }

    pub fn http_addr(&self, id: u64) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_base + 20 + id as u16))
    }

    /// A client of every node, retrying across them.
    pub fn client(&self) -> Client {
        let addrs: Vec<String> = (1..=self.size)
            .map(|i| self.client_addr(i).to_string())
            .collect();
        let mut config = ClientConfig::new(addrs);
        config.request_timeout_ms = 15_000;
        config.attempt_timeout_ms = 2_000;
        Client::new(config)
    }

    /// A client of node `id` alone.
    pub fn node_client(&self, id: u64, timeout_ms: u64) -> Client {
        let mut config = ClientConfig::new([self.client_addr(id).to_string()]);
        config.request_timeout_ms = timeout_ms;
        config.attempt_timeout_ms = timeout_ms;
        config.attempts_max = 1;
        Client::new(config)
    }

    /// Runs `raft-node ARGS` (e.g. `dev status --data-dir D`), bounded in time.
    pub fn run(&self, args: &[&str]) -> Output {
        run_bounded(args, Duration::from_secs(40))
    }

    /// Runs `raft-node dev SUBCOMMAND... --data-dir D`.
    pub fn dev(&self, sub: &[&str]) -> Output {
        let dir = self.data_dir();
        let dir = dir.to_str().expect("utf-8 temp path");
        let mut args = vec!["dev"];
        args.extend_from_slice(sub);
        args.extend_from_slice(&["--data-dir", dir]);
        self.run(&args)
    }

    /// The last lines of node `id`'s log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = format!("--- supervisor ---\n{}", self.output());
        for id in 1..=self.size {
            let text = std::fs::read_to_string(self.data_dir().join(format!("node-{id}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!("--- node {id} ---\n");
            out += &lines[lines.len().saturating_sub(15)..].join("\n");
            out.push('\n');
        }
        out
    }

    /// Sends `signal` to the supervisor and waits (bounded) for it to exit.
    pub fn signal_supervisor(&mut self, signal: i32, limit: Duration) -> ExitStatus {
        let mut child = self.supervisor.take().expect("supervisor runs");
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the supervisor did not exit within {limit:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `raft-node ARGS` to completion, killed after `limit`.
pub fn run_bounded(args: &[&str], limit: Duration) -> Output {
    run_bounded_in(Command::new(BIN), args, limit)
}

/// As [`run_bounded`], with `RUST_LOG` removed from the child's environment, so that its
/// `--log-level` alone decides what it logs (a bare level in RUST_LOG would replace it).
pub fn run_bounded_own_log_level(args: &[&str], limit: Duration) -> Output {
    let mut command = Command::new(BIN);
    command.env_remove("RUST_LOG");
    run_bounded_in(command, args, limit)
}

fn run_bounded_in(mut command: Command, args: &[&str], limit: Duration) -> Output {
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn raft-node");
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "raft-node {args:?} did not finish within {limit:?}; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
