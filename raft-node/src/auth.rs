//! Who may do what on the client interfaces (RESP, native, HTTP): users, their roles, and
//! password checks.
//!
//! Credentials come from a TOML file (`auth_file` / `--auth-file` / `RAFT_NODE_AUTH_FILE`)
//! or from the environment (`RAFT_NODE_PASSWORD` for the `default` user, an admin), never
//! from a command-line value that `ps` would show:
//!
//! ```toml
//! # The password nodes present to each other's client ports (a follower forwarding a
//! # write to the leader, the leader's anti-entropy polls). The same on every node; this
//! # file then holds a secret in the clear, so keep it readable by the node alone.
//! internal_password = "long random string"
//!
//! [[users]]
//! name = "default"          # `AUTH password` (one argument) logs in as `default`
//! role = "admin"            # read | read-write | admin
//! # SHA-256 of the password in hex: `printf %s 'the password' | sha256sum`
//! password_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
//! ```
//!
//! With no credentials configured every connection is an admin (a local development
//! cluster keeps working with any Redis client); with credentials, every connection starts
//! unauthenticated. Passwords are stored as unsalted SHA-256, as Redis' ACL files allow:
//! cheap enough to check on every connection, and as strong as the password is long, so
//! use long random passwords.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use subtle::ConstantTimeEq;

/// What a user may do. Ordered: each role may do everything the roles below it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Reads, status, INFO.
    Read,
    /// Reads and writes of keys.
    ReadWrite,
    /// Everything, including membership changes and leadership transfer.
    Admin,
}

impl Role {
    /// The name used in files and messages (`read`, `read-write`, `admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::ReadWrite => "read-write",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The environment variable naming the auth file when neither the config nor a flag does.
pub const ENV_AUTH_FILE: &str = "RAFT_NODE_AUTH_FILE";
/// The environment variable holding the `default` user's password (role admin).
pub const ENV_PASSWORD: &str = "RAFT_NODE_PASSWORD";
/// The environment variable holding the password nodes present to each other.
pub const ENV_INTERNAL_PASSWORD: &str = "RAFT_NODE_INTERNAL_PASSWORD";
/// The user `AUTH password` (one argument) and a bare bearer token log in as.
pub const DEFAULT_USER: &str = "default";
/// The user a node logs in as on its peers' client ports; reserved, never in the file.
pub const INTERNAL_USER: &str = "raft-node-internal";
/// The role of [`INTERNAL_USER`]: forwarding writes and polling status, no administration.
pub const INTERNAL_ROLE: Role = Role::ReadWrite;
/// Users in one auth file at most.
pub const USERS_MAX: usize = 10_000;
/// Bytes of an auth file at most.
const AUTH_FILE_BYTES_MAX: u64 = 4 << 20;

/// A password the node itself presents (to its peers); the bytes never appear in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps `bytes`.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    /// The password.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// An auth file or environment that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    internal_password: Option<String>,
    #[serde(default)]
    users: Vec<UserFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    name: String,
    role: Role,
    password_sha256: String,
}

#[derive(Clone, Debug)]
struct User {
    role: Role,
    password_sha256: [u8; 32],
}

/// The credentials a node checks. Cheap to share behind an `Arc`.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    /// Empty: authentication is off and everyone is an admin.
    users: BTreeMap<String, User>,
    internal: Option<Secret>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The lowercase hex SHA-256 of `password`, as an auth file stores it.
pub fn password_sha256_hex(password: &[u8]) -> String {
    sha256(password)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Auth {
    /// No credentials: every connection is an admin (today's behaviour for local clusters).
    pub fn disabled() -> Auth {
        Auth::default()
    }

    /// Parses an auth file's text (see the module documentation).
    pub fn from_toml(text: &str) -> Result<Auth, AuthError> {
        let file: AuthFile =
            toml::from_str(text).map_err(|e| AuthError(e.message().replace('\n', " ")))?;
        if file.users.len() > USERS_MAX {
            return Err(AuthError(format!(
                "{} users; at most {USERS_MAX}",
                file.users.len()
            )));
        }
        let mut auth = Auth::default();
        for u in file.users {
            if u.name.is_empty() || u.name.chars().any(|c| c.is_whitespace() || c == ':') {
                return Err(AuthError(format!(
                    "user name `{}`: must be non-empty, without spaces or ':'",
                    u.name
                )));
            }
            if u.name == INTERNAL_USER {
                return Err(AuthError(format!(
                    "user name `{INTERNAL_USER}` is reserved for the nodes themselves; set \
                     internal_password instead"
                )));
            }
            let Some(password_sha256) = parse_hex32(&u.password_sha256) else {
                return Err(AuthError(format!(
                    "user `{}`: password_sha256 must be 64 hex digits (printf %s PASSWORD | \
                     sha256sum)",
                    u.name
                )));
            };
            let user = User {
                role: u.role,
                password_sha256,
            };
            if auth.users.insert(u.name.clone(), user).is_some() {
                return Err(AuthError(format!("user `{}` appears twice", u.name)));
            }
        }
        if let Some(p) = file.internal_password {
            auth.set_internal(Secret::new(p))?;
        }
        Ok(auth)
    }

    /// Reads and parses an auth file.
    pub fn from_file(path: &Path) -> Result<Auth, AuthError> {
        let context = |e: String| AuthError(format!("{}: {e}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| context(e.to_string()))?;
        if meta.len() > AUTH_FILE_BYTES_MAX {
            return Err(context(format!(
                "{} bytes; at most {AUTH_FILE_BYTES_MAX}",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| context(e.to_string()))?;
        Self::from_toml(&text).map_err(|e| context(e.0))
    }

    /// The node's credentials: the auth file (`file`, else `RAFT_NODE_AUTH_FILE`), plus a
    /// `default` admin with `RAFT_NODE_PASSWORD` and the internal password from
    /// `RAFT_NODE_INTERNAL_PASSWORD` when those are set. Nothing set: [`Auth::disabled`].
    pub fn load(file: Option<&Path>) -> Result<Auth, AuthError> {
        Self::load_from(file, |k| std::env::var_os(k))
    }

    /// [`Auth::load`] with the environment given as a function (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Auth, AuthError> {
        let env_text = |k: &str| -> Result<Option<String>, AuthError> {
            match env(k) {
                None => Ok(None),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => v
                    .into_string()
                    .map(Some)
                    .map_err(|_| AuthError(format!("{k} is not valid UTF-8"))),
            }
        };
        let path: Option<PathBuf> = match file {
            Some(p) => Some(p.to_path_buf()),
            None => env_text(ENV_AUTH_FILE)?.map(PathBuf::from),
        };
        let mut auth = match &path {
            Some(p) => Self::from_file(p)?,
            None => Auth::default(),
        };
        if let Some(password) = env_text(ENV_PASSWORD)? {
            let user = User {
                role: Role::Admin,
                password_sha256: sha256(password.as_bytes()),
            };
            if auth.users.insert(DEFAULT_USER.to_string(), user).is_some() {
                return Err(AuthError(format!(
                    "{ENV_PASSWORD} sets the `{DEFAULT_USER}` user, which the auth file \
                     defines too; use one or the other"
                )));
            }
        }
        if let Some(p) = env_text(ENV_INTERNAL_PASSWORD)? {
            auth.set_internal(Secret::new(p))?;
        }
        Ok(auth)
    }

    fn set_internal(&mut self, secret: Secret) -> Result<(), AuthError> {
        if secret.expose().len() < 16 {
            return Err(AuthError(
                "the internal password must be at least 16 bytes (it guards the nodes' \
                 forwarding path); generate one with `head -c 24 /dev/urandom | base64`"
                    .into(),
            ));
        }
        self.internal = Some(secret);
        Ok(())
    }

    /// Whether credentials are required (some user is configured).
    pub fn is_enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// The role a new connection has before it authenticates: admin when authentication
    /// is off, none otherwise.
    pub fn initial_role(&self) -> Option<Role> {
        (!self.is_enabled()).then_some(Role::Admin)
    }

    /// The password this node presents to its peers' client ports, if any.
    pub fn internal_password(&self) -> Option<&Secret> {
        self.internal.as_ref()
    }

    /// The role of `user` (the default user when `None`) if `password` is theirs. The
    /// digests are compared in constant time, and an unknown user costs the same digest and
    /// comparison as a known one.
    pub fn verify_password(&self, user: Option<&str>, password: &[u8]) -> Option<Role> {
        if !self.is_enabled() {
            // Redis' `default` user without a password accepts any password.
            return (user.is_none_or(|u| u == DEFAULT_USER)).then_some(Role::Admin);
        }
        let name = user.unwrap_or(DEFAULT_USER);
        let digest = sha256(password);
        if name == INTERNAL_USER {
            let expected = self.internal.as_ref().map(|s| sha256(s.expose()));
            let ok: bool = digest.ct_eq(&expected.unwrap_or([0; 32])).into();
            return (ok && expected.is_some()).then_some(INTERNAL_ROLE);
        }
        match self.users.get(name) {
            Some(u) => bool::from(digest.ct_eq(&u.password_sha256)).then_some(u.role),
            None => {
                let _ = digest.ct_eq(&[0u8; 32]);
                None
            }
        }
    }

    /// The role of an HTTP bearer token: `USER:PASSWORD` for a named user, else the
    /// `default` user's password.
    pub fn verify_bearer(&self, token: &str) -> Option<Role> {
        if let Some((user, password)) = token.split_once(':') {
            if self.users.contains_key(user) || user == INTERNAL_USER {
                return self.verify_password(Some(user), password.as_bytes());
            }
        }
        self.verify_password(None, token.as_bytes())
    }

    /// The role of a user named by a verified client certificate (its subject's CN), if the
    /// auth file names that user; the certificate stands in for the password.
    pub fn role_of_certified_user(&self, name: &str) -> Option<Role> {
        self.users.get(name).map(|u| u.role)
    }
}

/// How this node logs in on its peers' client ports (a follower forwarding writes, the
/// leader polling status for anti-entropy).
#[derive(Clone, Debug, Default)]
pub struct InternalClient {
    /// [`INTERNAL_USER`] with the internal password, when the nodes require credentials.
    pub credentials: Option<raft_client::Credentials>,
    /// TLS to the peers' client ports, presenting this node's certificate.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl InternalClient {
    /// The login `auth` gives this node: its internal password, if authentication is on;
    /// and TLS with `tls` (which presents this node's certificate), if given.
    pub fn new(auth: &Auth, tls: Option<std::sync::Arc<rustls::ClientConfig>>) -> InternalClient {
        let credentials = match (auth.is_enabled(), auth.internal_password()) {
            (true, Some(secret)) => Some(raft_client::Credentials::new(
                Some(INTERNAL_USER),
                secret.expose().to_vec(),
            )),
            _ => None,
        };
        InternalClient { credentials, tls }
    }

    /// Sets `config`'s credentials and TLS to these.
    pub fn apply(&self, config: &mut raft_client::ClientConfig) {
        config.credentials = self.credentials.clone();
        config.tls = self.tls.clone();
    }
}

/// Who a connection is when it presented a client certificate that the TLS handshake
/// verified against the cluster's CA: one of the cluster's nodes (its certificate names a
/// node of `cluster_id`) is [`INTERNAL_USER`]; a certificate whose subject's common name
/// is a user of the auth file is that user, the certificate standing in for the password;
/// anyone else starts as [`Session::new`] does (and may still log in with a password).
pub fn certified_session(
    auth: &Auth,
    cert: &rustls::pki_types::CertificateDer<'_>,
    cluster_id: u128,
) -> Session {
    if let Ok((cluster, _node)) = raft_net::tls::cert_node_identity(cert) {
        if cluster == cluster_id {
            return Session {
                role: Some(INTERNAL_ROLE.max(auth.initial_role().unwrap_or(INTERNAL_ROLE))),
                user: Some(INTERNAL_USER.to_string()),
            };
        }
    }
    let common_name = webpki::EndEntityCert::try_from(cert)
        .ok()
        .and_then(|c| subject_common_name(c.subject()));
    match common_name.and_then(|cn| auth.role_of_certified_user(&cn).map(|r| (cn, r))) {
        Some((user, role)) => Session {
            role: Some(role),
            user: Some(user),
        },
        None => Session::new(auth),
    }
}

/// The first common name (OID 2.5.4.3) in a certificate subject's DER contents (the
/// RDN sequence without its outer tag, as webpki hands it out).
fn subject_common_name(subject: &[u8]) -> Option<String> {
    /// One DER element: (tag, contents, rest).
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = match first {
            n if n < 0x80 => (usize::from(n), rest),
            0x81 => (usize::from(*rest.first()?), &rest[1..]),
            0x82 if rest.len() >= 2 => {
                (usize::from(rest[0]) << 8 | usize::from(rest[1]), &rest[2..])
            }
            _ => return None,
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    const SET: u8 = 0x31;
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (tag, set, rest) = element(rdns)?;
        rdns = rest;
        if tag != SET {
            return None;
        }
        let mut attributes = set;
        while !attributes.is_empty() {
            let (tag, attribute, rest) = element(attributes)?;
            attributes = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = element(attribute)?;
            if tag == OID && oid == COMMON_NAME {
                let (_string_tag, text, _) = element(value)?;
                return std::str::from_utf8(text).ok().map(str::to_string);
            }
        }
    }
    None
}

/// A connection's authentication state, the same for every protocol.
#[derive(Clone, Debug)]
pub struct Session {
    /// The role it has now; `None` until it authenticates.
    pub role: Option<Role>,
    /// Who it authenticated as.
    pub user: Option<String>,
}

impl Session {
    /// A new connection's state under `auth`.
    pub fn new(auth: &Auth) -> Session {
        Session {
            role: auth.initial_role(),
            user: (!auth.is_enabled()).then(|| DEFAULT_USER.to_string()),
        }
    }

    /// Tries `user` / `password`; on success the session takes that user's role. A failed
    /// attempt leaves the session as it was (as in Redis).
    pub fn authenticate(&mut self, auth: &Auth, user: Option<&str>, password: &[u8]) -> bool {
        match auth.verify_password(user, password) {
            Some(role) => {
                self.role = Some(role);
                self.user = Some(user.unwrap_or(DEFAULT_USER).to_string());
                true
            }
            None => false,
        }
    }

    /// Whether this session may do what `needed` allows.
    pub fn allows(&self, needed: Role) -> bool {
        self.role.is_some_and(|r| r >= needed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
internal_password = "0123456789abcdef-internal"
[[users]]
name = "default"
role = "admin"
password_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
[[users]]
name = "reader"
role = "read"
password_sha256 = "3d1b8a1ee4d7f7b5f3d1cf36b9b9a1c0b1cbfa8bb6d8dd2b2b6c6f1a3f2c0a11"
"#;

    fn file() -> String {
        // `reader`'s password is "r-pass".
        FILE.replace(
            "3d1b8a1ee4d7f7b5f3d1cf36b9b9a1c0b1cbfa8bb6d8dd2b2b6c6f1a3f2c0a11",
            &password_sha256_hex(b"r-pass"),
        )
    }

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Read < Role::ReadWrite && Role::ReadWrite < Role::Admin);
        assert_eq!(Role::ReadWrite.to_string(), "read-write");
    }

    #[test]
    fn password_hash_matches_sha256sum() {
        // `printf %s password | sha256sum`
        assert_eq!(
            password_sha256_hex(b"password"),
            "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
        );
    }

    #[test]
    fn verifies_users_passwords_and_bearer_tokens() {
        let auth = Auth::from_toml(&file()).unwrap();
        assert!(auth.is_enabled());
        assert_eq!(auth.initial_role(), None);
        assert_eq!(auth.verify_password(None, b"password"), Some(Role::Admin));
        assert_eq!(
            auth.verify_password(Some("default"), b"password"),
            Some(Role::Admin)
        );
        assert_eq!(auth.verify_password(None, b"wrong"), None);
        assert_eq!(
            auth.verify_password(Some("reader"), b"r-pass"),
            Some(Role::Read)
        );
        assert_eq!(auth.verify_password(Some("reader"), b"password"), None);
        assert_eq!(auth.verify_password(Some("nobody"), b"password"), None);
        assert_eq!(
            auth.verify_password(Some(INTERNAL_USER), b"0123456789abcdef-internal"),
            Some(INTERNAL_ROLE)
        );
        assert_eq!(auth.verify_password(Some(INTERNAL_USER), b"x"), None);
        assert_eq!(auth.verify_bearer("password"), Some(Role::Admin));
        assert_eq!(auth.verify_bearer("reader:r-pass"), Some(Role::Read));
        assert_eq!(auth.verify_bearer("reader:nope"), None);
        assert_eq!(auth.verify_bearer("nope"), None);
        assert_eq!(auth.role_of_certified_user("reader"), Some(Role::Read));
        assert_eq!(auth.role_of_certified_user("nobody"), None);
        assert!(
            !format!("{auth:?}").contains("0123456789abcdef-internal"),
            "{auth:?}"
        );
    }

    #[test]
    fn without_credentials_everyone_is_admin() {
        let auth = Auth::disabled();
        assert!(!auth.is_enabled());
        assert_eq!(auth.initial_role(), Some(Role::Admin));
        let s = Session::new(&auth);
        assert!(s.allows(Role::Admin));
        assert_eq!(auth.verify_password(None, b"anything"), Some(Role::Admin));
        assert_eq!(auth.verify_password(Some("alice"), b"anything"), None);
    }

    #[test]
    fn sessions_start_unauthenticated_and_keep_their_role_after_a_failure() {
        let auth = Auth::from_toml(&file()).unwrap();
        let mut s = Session::new(&auth);
        assert!(!s.allows(Role::Read));
        assert!(s.authenticate(&auth, Some("reader"), b"r-pass"));
        assert!(s.allows(Role::Read) && !s.allows(Role::ReadWrite));
        assert!(!s.authenticate(&auth, None, b"wrong"));
        assert_eq!(s.role, Some(Role::Read));
        assert!(s.authenticate(&auth, None, b"password"));
        assert!(s.allows(Role::Admin));
    }

    #[test]
    fn bad_files_say_what_to_fix() {
        let cases = [
            (file().replace("role = \"read\"", "role = \"root\""), "root"),
            (
                file().replace(&password_sha256_hex(b"r-pass"), "abc"),
                "64 hex digits",
            ),
            (file().replace("\"reader\"", "\"default\""), "appears twice"),
            (
                file().replace("\"reader\"", &format!("\"{INTERNAL_USER}\"")),
                "reserved",
            ),
            (
                file().replace("0123456789abcdef-internal", "short"),
                "at least 16 bytes",
            ),
            (format!("{}\nbogus = 1", file()), "bogus"),
        ];
        for (text, expected) in cases {
            let e = Auth::from_toml(&text).unwrap_err();
            assert!(e.0.contains(expected), "{e} should mention {expected}");
        }
    }

    #[test]
    fn environment_adds_a_default_admin_and_the_internal_password() {
        let env = |k: &str| match k {
            ENV_PASSWORD => Some("s3cret".into()),
            ENV_INTERNAL_PASSWORD => Some("an-internal-password-long-enough".into()),
            _ => None,
        };
        let auth = Auth::load_from(None, env).unwrap();
        assert_eq!(auth.verify_password(None, b"s3cret"), Some(Role::Admin));
        assert_eq!(
            auth.internal_password().map(|s| s.expose().to_vec()),
            Some(b"an-internal-password-long-enough".to_vec())
        );
        let none = Auth::load_from(None, |_| None).unwrap();
        assert!(!none.is_enabled());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(&path, file()).unwrap();
        let env_file = |k: &str| (k == ENV_AUTH_FILE).then(|| path.clone().into_os_string());
        let auth = Auth::load_from(None, env_file).unwrap();
        assert_eq!(
            auth.verify_password(Some("reader"), b"r-pass"),
            Some(Role::Read)
        );
        // RAFT_NODE_PASSWORD may not silently replace the file's default user.
        let both = |k: &str| match k {
            ENV_PASSWORD => Some("x".into()),
            _ => None,
        };
        let e = Auth::load_from(Some(&path), both).unwrap_err();
        assert!(e.0.contains("defines too"), "{e}");
        let e = Auth::load_from(Some(&dir.path().join("missing.toml")), |_| None).unwrap_err();
        assert!(e.0.contains("missing.toml"), "{e}");
    }
}
