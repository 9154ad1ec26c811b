//! Authentication and roles on the client port: RESP (raw and through the `redis` crate)
//! and the native protocol (raft-client), on one node and on a three-node cluster where a
//! follower forwards writes to the leader; protected mode refusing an open listener.
//!
//! Nodes run in this process (their listeners on ephemeral 127.0.0.1 ports) and are shut
//! down at the end of each test; a failed test drops its runtime, which ends them too.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use raft_client::{Client, ClientConfig, ClientError, Credentials, NodeError};
use raft_node::auth::password_sha256_hex;
use raft_node::config::{NodeConfig, PeerConfig};
use raft_node::node::RunningNode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const ADMIN_PASSWORD: &str = "admin-password";
const WRITER_PASSWORD: &str = "writer-password";
const READER_PASSWORD: &str = "reader-password";
const INTERNAL_PASSWORD: &str = "internal-password-for-the-nodes";

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    held.iter().map(|l| l.local_addr().unwrap()).collect()
}

fn write_auth_file(dir: &Path) -> std::path::PathBuf {
    let user = |name: &str, role: &str, password: &str| {
        format!(
            "[[users]]\nname = \"{name}\"\nrole = \"{role}\"\npassword_sha256 = \"{}\"\n",
            password_sha256_hex(password.as_bytes())
        )
    };
    let text = format!(
        "internal_password = \"{INTERNAL_PASSWORD}\"\n{}{}{}",
        user("default", "admin", ADMIN_PASSWORD),
        user("writer", "read-write", WRITER_PASSWORD),
        user("reader", "read", READER_PASSWORD),
    );
    let path = dir.join("users.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `size` in-process nodes with the auth file, all voters.
async fn start_nodes(dir: &Path, size: u64) -> Vec<RunningNode> {
    let auth_file = write_auth_file(dir);
    let ports = free_addrs(2 * size as usize);
    let peers: Vec<PeerConfig> = (1..=size)
        .map(|id| PeerConfig {
            id,
            addr: ports[2 * (id as usize - 1)],
            client_addr: Some(ports[2 * (id as usize - 1) + 1]),
        })
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=size {
        let mut config =
            NodeConfig::with_defaults(id, dir.join(format!("node-{id}")), peers.clone());
        config.auth_file = Some(auth_file.clone());
        config.request_timeout_ms = 3_000;
        nodes.push(
            RunningNode::start(config)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    nodes
}

fn client(addrs: &[SocketAddr], credentials: Option<(Option<&str>, &str)>) -> Client {
    let mut config = ClientConfig::new(addrs.iter().map(|a| a.to_string()));
    config.request_timeout_ms = 5_000;
    config.credentials = credentials.map(|(u, p)| Credentials::new(u, p.as_bytes().to_vec()));
    Client::new(config)
}

/// A raw RESP connection: commands in, replies out as text (`+OK`, `-ERR ...`, `$3 foo`,
/// `*2 [...]`), so tests compare the exact wire answer.
struct Resp {
    stream: BufReader<TcpStream>,
}

impl Resp {
    async fn connect(addr: SocketAddr) -> Resp {
        Resp {
            stream: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }

    async fn send(&mut self, args: &[&str]) {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out += &format!("${}\r\n{a}\r\n", a.len());
        }
        self.stream
            .get_mut()
            .write_all(out.as_bytes())
            .await
            .unwrap();
    }

    async fn reply(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), self.read_value())
            .await
            .expect("a reply in time")
    }

    async fn call(&mut self, args: &[&str]) -> String {
        self.send(args).await;
        self.reply().await
    }

    fn read_value(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + '_>> {
        Box::pin(async move {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.unwrap();
            let line = line.trim_end().to_string();
            match line.as_bytes().first() {
                Some(b'$') if line != "$-1" => {
                    let n: usize = line[1..].parse().unwrap();
                    let mut body = vec![0u8; n + 2];
                    self.stream.read_exact(&mut body).await.unwrap();
                    body.truncate(n);
                    format!("$ {}", String::from_utf8_lossy(&body))
                }
                Some(b'*') => {
                    let n: usize = line[1..].parse().unwrap();
                    let mut items = Vec::new();
                    for _ in 0..n {
                        items.push(self.read_value().await);
                    }
                    format!("*{n} [{}]", items.join(", "))
                }
                _ => line,
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_requires_auth_and_enforces_roles() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(dir.path(), 1).await;
    let addr = nodes[0].client_addr;

    let mut c = Resp::connect(addr).await;
    // Nothing but AUTH, HELLO and QUIT before logging in.
    assert_eq!(
        c.call(&["GET", "k"]).await,
        "-NOAUTH Authentication required."
    );
    assert_eq!(c.call(&["PING"]).await, "-NOAUTH Authentication required.");
    assert_eq!(
        c.call(&["RAFT.PROMOTE", "97"]).await,
        "-NOAUTH Authentication required."
    );
    assert!(c
        .call(&["HELLO", "2"])
        .await
        .starts_with("-NOAUTH HELLO must be called"));
    assert_eq!(
        c.call(&["AUTH", "wrong"]).await,
        "-WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(
        c.call(&["AUTH", "reader", WRITER_PASSWORD]).await,
        "-WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(
        c.call(&["GET", "k"]).await,
        "-NOAUTH Authentication required."
    );

    // read: reads only.
    assert_eq!(c.call(&["AUTH", "reader", READER_PASSWORD]).await, "+OK");
    assert_eq!(c.call(&["GET", "k"]).await, "$-1");
    assert_eq!(c.call(&["PING"]).await, "+PONG");
    assert!(c.call(&["INFO"]).await.starts_with("$ # Raft"));
    assert_eq!(
        c.call(&["SET", "k", "v"]).await,
        "-NOPERM User reader has no permissions to run the 'set' command"
    );
    // A failed login keeps the role the connection had.
    assert!(c
        .call(&["AUTH", "writer", "nope"])
        .await
        .starts_with("-WRONGPASS"));
    assert_eq!(c.call(&["GET", "k"]).await, "$-1");

    // read-write: keys, not membership.
    assert_eq!(c.call(&["AUTH", "writer", WRITER_PASSWORD]).await, "+OK");
    assert_eq!(c.call(&["SET", "k", "v"]).await, "+OK");
    assert_eq!(c.call(&["GET", "k"]).await, "$ v");
    for admin in [
        ["RAFT.PROMOTE", "97"],
        ["RAFT.ADDLEARNER", "97"],
        ["RAFT.TRANSFER", "2"],
        ["RAFT.REMOVE", "1"],
    ] {
        assert_eq!(
            c.call(&admin).await,
            format!(
                "-NOPERM User writer has no permissions to run the '{}' command",
                admin[0].to_ascii_lowercase()
            )
        );
    }

    // admin (the default user, one-argument AUTH): membership commands reach the node.
    assert_eq!(c.call(&["AUTH", ADMIN_PASSWORD]).await, "+OK");
    let added = c.call(&["RAFT.ADDLEARNER", "97"]).await;
    assert!(
        !added.starts_with("-NOPERM") && !added.starts_with("-NOAUTH"),
        "{added}"
    );
    let status = nodes[0].handle.status().await.unwrap();
    assert!(status.learners.contains(&97), "{added}: {status:?}");

    // Commands that would only pretend to work are refused; what tools send on connect
    // still answers.
    assert!(c
        .call(&["CONFIG", "SET", "requirepass", "x"])
        .await
        .starts_with("-ERR CONFIG SET is not supported"));
    assert_eq!(c.call(&["CONFIG", "GET", "save"]).await, "*0 []");
    assert!(c
        .call(&["CLIENT", "KILL", "ID", "1"])
        .await
        .starts_with("-ERR CLIENT KILL is not supported"));
    assert_eq!(
        c.call(&["CLIENT", "SETINFO", "LIB-NAME", "test"]).await,
        "+OK"
    );
    assert_eq!(c.call(&["CLIENT", "SETNAME", "tester"]).await, "+OK");
    assert_eq!(c.call(&["CLIENT", "GETNAME"]).await, "$ tester");

    // HELLO: RESP2 with Redis' fields; RESP3 is refused so clients fall back.
    let mut h = Resp::connect(addr).await;
    assert_eq!(
        h.call(&["HELLO", "3"]).await,
        "-NOPROTO unsupported protocol version"
    );
    assert!(h
        .call(&["HELLO", "2", "AUTH", "writer", "bad"])
        .await
        .starts_with("-WRONGPASS"));
    let hello = h
        .call(&[
            "HELLO",
            "2",
            "AUTH",
            "writer",
            WRITER_PASSWORD,
            "SETNAME",
            "h",
        ])
        .await;
    assert!(
        hello.starts_with("*14 [$ server, $ redis, $ version"),
        "{hello}"
    );
    assert!(hello.contains("$ proto, :2"), "{hello}");
    assert_eq!(h.call(&["GET", "k"]).await, "$ v");

    // A pipeline: the AUTH in the middle applies to what follows it, not to what precedes.
    let mut p = Resp::connect(addr).await;
    p.send(&["SET", "p", "1"]).await;
    p.send(&["AUTH", "writer", WRITER_PASSWORD]).await;
    p.send(&["SET", "p", "2"]).await;
    p.send(&["GET", "p"]).await;
    assert_eq!(p.reply().await, "-NOAUTH Authentication required.");
    assert_eq!(p.reply().await, "+OK");
    assert_eq!(p.reply().await, "+OK");
    assert_eq!(p.reply().await, "$ 2");
    assert_eq!(p.call(&["QUIT"]).await, "+OK");

    // The redis crate: credentials in the URL (AUTH, then CLIENT SETINFO on connect).
    let url = format!("redis://writer:{WRITER_PASSWORD}@{addr}/");
    let anonymous = format!("redis://{addr}/");
    let outcome = tokio::task::spawn_blocking(move || {
        let mut con =
            redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(5))?;
        redis::cmd("SET")
            .arg("crate")
            .arg("yes")
            .query::<()>(&mut con)?;
        let value: Option<String> = redis::cmd("GET").arg("crate").query(&mut con)?;
        let mut anon =
            redis::Client::open(anonymous)?.get_connection_with_timeout(Duration::from_secs(5))?;
        let refused = redis::cmd("GET")
            .arg("crate")
            .query::<Option<String>>(&mut anon);
        redis::RedisResult::Ok((value, refused.map_err(|e| e.code().map(str::to_string))))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(outcome.0.as_deref(), Some("yes"));
    assert_eq!(outcome.1, Err(Some("NOAUTH".to_string())));

    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_clients_log_in_and_are_held_to_their_role() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(dir.path(), 1).await;
    let addrs = [nodes[0].client_addr];

    let anonymous = client(&addrs, None);
    match anonymous.set("k", "v").await {
        Err(ClientError::Node(NodeError::Unauthenticated(_))) => {}
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
    assert!(matches!(
        anonymous.status().await,
        Err(ClientError::Node(NodeError::Unauthenticated(_)))
    ));
    let wrong = client(&addrs, Some((Some("writer"), "nope")));
    assert!(matches!(
        wrong.get("k").await,
        Err(ClientError::Node(NodeError::Unauthenticated(_)))
    ));

    let reader = client(&addrs, Some((Some("reader"), READER_PASSWORD)));
    assert_eq!(reader.get("k").await.unwrap(), None);
    reader.status().await.unwrap();
    assert!(matches!(
        reader.set("k", "v").await,
        Err(ClientError::Node(NodeError::PermissionDenied(_)))
    ));

    let writer = client(&addrs, Some((Some("writer"), WRITER_PASSWORD)));
    writer.set("k", "v").await.unwrap();
    assert_eq!(reader.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert!(matches!(
        writer.promote(97).await,
        Err(ClientError::Node(NodeError::PermissionDenied(_)))
    ));
    assert!(matches!(
        writer.transfer_leader(1).await,
        Err(ClientError::Node(NodeError::PermissionDenied(_)))
    ));

    let admin = client(&addrs, Some((None, ADMIN_PASSWORD)));
    admin.add_learner(98).await.unwrap();
    assert!(nodes[0]
        .handle
        .status()
        .await
        .unwrap()
        .learners
        .contains(&98));

    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_forward_writes_to_the_leader_with_auth_on() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(dir.path(), 3).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.client_addr).collect();
    let admin = client(&addrs, Some((None, ADMIN_PASSWORD)));
    // Wait for a leader (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        if let Ok(s) = admin.status().await {
            if let (Some(l), "Leader") = (s.leader, s.role.as_str()) {
                break l;
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let follower = nodes.iter().find(|n| n.id != leader).unwrap();

    // A RESP write on a follower is forwarded to the leader with the internal credential.
    let mut c = Resp::connect(follower.client_addr).await;
    assert_eq!(c.call(&["AUTH", "writer", WRITER_PASSWORD]).await, "+OK");
    assert_eq!(c.call(&["SET", "fwd", "1"]).await, "+OK");
    assert_eq!(c.call(&["MSET", "a", "1", "b", "2"]).await, "+OK");
    // A pipelined run of writes goes as one forwarded batch.
    for i in 0..5 {
        c.send(&["SET", &format!("p{i}"), "x"]).await;
    }
    for _ in 0..5 {
        assert_eq!(c.reply().await, "+OK");
    }
    let reader = client(&addrs, Some((Some("reader"), READER_PASSWORD)));
    assert_eq!(reader.get("fwd").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(reader.get("p4").await.unwrap().as_deref(), Some(&b"x"[..]));
    // The forwarder's credential is only read-write: a follower does not forward admin.
    assert_eq!(
        c.call(&["RAFT.PROMOTE", "97"]).await,
        "-NOPERM User writer has no permissions to run the 'raft.promote' command"
    );

    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_cluster_with_users_but_no_internal_credential_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    std::fs::write(
        &file,
        format!(
            "[[users]]\nname = \"default\"\nrole = \"admin\"\npassword_sha256 = \"{}\"\n",
            password_sha256_hex(b"x")
        ),
    )
    .unwrap();
    let ports = free_addrs(4);
    let peers = vec![
        PeerConfig {
            id: 1,
            addr: ports[0],
            client_addr: Some(ports[1]),
        },
        PeerConfig {
            id: 2,
            addr: ports[2],
            client_addr: Some(ports[3]),
        },
    ];
    let mut config = NodeConfig::with_defaults(1, dir.path().join("n1"), peers);
    config.auth_file = Some(file);
    let e = RunningNode::start(config).await.err().expect("refused");
    assert_eq!(e.field, "auth_file");
    assert!(e.message.contains("internal_password"), "{e}");
}

/// `raft-node run` on a non-loopback address without TLS and credentials exits at once,
/// naming the address and the ways to fix it, before binding anything.
#[test]
fn protected_mode_refuses_an_open_listener() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_addrs(2);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raft-node"))
        .args(["run", "--id", "1", "--data-dir"])
        .arg(dir.path())
        .arg("--peer")
        .arg(format!("1={},0.0.0.0:{}", ports[0], ports[1].port()))
        .env_remove("RAFT_NODE_PASSWORD")
        .env_remove("RAFT_NODE_AUTH_FILE")
        .output()
        .expect("run raft-node");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for hint in [
        "protected mode",
        "client_addr",
        "--auth-file",
        "--insecure-allow-plaintext",
    ] {
        assert!(
            stderr.contains(hint),
            "stderr should mention {hint}: {stderr}"
        );
    }
}
