//! Length-prefixed TCP transport carrying [`raft_core::Message`]s, and snapshot files beside
//! them, between the nodes of one cluster.
//!
//! * **Framing** ([`frame`]): `[u32 BE length][version u8][postcard body]`, the length
//!   checked against `frame_bytes_max` before anything is allocated.
//! * **Handshake** ([`wire::Hello`]): cluster ID and both node IDs; a mismatch is refused
//!   with a reason that both ends log.
//! * **Messages**: per peer one connection, used both ways: a node answers on the
//!   connection its peer dialled rather than dialling its own, so replies travel with the
//!   requests and TCP's acknowledgements ride on them. A send on an idle connection is
//!   written by the caller at once; otherwise it joins a bounded queue that drops its
//!   oldest message when full, and everything queued goes out in one write. The receiver
//!   decodes every whole frame a read brought in and hands them to the host as one
//!   [`Incoming::Messages`] batch, straight into the host's channel
//!   ([`Transport::start_with_sender`]).
//! * **Snapshots**: connections of their own, so appends and heartbeats never wait
//!   behind snapshot bytes; raft-snapshot's files, read in CRC32-checked chunks as they go
//!   and written into the receiver's store as they arrive (a few chunks in memory per
//!   transfer, whatever the size), resumable from the receiver's offset, rate-limited, the
//!   whole file checked before it is installed. The latest snapshot per (peer, group)
//!   is sent; at most `snapshot_transfers_per_peer_max` transfers to a peer run at once,
//!   each on its own connection sharing the peer's rate limit evenly, the oldest waiting
//!   request next.
//! * **Many groups** ([`group`], [`group_codec`]): a transport started with
//!   [`Transport::start_groups`] carries the messages of any number of Raft groups, each
//!   tagged with its [`GroupId`], over the same one connection per peer, its queue (bounded
//!   in frames and in bytes) and its batched writes; heartbeats of many groups travel
//!   coalesced, one `(group, term, commit, read_seq)` entry each in one frame
//!   ([`TransportHandle::send_heartbeats`]), so that 10,000 idle groups cost one frame per
//!   tick per peer. Group 0 is the single-group API's: its frames are unchanged, and a
//!   single-group transport closes a connection that brings it another group's.
//!
//! A bad connection (garbage, oversized or truncated frame, a coalesced frame over
//! [`group::HEARTBEATS_PER_FRAME_MAX`], an unknown frame kind, wrong handshake, silence) is
//! closed with a counted, logged reason ([`ConnErrorKind`]); no other connection notices.
//!
//! The message lane's hot path avoids copies: [`message_codec`] encodes `Message`s
//! byte-for-byte as postcard would, but leaves command payloads of 2 KiB or more where they
//! are (one vectored write per batch); [`message_reader`] decodes every payload as a slice
//! of the bounded read chunk it arrived in (the retention bound is documented there).
//!
//! Benchmarks, each beside its raw-TCP baseline in the same run, with a ratio summary:
//! `cargo bench -p raft-net --bench transport` (`RAFT_NET_BENCH_WORKERS` sets the runtime's
//! worker threads, default 2), and for many groups `cargo bench -p raft-net --bench groups`.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use raft_core::{Message, MessageBody};
//! use raft_net::{Incoming, Transport, TransportConfig};
//!
//! let (a, _a_in) = Transport::start(TransportConfig::new(1, 9, "127.0.0.1:0".parse().unwrap()))
//!     .await.unwrap();
//! let (b, mut b_in) = Transport::start(TransportConfig::new(2, 9, "127.0.0.1:0".parse().unwrap()))
//!     .await.unwrap();
//! a.add_peer(2, b.local_addr());
//! b.add_peer(1, a.local_addr());
//! a.send(Message { from: 1, to: 2, term: 3, body: MessageBody::Heartbeat { commit: 0, read_seq: 1 } })
//!     .unwrap();
//! match b_in.recv().await.unwrap() {
//!     Incoming::Messages(batch) => assert_eq!(batch[0].term, 3),
//!     other => panic!("{other:?}"),
//! }
//! a.shutdown().await;
//! b.shutdown().await;
//! # });
//! ```

#![deny(missing_docs)]

pub mod addr;
pub mod config;
mod conn;
pub mod frame;
pub mod group;
pub mod group_codec;
pub mod message_codec;
pub mod message_reader;
pub mod stats;
pub mod tls;
mod transport;
pub mod wire;

pub use addr::PeerAddr;
pub use config::TransportConfig;
pub use frame::{FrameDecoder, FrameError, FORMAT_VERSION};
pub use group::{
    Envelope, GroupHeartbeat, GroupHeartbeatResponse, GroupId, GroupIncoming, GroupSnapshotStores,
    SINGLE_GROUP,
};
pub use stats::{ConnErrorKind, StatsSnapshot};
pub use transport::{Incoming, SendError, SnapshotSendError, Transport, TransportHandle, REFUSED};
