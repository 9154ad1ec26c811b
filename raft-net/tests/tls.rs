//! The transport over real TLS sockets on loopback: mutual TLS against the cluster CA, node
//! IDs bound to certificates, refusals that reveal nothing, and bounded handshakes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use raft_core::{Message, MessageBody};
use raft_net::frame::{encode_frame, FrameDecoder};
use raft_net::tls::{node_uri, peer_client_config, peer_server_config, TransportTls};
use raft_net::wire::{Hello, HelloReply, Lane};
use raft_net::{ConnErrorKind, Incoming, Transport, TransportConfig, TransportHandle};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::Receiver;
use tokio::time::timeout;
use tokio_util::codec::FramedRead;

mod common;

const CLUSTER: u128 = 0x5ec0_7e57_0000_0000_0000_0000_0000_00c1;

/// A cluster CA that issues node certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let der = params.self_signed(&key).unwrap().der().clone();
        Ca {
            issuer: Issuer::new(params, key),
            der,
        }
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        Arc::new(roots)
    }

    /// A certificate naming `node` of `cluster`.
    fn issue(
        &self,
        cluster: u128,
        node: u64,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(
            node_uri(cluster, node).as_str().try_into().unwrap(),
        )];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], key)
    }

    /// Transport TLS for a node holding `node`'s certificate, trusting `self`.
    fn tls(&self, issuer: &Ca, node: u64) -> TransportTls {
        let (chain, key) = issuer.issue(CLUSTER, node);
        TransportTls {
            server: Arc::new(
                peer_server_config(self.roots(), chain.clone(), key.clone_key()).unwrap(),
            ),
            client: Arc::new(peer_client_config(self.roots(), chain, key).unwrap()),
        }
    }
}

fn config(id: u64, tls: TransportTls) -> TransportConfig {
    let mut c = TransportConfig::new(id, CLUSTER, "127.0.0.1:0".parse().unwrap());
    c.backoff_min_ms = 5;
    c.backoff_max_ms = 100;
    c.tls = Some(tls);
    c
}

fn heartbeat(from: u64, to: u64, seq: u64) -> Message {
    Message {
        from,
        to,
        term: 1,
        body: MessageBody::Heartbeat {
            commit: seq,
            read_seq: seq,
        },
    }
}

/// The next message batch (snapshots skipped), or None after 5 s.
async fn next_messages(rx: &mut Receiver<Incoming>) -> Option<Vec<Message>> {
    loop {
        match timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(Incoming::Messages(batch))) => return Some(batch),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// `from` sends heartbeats to `to` until one arrives; the received batch's first message.
async fn exchange(
    from: &TransportHandle,
    to_rx: &mut Receiver<Incoming>,
    f: u64,
    t: u64,
) -> Message {
    from.send(heartbeat(f, t, 1)).unwrap();
    next_messages(to_rx).await.expect("a message arrives")[0].clone()
}

async fn shutdown(ts: impl IntoIterator<Item = TransportHandle>) {
    for t in ts {
        t.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_ca_signed_certificates_exchange_messages_and_snapshots() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (a, mut a_rx) = Transport::start(config(1, ca.tls(&ca, 1))).await.unwrap();
    let mut cb = config(2, ca.tls(&ca, 2));
    cb.snapshot_store = Some(common::store(&dir.path().join("b")));
    let (b, mut b_rx) = Transport::start(cb).await.unwrap();
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    // Many messages in order, both ways, over the connection one side dialled.
    for seq in 0..2_000 {
        a.send(heartbeat(1, 2, seq)).unwrap();
    }
    let mut next = 0;
    while next < 2_000 {
        let batch = next_messages(&mut b_rx).await.expect("messages arrive");
        for m in batch {
            let MessageBody::Heartbeat { read_seq, .. } = m.body else {
                panic!("{m:?}")
            };
            assert_eq!(read_seq, next, "lost or reordered");
            next += 1;
        }
    }
    assert_eq!(exchange(&b, &mut a_rx, 2, 1).await.from, 2);
    // The snapshot lane runs over TLS too.
    let meta = common::meta(10);
    let sent = common::snapshot_file(&dir.path().join("a"), meta.clone(), 3 << 20, 1 << 20);
    let done = a.send_snapshot(2, common::chunks(&sent)).unwrap();
    let got = loop {
        match timeout(Duration::from_secs(10), b_rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Incoming::Snapshot {
                from,
                meta: m,
                file,
            } => break (from, m, common::file_bytes(&file)),
            Incoming::Messages(_) => continue,
        }
    };
    assert_eq!(got, (1, meta, common::file_bytes(&sent)));
    assert_eq!(done.await.unwrap(), Ok(()));
    assert_eq!(a.stats().connection_errors, Default::default());
    shutdown([a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_certificate_from_another_ca_is_refused() {
    let ca = Ca::new();
    let other = Ca::new();
    let (b, mut b_rx) = Transport::start(config(2, ca.tls(&ca, 2))).await.unwrap();
    // Node 1 trusts the cluster CA, but its own certificate comes from another CA.
    let (a, _a_rx) = Transport::start(config(1, ca.tls(&other, 1)))
        .await
        .unwrap();
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    a.send(heartbeat(1, 2, 0)).unwrap();
    wait_until("the TLS refusal", || {
        b.stats().errors(ConnErrorKind::Tls) > 0
    })
    .await;
    assert!(timeout(Duration::from_millis(300), b_rx.recv())
        .await
        .is_err());
    assert_eq!(b.stats().messages_received, 0);
    shutdown([a, b]).await;
}

/// A TLS connection to `addr` with `tls`'s client side, then `hello`: the reply.
async fn tls_handshake(
    addr: SocketAddr,
    tls: &TransportTls,
    hello: &Hello,
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    Option<HelloReply>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let mut s = tokio_rustls::TlsConnector::from(tls.client.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    encode_frame(hello, &mut buf, 1024).unwrap();
    s.write_all(&buf).await.unwrap();
    s.flush().await.unwrap();
    let mut rd = FramedRead::new(s, FrameDecoder::<HelloReply>::new(1024));
    let reply = timeout(Duration::from_secs(5), rd.next())
        .await
        .unwrap()
        .and_then(Result::ok);
    (rd.into_inner(), reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_certificate_cannot_claim_another_node_id() {
    let ca = Ca::new();
    let (a, mut a_rx) = Transport::start(config(1, ca.tls(&ca, 1))).await.unwrap();
    let (c, mut c_rx) = Transport::start(config(3, ca.tls(&ca, 3))).await.unwrap();
    a.add_peer(3, c.local_addr());
    c.add_peer(1, a.local_addr());
    c.add_peer(2, "127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap());
    // Node 1 and node 3 talk on node 1's connection.
    assert_eq!(exchange(&a, &mut c_rx, 1, 3).await.from, 1);
    assert_eq!(exchange(&c, &mut a_rx, 3, 1).await.from, 3);

    // Node 2's genuine certificate, claiming to be node 1 in its Hello.
    let node2 = ca.tls(&ca, 2);
    let claim = Hello {
        cluster_id: CLUSTER,
        from: 1,
        to: 3,
        lane: Lane::Messages,
    };
    let (mut s, reply) = tls_handshake(c.local_addr(), &node2, &claim).await;
    match reply {
        Some(HelloReply::Reject { reason }) => {
            assert_eq!(reason, raft_net::REFUSED);
            assert!(!reason.contains(&format!("{CLUSTER:x}")), "{reason}");
        }
        other => panic!("the impostor was not refused: {other:?}"),
    }
    let mut sink = [0u8; 64];
    let closed = timeout(Duration::from_secs(5), s.read(&mut sink))
        .await
        .unwrap();
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // A wrong cluster ID over TLS: refused, and the ID is not revealed.
    let guess = Hello {
        cluster_id: 1,
        from: 2,
        ..claim.clone()
    };
    let (_s, reply) = tls_handshake(c.local_addr(), &node2, &guess).await;
    assert_eq!(
        reply,
        Some(HelloReply::Reject {
            reason: raft_net::REFUSED.into()
        })
    );
    // The acceptor counts a refusal as it closes the connection, just after the reply
    // went out: give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while c.stats().errors(ConnErrorKind::HandshakeRejected) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "refusals counted: {:?}",
            c.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Node 1's link was not replaced: both directions still flow on it.
    for seq in 10..20 {
        c.send(heartbeat(3, 1, seq)).unwrap();
        a.send(heartbeat(1, 3, seq)).unwrap();
    }
    let to_a = next_messages(&mut a_rx)
        .await
        .expect("node 3 still reaches node 1");
    assert!(to_a.iter().all(|m| m.from == 3));
    let to_c = next_messages(&mut c_rx)
        .await
        .expect("node 1 still reaches node 3");
    assert!(to_c.iter().all(|m| m.from == 1));

    // The dialer's side: node 1 believes node 2 lives at node 3's address, and refuses the
    // acceptor there, whose certificate names node 3.
    a.add_peer(2, c.local_addr());
    a.send(heartbeat(1, 2, 0)).unwrap();
    let before = a.stats().errors(ConnErrorKind::HandshakeRejected);
    wait_until("the dialer's refusal", || {
        a.stats().errors(ConnErrorKind::HandshakeRejected) > before
    })
    .await;
    shutdown([a, c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_one_source_do_not_lock_out_a_real_peer() {
    let ca = Ca::new();
    let mut cb = config(2, ca.tls(&ca, 2));
    // Long enough that the silent connections stay pending for the whole test.
    cb.handshake_timeout_ms = 30_000;
    let per_source = cb.handshakes_pending_per_source_max;
    let (b, mut b_rx) = Transport::start(cb).await.unwrap();
    // Twice the per-source limit of silent connections from 127.0.0.2.
    let mut silent = Vec::new();
    for _ in 0..2 * per_source {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        silent.push(socket.connect(b.local_addr()).await.unwrap());
    }
    wait_until("the extra silent connections to be refused", || {
        b.stats().errors(ConnErrorKind::HandshakeLimit) >= per_source as u64
    })
    .await;
    // A real peer, from 127.0.0.1, gets through at once.
    let (a, _a_rx) = Transport::start(config(1, ca.tls(&ca, 1))).await.unwrap();
    a.add_peer(2, b.local_addr());
    b.add_peer(1, a.local_addr());
    assert_eq!(exchange(&a, &mut b_rx, 1, 2).await.from, 1);
    drop(silent);
    shutdown([a, b]).await;
}
