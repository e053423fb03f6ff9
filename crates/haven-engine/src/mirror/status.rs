//! Read-only views of a mirror, computed from the two clusters (the mirror process need not
//! run): per-partition lag and what a source failure would lose now (`haven mirror status`),
//! and exact offset translation (`haven mirror translate`).

use std::collections::BTreeMap;
use std::time::Duration;

use haven_kafka::rdkafka::message::Message;
use serde::Serialize;

use super::position::{self, header, Position};
use super::{provenance, MirrorOptions};
use crate::{blocking, Error, Result};

/// Records on the source not yet on the target: lost if the source died now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AtRisk {
    /// Source offsets, inclusive.
    pub from: i64,
    pub to: i64,
    pub records: i64,
    /// Timestamps (ms) of the oldest and newest of them.
    pub oldest_ms: i64,
    pub newest_ms: i64,
    /// False when a bounded reading stopped early: `records` then counts every offset up
    /// to the high watermark (an upper bound) and `newest_ms` is the last one read.
    pub exact: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    pub target_topic: String,
    pub source_high: i64,
    /// Every source record before this offset is on the target.
    pub mirrored_to: i64,
    pub lag_records: i64,
    /// Age of the oldest source record not on the target (0 when none).
    pub lag_seconds: f64,
    pub at_risk: Option<AtRisk>,
}

/// A selected partition: its mirror position and the source's watermarks.
pub(super) struct View {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) pos: Position,
    pub(super) low: i64,
    pub(super) high: i64,
}

/// Positions of every selected partition, read from the target (blocking).
pub(super) fn positions(opts: &MirrorOptions) -> Result<Vec<View>> {
    positions_from(opts, true)
}

/// As [`positions`]; without `catch_up`, as of the map's last checkpoint only (a position
/// at or behind the real one: lag is overstated, never understated), without reading the
/// target partitions past it, which can be a large bulk copy.
fn positions_from(opts: &MirrorOptions, catch_up: bool) -> Result<Vec<View>> {
    let s = opts.source.inspector("haven-inspector")?;
    let topics = haven_kafka::list_topics(&s, &opts.source.brokers, Duration::from_secs(10))?;
    let selected: Vec<_> = topics
        .into_iter()
        .filter(|t| opts.selects(&t.name))
        .collect();
    if selected.is_empty() {
        return Err(Error::Input(format!(
            "no topic on the source {} matches {}",
            opts.source.brokers,
            opts.topics.as_str()
        )));
    }
    let t = opts.target.inspector("haven-inspector")?;
    let mut map = position::load_map(&opts.target, &t, &opts.name, &opts.source_id)?;
    let items: Vec<(String, i32, String)> = selected
        .iter()
        .flat_map(|t| {
            (0..t.partitions).map(move |p| (t.name.clone(), p, opts.target_topic(&t.name)))
        })
        .collect();
    // A target partition that does not exist yet (the mirror never ran) holds nothing:
    // everything on the source is at risk.
    let on_target = haven_kafka::list_topics(&t, &opts.target.brokers, Duration::from_secs(10))?;
    let existing: Vec<(String, i32, String)> = items
        .iter()
        .filter(|(_, p, tt)| on_target.iter().any(|x| x.name == *tt && x.partitions > *p))
        .cloned()
        .collect();
    if catch_up {
        position::catch_up_all(&opts.target, &t, &opts.source_id, &existing, &mut map)?;
    }
    let mut out = Vec::new();
    for (topic, partition, _) in items {
        let pos = map.remove(&(topic.clone(), partition)).unwrap_or_default();
        let (low, high) = haven_kafka::watermarks(&s, &topic, partition, Duration::from_secs(10))?;
        out.push(View {
            topic,
            partition,
            pos,
            low,
            high,
        });
    }
    Ok(out)
}

/// Records read back from the end of each target partition by [`tail_positions`].
const TAIL: i64 = 64;

/// Positions read from the last [`TAIL`] records of each target partition only (blocking):
/// the mirror copies a partition in order and exactly once (invariant 10), so the newest
/// record there from this source carries the highest source offset copied, and every
/// offset before it is on the target. O(1) per partition, where the map and the tail
/// since its last checkpoint can be large during a bulk copy. None when a partition with
/// records holds none of this source's in its last records (then read the map).
fn tail_positions(opts: &MirrorOptions) -> Result<Option<Vec<View>>> {
    let s = opts.source.inspector("haven-inspector")?;
    let topics = haven_kafka::list_topics(&s, &opts.source.brokers, Duration::from_secs(10))?;
    let t = opts.target.inspector("haven-inspector")?;
    let target_topics =
        haven_kafka::list_topics(&t, &opts.target.brokers, Duration::from_secs(10))?;
    let mut out = Vec::new();
    for topic in topics.iter().filter(|x| opts.selects(&x.name)) {
        let tt = opts.target_topic(&topic.name);
        for p in 0..topic.partitions {
            let (low, high) = haven_kafka::watermarks(&s, &topic.name, p, Duration::from_secs(10))?;
            let mut pos = Position::default();
            if target_topics
                .iter()
                .any(|x| x.name == tt && x.partitions > p)
            {
                let (tlow, thigh) = haven_kafka::watermarks(&t, &tt, p, Duration::from_secs(10))?;
                let mut newest: Option<(i64, i64)> = None;
                haven_kafka::scan(
                    &opts.target,
                    &tt,
                    p,
                    (thigh - TAIL).max(tlow),
                    thigh,
                    position::STALL,
                    |m| {
                        if let Some(src) =
                            header(m, provenance::SOURCE_HEADER).and_then(provenance::decode)
                        {
                            if src.cluster == opts.source_id
                                && src.topic == topic.name
                                && src.partition == p
                            {
                                newest = Some((src.offset, m.offset()));
                            }
                        }
                        true
                    },
                )?;
                match newest {
                    Some((source, target)) => pos.push(source, target),
                    None if thigh > tlow => return Ok(None),
                    None => {}
                }
            }
            out.push(View {
                topic: topic.name.clone(),
                partition: p,
                pos,
                low,
                high,
            });
        }
    }
    if out.is_empty() {
        return Err(Error::Input(format!(
            "no topic on the source {} matches {}",
            opts.source.brokers,
            opts.topics.as_str()
        )));
    }
    Ok(Some(out))
}

/// Lag and records at risk per partition, every record at risk read (exact: what the
/// RPO ledger and the failover gates need).
pub async fn status(opts: &MirrorOptions) -> Result<Vec<PartitionStatus>> {
    status_limited(opts, None).await
}

/// As [`status`], reading at most `limit` records at risk per partition (a dashboard's
/// reading every few seconds must not re-read a large backlog each time): the lag in
/// seconds stays exact (the oldest record at risk is read first); past the limit the
/// count is the offsets up to the high watermark, marked `exact: false`.
pub async fn status_limited(
    opts: &MirrorOptions,
    limit: Option<i64>,
) -> Result<Vec<PartitionStatus>> {
    let opts = opts.clone();
    blocking(move || {
        let now = chrono::Utc::now().timestamp_millis();
        let mut out = Vec::new();
        for View {
            topic,
            partition,
            pos,
            low,
            high,
        } in match limit {
            // A bounded reading takes the position from the target's last records.
            Some(_) => match tail_positions(&opts)? {
                Some(views) => views,
                // No record of this source among the target's last ones (local writes
                // on an active-active target, or a mirror run under another cluster
                // name): the map's last checkpoint, never a re-read of the target.
                None => {
                    tracing::debug!(mirror = %opts.name, "status: no position in the target's last records; the map's checkpoint");
                    positions_from(&opts, false)?
                }
            },
            None => positions(&opts)?,
        } {
            let mirrored_to = pos.next_source().unwrap_or(low).max(low);
            // Records after `mirrored_to` that came from the target itself are not at risk.
            let mut risk: Option<AtRisk> = None;
            haven_kafka::scan_few(
                &opts.source,
                &topic,
                partition,
                mirrored_to,
                high,
                limit.unwrap_or(high - mirrored_to),
                position::STALL,
                |m| {
                    let origin = provenance::origin(
                        header(m, provenance::ORIGIN_HEADER),
                        header(m, provenance::SOURCE_HEADER),
                    );
                    if origin == Some(opts.target_id.as_bytes()) {
                        return true;
                    }
                    let ts = m.timestamp().to_millis().unwrap_or(now);
                    let r = risk.get_or_insert(AtRisk {
                        from: m.offset(),
                        to: m.offset(),
                        records: 0,
                        oldest_ms: ts,
                        newest_ms: ts,
                        exact: true,
                    });
                    r.to = m.offset();
                    r.records += 1;
                    r.oldest_ms = r.oldest_ms.min(ts);
                    r.newest_ms = r.newest_ms.max(ts);
                    if limit.is_some_and(|l| r.records >= l) && m.offset() + 1 < high {
                        r.records += high - 1 - m.offset();
                        r.to = high - 1;
                        r.exact = false;
                        return false;
                    }
                    true
                },
            )?;
            out.push(PartitionStatus {
                target_topic: opts.target_topic(&topic),
                topic,
                partition,
                source_high: high,
                mirrored_to,
                lag_records: risk.as_ref().map_or(0, |r| r.records),
                lag_seconds: risk
                    .as_ref()
                    .map_or(0.0, |r| (now - r.oldest_ms).max(0) as f64 / 1000.0),
                at_risk: risk,
            });
        }
        Ok(out)
    })
    .await
}

/// One translated offset.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Translated {
    pub topic: String,
    pub partition: i32,
    pub source_offset: i64,
    pub target_topic: String,
    /// None while the source offset is ahead of what is mirrored.
    pub target_offset: Option<i64>,
}

/// Translates source offsets (a group's commits, or given ones) to target offsets.
/// `group`: read its committed offsets on the source; `offsets`: (topic, partition, offset).
pub async fn translate(
    opts: &MirrorOptions,
    group: Option<String>,
    offsets: Vec<(String, i32, i64)>,
) -> Result<Vec<Translated>> {
    let opts = opts.clone();
    blocking(move || {
        let positions: BTreeMap<(String, i32), Position> = positions(&opts)?
            .into_iter()
            .map(|v| ((v.topic, v.partition), v.pos))
            .collect();
        let mut wanted = offsets;
        if let Some(g) = &group {
            let c = opts.source.inspector(g)?;
            let parts: Vec<(String, i32)> = positions.keys().cloned().collect();
            wanted.extend(haven_kafka::committed(&c, &parts, Duration::from_secs(10))?);
            if wanted.is_empty() {
                return Err(Error::Input(format!(
                    "group {g:?} has no committed offsets on the source for the selected topics"
                )));
            }
        }
        wanted
            .into_iter()
            .map(|(topic, partition, offset)| {
                let pos = positions.get(&(topic.clone(), partition)).ok_or_else(|| {
                    Error::Input(format!(
                        "{topic}/{partition} is not mirrored by this mirror"
                    ))
                })?;
                let to = pos.next_source().unwrap_or(0);
                Ok(Translated {
                    target_topic: opts.target_topic(&topic),
                    target_offset: pos.map.translate_committed(offset, to),
                    topic,
                    partition,
                    source_offset: offset,
                })
            })
            .collect()
    })
    .await
}
