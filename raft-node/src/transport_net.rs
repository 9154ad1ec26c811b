//! raft-net behind the transport seam.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use raft_core::{Message, MessageBody, NodeId};
use raft_net::{Incoming, Transport, TransportConfig, TransportHandle};
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::transport::{Inbound, PeerTransport};

/// raft-net's transport: messages on one connection per peer, snapshots on another.
pub struct NetTransport {
    handle: TransportHandle,
}

impl NetTransport {
    /// Starts raft-net on `listen` and forwards what it receives into `inbound` until
    /// `shutdown`.
    pub async fn start(
        id: NodeId,
        cluster_id: u64,
        listen: SocketAddr,
        peers: Vec<(NodeId, SocketAddr)>,
        inbound: mpsc::Sender<Inbound>,
        metrics: Arc<Metrics>,
        mut shutdown: watch::Receiver<bool>,
    ) -> io::Result<NetTransport> {
        let mut config = TransportConfig::new(id, cluster_id, listen);
        config.peers = peers.into_iter().collect();
        let (handle, mut incoming) = Transport::start(config).await?;
        let stopper = handle.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = shutdown.changed() => break,
                    n = incoming.recv() => n,
                };
                match next {
                    Some(Incoming::Message(m)) => {
                        if inbound.try_send(Inbound::Message(m)).is_err() {
                            Metrics::add(&metrics.messages_dropped, 1);
                        }
                    }
                    Some(Incoming::Snapshot { meta, data, .. }) => {
                        let body = Inbound::SnapshotBody { meta, body: data };
                        if inbound.send(body).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                }
            }
            stopper.shutdown().await;
        });
        Ok(NetTransport { handle })
    }

    /// The address raft-net listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }
}

impl PeerTransport for NetTransport {
    fn send(&self, msg: Message) {
        // Unknown peer or shut down: the message is lost, which Raft tolerates.
        let _ = self.handle.send(msg);
    }

    fn send_snapshot(&self, msg: Message, body: Bytes) -> Result<(), String> {
        let MessageBody::InstallSnapshot { meta } = &msg.body else {
            return Err("not an InstallSnapshot message".into());
        };
        let done = self
            .handle
            .send_snapshot(msg.to, meta.clone(), body)
            .map_err(|e| e.to_string())?;
        // The message follows the body, so the receiver holds the body when it steps it.
        let handle = self.handle.clone();
        tokio::spawn(async move {
            match done.await {
                Ok(Ok(())) => {
                    let _ = handle.send(msg);
                }
                Ok(Err(e)) => tracing::warn!(to = msg.to, error = %e, "snapshot transfer failed"),
                Err(_) => {}
            }
        });
        Ok(())
    }

    fn refresh_metrics(&self, metrics: &Metrics) {
        let s = self.handle.stats();
        Metrics::set(&metrics.bytes_sent, s.bytes_sent + s.snapshot_bytes_sent);
        Metrics::set(
            &metrics.bytes_received,
            s.bytes_received + s.snapshot_bytes_received,
        );
        Metrics::set(&metrics.messages_sent, s.messages_sent);
        Metrics::set(&metrics.messages_received, s.messages_received);
        Metrics::set(
            &metrics.messages_dropped,
            s.messages_dropped + s.messages_unencodable,
        );
    }
}
