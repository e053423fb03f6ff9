//! `haven backup`: continuous or snapshot backup of topics into a repository.

use std::path::PathBuf;
use std::time::Duration;

use haven_engine::backup::{self, BackupOptions};
use haven_storage::CreateOnly;

use super::{cluster, load_config, open_repo, usage, ClusterArgs, RepoArgs};
use crate::{output, Ctx};

/// Back up Kafka topics into a repository.
///
/// Continuous by default: every --flush-ms (default 500) what was read becomes one new
/// segment in the repository, whatever the number of partitions. Stop with Ctrl-C or
/// SIGTERM: what was read is flushed first. With --once, backs up to the high watermarks
/// seen at start and exits 0.
///
/// Restarting continues exactly after the last durable offset of every partition, whether
/// the previous run stopped cleanly or was killed: no gap, no duplicate.
///
/// The repository is created on first use; with --key-file or HAVEN_KEY it is encrypted.
///
/// Examples:
///   haven backup --brokers localhost:9092 --repo ./backup --topics 'orders.*' --once
///   haven backup --job orders            (cluster, repository and topics from haven.toml)
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Kafka cluster: a name from haven.toml or HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "HAVEN_BROKERS", value_name = "NAME|HOST:PORT")]
    brokers: Option<String>,

    /// Repository: a name from haven.toml, a URL (file:///PATH, s3://BUCKET/PREFIX) or a path.
    #[arg(long, env = "HAVEN_REPO", value_name = "NAME|URL")]
    repo: Option<String>,

    /// File holding the repository's keys (64 hex digits each, one per line; the first is current for a new repository). Also: HAVEN_KEY.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,

    /// Topics to back up: a regular expression matched against whole names.
    #[arg(long, value_name = "REGEX")]
    topics: Option<String>,

    /// Job name. Processes with the same job share the partitions (Kafka's consumer-group
    /// protocol) and take over those of a process that dies. A [jobs.NAME] of haven.toml
    /// supplies brokers, repo and topics (flags override it).
    #[arg(long, value_name = "NAME")]
    job: Option<String>,

    /// Snapshot: back up to the high watermarks seen at start, then exit.
    #[arg(long)]
    once: bool,

    /// Milliseconds between flushes to the repository: the most a record waits in memory
    /// [default: 500]. Each flush is one PUT, whatever the number of partitions.
    #[arg(long, value_name = "MS")]
    flush_ms: Option<u64>,

    /// Seconds between samples of consumer-group commits (0: no group timeline).
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    group_interval: u64,

    /// A consumer group to sample in any case (repeatable). Groups the cluster lists are
    /// sampled too; this covers clusters that cannot list their groups.
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,

    /// Most MiB of records held in memory before a flush (memory is bounded by this and
    /// librdkafka's queue, never by the topic's size or the backlog).
    #[arg(long, default_value_t = 6, value_name = "MIB")]
    max_buffer_mb: usize,

    /// Serve Prometheus metrics at http://ADDR/metrics (for example 127.0.0.1:9464).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,

    /// Readers in this process: each its own Kafka consumer (own connections, fetches in
    /// parallel), the partitions split among them; still one segment per flush, and the
    /// readers of all the job's processes share partitions through the group. Default 1
    /// ([jobs.NAME] readers): measure with `haven bench backup --readers N` first.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    readers: Option<u16>,

    /// How long the broker may hold a fetch waiting for data (fetch.wait.max.ms).
    #[arg(long, default_value_t = 10, value_name = "MS")]
    fetch_wait_ms: u32,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let all_flags = a.brokers.is_some() && a.repo.is_some() && a.topics.is_some();
    let job = match &a.job {
        Some(name) => match cfg.jobs.get(name) {
            Some(j) => Some(j.clone()),
            // A job name alone (no config entry) just names the group of processes.
            None if all_flags => None,
            None => {
                return Err(usage(format!(
                    "no job named {name:?} in the config: define [jobs.{name}] or pass --brokers, --repo and --topics"
                )))
            }
        },
        None => None,
    };
    let brokers = a
        .brokers
        .clone()
        .or(job.as_ref().map(|j| j.cluster.clone()))
        .ok_or_else(|| usage("--brokers is required (or --job)"))?;
    let repo_name = a
        .repo
        .clone()
        .or(job.as_ref().map(|j| j.repository.clone()))
        .ok_or_else(|| usage("--repo is required (or --job)"))?;
    let topics = a
        .topics
        .clone()
        .or(job.as_ref().map(|j| j.topics.clone()))
        .ok_or_else(|| usage("--topics is required (or --job)"))?;
    let flush_ms = a
        .flush_ms
        .or(job.as_ref().and_then(|j| j.flush_ms))
        .unwrap_or(1000);
    if flush_ms == 0 {
        return Err(usage("--flush-ms must be at least 1"));
    }
    let mut cl = cluster(&cfg, &ClusterArgs { brokers })?;
    cl.fetch_wait_ms = a.fetch_wait_ms;
    let mut opts = BackupOptions::new(cl, backup::topic_regex(&topics)?);
    opts.once = a.once;
    opts.readers = a
        .readers
        .map(usize::from)
        .or(job.as_ref().and_then(|j| j.readers));
    opts.max_buffer_bytes = a.max_buffer_mb.max(1) * 1024 * 1024;
    opts.flush_interval = Duration::from_millis(flush_ms);
    opts.group_interval = (a.group_interval > 0).then(|| Duration::from_secs(a.group_interval));
    opts.groups = a.groups.clone();
    opts.job = a.job.clone().unwrap_or_else(|| "default".into());
    opts.residency = cfg.residency_rules();
    opts.repository_region = cfg.repository(&repo_name).region;
    // Everything that can be wrong with the flags or the cluster is found before a new
    // repository is created.
    backup::select_topics(&opts, &cfg.repository(&repo_name).url).await?;
    let repo = open_repo(
        &cfg,
        &RepoArgs {
            repo: repo_name.clone(),
            key_file: a.key_file.clone(),
        },
        true,
    )
    .await?;
    if repo.probe().await? == CreateOnly::NotEnforced {
        tracing::warn!(
            "the store behind {} does not enforce create-only writes: run one backup writer per \
             repository, and protect the bucket with versioning or object lock",
            repo.store().url()
        );
    }
    if repo.probe_retention().await == Some(false) {
        tracing::info!(
            "the store behind {} lets objects be deleted (no S3 Object Lock or WORM, measured): \
             retention is kept by Haven (`haven prune`), not by the store; the hash chain, prune \
             manifests and the audit chain make any deletion visible to `haven verify`",
            repo.store().url()
        );
    }

    let rx = super::stop_on_signal();
    let observer = super::job_observer(ctx, a.metrics_addr.as_deref(), "backup").await?;
    let report = backup::run(&repo, &opts, &observer, rx).await;
    observer.finish();
    let report = report?;
    if ctx.json {
        output::json(&report)?;
    } else {
        outln!(
            "backed up {} records in {} segments ({}) from {} partitions in {:.1}s",
            report.records,
            report.segments,
            output::bytes(report.bytes),
            report.partitions,
            report.seconds
        );
        for (t, p, from, to) in &report.losses {
            outln!("LOSS {t}/{p}: offsets {from}..{to} were deleted at the source before Haven read them");
        }
    }
    Ok(0)
}
