//! Connecting to a peer and the dialer's half of the handshake, for either lane.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use raft_core::NodeId;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::FramedRead;
use tracing::warn;

use crate::addr::PeerAddr;
use crate::conn::{split_plain, split_tls, Reader, Writer};
use crate::frame::{encode_frame, FrameDecoder};
use crate::stats::ConnErrorKind;
use crate::wire::{Hello, HelloReply, Lane, HANDSHAKE_FRAME_BYTES_MAX};

use super::{describe_identity, peer_identity, write_flush, ConnError, Peer, Shared};

/// Opens a TCP connection to `target`, resolving a host name now (so a reconnect finds a
/// peer that moved) and trying each address it resolves to in turn.
async fn connect(
    node: NodeId,
    peer: NodeId,
    target: &PeerAddr,
) -> Result<(TcpStream, SocketAddr), ConnError> {
    let addrs = target.resolve().await.map_err(|e| {
        // Unlike a refused connection (a peer restarting), a name that does not resolve
        // needs an operator: say so at every attempt.
        warn!(node, peer, address = %target, "{e}");
        ConnError::new(ConnErrorKind::Connect, e.to_string())
    })?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok((stream, addr)),
            Err(e) => last = Some(format!("connect to {addr} ({target}): {e}")),
        }
    }
    Err(ConnError::new(
        ConnErrorKind::Connect,
        last.unwrap_or_else(|| format!("{target} resolved to no address")),
    ))
}

/// Connect to `peer` and complete the handshake for `lane`.
pub(super) async fn dial(
    shared: &Shared,
    peer: &Peer,
    lane: Lane,
) -> Result<(FramedRead<Reader, FrameDecoder<HelloReply>>, Writer), ConnError> {
    let cfg = &shared.cfg;
    let target = peer.addr.lock().unwrap().clone();
    let deadline = Duration::from_millis(cfg.handshake_timeout_ms);
    let (stream, addr) = timeout(deadline, connect(cfg.node_id, peer.id, &target))
        .await
        .map_err(|_| {
            ConnError::new(
                ConnErrorKind::Connect,
                format!("connect to {target} timed out"),
            )
        })??;
    // Raft's messages are latency-bound and we batch ourselves: Nagle would only add delay.
    stream.set_nodelay(true)?;
    let (rd, mut wr) = match &cfg.tls {
        None => split_plain(stream),
        Some(tls) => {
            // Host names are not checked (the verifier looks at the chain only): the node
            // ID in the certificate is what must match.
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
            let stream = timeout(deadline, connector.connect(name, stream))
                .await
                .map_err(|_| ConnError::new(ConnErrorKind::HandshakeTimeout, "no TLS handshake"))?
                .map_err(|e| {
                    ConnError::new(
                        ConnErrorKind::Tls,
                        format!("TLS handshake with {addr}: {e}"),
                    )
                })?;
            let found = peer_identity(stream.get_ref().1.peer_certificates());
            if found != Ok((cfg.cluster_id, peer.id)) {
                return Err(ConnError::new(
                    ConnErrorKind::HandshakeRejected,
                    format!(
                        "expected node {} at {addr}, its certificate says: {}",
                        peer.id,
                        describe_identity(&found)
                    ),
                ));
            }
            split_tls(tokio_rustls::TlsStream::Client(stream))
        }
    };
    let hello = Hello {
        cluster_id: cfg.cluster_id,
        from: cfg.node_id,
        to: peer.id,
        lane,
    };
    let mut buf = BytesMut::new();
    encode_frame(&hello, &mut buf, HANDSHAKE_FRAME_BYTES_MAX)?;
    let mut rd = FramedRead::new(
        rd,
        FrameDecoder::<HelloReply>::new(HANDSHAKE_FRAME_BYTES_MAX),
    );
    let reply = timeout(deadline, async {
        write_flush(&mut wr, &buf).await?;
        rd.next().await.transpose()
    })
    .await
    .map_err(|_| ConnError::new(ConnErrorKind::HandshakeTimeout, "no handshake reply"))??;
    match reply {
        None => Err(ConnError::new(ConnErrorKind::Io, "closed during handshake")),
        Some(HelloReply::Reject { reason }) => Err(ConnError::new(
            ConnErrorKind::HandshakeRejected,
            format!("node {} at {addr} refused us: {reason}", peer.id),
        )),
        Some(HelloReply::Accept { node_id }) if node_id != peer.id => Err(ConnError::new(
            ConnErrorKind::HandshakeRejected,
            format!("expected node {} at {addr}, found node {node_id}", peer.id),
        )),
        Some(HelloReply::Accept { .. }) => Ok((rd, wr)),
    }
}
