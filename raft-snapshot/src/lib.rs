//! State-machine snapshots, log compaction and anti-entropy digests. Not yet implemented (issue 5).
