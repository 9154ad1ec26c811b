//! The string and generic (key) commands.

use super::*;

/// The strings group, in `COMMAND`'s order.
pub(super) const STRINGS: &[CommandSpec] = &[
    spec(
        "cas",
        4,
        ReadWrite,
        Logged,
        "string",
        "Sets the key to new only if it holds expected; returns 1 if it did, else 0.",
        "key expected new",
    )
    .flags(WRITE_FLAGS)
    .acl(WRITE_ACL)
    .keys(1, 1, 1)
    .differs("Not a Redis command."),
    spec(
        "casnx",
        3,
        ReadWrite,
        Logged,
        "string",
        "Sets the key only if it does not exist; returns 1 if it did, else 0.",
        "key new",
    )
    .flags(WRITE_FLAGS)
    .acl(WRITE_ACL)
    .keys(1, 1, 1)
    .differs("Not a Redis command."),
    spec(
        "decr",
        2,
        ReadWrite,
        Logged,
        "string",
        "Decrements the integer at the key by one.",
        "key",
    )
    .flags(WRITE_FLAGS)
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "decrby",
        3,
        ReadWrite,
        Logged,
        "string",
        "Decrements the integer at the key by decrement.",
        "key decrement",
    )
    .flags(WRITE_FLAGS)
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "del",
        -2,
        ReadWrite,
        Logged,
        "generic",
        "Deletes keys; returns how many existed.",
        "key [key ...]",
    )
    .flags(&["write"])
    .acl(&["keyspace", "write", "slow"])
    .keys(1, -1, 1),
    spec(
        "exists",
        -2,
        Read,
        Linearizable,
        "generic",
        "Returns how many of the keys exist (a key named twice counts twice).",
        "key [key ...]",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"])
    .keys(1, -1, 1),
    spec(
        "get",
        2,
        Read,
        Linearizable,
        "string",
        "Returns the key's value.",
        "key",
    )
    .flags(READ_FLAGS)
    .acl(READ_ACL)
    .keys(1, 1, 1),
    spec(
        "incr",
        2,
        ReadWrite,
        Logged,
        "string",
        "Increments the integer at the key by one.",
        "key",
    )
    .flags(WRITE_FLAGS)
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "incrby",
        3,
        ReadWrite,
        Logged,
        "string",
        "Increments the integer at the key by increment.",
        "key increment",
    )
    .flags(WRITE_FLAGS)
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "mget",
        -2,
        Read,
        Linearizable,
        "string",
        "Returns the values of the keys.",
        "key [key ...]",
    )
    .flags(READ_FLAGS)
    .acl(READ_ACL)
    .keys(1, -1, 1),
    spec(
        "mset",
        -3,
        ReadWrite,
        Logged,
        "string",
        "Sets several keys at once, atomically.",
        "key value [key value ...]",
    )
    .flags(WRITE_FLAGS)
    .acl(&["write", "string", "slow"])
    .keys(1, -1, 2),
    spec(
        "set",
        -3,
        ReadWrite,
        Logged,
        "string",
        "Sets the key's value, with a condition, an expiry, or returning the old value.",
        "key value [NX | XX] [GET] [EX seconds | PX milliseconds | EXAT unix-time-seconds | PXAT unix-time-milliseconds | KEEPTTL]",
    )
    .flags(WRITE_FLAGS)
    .acl(&["write", "string", "slow"])
    .keys(1, 1, 1),
    spec(
        "staleget",
        2,
        Read,
        Local,
        "string",
        "Returns the key's value from this node's applied state, without asking the leader.",
        "key",
    )
    .flags(READ_FLAGS)
    .acl(READ_ACL)
    .keys(1, 1, 1)
    .differs("Not a Redis command: GET is linearizable, STALEGET is the local read."),
    spec(
        "append",
        3,
        ReadWrite,
        Logged,
        "string",
        "Appends the value to the key's string; returns the new length.",
        "key value",
    )
    .flags(&["write", "denyoom"])
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "dbsize",
        1,
        Read,
        Linearizable,
        "server",
        "Returns the number of keys.",
        "",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"]),
    spec(
        "expire",
        -3,
        ReadWrite,
        Logged,
        "generic",
        "Sets the key's time to live in seconds.",
        "key seconds [NX | XX | GT | LT]",
    )
    .flags(&["write", "denyoom"])
    .acl(&["keyspace", "write"])
    .keys(1, 1, 1)
    .differs("Time is the leader's clock stamped into the log entry (docs/EXPIRY.md)."),
    spec(
        "expireat",
        -3,
        ReadWrite,
        Logged,
        "generic",
        "Sets the key's expiry as a Unix time in seconds.",
        "key unix-time-seconds [NX | XX | GT | LT]",
    )
    .flags(&["write", "denyoom"])
    .acl(&["keyspace", "write"])
    .keys(1, 1, 1)
    .differs("Time is the leader's clock stamped into the log entry (docs/EXPIRY.md)."),
    spec(
        "expiretime",
        2,
        Read,
        Linearizable,
        "generic",
        "Returns the Unix time in seconds the key expires at (-1 none, -2 absent).",
        "key",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"])
    .keys(1, 1, 1),
    spec(
        "flushall",
        -1,
        Admin,
        Logged,
        "server",
        "Removes every key.",
        "[ASYNC | SYNC]",
    )
    .flags(&["write"])
    .acl(&["keyspace", "write", "slow", "dangerous"])
    .differs("Role admin; ASYNC and SYNC are the same: one log entry."),
    spec(
        "flushdb",
        -1,
        Admin,
        Logged,
        "server",
        "Removes every key (the one database).",
        "[ASYNC | SYNC]",
    )
    .flags(&["write"])
    .acl(&["keyspace", "write", "slow", "dangerous"])
    .differs("Role admin; ASYNC and SYNC are the same: one log entry."),
    spec(
        "getdel",
        2,
        ReadWrite,
        Logged,
        "string",
        "Returns the key's value and deletes the key.",
        "key",
    )
    .flags(&["write"])
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "getex",
        -2,
        ReadWrite,
        Logged,
        "string",
        "Returns the key's value and sets or removes its expiry.",
        "key [EX seconds | PX milliseconds | EXAT unix-time-seconds | PXAT unix-time-milliseconds | PERSIST]",
    )
    .flags(&["write", "denyoom"])
    .acl(WRITE_ACL)
    .keys(1, 1, 1)
    .differs("A write through the log even without options."),
    spec(
        "getrange",
        4,
        Read,
        Linearizable,
        "string",
        "Returns the substring of the key's value between two offsets (inclusive, negative from the end).",
        "key start end",
    )
    .flags(READ_FLAGS)
    .acl(READ_ACL)
    .keys(1, 1, 1),
    spec(
        "getset",
        3,
        ReadWrite,
        Logged,
        "string",
        "Sets the key and returns its old value.",
        "key value",
    )
    .flags(&["write", "denyoom"])
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "incrbyfloat",
        3,
        ReadWrite,
        Logged,
        "string",
        "Increments the number at the key by a float.",
        "key increment-float",
    )
    .flags(&["write", "denyoom"])
    .acl(WRITE_ACL)
    .keys(1, 1, 1)
    .differs("See docs/EXPIRY.md for the formatting of results."),
    spec(
        "keys",
        2,
        Read,
        Linearizable,
        "generic",
        "Returns every key matching the glob pattern.",
        "pattern",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"])
    .differs("Bounded by the reply size limit."),
    spec(
        "msetnx",
        -3,
        ReadWrite,
        Logged,
        "string",
        "Sets several keys only if none exists; returns 1 if it did.",
        "key value [key value ...]",
    )
    .flags(&["write", "denyoom"])
    .acl(WRITE_ACL)
    .keys(1, -1, 2),
    spec(
        "persist",
        2,
        ReadWrite,
        Logged,
        "generic",
        "Removes the key's time to live.",
        "key",
    )
    .flags(&["write"])
    .acl(&["keyspace", "write"])
    .keys(1, 1, 1),
    spec(
        "pexpire",
        -3,
        ReadWrite,
        Logged,
        "generic",
        "Sets the key's time to live in milliseconds.",
        "key milliseconds [NX | XX | GT | LT]",
    )
    .flags(&["write", "denyoom"])
    .acl(&["keyspace", "write"])
    .keys(1, 1, 1)
    .differs("Time is the leader's clock stamped into the log entry (docs/EXPIRY.md)."),
    spec(
        "pexpireat",
        -3,
        ReadWrite,
        Logged,
        "generic",
        "Sets the key's expiry as a Unix time in milliseconds.",
        "key unix-time-milliseconds [NX | XX | GT | LT]",
    )
    .flags(&["write", "denyoom"])
    .acl(&["keyspace", "write"])
    .keys(1, 1, 1)
    .differs("Time is the leader's clock stamped into the log entry (docs/EXPIRY.md)."),
    spec(
        "pexpiretime",
        2,
        Read,
        Linearizable,
        "generic",
        "Returns the Unix time in milliseconds the key expires at.",
        "key",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"])
    .keys(1, 1, 1),
    spec(
        "pttl",
        2,
        Read,
        Linearizable,
        "generic",
        "Returns the key's time to live in milliseconds (-1 none, -2 absent).",
        "key",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"])
    .keys(1, 1, 1)
    .differs("Measured against the replicated clock (the last leader stamp), not the answering node's."),
    spec(
        "rename",
        3,
        ReadWrite,
        Logged,
        "generic",
        "Renames a key (its value and expiry).",
        "key newkey",
    )
    .flags(&["write", "denyoom"])
    .acl(&["keyspace", "write"])
    .keys(1, 2, 1),
    spec(
        "renamenx",
        3,
        ReadWrite,
        Logged,
        "generic",
        "Renames a key only if the new name does not exist.",
        "key newkey",
    )
    .flags(&["write", "denyoom"])
    .acl(&["keyspace", "write"])
    .keys(1, 2, 1),
    spec(
        "scan",
        -2,
        Read,
        Linearizable,
        "generic",
        "Iterates over the keys with a cursor.",
        "cursor [MATCH pattern] [COUNT count] [TYPE type]",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"])
    .differs("The cursor is derived from the keys, so a scan continues on any node and across leader changes (docs/EXPIRY.md)."),
    spec(
        "setnx",
        3,
        ReadWrite,
        Logged,
        "string",
        "Sets the key only if it does not exist; returns 1 if it did.",
        "key value",
    )
    .flags(&["write", "denyoom"])
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "setrange",
        4,
        ReadWrite,
        Logged,
        "string",
        "Overwrites part of the key's string from an offset; returns the new length.",
        "key offset value",
    )
    .flags(&["write", "denyoom"])
    .acl(WRITE_ACL)
    .keys(1, 1, 1),
    spec(
        "strlen",
        2,
        Read,
        Linearizable,
        "string",
        "Returns the length of the key's value.",
        "key",
    )
    .flags(READ_FLAGS)
    .acl(READ_ACL)
    .keys(1, 1, 1),
    spec(
        "substr",
        4,
        Read,
        Linearizable,
        "string",
        "GETRANGE's old name.",
        "key start end",
    )
    .flags(READ_FLAGS)
    .acl(READ_ACL)
    .keys(1, 1, 1),
    spec(
        "ttl",
        2,
        Read,
        Linearizable,
        "generic",
        "Returns the key's time to live in seconds (-1 none, -2 absent).",
        "key",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"])
    .keys(1, 1, 1)
    .differs("Measured against the replicated clock (the last leader stamp), not the answering node's."),
    spec(
        "type",
        2,
        Read,
        Linearizable,
        "generic",
        "Returns the key's type: string, or none.",
        "key",
    )
    .flags(READ_FLAGS)
    .acl(&["keyspace", "read", "fast"])
    .keys(1, 1, 1)
    .differs("Only strings exist."),
    spec(
        "unlink",
        -2,
        ReadWrite,
        Logged,
        "generic",
        "Deletes keys; returns how many existed.",
        "key [key ...]",
    )
    .flags(&["write"])
    .acl(&["keyspace", "write"])
    .keys(1, -1, 1)
    .differs("The same as DEL."),
];
