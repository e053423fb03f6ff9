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
    /// The mirror's position was taken from its last checkpoint (a bounded reading during a
    /// bulk copy): at most one checkpoint interval behind, so the lag is overstated, never
    /// understated.
    pub position_from_checkpoint: bool,
}

/// A selected partition: its mirror position and the source's watermarks.
pub(super) struct View {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) pos: Position,
    pub(super) low: i64,
    pub(super) high: i64,
    /// The position is the mirror's last checkpoint, not read to the end (a bulk copy).
    pub(super) from_checkpoint: bool,
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
            // Without `catch_up`: the map's last checkpoint.
            from_checkpoint: !catch_up,
        });
    }
    Ok(out)
}

/// Map entries read back from the end of the map topic by [`recent_positions`] (at least;
/// more with many partitions).
const MAP_WINDOW: i64 = 256;

/// Records read back from a target partition by [`recent_positions`]: after the last
/// checkpoint when fewer than this were written since, else the partition's last ones.
const TAIL: i64 = 64;

/// Positions for a bounded reading (blocking), reading at most a few records of each
/// target partition, never a stretch of a large one:
/// 1. the map topic's last entries give each partition's last checkpoint (a lower bound:
///    a checkpoint names acknowledged records only);
/// 2. when at most [`TAIL`] records were written to the target partition since, they are
///    read and extend the checkpoint exactly (the mirror copies in order and exactly
///    once, invariant 10, so the newest record from this source carries the highest
///    source offset copied);
/// 3. when more were, a bulk copy is in flight: the position is the checkpoint (at most
///    one checkpoint interval behind: lag overstated, never understated). Reading the
///    target there would make its broker assemble large batches while it takes the copy,
///    and on a broker with one storage lock (tansu's sqlite) stall the mirror itself;
/// 4. a partition never checkpointed (the window held the whole map) with more than
///    [`TAIL`] records is a first bulk copy: nothing counts as mirrored yet, marked as 3;
/// 5. a partition without a recent checkpoint is positioned from its last [`TAIL`]
///    records.
///
/// None when such a partition, with records, holds none of this source's in its last
/// records (then read the whole map).
fn recent_positions(opts: &MirrorOptions) -> Result<Option<Vec<View>>> {
    let s = opts.source.inspector("haven-inspector")?;
    let topics = haven_kafka::list_topics(&s, &opts.source.brokers, Duration::from_secs(10))?;
    let t = opts.target.inspector("haven-inspector")?;
    let target_topics =
        haven_kafka::list_topics(&t, &opts.target.brokers, Duration::from_secs(10))?;
    let selected: Vec<_> = topics.iter().filter(|x| opts.selects(&x.name)).collect();
    let partitions: i64 = selected.iter().map(|x| i64::from(x.partitions)).sum();
    let (checkpoints, whole_map) = position::last_checkpoints(
        &opts.target,
        &t,
        &opts.name,
        &opts.source_id,
        MAP_WINDOW.max(8 * partitions),
    )?;
    let mut out = Vec::new();
    for topic in selected {
        let tt = opts.target_topic(&topic.name);
        for p in 0..topic.partitions {
            let (low, high) = haven_kafka::watermarks(&s, &topic.name, p, Duration::from_secs(10))?;
            let mut pos = Position::default();
            let mut from_checkpoint = false;
            if target_topics
                .iter()
                .any(|x| x.name == tt && x.partitions > p)
            {
                let (tlow, thigh) = haven_kafka::watermarks(&t, &tt, p, Duration::from_secs(10))?;
                // A checkpoint past the partition's end belongs to a re-created topic.
                let checkpoint = checkpoints
                    .get(&(topic.name.clone(), p))
                    .copied()
                    .filter(|&(_, next_target)| next_target <= thigh);
                let read_from = match checkpoint {
                    Some((next_source, next_target)) => {
                        pos.push(next_source - 1, next_target - 1);
                        if thigh - next_target > TAIL {
                            from_checkpoint = true;
                            None
                        } else {
                            Some(next_target)
                        }
                    }
                    // Never checkpointed (the whole map was read) and more than a few
                    // records: a first bulk copy, at most one checkpoint interval old.
                    // Nothing is known mirrored yet (lag overstated, never understated).
                    None if whole_map && thigh - tlow > TAIL => {
                        from_checkpoint = true;
                        None
                    }
                    None => Some(thigh - TAIL),
                };
                if let Some(from) = read_from {
                    let mut newest: Option<(i64, i64)> = None;
                    haven_kafka::scan(
                        &opts.target,
                        &tt,
                        p,
                        from.max(tlow),
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
                        // Past the checkpoint (never behind it: it was acknowledged).
                        Some((source, target)) if pos.next_source().is_none_or(|n| source >= n) => {
                            pos.push(source, target);
                        }
                        Some(_) => {}
                        None if checkpoint.is_none() && thigh > tlow => return Ok(None),
                        None => {}
                    }
                }
            }
            out.push(View {
                topic: topic.name.clone(),
                partition: p,
                pos,
                low,
                high,
                from_checkpoint,
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
        let started = std::time::Instant::now();
        let views = match limit {
            // A bounded reading takes the position from the map's and the target's last
            // records.
            Some(_) => match recent_positions(&opts)? {
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
        };
        tracing::debug!(mirror = %opts.name, took_ms = started.elapsed().as_millis() as u64, "status: positions read");
        for View {
            topic,
            partition,
            pos,
            low,
            high,
            from_checkpoint,
        } in views
        {
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
            tracing::debug!(mirror = %opts.name, partition, took_ms = started.elapsed().as_millis() as u64, "status: records at risk read");
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
                position_from_checkpoint: from_checkpoint,
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
