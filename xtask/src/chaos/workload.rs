//! The clients' workload: reads, writes and compare-and-sets of a few shared keys, each
//! recorded with its invocation and completion times.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_client::{Client, ClientConfig};
use raft_core::rng::SplitMix64;

use super::history::{Outcome, Record, Shared};
use super::linearizability::RegisterOp;

/// Operations per client at most, whatever the duration.
const OPS_PER_CLIENT_MAX: u64 = 50_000;

pub(super) fn key_name(key: usize) -> String {
    format!("chaos-{key}")
}

pub(super) fn client_config(addrs: &[String], request_timeout_ms: u64) -> ClientConfig {
    let mut config = ClientConfig::new(addrs.iter().cloned());
    config.request_timeout_ms = request_timeout_ms;
    config.attempt_timeout_ms = request_timeout_ms.min(1000);
    config.connect_timeout_ms = 300;
    config
}

pub(super) async fn client_loop(
    id: usize,
    addrs: Vec<String>,
    keys: usize,
    seed: u64,
    deadline: Instant,
    shared: Arc<Shared>,
) {
    let client = Client::new(client_config(&addrs, 2000));
    let mut rng = SplitMix64::new(seed ^ ((id as u64 + 1) << 40));
    let mut last_seen: BTreeMap<usize, Option<String>> = BTreeMap::new();
    for n in 0..OPS_PER_CLIENT_MAX {
        if Instant::now() >= deadline {
            break;
        }
        let key = rng.range(0, keys as u64) as usize;
        let name = key_name(key);
        let value = format!("c{id}-{n}");
        let roll = rng.range(0, 100);
        let call_us = shared.now_us();
        let record = if roll < 50 {
            match client.get(name.clone()).await {
                Ok(v) => {
                    let v = v.map(|b| String::from_utf8_lossy(&b).into_owned());
                    last_seen.insert(key, v.clone());
                    (RegisterOp::Read(v), Outcome::Ok)
                }
                Err(_) => (RegisterOp::Read(None), Outcome::Failed),
            }
        } else if roll < 85 {
            let op = RegisterOp::Write(value.clone());
            match client.set(name.clone(), value.clone()).await {
                Ok(()) => (op, Outcome::Ok),
                Err(_) => (op, Outcome::Unknown),
            }
        } else {
            let expected = last_seen.get(&key).cloned().flatten();
            let result = client
                .compare_and_set(
                    name.clone(),
                    expected.clone().map(Into::into),
                    Some(value.clone().into()),
                )
                .await;
            match result {
                Ok((swapped, current)) => {
                    last_seen.insert(
                        key,
                        current.map(|b| String::from_utf8_lossy(&b).into_owned()),
                    );
                    (
                        RegisterOp::Cas {
                            expected,
                            new: Some(value),
                            swapped: Some(swapped),
                        },
                        Outcome::Ok,
                    )
                }
                Err(_) => (
                    RegisterOp::Cas {
                        expected,
                        new: Some(value),
                        swapped: None,
                    },
                    Outcome::Unknown,
                ),
            }
        };
        let return_us = shared.now_us();
        shared.history.lock().await.push(Record {
            key,
            op: record.0,
            call_us,
            return_us: Some(return_us),
            outcome: record.1,
        });
        tokio::time::sleep(Duration::from_millis(rng.range(1, 10))).await;
    }
}
