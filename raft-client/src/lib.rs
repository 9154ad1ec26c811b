//! Async client for a raft-node cluster, with request IDs that make retries idempotent. Not yet implemented (issue 6).
