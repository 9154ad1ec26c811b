//! The TCP proxy that carries one directed peer link when the nodes share 127.0.0.1, and
//! drops its connections while the link is cut.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy for one direction of one pair: node `from` dials it to reach node `to`.
pub(super) struct Link {
    pub(super) blocked: watch::Sender<bool>,
}

pub(super) async fn run_proxy(
    listener: TcpListener,
    target: SocketAddr,
    blocked: watch::Receiver<bool>,
) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        if *blocked.borrow() {
            continue; // dropped at once: the dialler sees a closed connection
        }
        let mut watch = blocked.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = async {
                    while watch.changed().await.is_ok() {
                        if *watch.borrow() {
                            return;
                        }
                    }
                } => {}
            }
        });
    }
}
