//! The systems ours is compared with on the same machine: a 3-member etcd whose runs
//! alternate with ours, and one durable Redis.

use std::path::Path;

use super::load::{Op, Proto, Workload};
use super::procs::find_on_path;
use super::{
    etcd, measure, measure_noted, op_name, open_loop_only, print_measured, redis, scrape, Measured,
    Results, RunNote, Servers, Settings, ETCD_QUICK, REDIS_WORKLOADS,
};
use crate::bench::Ctx;

/// The 3-member etcd the closed-loop workloads alternate with, run by run.
pub(super) struct Rival {
    etcd: etcd::Etcd,
    leader: String,
    servers: Servers,
}

impl Rival {
    async fn start(ctx: &Ctx, binary: &Path) -> Result<Rival, String> {
        let mut etcd = etcd::start(binary, &ctx.scratch)?;
        let leader = etcd.wait_leader().await?;
        let servers = Servers {
            pids: etcd.procs.pids(),
            system: scrape::System::Etcd,
            metrics_addrs: etcd.client_addrs.clone(),
        };
        Ok(Rival {
            etcd,
            leader,
            servers,
        })
    }

    pub(super) fn runs(&self, s: &Settings, op: Op, clients: usize) -> bool {
        s.etcd_all || ETCD_QUICK.contains(&(op, clients))
    }

    pub(super) async fn measure(
        &mut self,
        s: &Settings,
        op: Op,
        clients: usize,
    ) -> Result<(Measured, RunNote), String> {
        let w = Workload {
            proto: Proto::EtcdHttp,
            op,
            addr: self.leader.clone(),
            tls: None,
            warmup: s.warmup,
            duration: s.duration,
            seed: clients as u64,
        };
        let out = measure_noted(&w, clients, &self.servers, "etcd").await?;
        self.etcd.procs.check_alive()?;
        Ok(out)
    }
}

/// Starts etcd when it is on PATH and the run wants it; otherwise says why not in
/// `results.etcd_why`.
pub(super) async fn start_rival(ctx: &Ctx, s: &Settings, results: &mut Results) -> Option<Rival> {
    if open_loop_only() {
        return None;
    }
    if s.rows.is_some() {
        results.etcd_why = Some("skipped: XTASK_BENCH_CLUSTER_ROWS selects rows".into());
        return None;
    }
    let Some(etcd_bin) = find_on_path("etcd") else {
        results.etcd_why =
            Some("skipped: etcd not on PATH (Debian: apt-get install etcd-server)".into());
        return None;
    };
    eprintln!("bench: cluster: 3 etcd members, alternating with ours run by run");
    results.etcd_version = Some(etcd::version(&etcd_bin));
    match Rival::start(ctx, &etcd_bin).await {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("bench: etcd: {e}");
            results.etcd_why = Some(format!("skipped: etcd did not start: {e}"));
            None
        }
    }
}

pub(super) async fn run_redis(
    ctx: &Ctx,
    s: &Settings,
    binary: &Path,
    results: &mut Results,
) -> Result<(), String> {
    let mut redis = redis::start(binary, &ctx.scratch)?;
    redis.wait_ready().await?;
    let servers = Servers {
        pids: redis.procs.pids(),
        system: scrape::System::Redis,
        metrics_addrs: Vec::new(),
    };
    for (op, c) in REDIS_WORKLOADS {
        let w = Workload {
            proto: Proto::Resp,
            op,
            addr: redis.addr.clone(),
            tls: None,
            warmup: s.warmup,
            duration: s.duration,
            seed: 7_000 + c as u64,
        };
        let m = measure(&w, c, &servers).await?;
        print_measured("redis", op, c, &m);
        results.redis.insert((op_name(op), c), m);
        redis.procs.check_alive()?;
    }
    Ok(())
}
