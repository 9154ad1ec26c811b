//! The bodies of the fuzz targets, one function per hostile input a node reads, shared by
//! the coverage-guided libFuzzer targets under `fuzz/` (nightly, `cargo fuzz run NAME`) and
//! by `cargo xtask fuzz` (stable: corpus plus random mutations, see [`runner`]).
//!
//! Each target takes arbitrary bytes and must not panic, abort, or hang on any of them: a
//! panic is a bug in the code under test (or a broken invariant the target checks, such as
//! "an incremental parse gives what a whole one gives"). Each module also makes its seed
//! corpus: small valid inputs, so that mutations start from the shapes real peers send.

use std::path::PathBuf;

pub mod http;
pub mod log_open;
pub mod log_record;
pub mod native;
pub mod peer;
pub mod resp;
pub mod runner;
pub mod snapshot;

/// One fuzz target.
pub struct Target {
    /// Its name: the libFuzzer target's, and the corpus directory's under `fuzz/corpus/`.
    pub name: &'static str,
    /// What it reads.
    pub about: &'static str,
    /// Runs one input; panics on a bug.
    pub run: fn(&[u8]),
    /// Small valid inputs to start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Byte strings worth inserting (protocol tokens), for the stable mutator.
    pub tokens: &'static [&'static [u8]],
}

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "resp",
        about: "RESP requests: RespParser::parse, whole and in pieces, then resp::to_command",
        run: resp::run,
        seeds: resp::seeds,
        tokens: resp::TOKENS,
    },
    Target {
        name: "native",
        about: "native client frames: LengthDelimitedCodec, RequestFrame, the ops they carry",
        run: native::run,
        seeds: native::seeds,
        tokens: &[],
    },
    Target {
        name: "http",
        about: "raw HTTP requests to the node's HTTP service",
        run: http::run,
        seeds: http::seeds,
        tokens: http::TOKENS,
    },
    Target {
        name: "peer",
        about: "peer frames: handshake, snapshot lane, message lane (MessageReader, codec)",
        run: peer::run,
        seeds: peer::seeds,
        tokens: &[],
    },
    Target {
        name: "snapshot",
        about: "snapshot restore: the key-value body, and the snapshot file format",
        run: snapshot::run,
        seeds: snapshot::seeds,
        tokens: &[],
    },
    Target {
        name: "log_record",
        about: "raft-log batch records, segment headers and state slots",
        run: log_record::run,
        seeds: log_record::seeds,
        tokens: &[],
    },
    Target {
        name: "log_open",
        about: "opening a log directory whose segment bytes are these",
        run: log_open::run,
        seeds: log_open::seeds,
        tokens: &[],
    },
];

/// The target called `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz-targets lies in the workspace")
        .to_path_buf()
}

/// Where the committed corpus of `target` lives.
pub fn corpus_dir(target: &str) -> PathBuf {
    workspace_root().join("fuzz").join("corpus").join(target)
}

/// A scratch directory for targets that need files, under tmpfs when there is one: one
/// per process, `fuzz-targets-PID`. A fuzzer ends with `exit`, which runs no destructors,
/// so each process removes the directories of processes that are gone when it starts.
pub(crate) fn scratch_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let parent = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let pid = name.to_str().and_then(|n| n.strip_prefix("fuzz-targets-"));
                if let Some(pid) = pid.filter(|p| p.parse::<u32>().is_ok()) {
                    if !std::path::Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
        }
        parent.join(format!("fuzz-targets-{}", std::process::id()))
    });
    // Again on every call: `remove_scratch_dir` may have run since.
    std::fs::create_dir_all(dir).expect("a scratch directory");
    dir
}

/// Removes this process's scratch directory (the stable runner calls it when done).
pub fn remove_scratch_dir() {
    let dir = std::env::temp_dir();
    for parent in [std::path::Path::new("/dev/shm"), dir.as_path()] {
        let _ =
            std::fs::remove_dir_all(parent.join(format!("fuzz-targets-{}", std::process::id())));
    }
}
