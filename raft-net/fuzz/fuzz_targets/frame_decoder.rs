//! Arbitrary bytes into every frame decoder the transport uses: no panic, no unbounded
//! allocation; only frames or one clean error.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use raft_core::Message;
use raft_net::frame::FrameDecoder;
use raft_net::wire::{Hello, SnapshotFrame};
use tokio_util::codec::Decoder;

fn drain<T>(mut dec: FrameDecoder<T>, data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => return,
        }
    }
    let _ = dec.decode_eof(&mut buf);
}

fuzz_target!(|data: &[u8]| {
    drain(FrameDecoder::<Message>::messages(1 << 16), data);
    drain(FrameDecoder::<Message>::new(1 << 16), data);
    drain(FrameDecoder::<Hello>::new(1024), data);
    drain(FrameDecoder::<SnapshotFrame>::new(1 << 16), data);
});
