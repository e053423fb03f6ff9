//! Where a mirror stands on each partition, rebuilt from the target cluster alone.
//!
//! Two sources, both on the target, so any process of the mirror (after a crash, on
//! another machine, after a rebalance) finds the same answer:
//! 1. the **map topic** `haven-mirror-map.NAME`: compact offset-map runs the mirror
//!    checkpoints every few seconds ([`MapEntry`], JSON, keyed so that a compacted topic
//!    keeps one entry per run);
//! 2. the **tail** of each target partition after the last checkpointed run: every mirrored
//!    record carries its source coordinates (`provenance`), so the records written after
//!    the last checkpoint extend the map exactly.
//!
//! The resume point is the source offset after the last mirrored record: a record is
//! either on the target (and skipped) or not (and copied), so a restart neither duplicates
//! nor skips.

use std::collections::BTreeMap;
use std::time::Duration;

use haven_kafka::rdkafka::consumer::BaseConsumer;
use haven_kafka::rdkafka::message::{BorrowedMessage, Headers, Message};
use haven_kafka::ClusterConfig;
use serde::{Deserialize, Serialize};

use super::provenance;
use crate::offsets::{OffsetMap, Run};
use crate::Result;

/// What every mirror's map topic is named with.
pub const MAP_TOPIC_PREFIX: &str = "haven-mirror-map.";

/// The map topic of a mirror.
pub fn map_topic(mirror: &str) -> String {
    format!("{MAP_TOPIC_PREFIX}{mirror}")
}

/// One checkpointed run of a partition's offset map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEntry {
    pub source_cluster: String,
    pub topic: String,
    pub partition: i32,
    pub target_topic: String,
    #[serde(flatten)]
    pub run: Run,
}

impl MapEntry {
    /// Entries of the same run share a key (a longer run supersedes a shorter one).
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.source_cluster, self.topic, self.partition, self.run.source
        )
    }
}

/// A partition's mirror position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// Source offsets mirrored so far and where they landed.
    pub map: OffsetMap,
    /// Target offset up to which the target partition has been read back.
    pub scanned_to: i64,
    /// Records found on the target twice (must stay 0; reported, never hidden).
    pub duplicates: u64,
}

impl Position {
    /// The first source offset not on the target (None: nothing mirrored yet).
    pub fn next_source(&self) -> Option<i64> {
        self.map.runs.last().map(|r| r.source + r.len)
    }

    /// The target offset after the last mirrored record.
    pub fn next_target(&self) -> Option<i64> {
        self.map.runs.last().map(|r| r.target + r.len)
    }

    /// Records that source `source` landed at target `target`; a source offset at or
    /// before one already mapped is a duplicate and is counted, not mapped.
    pub fn push(&mut self, source: i64, target: i64) {
        if self.next_source().is_some_and(|n| source < n) {
            self.duplicates += 1;
            return;
        }
        self.map.push(source, target);
    }
}

/// A header's value.
pub fn header<'a>(m: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}

/// Calls `f` with each of `source_cluster`'s entries among the map topic's last `window`
/// entries (all when None), in order (blocking); whether that was the whole map (true
/// when there is no map topic yet). An entry Haven did not write is named and skipped.
fn each_entry(
    target: &ClusterConfig,
    inspector: &BaseConsumer,
    mirror: &str,
    source_cluster: &str,
    window: Option<i64>,
    mut f: impl FnMut(MapEntry),
) -> Result<bool> {
    let topic = map_topic(mirror);
    let exists = haven_kafka::list_topics(inspector, &target.brokers, Duration::from_secs(10))?
        .iter()
        .any(|t| t.name == topic);
    if !exists {
        return Ok(true);
    }
    let (low, high) = haven_kafka::watermarks(inspector, &topic, 0, Duration::from_secs(10))?;
    let from = window.map_or(low, |w| (high - w).max(low));
    haven_kafka::scan(target, &topic, 0, from, high, STALL, |m| {
        match m.payload().map(serde_json::from_slice::<MapEntry>) {
            Some(Ok(e)) if e.source_cluster == source_cluster => f(e),
            Some(Err(err)) => {
                tracing::warn!("{topic}@{}: not a map entry ({err}); ignored", m.offset())
            }
            _ => {}
        }
        true
    })?;
    Ok(from == low)
}

/// Reads the map topic: the checkpointed runs of `source_cluster`'s partitions (blocking).
pub fn load_map(
    target: &ClusterConfig,
    inspector: &BaseConsumer,
    mirror: &str,
    source_cluster: &str,
) -> Result<BTreeMap<(String, i32), Position>> {
    let mut runs: BTreeMap<(String, i32), BTreeMap<(i64, i64), i64>> = BTreeMap::new();
    each_entry(target, inspector, mirror, source_cluster, None, |e| {
        let len = runs
            .entry((e.topic, e.partition))
            .or_default()
            .entry((e.run.source, e.run.target))
            .or_insert(0);
        *len = (*len).max(e.run.len);
    })?;
    Ok(runs
        .into_iter()
        .map(|(k, rs)| {
            let mut pos = Position::default();
            for ((source, target), len) in rs {
                // Runs come sorted by source; a shorter copy of a run is already merged.
                if pos.next_source().is_some_and(|n| source < n) {
                    continue;
                }
                pos.map.runs.push(Run {
                    source,
                    target,
                    len,
                });
            }
            pos.scanned_to = pos.next_target().unwrap_or(0);
            (k, pos)
        })
        .collect())
}

/// (topic, partition) -> (the first source offset not checkpointed, the target offset
/// after the last checkpointed record).
pub type Checkpoints = BTreeMap<(String, i32), (i64, i64)>;

/// Where the mirror's last checkpoints put each partition of `source_cluster`, from the
/// map topic's last `window` entries only (blocking). A lower bound of each position (a
/// checkpoint names acknowledged records only), read in one small fetch: the mirror
/// checkpoints every partition that moved every few seconds, so a partition being copied
/// is always among the last entries. Partitions that did not move for a while may be
/// missing, unless the window held the whole map (the second value): then a partition
/// missing was never checkpointed.
pub fn last_checkpoints(
    target: &ClusterConfig,
    inspector: &BaseConsumer,
    mirror: &str,
    source_cluster: &str,
    window: i64,
) -> Result<(Checkpoints, bool)> {
    let mut out = Checkpoints::new();
    let whole = each_entry(
        target,
        inspector,
        mirror,
        source_cluster,
        Some(window),
        |e| {
            let end = (e.run.source + e.run.len, e.run.target + e.run.len);
            let at = out.entry((e.topic, e.partition)).or_insert(end);
            if end.0 > at.0 {
                *at = end;
            }
        },
    )?;
    Ok((out, whole))
}

/// How long a read may make no progress before the broker counts as unreachable.
pub const STALL: Duration = Duration::from_secs(30);

/// Extends `pos` with the mirrored records on the target partition after what it knows
/// (blocking). A target partition shorter than the map (re-created topic) resets it.
pub fn catch_up(
    target: &ClusterConfig,
    inspector: &BaseConsumer,
    source_cluster: &str,
    topic: &str,
    partition: i32,
    target_topic: &str,
    pos: &mut Position,
) -> Result<()> {
    let (low, high) =
        haven_kafka::watermarks(inspector, target_topic, partition, Duration::from_secs(10))?;
    if pos.next_target().is_some_and(|n| high < n) {
        tracing::warn!(
            "{target_topic}/{partition} ends at {high}, before the mirror's map: the target topic was re-created; mirroring it again from the start"
        );
        *pos = Position::default();
    }
    let from = pos.scanned_to.max(pos.next_target().unwrap_or(0)).max(low);
    haven_kafka::scan(target, target_topic, partition, from, high, STALL, |m| {
        if let Some(s) = header(m, provenance::SOURCE_HEADER).and_then(provenance::decode) {
            if s.cluster == source_cluster && s.topic == topic && s.partition == partition {
                pos.push(s.offset, m.offset());
            }
        }
        true
    })?;
    pos.scanned_to = high;
    Ok(())
}

/// [`catch_up`] for many partitions at once (blocking): one metadata connection, and the
/// partitions read back in parallel, so a start across a slow inter-region link costs a
/// few round trips, not a few per partition. `parts`: (topic, partition, target topic).
pub fn catch_up_all(
    target: &ClusterConfig,
    inspector: &BaseConsumer,
    source_cluster: &str,
    parts: &[(String, i32, String)],
    positions: &mut BTreeMap<(String, i32), Position>,
) -> Result<()> {
    for chunk in parts.chunks(16) {
        let results: Vec<Result<Position>> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(t, p, tt)| {
                    let mut pos = positions.get(&(t.clone(), *p)).cloned().unwrap_or_default();
                    scope.spawn(move || {
                        catch_up(target, inspector, source_cluster, t, *p, tt, &mut pos)?;
                        Ok(pos)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(crate::Error::Task("read-back thread panicked".into()))
                    })
                })
                .collect()
        });
        for ((t, p, _), r) in chunk.iter().zip(results) {
            positions.insert((t.clone(), *p), r?);
        }
    }
    Ok(())
}
