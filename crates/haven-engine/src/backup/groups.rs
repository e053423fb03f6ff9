//! The consumer-group timeline: sampled committed offsets, stored as changes only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use haven_format::GroupCommit;
use haven_kafka::ClusterConfig;

use crate::Result;

/// Remembers the last committed offset seen per (group, topic, partition).
#[derive(Debug, Default)]
pub struct GroupSampler {
    last: BTreeMap<(String, String, i32), i64>,
    /// Groups never sampled (Haven's own).
    exclude: BTreeSet<String>,
    /// Groups always sampled, even when the cluster cannot list its groups.
    named: BTreeSet<String>,
    /// Group listings that failed in a row, and when to list again: a cluster that
    /// cannot list its groups (tansu) is asked again after 10 s, 20 s, ... at most every
    /// 5 minutes, not at every sample (it was a warning a second, and a dropped
    /// connection each time).
    list_failures: u32,
    list_after: Option<Instant>,
}

/// How long to wait before listing the groups again after `failures` failures in a row.
pub fn listing_backoff(failures: u32) -> Duration {
    Duration::from_secs(5u64 << failures.min(6)).min(Duration::from_secs(300))
}

impl GroupSampler {
    pub fn new(
        known: &BTreeMap<(String, String, i32), i64>,
        exclude: impl IntoIterator<Item = String>,
        named: impl IntoIterator<Item = String>,
    ) -> Self {
        GroupSampler {
            last: known.clone(),
            exclude: exclude.into_iter().collect(),
            named: named.into_iter().collect(),
            list_failures: 0,
            list_after: None,
        }
    }

    /// Samples every group's commits on `partitions` (blocking: run it off the runtime).
    /// Returns the number of groups, the changes since the last sample, and the error of
    /// group discovery if the cluster could not list its groups (the named groups are
    /// sampled all the same).
    pub fn sample_blocking(
        &mut self,
        cluster: &ClusterConfig,
        partitions: &[(String, i32)],
        now: i64,
    ) -> Result<(usize, Vec<GroupCommit>, Option<String>)> {
        let timeout = Duration::from_secs(10);
        let inspector = cluster.inspector("haven-inspector")?;
        let due = self.list_after.is_none_or(|t| Instant::now() >= t);
        let (listed, discovery_error) = if !due {
            (Vec::new(), None)
        } else {
            match haven_kafka::list_groups(&inspector, timeout) {
                Ok(g) => {
                    self.list_failures = 0;
                    self.list_after = None;
                    (g, None)
                }
                Err(e) => {
                    self.list_failures += 1;
                    let wait = listing_backoff(self.list_failures);
                    self.list_after = Some(Instant::now() + wait);
                    (
                        Vec::new(),
                        Some(format!("{e} (asked again in {} s)", wait.as_secs())),
                    )
                }
            }
        };
        let groups: Vec<String> = listed
            .into_iter()
            .chain(self.named.iter().cloned())
            .filter(|g| !self.exclude.contains(g) && !g.starts_with("haven-"))
            .collect::<BTreeSet<String>>()
            .into_iter()
            .collect();
        let mut changes = Vec::new();
        for g in &groups {
            let c = cluster.inspector(g)?;
            let got = haven_kafka::committed(&c, partitions, timeout)?;
            let mut seen = BTreeSet::new();
            for (topic, partition, offset) in got {
                let k = (g.clone(), topic.clone(), partition);
                seen.insert(k.clone());
                if self.last.get(&k) != Some(&offset) {
                    self.last.insert(k, offset);
                    changes.push(GroupCommit {
                        group: g.clone(),
                        topic,
                        partition,
                        offset,
                        observed_at: now,
                    });
                }
            }
            // Commits that disappeared (group deleted or offsets expired).
            let gone: Vec<_> = self
                .last
                .iter()
                .filter(|((lg, t, p), o)| {
                    lg == g && **o >= 0 && !seen.contains(&(lg.clone(), t.clone(), *p))
                })
                .filter(|((_, t, p), _)| partitions.iter().any(|(pt, pp)| pt == t && pp == p))
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                self.last.insert(k.clone(), -1);
                changes.push(GroupCommit {
                    group: k.0,
                    topic: k.1,
                    partition: k.2,
                    offset: -1,
                    observed_at: now,
                });
            }
        }
        Ok((groups.len(), changes, discovery_error))
    }
}

#[cfg(test)]
mod tests {
    use super::listing_backoff;
    use std::time::Duration;

    #[test]
    fn a_cluster_that_cannot_list_groups_is_asked_less_and_less_often() {
        let waits: Vec<u64> = (1..=9).map(|f| listing_backoff(f).as_secs()).collect();
        assert_eq!(waits, vec![10, 20, 40, 80, 160, 300, 300, 300, 300]);
        assert!(listing_backoff(u32::MAX) <= Duration::from_secs(300));
    }
}
