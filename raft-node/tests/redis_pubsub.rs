//! Subscribe mode and transactions on a real cluster of `raft-node` processes, over raw
//! RESP sockets so that every frame the node sends is checked: what a subscribed RESP2 and
//! RESP3 connection may run, RESET leaving subscribe mode, subscriptions and WATCH inside
//! MULTI, and PUBLISH replicated through the log.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{runtime, Cluster};

/// One RESP2/RESP3 value as the test sees it.
#[derive(Clone, Debug, PartialEq)]
enum V {
    /// `+`: a status.
    S(String),
    /// `-`: an error line.
    E(String),
    /// `:`.
    I(i64),
    /// `$`: a bulk string.
    B(String),
    /// `$-1`, `*-1` or RESP3's `_`.
    Nil,
    /// `*` or `~`.
    A(Vec<V>),
    /// `%` (as its flat key, value list).
    M(Vec<V>),
    /// `>`: out of band.
    P(Vec<V>),
}

fn b(s: &str) -> V {
    V::B(s.to_string())
}

/// A RESP connection with a reader that parses the frames it gets.
struct RespConn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl RespConn {
    fn open(addr: SocketAddr) -> RespConn {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        RespConn {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    fn send(&mut self, args: &[&str]) {
        let mut frame = format!("*{}\r\n", args.len());
        for a in args {
            frame += &format!("${}\r\n{a}\r\n", a.len());
        }
        self.w.write_all(frame.as_bytes()).unwrap();
    }

    /// The next frame (a read timeout of 10 s fails the test).
    fn next(&mut self) -> V {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("a frame within 10 s");
        assert!(line.ends_with("\r\n"), "connection closed: {line:?}");
        let line = &line[..line.len() - 2];
        let (kind, rest) = line.split_at(1);
        let n = || rest.parse::<i64>().unwrap();
        let items = |c: &mut RespConn, count: i64| (0..count).map(|_| c.next()).collect();
        match kind {
            "+" => V::S(rest.into()),
            "-" => V::E(rest.into()),
            ":" => V::I(n()),
            "_" => V::Nil,
            "$" if n() < 0 => V::Nil,
            "*" if n() < 0 => V::Nil,
            "$" => {
                let mut buf = vec![0u8; n() as usize + 2];
                self.r.read_exact(&mut buf).unwrap();
                buf.truncate(n() as usize);
                V::B(String::from_utf8(buf).unwrap())
            }
            "*" | "~" => V::A(items(self, n())),
            "%" => V::M(items(self, 2 * n())),
            ">" => V::P(items(self, n())),
            other => panic!("unexpected frame type {other:?} in {line:?}"),
        }
    }

    /// Sends `args` and returns the next frame: for (P)(UN)SUBSCRIBE, whose confirmations
    /// are pushes in RESP3.
    fn sub(&mut self, args: &[&str]) -> V {
        self.send(args);
        self.next()
    }

    /// Sends `args` and returns its in-band reply; pushes met on the way are kept in
    /// `pushes`.
    fn call(&mut self, args: &[&str], pushes: &mut Vec<V>) -> V {
        self.send(args);
        for _ in 0..1_000 {
            match self.next() {
                p @ V::P(_) => pushes.push(p),
                v => return v,
            }
        }
        panic!("no reply to {args:?} among 1,000 pushes");
    }
}

/// Waits (bounded) until `addr` answers `SET` with `+OK`: the cluster has a leader and the
/// node forwards to it.
fn wait_writable(addr: SocketAddr, login: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Refused until the node listens.
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{addr} not listening within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let mut c = RespConn::open(addr);
        let mut pushes = Vec::new();
        if !login.is_empty() {
            c.call(login, &mut pushes);
        }
        if c.call(&["SET", "ready", "1"], &mut pushes) == V::S("OK".into()) {
            return;
        }
        assert!(Instant::now() < deadline, "no writable cluster within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// RESP3 subscribe mode runs any command, its replies in band and the messages as pushes;
/// RESP2 subscribe mode refuses what Redis refuses, with Redis' text, and answers PING
/// with Redis' array.
#[test]
fn resp3_subscribers_run_any_command_and_resp2_ones_what_redis_allows() {
    let cluster = Cluster::start(3);
    let rt = runtime();
    rt.block_on(cluster.wait_leader(Duration::from_secs(15)));
    let follower = cluster.node(2).client;
    wait_writable(follower, &[]);
    let mut pushes = Vec::new();

    let mut c = RespConn::open(follower);
    assert!(matches!(c.call(&["HELLO", "3"], &mut pushes), V::M(_)));
    assert_eq!(
        c.sub(&["SUBSCRIBE", "__keyspace@0__:k3"]),
        V::P(vec![b("subscribe"), b("__keyspace@0__:k3"), V::I(1)])
    );
    assert_eq!(c.call(&["GET", "k3"], &mut pushes), V::Nil);
    assert_eq!(c.call(&["SET", "k3", "v"], &mut pushes), V::S("OK".into()));
    assert_eq!(c.call(&["GET", "k3"], &mut pushes), b("v"));
    assert_eq!(c.call(&["PING"], &mut pushes), V::S("PONG".into()));
    assert_eq!(c.call(&["INCR", "n3"], &mut pushes), V::I(1));
    // The SET's keyspace message arrives as a push, whatever the replies around it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let message = V::P(vec![b("message"), b("__keyspace@0__:k3"), b("set")]);
    while !pushes.contains(&message) {
        assert!(Instant::now() < deadline, "no message; got {pushes:?}");
        pushes.push(c.next());
    }
    assert_eq!(pushes.iter().filter(|p| **p == message).count(), 1);
    // Still subscribed: UNSUBSCRIBE counts down to 0, and the connection is back in normal
    // mode.
    assert_eq!(
        c.sub(&["UNSUBSCRIBE"]),
        V::P(vec![b("unsubscribe"), b("__keyspace@0__:k3"), V::I(0)])
    );
    assert_eq!(c.call(&["GET", "k3"], &mut pushes), b("v"));

    let mut c2 = RespConn::open(follower);
    let mut pushes2 = Vec::new();
    assert_eq!(
        c2.sub(&["SUBSCRIBE", "ch"]),
        V::A(vec![b("subscribe"), b("ch"), V::I(1)])
    );
    for (cmd, name) in [(&["GET", "k3"][..], "get"), (&["HELLO", "3"][..], "hello")] {
        assert_eq!(
            c2.call(cmd, &mut pushes2),
            V::E(format!(
                "ERR Can't execute '{name}': only (P)SUBSCRIBE / (P)UNSUBSCRIBE / PING / QUIT \
                 / RESET are allowed in this context"
            ))
        );
    }
    assert_eq!(
        c2.call(&["PING", "hi"], &mut pushes2),
        V::A(vec![b("pong"), b("hi")])
    );
    assert!(pushes2.is_empty(), "{pushes2:?}");
}

/// RESET in subscribe mode leaves it and resets the connection as Redis does: RESP2, no
/// name, and the `default` user's login, which with authentication on means none.
#[test]
fn reset_leaves_subscribe_mode_and_resets_protocol_name_and_login() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    let user = |name: &str, role: &str, password: &str| {
        format!(
            "[[users]]\nname = \"{name}\"\nrole = \"{role}\"\npassword_sha256 = \"{}\"\n",
            raft_node::auth::password_sha256_hex(password.as_bytes())
        )
    };
    std::fs::write(
        &file,
        user("default", "admin", "admin-pw") + &user("reader", "read", "reader-pw"),
    )
    .unwrap();
    let file = file.display().to_string();
    let cluster = Cluster::start_with(1, &["--auth-file", &file]);
    let addr = cluster.node(1).client;
    wait_writable(addr, &["AUTH", "admin-pw"]);
    let mut pushes = Vec::new();

    for protocol in ["2", "3"] {
        let mut c = RespConn::open(addr);
        let hello = c.call(
            &[
                "HELLO",
                protocol,
                "AUTH",
                "reader",
                "reader-pw",
                "SETNAME",
                "watcher",
            ],
            &mut pushes,
        );
        assert!(matches!(hello, V::M(_) | V::A(_)), "{hello:?}");
        let subscribed = c.sub(&["PSUBSCRIBE", "__keyevent@0__:*"]);
        let confirmation = vec![b("psubscribe"), b("__keyevent@0__:*"), V::I(1)];
        assert!(
            subscribed == V::A(confirmation.clone()) || subscribed == V::P(confirmation),
            "{subscribed:?}"
        );
        assert_eq!(c.call(&["RESET"], &mut pushes), V::S("RESET".into()));
        // Logged out: the default user needs a password here.
        assert_eq!(
            c.call(&["CLIENT", "GETNAME"], &mut pushes),
            V::E("NOAUTH Authentication required.".into())
        );
        // Not subscribed any more (a subscribed RESP2 connection refuses AUTH).
        assert_eq!(
            c.call(&["AUTH", "reader", "reader-pw"], &mut pushes),
            V::S("OK".into())
        );
        // RESP2 (`$-1`, not RESP3's `_`) and no name.
        c.send(&["CLIENT", "GETNAME"]);
        let mut line = String::new();
        c.r.read_line(&mut line).unwrap();
        assert_eq!(line, "$-1\r\n", "protocol {protocol}");
        assert_eq!(c.call(&["GET", "ready"], &mut pushes), b("1"));
    }
    assert!(pushes.is_empty(), "{pushes:?}");
}

/// SUBSCRIBE and PSUBSCRIBE inside MULTI are refused and abort the transaction; WATCH
/// inside MULTI is refused with Redis' text and, as in Redis, leaves it going.
#[test]
fn subscriptions_and_watch_inside_multi_are_refused() {
    let cluster = Cluster::start(1);
    let addr = cluster.node(1).client;
    wait_writable(addr, &[]);
    let mut pushes = Vec::new();
    let mut c = RespConn::open(addr);
    let ok = V::S("OK".into());
    let queued = V::S("QUEUED".into());

    assert_eq!(c.call(&["MULTI"], &mut pushes), ok);
    assert_eq!(
        c.call(&["WATCH", "w"], &mut pushes),
        V::E("ERR WATCH inside MULTI is not allowed".into())
    );
    assert_eq!(c.call(&["SET", "w", "1"], &mut pushes), queued);
    assert_eq!(c.call(&["EXEC"], &mut pushes), V::A(vec![ok.clone()]));

    // Pipelined, as a client would send them: the refusal does not enter subscribe mode.
    c.send(&["MULTI"]);
    c.send(&["SUBSCRIBE", "ch"]);
    c.send(&["PSUBSCRIBE", "c*"]);
    c.send(&["SET", "w", "2"]);
    c.send(&["EXEC"]);
    assert_eq!(c.next(), ok);
    assert_eq!(
        c.next(),
        V::E("ERR SUBSCRIBE inside MULTI is not allowed".into())
    );
    assert_eq!(
        c.next(),
        V::E("ERR PSUBSCRIBE inside MULTI is not allowed".into())
    );
    assert_eq!(c.next(), queued);
    assert_eq!(
        c.next(),
        V::E("EXECABORT Transaction discarded because of previous errors.".into())
    );
    assert_eq!(c.call(&["GET", "w"], &mut pushes), b("1"));

    // The same from a subscribed RESP3 connection, where MULTI is allowed.
    assert!(matches!(c.call(&["HELLO", "3"], &mut pushes), V::M(_)));
    assert_eq!(
        c.sub(&["SUBSCRIBE", "a"]),
        V::P(vec![b("subscribe"), b("a"), V::I(1)])
    );
    assert_eq!(c.call(&["MULTI"], &mut pushes), ok);
    assert_eq!(
        c.sub(&["SUBSCRIBE", "b"]),
        V::E("ERR SUBSCRIBE inside MULTI is not allowed".into())
    );
    assert_eq!(
        c.call(&["EXEC"], &mut pushes),
        V::E("EXECABORT Transaction discarded because of previous errors.".into())
    );
    assert_eq!(
        c.sub(&["UNSUBSCRIBE"]),
        V::P(vec![b("unsubscribe"), b("a"), V::I(0)])
    );
    assert!(pushes.is_empty(), "{pushes:?}");
}
