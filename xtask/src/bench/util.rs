//! Shared pieces: latency histograms, the scratch directory, the raw-disk baseline file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;

/// A histogram of nanoseconds, 1 ns to 60 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    // Saturating: an outlier beyond 60 s is still an outlier, not an error.
    h.saturating_record(d.as_nanos().max(1) as u64);
}

/// The value at quantile `q`, in microseconds.
pub fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// `<workspace>/target/bench`, or `$CARGO_TARGET_DIR/bench`: on the project's own filesystem,
/// which is the disk the log will live on.
pub fn bench_root() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("xtask lives in the workspace")
                .join("target")
        });
    target.join("bench")
}

/// A scratch directory removed on drop, so a failed run (a panic unwinds) leaves nothing.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// `target/bench/tmp-<pid>`; first removes the scratch dirs of earlier runs whose process
    /// is gone (killed before its drop ran).
    pub fn create(root: &Path) -> std::io::Result<ScratchDir> {
        std::fs::create_dir_all(root)?;
        for entry in std::fs::read_dir(root)?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("tmp-")) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let path = root.join(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The raw disk baseline: positioned writes + `fdatasync` into one file filled with real
/// zeroes and synced before any timing. Writes land on already-written blocks, so each sync
/// flushes data only (no allocation, no extent conversion): the fastest durable append this
/// disk offers. Appends wrap around at the end.
pub struct RawFile {
    file: File,
    offset: u64,
    capacity: u64,
}

impl RawFile {
    pub fn create(path: &Path, capacity: u64) -> std::io::Result<RawFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let zeroes = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < capacity {
            let n = (capacity - at).min(zeroes.len() as u64) as usize;
            file.write_all_at(&zeroes[..n], at)?;
            at += n as u64;
        }
        file.sync_all()?;
        Ok(RawFile {
            file,
            offset: 0,
            capacity,
        })
    }

    pub fn append_sync(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        assert!(
            bytes.len() as u64 <= self.capacity,
            "write larger than the file"
        );
        if self.offset + bytes.len() as u64 > self.capacity {
            self.offset = 0;
        }
        self.file.write_all_at(bytes, self.offset)?;
        self.offset += bytes.len() as u64;
        self.file.sync_data()
    }
}

/// Subject and baseline rounds alternate, starting with the subject on even rounds, so that
/// load from other users of this shared machine falls on both alike.
pub fn subject_first(round: usize) -> bool {
    round % 2 == 0
}
