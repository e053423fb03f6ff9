//! `haven mirror`: continuous cross-region replication, its status and offset translation.

use std::time::Duration;

use haven_engine::backup::topic_regex;
use haven_engine::failover;
use haven_engine::mirror::{self, status, MirrorOptions};

use super::{cluster, load_config, usage, ClusterArgs};
use crate::{output, Ctx};

/// Mirror topics from one cluster to another, continuously, exactly once.
///
/// Copies records (keys, values, headers, timestamps, partition and order) from --from to
/// --to, creating target topics with the source's partition count. Each copy carries a
/// provenance header (haven-mirror-source: CLUSTER/TOPIC/PARTITION/OFFSET): a restarted
/// mirror reads the target back and continues exactly where it stopped, even after
/// SIGKILL, and records are never copied back to the cluster they came from
/// (active-active pairs do not loop).
///
/// Consumer groups named with --groups are synced onto the target every --sync-ms,
/// translated exactly through the mirror's offset map: a consumer that fails over resumes
/// at the first record it had not processed. Offsets on the target only move forward.
///
/// Processes started with the same --name share the partitions. Broker restarts and
/// network cuts are waited out; lag is reported meanwhile (--metrics-addr, `mirror status`).
///
/// Examples:
///   haven mirror --from us --to eu --topics 'orders\..*' --groups billing
///   haven mirror --job us-to-eu                    ([mirrors.us-to-eu] of haven.toml)
///   haven mirror status --from us --to eu --topics 'orders\..*'
///   haven mirror translate --from us --to eu --topics 'orders\..*' --group billing
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment, args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,

    #[command(flatten)]
    ends: Ends,

    /// Mirror up to the source's high watermarks seen at start, then exit.
    #[arg(long)]
    once: bool,

    /// Milliseconds between consumer-group offset syncs.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    sync_ms: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics (lag in records and seconds per
    /// partition, records copied, group syncs).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Per partition: lag in records and seconds, and what would be lost if the source
    /// died now (offset range and time span). Reads both clusters; the mirror need not run.
    Status {
        #[command(flatten)]
        ends: Ends,
    },
    /// Translate source offsets to target offsets, exactly: a group's committed offsets
    /// (--group) or given ones (--offset TOPIC/PARTITION/OFFSET).
    Translate {
        #[command(flatten)]
        ends: Ends,
        /// A consumer group whose committed source offsets are translated.
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// A source offset to translate (repeatable).
        #[arg(long = "offset", value_name = "TOPIC/PARTITION/OFFSET")]
        offsets: Vec<String>,
    },
}

/// Which mirror: flags or a [mirrors.NAME] job.
#[derive(Debug, Clone, clap::Args)]
struct Ends {
    /// A [mirrors.NAME] of haven.toml (flags override its settings).
    #[arg(long, value_name = "NAME")]
    job: Option<String>,

    /// Source cluster: a name from haven.toml or HOST:PORT[,...].
    #[arg(long, value_name = "NAME|HOST:PORT")]
    from: Option<String>,

    /// Target cluster: a name from haven.toml or HOST:PORT[,...].
    #[arg(long, value_name = "NAME|HOST:PORT")]
    to: Option<String>,

    /// Source topics: a regular expression matched against whole names.
    #[arg(long, value_name = "REGEX")]
    topics: Option<String>,

    /// Target topic = PREFIX + source topic (default: the same name).
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,

    /// Consumer groups to sync onto the target (regular expressions, repeatable).
    #[arg(long = "groups", value_name = "REGEX")]
    groups: Vec<String>,

    /// Mirror name: its consumer group and map topic (haven-mirror-map.NAME) on the target.
    /// Default: the job name, else FROM-to-TO.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

fn options(ctx: &Ctx, e: &Ends) -> anyhow::Result<MirrorOptions> {
    let cfg = load_config(ctx)?;
    let job = match &e.job {
        Some(n) => Some(cfg.mirrors.get(n).cloned().ok_or_else(|| {
            usage(format!(
                "no mirror named {n:?} in the config: define [mirrors.{n}] or pass --from, --to and --topics"
            ))
        })?),
        None => None,
    };
    let from = e
        .from
        .clone()
        .or(job.as_ref().map(|j| j.from.clone()))
        .ok_or_else(|| usage("--from is required (or --job)"))?;
    let to =
        e.to.clone()
            .or(job.as_ref().map(|j| j.to.clone()))
            .ok_or_else(|| usage("--to is required (or --job)"))?;
    let topics = e
        .topics
        .clone()
        .or(job.as_ref().map(|j| j.topics.clone()))
        .ok_or_else(|| usage("--topics is required (or --job)"))?;
    let source = cluster(
        &cfg,
        &ClusterArgs {
            brokers: from.clone(),
        },
    )?;
    let target = cluster(
        &cfg,
        &ClusterArgs {
            brokers: to.clone(),
        },
    )?;
    let mut opts = MirrorOptions::new(
        (source, from.clone()),
        (target, to.clone()),
        topic_regex(&topics)?,
    );
    if let Some(n) = e.name.clone().or(e.job.clone()) {
        opts.name = n;
    }
    opts.prefix = e
        .prefix
        .clone()
        .or(job.as_ref().and_then(|j| j.prefix.clone()))
        .unwrap_or_default();
    opts.groups = if e.groups.is_empty() {
        job.map(|j| j.groups).unwrap_or_default()
    } else {
        e.groups.clone()
    };
    for g in &opts.groups {
        regex::Regex::new(g).map_err(|err| usage(format!("--groups {g:?}: {err}")))?;
    }
    opts.residency = cfg.residency_rules();
    opts.target_region = cfg.cluster(&to).region;
    Ok(opts)
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    match a.command {
        Some(Sub::Status { ends }) => return show_status(ctx, &options(ctx, &ends)?).await,
        Some(Sub::Translate {
            ends,
            group,
            offsets,
        }) => return translate(ctx, &options(ctx, &ends)?, group, &offsets).await,
        None => {}
    }
    let mut opts = options(ctx, &a.ends)?;
    opts.once = a.once;
    opts.sync_interval = Duration::from_millis(a.sync_ms.max(100));
    // Stop on a signal, or (with failover configured) when the target becomes the active
    // region: a mirror never writes into the active region.
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut signal = super::stop_on_signal();
    let on_signal = tx.clone();
    tokio::spawn(async move {
        if signal.changed().await.is_ok() {
            let _ = on_signal.send(true);
        }
    });
    let cfg = load_config(ctx)?;
    let guard = match failover::guard::region_of_cluster(&cfg, &opts.target_id) {
        Some(region) => {
            failover::guard::check_mirror_target(&cfg, &opts.name, &region).await?;
            Some(tokio::spawn(failover::guard::stop_mirror_when_active(
                cfg.clone(),
                opts.name.clone(),
                region,
                tx.clone(),
            )))
        }
        None => None,
    };
    let observer = super::job_observer(ctx, a.metrics_addr.as_deref(), "mirror").await?;
    let report = mirror::run(&opts, &observer, rx).await;
    observer.finish();
    let report = report?;
    if let Some(g) = guard {
        if g.is_finished() {
            if let Ok(why) = g.await {
                if !why.is_empty() {
                    return Err(anyhow::anyhow!("stopped: {why}"));
                }
            }
        } else {
            g.abort();
        }
    }
    if ctx.json {
        output::json(&report)?;
    } else {
        outln!(
            "mirrored {} records ({}) of {} partitions from {} to {} in {:.1}s; {} not copied back to their origin; {} group commits",
            report.records,
            output::bytes(report.bytes),
            report.partitions,
            opts.source_id,
            opts.target_id,
            report.seconds,
            report.skipped_origin,
            report.group_commits
        );
    }
    if report.duplicates > 0 {
        eprintln!(
            "error: {} records appear twice on the target (another writer copied them?)",
            report.duplicates
        );
        return Ok(1);
    }
    Ok(0)
}

async fn show_status(ctx: &Ctx, opts: &MirrorOptions) -> anyhow::Result<u8> {
    let parts = status::status(opts).await?;
    if ctx.json {
        output::json(&parts)?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = parts
        .iter()
        .map(|p| {
            vec![
                format!("{}/{}", p.topic, p.partition),
                p.target_topic.clone(),
                p.source_high.to_string(),
                p.mirrored_to.to_string(),
                p.lag_records.to_string(),
                format!("{:.1}", p.lag_seconds),
                match &p.at_risk {
                    None => "nothing".into(),
                    Some(r) => format!(
                        "offsets {}..={} ({} records, {} .. {})",
                        r.from,
                        r.to,
                        r.records,
                        haven_engine::time::format_ms(r.oldest_ms),
                        haven_engine::time::format_ms(r.newest_ms)
                    ),
                },
            ]
        })
        .collect();
    output::table(
        &[
            "PARTITION",
            "TARGET",
            "SOURCE-END",
            "MIRRORED-TO",
            "LAG",
            "LAG-S",
            "LOST IF THE SOURCE DIED NOW",
        ],
        &rows,
    );
    let worst = parts.iter().map(|p| p.lag_seconds).fold(0.0, f64::max);
    let total: i64 = parts.iter().map(|p| p.lag_records).sum();
    outln!(
        "RPO now: {worst:.1} s ({total} records not on {})",
        opts.target_id
    );
    Ok(0)
}

async fn translate(
    ctx: &Ctx,
    opts: &MirrorOptions,
    group: Option<String>,
    offsets: &[String],
) -> anyhow::Result<u8> {
    if group.is_none() && offsets.is_empty() {
        return Err(usage(
            "give --group GROUP or --offset TOPIC/PARTITION/OFFSET",
        ));
    }
    let mut wanted = Vec::new();
    for o in offsets {
        let mut it = o.rsplitn(3, '/');
        let (off, p, t) = (it.next(), it.next(), it.next());
        match (
            off.and_then(|x| x.parse().ok()),
            p.and_then(|x| x.parse().ok()),
            t,
        ) {
            (Some(off), Some(p), Some(t)) => wanted.push((t.to_string(), p, off)),
            _ => {
                return Err(usage(format!(
                    "--offset {o:?}: expected TOPIC/PARTITION/OFFSET, for example orders/0/42"
                )))
            }
        }
    }
    let out = status::translate(opts, group, wanted).await?;
    if ctx.json {
        output::json(&out)?;
    } else {
        let rows: Vec<Vec<String>> = out
            .iter()
            .map(|t| {
                vec![
                    format!("{}/{}", t.topic, t.partition),
                    t.source_offset.to_string(),
                    t.target_topic.clone(),
                    t.target_offset
                        .map_or("not mirrored yet".into(), |o| o.to_string()),
                ]
            })
            .collect();
        output::table(&["SOURCE", "OFFSET", "TARGET", "TARGET-OFFSET"], &rows);
    }
    Ok(if out.iter().all(|t| t.target_offset.is_some()) {
        0
    } else {
        1
    })
}
