//! `haven failback [status|capture|reconcile]`: after an unplanned failover, what the old
//! primary wrote that never crossed: captured, reconciled, re-applied once.

use haven_engine::failback::reconcile::{Outcome, ReconcileReport, Verdict};
use haven_engine::failback::{self, Capture};

use super::{input, load_config, open_repo, usage, RepoArgs};
use crate::{output, Ctx};

/// Bring back what the old primary wrote after an unplanned failover.
///
/// When the old primary (say US) comes back after EU took over, it holds writes EU never
/// got: Postgres transactions past what EU had applied, Kafka records past what EU's
/// mirror had copied. Its agent keeps it fenced. Haven deletes none of them:
///
///   1. `haven failback capture --region us` reads them (Postgres: US's orphaned slot,
///      past the remote_lsn EU recorded when it detached; Kafka: US's records past EU's
///      mirror map) and stores them in the repository, create-only and audited.
///   2. `haven failback reconcile` gives each a verdict against EU now (already present,
///      re-appliable, conflict) and what the [failback] policy makes of it (manual by
///      default: review); `--apply` writes the accepted ones to EU, once (Postgres: one
///      transaction per original, marked in haven.reconciled; Kafka: re-produced with a
///      haven-reconciled header naming the original coordinates). Every run stores a
///      Markdown and a JSON report.
///   3. `haven failback reseed --region us`: US's databases emptied and subscribed to
///      EU's again, and US's mirrored topics rebuilt as exact copies of EU's (records
///      that first came from US included, in EU's order; the mirror EU -> US does it and
///      must be running), then `haven switchover --to us` when ready.
///
/// With no subcommand: where the failback stands and the next step.
///
/// Examples:
///   haven failback --repo main
///   haven failback capture --region us --repo main
///   haven failback reconcile --repo main
///   haven failback reconcile --repo main --apply
///   haven failback reseed --region us --repo main
#[derive(Debug, clap::Args)]
#[command(
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub status: StatusArgs,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The old primary's region [default: the region not holding the lease].
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// The repository holding the captures (a name from haven.toml, a URL or a path).
    #[arg(long, env = "HAVEN_REPO", value_name = "NAME|URL")]
    repo: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Read what the old primary wrote that the active region never got, and store it in
    /// the repository (create-only, with an audit entry holding its SHA-256, read back
    /// and checked). Changes nothing on either region; can be run again (each run is a
    /// new capture).
    ///
    /// Refused (exit 2) while REGION still holds the lease, or when the active region's
    /// database has no failover cut recorded. The repository is created if it does not
    /// exist yet.
    Capture(CaptureArgs),
    /// Verdicts for every captured change against the active region now, the policy's
    /// outcome, and with --apply the accepted changes written there exactly once.
    ///
    /// Policies ([failback] in haven.toml): `policy` for everything, `tables` and
    /// `topics` per table ("schema.table") or topic pattern: "manual" (review, the
    /// default), "reapply-if-untouched", "keep-current". A conflict is never applied.
    Reconcile(ReconcileArgs),
    /// Make the old primary's databases exact standbys of the active region's again:
    /// its application roles must be fenced (its agent does it), its orphaned slot is
    /// dropped, the tables the active region publishes are emptied there and subscribed
    /// again with copy_data, and the command waits until every table is synchronised.
    ///
    /// Refused (exit 2) without a verified capture of REGION under the active tenure:
    /// nothing on REGION is deleted before what it wrote is captured. A capture never
    /// applied is allowed (it stays in the repository) and said. Re-running continues.
    /// Then REGION's mirrored topics are rebuilt as exact copies of the active region's
    /// (in its order, at its offsets, records that first came from REGION included) by
    /// the mirror into REGION, which must be running; synced consumer groups follow.
    Reseed(ReseedArgs),
}

#[derive(Debug, clap::Args)]
pub struct ReseedArgs {
    /// The old primary's region.
    #[arg(long, value_name = "REGION")]
    region: String,
    /// How long to wait for each copy (tables synchronised, topics rebuilt), in seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    #[command(flatten)]
    repo: RepoArgs,
}

#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    /// The old primary's region.
    #[arg(long, value_name = "REGION")]
    region: String,
    #[command(flatten)]
    repo: RepoArgs,
}

#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// The capture to reconcile [default: the latest].
    #[arg(long, value_name = "ID")]
    capture: Option<String>,
    /// Write the changes the policies accept to the active region.
    #[arg(long)]
    apply: bool,
    /// Also write the Markdown report to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<std::path::PathBuf>,
    #[command(flatten)]
    repo: RepoArgs,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    match a.command {
        None => status(ctx, a.status).await,
        Some(Command::Capture(c)) => capture(ctx, c).await,
        Some(Command::Reconcile(r)) => reconcile(ctx, r).await,
        Some(Command::Reseed(r)) => reseed(ctx, r).await,
    }
}

async fn status(ctx: &Ctx, a: StatusArgs) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let repo = match &a.repo {
        Some(r) => Some(
            open_repo(
                &cfg,
                &RepoArgs {
                    repo: r.clone(),
                    key_file: None,
                },
                false,
            )
            .await?,
        ),
        None => None,
    };
    let s = failback::status::status(&cfg, repo.as_ref(), a.region.as_deref())
        .await
        .map_err(input)?;
    if ctx.json {
        output::json(&s)?;
        return Ok(0);
    }
    outln!(
        "old primary {}, active {} (epoch {})",
        s.region,
        s.active.as_deref().unwrap_or("none"),
        s.epoch
    );
    if let Some(c) = &s.capture {
        outln!(
            "capture {c}: {} transactions, {} records",
            s.transactions,
            s.records
        );
    }
    if let Some(r) = &s.applied_report {
        outln!("applied: {r}");
    }
    outln!("next: {}", s.next);
    Ok(0)
}

async fn capture(ctx: &Ctx, a: CaptureArgs) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let observer = crate::observer::CliObserver::new(ctx.json);
    let c = failback::capture::capture(&cfg, &a.region, &observer)
        .await
        .map_err(input)?;
    // The capture is kept whatever happens next: the repository is created if needed.
    let repo = open_repo(&cfg, &a.repo, true).await?;
    let key = failback::store(&repo, &c).await?;
    if ctx.json {
        output::json(&serde_json::json!({"object": key, "capture": c}))?;
        return Ok(0);
    }
    print_capture(&c, &key);
    Ok(0)
}

fn print_capture(c: &Capture, key: &str) {
    let s = &c.summary;
    outln!(
        "captured what {} wrote after {} took over (epoch {}): {key}",
        c.region,
        c.active,
        c.epoch
    );
    for d in &c.databases {
        outln!(
            "  {} (cut on {} at remote_lsn {}): {} transactions past the cut{}{}",
            d.database,
            d.peer,
            d.cut.remote_lsn.as_deref().unwrap_or("none"),
            d.divergence.transactions.len(),
            if d.divergence.already_applied > 0 {
                format!(
                    "; {} re-offered by the slot but already applied (the slot moved backwards)",
                    d.divergence.already_applied
                )
            } else {
                String::new()
            },
            if d.divergence.haven_only > 0 {
                format!("; {} of Haven's own left out", d.divergence.haven_only)
            } else {
                String::new()
            }
        );
    }
    for (t, n) in &s.tables {
        outln!("    {t}: {n} row changes");
    }
    for (m, v) in &s.money {
        outln!("    {m}: net {v}");
    }
    for (m, n) in &s.money_unknown {
        outln!("    {m}: {n} changes whose amount could not be read (no whole old row)");
    }
    for k in &c.kafka {
        let records: usize = k.partitions.iter().map(|p| p.records.len()).sum();
        outln!(
            "  mirror {} ({} -> {}): {records} records past what {} holds",
            k.mirror,
            k.source_cluster,
            k.target_cluster,
            k.target_cluster
        );
        for p in k.partitions.iter().filter(|p| !p.records.is_empty()) {
            outln!(
                "    {}/{}: offsets {}..{} ({} records)",
                p.topic,
                p.partition,
                p.mirrored_to,
                p.high,
                p.records.len()
            );
        }
    }
    if let (Some(f), Some(l)) = (s.first_ms, s.last_ms) {
        outln!(
            "  first {}, last {}",
            haven_engine::time::format_ms(f),
            haven_engine::time::format_ms(l)
        );
    }
    outln!("next: `haven failback reconcile` (verdicts, nothing written), then --apply");
}

async fn reconcile(ctx: &Ctx, a: ReconcileArgs) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let id = match a.capture {
        Some(id) => id,
        None => failback::captures(&repo).await?.pop().ok_or_else(|| {
            usage(
                "no capture in this repository: run `haven failback capture --region REGION` first",
            )
        })?,
    };
    let c = failback::load(&repo, &id).await.map_err(|e| match e {
        haven_engine::Error::Storage(haven_storage::StorageError::NotFound { .. }) => usage(
            format!("no capture {id:?} in this repository (`haven failback` lists the latest)"),
        ),
        e => e.into(),
    })?;
    let (r, key) = failback::reconcile::reconcile(&cfg, &repo, &c, a.apply)
        .await
        .map_err(input)?;
    if let Some(path) = &a.report {
        std::fs::write(path, r.markdown())
            .map_err(|e| usage(format!("--report {}: {e}", path.display())))?;
    }
    if ctx.json {
        output::json(&serde_json::json!({"object": key, "report": r}))?;
        return Ok(0);
    }
    print_report(&r, &key);
    Ok(0)
}

fn print_report(r: &ReconcileReport, key: &str) {
    let count = |o: Outcome| r.outcomes.get(&o).copied().unwrap_or(0);
    let verdict = |v: Verdict| r.verdicts.get(&v).copied().unwrap_or(0);
    outln!(
        "{} of {}: {} transactions, {} records",
        if r.apply { "applied" } else { "dry run" },
        r.capture,
        r.transactions.len(),
        r.records.len()
    );
    outln!(
        "  verdicts: {} already present, {} re-appliable, {} conflicts",
        verdict(Verdict::AlreadyPresent),
        verdict(Verdict::Reappliable),
        verdict(Verdict::Conflict)
    );
    outln!(
        "  outcomes: {} applied now, {} applied earlier, {} would apply, {} to review, {} kept current, {} present",
        count(Outcome::Applied),
        count(Outcome::AppliedEarlier),
        count(Outcome::WouldApply),
        count(Outcome::Review),
        count(Outcome::KeptCurrent),
        count(Outcome::Present)
    );
    for t in r
        .transactions
        .iter()
        .filter(|t| t.outcome == Outcome::Review)
    {
        let why = t
            .changes
            .iter()
            .find(|c| c.verdict == t.verdict)
            .map(|c| format!("{} {}: {}", c.table, c.key, c.why))
            .unwrap_or_default();
        outln!("  review: {} xid {} ({why})", t.database, t.xid);
    }
    for rec in r.records.iter().filter(|x| x.outcome == Outcome::Review) {
        outln!(
            "  review: {}/{}@{} ({})",
            rec.topic,
            rec.partition,
            rec.offset,
            rec.why
        );
    }
    outln!("report: {key} (and .md beside it)");
}

async fn reseed(ctx: &Ctx, a: ReseedArgs) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let observer = crate::observer::CliObserver::new(ctx.json);
    let r = failback::reseed::reseed(
        &cfg,
        &repo,
        &a.region,
        std::time::Duration::from_secs(a.timeout_s),
        &observer,
    )
    .await
    .map_err(input)?;
    if ctx.json {
        output::json(&r)?;
        return Ok(0);
    }
    if !r.applied {
        outln!(
            "note: capture {} was never applied: what it holds lives on in the repository only",
            r.capture
        );
    }
    for d in &r.databases {
        outln!(
            "{}: a standby of {} again ({} tables copied{}) in {:.1} s",
            d.database,
            d.peer,
            d.emptied.len(),
            if d.slot_dropped {
                ", orphaned slot dropped"
            } else {
                ""
            },
            d.seconds
        );
    }
    for t in &r.topics {
        let records: i64 = t.partitions.iter().map(|p| p.records).sum();
        outln!(
            "{}: {} rebuilt as exact copies of {}'s ({records} records in {} partitions, by mirror {}) in {:.1} s",
            r.region,
            t.topics.join(", "),
            r.active,
            t.partitions.len(),
            t.mirror,
            t.seconds
        );
    }
    outln!(
        "next: `haven switchover --to {}` when ready (it waits for every write {} took)",
        r.region,
        r.active
    );
    Ok(0)
}
