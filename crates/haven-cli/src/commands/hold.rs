//! `haven hold add|remove|ls`: legal holds that keep records from `haven prune`.

use haven_engine::retention::holds;
use haven_engine::time::format_ms;

use super::{input, load_config, open_repo, usage, RepoArgs};
use crate::{output, Ctx};

/// Legal holds: a named hold on topics and a time range keeps every segment holding such
/// records, whatever the retention says, until the hold is removed. Each change is a
/// create-only object in the repository and an audit entry (`hold-add`, `hold-remove`)
/// with who, when and why.
///
/// Examples:
///   haven hold add case-2026-17 --repo main --topics 'payments\..*' \
///       --from 2026-01-01T00:00:00Z --to 2026-04-01T00:00:00Z --reason "SEC inquiry 17"
///   haven hold ls --repo main
///   haven hold remove case-2026-17 --repo main --reason "inquiry closed"
#[derive(Debug, clap::Subcommand)]
#[command(verbatim_doc_comment)]
pub enum Command {
    /// Place a hold.
    Add(AddArgs),
    /// Lift a hold.
    Remove(RemoveArgs),
    /// The holds in force.
    Ls(LsArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Its name: letters, digits, '-', '_', '.' (e.g. a case number).
    name: String,
    /// Regular expression of whole topic names it covers.
    #[arg(long, value_name = "REGEX")]
    topics: String,
    /// Records from this instant (RFC 3339, epoch ms, or relative like -30d); default: all.
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Records before this instant; default: all.
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Why (kept in the audit trail).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    repo: RepoArgs,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    name: String,
    /// Why it ends (kept in the audit trail).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    repo: RepoArgs,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    repo: RepoArgs,
}

fn instant(t: Option<&str>, now: i64) -> anyhow::Result<Option<i64>> {
    t.map(|t| haven_engine::time::parse_instant(t, now).map_err(|e| usage(e.to_string())))
        .transpose()
}

pub async fn run(ctx: &Ctx, c: Command) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let now = chrono::Utc::now().timestamp_millis();
    match c {
        Command::Add(a) => {
            let (from, to) = (
                instant(a.from.as_deref(), now)?,
                instant(a.to.as_deref(), now)?,
            );
            let repo = open_repo(&cfg, &a.repo, false).await?;
            let key = holds::add(&repo, &a.name, &a.topics, from, to, &a.reason)
                .await
                .map_err(input)?;
            if ctx.json {
                output::json(&serde_json::json!({"hold": a.name, "object": key}))?;
            } else {
                outln!("hold {} placed on {} ({key})", a.name, a.topics);
            }
        }
        Command::Remove(a) => {
            let repo = open_repo(&cfg, &a.repo, false).await?;
            let key = holds::remove(&repo, &a.name, &a.reason)
                .await
                .map_err(input)?;
            if ctx.json {
                output::json(&serde_json::json!({"hold": a.name, "object": key}))?;
            } else {
                outln!("hold {} removed ({key})", a.name);
            }
        }
        Command::Ls(a) => {
            let repo = open_repo(&cfg, &a.repo, false).await?;
            let hs = holds::in_force(&repo).await?;
            if ctx.json {
                output::json(&hs)?;
            } else if hs.is_empty() {
                outln!("no hold is in force");
            } else {
                for h in hs {
                    outln!(
                        "{}  topics {}  from {}  to {}  since {} by {}: {}",
                        h.name,
                        h.topics,
                        h.from.map_or("(all)".into(), format_ms),
                        h.to.map_or("(all)".into(), format_ms),
                        format_ms(h.since),
                        h.by,
                        h.reason
                    );
                }
            }
        }
    }
    Ok(0)
}
