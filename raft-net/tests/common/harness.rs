//! The harness the transport tests share: a transport on loopback with fast back-off, the
//! host's inbox one message at a time, heartbeats numbered for order checks, and a raw
//! client that performs the handshake by hand.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use raft_core::{Message, MessageBody};
use raft_net::frame::{encode_frame, FrameDecoder};
use raft_net::wire::{Hello, HelloReply, Lane};
use raft_net::{Incoming, Transport, TransportConfig, TransportHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::Receiver;
use tokio::time::timeout;
use tokio_util::codec::FramedRead;

pub const CLUSTER: u128 = 0xC0FFEE;

pub fn config(id: u64) -> TransportConfig {
    let mut c = TransportConfig::new(id, CLUSTER, "127.0.0.1:0".parse().unwrap());
    c.backoff_min_ms = 5;
    c.backoff_max_ms = 100;
    c
}

/// The host's end, one item at a time: each message of a batch comes out as a batch of one.
pub struct Inbox {
    rx: Receiver<Incoming>,
    ready: VecDeque<Incoming>,
}

impl Inbox {
    pub async fn recv(&mut self) -> Option<Incoming> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            match self.rx.recv().await? {
                Incoming::Messages(batch) => {
                    assert!(!batch.is_empty(), "empty batch delivered");
                    self.ready
                        .extend(batch.into_iter().map(|m| Incoming::Messages(vec![m])));
                }
                snapshot => return Some(snapshot),
            }
        }
    }
}

pub async fn start(cfg: TransportConfig) -> (TransportHandle, Inbox) {
    let (h, rx) = Transport::start(cfg).await.unwrap();
    (
        h,
        Inbox {
            rx,
            ready: VecDeque::new(),
        },
    )
}

pub fn heartbeat(from: u64, to: u64, seq: u64) -> Message {
    Message {
        from,
        to,
        term: 1,
        body: MessageBody::Heartbeat {
            commit: seq,
            read_seq: seq,
        },
    }
}

pub fn seq_of(incoming: Incoming) -> u64 {
    match incoming {
        Incoming::Messages(batch) => match &batch[..] {
            [Message {
                body: MessageBody::Heartbeat { read_seq, .. },
                ..
            }] => *read_seq,
            other => panic!("unexpected {other:?}"),
        },
        other => panic!("unexpected {other:?}"),
    }
}

pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn raw_handshake(addr: SocketAddr, hello: &Hello) -> (TcpStream, HelloReply) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = BytesMut::new();
    encode_frame(hello, &mut buf, 1024).unwrap();
    s.write_all(&buf).await.unwrap();
    let mut rd = FramedRead::new(&mut s, FrameDecoder::<HelloReply>::new(1024));
    let reply = timeout(Duration::from_secs(5), rd.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(rd.read_buffer().is_empty());
    (s, reply)
}

/// Reads until the server closes the connection; returns how long that took.
pub async fn closed_by_server(s: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut sink = [0u8; 256];
    loop {
        match timeout(Duration::from_secs(5), s.read(&mut sink)).await {
            Err(_) => panic!("server did not close the connection"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

pub fn hello(from: u64, to: u64, lane: Lane) -> Hello {
    Hello {
        cluster_id: CLUSTER,
        from,
        to,
        lane,
    }
}
