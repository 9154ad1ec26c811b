//! Hostile clients against a real 3-node cluster: one test per attack of issue #13. Each test
//! writes keys, attacks one node, and then asserts that
//! (a) the node keeps serving: a SET/GET round trip on a fresh connection to it succeeds
//!     within [`attacks::SERVE_WITHIN`];
//! (b) nothing acknowledged before the attack is lost: every key written reads back;
//! (c) the node's peak resident memory (`VmHWM`) stays below what it held before plus
//!     [`RSS_GROWTH_KIB_MAX`] (without the limits the issue measured 0.5 to 2 GB);
//! (d) the node refused the attack the way it should (an error, a closed connection).
//!
//! The attacks themselves are in `common/attacks.rs`, shared with `cargo xtask attacks`,
//! which runs them at the sizes. Here the sizes and the node's limits are small enough
//! for a CI machine; where a default limit would need gigabytes to trip, the cluster runs with
//! a smaller one ([`SMALL_LIMITS`]).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::attacks::{self, Credentials, Reply};
use common::{Cluster, BIN};

/// Growth of the attacked node's resident memory allowed during one attack.
const RSS_GROWTH_KIB_MAX: u64 = 256 << 10;
/// Keys written (and acknowledged) before each attack, read back after it.
const KEYS_BEFORE: usize = 20;
/// Limits small enough that the attacks trip them with megabytes, not gigabytes.
/// The output buffer holds a few 1 MiB answers; a client that does not take a reply for a
/// second, or sends nothing for a second after connecting, is cut off.
const SMALL_LIMITS: &[&str] = &[
    "--output-buffer-bytes-max",
    "8388608",
    "--write-timeout-ms",
    "1000",
    "--handshake-timeout-ms",
    "1000",
];

/// A cluster with keys written, one node chosen for attack, and its memory watched.
struct Target {
    cluster: Cluster,
    id: u64,
    addr: SocketAddr,
    auth: Option<Credentials>,
    rss_before_kib: u64,
    /// Holds the auth file.
    _auth_dir: tempfile::TempDir,
}

/// Starts a cluster with `extra` flags, writes [`KEYS_BEFORE`] keys, and aims at the leader
/// (the node whose loss hurts most, and the one the attacks took down).
fn target(extra: &[&str]) -> Target {
    let auth_dir = tempfile::tempdir().expect("tempdir");
    let (auth_file, credentials) = attacks::write_auth_file(auth_dir.path()).expect("auth file");
    let auth_file = auth_file.display().to_string();
    let flags: Vec<&str> = SMALL_LIMITS
        .iter()
        .chain(extra)
        .copied()
        .chain(["--auth-file", &auth_file])
        .collect();
    let cluster = Cluster::start_with(3, &flags);
    let auth = Some(credentials);
    let id = wait_leader(&cluster, auth.as_ref(), Duration::from_secs(15));
    let addr = cluster.node(id).client;
    for i in 0..KEYS_BEFORE {
        attacks::round_trip(addr, auth.as_ref(), &format!("before-{i}"), b"acknowledged")
            .unwrap_or_else(|e| panic!("writing before the attack: {e}\n{}", cluster.logs()));
    }
    Target {
        rss_before_kib: cluster.rss_kib(id),
        cluster,
        id,
        addr,
        auth,
        _auth_dir: auth_dir,
    }
}

impl Target {
    fn info(&self, id: u64) -> std::collections::HashMap<String, String> {
        attacks::info(self.cluster.node(id).client, self.auth.as_ref())
            .unwrap_or_else(|e| panic!("INFO of node {id}: {e}\n{}", self.cluster.logs()))
    }

    /// (a), (b) and (c) of the module's list, after the attack `what`.
    fn assert_still_serving(&self, what: &str) {
        let logs = || self.cluster.logs();
        let took = attacks::round_trip(self.addr, self.auth.as_ref(), "after", b"still serving")
            .unwrap_or_else(|e| {
                panic!(
                    "after {what}: node {} stopped serving: {e}\n{}",
                    self.id,
                    logs()
                )
            });
        let mut c = attacks::Resp::connect(self.addr, self.auth.as_ref()).expect("connect");
        for i in 0..KEYS_BEFORE {
            let got = c
                .call(&[b"GET", format!("before-{i}").as_bytes()])
                .expect("GET");
            assert_eq!(
                got,
                Reply::Bulk(Some(b"acknowledged".to_vec())),
                "after {what}: key before-{i} lost\n{}",
                logs()
            );
        }
        let peak = attacks::rss_peak_kib(self.cluster.pid(self.id)).expect("VmHWM");
        assert!(
            peak < self.rss_before_kib + RSS_GROWTH_KIB_MAX,
            "after {what}: node {}'s RSS peaked at {:.0} MiB from {:.0} MiB (bound: +{} MiB)",
            self.id,
            attacks::mib(peak),
            attacks::mib(self.rss_before_kib),
            RSS_GROWTH_KIB_MAX >> 10
        );
        eprintln!(
            "{what}: round trip after {took:?}; RSS {:.0} -> peak {:.0} MiB",
            attacks::mib(self.rss_before_kib),
            attacks::mib(peak)
        );
    }

    fn wait_leader(&self, limit: Duration) -> u64 {
        wait_leader(&self.cluster, self.auth.as_ref(), limit)
    }
}

/// The leader as the live nodes see it (RESP `INFO`, authenticated), within `limit`.
fn wait_leader(cluster: &Cluster, auth: Option<&Credentials>, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        for n in cluster.nodes.iter().filter(|n| n.child.is_some()) {
            if let Ok(info) = attacks::info(n.client, auth) {
                if info.get("role").map(String::as_str) == Some("leader") {
                    return n.id;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no leader within {limit:?}\n{}", cluster.logs());
}

fn assert_refused_promotes(answers: &[String], what: &str) {
    assert_eq!(answers.len(), 3, "{what}: {answers:?}");
    for a in answers {
        assert!(
            a.starts_with('-') || a.starts_with("closed") || a.starts_with("connect"),
            "{what}: PROMOTE of a node that does not exist was not refused: {answers:?}"
        );
    }
}

/// After PROMOTEs that must have been refused: the voters are still 1,2,3, and with the
/// leader killed the other two elect a new one that serves.
fn assert_membership_intact_and_electable(mut t: Target, what: &str) {
    assert_eq!(
        t.info(t.id).get("voters").map(String::as_str),
        Some("1,2,3"),
        "{what}: voters changed"
    );
    t.assert_still_serving(what);
    t.cluster.kill(t.id);
    let leader = t.wait_leader(Duration::from_secs(15));
    assert_ne!(leader, t.id);
    let addr = t.cluster.node(leader).client;
    attacks::round_trip(addr, t.auth.as_ref(), "after-election", b"1").unwrap_or_else(|e| {
        panic!(
            "{what}: the new leader does not serve: {e}\n{}",
            t.cluster.logs()
        )
    });
}

#[test]
fn unauthenticated_promote_is_refused_and_the_cluster_still_elects() {
    let t = target(&[]);
    let answers = attacks::promote(t.addr, None, &[97, 98, 99]);
    assert_refused_promotes(&answers, "unauthenticated RAFT.PROMOTE");
    assert!(
        answers.iter().all(|a| a.starts_with("-NOAUTH")),
        "unauthenticated RAFT.PROMOTE was not refused for want of authentication: {answers:?}"
    );
    assert_membership_intact_and_electable(t, "unauthenticated RAFT.PROMOTE 97, 98, 99");
}

#[test]
fn admin_promote_of_nodes_that_are_not_caught_up_learners_is_refused() {
    let t = target(&[]);
    let answers = attacks::promote(t.addr, t.auth.as_ref(), &[97, 98, 99]);
    assert_refused_promotes(&answers, "RAFT.PROMOTE by an admin");
    assert_membership_intact_and_electable(t, "RAFT.PROMOTE 97, 98, 99 by an admin");
}

#[test]
fn mget_of_a_big_value_is_bounded_and_the_leader_keeps_leading() {
    let t = target(&[]);
    let big = vec![b'b'; 4 << 20];
    attacks::round_trip(t.addr, t.auth.as_ref(), "big", &big).expect("SET big");
    let term = t.info(t.id)["term"].clone();
    // 128 x 4 MiB: a 512 MiB answer if built whole.
    let answer = attacks::mget_same_key(t.addr, t.auth.as_ref(), "big", 128, 600 << 20)
        .expect("MGET big x128");
    assert!(
        answer.head.starts_with('-') || answer.bytes < 80 << 20,
        "MGET big x128 was answered with {} MiB: {:?}",
        answer.bytes >> 20,
        &answer.head[..answer.head.len().min(60)]
    );
    t.assert_still_serving("MGET big x128");
    let info = t.info(t.id);
    assert_eq!(info["role"], "leader", "the leader lost leadership");
    assert_eq!(info["term"], term, "the term moved");
}

#[test]
fn an_endless_bulk_length_is_refused() {
    let t = target(&[]);
    let sent =
        attacks::endless_bulk_length(t.addr, 16 << 20, Duration::from_secs(10)).expect("connect");
    assert!(sent.refused(), "*1\\r\\n$ + digits: {}", sent.describe());
    assert!(
        sent.bytes_sent < 16 << 20,
        "the node read all 16 MiB of digits: {}",
        sent.describe()
    );
    t.assert_still_serving("*1\\r\\n$ + 16 MiB of digits");
}

#[test]
fn a_huge_argument_array_is_refused() {
    let t = target(&[]);
    let sent = attacks::huge_array(t.addr, 65_536, 8 << 20, 96 << 20, Duration::from_secs(15))
        .expect("connect");
    assert!(
        sent.refused(),
        "*65536 with 8 MiB bulks: {}",
        sent.describe()
    );
    assert!(
        sent.bytes_sent < 96 << 20,
        "the node read all 96 MiB: {}",
        sent.describe()
    );
    t.assert_still_serving("*65536 with 8 MiB bulks");
}

#[test]
fn clients_that_never_read_are_cut_off() {
    let t = target(&[]);
    let big = vec![b'b'; 1 << 20];
    attacks::round_trip(t.addr, t.auth.as_ref(), "big", &big).expect("SET big");
    let http = t.cluster.node(t.id).http;
    let stuck = attacks::NonReaders::open(
        http,
        50,
        "/kv/big",
        t.addr,
        5,
        64,
        "big",
        1 << 20,
        Some(attacks::ADMIN_PASSWORD),
        t.auth.as_ref(),
    )
    .expect("open the non-reading clients");
    // Long enough for a write timeout of the small limits to pass.
    std::thread::sleep(Duration::from_secs(3));
    t.assert_still_serving("50 HTTP GET /kv/big + 5 RESP x 64 GET big, never read");
    let total = stuck.len();
    let (cut, full) = stuck.cut_off(Duration::from_secs(20));
    // The RESP ones (64 MiB each) cannot fit in socket buffers: they must have been cut off.
    // An HTTP answer of 1 MiB may fit whole in loopback buffers.
    assert!(
        cut >= 5 && cut + full == total,
        "of {total} non-reading clients {cut} were cut off and {full} fully answered"
    );
}

#[test]
fn silent_connections_lock_out_neither_clients_nor_status() {
    let t = target(&[]);
    // From five other loopback addresses, so that a per-source bound alone does not settle it.
    let sources: Vec<IpAddr> = (2..=6)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect();
    let silent = attacks::silent(t.addr, &sources, 4_100, Duration::from_secs(30));
    t.assert_still_serving("4,100 silent connections");
    let status = Command::new(BIN)
        .args(["status", "--addr", &t.addr.to_string()])
        .env("RAFT_NODE_PASSWORD", attacks::ADMIN_PASSWORD)
        .stdin(Stdio::null())
        .output_with_timeout(Duration::from_secs(10));
    assert!(
        status.as_ref().is_some_and(|o| o.status.success()),
        "raft-node status after 4,100 silent connections: {status:?}"
    );
    // Each silent connection is closed once the handshake timeout of the small limits (1 s)
    // has passed, if it was let in at all.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut closed = silent.closed_by_node();
    while closed < silent.conns.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        closed = silent.closed_by_node();
    }
    assert_eq!(
        closed,
        silent.conns.len(),
        "silent connections still open 10 s after the attack ({} connect attempts failed)",
        silent.failed
    );
    silent.close();
}

#[test]
fn an_impostor_peer_gets_no_replication_data_and_cannot_force_elections() {
    let t = target(&[]);
    let term = t.info(t.id)["term"].clone();
    let peer = t.cluster.node(t.id).peer;
    // Node 1's identity, claimed to the leader (or, if node 1 leads, to it as node 2).
    let (from, to) = if t.id == 1 { (2, 1) } else { (1, t.id) };
    let forged = raft_core::Message {
        from,
        to,
        term: term.parse::<u64>().unwrap() + 1,
        body: raft_core::MessageBody::TimeoutNow,
    };
    // The cluster's ID is random: guesses, the old default 1 among them, are refused.
    for cluster_id in [1, 0, u128::from(u64::MAX)] {
        let got = attacks::impostor_plain(
            peer,
            cluster_id,
            from,
            to,
            Some(forged.clone()),
            5,
            Duration::from_millis(400),
        )
        .expect("dial the peer port");
        assert!(
            !got.accepted && got.frames_bytes == 0 && got.forged_sent == 0,
            "an impostor with cluster ID {cluster_id} was accepted: {got:?}"
        );
        // A wrong guess is not told the real ID.
        let real = u128::from_str_radix(common::CLUSTER_ID, 16).unwrap();
        let reply = got.reply.clone().unwrap_or_default();
        assert!(
            !reply.contains(common::CLUSTER_ID) && !reply.contains(&real.to_string()),
            "a refused handshake revealed the cluster ID: {reply}"
        );
    }
    t.assert_still_serving("an impostor peer");
    assert_eq!(t.info(t.id)["term"], term, "the term moved");
}

#[test]
fn chunked_puts_store_their_body_and_duplicate_content_length_is_refused() {
    let t = target(&[]);
    let http = t.cluster.node(t.id).http;
    let bearer = Some(attacks::ADMIN_PASSWORD);
    let (status, answer) = attacks::http_raw(
        http,
        b"PUT /kv/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        bearer,
    )
    .expect("chunked PUT");
    let (_, stored) = attacks::http_raw(
        http,
        b"GET /kv/chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        bearer,
    )
    .expect("GET");
    if status.contains(" 200 ") || status.contains(" 204 ") {
        assert!(
            stored.starts_with("HTTP/1.1 200") && stored.ends_with("hello world"),
            "a chunked PUT was answered {status:?} but stored: {stored:?}"
        );
    } else {
        assert!(status.contains(" 4"), "chunked PUT: {answer:?}");
        assert!(stored.starts_with("HTTP/1.1 404"), "{stored:?}");
    }
    let (status, answer) = attacks::http_raw(
        http,
        b"PUT /kv/dup HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 3\r\n\r\nhello",
        bearer,
    )
    .expect("PUT with two Content-Length");
    assert!(
        status.contains(" 400 "),
        "duplicate Content-Length was not refused: {answer:?}"
    );
    let (_, stored) = attacks::http_raw(
        http,
        b"GET /kv/dup HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        bearer,
    )
    .expect("GET");
    assert!(stored.starts_with("HTTP/1.1 404"), "{stored:?}");
    t.assert_still_serving("chunked PUT and duplicate Content-Length");
}

#[test]
fn config_set_requirepass_answers_an_error() {
    let t = target(&[]);
    let mut c = attacks::Resp::connect(t.addr, t.auth.as_ref()).expect("connect");
    let reply = c
        .call(&[b"CONFIG", b"SET", b"requirepass", b"x"])
        .expect("CONFIG SET");
    assert!(
        reply.is_error(),
        "CONFIG SET requirepass x answered {reply:?}"
    );
    t.assert_still_serving("CONFIG SET requirepass x");
}

/// `Command::output` with a deadline: the child is killed if it runs past it.
trait OutputWithTimeout {
    fn output_with_timeout(&mut self, limit: Duration) -> Option<std::process::Output>;
}

impl OutputWithTimeout for Command {
    fn output_with_timeout(&mut self, limit: Duration) -> Option<std::process::Output> {
        let mut child = self
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return child.wait_with_output().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}
