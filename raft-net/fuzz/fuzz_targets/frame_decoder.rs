//! Arbitrary bytes into every frame decoder the transport uses: no panic, no unbounded
//! allocation; only frames or one clean error.
#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use raft_core::Message;
use raft_net::frame::FrameDecoder;
use raft_net::message_reader::MessageReader;
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

/// The message lane's reader, fed in reads of `step` bytes.
fn read(data: &[u8], step: usize) {
    let mut reader = MessageReader::new(1 << 16, &[]);
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        loop {
            out.clear();
            match reader.decode(&mut out, 64) {
                Ok(true) => break,
                Ok(false) => {}
                Err(_) => return,
            }
        }
        if at == data.len() {
            let _ = reader.finish();
            return;
        }
        let Ok(mut room) = reader.read_buf() else {
            return;
        };
        let n = step.min(room.remaining_mut()).min(data.len() - at);
        room.put_slice(&data[at..at + n]);
        at += n;
    }
}

/// A multi-group node's message lane: every frame decoded as an envelope.
fn read_envelopes(data: &[u8]) {
    let mut reader = MessageReader::new(1 << 16, data);
    let mut out = Vec::new();
    loop {
        out.clear();
        match reader.decode_envelopes(&mut out, 64) {
            Ok(false) => {}
            Ok(true) | Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    read_envelopes(data);
    let step = data.first().map_or(1, |&b| usize::from(b) + 1);
    read(data, step);
    read(data, usize::MAX);
    drain(FrameDecoder::<Message>::new(1 << 16), data);
    drain(FrameDecoder::<Hello>::new(1024), data);
    drain(FrameDecoder::<SnapshotFrame>::new(1 << 16), data);
});
