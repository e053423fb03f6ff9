//! `haven prune`: delete what is past retention and under no legal hold.

use haven_engine::retention::{self, Policy};
use haven_engine::time::format_ms;

use super::{input, load_config, open_repo, RepoArgs};
use crate::{output, Ctx};

/// Delete the segments whose records are all past their topics' retention and that no
/// legal hold covers. Without --apply it only says what it would delete.
///
/// Retention comes from the repository's section in haven.toml (`retention = "7y"`,
/// `retention_topics = { "logs\\..*" = "90d" }`; the longest matching period applies),
/// or --keep. A segment is judged by the newest record it holds (as Kafka judges a log
/// segment); the last segment is never deleted; a log that does not verify is refused.
///
/// Before deleting, a prune manifest (`prune/...json`: each segment's number, digest
/// and offset ranges) is written create-only and recorded in the audit chain, so that
/// `haven verify` still checks the hash chain and offset continuity of what remains and
/// reports a segment deleted any other way. A prune stopped half-way is finished by the
/// next one.
///
/// Examples:
///   haven prune --repo main                   (what would go, and what holds keep)
///   haven prune --repo main --apply
///   haven prune --repo file:///backups/x --keep 400d --apply
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    repo: RepoArgs,
    /// Retention for every topic, instead of the configured `retention` (e.g. 7y, 400d).
    #[arg(long, value_name = "PERIOD")]
    keep: Option<String>,
    /// Delete (otherwise: only show what would be deleted).
    #[arg(long)]
    apply: bool,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let section = cfg.repository(&a.repo.repo);
    let policy = Policy::of(&section, a.keep.as_deref()).map_err(input)?;
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let plan = retention::plan(&repo, &policy, now).await.map_err(input)?;
    let manifest = if a.apply {
        retention::apply(&repo, &plan, now).await?
    } else {
        None
    };
    if ctx.json {
        output::json(&serde_json::json!({
            "applied": a.apply, "manifest": manifest, "plan": plan,
        }))?;
        return Ok(0);
    }
    outln!("policy: {}", plan.policy);
    for k in &plan.held {
        outln!("kept  segment {}: {}", k.seq, k.why);
    }
    for s in &plan.segments {
        let newest = s.ranges.iter().filter_map(|r| r.max_timestamp).max();
        outln!(
            "{} segment {}: {} records, {}, newest record {}",
            if a.apply { "deleted" } else { "due  " },
            s.seq,
            s.ranges.iter().map(|r| r.records).sum::<u64>(),
            output::bytes(s.bytes),
            newest.map_or("(none)".into(), format_ms)
        );
    }
    if !plan.unfinished.is_empty() && a.apply {
        outln!(
            "finished an earlier prune: deleted segments {:?}",
            plan.unfinished
        );
    }
    outln!(
        "{} {} segments ({} records, {}); {} kept by holds{}",
        if a.apply { "pruned" } else { "would prune" },
        plan.segments.len(),
        plan.records,
        output::bytes(plan.bytes),
        plan.held.len(),
        match &manifest {
            Some(m) => format!("; manifest {m}"),
            None if !a.apply && !plan.segments.is_empty() => "; run again with --apply".into(),
            None => String::new(),
        }
    );
    outln!(
        "note: {}",
        haven_engine::retention::store_note(plan.store_enforces_retention)
    );
    Ok(0)
}
