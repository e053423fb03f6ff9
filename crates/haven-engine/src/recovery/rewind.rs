//! Rewinding a consumer group to where it was at an instant, from the backup's commit
//! timeline, so that a service whose database was restored to that instant consumes its
//! inputs again.
//!
//! A group with active members must not be rewound (its members would overwrite the
//! offsets, or worse, keep running on the old position). Where the broker describes groups,
//! members are named and the rewind refused. Where it cannot (tansu), Haven watches the
//! group's commits for a moment before and after the rewind: a group whose commits move is
//! active, and a rewind its members overwrote is reported as failed, never as done.

use std::time::Duration;

use haven_kafka::ClusterConfig;
use serde::{Deserialize, Serialize};

use crate::timeline::Timeline;
use crate::{blocking, Error, Result};

/// Where one partition goes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Move {
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset now (None: no commit).
    pub now: Option<i64>,
    /// Its committed offset at the rewind instant.
    pub to: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RewindPlan {
    pub group: String,
    /// The instant (Unix ms) and as text.
    pub at: i64,
    pub at_text: String,
    pub moves: Vec<Move>,
}

/// What Haven could tell about a group's members.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Activity {
    Inactive,
    /// Members as the broker describes them (empty when it cannot describe groups and the
    /// evidence is moving commits).
    Active {
        members: Vec<String>,
        evidence: String,
    },
}

/// The rewind of `group` on `topics` to instant `at`, from the timeline. Partitions the
/// group had no commit on at `at` are left out (and named in the error when none is left).
pub fn plan(timeline: &Timeline, group: &str, topics: &[String], at: i64) -> Result<RewindPlan> {
    timeline.require(at, "--to")?;
    let mut moves = Vec::new();
    for topic in topics {
        for p in timeline.partitions(group, topic) {
            if let Some(o) = timeline.offset_at(group, topic, p, at) {
                moves.push(Move {
                    topic: topic.clone(),
                    partition: p,
                    now: None,
                    to: o,
                });
            }
        }
    }
    if moves.is_empty() {
        return Err(Error::Input(format!(
            "group {group:?} had no commit on {} at {} according to the backup's timeline",
            topics.join(", "),
            crate::time::format_ms(at)
        )));
    }
    Ok(RewindPlan {
        group: group.to_string(),
        at,
        at_text: crate::time::format_ms(at),
        moves,
    })
}

fn current(
    cluster: &ClusterConfig,
    group: &str,
    moves: &[Move],
) -> Result<Vec<(String, i32, i64)>> {
    let c = cluster.inspector(group)?;
    let parts: Vec<(String, i32)> = moves
        .iter()
        .map(|m| (m.topic.clone(), m.partition))
        .collect();
    Ok(haven_kafka::committed(&c, &parts, Duration::from_secs(10))?)
}

/// Fills in the group's current offsets (blocking).
pub fn with_current(cluster: &ClusterConfig, mut plan: RewindPlan) -> Result<RewindPlan> {
    let now = current(cluster, &plan.group, &plan.moves)?;
    for m in &mut plan.moves {
        m.now = now
            .iter()
            .find(|(t, p, _)| *t == m.topic && *p == m.partition)
            .map(|x| x.2);
    }
    Ok(plan)
}

/// Whether the group has members (blocking): described by the broker, else inferred from
/// its commits moving during `watch`.
pub fn activity(cluster: &ClusterConfig, plan: &RewindPlan, watch: Duration) -> Result<Activity> {
    let c = cluster.inspector(&plan.group)?;
    if let Some(members) = haven_kafka::group_members(&c, &plan.group, Duration::from_secs(5)) {
        return Ok(if members.is_empty() {
            Activity::Inactive
        } else {
            Activity::Active {
                members,
                evidence: "the broker lists them".into(),
            }
        });
    }
    let before = current(cluster, &plan.group, &plan.moves)?;
    std::thread::sleep(watch);
    let after = current(cluster, &plan.group, &plan.moves)?;
    if before != after {
        return Ok(Activity::Active {
            members: Vec::new(),
            evidence: format!(
                "its committed offsets moved within {} ms (the broker cannot describe groups, so members cannot be named)",
                watch.as_millis()
            ),
        });
    }
    Ok(Activity::Inactive)
}

/// Commits the plan's offsets, then checks for `watch` that nobody overwrote them
/// (blocking).
pub fn apply(cluster: &ClusterConfig, plan: &RewindPlan, watch: Duration) -> Result<()> {
    if let Activity::Active { members, evidence } = activity(cluster, plan, watch)? {
        return Err(Error::Input(format!(
            "group {:?} is active ({evidence}){}: stop its consumers, then rewind again",
            plan.group,
            if members.is_empty() {
                String::new()
            } else {
                format!("; members: {}", members.join(", "))
            }
        )));
    }
    let offsets: Vec<(String, i32, i64)> = plan
        .moves
        .iter()
        .map(|m| (m.topic.clone(), m.partition, m.to))
        .collect();
    haven_kafka::commit_offsets(cluster, &plan.group, &offsets)?;
    std::thread::sleep(watch);
    let mut after = current(cluster, &plan.group, &plan.moves)?;
    after.sort();
    let mut want = offsets;
    want.sort();
    if after != want {
        return Err(Error::Task(format!(
            "group {:?}: the rewind was overwritten (now {after:?}): a member is still running; stop it and rewind again",
            plan.group
        )));
    }
    Ok(())
}

/// Runs [`apply`] off the async runtime.
pub async fn apply_async(
    cluster: &ClusterConfig,
    plan: &RewindPlan,
    watch: Duration,
) -> Result<()> {
    let (c, p) = (cluster.clone(), plan.clone());
    blocking(move || apply(&c, &p, watch)).await
}
