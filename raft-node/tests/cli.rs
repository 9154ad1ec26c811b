//! The client commands as an operator runs them against a dev cluster: `status` found
//! through the running dev cluster, `status --cluster` as a table and as JSON, `get`, `set`,
//! `del`, and errors that say what to do: an HTTP or peer port given for the client port,
//! an address without a port, refused membership changes, and a lost quorum named as such
//! (with the follower's WARN lines on losing and finding the leader).
//!
//! The harness is `common/dev.rs`.

mod common;

use std::time::{Duration, Instant};

use common::dev::*;

/// `raft-node ARGS... --dev-data-dir D` (the client commands find the dev cluster there).
fn cli(cluster: &DevCluster, args: &[&str]) -> std::process::Output {
    cli_by(cluster, args, run_bounded)
}

fn cli_by(
    cluster: &DevCluster,
    args: &[&str],
    run: fn(&[&str], Duration) -> std::process::Output,
) -> std::process::Output {
    let dir = cluster.data_dir();
    // Right after the command's name: `admin` takes it before its own subcommand.
    let mut all: Vec<&str> = vec![args[0], "--dev-data-dir", dir.to_str().unwrap()];
    all.extend_from_slice(&args[1..]);
    let started = Instant::now();
    let out = run(&all, Duration::from_secs(40));
    eprintln!("raft-node {args:?}: {:?}", started.elapsed());
    out
}

/// As [`cli`], with the client's debug log on, checking that the command made a single
/// attempt: the client logs each retry ("retrying request") at debug. That is what
/// "answered at once" means here; a clock would also measure how loaded the machine is.
fn cli_not_retried(cluster: &DevCluster, args: &[&str]) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--log-level", "debug"]);
    // Without RUST_LOG: a bare level there would hide the debug line this looks for.
    let out = cli_by(cluster, &all, run_bounded_own_log_level);
    assert!(
        !stderr(&out).contains("retrying request"),
        "{args:?} was retried:\n{}",
        stderr(&out)
    );
    out
}

/// Runs `raft-node ARGS` with its stdout a pipe whose read end is closed before it starts
/// (as `| head -1` leaves it once head has exited), bounded in time; its exit status and
/// stderr.
fn run_into_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills both descriptors, each owned once below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end);
    let mut child = std::process::Command::new(common::BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn raft-node");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("raft-node {args:?} into a closed pipe did not end within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

/// Runs `args` until it succeeds (an election may still be under way), at most 20 s.
fn cli_ok(cluster: &DevCluster, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cli(cluster, args);
        if out.status.success() {
            return stdout(&out);
        }
        assert!(
            Instant::now() < deadline,
            "raft-node {args:?} kept failing: {}\n{}",
            stderr(&out),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn status_get_set_del_through_the_running_dev_cluster() {
    let cluster = DevCluster::start(3, &[]);
    assert_eq!(cli_ok(&cluster, &["set", "greeting", "hello"]).trim(), "OK");
    assert_eq!(cli_ok(&cluster, &["get", "greeting"]).trim(), "hello");
    let missing = cli(&cluster, &["get", "nothing-here"]);
    assert_eq!(missing.status.code(), Some(1), "a missing key exits 1");
    assert_eq!(stdout(&missing), "");
    assert_eq!(
        cli_ok(&cluster, &["del", "greeting", "nothing-here"]).trim(),
        "1"
    );

    // Output into a closed pipe (`raft-node dev status | head -1`): a quiet end by
    // SIGPIPE, as coreutils', not a panic on EPIPE (which this was).
    let dir = cluster.data_dir();
    let dir = dir.to_str().unwrap();
    for args in [
        &["dev", "status", "--data-dir", dir][..],
        &["status", "--dev-data-dir", dir],
        &["status", "--dev-data-dir", dir, "--cluster"],
        &["status", "--dev-data-dir", dir, "-o", "json"],
        &["set", "--dev-data-dir", dir, "k", "v"],
        &["--help"],
    ] {
        let (status, err) = run_into_closed_pipe(args);
        use std::os::unix::process::ExitStatusExt;
        assert!(
            status.signal() == Some(libc::SIGPIPE) || status.success(),
            "raft-node {args:?} | (closed): {status:?}\n{err}"
        );
        assert!(!err.contains("panicked"), "raft-node {args:?}: {err}");
    }

    // One node, found through the dev cluster's state file.
    let one = cli_ok(&cluster, &["status"]);
    assert!(one.contains("role") && one.contains("version"), "{one}");

    // Every member in one table.
    let table = cli_ok(&cluster, &["status", "--cluster"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3 + 3 + 1, "{table}");
    for col in [
        "ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LEADER", "LAG", "VERSION",
    ] {
        assert!(lines[1].contains(col), "{col} missing: {table}");
    }
    assert_eq!(table.matches("Leader").count(), 1, "{table}");
    assert_eq!(table.matches("Follower").count(), 2, "{table}");
    for id in 1..=3 {
        assert!(
            table.contains(&cluster.client_addr(id).to_string()),
            "{table}"
        );
    }

    // The same as JSON; with node 3 down, it is listed with its error.
    let out = cluster.dev(&["kill", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json = cli_ok(&cluster, &["status", "--cluster", "-o", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let rows = rows.as_array().expect("an array");
    assert_eq!(rows.len(), 3, "{json}");
    let leaders: Vec<u64> = rows.iter().filter_map(|r| r["leader"].as_u64()).collect();
    assert_eq!(leaders.len(), 2, "{json}");
    assert_eq!(rows[2]["id"], 3, "{json}");
    assert!(
        rows[2]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{json}"
    );
    assert_eq!(
        rows[0]["lag"].as_u64().map(|l| l < 1_000),
        Some(true),
        "{json}"
    );
}

#[test]
fn errors_say_what_to_do() {
    let mut cluster = DevCluster::start(3, &[]);
    cli_ok(&cluster, &["set", "k", "v"]);

    // The HTTP port given for the client port: named at once, not retried.
    let http = cluster.http_addr(1).to_string();
    let out = cli_not_retried(&cluster, &["status", "--addr", &http]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("HTTP port") && stderr(&out).contains("client port"),
        "{}",
        stderr(&out)
    );

    // An address without a port: refused before any attempt.
    let out = cli_not_retried(&cluster, &["get", "k", "--addr", "127.0.0.1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("HOST:PORT"), "{}", stderr(&out));

    // The peer port: the hint names it.
    let peer = format!("127.0.0.1:{}", cluster.client_base + 10 + 1);
    let out = cli(&cluster, &["status", "--addr", &peer]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("peer port"), "{}", stderr(&out));

    // Membership changes the leader refuses, explained.
    let out = cli(&cluster, &["admin", "remove", "9"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("node 9 is not a member"),
        "{}",
        stderr(&out)
    );
    let out = cli(&cluster, &["admin", "add-learner", "4"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no known peer address"),
        "{}",
        stderr(&out)
    );

    // Quorum lost: node 1 alone names the situation, over RESP and the native protocol.
    // Node 1 is made a follower first, so that it is a follower that loses its leader.
    let one = cluster.client_addr(1).to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = cli_ok(&cluster, &["status", "--addr", &one, "-o", "json"]);
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        if status["role"] == "Follower" && status["leader"].as_u64().is_some() {
            break;
        }
        if status["role"] == "Leader" {
            let _ = cli(&cluster, &["admin", "--addr", &one, "transfer-leader", "2"]);
        }
        assert!(
            Instant::now() < deadline,
            "node 1 never followed
{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for id in [2, 3] {
        let out = cluster.dev(&["kill", &id.to_string()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // A node that is down: refused at once (no retrying a refused connection for
    // seconds), saying what to do.
    let two = cluster.client_addr(2).to_string();
    for args in [
        &["get", "k", "--addr", &two][..],
        &["status", "--addr", &two],
    ] {
        let out = cli_not_retried(&cluster, args);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("nothing listens") && err.contains("dev restart"),
            "{err}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let err = loop {
        let out = cli(&cluster, &["set", "k", "w", "--addr", &one]);
        assert!(
            !out.status.success(),
            "a write without a majority succeeded"
        );
        let err = stderr(&out);
        if err.contains("no leader: 1 of 3 voters reachable") {
            break err;
        }
        assert!(Instant::now() < deadline, "{err}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!err.contains("forwarding"), "{err}");
    // Refused at once once the situation is known: the message says so (a node that waited
    // its request timeout instead says "no leader elected within").
    let addr = cluster.client_addr(1);
    let resp = common::redis_set_get(addr, "r", "v").expect_err("RESP write without a majority");
    assert!(
        resp.to_string()
            .contains("no leader: 1 of 3 voters reachable"),
        "{resp}"
    );

    // The follower's log says it lost the leader, and then that it found one again.
    let out = cluster.dev(&["restart", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    cli_ok(&cluster, &["set", "k", "again"]);
    // The write needed node 1's acknowledgement, but node 1 writes its line after it sends
    // that: wait for the line (bounded) rather than read the file once.
    let has_warn =
        |log: &str, what: &str| log.lines().any(|l| l.contains("WARN") && l.contains(what));
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = std::fs::read_to_string(cluster.data_dir().join("node-1.log")).unwrap();
        if has_warn(&log, "found the leader") || Instant::now() >= deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        has_warn(&log, "lost the leader"),
        "no WARN on losing the leader:\n{log}"
    );
    assert!(
        has_warn(&log, "found the leader"),
        "no WARN on finding the leader:\n{log}"
    );
    cluster.signal_supervisor(libc::SIGINT, Duration::from_secs(30));
}
