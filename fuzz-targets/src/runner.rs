//! The stable-toolchain fuzzer behind `cargo xtask fuzz`: no coverage feedback, so it runs
//! each target's corpus and seeds, then random mutations of them (bit flips, interesting
//! values, truncations, deletions, duplications, splices, protocol tokens, lengths as
//! digits) for a bounded time or count, from one seed. A panic anywhere in the process
//! (also on another thread, such as a server task) is a crash: the input is saved under
//! the crash directory and its path printed with the command that replays it.

use std::io::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use crate::Target;

/// Longest input made (libFuzzer's default `-max_len` is 4096; longer ones reach limits).
pub const INPUT_BYTES_MAX: usize = 64 << 10;
/// Mutations stacked on one input at most.
const MUTATIONS_PER_INPUT_MAX: u32 = 6;
/// Mutated inputs kept to mutate further (a random walk away from the seeds).
const POOL_EXTRA_MAX: usize = 256;
/// Files read from a corpus directory at most.
const CORPUS_FILES_MAX: usize = 10_000;

/// How long, from what, and where crashes go.
pub struct RunOptions {
    /// The seed of the mutation sequence.
    pub seed: u64,
    /// Stop after this long.
    pub duration: Duration,
    /// Stop after this many inputs (corpus included), if given: with the same seed and
    /// corpus, the same inputs in the same order.
    pub runs_max: Option<u64>,
    /// Where a crashing input is written.
    pub crash_dir: PathBuf,
}

/// What a run did.
pub struct RunReport {
    /// Inputs run.
    pub executions: u64,
    /// Inputs in the starting pool (corpus files and seeds).
    pub corpus_inputs: usize,
    /// The crashing input, saved, and the panic message.
    pub crash: Option<(PathBuf, String)>,
    /// Wall time taken.
    pub elapsed: Duration,
}

/// SplitMix64: a seed means the same sequence forever.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// An allocation above this is a crash, as for libFuzzer (its `-malloc_limit_mb` defaults
/// to its 2 GiB RSS limit): a bound missing on a length read from the input.
pub const ALLOC_BYTES_MAX: usize = 2 << 30;

/// The input being run and where to save it, for [`GuardedAlloc`], which cannot unwind.
static CURRENT: Mutex<Option<(&'static str, PathBuf, Vec<u8>)>> = Mutex::new(None);
static ARMED: AtomicBool = AtomicBool::new(false);

/// The system allocator, except that while a fuzz run is going an allocation above
/// [`ALLOC_BYTES_MAX`] saves the input being run and aborts (a failed allocation would
/// abort anyway, without saying which input did it). `cargo xtask fuzz` installs it.
pub struct GuardedAlloc;

fn oversized(bytes: usize) -> ! {
    ARMED.store(false, Ordering::SeqCst);
    eprintln!("CRASH: an allocation of {bytes} bytes (limit {ALLOC_BYTES_MAX})");
    if let Ok(current) = CURRENT.try_lock() {
        if let Some((target, dir, input)) = current.as_ref() {
            let path = save_crash(dir, target, input);
            eprintln!("input saved: {}", path.display());
            eprintln!(
                "replay: cargo xtask fuzz --target {target} --replay {}",
                path.display()
            );
        }
    }
    std::process::abort()
}

// SAFETY: every call is passed on to `System` unchanged; the check only reads the size.
unsafe impl std::alloc::GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > ALLOC_BYTES_MAX && ARMED.load(Ordering::Relaxed) {
            oversized(layout.size());
        }
        std::alloc::System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > ALLOC_BYTES_MAX && ARMED.load(Ordering::Relaxed) {
            oversized(layout.size());
        }
        std::alloc::System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        if new > ALLOC_BYTES_MAX && ARMED.load(Ordering::Relaxed) {
            oversized(new);
        }
        std::alloc::System.realloc(ptr, layout, new)
    }
}

static PANICKED: AtomicBool = AtomicBool::new(false);
static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

/// Records every panic, on any thread (printed as usual too).
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            default(info);
            let thread = std::thread::current()
                .name()
                .unwrap_or("unnamed")
                .to_string();
            let message = format!("panic on thread '{thread}': {info}");
            let mut slot = PANIC_MESSAGE.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(message);
            PANICKED.store(true, Ordering::SeqCst);
        }));
    });
}

/// Runs one input; the panic message if it (or anything else in the process) panicked.
pub fn run_one(target: &Target, input: &[u8]) -> Option<String> {
    install_panic_hook();
    let result = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    if result.is_err() || PANICKED.load(Ordering::SeqCst) {
        PANICKED.store(false, Ordering::SeqCst);
        let message = PANIC_MESSAGE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        return Some(message.unwrap_or_else(|| "panic".into()));
    }
    None
}

/// The files of a corpus directory, in name order (none if it does not exist).
pub fn read_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .take(CORPUS_FILES_MAX)
        .collect();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter(|b| b.len() <= INPUT_BYTES_MAX)
        .collect()
}

/// FNV-1a, to name saved inputs by their content.
pub fn content_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

const INTERESTING_BYTES: &[u8] = &[0, 1, 0x7f, 0x80, 0xfe, 0xff, b'\r', b'\n', b'-', b'0', b'9'];
const INTERESTING_U64: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x10000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 23,
    (8 << 20) + 1,
    (16 << 20) + 1,
    i64::MAX as u64,
    u64::MAX,
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>], tokens: &[&[u8]]) {
    let at = |rng: &mut Rng, v: &Vec<u8>| rng.below(v.len() + 1);
    match rng.below(12) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
        }
        2 => {
            let v = INTERESTING_U64[rng.below(INTERESTING_U64.len())];
            let bytes: Vec<u8> = match rng.below(5) {
                0 => (v as u32).to_be_bytes().to_vec(),
                1 => (v as u32).to_le_bytes().to_vec(),
                2 => v.to_le_bytes().to_vec(),
                3 => varint(v),
                _ => v.to_string().into_bytes(),
            };
            let i = at(rng, input);
            if rng.below(2) == 0 && i + bytes.len() <= input.len() {
                input[i..i + bytes.len()].copy_from_slice(&bytes);
            } else {
                input.splice(i..i, bytes);
            }
        }
        3 if !input.is_empty() => {
            let cut = rng.below(input.len());
            input.truncate(cut);
        }
        4 if !input.is_empty() => {
            let i = rng.below(input.len());
            let n = 1 + rng.below((input.len() - i).min(64));
            input.drain(i..i + n);
        }
        5 if !input.is_empty() => {
            let i = rng.below(input.len());
            let n = 1 + rng.below((input.len() - i).min(256));
            let copy = input[i..i + n].to_vec();
            let j = at(rng, input);
            let most = if rng.below(8) == 0 { 64 } else { 2 };
            let times = 1 + rng.below(most);
            for _ in 0..times {
                input.splice(j..j, copy.iter().copied());
            }
        }
        6 if !pool.is_empty() => {
            let other = &pool[rng.below(pool.len())];
            let i = at(rng, input);
            let j = rng.below(other.len() + 1);
            input.truncate(i);
            input.extend_from_slice(&other[j..]);
        }
        7 if !tokens.is_empty() => {
            let token = tokens[rng.below(tokens.len())];
            let i = at(rng, input);
            input.splice(i..i, token.iter().copied());
        }
        8 => {
            let n = 1 + rng.below(16);
            let i = at(rng, input);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            input.splice(i..i, bytes);
        }
        9 if !input.is_empty() => {
            // A decimal run replaced by another number: RESP and HTTP lengths.
            let i = rng.below(input.len());
            let digits = input[i..].iter().take_while(|b| b.is_ascii_digit()).count();
            let n = match rng.below(3) {
                0 => rng.below(10) as u64,
                1 => rng.below(1 << 16) as u64,
                _ => INTERESTING_U64[rng.below(INTERESTING_U64.len())],
            };
            input.splice(i..i + digits, n.to_string().into_bytes());
        }
        10 if !input.is_empty() => {
            let i = rng.below(input.len());
            let delta = if rng.below(2) == 0 { 1 } else { 0xff };
            input[i] = input[i].wrapping_add(delta);
        }
        _ => {
            if let Some(other) = pool.get(rng.below(pool.len())) {
                let i = at(rng, input);
                input.splice(i..i, other.iter().copied());
            }
        }
    }
    input.truncate(INPUT_BYTES_MAX);
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Runs `target` over its corpus directory and seeds, then over mutations of them, until
/// the time or count is up or an input crashes.
pub fn run(target: &Target, options: &RunOptions) -> RunReport {
    let started = Instant::now();
    let mut pool = read_corpus(&crate::corpus_dir(target.name));
    // The committed corpus starts as the seeds: skip those already in it.
    let known: std::collections::HashSet<u64> = pool.iter().map(|b| content_hash(b)).collect();
    pool.extend(
        (target.seeds)()
            .into_iter()
            .filter(|s| !known.contains(&content_hash(s))),
    );
    let corpus_inputs = pool.len();
    let base = pool.len();
    let mut rng = Rng(options.seed);
    let mut executions = 0u64;
    let mut crash = None;
    let done = |executions: u64| {
        options.runs_max.is_some_and(|m| executions >= m)
            || (options.runs_max.is_none() && started.elapsed() >= options.duration)
    };
    while !done(executions) {
        let input = if (executions as usize) < corpus_inputs {
            pool[executions as usize].clone()
        } else {
            let mut input = pool[rng.below(pool.len())].clone();
            for _ in 0..1 + rng.below(MUTATIONS_PER_INPUT_MAX as usize) {
                mutate(&mut rng, &mut input, &pool, target.tokens);
            }
            input
        };
        executions += 1;
        *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((target.name, options.crash_dir.clone(), input.clone()));
        ARMED.store(true, Ordering::SeqCst);
        let outcome = run_one(target, &input);
        ARMED.store(false, Ordering::SeqCst);
        if let Some(message) = outcome {
            let path = save_crash(&options.crash_dir, target.name, &input);
            crash = Some((path, message));
            break;
        }
        if executions as usize > corpus_inputs && rng.below(8) == 0 {
            if pool.len() < base + POOL_EXTRA_MAX {
                pool.push(input);
            } else {
                let i = base + rng.below(POOL_EXTRA_MAX);
                pool[i] = input;
            }
        }
    }
    RunReport {
        executions,
        corpus_inputs,
        crash,
        elapsed: started.elapsed(),
    }
}

/// Writes a crashing input to `dir/TARGET-HASH` and returns the path.
pub fn save_crash(dir: &Path, target: &str, input: &[u8]) -> PathBuf {
    let path = dir.join(format!("{target}-{:016x}", content_hash(input)));
    let saved = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::File::create(&path))
        .and_then(|mut f| f.write_all(input));
    if let Err(e) = saved {
        eprintln!(
            "could not save the crashing input to {}: {e}",
            path.display()
        );
    }
    path
}
