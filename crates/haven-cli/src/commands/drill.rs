//! `haven drill run|history`: DR drills on the lab, and their evidence.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use haven_engine::drill::{DrillReport, Verdict};
use haven_lab::drill::{self, DrillOptions, Scenario};

use crate::Ctx;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run a drill on the lab under the ledger workload, with objectives fixed before the
    /// start; write its evidence (JSON and a self-contained HTML page) to LAB/drills/.
    ///
    /// Scenarios:
    ///   region-outage  US lost at once (agent and broker killed -9, Postgres crashed);
    ///                  EU's agent fails over automatically
    ///   switchover     a planned switchover to EU under load, then back to US (0 lost)
    ///   partition      US cut off from EU and the etcd quorum: US fences itself, EU
    ///                  takes over, never two writable regions; then the links heal
    ///   pg-crash       US's Postgres primary crashes and is started again after
    ///                  --down-s: US stays active, nothing acknowledged is lost
    ///   broker-crash   US's broker is killed -9 and started again after --down-s:
    ///                  transfers go on (events wait in the outbox), none lost
    ///   object-store-outage
    ///                  US's object store is killed -9 for --down-s: its backup holds
    ///                  on, its RPO alarm fires, and afterwards the backup holds every
    ///                  record (restored into a segregated cluster, compared one by one)
    ///   corrupted-backup
    ///                  one segment of US's backup damaged at rest: verify names it, a
    ///                  restore refuses it, --skip-damaged works around it, repaired
    ///   segregated-restore
    ///                  US's backup restored into a cluster of the drill's own under
    ///                  load, reconciled record by record and against the database
    ///   failback       a region outage, then with EU taking the load: US back fenced,
    ///                  captured (every transfer EU lost must be in it), reconciled by
    ///                  the [failback] policies, re-seeded from EU (databases, topics
    ///                  rebuilt), and switched back to US; both regions' topics then
    ///                  hold the same records in the same order
    ///   earlier-database
    ///                  the database of the ledger's downstream service (balances, group
    ///                  ledger-balances) restored to a point --down-s earlier: the lost
    ///                  transfers are seen, `haven recover` rewinds the group from US's
    ///                  backup, the service reads again, and its database must equal
    ///                  its events (each applied once, every balance equal)
    ///
    /// Measured: RTO (the fault to the first transfer EU acknowledges; for the backup
    /// drills, the fault to the backup caught up or the restore reconciled), RPO (acknowledged
    /// transfers missing afterwards, in count and seconds), samples every 100 ms of
    /// whether both regions take writes, and the ledger's invariants W1-W9. The verdict
    /// is PASS only when every objective is met and everything was measured. Exit 0 on
    /// PASS, 1 on FAIL. Ctrl-C stops the load, heals the lab and reports FAIL.
    ///
    /// The lab must have US active and EU standby: after a region-outage or a partition
    /// drill EU stays active; start a fresh lab for the next one (after any other drill,
    /// failback included, US is active again). The backup drills need the lab's backups (not --no-backups).
    ///
    /// Examples:
    ///   haven drill run region-outage --lab /tmp/lab
    ///   haven drill run switchover --lab /tmp/lab --rate 3000 --report switchover.html
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
    /// Past drills in the lab with their verdicts.
    History(HistoryArgs),
    /// The scheduled restore tests of haven.toml (`[drills.NAME]`): when each last ran,
    /// its verdict, and when it is next due; with --run NAME, run one now.
    ///
    /// A restore test is the non-disruptive drill the agents run on their own: the
    /// repository's backup restored into a segregated cluster (never a region's; the
    /// config is refused otherwise), every chunk checked before anything is written, and
    /// the restored records reconciled with the source cluster record by record. Its
    /// report is stored in the repository like any drill's evidence. Exit 0 on PASS, 1
    /// on FAIL.
    ///
    ///   [drills.nightly]
    ///   region = "us"             # whose agent runs it
    ///   repository = "main"
    ///   source = "us"             # the cluster backed up
    ///   target = "restore-test"   # a segregated cluster of [clusters]
    ///   topics = "payments\\..*"
    ///   every_s = 86400
    ///
    /// Examples:
    ///   haven drill schedule
    ///   haven drill schedule --run nightly --json
    #[command(verbatim_doc_comment)]
    Schedule(ScheduleArgs),
}

#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    /// Run this restore test now (a name of [drills]).
    #[arg(long, value_name = "NAME")]
    run: Option<String>,
    /// Who runs it (in the evidence) [default: the login].
    #[arg(long)]
    operator: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// region-outage, switchover, partition, pg-crash, broker-crash, object-store-outage,
    /// corrupted-backup, segregated-restore, failback or earlier-database.
    #[arg(value_name = "SCENARIO")]
    scenario: String,
    /// The lab's directory (`haven lab up --dir DIR`).
    #[arg(long, value_name = "DIR")]
    lab: PathBuf,
    /// Seconds of load before the fault.
    #[arg(long, default_value_t = 10)]
    warmup_s: u64,
    /// Seconds of load after the new region took its first transfer.
    #[arg(long, default_value_t = 10)]
    after_s: u64,
    /// How long a partition lasts (it must outlast the lease for EU to take over).
    #[arg(long, default_value_t = 15)]
    partition_s: u64,
    /// How long a crashed server stays down before it is started again (pg-crash,
    /// broker-crash, object-store-outage).
    #[arg(long, default_value_t = 5)]
    down_s: u64,
    /// Transfers a minute (the seed: 10,000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=600_000))]
    rate: u32,
    /// Bytes of each transfer event (the seed: 5 KB).
    #[arg(long, default_value_t = 5120)]
    event_bytes: usize,
    /// Balance reads per transfer.
    #[arg(long, default_value_t = 5)]
    reads_per_write: u32,
    /// RTO objective in seconds.
    #[arg(long, default_value_t = 60.0)]
    rto_s: f64,
    /// RPO objective in seconds of acknowledged transfers [default: 1; a partition:
    /// the self-fencing window, 0.7 x the lease TTL + 0.5 s].
    #[arg(long)]
    rpo_s: Option<f64>,
    /// Who runs the drill (in the evidence) [default: the login].
    #[arg(long)]
    operator: Option<String>,
    /// Also copy the HTML report (or the JSON one, for a .json name) to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// The repository (a name in the lab's haven.toml, or a URL) the evidence is stored
    /// in, create-only, with an audit entry holding its SHA-256.
    #[arg(long, default_value = "lab", value_name = "NAME|URL")]
    repo: String,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The lab's directory.
    #[arg(long, value_name = "DIR")]
    lab: PathBuf,
    /// The repository holding the evidence (each report checked against its audit entry).
    #[arg(long, default_value = "lab", value_name = "NAME|URL")]
    repo: String,
}

/// The lab's repository (or `repo`), created if needed.
async fn evidence_repo(
    lab: &std::path::Path,
    repo: &str,
    create: bool,
) -> anyhow::Result<haven_engine::repo::Repository> {
    let state = haven_lab::control::LabState::require(lab)?;
    let (cfg, _) = haven_engine::config::Config::load(Some(&state.config))?;
    let args = super::RepoArgs {
        repo: repo.to_string(),
        key_file: None,
    };
    super::open_repo(&cfg, &args, create).await
}

pub async fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<u8> {
    match cmd {
        Command::Run(a) => run_drill(ctx, a).await,
        Command::Schedule(a) => schedule(ctx, a).await,
        Command::History(a) => history(ctx, a).await,
    }
}

async fn run_drill(ctx: &Ctx, a: RunArgs) -> anyhow::Result<u8> {
    let scenario = Scenario::parse(&a.scenario).map_err(|e| super::usage(e.to_string()))?;
    let lab = haven_lab::control::LabState::require(&a.lab)?;
    let mut objectives = scenario.objectives(lab.lease_ttl_s);
    objectives.rto_s = a.rto_s;
    if let Some(rpo) = a.rpo_s {
        objectives.rpo_s = rpo;
    }
    let o = DrillOptions {
        lab_dir: a.lab.clone(),
        scenario,
        objectives,
        haven: std::env::current_exe().context("the haven binary")?,
        warmup: Duration::from_secs(a.warmup_s),
        after: Duration::from_secs(a.after_s),
        partition: Duration::from_secs(a.partition_s),
        down: Duration::from_secs(a.down_s),
        rate_per_min: a.rate,
        event_bytes: a.event_bytes,
        reads_per_write: a.reads_per_write,
        operator: a.operator.clone().unwrap_or_else(drill::default_operator),
    };
    let json = ctx.json;
    let stop = super::stop_on_signal();
    let r = drill::run(&o, stop, move |line: &str| {
        if !json {
            eprintln!("drill: {line}");
        }
    })
    .await?;
    let base = drill::drills_dir(&a.lab).join(&r.id);
    let repo = evidence_repo(&a.lab, &a.repo, true).await?;
    let audit_key = haven_engine::drill::store(&repo, &r)
        .await
        .with_context(|| format!("store the drill's evidence in repository {}", a.repo))?;
    if let Some(dest) = &a.report {
        let ext = if dest.extension().and_then(|e| e.to_str()) == Some("json") {
            "json"
        } else {
            "html"
        };
        std::fs::copy(base.with_extension(ext), dest)
            .with_context(|| format!("copy the report to {}", dest.display()))?;
    }
    let code = if r.verdict == Verdict::Pass { 0 } else { 1 };
    let (cfg, _) = haven_engine::config::Config::load(Some(&lab.config))?;
    let notifier =
        haven_engine::notify::Notifier::start(&cfg.notify, &format!("drill@{}", super::hostname()));
    notifier.send(haven_engine::notify::drill_notice(&r));
    if !notifier.flush(Duration::from_secs(30)).await {
        eprintln!("drill: the verdict could not be sent to every [notify] receiver within 30 s");
    }
    if json {
        crate::output::json(&r)?;
        return Ok(code);
    }
    print_report(&r);
    outln!(
        "evidence: {} and {}, stored in repository {} ({}, audit entry {audit_key})",
        base.with_extension("json").display(),
        base.with_extension("html").display(),
        a.repo,
        haven_engine::drill::evidence_key(&r.id, "json")
    );
    Ok(code)
}

fn print_report(r: &DrillReport) {
    let m = &r.measured;
    let v = if r.verdict == Verdict::Pass {
        "PASS"
    } else {
        "FAIL"
    };
    outln!("drill {} ({}): {v}", r.id, r.scenario);
    outln!(
        "  RTO {} (objective <= {:.0} s)",
        m.rto_s
            .map(|x| format!("{x:.2} s"))
            .unwrap_or("not measured".into()),
        r.objectives.rto_s
    );
    if !r.objectives.workload {
        outln!("  (no workload: RPO and two writable regions are not in its scope)");
    }
    if r.objectives.workload {
        outln!(
            "  RPO {} (objective <= {:.1} s{})",
            match (m.lost_seconds, m.lost) {
                (Some(s), Some(n)) => format!("{s:.2} s, {n} acknowledged transfers lost"),
                _ => "not measured".into(),
            },
            r.objectives.rpo_s,
            r.objectives
                .max_lost
                .map(|x| format!(", at most {x} lost"))
                .unwrap_or_default()
        );
        outln!(
        "  two writable regions: {} of {} samples; {} transfers acknowledged, p99 {:.1} ms; active {} -> {}",
        m.two_writable.map(|n| n.to_string()).unwrap_or("not sampled".into()),
        m.samples,
        m.acknowledged,
        m.latency_p99_ms,
        m.active_before.as_deref().unwrap_or("?"),
        m.active_after.as_deref().unwrap_or("?")
    );
    }
    for p in &m.latency {
        outln!(
            "  latency {}: {} transfers, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {:.1}% under 100 ms",
            p.phase,
            p.transfers,
            p.p50_ms,
            p.p99_ms,
            p.max_ms,
            p.under_100ms_pct
        );
    }
    for i in &r.invariants {
        let mark = match i.ok {
            Some(true) => "ok",
            Some(false) => "FAIL",
            None => "NOT CHECKED",
        };
        outln!("  {} {mark}: {}", i.id, i.detail);
    }
    for f in &r.failures {
        outln!("  missed: {f}");
    }
    for n in &r.not_measured {
        outln!("  not measured: {n}");
    }
}

async fn history(ctx: &Ctx, a: HistoryArgs) -> anyhow::Result<u8> {
    let repo = evidence_repo(&a.lab, &a.repo, false).await?;
    let all = haven_engine::drill::stored(&repo).await?;
    if ctx.json {
        crate::output::json(&all)?;
        return Ok(0);
    }
    if all.is_empty() {
        outln!("no drill has run in {}", a.lab.display());
        return Ok(0);
    }
    outln!(
        "{:<40} {:<14} {:<7} {:>8} {:>12}",
        "DRILL",
        "SCENARIO",
        "VERDICT",
        "RTO-S",
        "LOST"
    );
    for r in &all {
        outln!(
            "{:<40} {:<14} {:<7} {:>8} {:>12}",
            r.id,
            r.scenario,
            if r.verdict == Verdict::Pass {
                "PASS"
            } else {
                "FAIL"
            },
            r.measured
                .rto_s
                .map(|x| format!("{x:.1}"))
                .unwrap_or("-".into()),
            r.measured.lost.map(|n| n.to_string()).unwrap_or("-".into())
        );
    }
    Ok(0)
}

async fn schedule(ctx: &Ctx, a: ScheduleArgs) -> anyhow::Result<u8> {
    use haven_engine::drill::schedule;
    let cfg = super::load_config(ctx)?;
    if let Some(name) = &a.run {
        let Some(s) = cfg.drills.get(name) else {
            let known: Vec<&str> = cfg.drills.keys().map(String::as_str).collect();
            return Err(super::usage(format!(
                "no restore test {name:?} in [drills]; the config has: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        let operator = a.operator.clone().unwrap_or_else(drill::default_operator);
        let observer = crate::observer::CliObserver::new(ctx.json);
        let r = schedule::run(&cfg, name, s, &operator, &observer).await;
        observer.finish();
        let r = r?;
        if ctx.json {
            crate::output::json(&r)?;
        } else {
            print_report(&r);
        }
        return Ok(if r.verdict == Verdict::Pass { 0 } else { 1 });
    }
    let all = schedule::due(&cfg, None).await?;
    if ctx.json {
        let v: Vec<serde_json::Value> = all
            .iter()
            .map(|(name, (last, next))| {
                serde_json::json!({
                    "name": name,
                    "section": cfg.drills.get(name),
                    "last": last.as_ref().map(|r| serde_json::json!({
                        "id": r.id, "started_at": r.started_at, "verdict": r.verdict,
                        "rto_s": r.measured.rto_s,
                    })),
                    "next_due": next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                })
            })
            .collect();
        crate::output::json(&v)?;
        return Ok(0);
    }
    if all.is_empty() {
        outln!("no restore test is scheduled: add a [drills.NAME] section (see --help)");
        return Ok(0);
    }
    outln!(
        "{:<16} {:<8} {:<22} {:<7} {:<22}",
        "NAME",
        "REGION",
        "LAST RUN",
        "VERDICT",
        "NEXT DUE"
    );
    for (name, (last, next)) in &all {
        let region = cfg
            .drills
            .get(name)
            .map(|s| s.region.as_str())
            .unwrap_or("-");
        outln!(
            "{:<16} {:<8} {:<22} {:<7} {:<22}",
            name,
            region,
            last.as_ref()
                .map(|r| r.started_at.as_str())
                .unwrap_or("never"),
            last.as_ref()
                .map(|r| if r.verdict == Verdict::Pass {
                    "PASS"
                } else {
                    "FAIL"
                })
                .unwrap_or("-"),
            if *next <= chrono::Utc::now() {
                "now".to_string()
            } else {
                next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            }
        );
    }
    Ok(0)
}
