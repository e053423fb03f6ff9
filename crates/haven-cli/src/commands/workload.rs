//! `haven workload ledger|check`: the reference payment workload on the lab, and its
//! invariants.

use std::path::{Path, PathBuf};
use std::time::Duration;

use haven_lab::control::LabState;
use haven_lab::ledger::check::{self, CheckOptions};
use haven_lab::ledger::workload::{self, WorkloadOptions};

use crate::Ctx;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the ledger: transfers through the write route at a fixed rate, balance reads
    /// in both regions, the outbox relayed to Kafka; every acknowledged transfer logged
    /// outside the regions.
    ///
    /// A transfer debits one account and credits another in one transaction, writes a
    /// ledger entry per side and an outbox row; a relay publishes the outbox to
    /// `ledger.transfers` on the cluster of the region the route leads to. A transfer
    /// that fails is retried with the same id until acknowledged, so the workload follows
    /// a failover, and a retry of a transfer whose commit was lost in transit is
    /// answered `existing` instead of applied twice.
    ///
    /// Written in OUT (default LAB/workload): acks.ndjson (one line per acknowledged
    /// transfer: id, time, latency, outcome, region), latency.ndjson (one line a second)
    /// and summary.json.
    ///
    /// Examples:
    ///   haven workload ledger --lab /tmp/lab --duration-s 60
    ///   haven workload ledger --lab /tmp/lab --rate 600 --duration-s 10 --reads-per-write 0
    #[command(verbatim_doc_comment)]
    Ledger(LedgerArgs),
    /// Check the ledger's invariants (W1-W9) on a region's database and topic; exit 1
    /// naming the first example of each failure.
    ///
    /// W1 money conserved; W2 each transfer's entries sum to zero; W3 no flagged account
    /// negative; W4 no transfer id twice (Postgres, topic); W5 Postgres and the topic hold
    /// the same transfers; W6 each account's entries numbered without a gap; W7 the topic
    /// folded into balances equals the database; W8 a retried transfer creates nothing
    /// (one acknowledged transfer is submitted again through the write route); W9 every
    /// transfer acknowledged before the fault minus the RPO target is present. An
    /// invariant that cannot be checked fails the verdict too.
    ///
    /// Examples:
    ///   haven workload check --lab /tmp/lab
    ///   haven workload check --lab /tmp/lab --region eu --fault-at-ms 1764633600000 --rpo-target-s 1
    #[command(verbatim_doc_comment)]
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct LabArgs {
    /// The lab's directory (`haven lab up --dir DIR`).
    #[arg(long, value_name = "DIR")]
    lab: PathBuf,
    /// Where the acknowledgement log and the summary live [default: LAB/workload].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct LedgerArgs {
    #[command(flatten)]
    lab: LabArgs,
    /// Transfers a minute (the seed: 10,000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=600_000))]
    rate: u32,
    /// How long to run (Ctrl-C ends it earlier, cleanly).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    duration_s: u64,
    /// Bytes of each transfer event on Kafka (the seed: 5 KB).
    #[arg(long, default_value_t = 5120)]
    event_bytes: usize,
    /// Balance reads per transfer (the seed: 5), alternately through the route and on
    /// EU's replica.
    #[arg(long, default_value_t = 5)]
    reads_per_write: u32,
    /// Concurrent writer sessions.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    connections: u64,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    lab: LabArgs,
    /// The region to check [default: where the write route leads].
    #[arg(long, value_parser = ["us", "eu"])]
    region: Option<String>,
    /// When the fault happened, in ms since the Unix epoch (W9's cut-off).
    #[arg(long, value_name = "MS")]
    fault_at_ms: Option<i64>,
    /// The RPO target (W9 allows acknowledged transfers this close to the fault to be
    /// missing).
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    rpo_target_s: f64,
    /// Do not submit a transfer again through the route (W8 then counts as unchecked).
    #[arg(long)]
    no_retry_probe: bool,
}

pub async fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<u8> {
    match cmd {
        Command::Ledger(a) => ledger(ctx, a).await,
        Command::Check(a) => check_cmd(ctx, a).await,
    }
}

fn lab_state(dir: &Path) -> anyhow::Result<LabState> {
    LabState::require(dir)
}

fn out_dir(a: &LabArgs) -> PathBuf {
    a.out.clone().unwrap_or_else(|| a.lab.join("workload"))
}

async fn ledger(ctx: &Ctx, a: LedgerArgs) -> anyhow::Result<u8> {
    let lab = lab_state(&a.lab.lab)?;
    let o = WorkloadOptions {
        dir: out_dir(&a.lab),
        rate_per_min: a.rate,
        duration: Duration::from_secs(a.duration_s),
        event_bytes: a.event_bytes,
        reads_per_write: a.reads_per_write,
        connections: a.connections as usize,
        run_id: format!("t{}", chrono::Utc::now().format("%Y%m%d%H%M%S")),
    };
    let json = ctx.json;
    if !json {
        eprintln!(
            "ledger: {} transfers a minute for {} s through {} (acks in {})",
            a.rate,
            a.duration_s,
            lab.endpoints.write_route,
            o.dir.display()
        );
    }
    let stop = super::stop_on_signal();
    let s = workload::run(
        &lab,
        &o,
        stop,
        move |t| {
        if !json {
            eprintln!(
                "  {:>5.0} s  {:>7} acknowledged  {:>4}/s  p50 {:>6.1} ms  p99 {:>6.1} ms  errors {:>3}  via {}",
                t.elapsed_s, t.acknowledged, t.in_second, t.p50_ms, t.p99_ms, t.errors, t.region
            );
        }
    },
        None,
    )
    .await?;
    if json {
        crate::output::json(&s)?;
        return Ok(0);
    }
    outln!(
        "{} transfers acknowledged in {:.1} s ({:.0} a minute): {} applied, {} declined, {} existing on retry; {} given up unanswered",
        s.acknowledged, s.seconds, s.rate_per_min, s.applied, s.declined, s.existing, s.unacknowledged
    );
    outln!(
        "latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {:.1}% under 100 ms; longest gap between acknowledgements {:.0} ms",
        s.latency_p50_ms, s.latency_p99_ms, s.latency_max_ms, s.under_100ms_pct, s.longest_gap_ms
    );
    let regions: Vec<String> = s
        .by_region
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    outln!(
        "answered by: {}; retries {}; reads {} (errors {}, p99 {:.1} ms); relayed to Kafka {} (errors {})",
        regions.join(", "),
        s.retries,
        s.reads,
        s.read_errors,
        s.read_p99_ms,
        s.relayed,
        s.relay_errors
    );
    outln!("next: haven workload check --lab {}", a.lab.lab.display());
    Ok(0)
}

async fn check_cmd(ctx: &Ctx, a: CheckArgs) -> anyhow::Result<u8> {
    let lab = lab_state(&a.lab.lab)?;
    let o = CheckOptions {
        dir: out_dir(&a.lab),
        region: a.region,
        fault_at_ms: a.fault_at_ms,
        rpo_target_s: a.rpo_target_s,
        retry_probe: !a.no_retry_probe,
    };
    let r = check::check(&lab, &o).await?;
    let code = if r.passed { 0 } else { 1 };
    if ctx.json {
        crate::output::json(&r)?;
        return Ok(code);
    }
    outln!(
        "ledger in {}: {} transfers, {} events on the topic, {} acknowledged, {} of them missing ({:.2} s of acknowledged writes)",
        r.region, r.transfers, r.topic_records, r.acknowledged, r.lost, r.lost_seconds
    );
    for i in &r.invariants {
        let verdict = match i.ok {
            Some(true) => "ok",
            Some(false) => "FAIL",
            None => "NOT CHECKED",
        };
        outln!("  {} {:<11} {}: {}", i.id, verdict, i.name, i.detail);
        if let Some(x) = &i.first_example {
            outln!("      first example: {x}");
        }
    }
    outln!("verdict: {}", if r.passed { "PASS" } else { "FAIL" });
    Ok(code)
}
