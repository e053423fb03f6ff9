//! The consumer-group commit timeline a backup records: what each group had committed on
//! each partition at any instant, and where the timeline cannot tell.
//!
//! A backup samples commits every few seconds and stores only changes, plus the instant of
//! every full sample. Between two samples a group's offset is known to lie between the two
//! sampled values; before the first sample, or across a sampling gap (backup stopped), it
//! is unknown and reported as such, never guessed.

use std::collections::BTreeMap;

use crate::repo::RepoState;

/// Commit history of one (group, topic, partition): (observed at, offset), in time order.
pub type History = Vec<(i64, i64)>;

#[derive(Debug, Clone, Default)]
pub struct Timeline {
    histories: BTreeMap<(String, String, i32), History>,
    samples: Vec<i64>,
}

impl Timeline {
    pub fn new(state: &RepoState) -> Timeline {
        let mut histories: BTreeMap<(String, String, i32), History> = BTreeMap::new();
        for c in &state.group_commits {
            histories
                .entry((c.group.clone(), c.topic.clone(), c.partition))
                .or_default()
                .push((c.observed_at, c.offset));
        }
        for h in histories.values_mut() {
            h.sort_by_key(|x| x.0);
        }
        let mut samples = state.group_samples.clone();
        samples.sort_unstable();
        Timeline { histories, samples }
    }

    /// When the timeline starts (its first full sample).
    pub fn start(&self) -> Option<i64> {
        self.samples.first().copied()
    }

    /// Fails unless the timeline knows where groups were at `at`; `what` names the instant
    /// for the message (`--restored-to`, `--to`).
    pub fn require(&self, at: i64, what: &str) -> crate::Result<()> {
        let start = self.start().ok_or_else(|| {
            crate::Error::Input("the backup holds no consumer-group timeline: run `haven backup` with --group-interval > 0 (and --group NAME where the cluster cannot list groups)".into())
        })?;
        if at < start {
            return Err(crate::Error::Input(format!(
                "{what} {} is before the start of the backup's group timeline ({}): where groups were then is unknown, not guessed; pick a later instant",
                crate::time::format_ms(at),
                crate::time::format_ms(start)
            )));
        }
        Ok(())
    }

    /// The last full sample.
    pub fn end(&self) -> Option<i64> {
        self.samples.last().copied()
    }

    /// Groups seen committing on `topic`.
    pub fn groups_on(&self, topic: &str) -> Vec<String> {
        let mut g: Vec<String> = self
            .histories
            .keys()
            .filter(|k| k.1 == topic)
            .map(|k| k.0.clone())
            .collect();
        g.dedup();
        g
    }

    /// Partitions of `topic` on which `group` was seen committing.
    pub fn partitions(&self, group: &str, topic: &str) -> Vec<i32> {
        self.histories
            .keys()
            .filter(|k| k.0 == group && k.1 == topic)
            .map(|k| k.2)
            .collect()
    }

    /// The group's committed offset at instant `at`: the last change observed at or
    /// before it. None when the timeline starts after `at` or the group had no commit.
    pub fn offset_at(&self, group: &str, topic: &str, partition: i32, at: i64) -> Option<i64> {
        if self.start().is_none_or(|s| s > at) {
            return None;
        }
        self.histories
            .get(&(group.to_string(), topic.to_string(), partition))?
            .iter()
            .take_while(|(t, _)| *t <= at)
            .last()
            .map(|(_, o)| *o)
            .filter(|o| *o >= 0)
    }

    /// Stretches of `[from, to)` the timeline does not cover: before its first sample,
    /// after its last one, and between two samples further apart than `max_gap` ms.
    pub fn gaps(&self, from: i64, to: i64, max_gap: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        let Some(first) = self.start() else {
            return vec![(from, to)];
        };
        if from < first {
            out.push((from, first.min(to)));
        }
        for w in self.samples.windows(2) {
            let (a, b) = (w[0], w[1]);
            if b - a > max_gap && b > from && a < to {
                out.push((a.max(from), b.min(to)));
            }
        }
        if let Some(last) = self.end() {
            if last + max_gap < to {
                out.push((last.max(from), to));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_format::GroupCommit;

    fn state() -> RepoState {
        let c = |offset, observed_at| GroupCommit {
            group: "billing".into(),
            topic: "orders".into(),
            partition: 0,
            offset,
            observed_at,
        };
        RepoState {
            group_commits: vec![c(10, 1_000), c(25, 6_000), c(40, 11_000)],
            group_samples: vec![1_000, 6_000, 11_000, 16_000, 60_000],
            ..Default::default()
        }
    }

    #[test]
    fn offsets_at_instants_and_unknowns() {
        let t = Timeline::new(&state());
        assert_eq!(
            t.offset_at("billing", "orders", 0, 500),
            None,
            "before the timeline"
        );
        assert_eq!(t.offset_at("billing", "orders", 0, 1_000), Some(10));
        assert_eq!(t.offset_at("billing", "orders", 0, 5_999), Some(10));
        assert_eq!(t.offset_at("billing", "orders", 0, 6_000), Some(25));
        assert_eq!(t.offset_at("billing", "orders", 0, 99_000), Some(40));
        assert_eq!(t.offset_at("billing", "orders", 1, 6_000), None);
        assert_eq!(t.groups_on("orders"), vec!["billing".to_string()]);
    }

    #[test]
    fn gaps_are_named() {
        let t = Timeline::new(&state());
        assert_eq!(t.gaps(2_000, 15_000, 10_000), vec![]);
        assert_eq!(t.gaps(500, 15_000, 10_000), vec![(500, 1_000)]);
        assert_eq!(t.gaps(10_000, 50_000, 10_000), vec![(16_000, 50_000)]);
        assert_eq!(
            t.gaps(10_000, 80_000, 10_000),
            vec![(16_000, 60_000), (60_000, 80_000)]
        );
    }
}
