//! The checks a configuration must pass before a node starts: [`NodeConfig::validate`]
//! (everything that can be checked without binding sockets) and
//! [`NodeConfig::check_protected_mode`] (no listener reachable from other hosts without
//! TLS and credentials). Apart from the settings because the rules are longer than the
//! fields they check.

use std::collections::BTreeSet;

use super::{ConfigError, NodeConfig, RUNTIME_WORKER_THREADS_MAX};

impl NodeConfig {
    /// Checks everything that can be checked without binding sockets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::new("id", "0 is reserved; use 1 or more"));
        }
        if self.peers.is_empty() {
            return Err(ConfigError::new("peers", "the cluster list is empty"));
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for p in &self.peers {
            if p.id == 0 {
                return Err(ConfigError::new("peers", "peer ID 0 is reserved"));
            }
            if !ids.insert(p.id) {
                return Err(ConfigError::new("peers", format!("duplicate ID {}", p.id)));
            }
            if !addrs.insert(p.addr.clone()) {
                return Err(ConfigError::new(
                    "peers",
                    format!("duplicate peer address {}", p.addr),
                ));
            }
        }
        if self.own().is_none() {
            return Err(ConfigError::new(
                "peers",
                format!("own ID {} is missing from the peers list", self.id),
            ));
        }
        self.peer_listen_addr()?;
        self.client_listen_addr()?;
        if self
            .log_level
            .parse::<tracing::level_filters::LevelFilter>()
            .is_err()
        {
            return Err(ConfigError::new(
                "log_level",
                format!(
                    "`{}`: give error, warn, info, debug, trace or off",
                    self.log_level
                ),
            ));
        }
        if self.tick_interval_ms == 0 {
            return Err(ConfigError::new("tick_interval_ms", "must be at least 1"));
        }
        if !(1..=RUNTIME_WORKER_THREADS_MAX).contains(&self.runtime_worker_threads) {
            return Err(ConfigError::new(
                "runtime_worker_threads",
                format!("must be 1 to {RUNTIME_WORKER_THREADS_MAX}"),
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(ConfigError::new("request_timeout_ms", "must be at least 1"));
        }
        if let Some(voters) = &self.initial_voters {
            if voters.is_empty() {
                return Err(ConfigError::new(
                    "initial_voters",
                    "must name at least one voter",
                ));
            }
            if let Some(v) = voters.iter().find(|v| !ids.contains(v)) {
                return Err(ConfigError::new(
                    "initial_voters",
                    format!("{v} is not in the peers list"),
                ));
            }
        }
        if self.snapshot_entries_max == 0 {
            return Err(ConfigError::new(
                "snapshot_entries_max",
                "must be at least 1",
            ));
        }
        if self.proposals_in_flight_max == 0 {
            return Err(ConfigError::new(
                "proposals_in_flight_max",
                "must be at least 1",
            ));
        }
        self.limits.validate()?;
        let raft = self.raft_config();
        raft.validate().map_err(|e| {
            let field = e.0.split([' ', ':']).next().unwrap_or("raft").to_string();
            ConfigError::new(field, e.0)
        })?;
        Ok(())
    }

    /// Protected mode (Redis' is the model): a node that any other host can reach must
    /// have TLS and credentials, unless `insecure_allow_plaintext` says otherwise. Names the
    /// first non-loopback listener and says how to fix it.
    pub fn check_protected_mode(&self, credentials: bool, tls: bool) -> Result<(), ConfigError> {
        if self.insecure_allow_plaintext || (credentials && tls) {
            return Ok(());
        }
        let listeners = [
            ("client_addr", self.client_listen_addr().ok()),
            ("peer_addr", self.peer_listen_addr().ok()),
            ("http_addr", self.http_addr),
        ];
        let Some((field, addr)) = listeners
            .into_iter()
            .find_map(|(f, a)| a.filter(|a| !a.ip().is_loopback()).map(|a| (f, a)))
        else {
            return Ok(());
        };
        let mut missing = Vec::new();
        if !tls {
            missing.push(
                "TLS (create certificates with `raft-node certs` and give the node its \
                 certificate directory)",
            );
        }
        if !credentials {
            missing.push(
                "credentials (--auth-file FILE, auth_file in the config, \
                 RAFT_NODE_AUTH_FILE or RAFT_NODE_PASSWORD)",
            );
        }
        Err(ConfigError::new(
            field,
            format!(
                "protected mode: {addr} is reachable from other hosts but the node has no {}. \
                 Fix: listen on 127.0.0.1 only, or set up {}, or accept that anyone who \
                 can reach it may read, write and change the cluster's membership with \
                 --insecure-allow-plaintext (insecure_allow_plaintext = true)",
                if missing.len() == 2 {
                    "TLS and no credentials"
                } else if tls {
                    "credentials"
                } else {
                    "TLS"
                },
                missing.join(" and ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::base;
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let dup = base().replace("id = 2", "id = 1");
        let e = NodeConfig::from_toml(&dup).unwrap().validate().unwrap_err();
        assert_eq!(e.field, "peers");
        assert!(e.to_string().contains("duplicate ID 1"), "{e}");
        let missing = base().replacen("id = 1", "id = 3", 1);
        let e = NodeConfig::from_toml(&missing)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("own ID 3 is missing"), "{e}");
        let unknown = base().replacen("id = 1\n", "id = 1\nbogus = 2\n", 1);
        let e = NodeConfig::from_toml(&unknown).unwrap_err();
        assert_eq!(e.field, "bogus", "{e}");
        let ticks = base().replacen("id = 1\n", "id = 1\nelection_timeout_ticks_min = 1\n", 1);
        let e = NodeConfig::from_toml(&ticks)
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "election_timeout_ticks_min", "{e}");
    }

    #[test]
    fn protected_mode_refuses_open_listeners_without_tls_and_credentials() {
        let local = NodeConfig::from_toml(&base()).unwrap();
        local.check_protected_mode(false, false).unwrap();
        let open = base().replace("127.0.0.1:6001", "0.0.0.0:6001");
        let mut cfg = NodeConfig::from_toml(&open).unwrap();
        let e = cfg.check_protected_mode(false, false).unwrap_err();
        assert_eq!(e.field, "client_addr");
        for hint in [
            "0.0.0.0:6001",
            "127.0.0.1",
            "--auth-file",
            "raft-node certs",
            "--insecure-allow-plaintext",
        ] {
            assert!(e.message.contains(hint), "{e} should mention {hint}");
        }
        let e = cfg.check_protected_mode(true, false).unwrap_err();
        assert!(!e.message.contains("--auth-file"), "{e}");
        assert!(cfg.check_protected_mode(false, true).is_err());
        cfg.check_protected_mode(true, true).unwrap();
        cfg.insecure_allow_plaintext = true;
        cfg.check_protected_mode(false, false).unwrap();
        let http = base().replacen("id = 1\n", "id = 1\nhttp_addr = \"10.0.0.5:8001\"\n", 1);
        let e = NodeConfig::from_toml(&http)
            .unwrap()
            .check_protected_mode(false, false)
            .unwrap_err();
        assert_eq!(e.field, "http_addr", "{e}");
    }
}
