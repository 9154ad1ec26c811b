//! How the nodes are connected: a network namespace per node (`netns.rs`), or a proxy of ours
//! (`proxy.rs`) on every directed link between nodes listening on 127.0.0.1.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::args::NetMode;
use super::netns;
use super::proxy::{run_proxy, Link};

/// How the nodes are connected.
pub(super) enum Net {
    /// On 127.0.0.1, every directed link through a proxy of ours: links[(from, to)].
    Proxy(BTreeMap<(u64, u64), Link>),
    /// A network namespace per node, links cut with iptables.
    Netns(netns::Netns),
}

impl Net {
    pub(super) fn describe(&self) -> String {
        match self {
            Net::Proxy(_) => "127.0.0.1, a TCP proxy per directed link".into(),
            Net::Netns(net) => format!(
                "a network namespace per node ({}), veth pairs to a bridge, iptables",
                net.namespace(1)
            ),
        }
    }
}

/// The net, with the address node `from` dials to reach `to` (`peer_addrs[(from, to)]`, also
/// for `from == to`: its own listening address), the client addresses, and what each node's
/// command is run under.
pub(super) struct Wiring {
    pub(super) net: Net,
    pub(super) peer_addrs: BTreeMap<(u64, u64), SocketAddr>,
    pub(super) client_addrs: BTreeMap<u64, SocketAddr>,
    pub(super) prefixes: BTreeMap<u64, Vec<String>>,
}

pub(super) async fn wire(mode: NetMode, ids: &[u64]) -> Result<Wiring, String> {
    if mode != NetMode::Proxy {
        match netns::Netns::create(ids) {
            Ok(net) => {
                let mut peer_addrs = BTreeMap::new();
                for &from in ids {
                    for &to in ids {
                        peer_addrs.insert((from, to), net.peer_addr(to));
                    }
                }
                return Ok(Wiring {
                    peer_addrs,
                    client_addrs: ids.iter().map(|&id| (id, net.client_addr(id))).collect(),
                    prefixes: ids.iter().map(|&id| (id, net.command_prefix(id))).collect(),
                    net: Net::Netns(net),
                });
            }
            Err(e) if mode == NetMode::Netns => {
                return Err(format!("network namespaces: {e}"));
            }
            Err(e) => {
                println!("xtask chaos: no network namespaces ({e}); using TCP proxies instead")
            }
        }
    }
    let ports = raft_testkit::try_free_addrs(2 * ids.len()).map_err(|e| e.to_string())?;
    let own_addrs: BTreeMap<u64, SocketAddr> = ids.iter().copied().zip(ports.clone()).collect();
    let client_addrs: BTreeMap<u64, SocketAddr> = ids
        .iter()
        .copied()
        .zip(ports[ids.len()..].iter().copied())
        .collect();
    let mut links = BTreeMap::new();
    let mut peer_addrs = BTreeMap::new();
    for &from in ids {
        for &to in ids {
            if from == to {
                peer_addrs.insert((from, to), own_addrs[&to]);
                continue;
            }
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            peer_addrs.insert(
                (from, to),
                listener.local_addr().map_err(|e| e.to_string())?,
            );
            let (tx, rx) = watch::channel(false);
            tokio::spawn(run_proxy(listener, own_addrs[&to], rx));
            links.insert((from, to), Link { blocked: tx });
        }
    }
    Ok(Wiring {
        net: Net::Proxy(links),
        peer_addrs,
        client_addrs,
        prefixes: BTreeMap::new(),
    })
}
