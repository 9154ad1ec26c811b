//! Network-namespace mode (root only): every node in a namespace of its own, joined to the
//! others by a veth pair to one bridge in the host namespace (which also has an address there,
//! so the clients of xtask reach every node). Links are cut and made lossy with iptables in the
//! receiving node's namespace, matching only the peer port: a cut `from -> to` drops what
//! `from` sends on the connection it dialed to `to`, while `to`'s own connection to `from` (and
//! the acknowledgements on it) still flows, so a cut is one-way as in the proxy mode. Packets
//! are dropped, not refused: senders see stalls and retransmissions, not closed connections.
//!
//! Every name carries the pid of the run, so parallel runs do not meet. The `Drop` guard deletes
//! the namespaces (and with them the veth ends inside), the host ends and the bridge; a run killed
//! outright leaves them behind, and the next run deletes those whose pid is gone.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;

/// The port every node listens on for peers, in its own namespace.
pub const PEER_PORT: u16 = 7000;
/// The port every node listens on for clients, in its own namespace.
pub const CLIENT_PORT: u16 = 7001;
/// Prefix of the namespaces this tool creates.
const NS_PREFIX: &str = "chaos-";
/// Prefix of the bridges this tool creates (interface names hold 15 bytes at most).
const BRIDGE_PREFIX: &str = "chbr";
/// Prefix of the host ends of the veth pairs.
const VETH_PREFIX: &str = "chv";

/// The namespaces, veth pairs and bridge of one run; all deleted on drop.
pub struct Netns {
    pid: u32,
    /// The third octet of this run's 10.213.x.0/24.
    subnet: u8,
    ids: Vec<u64>,
    blocked: BTreeSet<(u64, u64)>,
    lossy: bool,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn stdout_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Installs Debian's iptables if it is missing.
fn ensure_iptables() -> Result<(), String> {
    if run("iptables", &["--version"]).is_ok() {
        return Ok(());
    }
    println!("xtask chaos: installing iptables (apt-get install -y iptables)");
    if run("apt-get", &["install", "-y", "iptables"]).is_err() {
        run("apt-get", &["update"])?;
        run("apt-get", &["install", "-y", "iptables"])?;
    }
    run("iptables", &["--version"])
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes namespaces, bridges and veths of runs whose process is gone.
fn remove_stale() {
    for line in stdout_of("ip", &["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let pid = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !pid_alive(p)) {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
    for line in stdout_of("ip", &["-o", "link", "show"]).lines() {
        // "12: chbr1234: <...>" or "13: chv1234v1@if2: <...>"
        let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        else {
            continue;
        };
        let pid = if let Some(rest) = name.strip_prefix(BRIDGE_PREFIX) {
            rest.parse::<u32>().ok()
        } else if let Some(rest) = name.strip_prefix(VETH_PREFIX) {
            rest.split('v').next().and_then(|p| p.parse::<u32>().ok())
        } else {
            None
        };
        if pid.is_some_and(|p| !pid_alive(p)) {
            let _ = run("ip", &["link", "del", name]);
        }
    }
}

impl Netns {
    /// Creates one namespace per node, the veth pairs and the bridge.
    pub fn create(ids: &[u64]) -> Result<Netns, String> {
        // SAFETY: geteuid(2) reads a process attribute; no memory is touched.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        ensure_iptables()?;
        remove_stale();
        let pid = std::process::id();
        let routes = stdout_of("ip", &["-4", "route"]);
        let subnet = (0..250u32)
            .map(|i| ((pid + i) % 250 + 1) as u8)
            .find(|s| !routes.contains(&format!("10.213.{s}.")))
            .ok_or("no free 10.213.x.0/24 subnet")?;
        // From here on, whatever was made is undone by drop if a later step fails.
        let net = Netns {
            pid,
            subnet,
            ids: ids.to_vec(),
            blocked: BTreeSet::new(),
            lossy: false,
        };
        let bridge = net.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        let host_addr = format!("10.213.{subnet}.1/24");
        run("ip", &["addr", "add", &host_addr, "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        for &id in ids {
            let ns = net.namespace(id);
            let veth = format!("{VETH_PREFIX}{pid}v{id}");
            run("ip", &["netns", "add", &ns])?;
            run(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            run("ip", &["link", "set", &veth, "master", &bridge, "up"])?;
            let addr = format!("{}/24", net.ip(id));
            net.exec(id, &["ip", "addr", "add", &addr, "dev", "eth0"])?;
            net.exec(id, &["ip", "link", "set", "eth0", "up"])?;
            net.exec(id, &["ip", "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{BRIDGE_PREFIX}{}", self.pid)
    }

    /// Node `id`'s namespace.
    pub fn namespace(&self, id: u64) -> String {
        format!("{NS_PREFIX}{}-{id}", self.pid)
    }

    /// Node `id`'s address.
    pub fn ip(&self, id: u64) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 213, self.subnet, 10 + id as u8))
    }

    pub fn peer_addr(&self, id: u64) -> SocketAddr {
        SocketAddr::new(self.ip(id), PEER_PORT)
    }

    pub fn client_addr(&self, id: u64) -> SocketAddr {
        SocketAddr::new(self.ip(id), CLIENT_PORT)
    }

    /// What runs a program inside node `id`'s namespace (`ip netns exec` execs it, so the pid
    /// is the program's own and signals reach it).
    pub fn command_prefix(&self, id: u64) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.namespace(id),
        ]
    }

    fn exec(&self, id: u64, args: &[&str]) -> Result<(), String> {
        let ns = self.namespace(id);
        let mut full = vec!["netns", "exec", &ns];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    fn cut_rule(&self, from: u64) -> Vec<String> {
        let source = self.ip(from).to_string();
        let port = PEER_PORT.to_string();
        ["-s", &source, "-p", "tcp", "--dport", &port, "-j", "DROP"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn iptables(&self, id: u64, action: &str, rule: &[String]) -> Result<(), String> {
        let mut args = vec!["iptables", "-w", action, "INPUT"];
        args.extend(rule.iter().map(String::as_str));
        self.exec(id, &args)
    }

    /// Cuts or heals the link `from -> to`.
    pub fn set_link(&mut self, from: u64, to: u64, blocked: bool) -> Result<(), String> {
        if blocked == self.blocked.contains(&(from, to)) {
            return Ok(());
        }
        let rule = self.cut_rule(from);
        if blocked {
            self.iptables(to, "-A", &rule)?;
            self.blocked.insert((from, to));
        } else {
            self.iptables(to, "-D", &rule)?;
            self.blocked.remove(&(from, to));
        }
        Ok(())
    }

    /// Drops each peer packet with probability `percent` / 100 on every link.
    pub fn set_loss(&mut self, percent: u64) -> Result<(), String> {
        let probability = format!("{:.2}", percent as f64 / 100.0);
        let subnet = format!("10.213.{}.0/24", self.subnet);
        let port = PEER_PORT.to_string();
        for &id in &self.ids {
            let rule = [
                "-s",
                &subnet,
                "-p",
                "tcp",
                "--dport",
                &port,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &probability,
                "-j",
                "DROP",
            ];
            let mut args = vec!["iptables", "-w", "-A", "INPUT"];
            args.extend_from_slice(&rule);
            self.exec(id, &args)?;
        }
        self.lossy = true;
        Ok(())
    }

    /// Removes every rule: all links open, no loss.
    pub fn heal(&mut self) -> Result<(), String> {
        if self.blocked.is_empty() && !self.lossy {
            return Ok(());
        }
        for &id in &self.ids {
            self.exec(id, &["iptables", "-w", "-F", "INPUT"])?;
        }
        self.blocked.clear();
        self.lossy = false;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for &id in &self.ids {
            // The namespace's end of the veth goes with it, and the host end with its pair.
            let _ = run("ip", &["netns", "del", &self.namespace(id)]);
            let _ = run(
                "ip",
                &["link", "del", &format!("{VETH_PREFIX}{}v{id}", self.pid)],
            );
        }
        let _ = run("ip", &["link", "del", &self.bridge()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_an_interface_name() {
        let net = Netns {
            pid: 4_194_304, // the largest pid Linux hands out
            subnet: 250,
            ids: vec![7],
            blocked: BTreeSet::new(),
            lossy: false,
        };
        assert!(net.bridge().len() <= 15, "{}", net.bridge());
        assert!(format!("{VETH_PREFIX}{}v7", net.pid).len() <= 15);
        assert_eq!(net.ip(7).to_string(), "10.213.250.17");
        assert_eq!(
            net.cut_rule(3).join(" "),
            "-s 10.213.250.13 -p tcp --dport 7000 -j DROP"
        );
        // Not created, so nothing to delete: forget it rather than run `ip` in a unit test.
        std::mem::forget(net);
    }
}
