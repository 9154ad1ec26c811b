//! Bounds on what one client can make a node hold or do: the `[limits]` section of the
//! configuration, with a `--flag` for each field in `raft-node run`.
//!
//! ```toml
//! [limits]
//! request_bytes_max = 16777216
//! idle_timeout_ms = 60000
//! kv_memory_bytes_max = 1073741824   # the same on every node
//! ```
//!
//! Every field has a default (the `*_DEFAULT` constants below, shown in `--help`); a request
//! past a bound is refused with an error that names it, and a connection that breaks one is
//! closed without touching any other.

use serde::Deserialize;

use crate::config::ConfigError;

/// Default of [`ClientLimits::query_buffer_bytes_max`]: 64 MiB (Redis allows 1 GiB).
pub const QUERY_BUFFER_BYTES_MAX_DEFAULT: usize = 64 << 20;
/// Default of [`ClientLimits::bulk_bytes_max`]: 8 MiB, the native protocol's frame size.
pub const BULK_BYTES_MAX_DEFAULT: usize = 8 << 20;
/// Default of [`ClientLimits::line_bytes_max`]: 64 KiB.
pub const LINE_BYTES_MAX_DEFAULT: usize = 64 << 10;
/// Default of [`ClientLimits::request_args_max`].
pub const REQUEST_ARGS_MAX_DEFAULT: usize = 16_384;
/// Default of [`ClientLimits::request_bytes_max`]: 16 MiB.
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 16 << 20;
/// Default of [`ClientLimits::request_keys_max`].
pub const REQUEST_KEYS_MAX_DEFAULT: usize = 4_096;
/// Default of [`ClientLimits::reply_bytes_max`]: 64 MiB.
pub const REPLY_BYTES_MAX_DEFAULT: usize = 64 << 20;
/// Default of [`ClientLimits::output_buffer_bytes_max`]: 64 MiB.
pub const OUTPUT_BUFFER_BYTES_MAX_DEFAULT: usize = 64 << 20;
/// Default of [`ClientLimits::idle_timeout_ms`]: 5 minutes.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 300_000;
/// Default of [`ClientLimits::read_timeout_ms`].
pub const READ_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default of [`ClientLimits::write_timeout_ms`].
pub const WRITE_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default of [`ClientLimits::handshake_timeout_ms`].
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default of [`ClientLimits::connections_max`].
pub const CONNECTIONS_MAX_DEFAULT: usize = 4_096;
/// Default of [`ClientLimits::connections_per_source_max`].
pub const CONNECTIONS_PER_SOURCE_MAX_DEFAULT: usize = 1_024;
/// Default of [`ClientLimits::connections_reserved`].
pub const CONNECTIONS_RESERVED_DEFAULT: usize = 64;
/// Default of [`ClientLimits::kv_memory_bytes_max`]: 4 GiB.
pub const KV_MEMORY_BYTES_MAX_DEFAULT: u64 = 4 << 30;
/// Default of [`ClientLimits::http_head_bytes_max`]: 64 KiB.
pub const HTTP_HEAD_BYTES_MAX_DEFAULT: usize = 64 << 10;
/// Default of [`ClientLimits::http_body_bytes_max`]: 8 MiB.
pub const HTTP_BODY_BYTES_MAX_DEFAULT: usize = 8 << 20;
/// Default of [`ClientLimits::http_connections_max`].
pub const HTTP_CONNECTIONS_MAX_DEFAULT: usize = 1_024;
pub use crate::watch::{WATCH_HISTORY_BYTES_MAX_DEFAULT, WATCH_HISTORY_CHANGES_MAX_DEFAULT};

/// See the module documentation. Field by field, what a client may make a node hold or do.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLimits {
    /// Bytes received on one client connection and not yet served (Redis'
    /// `client-query-buffer-limit`); past it the connection is closed.
    pub query_buffer_bytes_max: usize,
    /// Bytes of one RESP bulk string (Redis' `proto-max-bulk-len`).
    pub bulk_bytes_max: usize,
    /// Bytes of one RESP inline command or header line.
    pub line_bytes_max: usize,
    /// Arguments of one request.
    pub request_args_max: usize,
    /// Bytes of one request, headers included.
    pub request_bytes_max: usize,
    /// Keys of one MGET, MSET, DEL or EXISTS.
    pub request_keys_max: usize,
    /// Bytes of the values one request's reply carries (an MGET's values, a GET's value);
    /// a larger reply is refused before it is built.
    pub reply_bytes_max: usize,
    /// Bytes of replies held for one connection that has not read them (Redis'
    /// `client-output-buffer-limit`); past it the connection is closed.
    pub output_buffer_bytes_max: usize,
    /// A connection with no request under way is closed after this long.
    pub idle_timeout_ms: u64,
    /// A request whose first byte arrived must be complete within this.
    pub read_timeout_ms: u64,
    /// A reply that the client does not take within this closes the connection.
    pub write_timeout_ms: u64,
    /// A new connection must send its first byte (and finish TLS or AUTH, where those
    /// apply) within this.
    pub handshake_timeout_ms: u64,
    /// Client connections open at once, reserved slots included.
    pub connections_max: usize,
    /// Client connections open at once from one IP address.
    pub connections_per_source_max: usize,
    /// Of `connections_max`, slots only the cluster's own nodes (followers forwarding
    /// writes) may take.
    pub connections_reserved: usize,
    /// Estimated bytes of the key-value state (keys, values and a per-key overhead) past
    /// which writes that grow it fail with `OOM` (Redis' `maxmemory`); reads and deletes go
    /// on. Decided on apply, so it must be the same on every node.
    pub kv_memory_bytes_max: u64,
    /// Bytes of an HTTP request's line and headers.
    pub http_head_bytes_max: usize,
    /// Bytes of an HTTP request's body.
    pub http_body_bytes_max: usize,
    /// HTTP connections open at once.
    pub http_connections_max: usize,
    /// Key changes the watch history holds (keyspace notifications, WATCHLOG, HTTP
    /// `/watch`); a watcher asking for an older index, or reading more slowly than the
    /// history evicts, gets a "compacted, resync" error.
    pub watch_history_changes_max: usize,
    /// Bytes (keys, values and a per-change overhead) the watch history holds.
    pub watch_history_bytes_max: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            query_buffer_bytes_max: QUERY_BUFFER_BYTES_MAX_DEFAULT,
            bulk_bytes_max: BULK_BYTES_MAX_DEFAULT,
            line_bytes_max: LINE_BYTES_MAX_DEFAULT,
            request_args_max: REQUEST_ARGS_MAX_DEFAULT,
            request_bytes_max: REQUEST_BYTES_MAX_DEFAULT,
            request_keys_max: REQUEST_KEYS_MAX_DEFAULT,
            reply_bytes_max: REPLY_BYTES_MAX_DEFAULT,
            output_buffer_bytes_max: OUTPUT_BUFFER_BYTES_MAX_DEFAULT,
            idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
            read_timeout_ms: READ_TIMEOUT_MS_DEFAULT,
            write_timeout_ms: WRITE_TIMEOUT_MS_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            connections_per_source_max: CONNECTIONS_PER_SOURCE_MAX_DEFAULT,
            connections_reserved: CONNECTIONS_RESERVED_DEFAULT,
            kv_memory_bytes_max: KV_MEMORY_BYTES_MAX_DEFAULT,
            http_head_bytes_max: HTTP_HEAD_BYTES_MAX_DEFAULT,
            http_body_bytes_max: HTTP_BODY_BYTES_MAX_DEFAULT,
            http_connections_max: HTTP_CONNECTIONS_MAX_DEFAULT,
            watch_history_changes_max: WATCH_HISTORY_CHANGES_MAX_DEFAULT,
            watch_history_bytes_max: WATCH_HISTORY_BYTES_MAX_DEFAULT,
        }
    }
}

impl ClientLimits {
    /// Checks that every bound is usable and that the bounds fit inside each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let field = |name: &str| format!("limits.{name}");
        let positive: [(&str, u64); 21] = [
            ("query_buffer_bytes_max", self.query_buffer_bytes_max as u64),
            ("bulk_bytes_max", self.bulk_bytes_max as u64),
            ("line_bytes_max", self.line_bytes_max as u64),
            ("request_args_max", self.request_args_max as u64),
            ("request_bytes_max", self.request_bytes_max as u64),
            ("request_keys_max", self.request_keys_max as u64),
            ("reply_bytes_max", self.reply_bytes_max as u64),
            (
                "output_buffer_bytes_max",
                self.output_buffer_bytes_max as u64,
            ),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("read_timeout_ms", self.read_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("connections_max", self.connections_max as u64),
            (
                "connections_per_source_max",
                self.connections_per_source_max as u64,
            ),
            ("kv_memory_bytes_max", self.kv_memory_bytes_max),
            ("http_head_bytes_max", self.http_head_bytes_max as u64),
            ("http_body_bytes_max", self.http_body_bytes_max as u64),
            ("http_connections_max", self.http_connections_max as u64),
            (
                "watch_history_changes_max",
                self.watch_history_changes_max as u64,
            ),
            (
                "watch_history_bytes_max",
                self.watch_history_bytes_max as u64,
            ),
            // Inline commands and header lines need room for at least `*1` or `PING`.
            ("line_bytes_max", (self.line_bytes_max >= 16) as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(
                    field(name),
                    "must be at least 1 (16 for line_bytes_max)",
                ));
            }
        }
        if self.bulk_bytes_max > self.request_bytes_max {
            return Err(ConfigError::new(
                field("bulk_bytes_max"),
                "must not exceed limits.request_bytes_max",
            ));
        }
        if self.request_bytes_max > self.query_buffer_bytes_max {
            return Err(ConfigError::new(
                field("request_bytes_max"),
                "must not exceed limits.query_buffer_bytes_max",
            ));
        }
        if self.connections_reserved >= self.connections_max {
            return Err(ConfigError::new(
                field("connections_reserved"),
                "must be below limits.connections_max",
            ));
        }
        Ok(())
    }
}

/// The `--flags` of [`ClientLimits`] for `raft-node run`; each overrides the file's value.
/// The defaults written in the help are checked against the constants by a test.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClientLimitsArgs {
    /// Bytes received on one client connection and not yet served; past it the connection
    /// is closed (Redis' client-query-buffer-limit) [default: 67108864].
    #[arg(
        long,
        help_heading = "Limits",
        env = "RAFT_NODE_QUERY_BUFFER_BYTES_MAX"
    )]
    pub query_buffer_bytes_max: Option<usize>,
    /// Bytes of one RESP bulk string [default: 8388608].
    #[arg(long, help_heading = "Limits", env = "RAFT_NODE_BULK_BYTES_MAX")]
    pub bulk_bytes_max: Option<usize>,
    /// Bytes of one RESP inline command or header line [default: 65536].
    #[arg(long, help_heading = "Limits", env = "RAFT_NODE_LINE_BYTES_MAX")]
    pub line_bytes_max: Option<usize>,
    /// Arguments of one request [default: 16384].
    #[arg(long, help_heading = "Limits", env = "RAFT_NODE_REQUEST_ARGS_MAX")]
    pub request_args_max: Option<usize>,
    /// Bytes of one request [default: 16777216].
    #[arg(long, help_heading = "Limits", env = "RAFT_NODE_REQUEST_BYTES_MAX")]
    pub request_bytes_max: Option<usize>,
    /// Keys of one MGET, MSET, DEL or EXISTS [default: 4096].
    #[arg(long, help_heading = "Limits", env = "RAFT_NODE_REQUEST_KEYS_MAX")]
    pub request_keys_max: Option<usize>,
    /// Bytes of values in one reply; larger replies are refused before they are built
    /// [default: 67108864].
    #[arg(long, help_heading = "Limits", env = "RAFT_NODE_REPLY_BYTES_MAX")]
    pub reply_bytes_max: Option<usize>,
    /// Bytes of replies held for a client that does not read them; past it the connection
    /// is closed (Redis' client-output-buffer-limit) [default: 67108864].
    #[arg(
        long,
        help_heading = "Limits",
        env = "RAFT_NODE_OUTPUT_BUFFER_BYTES_MAX"
    )]
    pub output_buffer_bytes_max: Option<usize>,
    /// Close a connection with no request under way after this long [default: 300000].
    #[arg(long, help_heading = "Limits", env = "RAFT_NODE_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// A request whose first byte arrived must be complete within this [default: 30000].
    #[arg(long, help_heading = "Limits", env = "RAFT_NODE_READ_TIMEOUT_MS")]
    pub read_timeout_ms: Option<u64>,
    /// Close a connection whose client does not take a reply within this [default: 30000].
    #[arg(long, help_heading = "Limits", env = "RAFT_NODE_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// A new connection must send its first byte (and finish TLS and AUTH) within this
    /// [default: 10000].
    #[arg(long, help_heading = "Limits", env = "RAFT_NODE_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Client connections at once, reserved slots included [default: 4096].
    #[arg(long, help_heading = "Limits", env = "RAFT_NODE_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// Client connections at once from one IP address [default: 1024].
    #[arg(
        long,
        help_heading = "Limits",
        env = "RAFT_NODE_CONNECTIONS_PER_SOURCE_MAX"
    )]
    pub connections_per_source_max: Option<usize>,
    /// Client connection slots only the cluster's own nodes may take [default: 64].
    #[arg(long, help_heading = "Limits", env = "RAFT_NODE_CONNECTIONS_RESERVED")]
    pub connections_reserved: Option<usize>,
    /// Estimated bytes of the key-value state past which writes fail with OOM (Redis'
    /// maxmemory); reads and deletes go on. Must be the same on every node
    /// [default: 4294967296].
    #[arg(long, help_heading = "Limits", env = "RAFT_NODE_KV_MEMORY_BYTES_MAX")]
    pub kv_memory_bytes_max: Option<u64>,
    /// Bytes of an HTTP request's line and headers [default: 65536].
    #[arg(long, help_heading = "Limits", env = "RAFT_NODE_HTTP_HEAD_BYTES_MAX")]
    pub http_head_bytes_max: Option<usize>,
    /// Bytes of an HTTP request's body [default: 8388608].
    #[arg(long, help_heading = "Limits", env = "RAFT_NODE_HTTP_BODY_BYTES_MAX")]
    pub http_body_bytes_max: Option<usize>,
    /// HTTP connections at once [default: 1024].
    #[arg(long, help_heading = "Limits", env = "RAFT_NODE_HTTP_CONNECTIONS_MAX")]
    pub http_connections_max: Option<usize>,
    /// Key changes the watch history holds; older indexes answer "compacted, resync"
    /// [default: 100000].
    #[arg(
        long,
        help_heading = "Limits",
        env = "RAFT_NODE_WATCH_HISTORY_CHANGES_MAX"
    )]
    pub watch_history_changes_max: Option<usize>,
    /// Bytes the watch history holds [default: 67108864].
    #[arg(
        long,
        help_heading = "Limits",
        env = "RAFT_NODE_WATCH_HISTORY_BYTES_MAX"
    )]
    pub watch_history_bytes_max: Option<usize>,
}

impl ClientLimitsArgs {
    /// Overrides the fields of `limits` given as flags.
    pub fn apply(&self, limits: &mut ClientLimits) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { limits.$f = v; } )* };
        }
        set!(
            query_buffer_bytes_max,
            bulk_bytes_max,
            line_bytes_max,
            request_args_max,
            request_bytes_max,
            request_keys_max,
            reply_bytes_max,
            output_buffer_bytes_max,
            idle_timeout_ms,
            read_timeout_ms,
            write_timeout_ms,
            handshake_timeout_ms,
            connections_max,
            connections_per_source_max,
            connections_reserved,
            kv_memory_bytes_max,
            http_head_bytes_max,
            http_body_bytes_max,
            http_connections_max,
            watch_history_changes_max,
            watch_history_bytes_max
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: ClientLimitsArgs,
    }

    /// The `[default: N]` each flag's help shows is the default the field really gets.
    #[test]
    fn help_shows_the_real_defaults() {
        let help = Cli::command().render_long_help().to_string();
        let d = ClientLimits::default();
        let expected: [(&str, u64); 21] = [
            ("query-buffer-bytes-max", d.query_buffer_bytes_max as u64),
            ("bulk-bytes-max", d.bulk_bytes_max as u64),
            ("line-bytes-max", d.line_bytes_max as u64),
            ("request-args-max", d.request_args_max as u64),
            ("request-bytes-max", d.request_bytes_max as u64),
            ("request-keys-max", d.request_keys_max as u64),
            ("reply-bytes-max", d.reply_bytes_max as u64),
            ("output-buffer-bytes-max", d.output_buffer_bytes_max as u64),
            ("idle-timeout-ms", d.idle_timeout_ms),
            ("read-timeout-ms", d.read_timeout_ms),
            ("write-timeout-ms", d.write_timeout_ms),
            ("handshake-timeout-ms", d.handshake_timeout_ms),
            ("connections-max", d.connections_max as u64),
            (
                "connections-per-source-max",
                d.connections_per_source_max as u64,
            ),
            ("connections-reserved", d.connections_reserved as u64),
            ("kv-memory-bytes-max", d.kv_memory_bytes_max),
            ("http-head-bytes-max", d.http_head_bytes_max as u64),
            ("http-body-bytes-max", d.http_body_bytes_max as u64),
            ("http-connections-max", d.http_connections_max as u64),
            (
                "watch-history-changes-max",
                d.watch_history_changes_max as u64,
            ),
            ("watch-history-bytes-max", d.watch_history_bytes_max as u64),
        ];
        for (flag, value) in expected {
            let start = help
                .find(&format!("--{flag} "))
                .unwrap_or_else(|| panic!("--{flag} missing from the help"));
            let rest = &help[start..];
            let section = &rest[..rest[2..].find("\n  --").map_or(rest.len(), |i| i + 2)];
            assert!(
                section.contains(&format!("[default: {value}]")),
                "--{flag}: help does not show [default: {value}]: {section}"
            );
        }
        d.validate().unwrap();
    }

    #[test]
    fn flags_override_and_bad_values_name_the_field() {
        let cli = Cli::parse_from(["x", "--idle-timeout-ms", "5", "--connections-max", "10"]);
        let mut limits = ClientLimits::default();
        cli.limits.apply(&mut limits);
        assert_eq!(limits.idle_timeout_ms, 5);
        assert_eq!(limits.connections_max, 10);
        assert_eq!(
            limits.validate().unwrap_err().field,
            "limits.connections_reserved"
        );
        let limits = ClientLimits {
            bulk_bytes_max: REQUEST_BYTES_MAX_DEFAULT + 1,
            ..ClientLimits::default()
        };
        assert_eq!(
            limits.validate().unwrap_err().field,
            "limits.bulk_bytes_max"
        );
        let limits = ClientLimits {
            write_timeout_ms: 0,
            ..ClientLimits::default()
        };
        assert_eq!(
            limits.validate().unwrap_err().field,
            "limits.write_timeout_ms"
        );
    }
}
