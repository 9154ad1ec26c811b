//! raft-net behind the transport seam.

use std::io;
use std::net::SocketAddr;

use raft_core::{Message, MessageBody, NodeId};
use raft_net::{Incoming, Transport, TransportConfig, TransportHandle};
use raft_snapshot::{SnapshotChunks, SnapshotStore};
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::transport::{Inbound, PeerTransport};

/// Most messages raft-net hands over in one [`Inbound::Messages`].
const INBOUND_BATCH_MESSAGES_MAX: usize = 32;

/// raft-net's transport: messages on one connection per peer, snapshots on another.
pub struct NetTransport {
    handle: TransportHandle,
}

impl From<Incoming> for Inbound {
    fn from(incoming: Incoming) -> Self {
        match incoming {
            Incoming::Messages(batch) => Inbound::Messages(batch),
            Incoming::Snapshot { meta, file, .. } => Inbound::Snapshot { meta, file },
        }
    }
}

impl NetTransport {
    /// Starts raft-net on `listen`, delivering what it receives straight into `inbound`
    /// (raft-net's readers send into it; when it is full they stop reading and TCP pushes
    /// back on the peers), until `shutdown`. Snapshots from peers are received into
    /// `snapshots`.
    #[allow(clippy::too_many_arguments)] // each is one of the node's own settings
    pub async fn start(
        id: NodeId,
        cluster_id: u128,
        tls: Option<raft_net::tls::TransportTls>,
        listen: SocketAddr,
        peers: Vec<(NodeId, raft_net::PeerAddr)>,
        inbound: mpsc::Sender<Inbound>,
        snapshots: SnapshotStore,
        mut shutdown: watch::Receiver<bool>,
    ) -> io::Result<NetTransport> {
        let mut config = TransportConfig::new(id, cluster_id, listen);
        config.snapshot_store = Some(snapshots);
        config.peers = peers.into_iter().collect();
        config.tls = tls;
        // `inbound`'s bound now counts batches: small ones keep the messages it can hold
        // (bound x batch) and the runtime's work per wake-up within reason, while still
        // sparing the channel send and the wake-up for all but one message in this many.
        config.incoming_batch_messages_max = INBOUND_BATCH_MESSAGES_MAX;
        let handle = Transport::start_with_sender(config, inbound).await?;
        let stopper = handle.clone();
        tokio::spawn(async move {
            // Either a shutdown or the node dropping its sender ends the transport.
            let _ = shutdown.changed().await;
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

    fn send_snapshot(&self, msg: Message, chunks: SnapshotChunks) -> Result<(), String> {
        let MessageBody::InstallSnapshot { meta } = &msg.body else {
            return Err("not an InstallSnapshot message".into());
        };
        let file_meta = &chunks.header().meta;
        if (file_meta.index, file_meta.term) != (meta.index, meta.term) {
            return Err(format!(
                "the message names snapshot {}/{}, the file is {}/{}",
                meta.index, meta.term, file_meta.index, file_meta.term
            ));
        }
        let done = self
            .handle
            .send_snapshot(msg.to, chunks)
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
        *metrics.peer_sent.lock().expect("not poisoned") = self
            .handle
            .peer_sent()
            .into_iter()
            .map(|(peer, messages, bytes)| (peer, (messages, bytes)))
            .collect();
        Metrics::set(
            &metrics.messages_dropped,
            s.messages_dropped + s.messages_unencodable,
        );
    }
}
