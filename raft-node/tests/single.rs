//! One in-process node: malformed native frames close only their own connection.

use std::time::Duration;

use raft_client::{Client, ClientConfig};
use raft_node::config::{NodeConfig, PeerConfig};
use raft_node::node::RunningNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Two distinct ephemeral ports (both held until both are chosen).
fn two_free_addrs() -> (std::net::SocketAddr, std::net::SocketAddr) {
    let a = raft_testkit::free_addrs(2);
    (a[0], a[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (peer_addr, client_addr) = two_free_addrs();
    let peer = PeerConfig {
        id: 1,
        addr: peer_addr.into(),
        client_addr: Some(client_addr.into()),
    };
    let config: NodeConfig = NodeConfig::from_toml(&format!(
        "id = 1\ndata_dir = {:?}\n[[peers]]\nid = 1\naddr = \"{}\"\nclient_addr = \"{}\"\n",
        dir.path().display().to_string(),
        peer.addr,
        peer.client_addr.unwrap()
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let node = RunningNode::start(config).await.unwrap();
    let addr = node.client_addr;
    let client = Client::new(ClientConfig::new([addr.to_string()]));
    client.set("k", "v").await.unwrap();

    // Undecodable body, then an oversized length prefix: each connection is closed.
    for bad in [
        &[0u8, 0, 0, 3, 0xff, 0xff, 0xff][..],
        &[0u8, 0xff, 0xff, 0xff, 1][..],
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bad).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "connection should be closed");
    }
    // The existing client connection and new ones still work.
    assert_eq!(client.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    client.set("k", "w").await.unwrap();
    let other = Client::new(ClientConfig::new([addr.to_string()]));
    assert_eq!(other.get("k").await.unwrap().as_deref(), Some(&b"w"[..]));
    // The typed helpers, end to end.
    other
        .mset(vec![("a".into(), "1".into()), ("b".into(), "2".into())])
        .await
        .unwrap();
    assert_eq!(
        other.mget(vec!["a".into(), "zz".into()]).await.unwrap(),
        vec![Some("1".into()), None]
    );
    assert_eq!(
        other
            .exists(vec!["a".into(), "b".into(), "c".into()])
            .await
            .unwrap(),
        2
    );
    assert_eq!(other.incr_by("a", 41).await.unwrap(), 42);
    assert_eq!(
        other
            .compare_and_set("b", Some("2".into()), Some("3".into()))
            .await
            .unwrap(),
        (true, Some("3".into()))
    );
    assert_eq!(other.del(vec!["a".into(), "c".into()]).await.unwrap(), 1);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_beyond_the_in_flight_bound_are_refused_busy() {
    let dir = tempfile::tempdir().unwrap();
    let (peer, client) = two_free_addrs();
    let config = NodeConfig::from_toml(&format!(
        "id = 1\ndata_dir = {:?}\nproposals_in_flight_max = 2\n\
         request_timeout_ms = 120000\n\
         [[peers]]\nid = 1\naddr = \"{peer}\"\nclient_addr = \"{client}\"\n",
        dir.path().display().to_string(),
    ))
    .unwrap();
    let node = RunningNode::start(config).await.unwrap();
    // Wait for the single node to lead.
    let c = Client::new(ClientConfig::new([node.client_addr.to_string()]));
    c.set("warm", "up").await.unwrap();
    let set = raft_client::KvCommand::Set {
        key: "k".into(),
        value: "v".into(),
    };
    let data = raft_node::kv::log_command(None, set.encode());
    // All 200 are queued before the runtime can finish any (each waits for a sync), so most
    // find the bound full. The request timeout is far beyond any sync on a loaded machine:
    // an admitted proposal must commit, not time out (what this test is not about).
    let results =
        futures::future::join_all((0..200).map(|_| node.handle.propose(data.clone()))).await;
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(raft_client::NodeError::Busy)))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(busy + ok, 200, "{results:?}");
    assert!(busy > 0 && ok >= 2, "busy {busy}, ok {ok}");
    node.shutdown().await;
}
