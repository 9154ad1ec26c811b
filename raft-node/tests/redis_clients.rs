//! Clients we did not write, against real `raft-node` processes: redis-py (RESP3, its
//! default, and `protocol=2`), the `redis` crate (RESP2 and RESP3), `redis-cli` (commands,
//! quoted input, `--tls`) and `redis-benchmark`; and, over a raw socket, the protocol
//! details they rely on (HELLO 3's types, inline commands with quotes, transactions).
//!
//! The outside tools are installed by `.ci/run`. Under `CI=true` a missing tool fails its
//! test; elsewhere the test is skipped with the reason printed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{runtime, Cluster, CLUSTER_ID};

/// Whether `program probe...` runs; under CI its absence is a failure.
fn tool(program: &str, probe: &[&str]) -> bool {
    let present = Command::new(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "`{program} {}` failed: .ci/run installs it",
            probe.join(" ")
        );
        eprintln!(
            "skipped: `{program} {}` failed (not installed?)",
            probe.join(" ")
        );
    }
    present
}

/// A cluster of `size` with a leader, and the client address of a follower (or the only
/// node): commands sent there exercise forwarding and follower reads too.
fn cluster(size: u64) -> (Cluster, SocketAddr) {
    let cluster = Cluster::start(size);
    let leader = runtime().block_on(cluster.wait_leader(Duration::from_secs(20)));
    let node = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader || size == 1)
        .expect("a node");
    let addr = node.client;
    (cluster, addr)
}

/// Runs `program` with `args` (and `stdin`), within 120 s; answers its stdout, stderr and
/// status. The child is killed if it overruns.
fn run(program: &str, args: &[String], stdin: &str) -> (String, String, bool) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// A raw RESP connection that renders replies as text: `+OK`, `-ERR ..`, `:1`, `$v`
/// (bulk), `=v` (verbatim), `_` (null), `,1.5`, `#t`, and `*[..]`, `~[..]`, `%{k: v}`,
/// `>[..]` for aggregates.
struct Raw {
    reader: BufReader<TcpStream>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            reader: BufReader::new(stream),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
    }

    fn send(&mut self, args: &[&str]) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        self.send_raw(&out);
    }

    fn call(&mut self, args: &[&str]) -> String {
        self.send(args);
        self.reply()
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read a line");
        line.trim_end_matches("\r\n").to_string()
    }

    fn reply(&mut self) -> String {
        let line = self.line();
        let (kind, rest) = line.split_at(1);
        let n = || rest.parse::<i64>().expect("a length");
        match kind {
            "$" | "=" if n() >= 0 => {
                let mut body = vec![0u8; n() as usize + 2];
                self.reader.read_exact(&mut body).expect("a body");
                body.truncate(n() as usize);
                // A verbatim string's format prefix (`txt:`) is not part of the text.
                let text = if kind == "=" { &body[4..] } else { &body[..] };
                format!("{kind}{}", String::from_utf8_lossy(text))
            }
            "*" | "~" | ">" if n() >= 0 => {
                let items: Vec<String> = (0..n()).map(|_| self.reply()).collect();
                format!("{kind}[{}]", items.join(", "))
            }
            "%" => {
                let items: Vec<String> = (0..n())
                    .map(|_| format!("{}: {}", self.reply(), self.reply()))
                    .collect();
                format!("%{{{}}}", items.join(", "))
            }
            _ => line,
        }
    }

    /// Whether the server closed the connection.
    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0))
    }
}

#[test]
fn hello_3_types_inline_quotes_select_and_transactions_over_a_raw_socket() {
    let (_cluster, addr) = cluster(3);
    let mut c = Raw::connect(addr);

    // RESP2 until HELLO 3, whose own answer is already a RESP3 map.
    assert_eq!(c.call(&["GET", "missing"]), "$-1");
    let hello = c.call(&["HELLO", "3", "SETNAME", "raw"]);
    assert!(
        hello.starts_with("%{$server: $redis, $version: $7.2.0, $proto: :3, $id: :"),
        "{hello}"
    );
    assert_eq!(c.call(&["GET", "missing"]), "_");
    assert_eq!(c.call(&["CLIENT", "GETNAME"]), "$raw");
    let id = c.call(&["CLIENT", "ID"]);
    assert!(id.starts_with(':'), "{id}");
    let info = c.call(&["CLIENT", "INFO"]);
    assert!(
        info.starts_with(&format!("=id={} name=raw ", &id[1..])),
        "{info}"
    );
    assert!(info.contains(" resp=3"), "{info}");
    assert!(c
        .call(&["CLIENT", "KILL", "x"])
        .starts_with("-ERR unknown subcommand"));
    assert_eq!(c.call(&["CLIENT", "NO-EVICT", "on"]), "+OK");
    assert_eq!(c.call(&["CONFIG", "GET", "save"]), "%{$save: $}");
    assert!(c.call(&["INFO"]).starts_with("=# Raft"));

    // COMMAND: the same table in every form.
    let count = c.call(&["COMMAND", "COUNT"]);
    let list = c.call(&["COMMAND", "LIST"]);
    assert_eq!(count, format!(":{}", list.matches('$').count()), "{list}");
    let docs = c.call(&["COMMAND", "DOCS", "set"]);
    assert!(docs.starts_with("%{$set: %{$summary: $"), "{docs}");
    let get = c.call(&["COMMAND", "INFO", "get", "nosuch"]);
    assert!(
        get.starts_with("*[*[$get, :2, ~[+readonly, +fast], :1, :1, :1, ~[+@read"),
        "{get}"
    );
    assert!(get.ends_with(", _]"), "{get}");
    assert_eq!(
        c.call(&["COMMAND", "LIST", "FILTERBY", "PATTERN", "mul*"]),
        "*[$multi]"
    );

    assert_eq!(c.call(&["SELECT", "0"]), "+OK");
    let select = c.call(&["SELECT", "1"]);
    assert!(
        select.starts_with("-ERR DB index is out of range"),
        "{select}"
    );
    assert_eq!(c.call(&["PING"]), "+PONG");
    assert_eq!(c.call(&["PING", "hi"]), "$hi");
    assert_eq!(c.call(&["ECHO", "x y"]), "$x y");
    let time = c.call(&["TIME"]);
    assert!(time.starts_with("*[$1"), "{time}");

    // Inline commands, quoted as redis-cli and telnet users quote them.
    c.send_raw(b"SET \"in line\" \"a\\x41\\n\\\"q\\\"\"\r\n");
    assert_eq!(c.reply(), "+OK");
    assert_eq!(c.call(&["GET", "in line"]), "$aA\n\"q\"");
    c.send_raw(b"  set 'single q' 'it\\'s'  \r\nGET 'single q'\n\r\n");
    assert_eq!(c.reply(), "+OK");
    assert_eq!(c.reply(), "$it's");

    // MULTI/EXEC: queued, then applied as one entry; reads inside see the writes before.
    assert_eq!(c.call(&["MULTI"]), "+OK");
    assert_eq!(c.call(&["SET", "tx", "1"]), "+QUEUED");
    assert_eq!(c.call(&["INCR", "tx"]), "+QUEUED");
    assert_eq!(c.call(&["GET", "tx"]), "+QUEUED");
    assert_eq!(c.call(&["PING"]), "+QUEUED");
    assert_eq!(c.call(&["EXEC"]), "*[+OK, :2, $2, +PONG]");
    // A runtime error is that command's answer; the others still run.
    assert_eq!(c.call(&["MULTI"]), "+OK");
    assert_eq!(c.call(&["SET", "tx", "x"]), "+QUEUED");
    assert_eq!(c.call(&["INCRBY", "tx", "nan"]), "+QUEUED");
    assert_eq!(c.call(&["INCR", "tx"]), "+QUEUED");
    let exec = c.call(&["EXEC"]);
    assert!(
        exec.starts_with("*[+OK, -ERR value is not an integer") && exec.ends_with("]"),
        "{exec}"
    );
    // An error while queueing aborts the whole transaction, as in Redis.
    assert_eq!(c.call(&["MULTI"]), "+OK");
    assert_eq!(c.call(&["SET", "tx", "queued"]), "+QUEUED");
    assert!(c
        .call(&["SET", "tx"])
        .starts_with("-ERR wrong number of arguments"));
    assert!(c.call(&["NOSUCH"]).starts_with("-ERR unknown command"));
    assert!(c
        .call(&["SELECT", "0"])
        .contains("not allowed inside a transaction"));
    assert!(c.call(&["EXEC"]).starts_with("-EXECABORT"));
    assert_eq!(c.call(&["GET", "tx"]), "$x");
    assert_eq!(c.call(&["MULTI"]), "+OK");
    assert!(c.call(&["MULTI"]).contains("nested"));
    assert_eq!(c.call(&["SET", "tx", "discarded"]), "+QUEUED");
    assert_eq!(c.call(&["DISCARD"]), "+OK");
    assert_eq!(c.call(&["GET", "tx"]), "$x");
    assert_eq!(c.call(&["EXEC"]), "-ERR EXEC without MULTI");

    // WATCH: a change by another client between WATCH and EXEC makes EXEC run nothing.
    let mut other = Raw::connect(addr);
    assert_eq!(c.call(&["WATCH", "w1", "w2"]), "+OK");
    assert_eq!(other.call(&["SET", "w2", "changed"]), "+OK");
    assert_eq!(c.call(&["MULTI"]), "+OK");
    assert_eq!(c.call(&["SET", "w1", "tx"]), "+QUEUED");
    assert_eq!(c.call(&["EXEC"]), "_");
    assert_eq!(c.call(&["GET", "w1"]), "_");
    // Unchanged watched keys: it runs; the watch ends with EXEC.
    assert_eq!(c.call(&["WATCH", "w1", "w2"]), "+OK");
    assert_eq!(c.call(&["MULTI"]), "+OK");
    assert!(c.call(&["WATCH", "w1"]).contains("WATCH inside MULTI"));
    assert_eq!(c.call(&["DISCARD"]), "+OK");
    assert_eq!(c.call(&["WATCH", "w1", "w2"]), "+OK");
    assert_eq!(c.call(&["MULTI"]), "+OK");
    assert_eq!(c.call(&["SET", "w1", "tx"]), "+QUEUED");
    assert_eq!(c.call(&["EXEC"]), "*[+OK]");
    // UNWATCH forgets: a later change does not abort.
    assert_eq!(c.call(&["WATCH", "w1"]), "+OK");
    assert_eq!(c.call(&["UNWATCH"]), "+OK");
    assert_eq!(other.call(&["SET", "w1", "again"]), "+OK");
    assert_eq!(c.call(&["MULTI"]), "+OK");
    assert_eq!(c.call(&["GET", "w1"]), "+QUEUED");
    assert_eq!(c.call(&["EXEC"]), "*[$again]");
    // RESP2's nil for an aborted EXEC is the nil array.
    assert_eq!(other.call(&["WATCH", "w1"]), "+OK");
    assert_eq!(c.call(&["DEL", "w1"]), ":1");
    assert_eq!(other.call(&["MULTI"]), "+OK");
    assert_eq!(other.call(&["GET", "w1"]), "+QUEUED");
    assert_eq!(other.call(&["EXEC"]), "*-1");

    // A pipeline that switches protocol: each answer in the protocol of its time.
    c.send_raw(b"GET missing\r\nHELLO 2\r\nGET missing\r\nHELLO 3\r\nGET missing\r\n");
    assert_eq!(c.reply(), "_");
    assert!(c.reply().starts_with("*[$server, $redis"));
    assert_eq!(c.reply(), "$-1");
    assert!(c.reply().starts_with("%{$server"));
    assert_eq!(c.reply(), "_");

    // RESET: back to RESP2, no name, no transaction.
    assert_eq!(c.call(&["MULTI"]), "+OK");
    assert_eq!(c.call(&["RESET"]), "+RESET");
    assert_eq!(c.call(&["GET", "missing"]), "$-1");
    assert_eq!(c.call(&["CLIENT", "GETNAME"]), "$-1");
    assert_eq!(c.call(&["EXEC"]), "-ERR EXEC without MULTI");
    assert_eq!(
        c.call(&["HELLO", "4"]),
        "-NOPROTO unsupported protocol version"
    );
    assert_eq!(c.call(&["QUIT"]), "+OK");
    assert!(c.closed());

    // Unbalanced quotes are a protocol error: that connection closes, the node serves on.
    let mut bad = Raw::connect(addr);
    bad.send_raw(b"SET \"open k\r\n");
    assert!(bad.reply().contains("unbalanced quotes"));
    assert!(bad.closed());
    assert_eq!(Raw::connect(addr).call(&["GET", "in line"]), "$aA\n\"q\"");
}

#[test]
fn the_redis_crate_speaks_resp2_and_resp3() {
    let (_cluster, addr) = cluster(3);
    for protocol in ["resp2", "resp3"] {
        let client = redis::Client::open(format!("redis://{addr}/?protocol={protocol}")).unwrap();
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap();
        con.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let key = format!("crate-{protocol}");
        redis::cmd("SET")
            .arg(&key)
            .arg("1")
            .query::<()>(&mut con)
            .unwrap();
        let n: i64 = redis::cmd("INCR").arg(&key).query(&mut con).unwrap();
        assert_eq!(n, 2);
        let missing: Option<String> = redis::cmd("GET").arg("nope").query(&mut con).unwrap();
        assert_eq!(missing, None);
        // An atomic pipeline is MULTI/EXEC.
        let (a, b): (i64, String) = redis::pipe()
            .atomic()
            .cmd("INCR")
            .arg(&key)
            .cmd("GET")
            .arg(&key)
            .query(&mut con)
            .unwrap();
        assert_eq!((a, b.as_str()), (3, "3"));
        let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut con).unwrap();
        assert!(id > 0);
        let info: String = redis::cmd("CLIENT").arg("INFO").query(&mut con).unwrap();
        let resp = if protocol == "resp3" {
            "resp=3"
        } else {
            "resp=2"
        };
        assert!(info.contains(resp), "{info}");
        let hello: redis::Value = redis::cmd("HELLO").query(&mut con).unwrap();
        match (&hello, protocol) {
            (redis::Value::Map(_), "resp3") | (redis::Value::Array(_), "resp2") => {}
            other => panic!("HELLO answered {other:?}"),
        }
        let count: i64 = redis::cmd("COMMAND").arg("COUNT").query(&mut con).unwrap();
        assert!(count > 20);
    }
}

/// redis-py as a user runs it: default settings (RESP3 through `HELLO 3`), then
/// `protocol=2`; its own command helpers, a transaction pipeline, and errors.
const REDIS_PY_SCRIPT: &str = r#"
import sys, redis
port = int(sys.argv[1])
assert int(redis.__version__.split(".")[0]) >= 5, redis.__version__
for protocol in (None, 2):
    kwargs = {} if protocol is None else {"protocol": protocol}
    r = redis.Redis(port=port, socket_timeout=10, **kwargs)
    p = "py%s:" % protocol
    assert r.set(p + "a", "1") is True
    assert r.get(p + "a") == b"1"
    assert r.get(p + "missing") is None
    assert r.incr(p + "n") == 1
    assert r.mset({p + "x": "1", p + "y": "2"}) is True
    assert r.mget([p + "x", p + "y", p + "missing"]) == [b"1", b"2", None]
    assert r.exists(p + "x", p + "y") == 2
    assert r.delete(p + "x") == 1
    assert r.ping() is True
    assert r.echo("e") == b"e"
    secs, micros = r.time()
    assert secs > 1_600_000_000 and 0 <= micros < 1_000_000
    assert isinstance(r.client_id(), int)
    assert r.client_setname("py") is True
    assert r.client_getname() in ("py", b"py")
    info = r.client_info()
    assert info["name"] == "py", info
    assert str(info["resp"]) == ("2" if protocol == 2 else "3"), info
    assert r.client_list()
    assert r.config_get("save") == {"save": ""}, r.config_get("save")
    assert r.info()["role"] in ("leader", "follower", "candidate")
    assert r.command_count() > 20
    assert r.command()["get"]["arity"] == 2
    pipe = r.pipeline(transaction=True)
    pipe.set(p + "t", "5").incr(p + "t").get(p + "t")
    assert pipe.execute() == [True, 6, b"6"]
    # Optimistic locking as redis-py documents it: WATCH, read, MULTI, write, EXEC; a
    # change by another client in between raises WatchError and nothing is applied.
    with r.pipeline() as pipe:
        pipe.watch(p + "t")
        current = int(pipe.get(p + "t"))
        r.set(p + "t", "100")
        pipe.multi()
        pipe.set(p + "t", current + 1)
        try:
            pipe.execute()
            raise SystemExit("EXEC ran after a watched key changed")
        except redis.WatchError:
            pass
    assert r.get(p + "t") == b"100"
    def bump(pipe):
        pipe.multi()
        pipe.incr(p + "t")
    assert r.transaction(bump, p + "t") == [101]
    # Commands of the key-value state machine through redis-py's helpers.
    assert r.set(p + "nx", "1", nx=True) is True
    assert r.set(p + "nx", "2", nx=True) is None
    assert r.set(p + "ex", "v", ex=100) is True
    assert 0 < r.ttl(p + "ex") <= 100
    assert r.append(p + "nx", "23") == 3
    assert r.strlen(p + "nx") == 3
    assert r.getset(p + "nx", "9") == b"123"
    assert r.incrbyfloat(p + "f", 1.5) == 1.5
    assert r.expire(p + "nx", 100) is True
    assert r.persist(p + "nx") is True
    assert r.type(p + "nx") in ("string", b"string")
    assert r.rename(p + "nx", p + "renamed") is True
    assert r.dbsize() >= 1
    assert sorted(r.keys(p + "rename*")) == [(p + "renamed").encode()]
    found = set()
    for key in r.scan_iter(match=p + "*", count=2):
        found.add(key)
    assert (p + "renamed").encode() in found and (p + "a").encode() in found, found
    assert r.getdel(p + "renamed") == b"9"
    try:
        r.execute_command("SELECT", "1")
        raise SystemExit("SELECT 1 accepted")
    except redis.ResponseError as e:
        assert "out of range" in str(e), e
    try:
        r.execute_command("NOSUCHCOMMAND")
        raise SystemExit("unknown command accepted")
    except redis.ResponseError as e:
        assert "unknown command" in str(e), e
    assert r.get(p + "a") == b"1"
    r.close()
print("ok")
"#;

#[test]
fn redis_py_with_default_settings_and_with_protocol_2() {
    if !tool("python3", &["-c", "import redis"]) {
        return;
    }
    let (_cluster, addr) = cluster(3);
    let (out, err, ok) = run(
        "python3",
        &["-c".into(), REDIS_PY_SCRIPT.into(), addr.port().to_string()],
        "",
    );
    assert!(ok && out.trim() == "ok", "stdout:\n{out}\nstderr:\n{err}");
}

#[test]
fn redis_cli_commands_quoted_input_and_tls() {
    if !tool("redis-cli", &["--version"]) {
        return;
    }
    let (cluster, addr) = cluster(3);
    let port = addr.port().to_string();
    let cli = |extra: &[&str], stdin: &str| {
        let mut args = vec![
            "-h".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            port.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        run("redis-cli", &args, stdin)
    };
    let (out, err, ok) = cli(&["SET", "cli key", "v 1"], "");
    assert!(ok && out.trim() == "OK", "{out}{err}");
    let (out, _, _) = cli(&["GET", "cli key"], "");
    assert_eq!(out.trim(), "v 1");
    // Lines on stdin are split by redis-cli itself, quotes and escapes included.
    let (out, err, ok) = cli(
        &[],
        "SET quoted \"a \\\"b\\\" \\x41\"\nGET quoted\nSET single 'it\\'s'\nGET single\nSELECT 1\n",
    );
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..4], ["OK", "a \"b\" A", "OK", "it's"], "{out}");
    assert!(lines[4].contains("DB index is out of range"), "{out}");
    // RESP3 (-3 sends HELLO 3).
    let (out, err, ok) = cli(&["-3", "HELLO", "3"], "");
    assert!(ok && out.lines().any(|l| l == "proto 3"), "{out}{err}");
    let (out, _, _) = cli(&["-3", "CONFIG", "GET", "appendonly"], "");
    assert_eq!(out.trim(), "appendonly yes");
    let (out, _, _) = cli(&["COMMAND", "COUNT"], "");
    assert!(out.trim().parse::<u32>().unwrap() > 20, "{out}");
    let (out, _, _) = cli(&["MULTI"], "");
    assert_eq!(out.trim(), "OK");
    drop(cluster);

    // --tls against a node with TLS on its client port.
    if !tool("redis-cli", &["--tls", "--version"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    let cluster_id = u128::from_str_radix(CLUSTER_ID, 16).unwrap();
    raft_node::certs::generate(certs, Some(cluster_id), &[1], &["127.0.0.1".into()]).unwrap();
    let path = |f: String| certs.join(f).display().to_string();
    let ca = path(raft_node::certs::CA_CERT_FILE.into());
    let cert = path(raft_node::certs::node_cert_file(1));
    let key = path(raft_node::certs::node_key_file(1));
    let node_flags = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    let tls = Cluster::start_full(1, &["--tls-ca", &ca], &[], &[(1, &node_flags)]);
    let tls_port = tls.nodes[0].client.port().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (out, err, _) = run(
            "redis-cli",
            &[
                "--tls".into(),
                "--cacert".into(),
                ca.clone(),
                "-h".into(),
                "127.0.0.1".into(),
                "-p".into(),
                tls_port.clone(),
                "SET".into(),
                "tls".into(),
                "yes".into(),
            ],
            "",
        );
        if out.trim() == "OK" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "redis-cli --tls: {out}{err}\n{}",
            tls.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn redis_benchmark_runs_without_errors() {
    if !tool("redis-benchmark", &["--version"]) {
        return;
    }
    let (_cluster, addr) = cluster(3);
    let (out, err, ok) = run(
        "redis-benchmark",
        &[
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            addr.port().to_string(),
            "-t".into(),
            "set,get,incr,mset".into(),
            "-P".into(),
            "16".into(),
            "-n".into(),
            "4000".into(),
            "-c".into(),
            "8".into(),
            "-q".into(),
        ],
        "",
    );
    let all = format!("{out}{err}");
    assert!(ok, "{all}");
    assert!(!all.to_ascii_lowercase().contains("error"), "{all}");
    for test in ["SET: ", "GET: ", "INCR: ", "MSET (10 keys): "] {
        assert!(
            all.lines()
                .any(|l| l.contains(test) && l.contains("requests per second")),
            "{test} missing:\n{all}"
        );
    }
}
