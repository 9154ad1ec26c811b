//! The configuration as an operator meets it, through the binary: flag over environment over
//! file over default, TOML errors that point at the field, bad settings refused with a
//! nonzero exit, JSON logs, host names in peers.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{free_addr, free_addrs, BIN};

fn node() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_raft-node"));
    // The test's own environment must not leak settings into the node.
    for (k, _) in std::env::vars() {
        if k.starts_with("RAFT_NODE_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

fn free_port() -> u16 {
    raft_testkit::free_addr().port()
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "id = 1\ndata_dir = \"d\"\ntick_interval_ms = 11\nheartbeat_interval_ticks = 4\n\
         [[peers]]\nid = 1\naddr = \"127.0.0.1:7001\"\nclient_addr = \"127.0.0.1:6001\"\n\
         [limits]\nidle_timeout_ms = 21\nread_timeout_ms = 31\n",
    )
    .unwrap();
    let out = node()
        .args(["run", "--check-config", "--config"])
        .arg(&file)
        .args(["--tick-interval-ms", "13", "--log-level", "debug"])
        .env("RAFT_NODE_TICK_INTERVAL_MS", "12")
        .env("RAFT_NODE_IDLE_TIMEOUT_MS", "22")
        .env("RAFT_NODE_LOG_FORMAT", "json")
        .env("RAFT_NODE_JOIN", "true")
        .env(
            "RAFT_NODE_PEER",
            "1=localhost:7001,localhost:6001 2=node-2.example:7002",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "tick_interval_ms = 13",           // flag over environment and file
        "idle_timeout_ms = 22",            // environment over file
        "read_timeout_ms = 31",            // file over default
        "heartbeat_interval_ticks = 4",    // file over default
        "election_timeout_ticks_min = 20", // default
        "log_format = \"json\"",
        "log_level = \"debug\"",
        "join = true",
        "addr = \"node-2.example:7002\"", // environment over file, host names kept
    ] {
        assert!(
            text.lines().any(|l| l.trim() == line),
            "`{line}` missing from:\n{text}"
        );
    }
    assert!(!text.contains("127.0.0.1:7001"), "{text}");
}

#[test]
fn a_bad_file_is_refused_naming_the_field_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "id = 1\ndata_dir = \"d\"\n[[peers]]\nid = 1\naddr = \"127.0.0.1:7001\"\n\
         [limits]\nidle_timeout_ms = \"soon\"\n",
    )
    .unwrap();
    let out = node()
        .args(["run", "--check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`limits.idle_timeout_ms` at line 7, column 19"),
        "{err}"
    );
    assert!(err.contains("node.toml"), "the file is named: {err}");
}

/// Kills the node on drop, also when the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn json_logs_and_a_peer_named_by_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let (peer, client) = (free_port(), free_port());
    let child = node()
        .args(["run", "--id", "1", "--data-dir"])
        .arg(dir.path().join("d"))
        .arg("--peer")
        .arg(format!("1=localhost:{peer},localhost:{client}"))
        .args(["--log-format", "json", "--storage", "memory"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let stderr = child.0.stderr.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut started = None;
    for line in BufReader::new(stderr).lines().take(200) {
        let line = line.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if v["fields"]["message"] == "node started" {
            started = Some(v);
            break;
        }
        assert!(Instant::now() < deadline, "no `node started` line in time");
    }
    let started = started.expect("a `node started` line");
    assert_eq!(started["level"], "INFO");
    // localhost resolved to a loopback address to listen on.
    let peer_addr = started["fields"]["peer_addr"].as_str().unwrap();
    assert!(peer_addr.ends_with(&format!(":{peer}")), "{started}");
    std::net::TcpStream::connect(("127.0.0.1", client)).expect("the client port listens");
}

#[test]
fn config_errors_name_the_field_and_exit_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let p = free_addr();
    let out = Command::new(BIN)
        .args(["run", "--id", "1", "--data-dir"])
        .arg(dir.path())
        .args(["--peer", &format!("1={p},{p}"), "--peer", &format!("1={p}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("`peers`") && err.contains("duplicate ID 1"),
        "{err}"
    );

    // A data directory that cannot be one (a regular file) names `data_dir`.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--id", "1", "--data-dir"])
        .arg(&file)
        .args(["--peer", &format!("1={},{}", free_addr(), free_addr())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("`data_dir`"), "{err}");

    // A port in use names the listener's field.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap();
    let out = Command::new(BIN)
        .args(["run", "--id", "1", "--data-dir"])
        .arg(dir.path())
        .args(["--peer", &format!("1={busy_addr},{}", free_addr())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`peer_addr`"), "{err}");

    // A data directory in use by a running node is refused; SIGTERM stops that node cleanly.
    let (peer, client) = {
        let a = free_addrs(2);
        (a[0], a[1])
    };
    let node_args = |dir: &std::path::Path| -> Vec<String> {
        vec![
            "run".into(),
            "--id".into(),
            "1".into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--peer".into(),
            format!("1={peer},{client}"),
        ]
    };
    struct Kill(Option<Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    // Killed on drop if an assertion below fails first.
    let mut guard = Kill(Some(
        Command::new(BIN)
            .args(node_args(dir.path()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(client).is_err() {
        assert!(Instant::now() < deadline, "node did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = Command::new(BIN)
        .args(["run", "--id", "1", "--data-dir"])
        .arg(dir.path())
        .args(["--peer", &{
            let a = free_addrs(2);
            format!("1={},{}", a[0], a[1])
        }])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("`data_dir`") && err.contains("locked"),
        "{err}"
    );
    let running = guard.0.as_mut().unwrap();
    // SAFETY: signalling a child we spawned and have not reaped.
    unsafe { libc::kill(running.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = running.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop the node");
        std::thread::sleep(Duration::from_millis(20));
    };
    guard.0 = None;
    assert!(status.success(), "exit after SIGTERM: {status:?}");

    let help = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--peer",
        "--data-dir",
        "--http-addr",
        "--request-timeout-ms",
        "--config",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
