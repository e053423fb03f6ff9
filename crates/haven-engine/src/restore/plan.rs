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
const CARRIED_CONFIGS: &[&str] = &[
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
    /// Prefix added to every target topic name not renamed explicitly.
    pub prefix: String,
    pub provenance_headers: bool,
    /// Consumer groups whose committed offsets are carried over, translated.
    pub groups: Option<Regex>,
    /// The instant whose group offsets are restored (`--at`); None: the latest known.
    pub group_point: Option<i64>,
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

/// One source partition and where it goes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedPartition {
    pub source_topic: String,
    pub generation: u32,
    pub partition: i32,
    pub target_topic: String,
    /// Offsets of the first and last selected records (the selection is pinned to them).
    pub first_offset: i64,
    pub last_offset: i64,
    pub records: u64,
    /// Payload bytes of the selected records.
    pub bytes: u64,
    /// The target partition's high watermark before the restore.
    pub target_start: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedTopic {
    pub source: String,
    pub target: String,
    pub partitions: i32,
    /// Whether the restore creates it (false: it exists with a compatible partition count).
    pub create: bool,
    pub configs: Vec<(String, String)>,
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

fn bound_text(b: Bound) -> String {
    match b {
        Bound::Unbounded => "unbounded".into(),
        Bound::Offset(o) => format!("offset {o}"),
        Bound::Time(t) => crate::time::format_ms(t),
    }
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
    let after = match from {
        Bound::Unbounded => true,
        Bound::Offset(o) => r.offset >= o,
        Bound::Time(t) => r.timestamp >= t,
    };
    let before = match to {
        Bound::Unbounded => true,
        Bound::Offset(o) => r.offset < o,
        Bound::Time(t) => r.timestamp < t,
    };
    after && before
}

/// The records a planned partition restores, in offset order (one ranged read per chunk).
pub(crate) async fn selected_records(
    repo: &Repository,
    state: &RepoState,
    plan: &RestorePlan,
    pp: &PlannedPartition,
) -> Result<Vec<Record>> {
    let (from, to) = (parse_bound(&plan.from), parse_bound(&plan.to));
    let ps = state
        .partitions
        .get(&(pp.source_topic.clone(), pp.generation, pp.partition))
        .ok_or_else(|| {
            Error::Input(format!(
                "{}/{} is no longer in the repository",
                pp.source_topic, pp.partition
            ))
        })?;
    let mut out = Vec::new();
    for c in ps
        .chunks
        .iter()
        .filter(|c| c.meta.last_offset >= pp.first_offset && c.meta.first_offset <= pp.last_offset)
    {
        for r in repo.read_chunk(c).await? {
            if r.offset >= pp.first_offset && r.offset <= pp.last_offset && selected(&r, from, to) {
                out.push(r);
            }
        }
    }
    if out.len() as u64 != pp.records {
        return Err(Error::Input(format!(
            "{}/{}: the repository now yields {} records for the plan's {}",
            pp.source_topic,
            pp.partition,
            out.len(),
            pp.records
        )));
    }
    Ok(out)
}

/// Plans a restore of the latest generation of every matching topic.
pub async fn plan(
    repo: &Repository,
    state: &RepoState,
    opts: &RestoreOptions,
) -> Result<RestorePlan> {
    if let (Bound::Time(a), Bound::Time(b)) | (Bound::Offset(a), Bound::Offset(b)) =
        (opts.from, opts.to)
    {
        if a >= b {
            return Err(Error::Input(format!(
                "empty window: --from {} is not before --to {}",
                bound_text(opts.from),
                bound_text(opts.to)
            )));
        }
    }
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
    let mut maps: BTreeMap<(String, i32), (crate::offsets::OffsetMap, i64)> = BTreeMap::new();
    for (topic, generation) in sources {
        let target = opts
            .renames
            .get(&topic)
            .cloned()
            .unwrap_or_else(|| format!("{}{topic}", opts.prefix));
        let meta = state.topics.get(&topic).and_then(|t| t.meta.clone());
        let source_partitions: Vec<i32> = state
            .partitions
            .keys()
            .filter(|(t, g, _)| *t == topic && *g == generation)
            .map(|k| k.2)
            .collect();
        let count = meta
            .as_ref()
            .map(|m| m.partition_count)
            .unwrap_or_else(|| source_partitions.iter().max().map_or(1, |m| m + 1));
        let create = match existing.iter().find(|t| t.name == target) {
            Some(t) if t.partitions == count => false,
            Some(t) => {
                return Err(Error::Input(format!(
                    "target topic {target} exists with {} partitions, the backup of {topic} has {count}: \
                     restore to another name (--rename {topic}=NEW) (repartitioning is not supported yet)",
                    t.partitions
                )))
            }
            None => true,
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
            partitions: count,
            create,
            configs,
        });
        for p in source_partitions {
            if opts.partitions.as_ref().is_some_and(|v| !v.contains(&p)) {
                continue;
            }
            let Some(ps) = state.partitions.get(&(topic.clone(), generation, p)) else {
                continue;
            };
            let (mut first, mut last, mut n, mut bytes) = (i64::MAX, -1i64, 0u64, 0u64);
            let mut selected_offsets = Vec::new();
            for c in &ps.chunks {
                let m = &c.meta;
                let may = match (opts.from, opts.to) {
                    (Bound::Time(a), _) if m.max_timestamp < a => false,
                    (_, Bound::Time(b)) if m.min_timestamp >= b => false,
                    (Bound::Offset(a), _) if m.last_offset < a => false,
                    (_, Bound::Offset(b)) if m.first_offset >= b => false,
                    _ => true,
                };
                if !may {
                    continue;
                }
                for r in repo.read_chunk(c).await? {
                    if selected(&r, opts.from, opts.to) {
                        selected_offsets.push(r.offset);
                        first = first.min(r.offset);
                        last = last.max(r.offset);
                        n += 1;
                        bytes += r.payload_len() as u64;
                    }
                }
            }
            if n == 0 {
                continue;
            }
            let target_start = if create {
                0
            } else {
                let (c, t) = (inspector.clone(), target.clone());
                blocking(move || Ok(haven_kafka::watermarks(&c, &t, p, Duration::from_secs(10))?.1))
                    .await?
            };
            maps.insert((topic.clone(), p), {
                let mut m = crate::offsets::OffsetMap::default();
                for (i, o) in selected_offsets.iter().enumerate() {
                    m.push(*o, target_start + i as i64);
                }
                (m, target_start + n as i64)
            });
            partitions.push(PlannedPartition {
                source_topic: topic.clone(),
                generation,
                partition: p,
                target_topic: target.clone(),
                first_offset: first,
                last_offset: last,
                records: n,
                bytes,
                target_start,
            });
        }
    }
    let (groups, groups_skipped) = plan_groups(state, opts, &partitions, &maps);
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
        from: bound_text(opts.from),
        to: bound_text(opts.to),
        provenance_headers: opts.provenance_headers,
        topics,
        partitions,
    })
}

/// The group offsets to carry over: each selected group's commit at the restore point on
/// every restored partition, translated through the partition's offset map.
fn plan_groups(
    state: &RepoState,
    opts: &RestoreOptions,
    partitions: &[PlannedPartition],
    maps: &BTreeMap<(String, i32), (crate::offsets::OffsetMap, i64)>,
) -> (Vec<PlannedGroup>, Vec<(String, String)>) {
    let Some(re) = &opts.groups else {
        return (Vec::new(), Vec::new());
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
            return (Vec::new(), skipped);
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
        let Some((map, end)) = maps.get(&(topic.clone(), partition)) else {
            continue;
        };
        groups.push(PlannedGroup {
            group,
            source_topic: topic,
            partition,
            source_offset: c.offset,
            observed_at: crate::time::format_ms(c.observed_at),
            target_topic: pp.target_topic.clone(),
            target_offset: map.translate(c.offset).unwrap_or(*end),
        });
    }
    if groups.is_empty() && skipped.is_empty() {
        skipped.push((
            re.as_str().to_string(),
            "no matching group has commits on the restored partitions in the backup's timeline"
                .into(),
        ));
    }
    (groups, skipped)
}
