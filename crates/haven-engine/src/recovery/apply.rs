//! Applying a recovery plan: each step of [`RecoveryPlan`] run by the engine's executor
//! (progress next to the plan file, resume, audit in the repository).

use std::time::Duration;

use crate::executor::{Progress, Runner};
use crate::read::Bound;
use crate::repo::Repository;
use crate::Result;
use haven_kafka::ClusterConfig;

use super::plan::{RecoveryPlan, Step};
use super::replay::{self, ReplayOptions};
use super::sink::{Sink, SinkSpec};
use super::{compensate, rewind};

impl crate::executor::Step for Step {
    fn describe(&self) -> String {
        match self {
            Step::Rewind { group, moves } => {
                format!("rewind group {group} on {} partitions", moves.len())
            }
            Step::Replay { topics, sink, .. } => {
                format!(
                    "replay {} to {}",
                    topics.join(", "),
                    super::sink::redact(sink)
                )
            }
            Step::Compensate {
                ranges, to_topic, ..
            } => format!(
                "compensate {} events to {to_topic}",
                ranges.iter().map(|r| (r.3 - r.2).max(0)).sum::<i64>()
            ),
        }
    }
}

/// Runs a recovery plan's steps against a cluster and a repository.
pub struct RecoveryRunner<'a> {
    pub plan: &'a RecoveryPlan,
    /// The plan's SHA-256 (names replay ids).
    pub sha256: &'a str,
    pub repo: &'a Repository,
    pub cluster: &'a ClusterConfig,
}

#[async_trait::async_trait]
impl Runner<Step> for RecoveryRunner<'_> {
    async fn run(&mut self, index: usize, step: &Step, _: &Progress) -> Result<serde_json::Value> {
        let p = self.plan;
        let json = |v: Result<serde_json::Value, serde_json::Error>| {
            v.map_err(|e| crate::Error::Task(e.to_string()))
        };
        match step {
            Step::Rewind { group, moves } => {
                let rp = rewind::RewindPlan {
                    group: group.clone(),
                    at: p.restored_to_ms,
                    at_text: p.restored_to.clone(),
                    moves: moves.clone(),
                };
                rewind::apply_async(self.cluster, &rp, Duration::from_secs(3)).await?;
                json(serde_json::to_value(&rp))
            }
            Step::Replay {
                topics,
                from_ms,
                to_ms,
                source,
                sink,
            } => {
                let spec = SinkSpec::parse(sink)?;
                let mut s = Sink::open(&spec, Some(self.cluster)).await?;
                let opts = ReplayOptions {
                    topics: topics.clone(),
                    partitions: None,
                    from: Bound::Time(*from_ms),
                    to: Bound::Time(*to_ms),
                    source: *source,
                    batch: 500,
                    id: format!("plan-{}-{index}", &self.sha256[..12.min(self.sha256.len())]),
                };
                let r = replay::replay(Some(self.repo), Some(self.cluster), &opts, &mut s).await?;
                json(serde_json::to_value(&r))
            }
            Step::Compensate {
                ranges,
                to_topic,
                generator,
            } => {
                let r = compensate::compensate(self.cluster, ranges, to_topic, generator).await?;
                json(serde_json::to_value(&r))
            }
        }
    }
}
