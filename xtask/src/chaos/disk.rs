//! A small tmpfs as one node's data directory, so the run can fill its disk and give the space
//! back. Mounting needs root (and a kernel that lets us): without it the disk fault is skipped
//! with the reason logged. The mount is undone by a `Drop` guard, on success, failure, panic
//! and Ctrl-C alike (the caller drops the run on Ctrl-C), and a mount left behind by a run that
//! was killed outright is undone by the next run in the same folder.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Size of the node's file system: raft-log preallocates 64 MiB segments, and may hold a
/// couple while it compacts (the node snapshots every 2,000 entries); the ballast takes the
/// rest. A tmpfs takes memory only for what is written.
pub const TMPFS_SIZE_MIB: u64 = 256;
/// Name of the file that takes the free space.
const BALLAST: &str = "chaos-ballast";
/// Writes per fill at most: 1 MiB chunks for the bulk, then 4 KiB ones for the tail.
const FILL_WRITES_MAX: u64 = TMPFS_SIZE_MIB + 1024;

/// A tmpfs mounted at `path`, unmounted on drop.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `TMPFS_SIZE_MIB` at `path` (created if missing).
    pub fn mount(path: &Path) -> Result<Tmpfs, String> {
        // SAFETY: geteuid(2) reads a process attribute; no memory is touched.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={TMPFS_SIZE_MIB}m"))
            .arg("chaos-tmpfs")
            .arg(path)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Writes a ballast file until the file system refuses more; returns the bytes written.
    pub fn fill(&self) -> Result<u64, String> {
        // Never fill the disk under it: the mount may have gone (say, undone by hand).
        if !is_tmpfs(&self.path) {
            return Err(format!("{} is no longer a tmpfs", self.path.display()));
        }
        let path = self.path.join(BALLAST);
        let mut file = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let big = vec![0xA5u8; 1 << 20];
        let mut written = 0u64;
        let mut chunk: &[u8] = &big;
        for _ in 0..FILL_WRITES_MAX {
            match file.write(chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    if chunk.len() == 4096 {
                        break;
                    }
                    chunk = &big[..4096];
                }
                Err(e) => return Err(format!("filling {}: {e}", path.display())),
            }
        }
        Ok(written)
    }

    /// Removes the ballast, giving the space back.
    pub fn free(&self) -> Result<(), String> {
        match std::fs::remove_file(self.path.join(BALLAST)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing the ballast: {e}")),
        }
    }

    /// Removes everything in the file system (the mount point itself stays).
    pub fn wipe(&self) -> Result<(), String> {
        let entries = std::fs::read_dir(&self.path).map_err(|e| e.to_string())?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            let result = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            result.map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// Copies the contents somewhere that outlives the mount (for a failing run's artifacts).
    pub fn copy_to(&self, dest: &Path) -> Result<(), String> {
        let status = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", self.path.display()))
            .arg(dest)
            .status()
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("cp -a exited with {status}"))
        }
    }
}

fn is_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs(2) writes into the zeroed struct we pass; the path is a valid C string.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == TMPFS_MAGIC
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount(&self.path);
    }
}

fn unmount(path: &Path) {
    let plain = Command::new("umount").arg(path).output();
    if !plain.is_ok_and(|o| o.status.success()) {
        // Still busy (a process not yet reaped): detach it now, the kernel frees it later.
        let lazy = Command::new("umount").arg("-l").arg(path).output();
        if !lazy.is_ok_and(|o| o.status.success()) {
            eprintln!("xtask chaos: could not unmount {}", path.display());
        }
    }
}

/// Unmounts every file system mounted at or below `dir` (left behind by a run that was killed
/// before its guards could run).
pub fn unmount_stale(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut stale: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    // Deepest first.
    stale.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in stale {
        unmount(Path::new(m));
    }
}
