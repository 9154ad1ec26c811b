//! The standard `process_*` series (CPU time, resident memory, open and allowed file
//! descriptors, start time), read from `/proc` at each scrape as Prometheus' own clients do.
//! Where `/proc` is missing (not Linux) the series are left out.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Clock ticks per second in `/proc/self/stat`: 100 on every Linux architecture Rust
/// targets (`USER_HZ`, fixed in the kernel's ABI).
const USER_HZ: f64 = 100.0;
/// Page size assumed for `statm` (4 KiB: x86-64 and the usual aarch64 kernels).
const PAGE_BYTES: u64 = 4096;
/// Descriptors counted at most (a bound on a scrape's work).
const OPEN_FDS_COUNTED_MAX: usize = 1 << 20;

/// What `/proc` says about this process.
#[derive(Debug, Default, PartialEq)]
struct Process {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    start_time_seconds: f64,
    open_fds: u64,
    max_fds: Option<u64>,
}

/// Fields after the command name of `/proc/self/stat`: (utime + stime) and starttime ticks.
fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    // The command name is in parentheses and may hold spaces or parentheses itself.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is rest[0]: utime is field 14, stime 15, starttime 22.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some((utime + stime, start))
}

fn read() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (cpu_ticks, start_ticks) = parse_stat(&stat)?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut pages = statm.split_whitespace().map(|f| f.parse::<u64>().ok());
    let virtual_pages = pages.next()??;
    let resident_pages = pages.next()??;
    let boot_time: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.take(OPEN_FDS_COUNTED_MAX).count() as u64)
        .unwrap_or(0);
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))?
                .split_whitespace()
                .nth(3)?
                .parse()
                .ok()
        });
    Some(Process {
        cpu_seconds: cpu_ticks as f64 / USER_HZ,
        resident_bytes: resident_pages * PAGE_BYTES,
        virtual_bytes: virtual_pages * PAGE_BYTES,
        start_time_seconds: boot_time + start_ticks as f64 / USER_HZ,
        open_fds,
        max_fds,
    })
}

/// Encodes the `process_*` series, if `/proc` can be read.
pub fn encode(enc: &mut DescriptorEncoder) -> fmt::Result {
    let Some(p) = read() else {
        return Ok(());
    };
    enc.encode_descriptor(
        "process_cpu",
        "User and system CPU time spent.",
        Some(&Unit::Seconds),
        MetricType::Counter,
    )?
    .encode_counter::<NoLabelSet, _, u64>(&p.cpu_seconds, None)?;
    let gauges: [(&str, &str, Option<Unit>, f64); 4] = [
        (
            "process_resident_memory",
            "Resident memory size.",
            Some(Unit::Bytes),
            p.resident_bytes as f64,
        ),
        (
            "process_virtual_memory",
            "Virtual memory size.",
            Some(Unit::Bytes),
            p.virtual_bytes as f64,
        ),
        (
            "process_start_time",
            "Start time of the process since the Unix epoch.",
            Some(Unit::Seconds),
            p.start_time_seconds,
        ),
        (
            "process_open_fds",
            "Open file descriptors.",
            None,
            p.open_fds as f64,
        ),
    ];
    for (name, help, unit, v) in gauges {
        enc.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?
            .encode_gauge(&v)?;
    }
    if let Some(max) = p.max_fds {
        enc.encode_descriptor(
            "process_max_fds",
            "The limit on open file descriptors.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&max)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_a_command_name_with_spaces() {
        let stat = "42 (raft node) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 \
                    12345 1000 200 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((300, 12345)));
    }

    #[test]
    fn this_process_reads_as_alive() {
        if let Some(p) = read() {
            assert!(p.resident_bytes > 0 && p.open_fds > 0 && p.start_time_seconds > 1e9);
        }
    }
}
