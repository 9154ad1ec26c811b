//! What `/proc` says about a process: CPU time, memory, start time. Every reader returns
//! `None` when the process is gone or the file does not parse.

/// The fields of `/proc/PID/stat` after the command name (field 2, which may hold spaces
/// and parentheses: the fields are counted after its last `)`). Index 0 is field 3, the
/// state.
fn stat_fields_after_name(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Ticks of the kernel's CPU clock per second (`_SC_CLK_TCK`, 100 on Linux).
fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User + system CPU seconds used so far by `pid` (its threads included).
pub fn cpu_s(pid: u32) -> Option<f64> {
    let fields = stat_fields_after_name(pid)?;
    // utime and stime are fields 14 and 15 of the line.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks_per_s())
}

/// The CPU seconds of every pid, summed; `None` if any is unreadable.
pub fn cpu_s_sum(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&p| cpu_s(p)).sum()
}

/// When `pid` started, in clock ticks since boot (field 22); `None` if it is gone or a
/// zombie. With the PID, it names one process even after the PID is reused.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields_after_name(pid)?;
    if fields.first().map(String::as_str) == Some("Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// A `/proc/PID/status` field given in kB (`VmRSS`, `VmHWM`, `RssAnon`...), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// [`status_kib`] in MiB.
pub fn status_mib(pid: u32, field: &str) -> Option<f64> {
    status_kib(pid, field).map(|kib| kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_memory_and_start() {
        let pid = std::process::id();
        // Burn a little CPU so the counter is not necessarily zero; it must parse either way.
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_s(pid).is_some_and(|s| s >= 0.0));
        assert!(cpu_s_sum(&[pid, pid]).is_some());
        let rss = status_mib(pid, "VmRSS").expect("VmRSS of this process");
        let hwm = status_mib(pid, "VmHWM").expect("VmHWM of this process");
        assert!(rss > 0.0 && hwm >= rss, "rss {rss} hwm {hwm}");
        assert!(status_kib(pid, "NoSuchField").is_none());
        // "VmRSS" must not match "VmRSSx"-like prefixes of other fields: only whole names.
        assert!(status_kib(pid, "Vm").is_none());
        assert!(start_ticks(pid).is_some());
    }

    #[test]
    fn a_process_that_is_gone_reads_as_none() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(start_ticks(pid), None);
        assert_eq!(cpu_s(pid), None);
        assert_eq!(status_kib(pid, "VmRSS"), None);
    }
}
