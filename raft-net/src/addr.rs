//! A peer's address: an IP socket address, or a host name and port that is looked up again
//! on every connection attempt, so a peer that moves to a new IP (a rescheduled container,
//! a changed DNS record) is found at its new address on the next reconnect.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;

/// Longest host name accepted (RFC 1035's limit on a whole name).
pub const HOST_NAME_BYTES_MAX: usize = 253;

/// Where to reach a peer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerAddr {
    /// An IP address and port, used as it is.
    Ip(SocketAddr),
    /// A host name and port, resolved each time a connection is opened.
    Name {
        /// The host name (`localhost`, `node-2.raft.svc`).
        host: String,
        /// The TCP port.
        port: u16,
    },
}

impl PeerAddr {
    /// The addresses this resolves to now (one for [`PeerAddr::Ip`]); an error names the
    /// host that did not resolve.
    pub async fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        match self {
            PeerAddr::Ip(a) => Ok(vec![*a]),
            PeerAddr::Name { host, port } => {
                let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|e| resolve_error(host, *port, e))?
                    .collect();
                if found.is_empty() {
                    return Err(resolve_error(host, *port, "no addresses"));
                }
                Ok(found)
            }
        }
    }

    /// Like [`PeerAddr::resolve`], blocking: for a listener's address, resolved once at start.
    pub fn resolve_blocking(&self) -> io::Result<Vec<SocketAddr>> {
        use std::net::ToSocketAddrs;
        match self {
            PeerAddr::Ip(a) => Ok(vec![*a]),
            PeerAddr::Name { host, port } => {
                let found: Vec<SocketAddr> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| resolve_error(host, *port, e))?
                    .collect();
                if found.is_empty() {
                    return Err(resolve_error(host, *port, "no addresses"));
                }
                Ok(found)
            }
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            PeerAddr::Ip(a) => a.port(),
            PeerAddr::Name { port, .. } => *port,
        }
    }
}

fn resolve_error(host: &str, port: u16, e: impl fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("cannot resolve host name `{host}` (in {host}:{port}): {e}"),
    )
}

impl From<SocketAddr> for PeerAddr {
    fn from(a: SocketAddr) -> Self {
        PeerAddr::Ip(a)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Ip(a) => a.fmt(f),
            PeerAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Why a string is not a [`PeerAddr`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{input}`: {reason} (expected HOST:PORT or IP:PORT, e.g. localhost:7001, 10.0.0.1:7001, [::1]:7001)")]
pub struct PeerAddrError {
    input: String,
    reason: &'static str,
}

impl FromStr for PeerAddr {
    type Err = PeerAddrError;

    fn from_str(s: &str) -> Result<Self, PeerAddrError> {
        let err = |reason| PeerAddrError {
            input: s.to_string(),
            reason,
        };
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(PeerAddr::Ip(a));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| err("no port"))?;
        let port: u16 = port.parse().map_err(|_| err("the port is not 0-65535"))?;
        if host.is_empty() {
            return Err(err("no host"));
        }
        if host.len() > HOST_NAME_BYTES_MAX {
            return Err(err("the host name is too long"));
        }
        // Letters, digits, '-', '.', '_' only: anything else (a second ':' of an IPv6
        // address without brackets, a space, a slash) is a typo, not a name.
        let name_ok = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && !host.starts_with(['-', '.'])
            && !host.contains("..");
        if !name_ok {
            return Err(err(
                "not an IP address, and not a host name (letters, digits, '-', '.', '_')",
            ));
        }
        Ok(PeerAddr::Name {
            host: host.to_string(),
            port,
        })
    }
}

impl serde::Serialize for PeerAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PeerAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ips_and_names_and_refuses_typos() {
        assert_eq!(
            "127.0.0.1:7001".parse::<PeerAddr>().unwrap(),
            PeerAddr::Ip("127.0.0.1:7001".parse().unwrap())
        );
        assert!(matches!(
            "[::1]:7001".parse::<PeerAddr>().unwrap(),
            PeerAddr::Ip(_)
        ));
        let name: PeerAddr = "node-2.raft.svc:7002".parse().unwrap();
        assert_eq!(name.to_string(), "node-2.raft.svc:7002");
        assert_eq!(name.port(), 7002);
        for bad in [
            "localhost",
            "localhost:",
            ":7001",
            "localhost:70000",
            "::1:7001",
            "a b:1",
            "-x:1",
        ] {
            let e = bad.parse::<PeerAddr>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn names_resolve_when_asked_and_failures_name_the_host() {
        let local: PeerAddr = "localhost:7001".parse().unwrap();
        let found = local.resolve().await.unwrap();
        assert!(found
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 7001));
        assert_eq!(local.resolve_blocking().unwrap()[0].port(), 7001);
        // A 64-byte label breaks DNS's 63-byte limit: the resolver fails it locally, so the
        // test sends no query off this machine.
        let host = "a".repeat(64);
        let bad: PeerAddr = format!("{host}:7001").parse().unwrap();
        let e = bad.resolve().await.unwrap_err().to_string();
        assert!(e.contains(&format!("`{host}`")), "{e}");
        assert!(bad.resolve_blocking().is_err());
    }
}
