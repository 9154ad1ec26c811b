//! TLS settings of a node (`[tls]` in the config file, `--tls-*` flags), loaded once at start
//! into the rustls configurations every listener and dialler uses ([`TlsSetup`]).
//!
//! ```toml
//! [tls]
//! ca_file = "certs/ca.pem"          # the cluster's CA: peers and client certificates
//! cert_file = "certs/node-1.pem"    # this node's certificate (names its node ID)
//! key_file = "certs/node-1-key.pem"
//! client_cert_required = false      # clients of the client port must present one
//! ```
//!
//! The peer port always uses mutual TLS against the CA, and a peer's node ID is the one in
//! its certificate (`raft_net::tls`). `raft-node certs` creates the CA and the node
//! certificates ([`crate::certs`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft_core::NodeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde::Deserialize;

use crate::config::ConfigError;

/// The `[tls]` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) trusted for peers and client certificates.
    pub ca_file: PathBuf,
    /// PEM file of this node's certificate chain (the node's own certificate first).
    pub cert_file: PathBuf,
    /// PEM file of this node's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Clients of the client port (and HTTP) must present a certificate signed by the CA;
    /// otherwise one is optional (and verified when presented).
    #[serde(default)]
    pub client_cert_required: bool,
}

/// Everything TLS a node needs, loaded once from a [`TlsConfig`].
#[derive(Clone, Debug)]
pub struct TlsSetup {
    /// The cluster's CA, as loaded from `ca_file`.
    pub roots: Arc<RootCertStore>,
    /// The peer port's acceptor: a client certificate signed by the CA is required.
    pub peer_server: Arc<rustls::ServerConfig>,
    /// Dials peers: presents this node's certificate and checks the peer's against the CA.
    pub peer_client: Arc<rustls::ClientConfig>,
    /// The client port's (and HTTP's) acceptor: a client certificate is verified against
    /// the CA when presented, and required only with `client_cert_required`.
    pub client_server: Arc<rustls::ServerConfig>,
    /// For this node's own client connections to other nodes (forwarding to the leader,
    /// anti-entropy's status pulls): presents the node's certificate, checks the server's
    /// chain against the CA (not its host name: nodes dial addresses, and the certificate's
    /// node ID is what identifies them).
    pub client: Arc<rustls::ClientConfig>,
    /// The cluster and node ID this node's certificate names.
    pub identity: (u128, NodeId),
}

/// A TLS file that cannot be used: which setting, which file, and what is wrong.
fn tls_error(field: &str, path: &Path, what: impl std::fmt::Display) -> ConfigError {
    ConfigError::new(
        format!("tls.{field}"),
        format!("{}: {what}", path.display()),
    )
}

impl TlsConfig {
    /// Read and check the files, and build every configuration.
    pub fn load(&self) -> Result<TlsSetup, ConfigError> {
        let ca = load_certs("ca_file", &self.ca_file)?;
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|e| {
                tls_error(
                    "ca_file",
                    &self.ca_file,
                    format!("not a usable CA certificate: {e}"),
                )
            })?;
        }
        let roots = Arc::new(roots);
        let chain = load_certs("cert_file", &self.cert_file)?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file).map_err(|e| {
            tls_error(
                "key_file",
                &self.key_file,
                format!("no private key read: {e}"),
            )
        })?;
        let identity = raft_net::tls::cert_node_identity(&chain[0])
            .map_err(|e| tls_error("cert_file", &self.cert_file, e))?;
        // Errors from here on concern the pair (or the CA): name all the files involved.
        let pair = |what: &str, e: rustls::Error| {
            ConfigError::new(
                "tls",
                format!(
                    "{what} from {} and {} (CA {}): {e}",
                    self.cert_file.display(),
                    self.key_file.display(),
                    self.ca_file.display()
                ),
            )
        };
        let peer_server =
            raft_net::tls::peer_server_config(roots.clone(), chain.clone(), key.clone_key())
                .map_err(|e| pair("cannot build the peer server", e))?;
        let peer_client =
            raft_net::tls::peer_client_config(roots.clone(), chain.clone(), key.clone_key())
                .map_err(|e| pair("cannot build the peer client", e))?;
        let provider = raft_net::tls::provider();
        let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        let builder = if self.client_cert_required {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        let verifier = builder.build().map_err(|e| {
            tls_error(
                "ca_file",
                &self.ca_file,
                format!("cannot verify clients: {e}"),
            )
        })?;
        let client_server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_client_cert_verifier(verifier)
                    .with_single_cert(chain, key)
            })
            .map_err(|e| pair("cannot build the client-port server", e))?;
        Ok(TlsSetup {
            roots,
            peer_server: Arc::new(peer_server),
            client: Arc::new(peer_client.clone()),
            peer_client: Arc::new(peer_client),
            client_server: Arc::new(client_server),
            identity,
        })
    }
}

impl TlsSetup {
    /// Refuses a certificate that names another node (or cluster) than this one.
    pub fn check_identity(&self, node: NodeId, cluster_id: u128) -> Result<(), ConfigError> {
        let (cert_cluster, cert_node) = self.identity;
        if cert_node != node || cert_cluster != cluster_id {
            return Err(ConfigError::new(
                "tls.cert_file",
                format!(
                    "the certificate names node {cert_node} of cluster {cert_cluster:032x}, \
                     but this is node {node} of cluster {cluster_id:032x}"
                ),
            ));
        }
        Ok(())
    }

    /// raft-net's settings for the peer port.
    pub fn transport(&self) -> raft_net::tls::TransportTls {
        raft_net::tls::TransportTls {
            server: self.peer_server.clone(),
            client: self.peer_client.clone(),
        }
    }
}

fn load_certs(field: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(field, path, format!("cannot read: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error(field, path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(field, path, "no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs;

    fn config(dir: &Path, node: NodeId) -> TlsConfig {
        TlsConfig {
            ca_file: dir.join(certs::CA_CERT_FILE),
            cert_file: dir.join(certs::node_cert_file(node)),
            key_file: dir.join(certs::node_key_file(node)),
            client_cert_required: false,
        }
    }

    #[test]
    fn loads_generated_files_and_names_the_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let made = certs::generate(dir.path(), None, &[1, 2], &["127.0.0.1".into()]).unwrap();
        let setup = config(dir.path(), 2).load().unwrap();
        assert_eq!(setup.identity, (made.cluster_id, 2));
        setup.check_identity(2, made.cluster_id).unwrap();
        let e = setup.check_identity(1, made.cluster_id).unwrap_err();
        assert!(e.to_string().contains("names node 2"), "{e}");

        let mut bad = config(dir.path(), 1);
        bad.key_file = dir.path().join("missing.pem");
        let e = bad.load().unwrap_err();
        assert_eq!(e.field, "tls.key_file", "{e}");
        assert!(e.message.contains("missing.pem"), "{e}");

        // Node 1's certificate with node 2's key: the pair does not match.
        let mut mixed = config(dir.path(), 1);
        mixed.key_file = dir.path().join(certs::node_key_file(2));
        let e = mixed.load().unwrap_err();
        assert!(e.to_string().contains("node-1.pem"), "{e}");

        let mut not_pem = config(dir.path(), 1);
        not_pem.ca_file = dir.path().join(certs::CLUSTER_ID_FILE);
        let e = not_pem.load().unwrap_err();
        assert_eq!(e.field, "tls.ca_file", "{e}");
    }

    /// The configurations interoperate: a node's forwarding client reaches another node's
    /// client port over TLS, and a client without a certificate is let in only when none
    /// is required.
    #[tokio::test]
    async fn client_port_handshakes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        certs::generate(dir.path(), None, &[1, 2], &["127.0.0.1".into()]).unwrap();
        let server = config(dir.path(), 1).load().unwrap();
        let client = config(dir.path(), 2).load().unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let handshake = |server: Arc<rustls::ServerConfig>, client: Arc<rustls::ClientConfig>| {
            let name = name.clone();
            async move {
                let (a, b) = tokio::io::duplex(64 * 1024);
                let accept = tokio::spawn(async move {
                    let mut s = tokio_rustls::TlsAcceptor::from(server).accept(a).await?;
                    let mut byte = [0u8; 1];
                    s.read_exact(&mut byte).await?;
                    s.write_all(&byte).await?;
                    s.flush().await?;
                    std::io::Result::Ok(s.get_ref().1.peer_certificates().map(|c| c.len()))
                });
                let connected = async {
                    let mut c = tokio_rustls::TlsConnector::from(client)
                        .connect(name, b)
                        .await?;
                    c.write_all(b"x").await?;
                    c.flush().await?;
                    let mut byte = [0u8; 1];
                    c.read_exact(&mut byte).await?;
                    std::io::Result::Ok(byte[0])
                }
                .await;
                (connected, accept.await.unwrap())
            }
        };
        let (c, s) = handshake(server.client_server.clone(), client.client.clone()).await;
        assert_eq!(c.unwrap(), b'x');
        assert_eq!(s.unwrap(), Some(1), "the node's certificate was presented");

        let anonymous = Arc::new(
            rustls::ClientConfig::builder_with_provider(raft_net::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(server.roots.clone())
                .with_no_client_auth(),
        );
        let (c, s) = handshake(server.client_server.clone(), anonymous.clone()).await;
        assert_eq!(c.unwrap(), b'x');
        assert_eq!(s.unwrap(), None);
        let (_, s) = handshake(server.peer_server.clone(), anonymous).await;
        assert!(s.is_err(), "the peer port requires a client certificate");
    }
}
