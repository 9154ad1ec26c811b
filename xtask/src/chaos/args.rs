//! The command line of `cargo xtask chaos`.

use std::time::Duration;

/// `cargo xtask chaos`: real `raft-node` processes under faults; a failing run prints the
/// line that replays its schedule.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct Args {
    /// Cluster size, 3 to 7.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(3..=7))]
    pub(super) nodes: u64,
    /// Length of the faulty phase, in seconds (`60s` or `60`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(super) duration: Duration,
    /// Seed of the fault schedule and the clients' operations.
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = CLIENTS_DEFAULT, value_parser = at_least_one)]
    pub(super) clients: usize,
    /// Keys the clients share.
    #[arg(long, default_value_t = KEYS_DEFAULT, value_parser = at_least_one)]
    pub(super) keys: usize,
    /// Do not build: use target/release/raft-node as it is.
    #[arg(long)]
    pub(super) no_build: bool,
    /// How to connect the nodes.
    #[arg(long, value_enum, default_value_t = NetMode::Auto)]
    pub(super) net: NetMode,
    /// Extra arguments for every node (`--node-arg --storage=memory` checks that the checks
    /// catch a node that forgets its log on restart).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub(super) node_args: Vec<String>,
}

/// How to connect the nodes (`--net`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NetMode {
    /// Network namespaces when root and they can be made, else proxies.
    Auto,
    Proxy,
    Netns,
}

/// Clients and keys when not given (also what the replay line leaves out).
const CLIENTS_DEFAULT: usize = 4;
const KEYS_DEFAULT: usize = 4;

impl Args {
    /// The command that replays this run's schedule and workload (both drawn from the seed,
    /// the cluster size and the duration; the workload also from clients and keys).
    pub(super) fn replay_command(&self) -> String {
        let mut line = format!(
            "cargo xtask chaos --nodes {} --duration {}s --seed {}",
            self.nodes,
            self.duration.as_secs(),
            self.seed
        );
        if self.clients != CLIENTS_DEFAULT {
            line += &format!(" --clients {}", self.clients);
        }
        if self.keys != KEYS_DEFAULT {
            line += &format!(" --keys {}", self.keys);
        }
        line += match self.net {
            NetMode::Auto => "",
            NetMode::Proxy => " --net proxy",
            NetMode::Netns => " --net netns",
        };
        for a in &self.node_args {
            line += &format!(" --node-arg {a}");
        }
        line
    }
}

fn at_least_one(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_duration(v: &str) -> Result<Duration, String> {
    let secs: u64 = v
        .strip_suffix('s')
        .unwrap_or(v)
        .parse()
        .map_err(|e| format!("{e} (give seconds, like 60s)"))?;
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(line: &str) -> Result<Args, String> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("chaos").chain(line.split_whitespace()))
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flags_parse_and_bad_ones_are_refused() {
        let a = parse(
            "--nodes 3 --duration 60s --seed 7 --net proxy --no-build --node-arg --storage=memory",
        )
        .unwrap();
        assert_eq!(a.node_args, ["--storage=memory"]);
        assert_eq!(
            (a.nodes, a.seed, a.net, a.no_build),
            (3, 7, NetMode::Proxy, true)
        );
        assert_eq!(a.duration, Duration::from_secs(60));
        assert_eq!(parse("").unwrap().net, NetMode::Auto);
        assert_eq!(parse("--net netns").unwrap().net, NetMode::Netns);
        assert!(parse("--net tc")
            .unwrap_err()
            .contains("[possible values: auto, proxy, netns]"));
        assert!(parse("--nodes 9").is_err());
        assert!(parse("--seed").unwrap_err().contains("a value is required"));
        assert!(parse("--clients 0").is_err());
        assert_eq!(
            parse("--duration 90").unwrap().duration,
            Duration::from_secs(90)
        );
        assert!(parse("--frobnicate").is_err());
    }

    #[test]
    fn the_replay_line_parses_back_to_the_same_run() {
        for line in [
            "--nodes 3 --duration 60s --seed 1",
            "--nodes 7 --duration 5s --seed 9 --clients 2 --keys 8 --net proxy --node-arg --storage=memory",
            "--seed 4 --net netns",
        ] {
            let a = parse(line).unwrap();
            let replay = a.replay_command();
            let b = parse(replay.strip_prefix("cargo xtask chaos").unwrap()).unwrap();
            assert_eq!(
                (b.nodes, b.duration, b.seed, b.clients, b.keys, b.net, &b.node_args),
                (a.nodes, a.duration, a.seed, a.clients, a.keys, a.net, &a.node_args),
                "{replay}"
            );
        }
    }
}
