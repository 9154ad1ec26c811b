//! Ephemeral loopback ports for the servers a test or tool starts.

use std::net::{SocketAddr, TcpListener};

/// `n` distinct ports on 127.0.0.1 free at the time of asking: all are held until all are
/// chosen, so the OS cannot hand the same one out twice; then released for the servers.
/// Another process could take one in between; on loopback in a test run that is rare enough.
pub fn try_free_addrs(n: usize) -> std::io::Result<Vec<SocketAddr>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<TcpListener>>>()?;
    held.iter().map(TcpListener::local_addr).collect()
}

/// One port as [`try_free_addrs`] picks them.
pub fn try_free_addr() -> std::io::Result<SocketAddr> {
    Ok(try_free_addrs(1)?[0])
}

/// [`try_free_addrs`] for tests: panics if no ephemeral port can be bound.
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    try_free_addrs(n).unwrap_or_else(|e| panic!("binding {n} ephemeral ports on 127.0.0.1: {e}"))
}

/// [`try_free_addr`] for tests: panics if no ephemeral port can be bound.
pub fn free_addr() -> SocketAddr {
    free_addrs(1)[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_loopback_and_released() {
        let addrs = free_addrs(16);
        let mut ports: Vec<u16> = addrs.iter().map(SocketAddr::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 16, "{addrs:?}");
        for a in &addrs {
            assert!(a.ip().is_loopback() && a.port() != 0, "{a}");
        }
        // Released for the caller: nothing of ours still holds them. Rebinding them here
        // would test the OS and race every other process taking ephemeral ports (it failed
        // in CI with AddrInUse), so a fresh ask only has to succeed again.
        assert_eq!(free_addrs(16).len(), 16);
        assert!(try_free_addrs(0).unwrap().is_empty());
    }
}
