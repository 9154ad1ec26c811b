//! The configurations in the node's log. A configuration takes effect when it is appended
//! (dissertation §4.1), so the one in force is the latest appended, committed or not; a
//! conflicting append or a snapshot can take it back. The node keeps the configuration in
//! force at the log's compaction point (or the applied index, if lower) and every later one,
//! which answers "the membership at index i" for any i the log holds (what a snapshot or a
//! compaction at i must record). Bounded by the configuration entries in the log.

use crate::membership::Membership;
use crate::types::Index;

/// Configurations in log order: (index of the entry, or of the snapshot, that set it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ConfigHistory {
    /// Never empty; indexes strictly increase.
    configs: Vec<(Index, Membership)>,
}

impl ConfigHistory {
    /// A history that starts from a snapshot at `index` recording `membership`.
    pub(super) fn new(index: Index, membership: Membership) -> Self {
        ConfigHistory {
            configs: vec![(index, membership)],
        }
    }

    /// The configuration in force and the index that set it.
    pub(super) fn latest(&self) -> (Index, &Membership) {
        let (index, m) = self.configs.last().expect("the history is never empty");
        (*index, m)
    }

    /// The configuration in force at `index`: set by the latest entry at or below it.
    /// `None` for an index below the oldest configuration kept (before the applied one).
    pub(super) fn at(&self, index: Index) -> Option<&Membership> {
        self.configs
            .iter()
            .rposition(|(i, _)| *i <= index)
            .map(|pos| &self.configs[pos].1)
    }

    /// The configuration at `index`, or the oldest kept when `index` lies before it.
    pub(super) fn at_or_oldest(&self, index: Index) -> &Membership {
        self.at(index).unwrap_or(&self.configs[0].1)
    }

    /// Nothing at or below `index` will be asked for again (it is applied and compacted):
    /// configurations older than the one in force there are no longer needed.
    pub(super) fn on_applied(&mut self, index: Index) {
        if let Some(pos) = self.configs.iter().rposition(|(i, _)| *i <= index) {
            self.configs.drain(..pos);
        }
    }

    /// The log was replaced from `first` on by entries carrying `appended`: drops the
    /// configurations from `first` on and adds the new ones. Returns whether the history
    /// changed. Panics if that would drop every configuration (a committed one was cut).
    pub(super) fn replace_from(
        &mut self,
        first: Index,
        appended: Vec<(Index, Membership)>,
    ) -> bool {
        let before = self.configs.len();
        self.configs.retain(|(i, _)| *i < first);
        assert!(
            !self.configs.is_empty(),
            "the committed configuration was truncated"
        );
        debug_assert!(appended.windows(2).all(|w| w[0].0 < w[1].0));
        let changed = self.configs.len() != before || !appended.is_empty();
        self.configs.extend(appended);
        changed
    }

    /// The log was replaced by a snapshot at `index` recording `membership`.
    pub(super) fn reset(&mut self, index: Index, membership: Membership) {
        self.configs = vec![(index, membership)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(ids: &[u64]) -> Membership {
        Membership::new_voters(ids.iter().copied())
    }

    #[test]
    fn the_membership_at_an_index_is_set_by_the_latest_entry_at_or_below_it() {
        let mut h = ConfigHistory::new(5, voters(&[1, 2, 3]));
        assert!(h.replace_from(
            8,
            vec![(8, voters(&[1, 2, 3, 4])), (12, voters(&[1, 2, 4]))]
        ));
        assert_eq!(h.latest(), (12, &voters(&[1, 2, 4])));
        assert_eq!(h.at(4), None, "before the snapshot");
        assert_eq!(h.at(5), Some(&voters(&[1, 2, 3])));
        assert_eq!(h.at(11), Some(&voters(&[1, 2, 3, 4])));
        assert_eq!(h.at(100), Some(&voters(&[1, 2, 4])));
        assert_eq!(h.at_or_oldest(0), &voters(&[1, 2, 3]));

        h.on_applied(9);
        assert_eq!(h.at(7), None, "older than the configuration applied");
        assert_eq!(h.at(9), Some(&voters(&[1, 2, 3, 4])));
        assert_eq!(h.at_or_oldest(7), &voters(&[1, 2, 3, 4]));
    }

    #[test]
    fn a_conflicting_append_takes_back_the_configurations_it_replaces() {
        let mut h = ConfigHistory::new(0, voters(&[1, 2, 3]));
        h.replace_from(4, vec![(4, voters(&[1, 2]))]);
        assert!(h.replace_from(4, Vec::new()), "entry 4 was replaced");
        assert_eq!(h.latest(), (0, &voters(&[1, 2, 3])));
        assert!(!h.replace_from(9, Vec::new()), "nothing at or after 9");
        h.reset(20, voters(&[2, 3]));
        assert_eq!(h.latest(), (20, &voters(&[2, 3])));
        assert_eq!(h.at(19), None);
    }

    #[test]
    #[should_panic(expected = "committed configuration was truncated")]
    fn cutting_every_configuration_is_a_bug() {
        let mut h = ConfigHistory::new(3, voters(&[1]));
        h.replace_from(3, Vec::new());
    }
}
