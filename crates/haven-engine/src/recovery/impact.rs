//! Impact analysis: when a service's database is restored to T0 at T1, which events did it
//! produce in the lost window, which downstream groups had already processed them, and
//! where must its own consumer groups go back to.
//!
//! Produced ranges come from the live cluster (offsets by time); what each group processed
//! from its live committed offsets (falling back to the backup's timeline, flagged); the
//! upstream rewind points from the backup's commit timeline at T0. Anything the timeline
//! cannot tell is reported as unknown, never guessed.

use std::collections::BTreeSet;
use std::time::Duration;

use haven_kafka::ClusterConfig;
use serde::Serialize;

use super::Service;
use crate::timeline::Timeline;
use crate::{blocking, Error, Result};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Range {
    pub partition: i32,
    /// Offsets `from..to` (exclusive).
    pub from: i64,
    pub to: i64,
    pub records: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupImpact {
    pub group: String,
    /// `affected`, `unaffected` or `unknown`.
    pub status: String,
    pub processed: i64,
    /// Per partition: the part of the window the group had processed.
    pub ranges: Vec<Range>,
    /// Where the group's positions came from, and what could not be told.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Downstream {
    pub topic: String,
    pub produced: Vec<Range>,
    pub records: i64,
    pub groups: Vec<GroupImpact>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UpstreamPartition {
    pub partition: i32,
    /// The group's committed offset at T0: where it must rewind to.
    pub at_t0: Option<i64>,
    /// Its committed offset now.
    pub now: Option<i64>,
    /// Records consumed since T0 (now - at_t0), the input the restored database lost.
    pub records: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Upstream {
    pub topic: String,
    pub group: String,
    pub partitions: Vec<UpstreamPartition>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Impact {
    pub service: String,
    pub restored_to: String,
    pub incident: String,
    pub restored_to_ms: i64,
    pub incident_ms: i64,
    /// Stretches of the window the backup's commit timeline does not cover.
    pub timeline_gaps: Vec<(String, String)>,
    pub downstream: Vec<Downstream>,
    pub upstream: Vec<Upstream>,
}

/// Groups Haven itself runs are never downstream consumers.
fn is_haven_group(g: &str) -> bool {
    g.starts_with("haven-")
}

/// Computes the impact. `groups_of`: every service's groups, with what they consume (from
/// the config), so that groups the timeline never saw are still checked.
pub async fn analyse(
    cluster: &ClusterConfig,
    timeline: &Timeline,
    service: &Service,
    known_consumers: Vec<(String, Vec<String>)>,
    t0: i64,
    t1: i64,
    sample_gap_ms: i64,
) -> Result<Impact> {
    timeline.require(t0, "--restored-to")?;
    if t1 <= t0 {
        return Err(Error::Input(format!(
            "--incident {} is not after --restored-to {}",
            crate::time::format_ms(t1),
            crate::time::format_ms(t0)
        )));
    }
    let gaps = timeline.gaps(t0, t1, sample_gap_ms);
    let gap_note = gaps.first().map(|(a, b)| {
        format!(
            "the commit timeline has no sample for {} stretch(es) of the window (first {} .. {}): when this group processed events there is unknown",
            gaps.len(),
            crate::time::format_ms(*a),
            crate::time::format_ms(*b)
        )
    });
    let (c, svc, tl) = (cluster.clone(), service.clone(), timeline.clone());
    let (downstream, upstream) = blocking(move || {
        let inspector = c.inspector("haven-inspector")?;
        let topics = haven_kafka::list_topics(&inspector, &c.brokers, Duration::from_secs(10))?;
        let partitions_of = |t: &str| -> Result<i32> {
            topics
                .iter()
                .find(|x| x.name == t)
                .map(|x| x.partitions)
                .ok_or_else(|| {
                    Error::Input(format!(
                        "topic {t} (of service {}) is not on {}",
                        svc.name, c.brokers
                    ))
                })
        };
        let mut downstream = Vec::new();
        for topic in &svc.produces {
            let n = partitions_of(topic)?;
            let mut produced = Vec::new();
            for p in 0..n {
                let at = haven_kafka::offsets_at_times(
                    &c,
                    &inspector,
                    topic,
                    p,
                    &[t0, t1],
                    Duration::from_secs(10),
                )?;
                let (from, to) = (at.offsets[0], at.offsets[1]);
                produced.push(Range {
                    partition: p,
                    from,
                    to,
                    records: (to - from).max(0),
                });
            }
            let mut groups: BTreeSet<String> = tl.groups_on(topic).into_iter().collect();
            for (g, consumes) in &known_consumers {
                if consumes.iter().any(|t| t == topic) {
                    groups.insert(g.clone());
                }
            }
            groups.retain(|g| !is_haven_group(g) && !svc.groups.contains(g));
            let mut impacts = Vec::new();
            for g in groups {
                let gc = c.inspector(&g)?;
                let parts: Vec<(String, i32)> = (0..n).map(|p| (topic.clone(), p)).collect();
                let live = haven_kafka::committed(&gc, &parts, Duration::from_secs(10)).ok();
                let mut ranges = Vec::new();
                let mut unknown = Vec::new();
                for r in &produced {
                    let committed = match &live {
                        Some(l) => l.iter().find(|x| x.1 == r.partition).map(|x| x.2),
                        None => tl.offset_at(&g, topic, r.partition, i64::MAX),
                    };
                    match committed {
                        Some(c) => {
                            let upto = c.min(r.to);
                            if upto > r.from {
                                ranges.push(Range {
                                    partition: r.partition,
                                    from: r.from,
                                    to: upto,
                                    records: upto - r.from,
                                });
                            }
                        }
                        None if r.records > 0 => unknown.push(r.partition),
                        None => {}
                    }
                }
                let processed: i64 = ranges.iter().map(|r| r.records).sum();
                let status = if !unknown.is_empty() || (live.is_none() && gap_note.is_some()) {
                    "unknown"
                } else if processed > 0 {
                    "affected"
                } else {
                    "unaffected"
                };
                let mut notes = Vec::new();
                if live.is_none() {
                    notes.push(
                        "live commits unreachable: positions from the backup's timeline"
                            .to_string(),
                    );
                }
                if !unknown.is_empty() {
                    notes.push(format!("no commit known on partitions {unknown:?}"));
                }
                if let Some(n) = &gap_note {
                    notes.push(n.clone());
                }
                impacts.push(GroupImpact {
                    group: g,
                    status: status.into(),
                    processed,
                    ranges,
                    note: (!notes.is_empty()).then(|| notes.join("; ")),
                });
            }
            downstream.push(Downstream {
                topic: topic.clone(),
                records: produced.iter().map(|r| r.records).sum(),
                produced,
                groups: impacts,
            });
        }
        let mut upstream = Vec::new();
        for topic in &svc.consumes {
            let n = partitions_of(topic)?;
            for g in &svc.groups {
                let gc = c.inspector(g)?;
                let parts: Vec<(String, i32)> = (0..n).map(|p| (topic.clone(), p)).collect();
                let live = haven_kafka::committed(&gc, &parts, Duration::from_secs(10))?;
                let partitions = (0..n)
                    .map(|p| {
                        let at_t0 = tl.offset_at(g, topic, p, t0);
                        let now = live.iter().find(|x| x.1 == p).map(|x| x.2);
                        UpstreamPartition {
                            partition: p,
                            at_t0,
                            now,
                            records: match (at_t0, now) {
                                (Some(a), Some(b)) => Some((b - a).max(0)),
                                _ => None,
                            },
                        }
                    })
                    .collect();
                upstream.push(Upstream {
                    topic: topic.clone(),
                    group: g.clone(),
                    partitions,
                });
            }
        }
        Ok((downstream, upstream))
    })
    .await?;
    Ok(Impact {
        service: service.name.clone(),
        restored_to: crate::time::format_ms(t0),
        incident: crate::time::format_ms(t1),
        restored_to_ms: t0,
        incident_ms: t1,
        timeline_gaps: gaps
            .into_iter()
            .map(|(a, b)| (crate::time::format_ms(a), crate::time::format_ms(b)))
            .collect(),
        downstream,
        upstream,
    })
}
