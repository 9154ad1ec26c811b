//! Opening a log directory whose one segment holds arbitrary bytes (beside a valid state
//! file): [`Log::open`] must succeed with whatever entries are intact, or fail with
//! `Corrupt` naming the file and offset, never panic. What an open log holds must read
//! back.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, HardState, LogStore, Membership};
use raft_log::{Log, LogError, Options};

/// Small segments, so that fuzzed files are whole segments; no background zero-filling
/// (recovery does not depend on it, and a thread per open would dominate the run time).
fn options() -> Options {
    Options {
        segment_bytes: 64 << 10,
        segment_zero_fill: false,
        segment_reuse: false,
        ..Options::default()
    }
}

/// The valid log every run starts from: its state file and its first segment.
struct Base {
    state: Vec<u8>,
    segment_name: String,
    segment: Vec<u8>,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = crate::scratch_dir().join("log-base");
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut log = Log::open(&dir, options()).expect("a fresh log");
            log.set_hard_state(HardState {
                term: 2,
                vote: Some(1),
                commit: 3,
            })
            .expect("hard state");
            let entries: Vec<Entry> = (1..=6)
                .map(|index| Entry {
                    index,
                    term: 1 + index / 4,
                    payload: match index {
                        1 => EntryPayload::Noop,
                        4 => EntryPayload::Membership(Membership::new_voters([1, 2, 3])),
                        _ => EntryPayload::Command(Bytes::from(vec![
                            index as u8;
                            20 * index as usize
                        ])),
                    },
                })
                .collect();
            log.append(&entries).expect("append");
            log.sync().expect("sync");
        }
        let segment_path = first_segment(&dir).expect("the log has a segment");
        let base = Base {
            state: std::fs::read(dir.join("state")).expect("the state file"),
            segment_name: segment_path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a segment name")
                .to_string(),
            segment: std::fs::read(&segment_path).expect("the segment"),
        };
        let _ = std::fs::remove_dir_all(&dir);
        base
    })
}

fn first_segment(dir: &Path) -> Option<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    segments.into_iter().next()
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let base = base();
    let dir = crate::scratch_dir().join("log-open");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the scratch log directory");
    std::fs::write(dir.join("state"), &base.state).expect("write the state file");
    let segment = dir.join(&base.segment_name);
    std::fs::write(&segment, data).expect("write the segment");
    match Log::open(&dir, options()) {
        Ok(log) => {
            let (first, last) = (log.first_index(), log.last_index());
            if first <= last {
                let entries = log
                    .entries(first, last + 1, usize::MAX)
                    .expect("an open log reads its entries");
                assert_eq!(entries.len() as u64, last + 1 - first);
                for (i, e) in entries.iter().enumerate() {
                    assert_eq!(e.index, first + i as u64);
                    assert_eq!(log.term(e.index).ok(), Some(e.term));
                }
            }
        }
        Err(LogError::Corrupt { path, .. }) => {
            assert!(
                path.starts_with(&dir),
                "a corrupt file outside the log: {path:?}"
            );
        }
        Err(LogError::Io { .. }) => {}
        Err(e) => panic!("opening a damaged segment: {e}"),
    }
}

/// Seeds: the valid segment, whole and cut at record boundaries and inside a record.
pub fn seeds() -> Vec<Vec<u8>> {
    let segment = &base().segment;
    // The records end well before the zero tail; keep the seeds small.
    let used = segment
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |p| (p + 8).min(segment.len()));
    vec![
        segment[..used].to_vec(),
        segment[..used / 2].to_vec(),
        segment[..40].to_vec(),
        segment[..used.min(segment.len())]
            .iter()
            .chain(std::iter::repeat_n(&0u8, 256))
            .copied()
            .collect(),
    ]
}
