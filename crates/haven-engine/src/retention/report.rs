//! `haven retention report`: per topic what the repository keeps, until when, under which
//! holds, its size, and how fast the repository grows.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{holds, Hold, Policy};
use crate::repo::Repository;
use crate::Result;

/// Days of recent segments the growth rate is measured over.
const GROWTH_WINDOW_DAYS: i64 = 30;
const YEAR_MS: f64 = 365.25 * 86_400_000.0;

#[derive(Debug, Clone, Serialize)]
pub struct TopicRetention {
    pub topic: String,
    /// The period that applies; None: kept for ever.
    pub keep: Option<String>,
    pub records: u64,
    pub stored_bytes: u64,
    pub oldest_ms: Option<i64>,
    pub newest_ms: Option<i64>,
    /// When its oldest records are past retention (a segment goes when all of its records
    /// are, and when no hold covers it).
    pub oldest_due_at: Option<i64>,
    /// Holds that cover some of its records.
    pub held_by: Vec<String>,
    /// Records already deleted by retention.
    pub pruned_records: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetentionReport {
    pub policy: String,
    pub holds: Vec<Hold>,
    pub segments: u64,
    pub pruned_segments: u64,
    pub stored_bytes: u64,
    /// Bytes a year at the rate of the last 30 days of segments; None with under an hour
    /// of history.
    pub growth_bytes_per_year: Option<f64>,
    /// Whether the store itself refuses deletion (S3 Object Lock, WORM), measured with a
    /// probe object (None: could not tell). Haven does not write Object Lock retention:
    /// on other stores deletion stays possible to whoever holds the store's credentials,
    /// and prune manifests with the audit chain make every deletion visible.
    pub store_enforces_retention: Option<bool>,
    pub topics: Vec<TopicRetention>,
}

pub async fn report(repo: &Repository, policy: &Policy, now_ms: i64) -> Result<RetentionReport> {
    let state = repo.load_state().await?;
    let holds = holds::in_force(repo).await?;
    let mut topics: BTreeMap<String, TopicRetention> = BTreeMap::new();
    for ((topic, _, _), ps) in &state.partitions {
        let keep = policy.keep_for(topic, now_ms);
        let t = topics
            .entry(topic.clone())
            .or_insert_with(|| TopicRetention {
                topic: topic.clone(),
                keep: keep.map(|k| k.text.clone()),
                records: 0,
                stored_bytes: 0,
                oldest_ms: None,
                newest_ms: None,
                oldest_due_at: None,
                held_by: Vec::new(),
                pruned_records: 0,
            });
        t.records += ps.records;
        t.stored_bytes += ps.stored_bytes;
        t.pruned_records += ps.pruned_records();
        t.oldest_ms = min_opt(t.oldest_ms, ps.min_timestamp);
        t.newest_ms = ps.max_timestamp.max(t.newest_ms);
        let first_max = ps.chunks.iter().map(|c| c.meta.max_timestamp).min();
        if let (Some(k), Some(m)) = (keep, first_max) {
            t.oldest_due_at = min_opt(t.oldest_due_at, Some(k.due_at(m)));
        }
        for h in &holds {
            if let (Some(a), Some(b)) = (ps.min_timestamp, ps.max_timestamp) {
                if h.covers(topic, a, b) && !t.held_by.contains(&h.name) {
                    t.held_by.push(h.name.clone());
                }
            }
        }
    }
    let stored = repo.segments().await?;
    let stored_bytes = stored.iter().map(|o| o.size).sum();
    // Growth: the newest segments, back to GROWTH_WINDOW_DAYS.
    let since = now_ms - GROWTH_WINDOW_DAYS * 86_400_000;
    let (mut bytes, mut oldest) = (0u64, None);
    for obj in stored.iter().rev() {
        let (ix, _) = repo.read_index(obj).await?;
        if ix.created_at < since {
            break;
        }
        bytes += obj.size;
        oldest = Some(ix.created_at);
    }
    let growth = oldest
        .map(|o| (now_ms - o) as f64)
        .filter(|span| *span >= 3_600_000.0)
        .map(|span| bytes as f64 / span * YEAR_MS);
    Ok(RetentionReport {
        policy: policy.describe(),
        holds,
        segments: state.segments,
        pruned_segments: state.pruned_segments,
        stored_bytes,
        growth_bytes_per_year: growth,
        store_enforces_retention: repo.probe_retention().await,
        topics: topics.into_values().collect(),
    })
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}
