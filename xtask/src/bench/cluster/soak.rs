//! The soak run: memory growth of the nodes under a longer steady write load.

use std::time::Duration;

use tokio::time::Instant;

use super::load::{closed_loop, Workload};
use super::procs::status_mib;
use super::{Settings, SOAK_SAMPLE_INTERVAL};
use crate::bench::report::Row;

/// 64 clients of SET for the soak duration, RSS of each node sampled every second; the
/// growth is the least-squares slope of each node's RSS over the run's second half (the
/// first half fills the key space and the log up to its first snapshots).
pub(super) async fn soak(
    s: &Settings,
    w: &Workload,
    pids: &[u32],
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    eprintln!("bench: cluster: soak {:?}", s.soak);
    let w = Workload {
        warmup: Duration::ZERO,
        duration: s.soak,
        ..w.clone()
    };
    let start = Instant::now();
    // Two series per node: all resident memory, and the anonymous part alone (heap), which
    // tells a leak from log segments the page cache has mapped in.
    let fields = ["VmRSS", "RssAnon"];
    let sampler = async {
        let mut samples: Vec<Vec<Vec<(f64, f64)>>> = vec![vec![Vec::new(); pids.len()]; 2];
        while start.elapsed() < s.soak {
            for (f, field) in fields.iter().enumerate() {
                for (i, &pid) in pids.iter().enumerate() {
                    if let Some(mib) = status_mib(pid, field) {
                        samples[f][i].push((start.elapsed().as_secs_f64(), mib));
                    }
                }
            }
            tokio::time::sleep(SOAK_SAMPLE_INTERVAL).await;
        }
        samples
    };
    let (load, samples) = tokio::join!(closed_loop(&w, 64), sampler);
    let load = load?;
    load.check("soak")?;
    let half = s.soak.as_secs_f64() / 2.0;
    for (f, name) in [
        "cluster_soak_rss_growth_MiB_per_min",
        "cluster_soak_rss_anon_growth_MiB_per_min",
    ]
    .into_iter()
    .enumerate()
    {
        let mut worst: Option<f64> = None;
        let mut notes = Vec::new();
        for (i, node) in samples[f].iter().enumerate() {
            let tail: Vec<(f64, f64)> = node.iter().copied().filter(|(t, _)| *t >= half).collect();
            if let (Some(slope), Some(first), Some(last)) =
                (slope(&tail), node.first(), node.last())
            {
                let per_min = slope * 60.0;
                worst = Some(worst.map_or(per_min, |w: f64| w.max(per_min)));
                notes.push(format!(
                    "node{} {:.0}->{:.0} MiB ({:+.2}/min)",
                    i + 1,
                    first.1,
                    last.1,
                    per_min
                ));
            }
        }
        match worst {
            Some(v) => rows.push(Row::new(name, "MiB/min", v).note(format!(
                "{}, largest of 3 nodes, SET 64 clients for {} s at {:.0} ops/s, slope over the second half; {}",
                fields[f],
                s.soak.as_secs(),
                load.ops_per_s(),
                notes.join(", ")
            ))),
            None => rows.push(Row::skipped(name, "MiB/min", "too few samples")),
        }
    }
    Ok(())
}

/// Least-squares slope of y over x.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}
