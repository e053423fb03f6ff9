//! `haven recover`: a reviewed, resumable recovery plan (rewind + replay + compensate).

use std::path::{Path, PathBuf};

use haven_engine::executor::{self, Execution, Progress};
use haven_engine::recovery::apply::RecoveryRunner;
use haven_engine::recovery::audit;
use haven_engine::recovery::plan::{self, RecoveryPlan, Step};
use haven_engine::recovery::replay::Source;
use haven_engine::recovery::sink::SinkSpec;

use super::compensate::generator;
use super::{cluster, confirm, load_config, open_repo, usage, ClusterArgs, RepoArgs};
use crate::commands::impact;
use crate::{output, Ctx};

/// Plan a service's recovery, review it, then apply it step by step.
///
/// With --service and --restored-to: runs the impact analysis and writes a plan to --out
/// (JSON): rewind each of the service's groups to its offsets at T0; optionally replay the
/// window's events to --replay-sink; optionally compensate what downstream groups
/// processed (--compensate-topic with --template, --command or --hook). Nothing changes.
///
/// With --apply PLAN: executes the plan's steps in order, asking once for confirmation
/// (unless --yes). Progress is kept in PLAN.progress.json: after a failure, fix the cause
/// and run the same command again; it continues with the failed step. Each step is
/// recorded in the repository's audit log with the plan's SHA-256.
///
/// Examples:
///   haven recover --service machine-management --restored-to 2026-11-22T14:00:00Z \
///       --brokers us --repo main --replay-sink 'postgres://haven@db/mm?table=replayed' \
///       --out plan.json
///   haven recover --apply plan.json --brokers us --repo main
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[arg(long, value_name = "NAME", required_unless_present = "apply")]
    service: Option<String>,
    #[arg(
        long,
        allow_hyphen_values = true,
        value_name = "TIME",
        required_unless_present = "apply"
    )]
    restored_to: Option<String>,
    #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
    incident: Option<String>,
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    group_interval: u64,
    /// Where to write the plan.
    #[arg(long, value_name = "FILE", default_value = "recovery-plan.json")]
    out: PathBuf,
    /// Add a replay step of the window's events to this sink (see `haven replay --help`).
    #[arg(long, value_name = "SINK")]
    replay_sink: Option<String>,
    /// Where the replay step reads from.
    #[arg(long, default_value = "backup", value_parser = ["backup", "live"])]
    replay_source: String,
    /// Add a compensation step to this topic.
    #[arg(long, value_name = "TOPIC")]
    compensate_topic: Option<String>,
    #[arg(long, value_name = "JSON")]
    template: Option<String>,
    #[arg(long, value_name = "CMD")]
    command: Option<String>,
    #[arg(long, value_name = "URL")]
    hook: Option<String>,
    /// Apply a plan written earlier.
    #[arg(long, value_name = "PLAN", conflicts_with_all = ["service", "restored_to"])]
    apply: Option<PathBuf>,
    #[arg(long)]
    yes: bool,
    /// With --apply: print the steps left; change nothing.
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    match a.apply.clone() {
        Some(path) => apply(ctx, &a, &path).await,
        None => write_plan(ctx, a).await,
    }
}

async fn write_plan(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let ia = impact::Args {
        repo: RepoArgs {
            repo: a.repo.repo.clone(),
            key_file: a.repo.key_file.clone(),
        },
        cluster: ClusterArgs {
            brokers: a.cluster.brokers.clone(),
        },
        service: a.service.clone().unwrap_or_default(),
        restored_to: a.restored_to.clone().unwrap_or_default(),
        incident: a.incident.clone(),
        markdown: false,
        group_interval: a.group_interval,
    };
    let imp = impact::compute(ctx, &ia).await?.impact;
    let replay = a.replay_sink.as_ref().map(|s| {
        (
            if a.replay_source == "live" {
                Source::Live
            } else {
                Source::Backup
            },
            s.clone(),
        )
    });
    if let Some(s) = &a.replay_sink {
        SinkSpec::parse(s)?;
    }
    let comp = match &a.compensate_topic {
        Some(t) => Some((
            t.clone(),
            generator(a.template.clone(), a.command.clone(), a.hook.clone())?,
        )),
        None => None,
    };
    let p = plan::build(&imp, replay, comp);
    std::fs::write(&a.out, serde_json::to_vec_pretty(&p)?)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", a.out.display()))?;
    if ctx.json {
        output::json(
            &serde_json::json!({"plan": a.out, "sha256": audit::sha256_of(&p), "steps": p.steps.len(), "warnings": p.warnings}),
        )?;
    } else {
        outln!(
            "wrote {} ({} steps, sha256 {}):",
            a.out.display(),
            p.steps.len(),
            audit::sha256_of(&p)
        );
        for (i, s) in p.steps.iter().enumerate() {
            outln!("  {}. {}", i + 1, describe(s));
        }
        for w in &p.warnings {
            outln!("WARNING: {w}");
        }
        outln!("review it, then: haven recover --apply {}", a.out.display());
    }
    Ok(0)
}

fn describe(s: &Step) -> String {
    haven_engine::executor::Step::describe(s)
}

async fn apply(ctx: &Ctx, a: &Args, path: &Path) -> anyhow::Result<u8> {
    let raw = std::fs::read(path)
        .map_err(|e| usage(format!("cannot read plan {}: {e}", path.display())))?;
    let p: RecoveryPlan = serde_json::from_slice(&raw)
        .map_err(|e| usage(format!("{} is not a recovery plan: {e}", path.display())))?;
    let hash = audit::sha256_of(&p);
    let mut progress =
        Progress::load(&executor::progress_path(path)).map_err(|e| usage(e.to_string()))?;
    let left: Vec<(usize, &Step)> = p
        .steps
        .iter()
        .enumerate()
        .filter(|(i, _)| !progress.is_done(*i))
        .collect();
    if a.dry_run || left.is_empty() {
        for (i, s) in &left {
            outln!("{}. {}", i + 1, describe(s));
        }
        outln!("{} of {} steps left", left.len(), p.steps.len());
        return Ok(0);
    }
    let summary: Vec<String> = left
        .iter()
        .map(|(i, s)| format!("  {}. {}", i + 1, describe(s)))
        .collect();
    confirm(
        a.yes,
        &format!(
            "Apply {} (sha256 {hash}):\n{}",
            path.display(),
            summary.join("\n")
        ),
    )?;
    let cfg = load_config(ctx)?;
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let cl = cluster(&cfg, &a.cluster)?;
    let observer = crate::observer::CliObserver::new(ctx.json);
    let mut runner = RecoveryRunner {
        plan: &p,
        sha256: &hash,
        repo: &repo,
        cluster: &cl,
    };
    let ex = Execution {
        action: "recover-apply",
        plan_sha256: &hash,
        audit: &repo,
        observer: &observer,
    };
    executor::execute(&p.steps, &mut progress, &mut runner, &ex).await?;
    if ctx.json {
        output::json(
            &serde_json::json!({"applied": path, "sha256": hash, "steps": p.steps.len()}),
        )?;
    } else {
        outln!("plan applied ({} steps)", p.steps.len());
    }
    Ok(0)
}
