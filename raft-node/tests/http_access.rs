//! Who may use the HTTP port and how: bearer tokens and roles, the status page's token,
//! HTTPS when the node has TLS.

use raft_node::auth::Auth;
use raft_node::limits::ClientLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod http_common;

use http_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_required_and_roles_checked() {
    let users = [
        ("default", "admin", "root-pw"),
        ("reader", "read", "read-pw"),
        ("writer", "read-write", "write-pw"),
    ];
    let mut toml = String::new();
    for (name, role, password) in users {
        toml += &format!(
            "[[users]]\nname = \"{name}\"\nrole = \"{role}\"\npassword_sha256 = \"{}\"\n",
            raft_node::auth::password_sha256_hex(password.as_bytes())
        );
    }
    let auth = Auth::from_toml(&toml).unwrap_or_else(|e| panic!("{e:?}"));
    let n = Node::start_member(ClientLimits::default(), 1, auth, None).await;
    // Health and readiness need no token (probes carry none).
    n.ready().await;
    assert_eq!(
        request(n.http, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .status,
        200
    );

    let put = |token: &str| {
        let auth = if token.is_empty() {
            String::new()
        } else {
            format!("Authorization: Bearer {token}\r\n")
        };
        format!("PUT /kv/t HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1\r\n\r\nv")
    };
    let get = |path: &str, token: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n")
    };
    // No token, a wrong one, another scheme: 401 with the challenge; nothing stored.
    for raw in [
        put(""),
        put("wrong"),
        put("writer:read-pw"),
        "PUT /kv/t HTTP/1.1\r\nHost: x\r\nAuthorization: Basic d3JpdGVyOndyaXRlLXB3\r\nContent-Length: 1\r\n\r\nv".into(),
    ] {
        let r = request(n.http, &raw).await;
        assert_eq!(r.status, 401, "{raw}: {r:?}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"), "{r:?}");
    }
    for path in ["/status", "/metrics", "/kv/t"] {
        let r = request(n.http, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        assert_eq!(r.status, 401, "GET {path} without a token: {r:?}");
    }
    // A reader reads but may not write.
    assert_eq!(
        request(n.http, get("/kv/t", "reader:read-pw")).await.status,
        404
    );
    assert_eq!(
        request(n.http, get("/status", "reader:read-pw"))
            .await
            .status,
        200
    );
    let denied = request(n.http, put("reader:read-pw")).await;
    assert_eq!(denied.status, 403, "{denied:?}");
    // A writer and the default user (password alone) write.
    assert_eq!(request(n.http, put("writer:write-pw")).await.status, 200);
    assert_eq!(request(n.http, put("root-pw")).await.status, 200);
    let got = request(n.http, get("/kv/t", "reader:read-pw")).await;
    assert_eq!((got.status, &got.body[..]), (200, &b"v"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_and_its_data_need_the_status_token() {
    let toml = format!(
        "[[users]]\nname = \"reader\"\nrole = \"read\"\npassword_sha256 = \"{}\"\n",
        raft_node::auth::password_sha256_hex(b"read-pw")
    );
    let auth = Auth::from_toml(&toml).unwrap_or_else(|e| panic!("{e:?}"));
    let n = Node::start_member(ClientLimits::default(), 1, auth, None).await;
    n.ready().await;
    let with = |path: &str, auth: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
    // Refused: the page (which holds no data, and asks for a token) with the refusal's
    // status; the data not at all.
    for auth in ["", "Authorization: Bearer reader:wrong\r\n"] {
        let page = request(n.http, with("/", auth)).await;
        assert_eq!(page.status, 401, "{page:?}");
        assert!(page
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer"));
        let html = String::from_utf8_lossy(&page.body);
        assert!(html.contains("<title>Rafter cluster</title>"), "{html}");
        for secret in [
            "\"term\":",
            "\"applied_index\":",
            n.node.as_ref().unwrap().client_addr.to_string().as_str(),
        ] {
            assert!(!html.contains(secret), "the refused page leaks {secret}");
        }
        let data = request(n.http, with("/cluster", auth)).await;
        assert_eq!(data.status, 401, "{data:?}");
        assert!(
            !String::from_utf8_lossy(&data.body).contains("applied"),
            "{data:?}"
        );
    }
    let token = "Authorization: Bearer reader:read-pw\r\n";
    let page = request(n.http, with("/", token)).await;
    assert_eq!(page.status, 200, "{page:?}");
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let data = request(n.http, with("/cluster", token)).await;
    assert_eq!(data.status, 200, "{data:?}");
    let view: serde_json::Value = serde_json::from_slice(&data.body).unwrap();
    assert_eq!(view["from"], 1);
    assert_eq!(view["leader"]["id"], 1, "{view:#}");
    assert_eq!(view["members"][0]["status"]["role"], "Leader", "{view:#}");
    assert_eq!(view["alarms"], serde_json::json!([]), "{view:#}");
    // HEAD answers as GET does, without the body.
    let head = request(
        n.http,
        format!("HEAD /cluster HTTP/1.1\r\nHost: x\r\n{token}\r\n"),
    )
    .await;
    assert_eq!((head.status, head.body.len()), (200, 0), "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_when_the_node_has_tls() {
    let certs = tempfile::tempdir().unwrap();
    raft_node::certs::generate(certs.path(), None, &[1], &["127.0.0.1".to_string()]).unwrap();
    let setup = raft_node::tls::TlsConfig {
        ca_file: certs.path().join(raft_node::certs::CA_CERT_FILE),
        cert_file: certs.path().join(raft_node::certs::node_cert_file(1)),
        key_file: certs.path().join(raft_node::certs::node_key_file(1)),
        client_cert_required: false,
    }
    .load()
    .unwrap_or_else(|e| panic!("{e}"));
    let limits = ClientLimits {
        handshake_timeout_ms: 500,
        ..ClientLimits::default()
    };
    let n = Node::start_member(
        limits,
        1,
        Auth::disabled(),
        Some(setup.client_server.clone()),
    )
    .await;

    let connector = tokio_rustls::TlsConnector::from(setup.client.clone());
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tcp = TcpStream::connect(n.http).await.unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    // Two requests on the one TLS connection.
    let mut buf = Vec::new();
    for _ in 0..2 {
        tls.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut chunk = vec![0u8; 64 << 10];
        let reply = tokio::time::timeout(ANSWER_TIMEOUT, async {
            loop {
                let n = tls.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed");
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if body.len() >= len {
                        buf.clear();
                        return head.to_string();
                    }
                }
            }
        })
        .await
        .expect("an HTTPS answer in time");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }

    // Plain HTTP on the TLS port gets no answer and the connection is closed.
    let mut plain = TcpStream::connect(n.http).await.unwrap();
    plain
        .write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, plain.read_to_end(&mut got)).await;
    assert!(
        !got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // A client that connects and never starts the handshake is dropped.
    let mut silent = TcpStream::connect(n.http).await.unwrap();
    assert!(closed_within(&mut silent, ANSWER_TIMEOUT).await);
}
