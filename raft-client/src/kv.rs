//! The typed key-value commands of [`Client`]: each builds a [`KvCommand`], sends it
//! through the log (writes, with a session) or as a linearizable read, and turns the
//! answer into a Rust value. Apart from the client's core because it is a long, flat list
//! that grows with every command the state machine learns.

use bytes::Bytes;

use crate::{Client, ClientError, ExpireCondition, Expiry, KvCommand, KvResponse, SetCondition};

impl Client {
    /// Runs a key-value command: writes through the log with a session, reads linearizably.
    pub async fn kv(&self, command: KvCommand) -> Result<KvResponse, ClientError> {
        let bytes = if command.is_read() {
            self.query(command.encode(), true).await?
        } else {
            self.propose(command.encode()).await?
        };
        match KvResponse::decode(&bytes) {
            Some(KvResponse::Error(e)) => Err(ClientError::Kv(e)),
            Some(r) => Ok(r),
            None => Err(ClientError::Protocol("undecodable KvResponse".into())),
        }
    }

    /// GET, linearizable.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, ClientError> {
        match self.kv(KvCommand::Get { key: key.into() }).await? {
            KvResponse::Value(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// GET from the answering node's replica without a ReadIndex round: may be stale.
    pub async fn get_stale(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, ClientError> {
        let bytes = self
            .query(KvCommand::Get { key: key.into() }.encode(), false)
            .await?;
        match KvResponse::decode(&bytes) {
            Some(KvResponse::Value(v)) => Ok(v),
            Some(other) => Err(unexpected(other)),
            None => Err(ClientError::Protocol("undecodable KvResponse".into())),
        }
    }

    /// SET.
    pub async fn set(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let command = KvCommand::Set {
            key: key.into(),
            value: value.into(),
        };
        match self.kv(command).await? {
            KvResponse::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// MGET, linearizable: one value per key, in order.
    pub async fn mget(&self, keys: Vec<Bytes>) -> Result<Vec<Option<Bytes>>, ClientError> {
        match self.kv(KvCommand::MGet { keys }).await? {
            KvResponse::Values(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// EXISTS, linearizable: how many of `keys` exist.
    pub async fn exists(&self, keys: Vec<Bytes>) -> Result<i64, ClientError> {
        match self.kv(KvCommand::Exists { keys }).await? {
            KvResponse::Int(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// MSET: sets every pair in one log entry.
    pub async fn mset(&self, pairs: Vec<(Bytes, Bytes)>) -> Result<(), ClientError> {
        match self.kv(KvCommand::MSet { pairs }).await? {
            KvResponse::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// DEL: how many of `keys` existed.
    pub async fn del(&self, keys: Vec<Bytes>) -> Result<i64, ClientError> {
        match self.kv(KvCommand::Del { keys }).await? {
            KvResponse::Int(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// INCRBY: the new value.
    pub async fn incr_by(&self, key: impl Into<Bytes>, by: i64) -> Result<i64, ClientError> {
        match self
            .kv(KvCommand::IncrBy {
                key: key.into(),
                by,
            })
            .await?
        {
            KvResponse::Int(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// Compare-and-set: whether it swapped, and the key's value afterwards.
    pub async fn compare_and_set(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<(bool, Option<Bytes>), ClientError> {
        let command = KvCommand::Cas {
            key: key.into(),
            expected,
            new,
        };
        match self.kv(command).await? {
            KvResponse::Cas { swapped, current } => Ok((swapped, current)),
            other => Err(unexpected(other)),
        }
    }

    /// SET with NX/XX (`condition`) and a time to live (`expiry`; [`Expiry::Persist`] for
    /// none, [`Expiry::Keep`] for KEEPTTL): whether it wrote.
    pub async fn set_with(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        condition: SetCondition,
        expiry: Expiry,
    ) -> Result<bool, ClientError> {
        let command = KvCommand::SetWith {
            key: key.into(),
            value: value.into(),
            condition,
            get: false,
            expiry,
        };
        match self.kv(command).await? {
            KvResponse::Ok => Ok(true),
            KvResponse::Value(None) => Ok(false),
            other => Err(unexpected(other)),
        }
    }

    /// GETDEL: the value the key held, now removed.
    pub async fn get_del(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, ClientError> {
        match self.kv(KvCommand::GetDel { key: key.into() }).await? {
            KvResponse::Value(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// APPEND: the value's new length.
    pub async fn append(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<i64, ClientError> {
        let command = KvCommand::Append {
            key: key.into(),
            value: value.into(),
        };
        self.int(command).await
    }

    /// INCRBYFLOAT: the new value, as stored (Redis' decimal text).
    pub async fn incr_by_float(
        &self,
        key: impl Into<Bytes>,
        by: f64,
    ) -> Result<Bytes, ClientError> {
        let command = KvCommand::IncrByFloat {
            key: key.into(),
            by: Bytes::from(by.to_string()),
        };
        match self.kv(command).await? {
            KvResponse::Value(Some(v)) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// RENAME (`nx`: RENAMENX): whether it renamed.
    pub async fn rename(
        &self,
        from: impl Into<Bytes>,
        to: impl Into<Bytes>,
        nx: bool,
    ) -> Result<bool, ClientError> {
        let command = KvCommand::Rename {
            from: from.into(),
            to: to.into(),
            nx,
        };
        match self.kv(command).await? {
            KvResponse::Ok | KvResponse::Int(1) => Ok(true),
            KvResponse::Int(0) => Ok(false),
            other => Err(unexpected(other)),
        }
    }

    /// EXPIRE and its variants ([`Expiry::In`] or [`Expiry::At`], in milliseconds):
    /// whether the time to live was set.
    pub async fn expire(
        &self,
        key: impl Into<Bytes>,
        when: Expiry,
        condition: ExpireCondition,
    ) -> Result<bool, ClientError> {
        let command = KvCommand::Expire {
            key: key.into(),
            when,
            condition,
        };
        Ok(self.int(command).await? == 1)
    }

    /// PERSIST: whether a time to live was removed.
    pub async fn persist(&self, key: impl Into<Bytes>) -> Result<bool, ClientError> {
        Ok(self.int(KvCommand::Persist { key: key.into() }).await? == 1)
    }

    /// PTTL, linearizable: milliseconds left, -1 without a time to live, -2 if absent
    /// (Redis' answers), by the cluster's leader-stamped clock.
    pub async fn pttl(&self, key: impl Into<Bytes>) -> Result<i64, ClientError> {
        let command = KvCommand::Ttl {
            key: key.into(),
            millis: true,
        };
        self.int(command).await
    }

    /// KEYS, linearizable: every key matching the glob `pattern`, in key order (refused
    /// past the node's `reply_bytes_max`).
    pub async fn keys(&self, pattern: impl Into<Bytes>) -> Result<Vec<Bytes>, ClientError> {
        match self
            .kv(KvCommand::Keys {
                pattern: pattern.into(),
            })
            .await?
        {
            KvResponse::Keys(keys) => Ok(keys),
            other => Err(unexpected(other)),
        }
    }

    /// SCAN, linearizable: `(next cursor, keys)`; start at 0, done when the cursor is 0.
    /// Any node continues a cursor another node answered.
    pub async fn scan(
        &self,
        cursor: u64,
        pattern: Option<Bytes>,
        count: u64,
    ) -> Result<(u64, Vec<Bytes>), ClientError> {
        let command = KvCommand::Scan {
            cursor,
            pattern,
            count,
            type_name: None,
        };
        match self.kv(command).await? {
            KvResponse::Scan { cursor, keys } => Ok((cursor, keys)),
            other => Err(unexpected(other)),
        }
    }

    /// DBSIZE, linearizable: keys that exist (expired ones not counted).
    pub async fn db_size(&self) -> Result<i64, ClientError> {
        self.int(KvCommand::DbSize).await
    }

    /// The versions of `keys` (the log index that last changed each, 0 if absent): what a
    /// transaction watches.
    pub async fn versions(&self, keys: Vec<Bytes>) -> Result<Vec<u64>, ClientError> {
        match self.kv(KvCommand::Versions { keys }).await? {
            KvResponse::Versions(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// A transaction: `commands` applied in one log entry if every `(key, version)` in
    /// `watches` still holds (see [`Client::versions`]), one answer each (a failing command
    /// answers its error, the others apply); `None` if a watched key changed and nothing
    /// was applied.
    pub async fn exec(
        &self,
        watches: Vec<(Bytes, u64)>,
        commands: Vec<KvCommand>,
    ) -> Result<Option<Vec<KvResponse>>, ClientError> {
        match self.kv(KvCommand::Exec { watches, commands }).await? {
            KvResponse::Batch(answers) => Ok(Some(answers)),
            KvResponse::Aborted => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    async fn int(&self, command: KvCommand) -> Result<i64, ClientError> {
        match self.kv(command).await? {
            KvResponse::Int(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(response: KvResponse) -> ClientError {
    ClientError::Protocol(format!("unexpected response {response:?}"))
}
