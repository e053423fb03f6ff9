//! `haven restore`: any subset of a repository into any cluster.
//!
//! A restore is planned first: which records (pinned as a source offset range per
//! partition, so a resumed restore selects exactly the same records even if the backup has
//! grown since), which target topics, and each target partition's end offset before the
//! restore. The plan is written to the repository (`restores/{id}/plan.json`) before the
//! first record is produced. Records are produced in offset order per partition with the
//! idempotent producer, and every delivery must land at `target_start + index`.
//!
//! Resuming (`--resume ID`) needs no checkpoint: if nothing else writes to the target
//! partitions during the restore, `high watermark - target_start` records of the selection
//! are already there, so the restore continues with the next one. Any other writer is
//! detected (a delivery at an unexpected offset) and stops the restore with an error.
//! The offset map (`restores/{id}/offsets.json`) is written when the restore completes.

mod plan;
mod preflight;
pub(crate) use plan::CARRIED_CONFIGS;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use haven_kafka::rdkafka::message::{Header, OwnedHeaders};
use haven_kafka::rdkafka::producer::FutureRecord;
use haven_kafka::ClusterConfig;
use serde::{Deserialize, Serialize};

use crate::offsets::OffsetMap;
use crate::repo::Repository;
use crate::{blocking, Error, Result};
pub use plan::{
    plan, PlannedGroup, PlannedPartition, PlannedTopic, RestoreOptions, RestorePlan, Routing,
};
pub use preflight::{preflight, refusal, DamagedChunk};

/// Where a restore's objects live in the repository.
pub fn plan_key(id: &str) -> String {
    format!("restores/{id}/plan.json")
}

pub fn offsets_key(id: &str) -> String {
    format!("restores/{id}/offsets.json")
}

/// The offset map of one restored partition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub source_topic: String,
    pub partition: i32,
    pub target_topic: String,
    /// Where the records went (absent in maps written before `--partition-map` kept its
    /// offset maps: the same partition).
    #[serde(default)]
    pub target_partition: Option<i32>,
    pub map: OffsetMap,
}

impl PartitionOffsets {
    pub fn target_partition(&self) -> i32 {
        self.target_partition.unwrap_or(self.partition)
    }
}

/// `restores/{id}/offsets.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreOffsets {
    pub id: String,
    pub partitions: Vec<PartitionOffsets>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionResult {
    pub source_topic: String,
    pub partition: i32,
    pub target_topic: String,
    /// None: re-hashed by key over the target's partitions.
    pub target_partition: Option<i32>,
    pub restored: u64,
    /// Already on the target from an interrupted run (resume).
    pub skipped: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    pub id: String,
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub records_per_second: f64,
    pub partitions: Vec<PartitionResult>,
    /// Group offsets set on the target.
    pub groups_set: Vec<PlannedGroup>,
    /// Groups not touched, with the reason (active on the target, no commit, ...).
    pub groups_skipped: Vec<(String, String)>,
    /// The audit entry recording this restore (None when the repository is read-only).
    pub audit_entry: Option<String>,
    /// Damaged chunks left out (`--skip-damaged`): their records were not restored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<DamagedChunk>,
}

/// Loads the plan of an earlier restore (for `--resume` and `offsets translate`).
pub async fn load_plan(repo: &Repository, id: &str) -> Result<RestorePlan> {
    let raw = match repo.store().get(&plan_key(id)).await {
        Ok(b) => b,
        Err(haven_storage::StorageError::NotFound { .. }) => {
            return Err(Error::Input(format!(
                "no restore {id:?} in {}",
                repo.store().url()
            )))
        }
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&raw)
        .map_err(|e| Error::Input(format!("{}: damaged: {e}", plan_key(id))))
}

pub async fn load_offsets(repo: &Repository, id: &str) -> Result<RestoreOffsets> {
    let raw = match repo.store().get(&offsets_key(id)).await {
        Ok(b) => b,
        Err(haven_storage::StorageError::NotFound { .. }) => {
            return Err(Error::Input(format!(
            "restore {id:?} has no offset map: it did not complete (resume it with --resume {id})"
        )))
        }
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&raw)
        .map_err(|e| Error::Input(format!("{}: damaged: {e}", offsets_key(id))))
}

async fn put_json<T: Serialize>(repo: &Repository, key: &str, value: &T) -> Result<()> {
    let body = serde_json::to_vec_pretty(value).map_err(|e| Error::Task(e.to_string()))?;
    match repo.store().put_new(key, Bytes::from(body)).await {
        Ok(()) | Err(haven_storage::StorageError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Executes a plan (a new one, or a loaded one to resume).
pub async fn run(
    repo: &Repository,
    state: &crate::repo::RepoState,
    plan: &RestorePlan,
    cluster: &ClusterConfig,
    observer: &dyn crate::events::Observer,
    skip: &[DamagedChunk],
) -> Result<RestoreReport> {
    let started = Instant::now();
    put_json(repo, &plan_key(&plan.id), plan).await?;
    let admin = cluster.admin()?;
    for t in plan.topics.iter().filter(|t| t.create) {
        haven_kafka::create_topic(&admin, &t.target, t.partitions, &t.configs).await?;
    }
    let producer = cluster.producer()?;
    let window = plan::window(plan);
    observer.event(&crate::events::Event::RestoreStarted {
        records: plan.partitions.iter().map(|p| p.records).sum(),
    });
    let mut progress = Progress { observer, done: 0 };
    let mut report = RestoreReport {
        id: plan.id.clone(),
        left_out: skip.to_vec(),
        ..Default::default()
    };
    let mut offsets = RestoreOffsets {
        id: plan.id.clone(),
        partitions: Vec::new(),
    };
    for topic in &plan.topics {
        let pps: Vec<&PlannedPartition> = plan
            .partitions
            .iter()
            .filter(|p| p.source_topic == topic.source)
            .collect();
        if pps.is_empty() {
            continue;
        }
        // Records of each target partition already there from an interrupted run.
        let c = cluster.clone();
        let (t, n) = (topic.target.clone(), topic.partitions);
        let highs = blocking(move || {
            let i = c.inspector("haven-inspector")?;
            (0..n)
                .map(|p| Ok(haven_kafka::watermarks(&i, &t, p, Duration::from_secs(10))?.1))
                .collect::<Result<Vec<i64>>>()
        })
        .await?;
        let mut already = Vec::with_capacity(highs.len());
        for (p, high) in highs.iter().enumerate() {
            let start = topic.target_starts.get(p).copied().unwrap_or(0);
            if *high < start {
                return Err(Error::Input(format!(
                    "{}/{p}: the target partition ends at {high}, before the restore's start {start}: it was re-created",
                    topic.target
                )));
            }
            already.push(high - start);
        }
        // Records routed to each target partition so far (in plan order).
        let mut sent = vec![0i64; highs.len()];
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        for pp in pps {
            let mut map = OffsetMap::default();
            let mut result = PartitionResult {
                source_topic: pp.source_topic.clone(),
                partition: pp.partition,
                target_topic: pp.target_topic.clone(),
                target_partition: topic.routing.fixed_target(pp.partition),
                ..Default::default()
            };
            // One chunk at a time: memory does not grow with the restore's size.
            let mut seen: u64 = 0;
            let mut left_out = false;
            for chunk in plan::chunks_of(state, pp)? {
                // A damaged chunk the caller chose to leave out (`--skip-damaged`).
                if skip.iter().any(|d| d.is(chunk)) {
                    left_out = true;
                    continue;
                }
                let body = repo.chunk_body(chunk).await?;
                let mut refs = Vec::with_capacity(chunk.meta.record_count as usize);
                haven_format::visit_chunk(&body, |r| {
                    if plan::is_selected(window, pp, r.offset, r.timestamp) {
                        refs.push(r);
                    }
                    Ok(())
                })
                .map_err(|e| Error::format(&chunk.key, e))?;
                seen += refs.len() as u64;
                // Sealed records are opened (or redacted when their subject was forgotten).
                let subjects = repo.subject_keys_for(&refs).await?;
                let opened = if refs.iter().any(|r| r.sealed.is_some()) {
                    refs.iter()
                        .map(|r| {
                            r.sealed
                                .as_ref()
                                .map(|_| crate::erasure::open(r, &subjects))
                                .transpose()
                        })
                        .collect::<Result<Vec<_>>>()?
                } else {
                    Vec::new()
                };
                for (i, r) in refs.iter().enumerate() {
                    let owned;
                    let r = match opened.get(i).and_then(Option::as_ref) {
                        Some(rec) => {
                            owned = rec.as_ref();
                            &owned
                        }
                        None => r,
                    };
                    let tp = topic.routing.target(r.key, pp.partition, topic.partitions);
                    let slot = usize::try_from(tp)
                        .ok()
                        .filter(|s| *s < sent.len())
                        .ok_or_else(|| {
                            Error::Input(format!("{}: no partition {tp}", topic.target))
                        })?;
                    let k = sent[slot];
                    sent[slot] += 1;
                    let expected = topic.target_starts.get(slot).copied().unwrap_or(0) + k;
                    if topic.routing != plan::Routing::Hash {
                        map.push(r.offset, expected);
                    }
                    if k < already[slot] {
                        result.skipped += 1;
                        progress.done += 1;
                        continue;
                    }
                    let provenance;
                    let mut fr: FutureRecord<'_, [u8], [u8]> =
                        FutureRecord::to(&topic.target).partition(tp);
                    // Headers only when there are some: an empty header list costs an
                    // allocation per record in librdkafka.
                    if !r.headers.is_empty() || plan.provenance_headers {
                        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 1);
                        for (name, value) in &r.headers {
                            headers = headers.insert(Header {
                                key: name,
                                value: *value,
                            });
                        }
                        if plan.provenance_headers {
                            provenance =
                                format!("{}/{}/{}", pp.source_topic, pp.partition, r.offset);
                            headers = headers.insert(Header {
                                key: "haven-source",
                                value: Some(provenance.as_bytes()),
                            });
                        }
                        fr = fr.headers(headers);
                    }
                    if let Some(k) = r.key {
                        fr = fr.key(k);
                    }
                    if let Some(v) = r.value {
                        fr = fr.payload(v);
                    }
                    if r.timestamp >= 0 {
                        fr = fr.timestamp(r.timestamp);
                    }
                    let fut = loop {
                        match producer.send_result(fr) {
                            Ok(f) => break f,
                            Err((e, back))
                                if e.rdkafka_error_code()
                                    == Some(
                                        haven_kafka::rdkafka::types::RDKafkaErrorCode::QueueFull,
                                    ) =>
                            {
                                let n = in_flight.len().min(1000);
                                settle(&mut in_flight, n.max(1), &topic.target, &mut progress)
                                    .await?;
                                fr = back;
                            }
                            Err((e, _)) => {
                                return Err(Error::Task(format!(
                                    "produce to {}: {e}",
                                    topic.target
                                )))
                            }
                        }
                    };
                    report.bytes +=
                        (r.key.map_or(0, <[u8]>::len) + r.value.map_or(0, <[u8]>::len)) as u64;
                    in_flight.push_back(InFlight {
                        source: (pp.partition, r.offset),
                        target: (tp, expected),
                        delivery: fut,
                    });
                    if in_flight.len() >= 5000 {
                        settle(&mut in_flight, 1000, &topic.target, &mut progress).await?;
                    }
                    result.restored += 1;
                }
            }
            if seen != pp.records && !(left_out && seen < pp.records) {
                return Err(Error::Input(format!(
                    "{}/{}: the repository now yields {seen} records for the plan's {}",
                    pp.source_topic, pp.partition, pp.records
                )));
            }
            report.records += result.restored;
            report.partitions.push(result);
            // Each source partition lands in one target partition (also when several
            // are merged by --partition-map), so its offsets translate exactly.
            if let Some(tp) = topic.routing.fixed_target(pp.partition) {
                offsets.partitions.push(PartitionOffsets {
                    source_topic: pp.source_topic.clone(),
                    partition: pp.partition,
                    target_topic: pp.target_topic.clone(),
                    target_partition: Some(tp),
                    map,
                });
            }
        }
        let n = in_flight.len();
        settle(&mut in_flight, n, &topic.target, &mut progress).await?;
    }
    put_json(repo, &offsets_key(&plan.id), &offsets).await?;
    set_groups(plan, cluster, &mut report).await?;
    report.seconds = started.elapsed().as_secs_f64();
    report.records_per_second = report.records as f64 / report.seconds.max(1e-9);
    // The restore is evidence of a tested restore (the dashboard's "last restore test"):
    // every record's partition and offset on the target was checked above. A repository
    // the restore may only read keeps no entry; the restore itself still succeeded.
    let details = serde_json::json!({
        "id": report.id, "records": report.records, "partitions": report.partitions.len(),
        "target": cluster.brokers, "deliveries_checked": true,
    });
    match crate::recovery::audit::record(
        repo,
        "restore",
        &crate::recovery::audit::sha256_of(plan),
        details,
    )
    .await
    {
        Ok(key) => report.audit_entry = Some(key),
        Err(e) => {
            tracing::warn!(error = %e, "the restore could not be recorded in the repository's audit log")
        }
    }
    Ok(report)
}

/// A record on its way: where it came from, where it must land.
struct InFlight {
    source: (i32, i64),
    target: (i32, i64),
    delivery: haven_kafka::rdkafka::producer::DeliveryFuture,
}

/// Acknowledged records, reported to the observer.
struct Progress<'a> {
    observer: &'a dyn crate::events::Observer,
    done: u64,
}

/// Waits for the oldest `n` deliveries and checks each landed where the plan says.
async fn settle(
    in_flight: &mut VecDeque<InFlight>,
    n: usize,
    topic: &str,
    progress: &mut Progress<'_>,
) -> Result<()> {
    let settled = n.min(in_flight.len()) as u64;
    for _ in 0..n {
        let Some(f) = in_flight.pop_front() else {
            break;
        };
        let (sp, so) = f.source;
        let (tp, expected) = f.target;
        let delivery = f
            .delivery
            .await
            .map_err(|_| Error::Task("the producer was dropped".into()))?
            .map_err(|(e, _)| {
                Error::Task(format!(
                    "{topic}/{tp} (source partition {sp} offset {so}): {e}"
                ))
            })?;
        if delivery.offset != expected || delivery.partition != tp {
            return Err(Error::Input(format!(
                "source partition {sp} offset {so} landed at {topic}/{}@{}, expected {topic}/{tp}@{expected}: \
                 another producer writes to the target partition",
                delivery.partition, delivery.offset
            )));
        }
    }
    progress.done += settled;
    progress
        .observer
        .event(&crate::events::Event::RestoreProgress {
            records: progress.done,
        });
    Ok(())
}

/// Commits each planned group's translated offsets on the target. A group that is active
/// there refuses a commit from a non-member: it is left alone and reported.
async fn set_groups(
    plan: &RestorePlan,
    cluster: &ClusterConfig,
    report: &mut RestoreReport,
) -> Result<()> {
    report
        .groups_skipped
        .extend(plan.groups_skipped.iter().cloned());
    let mut by_group: std::collections::BTreeMap<&str, Vec<&PlannedGroup>> = Default::default();
    for g in &plan.groups {
        by_group.entry(g.group.as_str()).or_default().push(g);
    }
    for (group, entries) in by_group {
        let c = cluster.clone();
        let name = group.to_string();
        let items: Vec<(String, i32, i64)> = entries
            .iter()
            .map(|g| (g.target_topic.clone(), g.partition, g.target_offset))
            .collect();
        let res = blocking(move || Ok(haven_kafka::commit_offsets(&c, &name, &items))).await?;
        match res {
            Ok(()) => report.groups_set.extend(entries.into_iter().cloned()),
            Err(e) => report.groups_skipped.push((
                group.to_string(),
                format!("not set: {e} (is the group active on the target? stop its consumers and rerun)"),
            )),
        }
    }
    Ok(())
}
