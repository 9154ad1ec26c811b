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
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    pub(super) clients: usize,
    /// Keys the clients share.
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
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
}
