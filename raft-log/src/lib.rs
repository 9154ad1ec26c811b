//! Segmented, memory-mapped write-ahead log implementing `raft_core::LogStore` on disk. Not yet implemented (issue 3).
