//! Retention: which segments are past their topics' retention and under no legal hold
//! (`haven prune`), deleting them so that what remains still verifies
//! ([`crate::repo::pruned`]), and what is kept until when (`haven retention report`).
//!
//! A segment is the unit: it holds one flush of every partition, so it is due only when
//! every record in it is past the retention of its topic (by record timestamp, as Kafka's
//! own `retention.ms` judges a log segment by its newest record) and no hold covers any of
//! its records. The last segment is never pruned. Nothing is deleted without `--apply`.

pub mod holds;
pub mod policy;
pub mod report;

use serde::Serialize;

use crate::recovery::audit;
use crate::repo::pruned::{self, PruneManifest, PrunedRange, PrunedSegment};
use crate::repo::Repository;
use crate::{Error, Result};
pub use holds::Hold;
pub use policy::{Keep, Policy};

/// A segment retention keeps, and why (the first reason found).
#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    pub seq: u64,
    pub why: String,
}

/// What a prune deletes (or would).
#[derive(Debug, Clone, Serialize)]
pub struct PrunePlan {
    pub policy: String,
    pub holds: Vec<String>,
    pub segments: Vec<PrunedSegment>,
    pub bytes: u64,
    pub records: u64,
    /// Segments kept because a hold covers them (the others are simply not due).
    pub held: Vec<Kept>,
    /// Segments of an earlier prune recorded in its manifest but still stored (it stopped
    /// before deleting them): deleted first.
    pub unfinished: Vec<u64>,
    /// Whether the store keeps objects from deletion itself, as measured with a probe
    /// object (None: could not tell).
    pub store_enforces_retention: Option<bool>,
}

/// The due segments of `repo` at `now_ms`. Refuses a damaged log (prune only what
/// verifies) and a policy that keeps everything.
/// What the store's retention probe found, in words, for `prune` and `retention report`.
pub fn store_note(enforced: Option<bool>) -> &'static str {
    match enforced {
        Some(true) => {
            "the store refused to delete a probe object (Object Lock or WORM): it keeps objects \
             itself, and prune's deletions may be refused too"
        }
        None => {
            "could not tell whether the store keeps objects from deletion (the probe object \
             could not be written: read-only credentials?)"
        }
        Some(false) => {
            "the store does not enforce retention itself (measured: a probe object could be \
             deleted; Haven writes no S3 Object Lock): whoever holds its credentials can \
             delete; prune manifests and the audit chain make any deletion visible to \
             `haven verify`"
        }
    }
}

pub async fn plan(repo: &Repository, policy: &Policy, now_ms: i64) -> Result<PrunePlan> {
    if !policy.is_set() {
        return Err(Error::Input(
            "no retention is set for this repository: set retention = \"7y\" (and \
             retention_topics) in its [repositories.NAME] section, or pass --keep"
                .into(),
        ));
    }
    let state = repo.load_state().await?;
    if let Some(d) = state.damage().first() {
        return Err(Error::Damaged(format!(
            "{}: {}; prune deletes only from a log that verifies: run `haven verify` and \
             repair first",
            d.object, d.what
        )));
    }
    let holds = holds::in_force(repo).await?;
    let recorded = pruned::load(repo).await?;
    let stored = repo.segments().await?;
    let last = stored.last().and_then(|o| crate::repo::segment_seq(&o.key));
    let mut plan = PrunePlan {
        policy: policy.describe(),
        holds: holds.iter().map(|h| h.name.clone()).collect(),
        segments: Vec::new(),
        bytes: 0,
        records: 0,
        held: Vec::new(),
        unfinished: Vec::new(),
        store_enforces_retention: repo.probe_retention().await,
    };
    for obj in stored {
        let Some(seq) = crate::repo::segment_seq(&obj.key) else {
            continue;
        };
        if recorded.contains_key(&seq) {
            plan.unfinished.push(seq);
            continue;
        }
        if Some(seq) == last {
            break;
        }
        let (ix, digest) = repo.read_index(&obj).await?;
        let mut ranges = Vec::new();
        let mut due = true;
        let mut held = None;
        for p in &ix.partitions {
            let min = p.chunks.iter().map(|c| c.min_timestamp).min();
            let max = p.chunks.iter().map(|c| c.max_timestamp).max();
            if let Some(max) = max {
                match policy.keep_for(&p.topic, now_ms) {
                    Some(k) if max < k.cutoff(now_ms) => {}
                    _ => due = false,
                }
                if let Some(h) = holds
                    .iter()
                    .find(|h| h.covers(&p.topic, min.unwrap_or(max), max))
                {
                    held.get_or_insert_with(|| {
                        format!("hold {:?} covers {}/{}", h.name, p.topic, p.partition)
                    });
                }
            }
            ranges.push(PrunedRange {
                topic: p.topic.clone(),
                generation: p.generation,
                partition: p.partition,
                from: p.start_offset,
                to: p.end_offset,
                records: p.chunks.iter().map(|c| c.record_count).sum(),
                min_timestamp: min,
                max_timestamp: max,
            });
        }
        // A segment with no records (group commits only) follows the default period.
        if ranges.iter().all(|r| r.max_timestamp.is_none()) {
            due = policy
                .default
                .as_ref()
                .is_some_and(|k| ix.created_at < k.cutoff(now_ms));
        }
        if !due {
            continue;
        }
        if let Some(why) = held {
            plan.held.push(Kept { seq, why });
            continue;
        }
        plan.bytes += obj.size;
        plan.records += ranges.iter().map(|r| r.records).sum::<u64>();
        plan.segments.push(PrunedSegment {
            seq,
            sha256: hex::encode(digest),
            created_at: ix.created_at,
            bytes: obj.size,
            ranges,
        });
    }
    Ok(plan)
}

/// Carries out `plan`: finishes an earlier prune that stopped, then writes the manifest
/// (create-only, audited `prune` with its SHA-256) and only then deletes the segments.
/// A crash after the manifest leaves segments that the next prune deletes.
pub async fn apply(repo: &Repository, plan: &PrunePlan, now_ms: i64) -> Result<Option<String>> {
    let stored: Stored = repo
        .segments()
        .await?
        .into_iter()
        .map(|o| (o.key.clone(), o))
        .collect();
    if !plan.unfinished.is_empty() {
        let recorded = pruned::load(repo).await?;
        for seq in &plan.unfinished {
            delete_recorded(repo, &stored, recorded.get(seq), *seq).await?;
        }
    }
    if plan.segments.is_empty() {
        return Ok(None);
    }
    let manifest = PruneManifest {
        format: "haven-prune".into(),
        version: 1,
        at: now_ms,
        policy: plan.policy.clone(),
        holds: plan.holds.clone(),
        segments: plan.segments.clone(),
    };
    let key = pruned::manifest_key(now_ms, plan.segments[0].seq);
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Task(e.to_string()))?;
    let details = serde_json::json!({
        "segments": plan.segments.iter().map(|s| s.seq).collect::<Vec<_>>(),
        "bytes": plan.bytes,
        "records": plan.records,
        "policy": plan.policy,
        "holds": plan.holds,
    });
    audit::put_recorded(repo, &key, body, "prune", None, details).await?;
    for s in &plan.segments {
        delete_recorded(repo, &stored, Some(s), s.seq).await?;
    }
    Ok(Some(key))
}

/// The stored segments by key.
type Stored = std::collections::HashMap<String, haven_storage::ObjectInfo>;

/// Deletes stored segment `seq` if it is the one its manifest recorded (same digest).
async fn delete_recorded(
    repo: &Repository,
    stored: &Stored,
    rec: Option<&PrunedSegment>,
    seq: u64,
) -> Result<()> {
    let Some(rec) = rec else {
        return Err(Error::Task(format!(
            "segment {seq} is in no prune manifest"
        )));
    };
    let key = crate::repo::segment_key(seq);
    let Some(obj) = stored.get(&key) else {
        return Ok(());
    };
    let (_, digest) = repo.read_index(obj).await?;
    if hex::encode(digest) != rec.sha256 {
        return Err(Error::Damaged(format!(
            "{key}: is not the segment its prune manifest recorded (another digest): not \
             deleted; run `haven verify`"
        )));
    }
    repo.store().delete(&key).await?;
    Ok(())
}
