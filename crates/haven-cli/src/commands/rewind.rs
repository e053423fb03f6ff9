//! `haven rewind`: a consumer group back to where it was at an instant.

use std::time::Duration;

use haven_engine::recovery::{audit, rewind};
use haven_engine::timeline::Timeline;

use super::{cluster, confirm, instant, load_config, open_repo, ClusterArgs, RepoArgs};
use crate::{output, Ctx};

/// Set a consumer group's offsets to where they were at an instant.
///
/// After a service's database is restored to T0, rewinding its groups to T0 makes it
/// consume its inputs again from exactly where its restored database stands. Offsets come
/// from the backup's group timeline (an instant before the timeline starts is refused).
/// A group with active members is refused (members named where the broker describes
/// groups; otherwise activity is inferred from its commits moving), and after the rewind
/// Haven checks that nobody overwrote it. Asks for confirmation unless --yes; --dry-run
/// shows the moves. Recorded in the repository's audit log.
///
/// Examples:
///   haven rewind --group machine-management --to 2026-11-22T14:00:00Z \
///       --brokers us --repo main --dry-run
///   haven rewind --group machine-management --to 2026-11-22T14:00:00Z --topics documents --yes
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The consumer group.
    #[arg(long)]
    group: String,
    /// The instant to go back to (T0).
    #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
    to: String,
    /// Topics to rewind (default: every topic the timeline saw the group commit on).
    #[arg(long, value_delimiter = ',')]
    topics: Vec<String>,
    /// Show what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// Milliseconds to watch the group's commits before and after (brokers that cannot
    /// describe groups).
    #[arg(long, default_value_t = 3000, value_name = "MS")]
    watch_ms: u64,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let at = instant("--to", &a.to)?;
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let state = super::load_for_reading(&repo, false).await?;
    let timeline = Timeline::new(&state);
    let topics: Vec<String> = if a.topics.is_empty() {
        let mut t: Vec<String> = state
            .group_commits
            .iter()
            .filter(|c| c.group == a.group)
            .map(|c| c.topic.clone())
            .collect();
        t.sort();
        t.dedup();
        t
    } else {
        a.topics.clone()
    };
    let plan = rewind::plan(&timeline, &a.group, &topics, at)?;
    let cl = cluster(&cfg, &a.cluster)?;
    let c = cl.clone();
    let plan = tokio::task::spawn_blocking(move || rewind::with_current(&c, plan)).await??;
    if a.dry_run || !ctx.json {
        let rows: Vec<Vec<String>> = plan
            .moves
            .iter()
            .map(|m| {
                vec![
                    format!("{}/{}", m.topic, m.partition),
                    m.now.map_or("none".into(), |v| v.to_string()),
                    m.to.to_string(),
                ]
            })
            .collect();
        if !ctx.json {
            outln!("group {} to its offsets at {}:", plan.group, plan.at_text);
            output::table(&["PARTITION", "NOW", "REWIND-TO"], &rows);
        }
    }
    if a.dry_run {
        if ctx.json {
            output::json(&serde_json::json!({"dry_run": true, "plan": plan}))?;
        }
        return Ok(0);
    }
    confirm(
        a.yes,
        &format!(
            "Rewind group {} on {} partitions to {}",
            plan.group,
            plan.moves.len(),
            plan.at_text
        ),
    )?;
    rewind::apply_async(&cl, &plan, Duration::from_millis(a.watch_ms)).await?;
    let key = audit::record(
        &repo,
        "rewind",
        &audit::sha256_of(&plan),
        serde_json::to_value(&plan)?,
    )
    .await?;
    if ctx.json {
        output::json(&serde_json::json!({"rewound": plan, "audit": key}))?;
    } else {
        outln!("rewound; recorded as {key}");
    }
    Ok(0)
}
