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
    /// The rebuild this run belongs to (0: none yet): a run of an older generation than
    /// the partition's last rebuild marker describes a topic that no longer exists.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl MapEntry {
    /// Entries of the same run share a key (a longer run supersedes a shorter one).
    pub fn key(&self) -> String {
        let key = format!(
            "{}/{}/{}/{}",
            self.source_cluster, self.topic, self.partition, self.run.source
        );
        match self.generation {
            0 => key,
            g => format!("{key}/g{g}"),
        }
    }
}

/// One record of a map topic: a run, or a rebuild marker.
#[derive(Debug, Clone)]
pub enum MapRecord {
    Run(MapEntry),
    Marker(Marker),
}

impl MapRecord {
    pub fn parse(payload: &[u8]) -> std::result::Result<Self, serde_json::Error> {
        let v: serde_json::Value = serde_json::from_slice(payload)?;
        if v.get("marker").is_some() {
            serde_json::from_value(v).map(MapRecord::Marker)
        } else {
            serde_json::from_value(v).map(MapRecord::Run)
        }
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
    /// The generation of the partition's map (see [`Marker`]); its runs are written with it.
    pub generation: u64,
    /// The target was rebuilt: source records before this offset are copied even when
    /// they came from the target (the rebuilt target no longer holds them).
    pub copy_all_below: Option<i64>,
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

/// What a marker says (see [`Marker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MarkerKind {
    /// Asked (by `haven failback reseed`): rebuild these target topics as exact copies of
    /// the source's. The mirror that reads it does so at its next session start.
    RebuildRequested,
    /// Done by the mirror: the target topics were deleted and created again; from here on
    /// the partitions' runs are of generation `epoch`, and source records before
    /// `offsets[TOPIC/PARTITION]` are copied even when they came from the target.
    Rebuilt,
    /// The source topics were rebuilt (by the reverse mirror): runs of older generations
    /// name offsets that no longer exist; the target holds records of the new generation
    /// from `offsets[TOPIC/PARTITION]` on.
    SourceRebuilt,
}

/// A rebuild marker in a mirror's map topic, beside its runs (FORMAT.md, "Mirror
/// metadata"). `epoch` is the fencing epoch of the tenure the rebuild happened in, so a
/// later rebuild always has a larger generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub source_cluster: String,
    pub marker: MarkerKind,
    pub epoch: u64,
    /// Source topic names.
    pub topics: Vec<String>,
    /// `TOPIC/PARTITION` -> offset (see [`MarkerKind`]).
    #[serde(default)]
    pub offsets: BTreeMap<String, i64>,
    /// When it was written (RFC 3339).
    pub at: String,
}

impl Marker {
    pub fn key(&self) -> String {
        // `~` cannot be in a topic name, so this never collides with a run's key.
        let kind = serde_json::to_value(self.marker)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        format!("{}/~{kind}/{}", self.source_cluster, self.epoch)
    }

    /// The partitions the marker names offsets for.
    pub fn partitions(&self) -> Vec<(String, i32)> {
        self.offsets
            .keys()
            .filter_map(|k| {
                let (t, p) = k.rsplit_once('/')?;
                Some((t.to_string(), p.parse().ok()?))
            })
            .collect()
    }
}

#[cfg(test)]
mod generation_tests {
    use super::*;

    fn run(topic: &str, source: i64, target: i64, len: i64, generation: u64) -> MapRecord {
        MapRecord::Run(MapEntry {
            source_cluster: "eu".into(),
            topic: topic.into(),
            partition: 0,
            target_topic: topic.into(),
            run: Run {
                source,
                target,
                len,
            },
            generation,
        })
    }

    fn marker(kind: MarkerKind, epoch: u64, topic: &str, at: i64) -> MapRecord {
        MapRecord::Marker(Marker {
            source_cluster: "eu".into(),
            marker: kind,
            epoch,
            topics: vec![topic.into()],
            offsets: BTreeMap::from([(format!("{topic}/0"), at)]),
            at: String::new(),
        })
    }

    #[test]
    fn a_rebuild_starts_a_generation_and_older_runs_no_longer_count() {
        let records = vec![
            run("t", 0, 0, 10, 0),
            run("u", 0, 0, 5, 0),
            marker(MarkerKind::RebuildRequested, 7, "t", 0),
            // Until the rebuild is done, the old runs still describe the topic.
            run("t", 10, 10, 2, 0),
            marker(MarkerKind::Rebuilt, 7, "t", 12),
            run("t", 0, 0, 4, 7),
            run("t", 0, 0, 3, 7),
        ];
        let before = state_of(records[..4].to_vec(), 4);
        let t = &before.positions[&("t".to_string(), 0)];
        assert_eq!((t.generation, t.next_source()), (0, Some(12)));
        let s = state_of(records, 7);
        let t = &s.positions[&("t".to_string(), 0)];
        assert_eq!(t.generation, 7);
        assert_eq!(t.copy_all_below, Some(12));
        assert_eq!(
            t.map.runs,
            vec![Run {
                source: 0,
                target: 0,
                len: 4
            }]
        );
        let u = &s.positions[&("u".to_string(), 0)];
        assert_eq!(
            (u.generation, u.next_source(), u.copy_all_below),
            (0, Some(5), None)
        );
    }

    proptest::proptest! {
        /// The map topic's decoder: any bytes give a record or an error, never a panic;
        /// what Haven writes reads back as written.
        #[test]
        fn map_records_decode_without_panics_and_round_trip(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            epoch in 0u64..1000, at in 0i64..1 << 40, source in 0i64..1 << 40,
            generation in 0u64..5,
        ) {
            let _ = MapRecord::parse(&junk);
            let m = Marker {
                source_cluster: "eu".into(),
                marker: MarkerKind::Rebuilt,
                epoch,
                topics: vec!["t".into()],
                offsets: BTreeMap::from([("t/3".to_string(), at)]),
                at: String::new(),
            };
            let back = MapRecord::parse(&serde_json::to_vec(&m).unwrap()).unwrap();
            proptest::prop_assert!(matches!(back, MapRecord::Marker(x) if x == m));
            let MapRecord::Run(e) = run("t", source, source + 1, 9, generation) else {
                unreachable!()
            };
            let back = MapRecord::parse(&serde_json::to_vec(&e).unwrap()).unwrap();
            proptest::prop_assert!(matches!(back, MapRecord::Run(x) if x == e));
        }
    }

    #[test]
    fn a_rebuilt_source_starts_over_reading_the_target_from_the_marker() {
        let s = state_of(
            vec![
                run("t", 0, 0, 100, 0),
                marker(MarkerKind::SourceRebuilt, 3, "t", 140),
            ],
            2,
        );
        let t = &s.positions[&("t".to_string(), 0)];
        assert_eq!((t.generation, t.next_source()), (3, None));
        assert_eq!((t.scanned_to, t.copy_all_below), (140, None));
        // A later generation's run, once written, is the position.
        let s = state_of(
            vec![
                run("t", 0, 0, 100, 0),
                marker(MarkerKind::SourceRebuilt, 3, "t", 140),
                run("t", 0, 0, 150, 3),
            ],
            3,
        );
        assert_eq!(s.positions[&("t".to_string(), 0)].next_source(), Some(150));
    }
}

/// A header's value.
pub fn header<'a>(m: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}

/// Calls `f` with each of `source_cluster`'s records among the map topic's last `window`
/// records (all when None), in order (blocking); whether that was the whole map (true
/// when there is no map topic yet). A record Haven did not write is named and skipped.
fn each_entry(
    target: &ClusterConfig,
    inspector: &BaseConsumer,
    mirror: &str,
    source_cluster: &str,
    window: Option<i64>,
    f: impl FnMut(MapRecord),
) -> Result<bool> {
    Ok(each_record_from(target, inspector, mirror, source_cluster, window, None, f)?.0)
}

/// [`each_entry`] from map offset `from` when given; also returns the map's end.
pub fn each_record_from(
    target: &ClusterConfig,
    inspector: &BaseConsumer,
    mirror: &str,
    source_cluster: &str,
    window: Option<i64>,
    start: Option<i64>,
    mut f: impl FnMut(MapRecord),
) -> Result<(bool, i64)> {
    let topic = map_topic(mirror);
    let exists = haven_kafka::list_topics(inspector, &target.brokers, Duration::from_secs(10))?
        .iter()
        .any(|t| t.name == topic);
    if !exists {
        return Ok((true, 0));
    }
    let (low, high) = haven_kafka::watermarks(inspector, &topic, 0, Duration::from_secs(10))?;
    let from = window.map_or(low, |w| (high - w).max(low));
    let from = start.map_or(from, |s| s.max(low));
    if from >= high {
        return Ok((from == low, high));
    }
    haven_kafka::scan(target, &topic, 0, from, high, STALL, |m| {
        match m.payload().map(MapRecord::parse) {
            Some(Ok(MapRecord::Run(e))) if e.source_cluster == source_cluster => {
                f(MapRecord::Run(e))
            }
            Some(Ok(MapRecord::Marker(k))) if k.source_cluster == source_cluster => {
                f(MapRecord::Marker(k))
            }
            Some(Err(err)) => {
                tracing::warn!("{topic}@{}: not a map entry ({err}); ignored", m.offset())
            }
            _ => {}
        }
        true
    })?;
    Ok((from == low, high))
}

/// Reads the map topic: the checkpointed runs of `source_cluster`'s partitions (blocking).
pub fn load_map(
    target: &ClusterConfig,
    inspector: &BaseConsumer,
    mirror: &str,
    source_cluster: &str,
) -> Result<BTreeMap<(String, i32), Position>> {
    Ok(load_state(target, inspector, mirror, source_cluster)?.positions)
}

/// A mirror's whole state on the target: positions under the latest generation, the
/// markers, and where the map topic ended when read.
#[derive(Debug, Clone, Default)]
pub struct MapState {
    pub positions: BTreeMap<(String, i32), Position>,
    pub markers: Vec<Marker>,
    pub map_end: i64,
}

/// Reads the map topic (blocking): runs, and the rebuild markers that decide which of
/// them still describe the topics (see [`Marker`]).
pub fn load_state(
    target: &ClusterConfig,
    inspector: &BaseConsumer,
    mirror: &str,
    source_cluster: &str,
) -> Result<MapState> {
    let mut records = Vec::new();
    let (_, map_end) =
        each_record_from(target, inspector, mirror, source_cluster, None, None, |r| {
            records.push(r)
        })?;
    Ok(state_of(records, map_end))
}

/// The state the map's records (in order) describe.
fn state_of(records: Vec<MapRecord>, map_end: i64) -> MapState {
    // (topic, partition) -> generation -> (source, target) -> len
    type Runs = BTreeMap<(String, i32), BTreeMap<u64, BTreeMap<(i64, i64), i64>>>;
    let mut runs: Runs = BTreeMap::new();
    let mut markers = Vec::new();
    for r in records {
        match r {
            MapRecord::Run(e) => {
                let len = runs
                    .entry((e.topic, e.partition))
                    .or_default()
                    .entry(e.generation)
                    .or_default()
                    .entry((e.run.source, e.run.target))
                    .or_insert(0);
                *len = (*len).max(e.run.len);
            }
            MapRecord::Marker(m) => markers.push(m),
        }
    }
    let mut positions = BTreeMap::new();
    let mut keys: Vec<(String, i32)> = runs.keys().cloned().collect();
    for m in &markers {
        for k in m.partitions() {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    for k in keys {
        let (generation, copy_all_below, target_from) = generation_of(&markers, &k.0, k.1);
        let rs = runs
            .get(&k)
            .and_then(|g| g.get(&generation))
            .cloned()
            .unwrap_or_default();
        let mut pos = Position {
            generation,
            copy_all_below,
            ..Position::default()
        };
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
        pos.scanned_to = pos.next_target().unwrap_or(0).max(target_from);
        positions.insert(k, pos);
    }
    MapState {
        positions,
        markers,
        map_end,
    }
}

/// A partition's generation from the markers: (generation, copy every record below,
/// the target offset the generation starts at).
fn generation_of(markers: &[Marker], topic: &str, partition: i32) -> (u64, Option<i64>, i64) {
    let mut out = (0, None, 0);
    for m in markers {
        if m.marker == MarkerKind::RebuildRequested || !m.topics.iter().any(|t| t == topic) {
            continue;
        }
        if m.epoch < out.0 {
            continue;
        }
        let at = m.offsets.get(&format!("{topic}/{partition}")).copied();
        out = match m.marker {
            MarkerKind::Rebuilt => (m.epoch, at, 0),
            _ => (m.epoch, None, at.unwrap_or(0)),
        };
    }
    out
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
    // (generation, end) per partition: a newer generation's entries win.
    let mut ends: BTreeMap<(String, i32), (u64, (i64, i64))> = BTreeMap::new();
    let whole = each_entry(
        target,
        inspector,
        mirror,
        source_cluster,
        Some(window),
        |r| {
            let MapRecord::Run(e) = r else { return };
            let end = (e.run.source + e.run.len, e.run.target + e.run.len);
            let at = ends
                .entry((e.topic, e.partition))
                .or_insert((e.generation, end));
            if e.generation > at.0 || (e.generation == at.0 && end.0 > at.1 .0) {
                *at = (e.generation, end);
            }
        },
    )?;
    Ok((ends.into_iter().map(|(k, (_, e))| (k, e)).collect(), whole))
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
        *pos = Position {
            generation: pos.generation,
            copy_all_below: pos.copy_all_below,
            ..Position::default()
        };
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
