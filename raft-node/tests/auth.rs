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
use raft_node::certs;
use raft_node::config::{NodeConfig, PeerConfig};
use raft_node::node::RunningNode;
use raft_node::tls::TlsConfig;
use raft_testkit::free_addrs;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const ADMIN_PASSWORD: &str = "admin-password";
const WRITER_PASSWORD: &str = "writer-password";
const READER_PASSWORD: &str = "reader-password";
const INTERNAL_PASSWORD: &str = "internal-password-for-the-nodes";

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
    start_nodes_with(dir, size, true, false).await
}

/// As [`start_nodes`]; `internal`: the auth file holds the nodes' internal password; `tls`:
/// certificates are generated under `dir/certs` and every node serves TLS.
async fn start_nodes_with(dir: &Path, size: u64, internal: bool, tls: bool) -> Vec<RunningNode> {
    let mut auth_file = write_auth_file(dir);
    if !internal {
        let text = std::fs::read_to_string(&auth_file).unwrap();
        let text: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        auth_file = dir.join("users-no-internal.toml");
        std::fs::write(&auth_file, text).unwrap();
    }
    let ids: Vec<u64> = (1..=size).collect();
    if tls {
        certs::generate(&dir.join("certs"), None, &ids, &["127.0.0.1".to_string()]).unwrap();
    }
    let ports = free_addrs(2 * size as usize);
    let peers: Vec<PeerConfig> = (1..=size)
        .map(|id| PeerConfig {
            id,
            addr: ports[2 * (id as usize - 1)].into(),
            client_addr: Some(ports[2 * (id as usize - 1) + 1].into()),
        })
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=size {
        let mut config =
            NodeConfig::with_defaults(id, dir.join(format!("node-{id}")), peers.clone());
        config.auth_file = Some(auth_file.clone());
        config.request_timeout_ms = 3_000;
        // The members of a new cluster share one ID (with TLS, the certificates carry it).
        if !tls {
            config.cluster_id = Some(raft_node::cluster_id::ClusterId(0x7e57));
        }
        if tls {
            let certs = dir.join("certs");
            config.tls = Some(TlsConfig {
                ca_file: certs.join(certs::CA_CERT_FILE),
                cert_file: certs.join(certs::node_cert_file(id)),
                key_file: certs.join(certs::node_key_file(id)),
                client_cert_required: false,
            });
        }
        nodes.push(
            RunningNode::start(config)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    nodes
}

fn tls_client(
    addrs: &[SocketAddr],
    certs: &Path,
    credentials: Option<(Option<&str>, &str)>,
    client_cert: bool,
) -> Client {
    let mut config = ClientConfig::new(addrs.iter().map(|a| a.to_string()));
    config.request_timeout_ms = 5_000;
    config.credentials = credentials.map(|(u, p)| Credentials::new(u, p.as_bytes().to_vec()));
    let cert_key = (
        certs.join(certs::ADMIN_CERT_FILE),
        certs.join(certs::ADMIN_KEY_FILE),
    );
    config.tls = Some(
        raft_client::tls::client_config_from_pem_files(
            &certs.join(certs::CA_CERT_FILE),
            client_cert.then_some((cert_key.0.as_path(), cert_key.1.as_path())),
        )
        .unwrap(),
    );
    Client::new(config)
}

fn client(addrs: &[SocketAddr], credentials: Option<(Option<&str>, &str)>) -> Client {
    let mut config = ClientConfig::new(addrs.iter().map(|a| a.to_string()));
    config.request_timeout_ms = 5_000;
    config.credentials = credentials.map(|(u, p)| Credentials::new(u, p.as_bytes().to_vec()));
    Client::new(config)
}

/// A raw RESP connection: commands in, replies out as text (`+OK`, `-ERR ...`, `$3 foo`,
/// `*2 [...]`), so tests compare the exact wire answer.
struct Resp<S = TcpStream> {
    stream: BufReader<S>,
}

impl Resp<TcpStream> {
    async fn connect(addr: SocketAddr) -> Resp {
        Resp {
            stream: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Resp<S> {
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
    // A transaction is held to the role of every command in it: a refused write aborts it.
    assert_eq!(c.call(&["MULTI"]).await, "+OK");
    assert_eq!(c.call(&["GET", "k"]).await, "+QUEUED");
    assert!(c.call(&["SET", "k", "v"]).await.starts_with("-NOPERM"));
    assert!(c.call(&["EXEC"]).await.starts_with("-EXECABORT"));
    // CLIENT LIST shows other users' connections: admin only.
    assert!(c.call(&["CLIENT", "LIST"]).await.starts_with("-NOPERM"));
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

    // Dropping every key is an administrator's act; expiry is a writer's.
    assert_eq!(
        c.call(&["FLUSHALL"]).await,
        "-NOPERM User writer has no permissions to run the 'flushall' command"
    );
    assert_eq!(c.call(&["EXPIRE", "k", "100"]).await, ":1");

    // admin (the default user, one-argument AUTH): membership commands pass the gate and
    // reach the leader's own checks (node 97 has no address, which it says).
    assert_eq!(c.call(&["AUTH", ADMIN_PASSWORD]).await, "+OK");
    let added = c.call(&["RAFT.ADDLEARNER", "97"]).await;
    assert!(
        added.starts_with("-ERR node 97 has no known peer address"),
        "{added}"
    );

    // Commands that would only pretend to work are refused; what tools send on connect
    // still answers.
    assert!(c
        .call(&["CONFIG", "SET", "requirepass", "x"])
        .await
        .starts_with("-ERR CONFIG SET is not supported"));
    assert_eq!(c.call(&["CONFIG", "GET", "save"]).await, "*2 [$ save, $ ]");
    assert_eq!(c.call(&["CONFIG", "GET", "maxmemory"]).await, "*0 []");
    assert!(c
        .call(&["CLIENT", "KILL", "ID", "1"])
        .await
        .starts_with("-ERR unknown subcommand 'KILL'"));
    assert_eq!(
        c.call(&["CLIENT", "SETINFO", "LIB-NAME", "test"]).await,
        "+OK"
    );
    assert_eq!(c.call(&["CLIENT", "SETNAME", "tester"]).await, "+OK");
    assert_eq!(c.call(&["CLIENT", "GETNAME"]).await, "$ tester");

    // HELLO: Redis' fields; a version other than 2 or 3 is refused, and HELLO 3 without
    // credentials on a connection not logged in is NOAUTH, as in Redis.
    let mut h = Resp::connect(addr).await;
    assert_eq!(
        h.call(&["HELLO", "4"]).await,
        "-NOPROTO unsupported protocol version"
    );
    assert!(h
        .call(&["HELLO", "3"])
        .await
        .starts_with("-NOAUTH HELLO must be called"));
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
    // RESET logs the connection out when authentication is on.
    assert_eq!(p.call(&["RESET"]).await, "+RESET");
    assert_eq!(
        p.call(&["GET", "p"]).await,
        "-NOAUTH Authentication required."
    );
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
    assert!(matches!(
        writer.kv(raft_client::KvCommand::FlushAll).await,
        Err(ClientError::Node(NodeError::PermissionDenied(_)))
    ));

    // The CLI: the password from RAFT_NODE_PASSWORD or --password-file, never a flag.
    let cli = |args: &[&str], password: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_raft-node"));
        cmd.arg(args[0]).arg("--addr").arg(addrs[0].to_string());
        cmd.args(&args[1..]);
        cmd.env_remove("RAFT_NODE_PASSWORD")
            .env_remove("RAFT_NODE_USER");
        if let Some(p) = password {
            cmd.env("RAFT_NODE_PASSWORD", p);
        }
        cmd.output().expect("run raft-node")
    };
    let refused = tokio::task::block_in_place(|| cli(&["status"], None));
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("authentication"));
    let status = tokio::task::block_in_place(|| cli(&["status"], Some(ADMIN_PASSWORD)));
    assert!(status.status.success(), "{status:?}");
    assert!(String::from_utf8_lossy(&status.stdout).contains("role        Leader"));
    let password_file = dir.path().join("reader-password");
    std::fs::write(&password_file, format!("{READER_PASSWORD}\n")).unwrap();
    let file = password_file.display().to_string();
    let as_reader = ["admin", "--user", "reader", "--password-file", &file];
    let denied = tokio::task::block_in_place(|| {
        let mut args = as_reader.to_vec();
        args.extend(["promote", "97"]);
        cli(&args, None)
    });
    assert_eq!(denied.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "{denied:?}"
    );

    let admin = client(&addrs, Some((None, ADMIN_PASSWORD)));
    match admin.add_learner(98).await {
        Err(ClientError::Node(NodeError::Invalid(m))) if m.contains("no known peer address") => {}
        other => panic!("admin should reach the membership check, got {other:?}"),
    }

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
    let leader = wait_leader(&admin).await;
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
    // An admin may hand leadership over (through any node: the client follows redirects).
    admin.transfer_leader(follower.id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin.status().await.ok().and_then(|s| s.leader) != Some(follower.id) {
        assert!(
            Instant::now() < deadline,
            "leadership did not move to {}",
            follower.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for n in nodes {
        n.shutdown().await;
    }
}

/// The leader, once the node `client` reaches knows one (within 20 s).
async fn wait_leader(client: &Client) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // A status may come from a follower (the client stays on the node that answers):
        // its view of the leader is enough, later requests follow redirects.
        if let Ok(Some(l)) = client.status().await.map(|s| s.leader) {
            return l;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// TLS on the client port with auth: raft-client with and without a client certificate,
/// RESP over TLS, plaintext refused, and a follower forwarding writes over TLS with its
/// node certificate (the auth file has no internal password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_and_forwarding_with_node_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes_with(dir.path(), 3, false, true).await;
    let certs_dir = dir.path().join("certs");
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.client_addr).collect();

    let admin = tls_client(&addrs, &certs_dir, Some((None, ADMIN_PASSWORD)), false);
    let leader = wait_leader(&admin).await;
    admin.set("tls", "1").await.unwrap();
    // Without credentials, TLS alone does not log in.
    let anonymous = tls_client(&addrs, &certs_dir, None, false);
    assert!(matches!(
        anonymous.get("tls").await,
        Err(ClientError::Node(NodeError::Unauthenticated(_)))
    ));
    // The admin client certificate (CN "admin") is not a user of this auth file: it is
    // let in over TLS but must still log in.
    let cert_only = tls_client(&addrs, &certs_dir, None, true);
    assert!(matches!(
        cert_only.get("tls").await,
        Err(ClientError::Node(NodeError::Unauthenticated(_)))
    ));
    let reader = tls_client(
        &addrs,
        &certs_dir,
        Some((Some("reader"), READER_PASSWORD)),
        true,
    );
    assert_eq!(reader.get("tls").await.unwrap().as_deref(), Some(&b"1"[..]));

    // A plaintext client gets no answer from a TLS port.
    let plain = {
        let mut config = ClientConfig::new([addrs[0].to_string()]);
        config.request_timeout_ms = 1_500;
        config.credentials = Some(Credentials::new(None, ADMIN_PASSWORD.as_bytes().to_vec()));
        Client::new(config)
    };
    assert!(plain.get("tls").await.is_err());

    // RESP over TLS on a follower: its write is forwarded to the leader, which accepts the
    // follower by its node certificate.
    let follower = nodes.iter().find(|n| n.id != leader).unwrap();
    let ca =
        raft_client::tls::client_config_from_pem_files(&certs_dir.join(certs::CA_CERT_FILE), None)
            .unwrap();
    let tcp = TcpStream::connect(follower.client_addr).await.unwrap();
    let name = raft_client::tls::server_name(&follower.client_addr.to_string()).unwrap();
    let stream = tokio_rustls::TlsConnector::from(ca)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut c = Resp {
        stream: BufReader::new(stream),
    };
    assert_eq!(
        c.call(&["GET", "tls"]).await,
        "-NOAUTH Authentication required."
    );
    assert_eq!(c.call(&["AUTH", "writer", WRITER_PASSWORD]).await, "+OK");
    assert_eq!(c.call(&["SET", "over-tls", "yes"]).await, "+OK");
    assert_eq!(c.call(&["GET", "over-tls"]).await, "$ yes");
    assert_eq!(
        reader.get("over-tls").await.unwrap().as_deref(),
        Some(&b"yes"[..])
    );

    for n in nodes {
        n.shutdown().await;
    }
}

/// A client certificate whose common name is a user of the auth file logs in as that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_naming_a_user_logs_in_as_that_user() {
    let dir = tempfile::tempdir().unwrap();
    // The auth file gains a user `admin` (role read): the name in `raft-node certs`'
    // client certificate.
    let path = write_auth_file(dir.path());
    let mut text = std::fs::read_to_string(&path).unwrap();
    text += &format!(
        "[[users]]\nname = \"admin\"\nrole = \"read\"\npassword_sha256 = \"{}\"\n",
        password_sha256_hex(b"unused-password")
    );
    std::fs::write(&path, text).unwrap();
    certs::generate(
        &dir.path().join("certs"),
        None,
        &[1],
        &["127.0.0.1".to_string()],
    )
    .unwrap();
    let certs_dir = dir.path().join("certs");
    let ports = free_addrs(2);
    let peers = vec![PeerConfig {
        id: 1,
        addr: ports[0].into(),
        client_addr: Some(ports[1].into()),
    }];
    let mut config = NodeConfig::with_defaults(1, dir.path().join("node-1"), peers);
    config.auth_file = Some(path);
    config.tls = Some(TlsConfig {
        ca_file: certs_dir.join(certs::CA_CERT_FILE),
        cert_file: certs_dir.join(certs::node_cert_file(1)),
        key_file: certs_dir.join(certs::node_key_file(1)),
        client_cert_required: false,
    });
    let node = RunningNode::start(config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let by_cert = tls_client(&[node.client_addr], &certs_dir, None, true);
    assert_eq!(by_cert.get("k").await.unwrap(), None);
    assert!(matches!(
        by_cert.set("k", "v").await,
        Err(ClientError::Node(NodeError::PermissionDenied(_)))
    ));
    node.shutdown().await;
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
            addr: ports[0].into(),
            client_addr: Some(ports[1].into()),
        },
        PeerConfig {
            id: 2,
            addr: ports[2].into(),
            client_addr: Some(ports[3].into()),
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
