//! Mutual TLS between peers, with each node's ID bound to its certificate.
//!
//! **Identity.** A node's certificate carries, among its subject alternative names, the URI
//! `urn:raft-node:<cluster-id as 32 hex digits>:<node-id>` ([`node_uri`]). After the TLS
//! handshake, the acceptor refuses a [`crate::wire::Hello`] whose `from` is not the node ID in
//! the dialer's certificate, and the dialer refuses an acceptor whose certificate names
//! another node than the one it dialled, or another cluster. So a party without a
//! certificate signed by the cluster's CA for node 1 can neither handshake as node 1 nor
//! replace node 1's connection.
//!
//! **Trust.** Both sides verify the other's chain against the cluster's CA
//! ([`peer_server_config`], [`peer_client_config`]). Host names are not checked on the peer
//! port: the node ID is the identity that matters there, and checking it does not tie the
//! certificates to addresses that change (the dialer still checks the chain, its validity
//! dates and its key usage).

use std::sync::Arc;

use raft_core::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The prefix of the URI that names a node in its certificate.
pub const NODE_URI_PREFIX: &str = "urn:raft-node:";

/// TLS settings of a transport: both lanes, both directions.
#[derive(Clone, Debug)]
pub struct TransportTls {
    /// Accepts peers: must require a client certificate (see [`peer_server_config`]).
    pub server: Arc<rustls::ServerConfig>,
    /// Dials peers: presents this node's certificate (see [`peer_client_config`]).
    pub client: Arc<rustls::ClientConfig>,
}

/// The URI naming node `node` of cluster `cluster_id` in its certificate.
///
/// ```
/// assert_eq!(raft_net::tls::node_uri(0xab, 3), "urn:raft-node:000000000000000000000000000000ab:3");
/// assert_eq!(raft_net::tls::parse_node_uri(&raft_net::tls::node_uri(0xab, 3)), Some((0xab, 3)));
/// ```
pub fn node_uri(cluster_id: u128, node: NodeId) -> String {
    format!("{NODE_URI_PREFIX}{cluster_id:032x}:{node}")
}

/// The cluster and node a [`node_uri`] names; `None` for any other URI.
pub fn parse_node_uri(uri: &str) -> Option<(u128, NodeId)> {
    let rest = uri.strip_prefix(NODE_URI_PREFIX)?;
    let (cluster, node) = rest.split_once(':')?;
    if cluster.len() != 32 || !cluster.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if node.is_empty() || !node.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let cluster = u128::from_str_radix(cluster, 16).ok()?;
    let node: NodeId = node.parse().ok()?;
    (node != 0).then_some((cluster, node))
}

/// The cluster and node ID a certificate names: exactly one [`node_uri`] among its subject
/// alternative names. Call it on a certificate whose chain was verified.
pub fn cert_node_identity(cert: &CertificateDer<'_>) -> Result<(u128, NodeId), String> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let mut found = parsed.valid_uri_names().filter_map(parse_node_uri);
    match (found.next(), found.next()) {
        (Some(id), None) => Ok(id),
        (None, _) => Err(format!(
            "the certificate names no node (no {NODE_URI_PREFIX}<cluster>:<node> URI)"
        )),
        (Some(_), Some(_)) => Err("the certificate names more than one node".into()),
    }
}

/// The acceptor's side of the peer port: a client certificate signed by the cluster CA is
/// required; `chain` and `key` are this node's.
pub fn peer_server_config(
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| rustls::Error::General(format!("client verifier: {e}")))?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
}

/// The dialer's side of the peer port: presents this node's `chain` and checks the acceptor's
/// chain against `roots` (host names aside: see the module doc).
pub fn peer_client_config(
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(ChainOnlyVerifier::new(roots)?)
        .with_client_auth_cert(chain, key)
}

/// The crypto provider every config here uses (ring: it builds with a C compiler alone).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies a server's chain, validity and key usage like rustls' WebPKI verifier, but
/// accepts a certificate that is not issued for the name dialled: the caller checks the
/// identity that matters (the node ID URI) itself.
#[derive(Debug)]
pub struct ChainOnlyVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ChainOnlyVerifier {
    /// A verifier trusting `roots`.
    pub fn new(roots: Arc<RootCertStore>) -> Result<Arc<Self>, rustls::Error> {
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| rustls::Error::General(format!("server verifier: {e}")))?;
        Ok(Arc::new(ChainOnlyVerifier { inner }))
    }
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // rustls checks the chain (signatures, validity, usage) before the name, so a name
        // error means everything else passed.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_uris_round_trip_and_reject_lookalikes() {
        let id = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef_u128;
        assert_eq!(parse_node_uri(&node_uri(id, 7)), Some((id, 7)));
        for bad in [
            "urn:raft-node:0123:7",
            "urn:raft-node:0123456789abcdef0123456789abcdef:0",
            "urn:raft-node:0123456789abcdef0123456789abcdef:",
            "urn:raft-node:0123456789abcdef0123456789abcdef:+7",
            "urn:raft-node:0123456789abcdef0123456789abcdeg:7",
            "urn:raft-node:0123456789abcdef0123456789abcdef:7:8",
            "urn:other:0123456789abcdef0123456789abcdef:7",
        ] {
            assert_eq!(parse_node_uri(bad), None, "{bad}");
        }
    }
}
