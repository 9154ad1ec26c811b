//! Three nodes with mutual TLS on the peer port, from `raft-node certs`' files: a leader is
//! elected and a write replicates; the cluster ID comes from the certificates.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_node::certs;
use raft_node::config::{NodeConfig, PeerConfig};
use raft_node::node::RunningNode;
use raft_node::tls::TlsConfig;
use raft_proto::{KvCommand, KvResponse, LogCommand};
use raft_testkit::free_addrs;

const BIN: &str = env!("CARGO_BIN_EXE_raft-node");

#[test]
fn certs_command_writes_private_keys_and_prints_the_cluster_id() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["certs", "--out"])
        .arg(dir.path())
        .args(["--nodes", "1,2,3", "--hosts", "127.0.0.1,localhost"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = std::fs::read_to_string(dir.path().join(certs::CLUSTER_ID_FILE)).unwrap();
    assert!(stdout.contains(id.trim()), "{stdout}");
    for key in [
        certs::CA_KEY_FILE.to_string(),
        certs::node_key_file(3),
        certs::ADMIN_KEY_FILE.to_string(),
    ] {
        let mode = std::fs::metadata(dir.path().join(&key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // Asked again for an existing node: refused, nothing overwritten.
    let again = Command::new(BIN)
        .args(["certs", "--out"])
        .arg(dir.path())
        .args(["--nodes", "3"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_elects_a_leader_and_replicates_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    let made = certs::generate(&certs_dir, None, &[1, 2, 3], &["127.0.0.1".into()]).unwrap();
    let ports = free_addrs(6);
    let peers: Vec<PeerConfig> = (1..=3u64)
        .map(|id| PeerConfig {
            id,
            addr: ports[2 * (id as usize - 1)].into(),
            client_addr: Some(ports[2 * (id as usize - 1) + 1].into()),
        })
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        // No cluster_id: the members agree through their certificates.
        let mut config =
            NodeConfig::with_defaults(id, dir.path().join(format!("node-{id}")), peers.clone());
        config.tls = Some(TlsConfig {
            ca_file: certs_dir.join(certs::CA_CERT_FILE),
            cert_file: certs_dir.join(certs::node_cert_file(id)),
            key_file: certs_dir.join(certs::node_key_file(id)),
            client_cert_required: false,
        });
        nodes.push(RunningNode::start(config).await.unwrap());
    }
    let stored = std::fs::read_to_string(dir.path().join("node-2/CLUSTER_ID")).unwrap();
    assert_eq!(stored.trim(), format!("{:032x}", made.cluster_id));

    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let mut found = None;
        for n in &nodes {
            if let Ok(s) = n.handle.status().await {
                if s.role == "Leader" {
                    found = Some(n);
                }
            }
        }
        if let Some(l) = found {
            break l;
        }
        assert!(Instant::now() < deadline, "no leader elected over TLS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let set = KvCommand::Set {
        key: Bytes::from_static(b"greeting"),
        value: Bytes::from_static(b"hello over tls"),
    };
    let command = LogCommand {
        session: None,
        op: set.encode(),
        stamp_ms: 0,
    };
    leader.handle.propose(command.encode()).await.unwrap();
    // Every replica applies it (a local read of each node's own state).
    let get = KvCommand::Get {
        key: Bytes::from_static(b"greeting"),
    }
    .encode();
    for n in &nodes {
        loop {
            let reply = n.handle.read(get.clone(), false).await.unwrap();
            if KvResponse::decode(&reply)
                == Some(KvResponse::Value(Some(Bytes::from_static(
                    b"hello over tls",
                ))))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not apply the write",
                n.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_certificate_naming_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs::generate(&certs_dir, None, &[1, 2], &["127.0.0.1".into()]).unwrap();
    let ports = free_addrs(2);
    let peers = vec![PeerConfig {
        id: 1,
        addr: ports[0].into(),
        client_addr: Some(ports[1].into()),
    }];
    let mut config = NodeConfig::with_defaults(1, dir.path().join("node-1"), peers);
    config.tls = Some(TlsConfig {
        ca_file: certs_dir.join(certs::CA_CERT_FILE),
        cert_file: certs_dir.join(certs::node_cert_file(2)),
        key_file: certs_dir.join(certs::node_key_file(2)),
        client_cert_required: false,
    });
    let e = RunningNode::start(config).await.err().expect("refused");
    assert_eq!(e.field, "tls.cert_file", "{e}");
    assert!(e.message.contains("names node 2"), "{e}");
}
