//! TLS to the nodes' client ports: a `rustls::ClientConfig` trusting the cluster's CA, with
//! an optional client certificate.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use raft_client::{Client, ClientConfig, Credentials};
//! let mut config = ClientConfig::new(["node1.example:6380"]);
//! config.tls = Some(raft_client::tls::client_config_from_pem_files(
//!     "certs/ca.pem".as_ref(),
//!     None,
//! )?);
//! config.credentials = Some(Credentials::new(None, std::env::var("RAFT_NODE_PASSWORD")?));
//! let client = Client::new(config);
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;

/// A TLS configuration that could not be built, naming the file at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsConfigError(pub String);

/// Every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsConfigError(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsConfigError(format!(
            "{}: no certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsConfigError(format!("{}: {e}", path.display())))
}

/// A client configuration that trusts the CA certificates in `ca_file` and, given a
/// certificate chain and key file, presents them to the node.
pub fn client_config_from_pem_files(
    ca_file: &Path,
    client_cert_and_key: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_file)? {
        roots
            .add(cert)
            .map_err(|e| TlsConfigError(format!("{}: {e}", ca_file.display())))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsConfigError(e.to_string()))?
    .with_root_certificates(roots);
    let config = match client_cert_and_key {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| TlsConfigError(format!("{}: {e}", cert.display())))?,
    };
    Ok(Arc::new(config))
}

/// The name a node's certificate must carry for `addr` (`host:port`): its host, an IP
/// address or a DNS name.
pub fn server_name(addr: &str) -> std::io::Result<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((host, _port)) => host,
        None => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr}: not a host name for TLS: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_addresses() {
        assert!(matches!(
            server_name("127.0.0.1:6380").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:6380").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert_eq!(
            server_name("node1.example:6380").unwrap(),
            ServerName::try_from("node1.example").unwrap()
        );
        assert!(server_name("bad name:1").is_err());
    }

    #[test]
    fn missing_files_are_named() {
        let e = client_config_from_pem_files(Path::new("/nonexistent/ca.pem"), None).unwrap_err();
        assert!(e.0.contains("/nonexistent/ca.pem"), "{e}");
    }
}
