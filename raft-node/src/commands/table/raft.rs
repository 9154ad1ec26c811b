//! The cluster commands that are not Redis'.

use super::*;

/// The raft group, in `COMMAND`'s order.
pub(super) const RAFT: &[CommandSpec] = &[
    spec(
        "leader",
        1,
        Read,
        Node,
        "raft",
        "Returns the leader's ID and client address as this node knows them, or nil.",
        "",
    )
    .flags(&["loading", "stale", "fast"])
    .acl(&["fast"])
    .differs("Not a Redis command."),
    spec(
        "raft.addlearner",
        2,
        Admin,
        Logged,
        "raft",
        "Adds the node (listed in the peers) as a learner.",
        "node-id",
    )
    .flags(RAFT_FLAGS)
    .acl(RAFT_ACL)
    .differs("Not a Redis command."),
    spec(
        "raft.promote",
        2,
        Admin,
        Logged,
        "raft",
        "Promotes a caught-up learner to voter.",
        "node-id",
    )
    .flags(RAFT_FLAGS)
    .acl(RAFT_ACL)
    .differs("Not a Redis command."),
    spec(
        "raft.remove",
        2,
        Admin,
        Logged,
        "raft",
        "Removes the node from the membership.",
        "node-id",
    )
    .flags(RAFT_FLAGS)
    .acl(RAFT_ACL)
    .differs("Not a Redis command."),
    spec(
        "raft.transfer",
        2,
        Admin,
        Node,
        "raft",
        "Transfers leadership to the node.",
        "node-id",
    )
    .flags(RAFT_FLAGS)
    .acl(RAFT_ACL)
    .differs("Not a Redis command."),
];
