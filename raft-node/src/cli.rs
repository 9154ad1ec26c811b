//! The client-side commands of `raft-node`: `status` (one node, or `--cluster` for every
//! member in one table), `get`, `set`, `del` and `admin`. They find a node by `--addr`,
//! else a node's configuration file (`--config`, `RAFT_NODE_CONFIG`), else the dev cluster
//! running from `raft-dev-data`; their errors say what to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use raft_client::{Client, ClientConfig, ClientError, Credentials, NodeError, NodeStatus};
use raft_node::config::NodeConfig;

use crate::dev;

/// Time one member has to answer a status request in a cluster-wide view.
pub const MEMBER_STATUS_TIMEOUT_MS: u64 = 1_500;
/// Time a command's request may take, across every retry.
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Members listed by `status --cluster` at most (a bound on the requests it sends).
const MEMBERS_LISTED_MAX: usize = 64;
/// Time a TCP connect to a given address has in the check that something listens there.
const CONNECT_PROBE_TIMEOUT_MS: u64 = 500;

/// The commands that talk to a running cluster.
#[derive(Subcommand, Debug)]
pub enum ClientCmd {
    /// Print a node's status; with --cluster every member's, in one table.
    Status {
        /// Every member in one table (asks one node for the members, then each of them).
        #[arg(long)]
        cluster: bool,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// Read a key (linearizable) and print its value; a missing key prints nothing and
    /// exits with status 1.
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Write a key.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete keys and print how many existed.
    Del {
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Change membership or leadership (sent to the leader).
    Admin {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        op: AdminCmd,
    },
}

/// How `status` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// JSON for programs.
    Json,
}

#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Hand leadership to a voter.
    TransferLeader {
        /// The voter's ID.
        id: u64,
    },
    /// Add a node as a non-voting learner (every member must know its address).
    AddLearner {
        /// The new node's ID.
        id: u64,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's ID.
        id: u64,
    },
    /// Remove a member.
    Remove {
        /// The member's ID.
        id: u64,
    },
}

/// Which nodes a command talks to, and how it logs in.
#[derive(clap::Args, Debug)]
pub struct Target {
    /// Client address of a node (HOST:PORT: the port serving the native protocol and RESP,
    /// not HTTP); repeat or separate with commas for several [default: from --config, else
    /// the running dev cluster's nodes].
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT")]
    addr: Vec<String>,
    /// A node's configuration file: its client address and its peers' are asked, with
    /// its [tls] CA [default: RAFT_NODE_CONFIG].
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data folder of the dev cluster asked when neither --addr nor --config is given.
    #[arg(long, value_name = "DIR", default_value = dev::DATA_DIR_DEFAULT)]
    dev_data_dir: PathBuf,
    #[command(flatten)]
    login: LoginArgs,
}

/// How a command reaches a node that requires TLS or credentials. The password is never
/// a flag (`ps` would show it): it comes from RAFT_NODE_PASSWORD or a file.
#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// User to log in as [default: RAFT_NODE_USER, else the `default` user].
    #[arg(long)]
    user: Option<String>,
    /// File whose first line is the password [default: RAFT_NODE_PASSWORD if set, else no
    /// login].
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Connect with TLS, trusting the CA certificates in this PEM file [default: the
    /// config file's or the dev cluster's CA, if it runs TLS].
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) to present over TLS; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// How a command logs in to the nodes it talks to.
#[derive(Clone, Debug, Default)]
pub struct Login {
    /// User name (`None`: the `default` user).
    pub user: Option<String>,
    /// Password, if the nodes require one.
    pub password: Option<String>,
    /// CA to trust over TLS; plain TCP when `None`.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key to present over TLS.
    pub tls_cert_key: Option<(PathBuf, PathBuf)>,
}

impl LoginArgs {
    fn login(&self) -> Result<Login, String> {
        let password = match &self.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--password-file {}: {e}", path.display()))?;
                Some(text.lines().next().unwrap_or_default().to_string())
            }
            None => std::env::var(raft_node::auth::ENV_PASSWORD)
                .ok()
                .filter(|p| !p.is_empty()),
        };
        let user = self.user.clone().or_else(|| {
            std::env::var("RAFT_NODE_USER")
                .ok()
                .filter(|u| !u.is_empty())
        });
        if self.tls_cert.is_some() && self.tls_ca.is_none() {
            return Err(
                "--tls-cert needs --tls-ca (the CA that signed the node's certificate)".into(),
            );
        }
        Ok(Login {
            user,
            password,
            tls_ca: self.tls_ca.clone(),
            tls_cert_key: self.tls_cert.clone().zip(self.tls_key.clone()),
        })
    }
}

/// The nodes a command asks and how it logs in, resolved from its flags.
struct Resolved {
    addrs: Vec<String>,
    login: Login,
}

impl Target {
    fn resolve(&self) -> Result<Resolved, String> {
        let mut login = self.login.login()?;
        if !self.addr.is_empty() {
            return Ok(Resolved {
                addrs: self.addr.clone(),
                login,
            });
        }
        let config = self
            .config
            .clone()
            .or_else(|| std::env::var_os("RAFT_NODE_CONFIG").map(PathBuf::from));
        if let Some(path) = &config {
            let (addrs, ca) = config_addrs(path)?;
            if login.tls_ca.is_none() {
                login.tls_ca = ca;
            }
            return Ok(Resolved { addrs, login });
        }
        match dev::running_cluster(&self.dev_data_dir) {
            Ok(state) => {
                if login.tls_ca.is_none() {
                    login.tls_ca = state.tls_ca.clone();
                }
                Ok(Resolved {
                    addrs: state.client_addrs(),
                    login,
                })
            }
            Err(why) => Err(format!(
                "no node to ask: give --addr HOST:PORT (a node's client port) or --config FILE \
                 (a node's configuration), or start a dev cluster with `raft-node dev` ({why})"
            )),
        }
    }
}

/// The client addresses a node's configuration names (its own first, then its peers'),
/// and its TLS CA.
fn config_addrs(path: &Path) -> Result<(Vec<String>, Option<PathBuf>), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let cfg = NodeConfig::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut addrs = Vec::new();
    if let Some(a) = cfg.client_addr {
        // A node listening on every interface is reached on loopback from its own host.
        let a = if a.ip().is_unspecified() {
            std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), a.port())
        } else {
            a
        };
        addrs.push(a.to_string());
    }
    for p in &cfg.peers {
        if let Some(a) = &p.client_addr {
            let a = a.to_string();
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
    }
    if addrs.is_empty() {
        return Err(format!(
            "{} names no client address (client_addr, or a peer's CLIENT_ADDR): give --addr",
            path.display()
        ));
    }
    Ok((addrs, cfg.tls.map(|t| t.ca_file)))
}

/// A client of `addrs` with `login`, each request bounded by `timeout_ms`; `attempts_max`
/// 1 asks exactly one node.
pub fn client(
    addrs: &[String],
    login: &Login,
    timeout_ms: u64,
    attempts_max: u32,
) -> Result<Client, String> {
    let mut config = ClientConfig::new(addrs.iter().cloned());
    config.request_timeout_ms = timeout_ms;
    config.attempt_timeout_ms = config.attempt_timeout_ms.min(timeout_ms);
    config.attempts_max = attempts_max;
    if let Some(password) = &login.password {
        config.credentials = Some(Credentials::new(
            login.user.as_deref(),
            password.clone().into_bytes(),
        ));
    }
    if let Some(ca) = &login.tls_ca {
        let cert_key = login
            .tls_cert_key
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        config.tls = Some(
            raft_client::tls::client_config_from_pem_files(ca, cert_key)
                .map_err(|e| format!("--tls-ca: {e}"))?,
        );
    }
    Ok(Client::new(config))
}

/// Fails at once, saying what to do, when every address refuses the connection: nothing
/// listens there, and retrying (the client retries for seconds, which helps through an
/// election) cannot change that. Any other outcome (one accepts, a timeout, a name that
/// does not resolve) leaves it to the client and its retries.
async fn refuse_if_nothing_listens(addrs: &[String]) -> Result<(), String> {
    let probes = addrs.iter().map(|a| async move {
        let timeout = Duration::from_millis(CONNECT_PROBE_TIMEOUT_MS);
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(a.as_str())).await {
            Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
            Ok(Ok(_)) | Err(_) => false,
        }
    });
    let refused = futures::future::join_all(probes).await;
    if refused.is_empty() || refused.contains(&false) {
        return Ok(());
    }
    Err(format!(
        "nothing listens at {} (connection refused): start the node (`raft-node run`, or \
         `raft-node dev restart N` in a dev cluster), or give --addr a running node's client \
         port (`raft-node dev status` lists a dev cluster's)",
        addrs.join(", ")
    ))
}

/// A client error in words that say what to do.
pub fn explain(e: ClientError) -> String {
    match e {
        ClientError::Node(NodeError::Invalid(m)) => format!("refused: {m}"),
        ClientError::Node(NodeError::Unavailable(m)) => format!("unavailable: {m}"),
        ClientError::Node(NodeError::NotLeader { leader: None, .. }) => {
            "no leader: the nodes asked know of none (an election may be under way, or a \
             majority is down); retry, or see `raft-node status --cluster`"
                .to_string()
        }
        ClientError::Timeout {
            attempts,
            last_error,
        } => {
            let hint = if last_error.contains("Connection refused") {
                " (is the node running? the address must be its client port)"
            } else if last_error.contains("connection closed") {
                " (the other end closed without answering: is this a node's peer port? \
                 give its client port)"
            } else {
                ""
            };
            format!("no answer after {attempts} attempts; last error: {last_error}{hint}")
        }
        other => other.to_string(),
    }
}

/// One member's answer to a status request.
pub struct MemberRow {
    /// The member's ID, when known.
    pub id: Option<u64>,
    /// The client address asked.
    pub addr: String,
    /// Its status, or why it gave none.
    pub status: Result<NodeStatus, String>,
}

/// Asks every address for its status at once, each bounded by `MEMBER_STATUS_TIMEOUT_MS`.
pub async fn member_rows(addrs: &[String], login: &Login) -> Vec<MemberRow> {
    let asks = addrs.iter().map(|addr| async move {
        let status = match client(
            std::slice::from_ref(addr),
            login,
            MEMBER_STATUS_TIMEOUT_MS,
            1,
        ) {
            Ok(c) => {
                match tokio::time::timeout(
                    Duration::from_millis(MEMBER_STATUS_TIMEOUT_MS),
                    c.status(),
                )
                .await
                {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(ClientError::Timeout { last_error, .. }))
                        if last_error.contains("Connection refused") =>
                    {
                        Err("connection refused (not running?)".to_string())
                    }
                    Ok(Err(e)) => Err(explain(e)),
                    Err(_) => Err("no answer in time".to_string()),
                }
            }
            Err(e) => Err(e),
        };
        MemberRow {
            id: status.as_ref().ok().map(|s| s.id),
            addr: addr.clone(),
            status,
        }
    });
    futures::future::join_all(asks).await
}

/// Every member of the cluster with its status: the members as the first node that
/// answers lists them (with their client addresses), each asked in turn; without any
/// answer, each given address is shown with its error.
async fn cluster_rows(r: &Resolved) -> Result<Vec<MemberRow>, String> {
    let any = client(
        &r.addrs,
        &r.login,
        MEMBER_STATUS_TIMEOUT_MS * 2,
        2 * r.addrs.len() as u32,
    )?;
    let first = match any.status().await {
        Ok(s) => s,
        Err(ClientError::Address(m)) => return Err(m),
        Err(_) => return Ok(member_rows(&r.addrs, &r.login).await),
    };
    let mut addrs = Vec::new();
    let mut unknown = Vec::new();
    for m in first.members.iter().take(MEMBERS_LISTED_MAX) {
        match &m.client_addr {
            Some(a) => addrs.push(a.clone()),
            None => unknown.push(m.id),
        }
    }
    let mut rows = member_rows(&addrs, &r.login).await;
    // A member that did not answer is still named by the ID it was listed under.
    for (row, m) in rows
        .iter_mut()
        .zip(first.members.iter().filter(|m| m.client_addr.is_some()))
    {
        row.id = row.id.or(Some(m.id));
    }
    for id in unknown {
        rows.push(MemberRow {
            id: Some(id),
            addr: "-".to_string(),
            status: Err(format!(
                "node {} knows no client address for it (give it one in the peers list)",
                first.id
            )),
        });
    }
    rows.sort_by_key(|r| r.id.unwrap_or(u64::MAX));
    Ok(rows)
}

/// The table `status --cluster` prints, modelled on `etcdctl endpoint status -w table`.
fn cluster_table(rows: &[MemberRow]) -> String {
    let top_commit = rows
        .iter()
        .filter_map(|r| r.status.as_ref().ok().map(|s| s.commit_index))
        .max()
        .unwrap_or(0);
    let header = [
        "ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LEADER", "LAG", "VERSION", "ERRORS",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let id = r.id.map_or("-".to_string(), |i| i.to_string());
        cells.push(match &r.status {
            Ok(s) => vec![
                id,
                r.addr.clone(),
                s.role.clone(),
                s.term.to_string(),
                s.commit_index.to_string(),
                s.applied_index.to_string(),
                s.leader.map_or("none".to_string(), |l| l.to_string()),
                top_commit.saturating_sub(s.applied_index).to_string(),
                s.version.clone(),
                String::new(),
            ],
            Err(e) => {
                let mut v = vec![id, r.addr.clone(), "down".to_string()];
                v.extend(std::iter::repeat_n("-".to_string(), 6));
                v.push(e.clone());
                v
            }
        });
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| cells.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let mut out = rule.clone();
    for (i, row) in cells.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            out += &format!("| {cell:<w$} ", w = widths[c]);
        }
        out += "|\n";
        if i == 0 {
            out += &rule;
        }
    }
    out += &rule;
    out
}

fn cluster_json(rows: &[MemberRow]) -> serde_json::Value {
    let top_commit = rows
        .iter()
        .filter_map(|r| r.status.as_ref().ok().map(|s| s.commit_index))
        .max()
        .unwrap_or(0);
    serde_json::Value::Array(
        rows.iter()
            .map(|r| match &r.status {
                Ok(s) => serde_json::json!({
                    "id": s.id,
                    "address": r.addr,
                    "role": s.role,
                    "term": s.term,
                    "commit_index": s.commit_index,
                    "applied_index": s.applied_index,
                    "leader": s.leader,
                    "lag": top_commit.saturating_sub(s.applied_index),
                    "version": s.version,
                    "error": null,
                }),
                Err(e) => serde_json::json!({
                    "id": r.id,
                    "address": r.addr,
                    "role": null,
                    "error": e,
                }),
            })
            .collect(),
    )
}

fn print_status(s: &NodeStatus) {
    println!("node        {}", s.id);
    println!("role        {}", s.role);
    println!("term        {}", s.term);
    println!(
        "leader      {}",
        s.leader.map_or("none".to_string(), |l| format!(
            "{l} ({})",
            s.leader_addr.clone().unwrap_or_default()
        ))
    );
    println!("commit      {}", s.commit_index);
    println!("applied     {}", s.applied_index);
    println!("persisted   {}", s.persisted_index);
    println!(
        "log         {}..={} (snapshot at {})",
        s.first_index, s.last_index, s.snapshot_index
    );
    println!("storage     {}", s.storage);
    println!("voters      {:?}", s.voters);
    println!("learners    {:?}", s.learners);
    println!("elections   {}", s.elections);
    println!("version     {}", s.version);
    if !s.peers.is_empty() {
        println!("peer  match      next       state      active");
        for p in &s.peers {
            println!(
                "{:<5} {:<10} {:<10} {:<10} {}",
                p.id, p.match_index, p.next_index, p.state, p.active
            );
        }
    }
    match s.digests.last() {
        Some(d) => println!("digest      {} at {}", d.digest, d.index),
        None => println!("digest      none yet"),
    }
    let ae = &s.anti_entropy;
    if ae.comparisons > 0 {
        println!(
            "anti-entropy compared up to {} ({} indexes), {} divergences",
            ae.compared_index, ae.comparisons, ae.divergence_total
        );
    }
    for d in &ae.divergent {
        println!(
            "DIVERGED    node {} at {}: digest {} (majority {})",
            d.node,
            d.index,
            d.digest,
            d.majority_digest.as_deref().unwrap_or("none")
        );
    }
}

/// What a command asks the process to exit with, besides an error.
pub enum Exit {
    /// Success.
    Ok,
    /// `get` of a missing key.
    Missing,
}

/// Runs one of the client commands.
pub async fn main(cmd: ClientCmd) -> Result<Exit, String> {
    match cmd {
        ClientCmd::Status {
            cluster,
            output,
            target,
        } => {
            let r = target.resolve()?;
            if cluster {
                let rows = cluster_rows(&r).await?;
                match output {
                    Output::Table => print!("{}", cluster_table(&rows)),
                    Output::Json => println!("{:#}", cluster_json(&rows)),
                }
                return Ok(Exit::Ok);
            }
            refuse_if_nothing_listens(&r.addrs).await?;
            let c = client(
                &r.addrs,
                &r.login,
                REQUEST_TIMEOUT_MS,
                2 * r.addrs.len() as u32,
            )?;
            let status = c.status().await.map_err(explain)?;
            match output {
                Output::Table => print_status(&status),
                Output::Json => println!(
                    "{:#}",
                    serde_json::to_value(&status).map_err(|e| e.to_string())?
                ),
            }
            Ok(Exit::Ok)
        }
        ClientCmd::Get { key, target } => {
            let r = target.resolve()?;
            refuse_if_nothing_listens(&r.addrs).await?;
            let c = client(&r.addrs, &r.login, REQUEST_TIMEOUT_MS, 50)?;
            match c.get(key.clone()).await.map_err(explain)? {
                Some(v) => {
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&v);
                    let _ = out.write_all(b"\n");
                    Ok(Exit::Ok)
                }
                None => {
                    eprintln!("(nil): no key {key:?}");
                    Ok(Exit::Missing)
                }
            }
        }
        ClientCmd::Set { key, value, target } => {
            let r = target.resolve()?;
            refuse_if_nothing_listens(&r.addrs).await?;
            let c = client(&r.addrs, &r.login, REQUEST_TIMEOUT_MS, 50)?;
            c.set(key, value).await.map_err(explain)?;
            println!("OK");
            Ok(Exit::Ok)
        }
        ClientCmd::Del { keys, target } => {
            let r = target.resolve()?;
            refuse_if_nothing_listens(&r.addrs).await?;
            let c = client(&r.addrs, &r.login, REQUEST_TIMEOUT_MS, 50)?;
            let keys = keys.into_iter().map(bytes::Bytes::from).collect();
            let n = c.del(keys).await.map_err(explain)?;
            println!("{n}");
            Ok(Exit::Ok)
        }
        ClientCmd::Admin { target, op } => {
            let r = target.resolve()?;
            refuse_if_nothing_listens(&r.addrs).await?;
            let c = client(&r.addrs, &r.login, REQUEST_TIMEOUT_MS, 50)?;
            let result = match op {
                AdminCmd::TransferLeader { id } => c.transfer_leader(id).await,
                AdminCmd::AddLearner { id } => c.add_learner(id).await,
                AdminCmd::Promote { id } => c.promote(id).await,
                AdminCmd::Remove { id } => c.remove_node(id).await,
            };
            result.map_err(explain)?;
            println!("OK");
            Ok(Exit::Ok)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: u64, role: &str, commit: u64, applied: u64) -> NodeStatus {
        NodeStatus {
            id,
            role: role.to_string(),
            term: 3,
            leader: Some(1),
            commit_index: commit,
            applied_index: applied,
            version: "0.1.0".to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn the_cluster_table_shows_every_member_with_its_lag_and_errors() {
        let rows = vec![
            MemberRow {
                id: Some(1),
                addr: "127.0.0.1:6381".into(),
                status: Ok(status(1, "Leader", 40, 40)),
            },
            MemberRow {
                id: Some(2),
                addr: "127.0.0.1:6382".into(),
                status: Ok(status(2, "Follower", 38, 35)),
            },
            MemberRow {
                id: Some(3),
                addr: "127.0.0.1:6383".into(),
                status: Err("no answer in time".into()),
            },
        ];
        let table = cluster_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 7, "{table}");
        assert!(
            lines[1].contains("ROLE") && lines[1].contains("LAG"),
            "{table}"
        );
        assert!(
            lines[3].contains("Leader") && lines[3].contains("| 0 "),
            "{table}"
        );
        assert!(
            lines[4].contains("Follower") && lines[4].contains("| 5 "),
            "{table}"
        );
        assert!(
            lines[5].contains("down") && lines[5].contains("no answer"),
            "{table}"
        );
        // Every row is as wide as the rules.
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{table}");
        let json = cluster_json(&rows);
        assert_eq!(json[1]["lag"], 5);
        assert_eq!(json[2]["error"], "no answer in time");
    }
}
