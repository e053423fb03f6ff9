//! Planning a restore: what to restore where, pinned so that a resume selects the same
//! records.

use std::collections::BTreeMap;
use std::time::Duration;

use haven_format::Record;
use haven_kafka::ClusterConfig;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::read::Bound;
use crate::repo::{RepoState, Repository};
use crate::{blocking, Error, Result};

/// Topic configurations a restore carries over when it creates a topic.
pub(crate) const CARRIED_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "retention.ms",
    "retention.bytes",
    "max.message.bytes",
    "message.timestamp.type",
    "min.compaction.lag.ms",
];

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub cluster: ClusterConfig,
    pub topics: Regex,
    pub partitions: Option<Vec<i32>>,
    /// Window start (inclusive) and end (exclusive): offsets or record times.
    pub from: Bound,
    pub to: Bound,
    /// Exact topic renames, source -> target.
    pub renames: BTreeMap<String, String>,
    /// Prefix and suffix added to every target topic name not renamed explicitly.
    pub prefix: String,
    pub suffix: String,
    /// Offset windows `[from, to)` for single partitions, overriding `from`/`to` there.
    pub offset_windows: BTreeMap<i32, (i64, i64)>,
    pub provenance_headers: bool,
    /// Consumer groups whose committed offsets are carried over, translated.
    pub groups: Option<Regex>,
    /// The instant whose group offsets are restored (`--at`); None: the latest known.
    pub group_point: Option<i64>,
    /// Re-hash by key onto an existing target topic with another partition count.
    pub repartition: bool,
    /// Explicit source -> target partition map.
    pub partition_map: Option<BTreeMap<i32, i32>>,
}

/// A consumer group's committed offset on a restored partition, and where it lands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedGroup {
    pub group: String,
    pub source_topic: String,
    pub partition: i32,
    /// The committed offset (the next record the group would read) at the restore point.
    pub source_offset: i64,
    /// When Haven observed that commit.
    pub observed_at: String,
    pub target_topic: String,
    /// Where the group resumes on the target.
    pub target_offset: i64,
}

impl RestoreOptions {
    /// Every partition of the matching topics, no window, same names, no groups.
    pub fn new(cluster: ClusterConfig, topics: Regex) -> Self {
        RestoreOptions {
            cluster,
            topics,
            partitions: None,
            from: Bound::Unbounded,
            to: Bound::Unbounded,
            renames: BTreeMap::new(),
            prefix: String::new(),
            suffix: String::new(),
            offset_windows: BTreeMap::new(),
            provenance_headers: false,
            groups: None,
            group_point: None,
            repartition: false,
            partition_map: None,
        }
    }
}

/// One source partition and where it goes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedPartition {
    pub source_topic: String,
    pub generation: u32,
    pub partition: i32,
    pub target_topic: String,
    /// The target partition all its records go to; None when re-hashed by key
    /// (`--repartition`) or in a plan written before this field existed.
    #[serde(default)]
    pub target_partition: Option<i32>,
    /// Offsets of the first and last selected records (the selection is pinned to them).
    pub first_offset: i64,
    pub last_offset: i64,
    pub records: u64,
    /// Payload bytes of the selected records.
    pub bytes: u64,
    /// The target partition's high watermark before the restore.
    pub target_start: i64,
    /// An offset window of its own (`--offsets`) replaced the plan's window here; the
    /// pinned range is then the whole selection.
    #[serde(default)]
    pub own_window: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedTopic {
    pub source: String,
    pub target: String,
    /// Partition count of the target topic.
    pub partitions: i32,
    /// Whether the restore creates it (false: it exists).
    pub create: bool,
    pub configs: Vec<(String, String)>,
    /// How source partitions map onto target partitions.
    #[serde(default)]
    pub routing: Routing,
    /// Each target partition's high watermark before the restore.
    #[serde(default)]
    pub target_starts: Vec<i64>,
}

/// Where a record of source partition `p` goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// Target partition `p`.
    #[default]
    Same,
    /// Re-hashed by key with the Java client's murmur2 partitioner (keyless records: `p`
    /// modulo the target count).
    Hash,
    /// An explicit source -> target partition map.
    Map(BTreeMap<i32, i32>),
}

impl Routing {
    /// The one target partition of every record of `source_partition`, unless re-hashed.
    pub fn fixed_target(&self, source_partition: i32) -> Option<i32> {
        match self {
            Routing::Same => Some(source_partition),
            Routing::Map(m) => Some(
                m.get(&source_partition)
                    .copied()
                    .unwrap_or(source_partition),
            ),
            Routing::Hash => None,
        }
    }

    pub fn target(&self, key: Option<&[u8]>, source_partition: i32, partitions: i32) -> i32 {
        match self {
            Routing::Same => source_partition,
            Routing::Hash => crate::partitioner::java_partition(key, source_partition, partitions),
            Routing::Map(m) => m
                .get(&source_partition)
                .copied()
                .unwrap_or(source_partition),
        }
    }
}

/// `restores/{id}/plan.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestorePlan {
    pub id: String,
    pub created_at: String,
    pub repository_id: String,
    pub target: String,
    pub from: String,
    pub to: String,
    pub provenance_headers: bool,
    pub topics: Vec<PlannedTopic>,
    pub partitions: Vec<PlannedPartition>,
    #[serde(default)]
    pub groups: Vec<PlannedGroup>,
    /// Groups asked for but left alone, with the reason.
    #[serde(default)]
    pub groups_skipped: Vec<(String, String)>,
}

fn parse_bound(text: &str) -> Bound {
    if text == "unbounded" {
        Bound::Unbounded
    } else if let Some(o) = text.strip_prefix("offset ").and_then(|o| o.parse().ok()) {
        Bound::Offset(o)
    } else {
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|d| Bound::Time(d.timestamp_millis()))
            .unwrap_or(Bound::Unbounded)
    }
}

fn selected(r: &Record, from: Bound, to: Bound) -> bool {
    crate::read::in_window(r.offset, r.timestamp, from, to)
}

/// The chunks that may hold a planned partition's records, in offset order.
pub(crate) fn chunks_of<'a>(
    state: &'a RepoState,
    pp: &PlannedPartition,
) -> Result<Vec<&'a crate::repo::ChunkRef>> {
    let ps = state
        .partitions
        .get(&(pp.source_topic.clone(), pp.generation, pp.partition))
        .ok_or_else(|| {
            Error::Input(format!(
                "{}/{} is no longer in the repository",
                pp.source_topic, pp.partition
            ))
        })?;
    Ok(ps
        .chunks
        .iter()
        .filter(|c| c.meta.last_offset >= pp.first_offset && c.meta.first_offset <= pp.last_offset)
        .collect())
}

/// Whether a record belongs to a planned partition's selection.
pub(crate) fn is_selected(
    window: (Bound, Bound),
    pp: &PlannedPartition,
    offset: i64,
    timestamp: i64,
) -> bool {
    offset >= pp.first_offset
        && offset <= pp.last_offset
        && (pp.own_window || crate::read::in_window(offset, timestamp, window.0, window.1))
}

/// The plan's window.
pub(crate) fn window(plan: &RestorePlan) -> (Bound, Bound) {
    (parse_bound(&plan.from), parse_bound(&plan.to))
}

/// Plans a restore of the latest generation of every matching topic.
pub async fn plan(
    repo: &Repository,
    state: &RepoState,
    opts: &RestoreOptions,
) -> Result<RestorePlan> {
    crate::read::check_window(opts.from, opts.to)?;
    for (p, (a, b)) in &opts.offset_windows {
        if a >= b {
            return Err(Error::Input(format!(
                "--offsets {p}={a}..{b}: empty window (TO is exclusive)"
            )));
        }
    }
    state.ensure_intact()?;
    let sources: Vec<(String, u32)> = state
        .topics
        .iter()
        .filter(|(t, _)| opts.topics.is_match(t))
        .map(|(t, s)| (t.clone(), s.generation))
        .collect();
    if sources.is_empty() {
        let known: Vec<&str> = state.topics.keys().map(String::as_str).collect();
        return Err(Error::Input(format!(
            "no topic in the repository matches {}; it holds: {}",
            opts.topics.as_str(),
            if known.is_empty() {
                "(nothing)".into()
            } else {
                known.join(", ")
            }
        )));
    }
    let cluster = opts.cluster.clone();
    let (inspector, existing) = blocking(move || {
        let c = cluster.inspector("haven-inspector")?;
        let t = haven_kafka::list_topics(&c, &cluster.brokers, Duration::from_secs(10))?;
        Ok((c, t))
    })
    .await?;
    let inspector = std::sync::Arc::new(inspector);
    let mut topics = Vec::new();
    let mut partitions = Vec::new();
    let mut selections: BTreeMap<(String, i32), (Counted, i64)> = BTreeMap::new();
    for (topic, generation) in sources {
        let target = opts
            .renames
            .get(&topic)
            .cloned()
            .unwrap_or_else(|| format!("{}{topic}{}", opts.prefix, opts.suffix));
        let meta = state.topics.get(&topic).and_then(|t| t.meta.clone());
        let source_partitions: Vec<i32> = state
            .partitions
            .keys()
            .filter(|(t, g, _)| *t == topic && *g == generation)
            .map(|k| k.2)
            .collect();
        if let Some(wanted) = &opts.partitions {
            crate::read::check_partitions(state, &topic, generation, wanted)?;
        }
        let windowed: Vec<i32> = opts.offset_windows.keys().copied().collect();
        crate::read::check_partitions(state, &topic, generation, &windowed)
            .map_err(|e| Error::Input(format!("--offsets: {e}")))?;
        let count = meta
            .as_ref()
            .map(|m| m.partition_count)
            .unwrap_or_else(|| source_partitions.iter().max().map_or(1, |m| m + 1));
        let (create, target_count) = match existing.iter().find(|t| t.name == target) {
            Some(t) => (false, t.partitions),
            None => (true, count),
        };
        let routing = match &opts.partition_map {
            Some(m) => {
                if let Some((s, t)) = m.iter().find(|(_, t)| **t < 0 || **t >= target_count) {
                    return Err(Error::Input(format!(
                        "--partition-map {s}={t}: {target} has partitions 0..{}",
                        target_count - 1
                    )));
                }
                if let Some(p) = source_partitions.iter().find(|p| !m.contains_key(p)) {
                    return Err(Error::Input(format!(
                        "--partition-map does not say where partition {p} of {topic} goes"
                    )));
                }
                Routing::Map(m.clone())
            }
            None if target_count == count => Routing::Same,
            None if opts.repartition => Routing::Hash,
            None => {
                return Err(Error::Input(format!(
                    "target topic {target} exists with {target_count} partitions, the backup of {topic} has {count}: \
                     add --repartition (re-hash by key, as the Java client does) or --partition-map, \
                     or restore to another name (--rename {topic}=NEW)"
                )))
            }
        };
        let target_starts = if create {
            vec![0; target_count.max(0) as usize]
        } else {
            let (c, t) = (inspector.clone(), target.clone());
            blocking(move || {
                (0..target_count)
                    .map(|p| Ok(haven_kafka::watermarks(&c, &t, p, Duration::from_secs(10))?.1))
                    .collect::<Result<Vec<i64>>>()
            })
            .await?
        };
        let configs = meta
            .as_ref()
            .map(|m| {
                m.configs
                    .iter()
                    .filter(|(k, v)| CARRIED_CONFIGS.contains(&k.as_str()) && v.is_some())
                    .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        topics.push(PlannedTopic {
            source: topic.clone(),
            target: target.clone(),
            partitions: target_count,
            create,
            configs,
            routing: routing.clone(),
            target_starts: target_starts.clone(),
        });
        for p in source_partitions {
            if opts.partitions.as_ref().is_some_and(|v| !v.contains(&p)) {
                continue;
            }
            let Some(ps) = state.partitions.get(&(topic.clone(), generation, p)) else {
                continue;
            };
            let (from, to) = match opts.offset_windows.get(&p) {
                Some((a, b)) => (Bound::Offset(*a), Bound::Offset(*b)),
                None => (opts.from, opts.to),
            };
            let sel = count_selection(repo, &ps.chunks, from, to).await?;
            if sel.records == 0 {
                continue;
            }
            // Meaningful when partitions map one to one.
            let target_start = target_starts.get(p as usize).copied().unwrap_or(0);
            let (first, last, n, bytes) = (sel.first, sel.last, sel.records, sel.bytes);
            selections.insert((topic.clone(), p), (sel, target_start));
            partitions.push(PlannedPartition {
                source_topic: topic.clone(),
                generation,
                partition: p,
                target_topic: target.clone(),
                target_partition: routing.fixed_target(p),
                first_offset: first,
                last_offset: last,
                records: n,
                bytes,
                target_start,
                own_window: opts.offset_windows.contains_key(&p),
            });
        }
    }
    let (groups, groups_skipped) =
        plan_groups(repo, state, opts, &topics, &partitions, &selections).await?;
    Ok(RestorePlan {
        groups,
        groups_skipped,
        id: format!(
            "{}-{:08x}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
            rand::random::<u32>()
        ),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        repository_id: repo.descriptor.id.clone(),
        target: opts.cluster.brokers.clone(),
        from: opts.from.to_string(),
        to: opts.to.to_string(),
        provenance_headers: opts.provenance_headers,
        topics,
        partitions,
    })
}

/// The group offsets to carry over: each selected group's commit at the restore point on
/// every restored partition, translated through the partition's offset map.
async fn plan_groups(
    repo: &Repository,
    state: &RepoState,
    opts: &RestoreOptions,
    topics: &[PlannedTopic],
    partitions: &[PlannedPartition],
    selections: &BTreeMap<(String, i32), (Counted, i64)>,
) -> Result<(Vec<PlannedGroup>, Vec<(String, String)>)> {
    let Some(re) = &opts.groups else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut skipped = Vec::new();
    if let (Some(at), Some(first)) = (opts.group_point, state.group_samples.iter().min()) {
        if at < *first {
            skipped.push((
                re.as_str().to_string(),
                format!(
                    "the group timeline starts at {}, after the restore point: offsets unknown, not guessed",
                    crate::time::format_ms(*first)
                ),
            ));
            return Ok((Vec::new(), skipped));
        }
    }
    // Latest commit at or before the restore point, per (group, topic, partition).
    let mut at_point: BTreeMap<(String, String, i32), &haven_format::GroupCommit> = BTreeMap::new();
    for c in &state.group_commits {
        if !re.is_match(&c.group) || opts.group_point.is_some_and(|t| c.observed_at > t) {
            continue;
        }
        at_point.insert((c.group.clone(), c.topic.clone(), c.partition), c);
    }
    let mut groups = Vec::new();
    for ((group, topic, partition), c) in at_point {
        let Some(pp) = partitions
            .iter()
            .find(|pp| pp.source_topic == topic && pp.partition == partition)
        else {
            continue;
        };
        if c.offset < 0 {
            skipped.push((
                group,
                format!("{topic}/{partition}: no commit at the restore point"),
            ));
            continue;
        }
        let Some((sel, target_start)) = selections.get(&(topic.clone(), partition)) else {
            continue;
        };
        if topics
            .iter()
            .find(|t| t.source == topic)
            .map(|t| &t.routing)
            != Some(&Routing::Same)
        {
            skipped.push((
                group,
                format!("{topic}/{partition}: offsets cannot be translated across repartitioning"),
            ));
            continue;
        }
        // Where the group resumes: after every selected record it had processed.
        let target_offset = target_start + {
            let (from, to) = match opts.offset_windows.get(&partition) {
                Some((a, b)) => (Bound::Offset(*a), Bound::Offset(*b)),
                None => (opts.from, opts.to),
            };
            sel.count_before(repo, c.offset, from, to).await? as i64
        };
        groups.push(PlannedGroup {
            group,
            source_topic: topic,
            partition,
            source_offset: c.offset,
            observed_at: crate::time::format_ms(c.observed_at),
            target_topic: pp.target_topic.clone(),
            target_offset,
        });
    }
    if groups.is_empty() && skipped.is_empty() {
        skipped.push((
            re.as_str().to_string(),
            "no matching group has commits on the restored partitions in the backup's timeline"
                .into(),
        ));
    }
    Ok((groups, skipped))
}

/// Where a chunk lies relative to a window.
fn chunk_position(m: &haven_format::ChunkMeta, from: Bound, to: Bound) -> (bool, bool) {
    let may = crate::read::chunk_may_hold(m, from, to);
    let start_inside = match from {
        Bound::Unbounded => true,
        Bound::Offset(a) => m.first_offset >= a,
        Bound::Time(a) => m.min_timestamp >= a,
    };
    let end_inside = match to {
        Bound::Unbounded => true,
        Bound::Offset(b) => m.last_offset < b,
        Bound::Time(b) => m.max_timestamp < b,
    };
    (may, may && start_inside && end_inside)
}

/// A partition's selection, counted from chunk metadata where a chunk lies wholly inside
/// the window: only the chunks the window cuts are fetched and decoded.
pub(crate) struct Counted {
    first: i64,
    last: i64,
    records: u64,
    /// Payload bytes of decoded chunks, uncompressed size of whole ones.
    bytes: u64,
    /// Per overlapping chunk: (its ref, whether wholly selected, selected count).
    pieces: Vec<(crate::repo::ChunkRef, bool, u64)>,
}

impl Counted {
    /// Number of selected records with an offset below `offset`.
    async fn count_before(
        &self,
        repo: &Repository,
        offset: i64,
        from: Bound,
        to: Bound,
    ) -> Result<u64> {
        let mut n = 0;
        for (c, whole, count) in &self.pieces {
            if c.meta.last_offset < offset {
                n += count;
            } else if c.meta.first_offset < offset {
                for r in repo.read_chunk(c).await? {
                    if r.offset < offset && (*whole || selected(&r, from, to)) {
                        n += 1;
                    }
                }
            }
        }
        Ok(n)
    }
}

async fn count_selection(
    repo: &Repository,
    chunks: &[crate::repo::ChunkRef],
    from: Bound,
    to: Bound,
) -> Result<Counted> {
    let mut out = Counted {
        first: i64::MAX,
        last: -1,
        records: 0,
        bytes: 0,
        pieces: Vec::new(),
    };
    for c in chunks {
        let (may, whole) = chunk_position(&c.meta, from, to);
        if !may {
            continue;
        }
        let count = if whole {
            out.first = out.first.min(c.meta.first_offset);
            out.last = out.last.max(c.meta.last_offset);
            out.bytes += c.meta.raw_len;
            c.meta.record_count
        } else {
            let mut n = 0;
            for r in repo.read_chunk(c).await? {
                if selected(&r, from, to) {
                    out.first = out.first.min(r.offset);
                    out.last = out.last.max(r.offset);
                    out.bytes += r.payload_len() as u64;
                    n += 1;
                }
            }
            n
        };
        out.records += count;
        if count > 0 {
            out.pieces.push((c.clone(), whole, count));
        }
    }
    Ok(out)
}
