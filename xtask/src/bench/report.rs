//! Rows of the report: printed as one table and written to `target/bench/report.json`.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

/// One figure. `ratio` is `value / baseline_value`, so for latencies above 1 is slower than
/// the baseline and for throughputs below 1 is slower.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub unit: &'static str,
    /// `None` only for a skipped measurement: a gap in the report must never look like a number.
    pub value: Option<f64>,
    pub baseline: Option<(String, f64)>,
    /// Why a row is skipped, or a caveat a reader must see beside the number.
    pub note: Option<String>,
}

impl Row {
    pub fn new(name: impl Into<String>, unit: &'static str, value: f64) -> Row {
        Row {
            name: name.into(),
            unit,
            value: Some(value),
            baseline: None,
            note: None,
        }
    }

    pub fn skipped(name: impl Into<String>, unit: &'static str, why: impl Into<String>) -> Row {
        Row {
            name: name.into(),
            unit,
            value: None,
            baseline: None,
            note: Some(why.into()),
        }
    }

    pub fn vs(mut self, baseline_name: impl Into<String>, baseline_value: f64) -> Row {
        self.baseline = Some((baseline_name.into(), baseline_value));
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = Some(note.into());
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        match (self.value, &self.baseline) {
            (Some(v), Some((_, b))) if *b != 0.0 && b.is_finite() => Some(v / b),
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "unit": self.unit,
            "value": self.value,
            "baseline_name": self.baseline.as_ref().map(|b| b.0.clone()),
            "baseline_value": self.baseline.as_ref().map(|b| b.1),
            "ratio": self.ratio(),
        });
        // Only skipped or caveated rows carry it, so scripts reading the six fixed keys are
        // unaffected.
        if let Some(note) = &self.note {
            v["note"] = json!(note);
        }
        v
    }
}

/// Three significant digits at any magnitude: throughputs run to millions, latencies to
/// fractions of a microsecond, and a fixed number of decimals would lose one or the other.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a >= 1000.0 {
        format!("{:.0}", v)
    } else if a >= 100.0 {
        format!("{:.1}", v)
    } else if a >= 10.0 {
        format!("{:.2}", v)
    } else {
        format!("{:.3}", v)
    }
}

pub fn print_table(rows: &[Row]) {
    let name_w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let base_w = rows
        .iter()
        .filter_map(|r| r.baseline.as_ref().map(|b| b.0.len()))
        .max()
        .unwrap_or(8)
        .max(8);
    println!(
        "{:<name_w$}  {:>12}  {:<16}  {:<base_w$}  {:>12}  {:>7}",
        "name", "value", "unit", "baseline", "base_value", "ratio"
    );
    println!("{}", "-".repeat(name_w + base_w + 59));
    for r in rows {
        let value = r.value.map_or_else(|| "skipped".to_string(), fmt_num);
        let (bn, bv) = r
            .baseline
            .as_ref()
            .map_or(("-".to_string(), "-".to_string()), |(n, v)| {
                (n.clone(), fmt_num(*v))
            });
        let ratio = r
            .ratio()
            .map_or_else(|| "-".to_string(), |x| format!("{x:.3}"));
        let mut line = format!(
            "{:<name_w$}  {:>12}  {:<16}  {:<base_w$}  {:>12}  {:>7}",
            r.name, value, r.unit, bn, bv, ratio
        );
        if let Some(note) = &r.note {
            line.push_str("  # ");
            line.push_str(note);
        }
        println!("{line}");
    }
}

pub fn write_json(path: &Path, rows: &[Row]) -> std::io::Result<()> {
    let doc = Value::Array(rows.iter().map(Row::to_json).collect());
    // Written aside and renamed, so a script never reads a half-written report.
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    serde_json::to_writer_pretty(&mut f, &doc)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// One of the targets (issue 7's, raised by issue 16), checked on a row's ratio.
struct Target {
    what: &'static str,
    /// Rows that can meet it; the best ratio among those present counts.
    rows: &'static [&'static str],
    /// The baseline a row must be measured against to count (a row may carry another
    /// baseline when this one was not measured, e.g. etcd's latency without the floor).
    baseline: Option<&'static str>,
    ratio_min: Option<f64>,
    ratio_max: Option<f64>,
}

const TARGETS: [Target; 8] = [
    Target {
        what: "1-client write latency p50 vs the floor (fdatasync p50 + 2 idle RTT p50)",
        rows: &["cluster_set_1_clients_latency_us_p50"],
        baseline: Some("floor_commit_us"),
        ratio_min: None,
        ratio_max: Some(1.5),
    },
    Target {
        what: "64-client write throughput vs etcd",
        rows: &["target_set_64_clients_vs_etcd"],
        baseline: None,
        ratio_min: Some(10.0),
        ratio_max: None,
    },
    Target {
        what: "64-client write throughput, RESP vs the native protocol",
        rows: &["cluster_set_64_clients_resp_ops_per_s"],
        baseline: None,
        ratio_min: Some(0.95),
        ratio_max: None,
    },
    Target {
        what: "16-client linearizable read throughput vs etcd",
        rows: &["target_get_16_clients_vs_etcd"],
        baseline: None,
        ratio_min: Some(15.0),
        ratio_max: None,
    },
    Target {
        what: "open-loop write p99 at half the 64-client rate vs 5 ms",
        rows: &["target_set_open_loop_latency_us_p99_vs_5ms"],
        baseline: None,
        ratio_min: None,
        ratio_max: Some(1.0),
    },
    Target {
        what: "64-client write throughput over RESP vs one durable Redis (appendfsync always)",
        rows: &["target_set_64_clients_resp_vs_redis"],
        baseline: None,
        ratio_min: Some(1.0),
        ratio_max: None,
    },
    Target {
        what: "core alone, 256 clients, vs 1,000,000 commits/s",
        rows: &[
            "core_1worker_256_clients_commits_per_s",
            "core_2workers_256_clients_commits_per_s",
        ],
        baseline: None,
        ratio_min: Some(1.0),
        ratio_max: None,
    },
    Target {
        what: "snapshot install over the lane vs raw loopback copy + fsync (issue 17)",
        rows: &[
            "snapshot_install_512mib_mb_per_s",
            "snapshot_install_128mib_mb_per_s",
        ],
        baseline: Some("raw_tcp_copy_fsync"),
        ratio_min: Some(0.8),
        ratio_max: None,
    },
];

/// The markdown the README's "Figures" section is made from: the targets, met or
/// missed, then every row. Written beside report.json so that a rerun regenerates it.
pub fn markdown(machine: &str, rows: &[Row]) -> String {
    let mut md = String::new();
    md.push_str(&format!("Machine: {machine}\n\n"));
    md.push_str("| target | figure | baseline | ratio | goal | met |\n|---|---|---|---|---|---|\n");
    for t in &TARGETS {
        let best = rows
            .iter()
            .filter(|r| t.rows.contains(&r.name.as_str()))
            .filter(|r| {
                t.baseline
                    .is_none_or(|b| r.baseline.as_ref().is_some_and(|(n, _)| n == b))
            })
            .filter_map(|r| r.ratio().map(|x| (r, x)))
            .max_by(|a, b| {
                let (a, b) = (a.1, b.1);
                // Lower is better for an upper bound.
                if t.ratio_max.is_some() {
                    b.total_cmp(&a)
                } else {
                    a.total_cmp(&b)
                }
            });
        let goal = match (t.ratio_min, t.ratio_max) {
            (Some(m), _) => format!(">= {m}"),
            (_, Some(m)) => format!("<= {m}"),
            _ => "-".into(),
        };
        match best {
            Some((r, x)) => {
                let met = t.ratio_min.is_none_or(|m| x >= m) && t.ratio_max.is_none_or(|m| x <= m);
                let (bn, bv) = r.baseline.clone().unwrap_or_default();
                md.push_str(&format!(
                    "| {} | {} {} | {} {} | {:.2} | {} | {} |\n",
                    t.what,
                    fmt_num(r.value.unwrap_or(f64::NAN)),
                    r.unit,
                    bn,
                    fmt_num(bv),
                    x,
                    goal,
                    if met { "yes" } else { "no" }
                ));
            }
            None => md.push_str(&format!(
                "| {} | not measured | - | - | {goal} | - |\n",
                t.what
            )),
        }
    }
    md.push_str(&cluster_table(rows));
    md.push_str("\n| name | value | unit | baseline | baseline value | ratio | note |\n");
    md.push_str("|---|---|---|---|---|---|---|\n");
    for r in rows {
        let (bn, bv) = r
            .baseline
            .as_ref()
            .map_or(("".to_string(), "".to_string()), |(n, v)| {
                (n.clone(), fmt_num(*v))
            });
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.value.map_or_else(|| "skipped".into(), fmt_num),
            r.unit,
            bn,
            bv,
            r.ratio().map_or_else(String::new, |x| format!("{x:.3}")),
            r.note.as_deref().unwrap_or("").replace('|', "/")
        ));
    }
    md
}

/// The end-to-end workloads side by side with etcd's, one line each.
fn cluster_table(rows: &[Row]) -> String {
    let get = |name: &str| rows.iter().find(|r| r.name == name).and_then(|r| r.value);
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_string(), fmt_num);
    let mut md = String::from(
        "\n| workload | ops/s | p50 us | p99 us | p999 us | node CPU s per 1,000 ops | etcd ops/s | etcd p50 us | etcd CPU s per 1,000 ops | ops/s ours/etcd |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut any = false;
    for (op, what) in [("set", "SET"), ("get", "linearizable GET")] {
        for c in [1, 16, 64, 256] {
            let p = format!("cluster_{op}_{c}_clients");
            let e = format!("etcd_{op}_{c}_clients");
            let ours = get(&format!("{p}_ops_per_s"));
            if ours.is_none() {
                continue;
            }
            any = true;
            let theirs = get(&format!("{e}_ops_per_s"));
            md.push_str(&format!(
                "| {what}, {c} client{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                if c == 1 { "" } else { "s" },
                cell(ours),
                cell(get(&format!("{p}_latency_us_p50"))),
                cell(get(&format!("{p}_latency_us_p99"))),
                cell(get(&format!("{p}_latency_us_p999"))),
                cell(get(&format!("{p}_node_cpu_s_per_1000_ops"))),
                cell(theirs),
                cell(get(&format!("{e}_latency_us_p50"))),
                cell(get(&format!("{e}_cpu_s_per_1000_ops"))),
                ours.zip(theirs)
                    .filter(|(_, t)| *t > 0.0)
                    .map_or_else(|| "-".to_string(), |(o, t)| format!("{:.2}", o / t)),
            ));
        }
    }
    if any {
        md
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_judges_targets_on_ratios() {
        let rows = vec![
            Row::new("cluster_set_1_clients_latency_us_p50", "us", 300.0)
                .vs("floor_commit_us", 200.0),
            Row::new("target_set_64_clients_vs_etcd", "ops/s", 40_000.0).vs("etcd", 10_000.0),
            Row::skipped("target_get_16_clients_vs_etcd", "ops/s", "no etcd"),
        ];
        let md = markdown("test machine", &rows);
        assert!(md.contains("| 1-client write latency p50 vs the floor (fdatasync p50 + 2 idle RTT p50) | 300.0 us | floor_commit_us 200.0 | 1.50 | <= 1.5 | yes |"), "{md}");
        assert!(md.contains("| 4.00 | >= 10 | no |"), "{md}");
        assert!(
            md.contains("| 16-client linearizable read throughput vs etcd | not measured |"),
            "{md}"
        );
        assert!(
            md.contains("| target_get_16_clients_vs_etcd | skipped | ops/s |  |  |  | no etcd |"),
            "{md}"
        );
    }

    #[test]
    fn the_latency_target_counts_only_against_the_floor() {
        // Without the baseline section the row carries etcd's latency as its baseline: a
        // ratio against etcd says nothing about the floor.
        let rows = vec![
            Row::new("cluster_set_1_clients_latency_us_p50", "us", 500.0)
                .vs("etcd_set_1_clients_latency_us_p50", 1000.0),
        ];
        let md = markdown("test machine", &rows);
        assert!(
            md.contains("| 1-client write latency p50 vs the floor (fdatasync p50 + 2 idle RTT p50) | not measured |"),
            "{md}"
        );
    }
}
