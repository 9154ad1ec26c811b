//! `cargo xtask attacks`: the attacks of issue #13 at the sizes (4 MiB values, 4,100
//! connections, 10 MB of digits, ...) against a 3-node cluster of release `raft-node`
//! processes, one fresh cluster per attack, and a table of what each did: the node's answer,
//! its resident memory before, at peak and after, and whether it still served a SET/GET
//! round trip (and how fast) with every key written before the attack intact.
//!
//! The attacks are `raft-node/tests/common/attacks.rs`, the same code the hostile-client
//! tests run at small sizes. Every attack is bounded in count and time (the whole table takes
//! about two minutes); every process is killed when its row is done, also on error or panic,
//! and by the kernel if this process dies (see `Proc::start`). Traffic stays on 127.0.0.0/8.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::bench::cluster::procs::{Proc, Procs};
use crate::hostile::{self as attacks, Credentials, Reply};
use raft_testkit::try_free_addr;

/// Nodes of the attacked cluster.
const NODES: u64 = 3;
/// Keys written before each attack and read back after it.
const KEYS_BEFORE: usize = 100;
/// The big value.
const BIG_VALUE_BYTES: usize = 4 << 20;
/// Time a fresh cluster gets to elect a leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long non-reading clients are left holding their answers before they are looked at.
const NON_READERS_HOLD: Duration = Duration::from_secs(5);

/// Runs the attacks against release `raft-node` processes and prints one row each.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Only these attacks (comma-separated names from the first column).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Do not build: use the node binary as it is.
    #[arg(long)]
    no_build: bool,
    /// The node binary [default: target/release/raft-node].
    #[arg(long)]
    node_binary: Option<PathBuf>,
    /// Extra flags for every node (e.g. limits), one flag or value per occurrence.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
}

pub(crate) fn main(args: Args) -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    if !args.no_build {
        if let Err(e) = crate::bench::cluster::prepare() {
            eprintln!("xtask attacks: {e}");
            return ExitCode::FAILURE;
        }
    }
    let binary = args
        .node_binary
        .clone()
        .unwrap_or_else(|| root.join("target/release/raft-node"));
    let scratch = match tempfile_dir(&root) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("xtask attacks: {e}");
            return ExitCode::FAILURE;
        }
    };
    let selected = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut failed = false;
    for (name, attack) in ATTACKS {
        if !selected(name) {
            continue;
        }
        let dir = scratch.join(name);
        let row = run_row(name, *attack, &binary, &dir, &args.node_args);
        match row {
            Ok(row) => {
                eprintln!("{}", row.line());
                failed |= !row.served;
                rows.push(row);
            }
            Err(e) => {
                eprintln!("{name}: could not run: {e}");
                failed = true;
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    print_table(&rows);
    println!(
        "({} attacks in {:.0} s)",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn tempfile_dir(root: &Path) -> Result<PathBuf, String> {
    let dir = root
        .join("target")
        .join(format!("xtask-attacks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

type Attack = fn(&mut Ctx) -> Result<String, String>;

/// The attacks, in its order: name (for `--only`), and what runs.
const ATTACKS: &[(&str, Attack)] = &[
    ("promote", promote_unauthenticated),
    ("promote-admin", promote_admin),
    ("mget", mget_big),
    ("digits", endless_digits),
    ("array", huge_array),
    ("non-readers", non_readers),
    ("silent-1-source", |c| silent(c, 1)),
    ("silent-5-sources", |c| silent(c, 5)),
    ("impostor", impostor),
    ("chunked-put", chunked_put),
    ("duplicate-length", duplicate_content_length),
    ("config-set", config_set),
];

/// A running cluster and the node under attack.
struct Ctx {
    procs: Procs,
    peers: Vec<SocketAddr>,
    clients: Vec<SocketAddr>,
    https: Vec<SocketAddr>,
    binary: PathBuf,
    auth: Option<Credentials>,
    /// The attacked node (the leader when the attack began), 1-based.
    target: u64,
}

impl Ctx {
    fn client(&self) -> SocketAddr {
        self.clients[self.target as usize - 1]
    }

    fn bearer(&self) -> Option<&str> {
        self.auth.as_ref().map(|c| c.password.as_str())
    }

    fn info(&self, id: u64) -> Result<std::collections::HashMap<String, String>, String> {
        attacks::info(self.clients[id as usize - 1], self.auth.as_ref())
    }
}

struct Row {
    name: &'static str,
    result: String,
    rss_before_mib: f64,
    rss_peak_mib: f64,
    rss_after_mib: f64,
    served: bool,
    round_trip: Option<Duration>,
    lost: usize,
}

impl Row {
    fn line(&self) -> String {
        format!(
            "{:<17} | {:>7.0} | {:>7.0} | {:>7.0} | {:<8} | {:>5} | {}",
            self.name,
            self.rss_before_mib,
            self.rss_peak_mib,
            self.rss_after_mib,
            match (self.served, self.round_trip) {
                (true, Some(d)) => format!("{:.1} ms", d.as_secs_f64() * 1e3),
                _ => "NO".into(),
            },
            self.lost,
            self.result
        )
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<17} | {:>7} | {:>7} | {:>7} | {:<8} | {:>5} | result",
        "attack", "RSS MiB", "peak", "after", "SET/GET", "lost"
    );
    println!("{}", "-".repeat(100));
    for r in rows {
        println!("{}", r.line());
    }
}

fn start_cluster(binary: &Path, dir: &Path, extra: &[String]) -> Result<Ctx, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| e.to_string();
    let mut ctx = Ctx {
        procs: Procs::default(),
        peers: Vec::new(),
        clients: Vec::new(),
        https: Vec::new(),
        binary: binary.to_owned(),
        auth: None,
        target: 0,
    };
    for _ in 0..NODES {
        ctx.peers.push(try_free_addr().map_err(io)?);
        ctx.clients.push(try_free_addr().map_err(io)?);
        ctx.https.push(try_free_addr().map_err(io)?);
    }
    let (auth_file, credentials) = attacks::write_auth_file(dir).map_err(io)?;
    ctx.auth = Some(credentials);
    for id in 1..=NODES {
        let i = id as usize - 1;
        let mut args = vec![
            "run".to_string(),
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            dir.join(format!("node-{id}")).display().to_string(),
            "--http-addr".into(),
            ctx.https[i].to_string(),
            // A new cluster of several members shares one ID.
            "--cluster-id".into(),
            format!("{:032x}", 0xa77a_c000_u128 | u128::from(std::process::id())),
            "--auth-file".into(),
            auth_file.display().to_string(),
        ];
        for p in 0..NODES as usize {
            args.push("--peer".into());
            args.push(format!("{}={},{}", p + 1, ctx.peers[p], ctx.clients[p]));
        }
        args.extend(extra.iter().cloned());
        ctx.procs.0.push(
            Proc::new(
                format!("raft-node {id}"),
                binary,
                args,
                dir.join(format!("node-{id}.log")),
            )
            .with_env("RUST_LOG", "warn"),
        );
    }
    for p in &mut ctx.procs.0 {
        p.start().map_err(|e| format!("starting {}: {e}", p.name))?;
    }
    let deadline = Instant::now() + LEADER_TIMEOUT;
    while Instant::now() < deadline {
        ctx.procs.check_alive()?;
        for id in 1..=NODES {
            if let Ok(info) = ctx.info(id) {
                if info.get("role").map(String::as_str) == Some("leader") {
                    ctx.target = id;
                    return Ok(ctx);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("no leader within {LEADER_TIMEOUT:?}"))
}

fn pid(ctx: &Ctx) -> u32 {
    ctx.procs.0[ctx.target as usize - 1].pid().unwrap_or(0)
}

fn run_row(
    name: &'static str,
    attack: Attack,
    binary: &Path,
    dir: &Path,
    extra: &[String],
) -> Result<Row, String> {
    let mut ctx = start_cluster(binary, dir, extra)?;
    let addr = ctx.client();
    for i in 0..KEYS_BEFORE {
        attacks::round_trip(
            addr,
            ctx.auth.as_ref(),
            &format!("before-{i}"),
            b"acknowledged",
        )?;
    }
    let kib = |k: Option<u64>| k.map_or(f64::NAN, attacks::mib);
    let rss_before_mib = kib(attacks::rss_kib(pid(&ctx)));
    let result = attack(&mut ctx).unwrap_or_else(|e| format!("attack failed: {e}"));
    let rss_peak_mib = kib(attacks::rss_peak_kib(pid(&ctx)));
    let round_trip = attacks::round_trip(addr, ctx.auth.as_ref(), "after", b"still serving");
    let mut lost = 0;
    if let Ok(mut c) = attacks::Resp::connect(addr, ctx.auth.as_ref()) {
        for i in 0..KEYS_BEFORE {
            let got = c.call(&[b"GET", format!("before-{i}").as_bytes()]);
            if !matches!(got, Ok(Reply::Bulk(Some(ref v))) if v == b"acknowledged") {
                lost += 1;
            }
        }
    } else {
        lost = KEYS_BEFORE;
    }
    let rss_after_mib = kib(attacks::rss_kib(pid(&ctx)));
    Ok(Row {
        name,
        result: match &round_trip {
            Ok(_) => result,
            Err(e) => format!("{result}; after: {e}"),
        },
        rss_before_mib,
        rss_peak_mib,
        rss_after_mib,
        served: round_trip.is_ok() && lost == 0,
        round_trip: round_trip.ok(),
        lost,
    })
}

fn promote_unauthenticated(ctx: &mut Ctx) -> Result<String, String> {
    let answers = attacks::promote(ctx.client(), None, &[97, 98, 99]);
    let voters = ctx
        .info(ctx.target)?
        .get("voters")
        .cloned()
        .unwrap_or_default();
    Ok(format!(
        "RAFT.PROMOTE 97/98/99: {}; voters {voters}",
        answers.join(" / ")
    ))
}

fn promote_admin(ctx: &mut Ctx) -> Result<String, String> {
    let answers = attacks::promote(ctx.client(), ctx.auth.as_ref(), &[97, 98, 99]);
    let voters = ctx
        .info(ctx.target)?
        .get("voters")
        .cloned()
        .unwrap_or_default();
    Ok(format!(
        "RAFT.PROMOTE 97/98/99 as admin: {}; voters {voters}",
        answers.join(" / ")
    ))
}

fn mget_big(ctx: &mut Ctx) -> Result<String, String> {
    let big = vec![b'b'; BIG_VALUE_BYTES];
    attacks::round_trip(ctx.client(), ctx.auth.as_ref(), "big", &big)?;
    let before = ctx.info(ctx.target)?;
    let answer = attacks::mget_same_key(ctx.client(), ctx.auth.as_ref(), "big", 128, 1 << 30)
        .map_err(|e| e.to_string())?;
    let after = ctx.info(ctx.target)?;
    Ok(format!(
        "MGET big x128: {} ({:.0} MiB); term {} -> {}, {}",
        first_line(&answer.head),
        answer.bytes as f64 / 1048576.0,
        before["term"],
        after["term"],
        after["role"]
    ))
}

fn endless_digits(ctx: &mut Ctx) -> Result<String, String> {
    let s = attacks::endless_bulk_length(ctx.client(), 10_000_000, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    Ok(format!("*1 $ + 10 MB of digits: {}", s.describe()))
}

fn huge_array(ctx: &mut Ctx) -> Result<String, String> {
    let s = attacks::huge_array(
        ctx.client(),
        65_536,
        8 << 20,
        256 << 20,
        Duration::from_secs(10),
    )
    .map_err(|e| e.to_string())?;
    Ok(format!(
        "*65536 of 8 MiB bulks (256 MiB max): {}",
        s.describe()
    ))
}

fn non_readers(ctx: &mut Ctx) -> Result<String, String> {
    let big = vec![b'b'; BIG_VALUE_BYTES];
    attacks::round_trip(ctx.client(), ctx.auth.as_ref(), "big", &big)?;
    let stuck = attacks::NonReaders::open(
        ctx.https[ctx.target as usize - 1],
        50,
        "/kv/big",
        ctx.client(),
        5,
        64,
        "big",
        BIG_VALUE_BYTES as u64,
        ctx.bearer(),
        ctx.auth.as_ref(),
    )
    .map_err(|e| e.to_string())?;
    std::thread::sleep(NON_READERS_HOLD);
    let served = attacks::round_trip(ctx.client(), ctx.auth.as_ref(), "during", b"x");
    let total = stuck.len();
    let (cut, full) = stuck.cut_off(Duration::from_secs(20));
    Ok(format!(
        "50 HTTP GET /kv/big + 5 RESP x64 GET big, unread {NON_READERS_HOLD:?}: {cut} of {total} cut off, {full} answered whole; SET/GET meanwhile {}",
        match served {
            Ok(d) => format!("{:.1} ms", d.as_secs_f64() * 1e3),
            Err(e) => e,
        }
    ))
}

fn silent(ctx: &mut Ctx, sources: u8) -> Result<String, String> {
    let from: Vec<IpAddr> = (0..sources)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i)))
        .collect();
    let s = attacks::silent(ctx.client(), &from, 4_100, Duration::from_secs(30));
    let served = attacks::round_trip(ctx.client(), ctx.auth.as_ref(), "during", b"x");
    let started = Instant::now();
    let status = status_cli(&ctx.binary, ctx.client());
    let status_took = started.elapsed();
    let closed = s.closed_by_node();
    let open = s.conns.len();
    let failed = s.failed;
    s.close();
    Ok(format!(
        "4,100 silent from {sources} source(s): {open} connected, {failed} connects failed, {closed} closed by the node; new client {}; `raft-node status` {}",
        match served {
            Ok(d) => format!("served in {:.1} ms", d.as_secs_f64() * 1e3),
            Err(e) => e,
        },
        if status {
            format!("served in {:.0} ms", status_took.as_secs_f64() * 1e3)
        } else {
            "FAILED".into()
        }
    ))
}

/// `raft-node status --addr` run to completion within 10 s.
fn status_cli(binary: &Path, addr: SocketAddr) -> bool {
    let Ok(mut child) = Command::new(binary)
        .args(["status", "--addr", &addr.to_string()])
        .env("RAFT_NODE_PASSWORD", attacks::ADMIN_PASSWORD)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return st.success();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

fn impostor(ctx: &mut Ctx) -> Result<String, String> {
    let term: u64 = ctx.info(ctx.target)?["term"].parse().map_err(|_| "term")?;
    let (from, to) = if ctx.target == 1 {
        (2, 1)
    } else {
        (1, ctx.target)
    };
    let forged = raft_core::Message {
        from,
        to,
        term: term + 1,
        body: raft_core::MessageBody::TimeoutNow,
    };
    let mut out = Vec::new();
    for cluster_id in [1u128, 0] {
        let got = attacks::impostor_plain(
            ctx.peers[to as usize - 1],
            cluster_id,
            from,
            to,
            Some(forged.clone()),
            9,
            Duration::from_millis(400),
        )
        .map_err(|e| e.to_string())?;
        out.push(format!(
            "as node {from} of cluster {cluster_id}: {}, {} replication bytes received, {} TimeoutNow sent",
            got.reply.as_deref().unwrap_or("closed, no reply"),
            got.frames_bytes,
            got.forged_sent
        ));
    }
    let after: u64 = ctx.info(ctx.target)?["term"].parse().map_err(|_| "term")?;
    Ok(format!("{}; term {term} -> {after}", out.join("; ")))
}

fn chunked_put(ctx: &mut Ctx) -> Result<String, String> {
    let http = ctx.https[ctx.target as usize - 1];
    let (status, _) = attacks::http_raw(
        http,
        b"PUT /kv/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        ctx.bearer(),
    )
    .map_err(|e| e.to_string())?;
    let stored = stored_value(ctx, "chunked")?;
    Ok(format!(
        "PUT chunked \"hello world\": {status}; stored {stored}"
    ))
}

fn duplicate_content_length(ctx: &mut Ctx) -> Result<String, String> {
    let http = ctx.https[ctx.target as usize - 1];
    let (status, _) = attacks::http_raw(
        http,
        b"PUT /kv/dup HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 3\r\n\r\nhello",
        ctx.bearer(),
    )
    .map_err(|e| e.to_string())?;
    let stored = stored_value(ctx, "dup")?;
    Ok(format!(
        "PUT with Content-Length 5 and 3: {status}; stored {stored}"
    ))
}

fn stored_value(ctx: &Ctx, key: &str) -> Result<String, String> {
    let mut c =
        attacks::Resp::connect(ctx.client(), ctx.auth.as_ref()).map_err(|e| e.to_string())?;
    Ok(
        match c
            .call(&[b"GET", key.as_bytes()])
            .map_err(|e| e.to_string())?
        {
            Reply::Bulk(Some(v)) => format!("{:?}", String::from_utf8_lossy(&v)),
            other => other.describe(),
        },
    )
}

fn config_set(ctx: &mut Ctx) -> Result<String, String> {
    let mut c =
        attacks::Resp::connect(ctx.client(), ctx.auth.as_ref()).map_err(|e| e.to_string())?;
    let r = c
        .call(&[b"CONFIG", b"SET", b"requirepass", b"x"])
        .map_err(|e| e.to_string())?;
    Ok(format!("CONFIG SET requirepass x: {}", r.describe()))
}

fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or("");
    l.chars().take(60).collect()
}
