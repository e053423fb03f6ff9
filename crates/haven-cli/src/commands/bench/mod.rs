//! `haven bench`: Haven's performance, always as a ratio against a baseline measured in the
//! same run on the same data (see README, "Benchmarks").

mod backup;
mod dashboard;
mod data;
mod drill;
mod erasure;
mod failover;
mod format;
mod mirror;
mod restore;
mod rpo;

use serde::Serialize;

use crate::{output, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Segment encode/decode throughput against raw zstd on the same bytes.
    Format(format::Args),
    /// `haven backup --once` of a topic against a plain rdkafka consumer draining it.
    Backup(backup::Args),
    /// Delay from produce to durable-in-repository under a steady load.
    Rpo(rpo::Args),
    /// `haven restore` against a plain rdkafka producer writing the same records.
    Restore(restore::Args),
    /// `haven mirror --once` across an 80 ms link against a consume-then-produce loop.
    Mirror(mirror::Args),
    /// Produce-to-target delay of a continuous mirror across an 80 ms link.
    MirrorLag(mirror::LagArgs),
    /// An automatic failover's RTO phase by phase, and a switchover's unavailability, in
    /// the two-region lab under the seed's load.
    Failover(failover::Args),
    /// The drills (region outage, switchover, partition) at the seed's load, each on a
    /// fresh lab, against the same drill under a light load.
    Drill(drill::Args),
    /// Backup with every record sealed per customer (crypto-shredding) against the same
    /// backup without erasure rules.
    Erasure(erasure::Args),
    /// Backup and mirror with `haven serve` watching them and a dashboard polling every
    /// second, against the same jobs alone.
    Dashboard(dashboard::Args),
}

/// One measured quantity and its baseline.
#[derive(Debug, Serialize)]
pub struct Ratio {
    pub what: String,
    pub haven: f64,
    pub baseline: f64,
    pub unit: String,
    /// haven / baseline
    pub ratio: f64,
    /// The target the issue sets, as text (for example "<= 1.1").
    pub target: String,
    pub met: bool,
}

impl Ratio {
    pub fn new(
        what: &str,
        haven: f64,
        baseline: f64,
        unit: &str,
        target: &str,
        met: impl Fn(f64) -> bool,
    ) -> Self {
        let ratio = if baseline > 0.0 {
            haven / baseline
        } else {
            f64::NAN
        };
        Ratio {
            what: what.into(),
            haven,
            baseline,
            unit: unit.into(),
            ratio,
            target: target.into(),
            met: met(ratio),
        }
    }
}

pub fn print(
    ctx: &Ctx,
    title: &str,
    ratios: &[Ratio],
    extra: serde_json::Value,
) -> anyhow::Result<()> {
    if ctx.json {
        return output::json(
            &serde_json::json!({"bench": title, "results": ratios, "details": extra}),
        );
    }
    outln!("{title}");
    let rows: Vec<Vec<String>> = ratios
        .iter()
        .map(|r| {
            vec![
                r.what.clone(),
                format!("{:.2} {}", r.haven, r.unit),
                format!("{:.2} {}", r.baseline, r.unit),
                format!("{:.3}", r.ratio),
                r.target.clone(),
                if r.met { "yes".into() } else { "NO".into() },
            ]
        })
        .collect();
    output::table(
        &["MEASURE", "HAVEN", "BASELINE", "RATIO", "TARGET", "MET"],
        &rows,
    );
    if !extra.is_null() {
        outln!("{}", serde_json::to_string_pretty(&extra)?);
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<u8> {
    match cmd {
        Command::Format(a) => format::run(ctx, a),
        Command::Backup(a) => backup::run(ctx, a).await,
        Command::Rpo(a) => rpo::run(ctx, a).await,
        Command::Restore(a) => restore::run(ctx, a).await,
        Command::Mirror(a) => mirror::throughput(ctx, a).await,
        Command::MirrorLag(a) => mirror::lag(ctx, a).await,
        Command::Failover(a) => failover::run(ctx, a).await,
        Command::Drill(a) => drill::run(ctx, a).await,
        Command::Dashboard(a) => dashboard::run(ctx, a).await,
        Command::Erasure(a) => erasure::run(ctx, a).await,
    }
}

/// The value at quantile `p` (0..=1) of sorted values (0 when there are none).
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// CPU seconds (user + system) used so far by this process or by its waited-for children.
pub fn cpu_seconds(children: bool) -> f64 {
    let who = if children {
        libc::RUSAGE_CHILDREN
    } else {
        libc::RUSAGE_SELF
    };
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}
