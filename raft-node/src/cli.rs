//! The client-side commands of `raft-node`: how they log in and reach nodes.

use std::path::PathBuf;
use std::time::Duration;

use raft_client::{Client, ClientConfig, Credentials, NodeStatus};

/// Time one member has to answer a status request in a cluster-wide view.
pub const MEMBER_STATUS_TIMEOUT_MS: u64 = 1_500;

/// How a command logs in to the nodes it talks to.
#[derive(Clone, Debug, Default)]
pub struct Login {
    /// User name (`None`: the `default` user).
    pub user: Option<String>,
    /// Password, if the nodes require one.
    pub password: Option<String>,
    /// CA to trust over TLS; plain TCP when `None`.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key to present over TLS.
    pub tls_cert_key: Option<(PathBuf, PathBuf)>,
}

/// A client of `addrs` with `login`, each request bounded by `timeout_ms`; `attempts_max`
/// 1 asks exactly one node.
pub fn client(
    addrs: &[String],
    login: &Login,
    timeout_ms: u64,
    attempts_max: u32,
) -> Result<Client, String> {
    let mut config = ClientConfig::new(addrs.iter().cloned());
    config.request_timeout_ms = timeout_ms;
    config.attempt_timeout_ms = config.attempt_timeout_ms.min(timeout_ms);
    config.attempts_max = attempts_max;
    if let Some(password) = &login.password {
        config.credentials = Some(Credentials::new(
            login.user.as_deref(),
            password.clone().into_bytes(),
        ));
    }
    if let Some(ca) = &login.tls_ca {
        let cert_key = login
            .tls_cert_key
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        config.tls = Some(
            raft_client::tls::client_config_from_pem_files(ca, cert_key)
                .map_err(|e| format!("--tls-ca: {e}"))?,
        );
    }
    Ok(Client::new(config))
}

/// One member's answer to a status request.
pub struct MemberRow {
    /// The client address asked.
    pub addr: String,
    /// Its status, or why it gave none.
    pub status: Result<NodeStatus, String>,
}

/// Asks every address for its status at once, each bounded by `MEMBER_STATUS_TIMEOUT_MS`.
pub async fn member_rows(addrs: &[String], login: &Login) -> Vec<MemberRow> {
    let asks = addrs.iter().map(|addr| async move {
        let status = match client(
            std::slice::from_ref(addr),
            login,
            MEMBER_STATUS_TIMEOUT_MS,
            1,
        ) {
            Ok(c) => {
                match tokio::time::timeout(
                    Duration::from_millis(MEMBER_STATUS_TIMEOUT_MS),
                    c.status(),
                )
                .await
                {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer in time".to_string()),
                }
            }
            Err(e) => Err(e),
        };
        MemberRow {
            addr: addr.clone(),
            status,
        }
    });
    futures::future::join_all(asks).await
}
