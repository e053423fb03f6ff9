//! `haven ls`: what a repository holds.

use haven_engine::time::format_ms;
use serde::Serialize;

use super::{load_config, open_repo, RepoArgs};
use crate::{output, Ctx};

/// List what a repository holds: per topic and partition the offset and time ranges,
/// record counts, stored bytes, gaps (offsets the source itself skipped: compaction,
/// transaction markers) and losses (records the source deleted before Haven read them),
/// and the span of the consumer-group timeline.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    repo: RepoArgs,

    #[command(flatten)]
    damage: super::DamageArgs,
}

#[derive(Debug, Serialize)]
struct PartitionRow {
    topic: String,
    generation: u32,
    partition: i32,
    first_offset: i64,
    next_offset: i64,
    records: u64,
    stored_bytes: u64,
    gaps: u64,
    lost: u64,
    /// Records retention deleted (`haven prune`).
    pruned: u64,
    losses: Vec<(i64, i64, String)>,
    min_timestamp: Option<String>,
    max_timestamp: Option<String>,
}

#[derive(Debug, Serialize)]
struct Listing {
    repository: String,
    id: String,
    encrypted: bool,
    segments: u64,
    /// Segments retention deleted (each recorded in a prune manifest).
    pruned_segments: u64,
    head: Option<String>,
    partitions: Vec<PartitionRow>,
    topics: Vec<serde_json::Value>,
    groups: usize,
    group_timeline: Option<(String, String)>,
    /// With --skip-damaged: what was left out, and the offsets no intact segment holds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    damage: Vec<haven_engine::repo::Damage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    missing: Vec<haven_engine::repo::MissingRange>,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let st = super::load_for_listing(&repo, a.damage.skip_damaged).await?;
    let partitions: Vec<PartitionRow> = st
        .partitions
        .iter()
        .map(|((t, g, p), s)| PartitionRow {
            topic: t.clone(),
            generation: *g,
            partition: *p,
            first_offset: s.first_offset,
            next_offset: s.next_offset,
            records: s.records,
            stored_bytes: s.stored_bytes,
            gaps: s.gaps(),
            pruned: s.pruned_records(),
            lost: s.losses.iter().map(|l| (l.to - l.from) as u64).sum(),
            losses: s
                .losses
                .iter()
                .map(|l| (l.from, l.to, l.reason.clone()))
                .collect(),
            min_timestamp: s.min_timestamp.map(format_ms),
            max_timestamp: s.max_timestamp.map(format_ms),
        })
        .collect();
    let topics = st
        .topics
        .values()
        .filter_map(|t| t.meta.as_ref())
        .map(|m| {
            serde_json::json!({
                "topic": m.topic, "generation": m.generation, "partitions": m.partition_count,
                "observed_at": format_ms(m.observed_at),
                "configs": m.configs.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<std::collections::BTreeMap<_, _>>(),
            })
        })
        .collect();
    let groups: std::collections::BTreeSet<&String> =
        st.group_offsets.keys().map(|k| &k.0).collect();
    let listing = Listing {
        repository: repo.store().url().to_string(),
        id: repo.descriptor.id.clone(),
        encrypted: repo.descriptor.key_id.is_some(),
        segments: st.segments,
        pruned_segments: st.pruned_segments,
        head: st.head.map(|(s, d)| format!("{s}:{}", hex::encode(d))),
        partitions,
        topics,
        groups: groups.len(),
        group_timeline: match (st.group_samples.iter().min(), st.group_samples.iter().max()) {
            (Some(a), Some(b)) => Some((format_ms(*a), format_ms(*b))),
            _ => None,
        },
        damage: st.damage(),
        missing: st.missing_ranges(),
    };
    if ctx.json {
        output::json(&listing)?;
        return Ok(0);
    }
    outln!(
        "repository {} (id {}{}), {} segments{}",
        listing.repository,
        listing.id,
        if listing.encrypted { ", encrypted" } else { "" },
        listing.segments,
        if listing.pruned_segments > 0 {
            format!(" ({} more pruned by retention)", listing.pruned_segments)
        } else {
            String::new()
        }
    );
    let rows: Vec<Vec<String>> = listing
        .partitions
        .iter()
        .map(|r| {
            vec![
                if r.generation > 0 {
                    format!("{}@{}", r.topic, r.generation)
                } else {
                    r.topic.clone()
                },
                r.partition.to_string(),
                if r.pruned > 0 {
                    format!(
                        "{}..{} ({} pruned)",
                        r.first_offset, r.next_offset, r.pruned
                    )
                } else {
                    format!("{}..{}", r.first_offset, r.next_offset)
                },
                r.records.to_string(),
                output::bytes(r.stored_bytes),
                r.gaps.to_string(),
                r.lost.to_string(),
                match (&r.min_timestamp, &r.max_timestamp) {
                    (Some(a), Some(b)) => format!("{a} .. {b}"),
                    _ => "-".into(),
                },
            ]
        })
        .collect();
    output::table(
        &[
            "TOPIC",
            "PART",
            "OFFSETS",
            "RECORDS",
            "STORED",
            "GAPS",
            "LOST",
            "TIME RANGE",
        ],
        &rows,
    );
    for r in &listing.partitions {
        for (from, to, why) in &r.losses {
            outln!(
                "LOSS {}/{}: offsets {from}..{to}: {why}",
                r.topic,
                r.partition
            );
        }
    }
    match &listing.group_timeline {
        Some((a, b)) => outln!(
            "consumer-group timeline: {} groups, sampled {a} .. {b}",
            listing.groups
        ),
        None => outln!("consumer-group timeline: empty"),
    }
    Ok(0)
}
