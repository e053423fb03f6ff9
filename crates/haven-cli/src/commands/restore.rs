//! `haven restore`: a subset of a repository into a cluster.

use std::collections::BTreeMap;

use haven_engine::backup::topic_regex;
use haven_engine::read::Bound;
use haven_engine::restore::{self, RestoreOptions};
use haven_engine::time::parse_instant;

use super::{cluster, load_config, open_repo, usage, ClusterArgs, RepoArgs};
use crate::{output, Ctx};

/// Restore backed-up topics into a cluster.
///
/// Selects the latest generation of every topic matching --topics, optionally only some
/// partitions and a window of offsets or record times, and writes the records to the target
/// cluster in offset order per partition, with their keys, values, headers and timestamps.
/// Missing target topics are created with the backed-up partition count and configuration.
///
/// The plan is stored in the repository first (restores/ID/plan.json). A restore that was
/// interrupted (kill -9, broker restart) continues with `--resume ID`: no record is written
/// twice or skipped, provided nothing else writes to the target partitions meanwhile. When
/// it completes, the map from source to target offsets is stored too; `haven offsets
/// translate` answers from it.
///
/// Examples:
///   haven restore --repo ./backup --brokers localhost:9092 --topics 'orders.*' --dry-run
///   haven restore --repo ./backup --brokers dr:9092 --topics orders \
///       --from 2026-11-22T14:00:00Z --to 2026-11-22T14:15:00Z
///   haven restore --repo ./backup --brokers test:9092 --topics orders --rename orders=orders.copy
///   haven restore --repo ./backup --brokers dr:9092 --resume 20261122T141500Z-1a2b3c4d
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    repo: RepoArgs,

    #[command(flatten)]
    cluster: ClusterArgs,

    #[command(flatten)]
    damage: super::DamageArgs,

    /// Topics to restore: a regular expression matched against whole names.
    #[arg(long, value_name = "REGEX", required_unless_present = "resume")]
    topics: Option<String>,

    /// Only these partitions (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',')]
    partitions: Vec<i32>,

    /// Window start (inclusive): an offset, or a time (RFC 3339, epoch ms, -15m).
    #[arg(long, allow_hyphen_values = true, value_name = "OFFSET|TIME")]
    from: Option<String>,

    /// Window end (exclusive): an offset, or a time.
    #[arg(long, allow_hyphen_values = true, value_name = "OFFSET|TIME")]
    to: Option<String>,

    /// An offset window for one partition, PARTITION=FROM..TO (TO exclusive; repeatable);
    /// it replaces --from/--to for that partition.
    #[arg(long = "offsets", value_name = "P=FROM..TO")]
    offset_windows: Vec<String>,

    /// Point in time: every selected partition up to and including this instant.
    #[arg(
        long,
        allow_hyphen_values = true,
        value_name = "TIME",
        conflicts_with = "to"
    )]
    at: Option<String>,

    /// Restore topic FROM as TO (repeatable).
    #[arg(long, value_name = "FROM=TO")]
    rename: Vec<String>,

    /// Onto an existing target topic with another partition count: re-hash records by key
    /// with the Java client's murmur2 partitioner, so each key's records stay together and
    /// in order (records without a key: source partition modulo the new count).
    #[arg(long)]
    repartition: bool,

    /// Explicit source=target partition pairs (comma-separated), for example 0=0,1=0,2=1.
    #[arg(long, value_name = "S=T,...", conflicts_with = "repartition")]
    partition_map: Option<String>,

    /// Prefix for every target topic not renamed explicitly.
    #[arg(long, default_value = "")]
    prefix: String,

    /// Suffix for every target topic not renamed explicitly.
    #[arg(long, default_value = "")]
    suffix: String,

    /// Add a `haven-source` header (topic/partition/offset of the original) to every record.
    #[arg(long)]
    provenance_headers: bool,

    /// Set the committed offsets of these consumer groups (a regular expression; default:
    /// every group) on the target, as they were at the restore point (--at, else the latest
    /// in the backup's timeline), translated exactly: each group resumes at the first record
    /// it had not processed. Groups active on the target are left alone and reported.
    #[arg(long, value_name = "REGEX", num_args = 0..=1, default_missing_value = ".*")]
    consumer_groups: Option<String>,

    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,

    /// Continue an interrupted restore.
    #[arg(long, value_name = "ID")]
    resume: Option<String>,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let cl = cluster(&cfg, &a.cluster)?;
    let state = super::load_for_reading(&repo, a.damage.skip_damaged).await?;
    let plan = match &a.resume {
        Some(id) => restore::load_plan(&repo, id).await?,
        None => {
            let now = chrono::Utc::now().timestamp_millis();
            let mut renames = BTreeMap::new();
            for r in &a.rename {
                let (f, t) = r
                    .split_once('=')
                    .filter(|(f, t)| !f.is_empty() && !t.is_empty())
                    .ok_or_else(|| usage(format!("--rename {r:?}: expected FROM=TO")))?;
                renames.insert(f.to_string(), t.to_string());
            }
            let at = match &a.at {
                Some(at) => Some(parse_instant(at, now).map_err(|e| usage(e.to_string()))?),
                None => None,
            };
            let to = match at {
                Some(at) => Bound::Time(at + 1),
                None => super::parse_bound(a.to.as_deref(), now)?,
            };
            let groups =
                match &a.consumer_groups {
                    Some(g) => Some(topic_regex(g).map_err(|e| {
                        usage(e.to_string().replace("--topics", "--consumer-groups"))
                    })?),
                    None => None,
                };
            let opts = RestoreOptions {
                cluster: cl.clone(),
                topics: topic_regex(a.topics.as_deref().unwrap_or(".*"))?,
                partitions: (!a.partitions.is_empty()).then(|| a.partitions.clone()),
                from: super::parse_bound(a.from.as_deref(), now)?,
                to,
                renames,
                prefix: a.prefix.clone(),
                suffix: a.suffix.clone(),
                offset_windows: parse_offset_windows(&a.offset_windows)?,
                provenance_headers: a.provenance_headers,
                groups,
                group_point: at,
                repartition: a.repartition,
                partition_map: match &a.partition_map {
                    Some(m) => Some(parse_partition_map(m)?),
                    None => None,
                },
            };
            restore::plan(&repo, &state, &opts).await?
        }
    };
    if a.dry_run {
        if ctx.json {
            output::json(&serde_json::json!({"dry_run": true, "plan": plan}))?;
        } else {
            outln!("restore plan {} (nothing written: --dry-run)", plan.id);
            outln!("window: from {} to {}", plan.from, plan.to);
            for t in &plan.topics {
                outln!(
                    "topic {} -> {} ({} partitions{})",
                    t.source,
                    t.target,
                    t.partitions,
                    if t.create {
                        ", to be created"
                    } else {
                        ", exists"
                    }
                );
            }
            let rows: Vec<Vec<String>> = plan
                .partitions
                .iter()
                .map(|p| {
                    vec![
                        format!("{}/{}", p.source_topic, p.partition),
                        target_name(&p.target_topic, p.target_partition),
                        format!("{}..={}", p.first_offset, p.last_offset),
                        p.records.to_string(),
                        output::bytes(p.bytes),
                        p.target_start.to_string(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "SOURCE",
                    "TARGET",
                    "OFFSETS",
                    "RECORDS",
                    "BYTES",
                    "TARGET START",
                ],
                &rows,
            );
        }
        return Ok(0);
    }
    if plan.partitions.is_empty() {
        return Err(usage(
            "the selection is empty: no record matches the topics and window",
        ));
    }
    // Every chunk is read and checked before anything is written: a damaged backup is
    // refused while the target is untouched, or (--skip-damaged) restored around.
    let damaged = restore::preflight(&repo, &state, &plan).await?;
    if !damaged.is_empty() {
        if !a.damage.skip_damaged {
            return Err(restore::refusal(&damaged).into());
        }
        for d in &damaged {
            eprintln!(
                "warning: damaged: {} chunk {}: {}",
                d.object, d.ordinal, d.what
            );
            eprintln!(
                "warning: missing: {}/{} offsets {}..{} (a damaged chunk of {}, left out)",
                d.topic,
                d.partition,
                d.first_offset,
                d.last_offset + 1,
                d.object
            );
        }
    }
    let observer = crate::observer::CliObserver::new(ctx.json);
    let report = restore::run(&repo, &state, &plan, &cl, &observer, &damaged).await;
    observer.finish();
    let report = report?;
    if ctx.json {
        output::json(&report)?;
    } else {
        for p in &report.partitions {
            outln!(
                "{}/{} -> {}: {} records restored{}",
                p.source_topic,
                p.partition,
                target_name(&p.target_topic, p.target_partition),
                p.restored,
                if p.skipped > 0 {
                    format!(" ({} already there from the interrupted run)", p.skipped)
                } else {
                    String::new()
                }
            );
        }
        print_groups(&report.groups_set, &report.groups_skipped);
        outln!(
            "restore {}: {} records ({}) in {:.1}s, {:.0} records/s",
            report.id,
            report.records,
            output::bytes(report.bytes),
            report.seconds,
            report.records_per_second
        );
    }
    Ok(0)
}

/// `topic/partition`, or `topic/(by key)` for records re-hashed over the partitions.
fn target_name(topic: &str, partition: Option<i32>) -> String {
    match partition {
        Some(p) => format!("{topic}/{p}"),
        None => format!("{topic}/(by key)"),
    }
}

fn print_groups(groups: &[restore::PlannedGroup], skipped: &[(String, String)]) {
    for g in groups {
        outln!(
            "group {}: {}/{} committed {} (observed {}) -> {}/{} offset {}",
            g.group,
            g.source_topic,
            g.partition,
            g.source_offset,
            g.observed_at,
            g.target_topic,
            g.partition,
            g.target_offset
        );
    }
    for (g, why) in skipped {
        outln!("group {g}: left alone: {why}");
    }
}

fn parse_partition_map(text: &str) -> anyhow::Result<BTreeMap<i32, i32>> {
    let mut m = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let parsed = pair.split_once('=').and_then(|(s, t)| {
            Some((s.trim().parse::<i32>().ok()?, t.trim().parse::<i32>().ok()?))
        });
        let (s, t) = parsed
            .ok_or_else(|| usage(format!("--partition-map: {pair:?} is not SOURCE=TARGET")))?;
        if m.insert(s, t).is_some() {
            return Err(usage(format!(
                "--partition-map: partition {s} appears twice"
            )));
        }
    }
    Ok(m)
}

fn parse_offset_windows(items: &[String]) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let mut m = BTreeMap::new();
    for item in items {
        let parsed = item.split_once('=').and_then(|(p, range)| {
            let (a, b) = range.split_once("..")?;
            Some((
                p.trim().parse::<i32>().ok()?,
                a.trim().parse::<i64>().ok()?,
                b.trim().parse::<i64>().ok()?,
            ))
        });
        let (p, a, b) = parsed
            .ok_or_else(|| usage(format!("--offsets {item:?}: expected PARTITION=FROM..TO")))?;
        if a >= b || a < 0 {
            return Err(usage(format!(
                "--offsets {item:?}: empty window (FROM must be below TO)"
            )));
        }
        m.insert(p, (a, b));
    }
    Ok(m)
}
