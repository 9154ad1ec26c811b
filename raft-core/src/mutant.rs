//! Deliberate bugs, switched on one at a time by the simulation to prove that it catches
//! them: a safety net is only as good as the bugs it has been shown to catch.
//!
//! Each [`Mutant`] removes one rule of the protocol. Without the `sim` feature no mutant can
//! be switched on and `active` is a constant `false`, so production builds carry none of
//! this. With it, a mutant is active only on the thread that runs a simulated seed asking
//! for it (`SimOptions::mutant` in `raft_core::sim`, behind the `sim` feature).

/// One rule of the protocol, removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutant {
    /// A new leader changes the membership before an entry of its own term has committed:
    /// the single-server-change bug published by Raft's author in 2015 (raft-dev, "bug in
    /// single-server membership changes"). An uncommitted change of an earlier leader and the
    /// new leader's change can then have disjoint majorities.
    MembershipChangeBeforeTermCommit,
    /// A leader commits an entry of an earlier term by counting replicas (the Figure 8
    /// situation, §5.4.2).
    CommitEarlierTermByCount,
    /// A server grants its vote without checking that the candidate's log is at least as
    /// up to date as its own (§5.4.1).
    VoteWithoutLogCheck,
    /// A new leader answers read-index reads before an entry of its own term has committed,
    /// so it may not yet know its predecessors' commit index (§6.4).
    ReadBeforeTermCommit,
    /// A leader sends a follower behind its log the log's compaction point rather than the
    /// newest snapshot the host reported: with a trailing margin that point is no snapshot
    /// the host holds (what hosts used to paper over by rewriting the message).
    SnapshotAtCompactionPoint,
}

impl Mutant {
    /// Every mutant, for tools that try them all.
    pub const ALL: [Mutant; 5] = [
        Mutant::MembershipChangeBeforeTermCommit,
        Mutant::CommitEarlierTermByCount,
        Mutant::VoteWithoutLogCheck,
        Mutant::ReadBeforeTermCommit,
        Mutant::SnapshotAtCompactionPoint,
    ];

    /// The mutant's name on command lines (kebab case).
    pub fn name(self) -> &'static str {
        match self {
            Mutant::MembershipChangeBeforeTermCommit => "membership-change-before-term-commit",
            Mutant::CommitEarlierTermByCount => "commit-earlier-term-by-count",
            Mutant::VoteWithoutLogCheck => "vote-without-log-check",
            Mutant::ReadBeforeTermCommit => "read-before-term-commit",
            Mutant::SnapshotAtCompactionPoint => "snapshot-at-compaction-point",
        }
    }

    /// The mutant called `name`, if any.
    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL.into_iter().find(|m| m.name() == name)
    }
}

#[cfg(feature = "sim")]
thread_local! {
    static ACTIVE: std::cell::Cell<Option<Mutant>> = const { std::cell::Cell::new(None) };
}

/// Whether `mutant` is switched on for the current thread.
#[cfg(feature = "sim")]
pub(crate) fn active(mutant: Mutant) -> bool {
    ACTIVE.with(|a| a.get() == Some(mutant))
}

/// Whether `mutant` is switched on: never, without the `sim` feature.
#[cfg(not(feature = "sim"))]
#[inline(always)]
pub(crate) fn active(_mutant: Mutant) -> bool {
    false
}

/// Runs `f` with `mutant` switched on for the current thread (or none), restoring the
/// previous setting afterwards, also if `f` panics.
#[cfg(feature = "sim")]
pub(crate) fn with<R>(mutant: Option<Mutant>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Mutant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(ACTIVE.with(|a| a.replace(mutant)));
    f()
}
