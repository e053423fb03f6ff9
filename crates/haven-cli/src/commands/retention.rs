//! `haven retention report`: what is kept until when, its size and growth.

use haven_engine::retention::{report, Policy};
use haven_engine::time::format_ms;

use super::{input, load_config, open_repo, RepoArgs};
use crate::{output, Ctx};

/// What a repository keeps and until when.
///
/// Per topic: the retention that applies, records and stored size, the oldest and
/// newest record, when its oldest records fall due, the holds that cover it and what
/// retention already deleted; for the repository: its size and the growth a year at the
/// rate of its last 30 days of segments.
///
/// Examples:
///   haven retention report --repo main
///   haven --json retention report --repo main --keep 7y
#[derive(Debug, clap::Subcommand)]
#[command(verbatim_doc_comment)]
pub enum Command {
    /// Per topic: retention, size, oldest record, when it falls due, holds.
    Report(ReportArgs),
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Retention for every topic, instead of the configured `retention`.
    #[arg(long, value_name = "PERIOD")]
    keep: Option<String>,
}

pub async fn run(ctx: &Ctx, c: Command) -> anyhow::Result<u8> {
    let Command::Report(a) = c;
    let cfg = load_config(ctx)?;
    let section = cfg.repository(&a.repo.repo);
    let policy = Policy::of(&section, a.keep.as_deref()).map_err(input)?;
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let r = report::report(&repo, &policy, now).await?;
    if ctx.json {
        output::json(&r)?;
        return Ok(0);
    }
    outln!("policy: {}", r.policy);
    for t in &r.topics {
        outln!(
            "{}: keep {}, {} records, {}, oldest {}, newest {}, oldest due {}{}{}",
            t.topic,
            t.keep.as_deref().unwrap_or("for ever"),
            t.records,
            output::bytes(t.stored_bytes),
            t.oldest_ms.map_or("-".into(), format_ms),
            t.newest_ms.map_or("-".into(), format_ms),
            t.oldest_due_at.map_or("never".into(), format_ms),
            if t.held_by.is_empty() {
                String::new()
            } else {
                format!(", held by {}", t.held_by.join(", "))
            },
            if t.pruned_records > 0 {
                format!(", {} records pruned", t.pruned_records)
            } else {
                String::new()
            }
        );
    }
    for h in &r.holds {
        outln!("hold {} on {}: {}", h.name, h.topics, h.reason);
    }
    outln!(
        "{} segments ({} pruned), {} stored; growth {}",
        r.segments,
        r.pruned_segments,
        output::bytes(r.stored_bytes),
        r.growth_bytes_per_year
            .map_or("unknown (under an hour of history)".into(), |g| format!(
                "{} a year at the last 30 days' rate",
                output::bytes(g as u64)
            ))
    );
    outln!(
        "{}",
        haven_engine::retention::store_note(r.store_enforces_retention)
    );
    Ok(0)
}
