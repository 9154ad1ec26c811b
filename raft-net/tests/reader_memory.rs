//! The message reader's retention bound, measured: a decoded payload that outlives
//! everything else read with it keeps at most `max(READ_CHUNK_BYTES, PIN_RATIO_MAX * len)`
//! bytes of read buffer alive (see `raft_net::message_reader`). A counting allocator
//! measures what stays allocated.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{BufMut, Bytes, BytesMut};
use raft_core::{Entry, EntryPayload, Message, MessageBody};
use raft_net::frame::encode_frame;
use raft_net::message_reader::{MessageReader, PIN_RATIO_MAX, READ_CHUNK_BYTES};

/// Counts the bytes each thread has allocated and not freed, so that tests running in
/// parallel on other threads do not disturb the figure (everything here runs on one).
struct Counting;

thread_local! {
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.with(|l| l.set(l.get() + layout.size() as isize));
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.with(|l| l.set(l.get() - layout.size() as isize));
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.with(|l| l.set(l.get() + new_size as isize - layout.size() as isize));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> isize {
    LIVE_BYTES.with(Cell::get)
}

/// Heap the retained `Bytes` may hold besides its buffer (the shared reference count).
const SLACK_BYTES: usize = 256;

fn append(index: u64, payloads: &[usize]) -> Message {
    Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::AppendEntries {
            prev_log_index: index,
            prev_log_term: 3,
            entries: payloads
                .iter()
                .enumerate()
                .map(|(i, &n)| Entry {
                    index: index + 1 + i as u64,
                    term: 3,
                    payload: EntryPayload::Command(Bytes::from(vec![(n % 251) as u8; n])),
                })
                .collect(),
            leader_commit: index,
        },
    }
}

fn wire_of(msgs: &[Message]) -> BytesMut {
    let mut wire = BytesMut::new();
    for m in msgs {
        encode_frame(m, &mut wire, 1 << 24).unwrap();
    }
    wire
}

/// Read `wire` through a reader in reads of at most `step` bytes, keep the payload of the
/// entry with index `keep`, drop everything else (messages, reader), and return the payload
/// and the bytes that stay allocated because of it.
fn retained(wire: &[u8], step: usize, keep: u64) -> (Bytes, usize) {
    let before = live_bytes();
    let mut kept = None;
    {
        let mut reader = MessageReader::new(1 << 24, &[]);
        let mut at = 0;
        let mut out = Vec::new();
        while at < wire.len() {
            let mut room = reader.read_buf().unwrap();
            let n = step.min(room.remaining_mut()).min(wire.len() - at);
            room.put_slice(&wire[at..at + n]);
            at += n;
            while !reader.decode(&mut out, 64).unwrap() {
                pick(&mut out, keep, &mut kept);
            }
            pick(&mut out, keep, &mut kept);
        }
        reader.finish().unwrap();
    }
    let kept = kept.expect("the entry to keep was on the wire");
    let pinned = live_bytes() - before;
    assert!(pinned >= 0);
    (kept, pinned as usize)
}

fn pick(out: &mut Vec<Message>, keep: u64, kept: &mut Option<Bytes>) {
    for m in out.drain(..) {
        if let MessageBody::AppendEntries { entries, .. } = m.body {
            for e in entries {
                if let (true, EntryPayload::Command(b)) = (e.index == keep, e.payload) {
                    *kept = Some(b);
                }
            }
        }
    }
}

fn bound(payload_bytes: usize) -> usize {
    READ_CHUNK_BYTES.max(PIN_RATIO_MAX * payload_bytes) + SLACK_BYTES
}

#[test]
fn retained_payload_pins_at_most_the_bound() {
    // Small messages, many per read chunk: one kept 100-byte command keeps its chunk
    // (sliced, not copied) and nothing more, however the bytes arrived.
    let small: Vec<_> = (0..6000).map(|i| append(i * 10, &[100])).collect();
    let wire = wire_of(&small);
    assert!(wire.len() > 4 * READ_CHUNK_BYTES);
    for step in [1000, READ_CHUNK_BYTES, usize::MAX] {
        let (kept, pinned) = retained(&wire, step, 15_001);
        assert_eq!(kept.len(), 100);
        assert!(
            pinned <= bound(100),
            "a 100-byte payload keeps {pinned} bytes (reads of {step})"
        );
    }

    // A frame larger than a chunk, of many small commands and one large one: a kept small
    // command was copied (it would otherwise keep the whole frame), the large one keeps
    // the frame, which is less than PIN_RATIO_MAX times its size.
    let mut sizes = vec![1000; 1000];
    sizes.push(64 * 1024);
    let big = [append(0, &sizes), append(5000, &[100])];
    let wire = wire_of(&big);
    let (kept, pinned) = retained(&wire, usize::MAX, 500);
    assert_eq!(kept.len(), 1000);
    assert!(
        pinned <= bound(1000),
        "a 1000-byte payload keeps {pinned} bytes"
    );
    assert!(pinned < 2 * 1000 + SLACK_BYTES, "copied: {pinned} bytes");
    let (kept, pinned) = retained(&wire, usize::MAX, 1001);
    assert_eq!(kept.len(), 64 * 1024);
    assert!(
        pinned <= bound(64 * 1024),
        "a 64 KiB payload keeps {pinned} bytes"
    );
    assert!(
        pinned > wire.len() / 2,
        "sliced, keeping its frame: {pinned} bytes"
    );

    // The small message read right after the large frame is not in the large frame's
    // allocation: it keeps a chunk at most.
    let (kept, pinned) = retained(&wire, usize::MAX, 5001);
    assert_eq!(kept.len(), 100);
    assert!(pinned <= bound(100), "{pinned} bytes after a large frame");
}
