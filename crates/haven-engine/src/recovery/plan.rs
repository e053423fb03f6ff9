//! A recovery plan: the hybrid of the three options, written to a file the team reviews,
//! then applied step by step (`haven recover --apply PLAN`). Progress is kept next to the
//! plan (`PLAN.progress.json`), so an apply that stopped at a failure continues with the
//! failed step; every step is recorded in the audit log with the plan's SHA-256.

use serde::{Deserialize, Serialize};

use super::compensate::Generator;
use super::impact::Impact;
use super::replay::Source;
use super::rewind::Move;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Set a group's offsets to where they were at T0 (the service consumes its inputs
    /// again). The group must be stopped.
    Rewind { group: String, moves: Vec<Move> },
    /// Replay the window's events to a sink (the service rebuilds from them).
    Replay {
        topics: Vec<String>,
        from_ms: i64,
        to_ms: i64,
        source: Source,
        sink: String,
    },
    /// Emit compensating events for the window's events downstream groups processed:
    /// (topic, partition, from, to) offset ranges.
    Compensate {
        ranges: Vec<(String, i32, i64, i64)>,
        to_topic: String,
        generator: Generator,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryPlan {
    pub service: String,
    pub restored_to: String,
    /// T0 in Unix ms (what the rewind steps go back to).
    pub restored_to_ms: i64,
    pub incident: String,
    pub created_at: String,
    /// What the plan could not decide (unknown offsets, ...): read before applying.
    pub warnings: Vec<String>,
    pub steps: Vec<Step>,
}

/// Builds the plan from an impact report.
pub fn build(
    impact: &Impact,
    replay: Option<(Source, String)>,
    compensate: Option<(String, Generator)>,
) -> RecoveryPlan {
    let mut warnings = Vec::new();
    let mut steps = Vec::new();
    let mut groups: Vec<String> = Vec::new();
    for u in &impact.upstream {
        if !groups.contains(&u.group) {
            groups.push(u.group.clone());
        }
    }
    for g in groups {
        let mut moves = Vec::new();
        for u in impact.upstream.iter().filter(|u| u.group == g) {
            for p in &u.partitions {
                match p.at_t0 {
                    Some(to) => moves.push(Move {
                        topic: u.topic.clone(),
                        partition: p.partition,
                        now: p.now,
                        to,
                    }),
                    None => warnings.push(format!(
                        "group {g} on {}/{}: no commit known at T0, left out of the rewind",
                        u.topic, p.partition
                    )),
                }
            }
        }
        if !moves.is_empty() {
            steps.push(Step::Rewind { group: g, moves });
        }
    }
    if let Some((source, sink)) = replay {
        steps.push(Step::Replay {
            topics: impact.downstream.iter().map(|d| d.topic.clone()).collect(),
            from_ms: impact.restored_to_ms,
            to_ms: impact.incident_ms,
            source,
            sink,
        });
    }
    if let Some((to_topic, generator)) = compensate {
        let mut ranges: Vec<(String, i32, i64, i64)> = Vec::new();
        for d in &impact.downstream {
            for r in &d.produced {
                let upto = d
                    .groups
                    .iter()
                    .flat_map(|g| g.ranges.iter().filter(|x| x.partition == r.partition))
                    .map(|x| x.to)
                    .max();
                if let Some(to) = upto {
                    ranges.push((d.topic.clone(), r.partition, r.from, to));
                }
            }
            for g in d.groups.iter().filter(|g| g.status == "unknown") {
                warnings.push(format!(
                    "group {} on {}: what it processed is unknown; compensations cover only what the other groups processed",
                    g.group, d.topic
                ));
            }
        }
        steps.push(Step::Compensate {
            ranges,
            to_topic,
            generator,
        });
    }
    RecoveryPlan {
        service: impact.service.clone(),
        restored_to: impact.restored_to.clone(),
        restored_to_ms: impact.restored_to_ms,
        incident: impact.incident.clone(),
        created_at: crate::time::format_ms(chrono::Utc::now().timestamp_millis()),
        warnings,
        steps,
    }
}
