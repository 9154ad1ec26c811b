//! The cluster ID: a random 128-bit value every member of one cluster shares, kept in
//! `DATA_DIR/CLUSTER_ID`. Peers of another cluster are refused at the handshake (raft-net),
//! and a data directory is never used for another cluster than its own.
//!
//! Where it comes from, in order: `DATA_DIR/CLUSTER_ID` (written on a node's first start);
//! the configuration (`cluster_id`, `--cluster-id`); the node's TLS certificate, which
//! `raft-node certs` issues with the cluster ID in it. A node refuses to start when two of
//! these disagree. A new single-node cluster draws a random one; a new cluster of several
//! members must be given one (they would not agree otherwise): `raft-node certs` prints it,
//! and `raft-node dev` draws one for a fresh data folder.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::config::{ConfigError, NodeConfig};

/// The file in the data directory holding the cluster ID.
pub const CLUSTER_ID_FILE: &str = "CLUSTER_ID";
/// The ID data directories written before the ID was stored had (the old default).
pub const LEGACY_CLUSTER_ID: u128 = 1;

/// A cluster ID; written as 32 hex digits, read as 1 to 32 (optionally after `0x`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterId(pub u128);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for ClusterId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        crate::certs::parse_cluster_id(s.trim()).map(ClusterId)
    }
}

impl serde::Serialize for ClusterId {
    /// As 32 hex digits, the form it is read back from.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClusterId {
    /// A hex string (`"3f2a..."`), or for old files an integer (`cluster_id = 1`).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Hex(String),
            Int(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Hex(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::Int(0) => Err(serde::de::Error::custom("0 is not a cluster ID")),
            Raw::Int(n) => Ok(ClusterId(u128::from(n))),
        }
    }
}

impl ClusterId {
    /// A fresh random ID.
    pub fn random() -> ClusterId {
        ClusterId(crate::certs::random_cluster_id())
    }
}

/// The ID this node runs with (see the module doc), stored in `DATA_DIR/CLUSTER_ID` if it
/// was not yet. `from_cert` is the cluster named by the node's TLS certificate.
pub fn resolve(config: &NodeConfig, from_cert: Option<u128>) -> Result<u128, ConfigError> {
    let path = config.data_dir.join(CLUSTER_ID_FILE);
    let configured = config.cluster_id.map(|c| c.0);
    if let (Some(c), Some(t)) = (configured, from_cert) {
        if c != t {
            return Err(ConfigError::new(
                "cluster_id",
                format!(
                    "{} is configured, but the TLS certificate is of cluster {}",
                    ClusterId(c),
                    ClusterId(t)
                ),
            ));
        }
    }
    let wanted = configured.or(from_cert);
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            text.parse::<ClusterId>()
                .map_err(|e| ConfigError::new("cluster_id", format!("{}: {e}", path.display())))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(ConfigError::new(
                "cluster_id",
                format!("cannot read {}: {e}", path.display()),
            ))
        }
    };
    if let Some(stored) = stored {
        return match wanted {
            Some(w) if w != stored.0 => Err(ConfigError::new(
                "cluster_id",
                format!(
                    "{} belongs to cluster {stored}, not {}: a data directory serves one \
                     cluster only",
                    config.data_dir.display(),
                    ClusterId(w)
                ),
            )),
            _ => Ok(stored.0),
        };
    }
    let id = match wanted {
        Some(w) => w,
        None if has_earlier_data(&config.data_dir) => {
            tracing::warn!(
                data_dir = %config.data_dir.display(),
                "data written before cluster IDs were stored: keeping the old default ID 1; \
                 set a random cluster_id on a new cluster instead"
            );
            LEGACY_CLUSTER_ID
        }
        None if config.peers.len() == 1 && !config.join => ClusterId::random().0,
        None => {
            return Err(ConfigError::new(
                "cluster_id",
                "a new cluster of several members needs one shared cluster ID: give every \
                 member the same `cluster_id` (--cluster-id), e.g. the one `raft-node certs` \
                 prints, or 32 hex digits from `openssl rand -hex 16`",
            ))
        }
    };
    store(&path, id)?;
    Ok(id)
}

/// Whether the directory holds anything of an earlier run (besides its lock file).
fn has_earlier_data(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name() != "LOCK" && e.file_name() != CLUSTER_ID_FILE)
    })
}

fn store(path: &Path, id: u128) -> Result<(), ConfigError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{}", ClusterId(id))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        ConfigError::new(
            "cluster_id",
            format!("cannot write {}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerConfig;

    fn config(dir: &Path, members: u64) -> NodeConfig {
        let peers = (1..=members)
            .map(|i| {
                format!("{i}=127.0.0.1:{}", 7000 + i)
                    .parse::<PeerConfig>()
                    .unwrap()
            })
            .collect();
        NodeConfig::with_defaults(1, dir.to_path_buf(), peers)
    }

    #[test]
    fn stored_configured_and_certified_ids_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        // Several members and nothing to agree on: refused, with the way out.
        let e = resolve(&config(dir.path(), 3), None).unwrap_err();
        assert!(e.message.contains("raft-node certs"), "{e}");
        // The certificate's cluster is taken and stored.
        assert_eq!(resolve(&config(dir.path(), 3), Some(0xabc)).unwrap(), 0xabc);
        let text = std::fs::read_to_string(dir.path().join(CLUSTER_ID_FILE)).unwrap();
        assert_eq!(text.trim(), format!("{:032x}", 0xabc));
        // Later starts read it; another configured ID is refused.
        assert_eq!(resolve(&config(dir.path(), 3), None).unwrap(), 0xabc);
        let mut other = config(dir.path(), 3);
        other.cluster_id = Some(ClusterId(0xdef));
        let e = resolve(&other, None).unwrap_err();
        assert!(e.message.contains("belongs to cluster"), "{e}");
        // A configured ID that the certificate contradicts.
        let e = resolve(&other, Some(0xabc)).unwrap_err();
        assert!(e.message.contains("TLS certificate"), "{e}");
    }

    #[test]
    fn single_nodes_draw_a_random_id_and_old_data_keeps_the_old_default() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let ia = resolve(&config(a.path(), 1), None).unwrap();
        let ib = resolve(&config(b.path(), 1), None).unwrap();
        assert_ne!(ia, ib);
        assert_ne!(ia, LEGACY_CLUSTER_ID);
        let old = tempfile::tempdir().unwrap();
        std::fs::create_dir(old.path().join("log")).unwrap();
        assert_eq!(
            resolve(&config(old.path(), 3), None).unwrap(),
            LEGACY_CLUSTER_ID
        );
    }

    #[test]
    fn ids_parse_from_hex_strings_and_old_integers() {
        #[derive(Deserialize)]
        struct T {
            id: ClusterId,
        }
        let t: T = toml::from_str("id = \"0x1f\"").unwrap();
        assert_eq!(t.id, ClusterId(0x1f));
        let t: T = toml::from_str("id = 7").unwrap();
        assert_eq!(t.id, ClusterId(7));
        assert!(toml::from_str::<T>("id = \"zz\"").is_err());
        assert!(toml::from_str::<T>("id = 0").is_err());
    }
}
