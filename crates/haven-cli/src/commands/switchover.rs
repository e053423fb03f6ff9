//! `haven switchover --to REGION`: the planned move of the active region, with zero loss
//! of acknowledged writes. Shares its plan runner with `haven failover --to`.

use std::path::PathBuf;

use haven_engine::executor::Step as _;
use haven_engine::failover::plan::Kind;
use haven_engine::failover::run;

use super::{confirm, load_config};
use crate::{output, Ctx};

/// Make another region the active one, losing no acknowledged write.
///
/// The plan (see it with --dry-run): close the active region's write routes, fence its
/// databases (the application roles lose LOGIN and CONNECT, their sessions end), write a
/// barrier and wait until the target's replica has it (it then has every write the old
/// region acknowledged), copy the sequences, drop the forward subscription, publish from
/// the target and subscribe the old region to it (reverse replication, before any new
/// write), hand the region lease to the target (the fencing epoch goes up by one), let
/// the application roles in, open the target's write routes.
///
/// Writes are refused from the first step to the last (typically a few seconds). Every
/// step is recorded with the epoch in STATE/audit/. If a step fails, the system stays
/// fenced (no region takes writes); fix the cause and run the same command again: it
/// continues with the failed step. Each step first checks that the epoch has not moved
/// (a plan made stale by another failover stops before changing anything).
///
/// Examples:
///   haven switchover --to eu --dry-run
///   haven switchover --to eu --yes
///   haven --json switchover --to eu --yes --state-dir /var/lib/haven
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The region to make active.
    #[arg(long, value_name = "REGION")]
    pub to: String,
    #[command(flatten)]
    pub run: RunArgs,
}

/// What switchover and failover share.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Print the plan, step by step; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Where plans, their progress and the audit log are kept.
    #[arg(long, value_name = "DIR", env = "HAVEN_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `$XDG_STATE_HOME/haven`, else `~/.local/state/haven`.
pub fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(x).join("haven");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/haven"),
        None => PathBuf::from("haven-state"),
    }
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    run_plan(ctx, Kind::Switchover, &a.to, false, &a.run).await
}

/// Prepares (or continues) a plan, shows it, asks, runs it, reports.
pub async fn run_plan(
    ctx: &Ctx,
    kind: Kind,
    to: &str,
    force: bool,
    a: &RunArgs,
) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let state_dir = a.state_dir.clone().unwrap_or_else(default_state_dir);
    let prepared = run::prepare(&cfg, kind, to, force, &state_dir).await?;
    let plan = &prepared.plan;
    let lines: Vec<String> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mark = if i < prepared.done { " (done)" } else { "" };
            format!("  {}. {}{mark}", i + 1, s.describe())
        })
        .collect();
    let title = format!(
        "{} from {} to {} (epoch {} -> {}){}",
        kind.as_str(),
        plan.from,
        plan.to,
        plan.base_epoch,
        plan.base_epoch + 1,
        if prepared.done > 0 {
            format!(
                ", continuing after step {} of {}",
                prepared.done,
                plan.steps.len()
            )
        } else {
            String::new()
        }
    );
    if a.dry_run {
        if ctx.json {
            output::json(
                &serde_json::json!({"plan": plan, "done": prepared.done, "file": prepared.path}),
            )?;
        } else {
            outln!("{title}:");
            for l in &lines {
                outln!("{l}");
            }
            outln!(
                "(dry run: nothing changed; the plan is kept in {})",
                prepared.path.display()
            );
        }
        return Ok(0);
    }
    confirm(a.yes, &format!("{title}:\n{}", lines.join("\n")))?;
    if !ctx.json {
        eprintln!("{title}");
    }
    let observer = crate::observer::CliObserver::new(ctx.json);
    let agent_id = format!("cli@{}", super::hostname());
    let report = run::execute(&cfg, &prepared, &agent_id, &observer).await?;
    if ctx.json {
        output::json(&report)?;
    } else {
        outln!(
            "{} done: {} is active with epoch {} ({} steps, {} run now, {} ms)",
            kind.as_str(),
            report.to,
            report.epoch,
            report.steps,
            report.ran,
            report.elapsed_ms
        );
        if !report.timeline.phases.is_empty() {
            let phases: Vec<String> = report
                .timeline
                .phases
                .iter()
                .map(|(p, ms)| format!("{} {ms} ms", p.as_str()))
                .collect();
            outln!("  steps by phase: {}", phases.join(", "));
        }
        for e in &report.evidence {
            outln!(
                "  {}: replicated up to {} (remote_lsn); last heartbeat {} before the detach",
                e.get("database").and_then(|v| v.as_str()).unwrap_or("?"),
                e.get("remote_lsn")
                    .and_then(|v| v.as_str())
                    .unwrap_or("unknown"),
                e.get("heartbeat_age_s")
                    .and_then(|v| v.as_f64())
                    .map(|s| format!("{s:.1} s"))
                    .unwrap_or_else(|| "unknown".into())
            );
        }
        for k in &report.kafka {
            let mirror = k.get("mirror").and_then(|v| v.as_str()).unwrap_or("?");
            let commits = k.get("group_commits").and_then(|v| v.as_u64()).unwrap_or(0);
            match k.get("records_at_risk").and_then(|v| v.as_i64()) {
                Some(risk) => outln!(
                    "  mirror {mirror}: {commits} group commits in the last sync; {risk} records of the old region not copied"
                ),
                None => outln!(
                    "  mirror {mirror}: the old region did not answer; what the new one holds per partition is in --json (records after mirrored_to never crossed)"
                ),
            }
        }
    }
    Ok(0)
}
