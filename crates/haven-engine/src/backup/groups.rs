//! The consumer-group timeline: sampled committed offsets, stored as changes only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

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
        let (listed, discovery_error) = match haven_kafka::list_groups(&inspector, timeout) {
            Ok(g) => (g, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
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
