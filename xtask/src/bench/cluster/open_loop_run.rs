//! The open-loop runs: requests due at a fixed rate whether or not earlier ones were
//! answered, latency from each request's due time, so queueing is not hidden.

use tokio::time::Instant;

use super::load::{self, open_loop, Op, Workload};
use super::procs::{self, cpu_s_sum};
use super::rows::counter_note;
use super::{op_name, scrape, Results, Servers, OPEN_LOOP_CLIENTS_REF, OPEN_LOOP_CONNS};
use crate::bench::report::Row;
use crate::bench::util::us;

/// One open-loop run of `w` at `fraction` of the 64-client closed-loop throughput, its
/// rows named with `tag`.
pub(super) async fn run(
    op: Op,
    (fraction, tag): (f64, &str),
    w: &Workload,
    servers: &Servers,
    results: &Results,
    only_open_loop: bool,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    let reference = reference_override(op).unwrap_or_else(|| {
        results.ours[&(op_name(op), OPEN_LOOP_CLIENTS_REF)]
            .load
            .ops_per_s()
    });
    let rate = reference * fraction;
    let p = format!("cluster_{}_open_loop{tag}", op_name(op));
    let counters_before = scrape::counters(servers.system, &servers.metrics_addrs).await;
    let cpu_before = cpu_s_sum(&servers.pids);
    let own = std::process::id();
    let (own_before, wall) = (procs::cpu_s(own), Instant::now());
    let o = open_loop(w, rate, OPEN_LOOP_CONNS).await?;
    eprintln!(
        "bench: cluster {} open loop at {rate:.0}/s ({:.0}% of 64 clients): p50 {:.0} us, p99 {:.0} us; connection wait p99 {:.0} us, pacing lateness p99 {:.0} us",
        op_name(op),
        fraction * 100.0,
        us(&o.load.hist, 0.5),
        us(&o.load.hist, 0.99),
        us(&o.conn_wait, 0.99),
        us(&o.pacing_lateness, 0.99),
    );
    if only_open_loop {
        print_stalls(&o);
    }
    let cpu_after = cpu_s_sum(&servers.pids);
    if let (Some(b), Some(a)) = (own_before, procs::cpu_s(own)) {
        // A generator near one full core is itself the bottleneck of an open-loop run.
        rows.push(
            Row::new(
                format!("{p}_generator_cpu_cores"),
                "cores",
                (a - b) / wall.elapsed().as_secs_f64(),
            )
            .note("this process (one runtime thread) during the run; 1.0 = saturated"),
        );
    }
    let counters_after = scrape::counters(servers.system, &servers.metrics_addrs).await;
    if let (Some(b), Some(a), true) = (cpu_before, cpu_after, o.load.ops_all > 0) {
        // Whole run over all its operations: requests that arrive spread out are batched
        // less than a closed loop's bursts, and this shows what that costs.
        rows.push(
            Row::new(
                format!("{p}_node_cpu_s_per_1000_ops"),
                "s",
                (a - b) / o.load.ops_all as f64 * 1000.0,
            )
            .vs(
                format!("cluster_{}_64_clients_node_cpu_s_per_1000_ops", op_name(op)),
                results.ours[&(op_name(op), OPEN_LOOP_CLIENTS_REF)]
                    .cpu_s_per_1000_ops()
                    .unwrap_or(f64::NAN),
            )
            .note("3 nodes summed"),
        );
        rows.push(
            Row::new(
                format!("{p}_node_cpu_cores"),
                "cores",
                (a - b) / wall.elapsed().as_secs_f64(),
            )
            .note(
                "3 nodes summed, during the run: with the generator's, against the machine's cores",
            ),
        );
    }
    o.load
        .check(&format!("open-loop {} at {rate:.0}/s", op_name(op)))?;
    rows.push(
        Row::new(format!("{p}_rate_ops_per_s"), "ops/s", o.achieved_per_s)
            .vs(format!("{p}_scheduled_ops_per_s"), rate)
            .note(format!(
                "{:.0}% of the 64-client closed-loop throughput, over {OPEN_LOOP_CONNS} connections",
                fraction * 100.0
            )),
    );
    for (q, qn) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p999")] {
        rows.push(
            Row::new(format!("{p}_latency_us_{qn}"), "us", us(&o.load.hist, q))
                .note("from each request's due time"),
        );
    }
    if op == Op::Set && tag.is_empty() {
        rows.push(
            Row::new(
                "target_set_open_loop_latency_us_p99_vs_5ms",
                "us",
                us(&o.load.hist, 0.99),
            )
            .vs("goal_us", 5_000.0)
            .note("from each request's due time, at half the 64-client closed-loop rate"),
        );
    }
    if let (Some(b), Some(a)) = (&counters_before, &counters_after) {
        for counter in ["syncs", "peer_messages"] {
            if let (Some(x), Some(y), true) = (b.get(counter), a.get(counter), o.load.ops_all > 0) {
                rows.push(
                    Row::new(
                        format!("{p}_{counter}_per_1000_ops"),
                        "count",
                        (y - x) / o.load.ops_all as f64 * 1000.0,
                    )
                    .note(counter_note(counter)),
                );
            }
        }
    }
    rows.push(
        Row::new(
            format!("{p}_send_delay_us_p99"),
            "us",
            us(&o.send_delay, 0.99),
        )
        .note("due time to write: the two below together"),
    );
    rows.push(
        Row::new(
            format!("{p}_conn_wait_us_p99"),
            "us",
            us(&o.conn_wait, 0.99),
        )
        .note(format!("due time to a free connection: all {OPEN_LOOP_CONNS} busy with earlier requests (the servers' back-pressure)")),
    );
    rows.push(
        Row::new(
            format!("{p}_pacing_lateness_us_p99"),
            "us",
            us(&o.pacing_lateness, 0.99),
        )
        .note("the generator's own lateness: due (or connection free) to write; tokio timers tick in 1 ms"),
    );
    if let (Some(b), Some(a)) = (&counters_before, &counters_after) {
        // The nodes' runtime tasks blocked in log calls during the run (warm-up included):
        // a block stops the whole node, and shows up in the tail above.
        let delta = |k: &str| Some(a.get(k)? - b.get(k)?);
        for ms in [1, 5, 25] {
            if let (Some(all), Some(within)) = (delta("syncs"), delta(&format!("syncs_{ms}ms"))) {
                rows.push(
                    Row::new(format!("{p}_node_syncs_over_{ms}ms"), "count", all - within)
                        .note(format!("sync jobs (off the runtime task, but every commit waits for them) over {ms} ms; of {all:.0}, 3 nodes summed")),
                );
            }
        }
        for (kind, what) in [
            (
                "write",
                "log writes of one Ready (append, incl. segment roll; hard state)",
            ),
            ("compact", "log compaction or snapshot installation"),
        ] {
            let Some(all) = delta(&format!("{kind}_blocks")) else {
                continue;
            };
            for ms in [1, 5] {
                if let Some(within) = delta(&format!("{kind}_blocks_{ms}ms")) {
                    rows.push(
                        Row::new(
                            format!("{p}_node_{kind}_blocks_over_{ms}ms"),
                            "count",
                            all - within,
                        )
                        .note(format!(
                            "runtime task blocked > {ms} ms in {what}; of {all:.0}, 3 nodes summed"
                        )),
                    );
                }
            }
        }
    }
    Ok(())
}

/// Episodes of the open-loop run (runs of consecutive [`load::STALL_WINDOW`]s whose worst
/// request took over 10 ms), with their wall-clock start, to line up with the nodes'
/// logs and counters: one long episode is a stall, many short ones a saturated server.
fn print_stalls(o: &load::OpenLoopResult) {
    const STALL_US: u64 = 10_000;
    const EPISODES_SHOWN_MAX: usize = 20;
    let mut episodes: Vec<(usize, usize, u64)> = Vec::new();
    for (i, &worst) in o.worst_us_by_window.iter().enumerate() {
        if worst <= STALL_US {
            continue;
        }
        match episodes.last_mut() {
            Some((_, end, w)) if *end + 1 == i => {
                *end = i;
                *w = (*w).max(worst);
            }
            _ => episodes.push((i, i, worst)),
        }
    }
    let window_ms = load::STALL_WINDOW.as_millis() as usize;
    for &(first, last, worst) in episodes.iter().take(EPISODES_SHOWN_MAX) {
        let at = o.started_at + load::STALL_WINDOW * first as u32;
        let unix_s = at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        eprintln!(
            "bench:   slow from {} ms for {} ms (unix {unix_s:.2} s): worst {worst} us",
            first * window_ms,
            (last + 1 - first) * window_ms
        );
    }
    if episodes.len() > EPISODES_SHOWN_MAX {
        eprintln!(
            "bench:   ... {} more slow episodes",
            episodes.len() - EPISODES_SHOWN_MAX
        );
    }
}

/// `XTASK_BENCH_OPEN_LOOP_REFERENCE_SET` / `_GET` (ops/s): the throughput the open-loop
/// rates are fractions of, instead of this run's 64-client figure, so that runs of two
/// builds compare at the same rate.
fn reference_override(op: Op) -> Option<f64> {
    let var = format!(
        "XTASK_BENCH_OPEN_LOOP_REFERENCE_{}",
        op_name(op).to_uppercase()
    );
    std::env::var(var)
        .ok()?
        .parse()
        .ok()
        .filter(|&r: &f64| r > 0.0)
}
