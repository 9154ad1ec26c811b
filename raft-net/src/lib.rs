//! Length-prefixed TCP transport carrying `raft_core` messages between nodes. Not yet implemented (issue 4).
