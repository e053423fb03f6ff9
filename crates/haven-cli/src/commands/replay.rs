//! `haven replay`: the events of a window to a sink, so a service can rebuild from them.

use haven_engine::read::Bound;
use haven_engine::recovery::audit;
use haven_engine::recovery::replay::{self, ReplayOptions, Source};
use haven_engine::recovery::sink::{Sink, SinkSpec};

use super::{cluster, load_config, open_repo, parse_bound, usage, ClusterArgs, RepoArgs};
use crate::{output, Ctx};

/// Replay the events of a window to a sink.
///
/// Reads the window from the backup (default) or the live cluster, partition by partition
/// in offset order, and delivers it in batches to --sink:
///   stdout                          NDJSON, one event per line (as `haven cat`)
///   kafka:TOPIC                     a topic of --brokers, with a haven-source header
///   http(s)://HOST/PATH             POST batches of NDJSON; retries 5xx and connection
///                                   errors with back-off, stops on a 4xx with its reason
///   postgres://USER@HOST/DB?table=T rows (topic, partition, offset, ts, key, value,
///                                   headers) written with COPY, idempotent on
///                                   (topic, partition, offset); the table is created
/// Progress is stored in the repository after every batch: --resume ID continues.
/// With --sink stdout, stdout holds only the events; the summary (JSON with --json) goes
/// to stderr.
///
/// Examples:
///   haven replay --repo main --topics machine-events \
///       --from 2026-11-22T14:00:00Z --to 2026-11-22T14:15:00Z \
///       --sink 'postgres://haven@db/machines?table=replayed_events'
///   haven replay --brokers us --source live --topics documents --from -15m \
///       --sink http://rebuild:8080/events
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Repository (the backup source, and where progress is kept).
    #[arg(long, env = "HAVEN_REPO", value_name = "NAME|URL")]
    repo: Option<String>,
    #[arg(long, value_name = "FILE")]
    key_file: Option<std::path::PathBuf>,
    /// Kafka cluster (the live source, and kafka:TOPIC sinks).
    #[arg(long, env = "HAVEN_BROKERS", value_name = "NAME|HOST:PORT")]
    brokers: Option<String>,
    /// Topics to replay (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    topics: Vec<String>,
    /// Only these partitions (comma-separated).
    #[arg(long, value_delimiter = ',')]
    partitions: Option<Vec<i32>>,
    /// Window start: an offset, or a time (RFC 3339, epoch ms, -15m).
    #[arg(long, allow_hyphen_values = true, value_name = "OFFSET|TIME")]
    from: Option<String>,
    /// Window end (exclusive).
    #[arg(long, allow_hyphen_values = true, value_name = "OFFSET|TIME")]
    to: Option<String>,
    /// Where the events come from.
    #[arg(long, value_enum, default_value = "backup")]
    source: SourceArg,
    /// Where they go: stdout, kafka:TOPIC, http(s)://..., postgres://...?table=NAME.
    #[arg(long, default_value = "stdout")]
    sink: String,
    /// Events per batch.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// HTTP sink: how many times a failed POST (connection error, 5xx) is retried.
    #[arg(long, default_value_t = 8)]
    retries: u32,
    /// Continue an earlier replay (its id is printed at the start and in --json).
    #[arg(long, value_name = "ID")]
    resume: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SourceArg {
    Backup,
    Live,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let now = chrono::Utc::now().timestamp_millis();
    let (from, to) = (
        parse_bound(a.from.as_deref(), now)?,
        parse_bound(a.to.as_deref(), now)?,
    );
    let source = match a.source {
        SourceArg::Backup => Source::Backup,
        SourceArg::Live => Source::Live,
    };
    let repo = match &a.repo {
        Some(r) => Some(
            open_repo(
                &cfg,
                &RepoArgs {
                    repo: r.clone(),
                    key_file: a.key_file.clone(),
                },
                false,
            )
            .await?,
        ),
        None if source == Source::Backup => return Err(usage("--source backup needs --repo")),
        None => None,
    };
    let cl = a
        .brokers
        .as_ref()
        .map(|b| cluster(&cfg, &ClusterArgs { brokers: b.clone() }))
        .transpose()?;
    let spec = SinkSpec::parse(&a.sink)?;
    let mut sink = Sink::open(&spec, cl.as_ref()).await?;
    if let Sink::Http { retries, .. } = &mut sink {
        *retries = a.retries;
    }
    let id = a.resume.clone().unwrap_or_else(|| {
        format!(
            "{}-{:04x}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
            rand::random::<u16>()
        )
    });
    if !ctx.json && spec != SinkSpec::Stdout {
        eprintln!("replay {id}: {} to {}", a.topics.join(", "), a.sink);
    }
    let opts = ReplayOptions {
        topics: a.topics.clone(),
        partitions: a.partitions.clone(),
        from,
        to,
        source,
        batch: a.batch,
        id: id.clone(),
    };
    if matches!(from, Bound::Unbounded) && matches!(to, Bound::Unbounded) && !ctx.json {
        eprintln!("note: no --from/--to: replaying everything");
    }
    let report = replay::replay(repo.as_ref(), cl.as_ref(), &opts, &mut sink).await?;
    if let (
        Some(repo),
        SinkSpec::Kafka { .. } | SinkSpec::Postgres { .. } | SinkSpec::Http { .. },
    ) = (&repo, &spec)
    {
        let details = serde_json::json!({"id": id, "sink": haven_engine::recovery::sink::redact(&a.sink), "topics": a.topics, "records": report.records});
        audit::record(repo, "replay", &audit::sha256_of(&details), details).await?;
    }
    if ctx.json && spec == SinkSpec::Stdout {
        // stdout holds the events (NDJSON, as `haven cat`); the summary goes to stderr.
        eprintln!("{}", serde_json::to_string(&report)?);
    } else if ctx.json {
        output::json(&report)?;
    } else if spec != SinkSpec::Stdout {
        outln!(
            "replayed {} events in {} batches (replay {id}){}",
            report.records,
            report.batches,
            if report.resumed_past > 0 {
                format!(
                    "; {} were already delivered by an earlier run",
                    report.resumed_past
                )
            } else {
                String::new()
            }
        );
    }
    Ok(0)
}
