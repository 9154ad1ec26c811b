//! `raft-node certs`: a cluster's CA, its nodes' certificates and an admin client
//! certificate, all in one folder, with the cluster's random 128-bit ID.
//!
//! Files (private keys written 0600, never overwritten):
//! - `cluster-id`: the cluster ID, 32 hex digits (also inside every node certificate);
//! - `ca.pem`, `ca-key.pem`: the CA; keep the key to add nodes later (running `certs` again
//!   on the same folder reuses the CA and the cluster ID);
//! - `node-N.pem`, `node-N-key.pem`: node N's certificate, naming it by the URI
//!   `urn:raft-node:<cluster-id>:<N>` (see `raft_net::tls`) and valid for the given hosts;
//! - `client-admin.pem`, `client-admin-key.pem`: a client certificate, common name
//!   `admin`, for clients of the client port and HTTP.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use raft_core::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The CA certificate's file name.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The cluster ID's file name.
pub const CLUSTER_ID_FILE: &str = "cluster-id";
/// The admin client certificate's file name.
pub const ADMIN_CERT_FILE: &str = "client-admin.pem";
/// The admin client key's file name.
pub const ADMIN_KEY_FILE: &str = "client-admin-key.pem";
/// Certificates are valid for this many years from the start of the current one.
pub const CERT_VALIDITY_YEARS: i32 = 10;

/// Node `id`'s certificate file name.
pub fn node_cert_file(id: NodeId) -> String {
    format!("node-{id}.pem")
}

/// Node `id`'s key file name.
pub fn node_key_file(id: NodeId) -> String {
    format!("node-{id}-key.pem")
}

/// What [`generate`] made.
#[derive(Debug)]
pub struct Generated {
    /// The cluster ID (new, or the folder's).
    pub cluster_id: u128,
    /// Every file written.
    pub written: Vec<PathBuf>,
}

/// A fresh random 128-bit cluster ID (never 0).
pub fn random_cluster_id() -> u128 {
    let mut bytes = [0u8; 16];
    loop {
        raft_net::tls::provider()
            .secure_random
            .fill(&mut bytes)
            .expect("the system's random source failed");
        let id = u128::from_be_bytes(bytes);
        if id != 0 {
            return id;
        }
    }
}

/// Create (or reuse) the CA in `out`, and a certificate for each of `nodes` valid for
/// `hosts` (IP addresses or DNS names), plus the admin client certificate if missing. A new
/// CA gets `cluster_id`, or a random one. Refuses to overwrite a node's files.
pub fn generate(
    out: &Path,
    cluster_id: Option<u128>,
    nodes: &[NodeId],
    hosts: &[String],
) -> Result<Generated, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut written = Vec::new();
    let ca_cert_path = out.join(CA_CERT_FILE);
    let ca_key_path = out.join(CA_KEY_FILE);
    let id_path = out.join(CLUSTER_ID_FILE);
    let (cluster_id, ca_key) = if ca_key_path.exists() {
        let text = std::fs::read_to_string(&id_path)
            .map_err(|e| format!("{}: {e} (the CA exists without it)", id_path.display()))?;
        let stored =
            parse_cluster_id(text.trim()).map_err(|e| format!("{}: {e}", id_path.display()))?;
        if cluster_id.is_some_and(|c| c != stored) {
            return Err(format!(
                "{} holds cluster {stored:032x}, not the one asked for",
                id_path.display()
            ));
        }
        let pem = std::fs::read_to_string(&ca_key_path)
            .map_err(|e| format!("{}: {e}", ca_key_path.display()))?;
        let key = KeyPair::from_pem(&pem).map_err(|e| format!("{}: {e}", ca_key_path.display()))?;
        (stored, key)
    } else {
        let cluster_id = cluster_id.unwrap_or_else(random_cluster_id);
        let key = KeyPair::generate().map_err(|e| format!("key generation: {e}"))?;
        let cert = ca_params(cluster_id)
            .self_signed(&key)
            .map_err(|e| format!("CA certificate: {e}"))?;
        write_new(&id_path, format!("{cluster_id:032x}\n").as_bytes(), 0o644)?;
        write_new(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&ca_cert_path, cert.pem().as_bytes(), 0o644)?;
        written.extend([id_path, ca_key_path, ca_cert_path]);
        (cluster_id, key)
    };
    // The issuer is rebuilt from the same parameters as the CA certificate: its name and
    // key identifier come out the same, so certificates signed later chain to it.
    let issuer = Issuer::new(ca_params(cluster_id), &ca_key);
    let mut sans = Vec::new();
    for h in hosts {
        sans.push(match h.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                h.as_str()
                    .try_into()
                    .map_err(|e| format!("host `{h}`: {e}"))?,
            ),
        });
    }
    for &node in nodes {
        if node == 0 {
            return Err("node ID 0 is reserved".into());
        }
        let mut params = leaf_params(format!("raft-node {node}"));
        params.subject_alt_names = sans.clone();
        let uri = raft_net::tls::node_uri(cluster_id, node);
        params.subject_alt_names.push(SanType::URI(
            uri.as_str().try_into().map_err(|e| format!("{e}"))?,
        ));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let files = issue(
            out,
            &node_cert_file(node),
            &node_key_file(node),
            params,
            &issuer,
        )?;
        written.extend(files);
    }
    if !out.join(ADMIN_CERT_FILE).exists() {
        let mut params = leaf_params("admin".to_string());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        written.extend(issue(
            out,
            ADMIN_CERT_FILE,
            ADMIN_KEY_FILE,
            params,
            &issuer,
        )?);
    }
    Ok(Generated {
        cluster_id,
        written,
    })
}

/// A cluster ID as written: 1 to 32 hex digits, optionally after `0x`; never 0.
pub fn parse_cluster_id(s: &str) -> Result<u128, String> {
    let hex = s.strip_prefix("0x").unwrap_or(s);
    if hex.is_empty() || hex.len() > 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{s}` is not a cluster ID (1 to 32 hex digits)"));
    }
    match u128::from_str_radix(hex, 16) {
        Ok(0) | Err(_) => Err(format!("`{s}` is not a cluster ID (0 is reserved)")),
        Ok(id) => Ok(id),
    }
}

fn issue(
    out: &Path,
    cert_name: &str,
    key_name: &str,
    params: CertificateParams,
    issuer: &Issuer<'_, &KeyPair>,
) -> Result<Vec<PathBuf>, String> {
    let (cert_path, key_path) = (out.join(cert_name), out.join(key_name));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(format!(
                "{} already exists; delete it to issue a new one",
                p.display()
            ));
        }
    }
    let key = KeyPair::generate().map_err(|e| format!("key generation: {e}"))?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|e| format!("{cert_name}: {e}"))?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(vec![cert_path, key_path])
}

fn validity(params: &mut CertificateParams) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // The start of the current year: a little slack for clocks behind ours.
    let year = 1970 + (secs / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + CERT_VALIDITY_YEARS, 1, 1);
}

fn ca_params(cluster_id: u128) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("raft-node cluster {cluster_id:032x} CA"),
    );
    params.distinguished_name = dn;
    // Signs end-entity certificates only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params);
    params
}

fn leaf_params(common_name: String) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    params
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_private_the_ca_is_reused_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let first = generate(dir.path(), None, &[1, 2], &["localhost".into()]).unwrap();
        let mode = |name: &str| {
            std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        for key in [CA_KEY_FILE, &node_key_file(1), ADMIN_KEY_FILE] {
            assert_eq!(mode(key), 0o600, "{key}");
        }
        let second = generate(dir.path(), None, &[3], &[]).unwrap();
        assert_eq!(second.cluster_id, first.cluster_id);
        assert_eq!(second.written.len(), 2, "{:?}", second.written);
        // Node 3, signed later by the reused CA, loads against the CA file.
        let setup = crate::tls::TlsConfig {
            ca_file: dir.path().join(CA_CERT_FILE),
            cert_file: dir.path().join(node_cert_file(3)),
            key_file: dir.path().join(node_key_file(3)),
            client_cert_required: true,
        }
        .load()
        .unwrap();
        assert_eq!(setup.identity, (first.cluster_id, 3));
        let again = generate(dir.path(), None, &[1], &[]).unwrap_err();
        assert!(again.contains("node-1.pem already exists"), "{again}");
        let other = generate(dir.path(), Some(5), &[4], &[]).unwrap_err();
        assert!(other.contains("not the one asked for"), "{other}");
    }

    #[test]
    fn cluster_ids_parse_as_hex() {
        assert_eq!(parse_cluster_id("0x1f").unwrap(), 0x1f);
        assert_eq!(
            parse_cluster_id(&format!("{:032x}", u128::MAX)).unwrap(),
            u128::MAX
        );
        for bad in ["", "0", "0x", "xyz", &"f".repeat(33)] {
            assert!(parse_cluster_id(bad).is_err(), "{bad}");
        }
        assert_ne!(random_cluster_id(), random_cluster_id());
    }
}
