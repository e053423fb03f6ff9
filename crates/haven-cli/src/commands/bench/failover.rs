//! `haven bench failover`: an automatic failover's RTO, phase by phase, and a
//! switchover's unavailability, in the two-region lab under the seed's load.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use haven_engine::config::Config;
use haven_engine::events::LogObserver;
use haven_engine::failover::plan::{Kind, Phase};
use haven_engine::failover::run::{self, Timeline};
use haven_lab::{Lab, LabOptions, Load, Seen, Traffic};
use serde::Serialize;
use serde_json::json;

use super::{print, Ratio};
use crate::Ctx;

/// RTO of an automatic failover, phase by phase, and a switchover's unavailability.
///
/// Each run starts the two-region lab (3 etcd members, two Postgres clusters with logical
/// replication, HAProxy, Knot DNS, an agent per region; see `haven-lab`) three times:
///
/// 1. automatic mode, the application writing through the write route at --rate
///    transactions a minute of --payload-bytes (the seed's 10,000 of 5 KB); after
///    --warmup-s the US region goes down (its agent killed -9, its Postgres stopped
///    immediately). Measured: detection (until the lease is gone from etcd), decision
///    (until EU's agent starts the plan), fencing, catch-up, promotion and routing (the
///    plan's steps), the application's first write acknowledged by EU (RTO), and the
///    acknowledged writes EU does not hold (what an unplanned failover loses);
/// 2. the same failover with no load: the baseline of the ratio;
/// 3. manual mode under the same load, `switchover --to eu` (the engine's plan, as the
///    CLI runs it): the longest gap between two acknowledged writes (writes refused) and
///    the acknowledged writes EU does not hold (must be 0);
/// 4. the same switchover with no load (a write every 200 ms): its baseline.
///
/// A sampler checks every 100 ms throughout that at most one region accepts writes; a
/// violation fails the bench. Targets (issue #11): RTO median <= 30 s and worst <= 60 s;
/// switchover: 0 acknowledged writes lost, writes refused <= 10 s.
///
/// Examples:
///   haven bench failover
///   haven --json bench failover --runs 5 --lease-ttl-s 5
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Runs (each: a failover and a switchover, each loaded and idle: four labs).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: u32,
    /// Application transactions a minute through the write route.
    #[arg(long, default_value_t = 10_000)]
    rate: u32,
    /// Payload bytes of each transaction's row.
    #[arg(long, default_value_t = 5120)]
    payload_bytes: usize,
    /// The lab's `[coordination] lease_ttl_s` (the floor of detection).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=120))]
    lease_ttl_s: u64,
    /// The lab's `[failover] failed_checks`.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=20))]
    failed_checks: u32,
    /// Seconds of load before the fault or the switchover.
    #[arg(long, default_value_t = 10)]
    warmup_s: u64,
}

/// One automatic failover, measured.
#[derive(Debug, Serialize)]
struct FailoverRun {
    loaded: bool,
    detection_ms: i64,
    decision_ms: i64,
    phases: std::collections::BTreeMap<Phase, u64>,
    /// From the plan's last step to the application's first write acknowledged by EU.
    reconnect_ms: i64,
    /// From the fault to the first write acknowledged by EU.
    rto_ms: i64,
    acked: usize,
    /// Acknowledged writes EU does not hold.
    lost: usize,
    violations: Vec<String>,
}

#[derive(Debug, Serialize)]
struct SwitchoverRun {
    loaded: bool,
    /// The longest gap between two acknowledged writes around the switchover.
    refused_ms: i64,
    plan_ms: u64,
    phases: std::collections::BTreeMap<Phase, u64>,
    acked: usize,
    lost: usize,
    violations: Vec<String>,
}

fn wall_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Converts the lab's Instants to wall-clock ms (plans record wall-clock times).
#[derive(Clone, Copy)]
struct Clock(Instant, i64);

impl Clock {
    fn now() -> Clock {
        Clock(Instant::now(), wall_ms(SystemTime::now()))
    }
    fn ms(&self, t: Instant) -> i64 {
        if t >= self.0 {
            self.1 + (t - self.0).as_millis() as i64
        } else {
            self.1 - (self.0 - t).as_millis() as i64
        }
    }
}

fn lab_options(a: &Args, mode: &str) -> anyhow::Result<LabOptions> {
    let mut o = LabOptions::new(std::env::current_exe().context("the haven binary")?);
    o.mode = mode.into();
    o.lease_ttl_s = a.lease_ttl_s;
    o.failed_checks = a.failed_checks;
    Ok(o)
}

async fn start_lab(o: LabOptions) -> anyhow::Result<Lab> {
    tokio::task::spawn_blocking(move || {
        let lab = Lab::start(&o)?;
        lab.wait_us_active(Duration::from_secs(60))?;
        anyhow::Ok(lab)
    })
    .await?
}

fn load(a: &Args) -> Load {
    Load {
        per_second: Some(a.rate as f64 / 60.0),
        payload_bytes: a.payload_bytes,
    }
}

/// The acknowledged writes `eu` does not hold.
async fn lost_on_eu(lab: &Lab, seen: &Seen) -> anyhow::Result<usize> {
    let url = lab.eu.url("postgres");
    let owners: std::collections::HashSet<String> = tokio::task::spawn_blocking(move || {
        haven_lab::rt().block_on(async {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let rows = c
                .query("SELECT owner FROM accounts WHERE owner LIKE 'w%'", &[])
                .await?;
            anyhow::Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
        })
    })
    .await??;
    Ok(seen
        .acked
        .iter()
        .filter(|(o, _, _)| !owners.contains(o))
        .count())
}

async fn failover_run(a: &Args, loaded: bool) -> anyhow::Result<FailoverRun> {
    let lab = start_lab(lab_options(a, "automatic")?).await?;
    let cfg = Config::load(Some(std::path::Path::new(&lab.cfg)))?.0;
    let traffic = Traffic::start(&lab, Some(if loaded { load(a) } else { slow() }));
    tokio::time::sleep(Duration::from_secs(a.warmup_s)).await;
    let clock = Clock::now();
    // US goes down: its agent killed -9 and its database stopped at once.
    let us_pid = lab.agents[0].2.id();
    let _ = std::process::Command::new("kill")
        .args(["-9", &us_pid.to_string()])
        .status();
    lab.us.stop()?;
    let killed = Instant::now();
    // Detection: until the quorum no longer names a holder.
    let mut coord = haven_engine::failover::coordinator(&cfg).await?;
    let gone = loop {
        if let Ok(None) = coord.holder().await {
            break Instant::now();
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(a.lease_ttl_s * 3 + 30),
            "the US lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let eu_port = lab.eu.port();
    let plan = run::plan_path(&lab.state_dir("eu"), Kind::Failover, "eu");
    let finished = |t: &Timeline| t.done_ms.is_some() && t.phases.contains_key(&Phase::Routing);
    let timeline = loop {
        if let Ok((p, t)) = run::load_timeline(&plan) {
            let progress = haven_engine::executor::Progress::load(
                &haven_engine::executor::progress_path(&plan),
            )?;
            if finished(&t) && progress.done.len() == p.steps.len() {
                break t;
            }
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(a.lease_ttl_s * 3 + 90),
            "EU's agent did not finish a failover (see {})",
            lab.state_dir("eu").with_extension("log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Let the application reconnect and write through EU.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = tokio::task::spawn_blocking(move || traffic.stop()).await??;
    let first_eu = seen
        .acked
        .iter()
        .find(|(_, t, by)| *by == eu_port && *t > killed)
        .map(|(_, t, _)| *t)
        .context("the application never wrote through EU after the failover")?;
    let lost = lost_on_eu(&lab, &seen).await?;
    let started = timeline.started_ms.unwrap_or(0);
    let done = timeline.done_ms.unwrap_or(0);
    Ok(FailoverRun {
        loaded,
        detection_ms: clock.ms(gone) - clock.ms(killed),
        decision_ms: started - clock.ms(gone),
        phases: timeline.phases,
        reconnect_ms: clock.ms(first_eu) - done,
        rto_ms: clock.ms(first_eu) - clock.ms(killed),
        acked: seen.acked.len(),
        lost,
        violations: seen.violations,
    })
}

/// The baseline's application: a write every 200 ms without payload (it shows when EU
/// takes writes, and adds no load).
fn slow() -> Load {
    Load {
        per_second: Some(5.0),
        payload_bytes: 0,
    }
}

async fn switchover_run(a: &Args, loaded: bool) -> anyhow::Result<SwitchoverRun> {
    let lab = start_lab(lab_options(a, "manual")?).await?;
    let cfg = Config::load(Some(std::path::Path::new(&lab.cfg)))?.0;
    let traffic = Traffic::start(&lab, Some(if loaded { load(a) } else { slow() }));
    tokio::time::sleep(Duration::from_secs(a.warmup_s)).await;
    let state: PathBuf = lab.dir.path().join("cli-state");
    let begun = Instant::now();
    let prepared = run::prepare(&cfg, Kind::Switchover, "eu", false, &state).await?;
    let report = run::execute(&cfg, &prepared, "bench", &LogObserver).await?;
    let ended = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = tokio::task::spawn_blocking(move || traffic.stop()).await??;
    // The longest gap between acknowledged writes from just before the switchover began
    // to the first write after it ended.
    let mut refused = Duration::ZERO;
    for w in seen.acked.windows(2) {
        let (t0, t1) = (w[0].1, w[1].1);
        if t1 >= begun && t0 <= ended {
            refused = refused.max(t1 - t0);
        }
    }
    let lost = lost_on_eu(&lab, &seen).await?;
    Ok(SwitchoverRun {
        loaded,
        refused_ms: refused.as_millis() as i64,
        plan_ms: report.elapsed_ms,
        phases: report.timeline.phases,
        acked: seen.acked.len(),
        lost,
        violations: seen.violations,
    })
}

fn median(mut v: Vec<i64>) -> f64 {
    v.sort_unstable();
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2] as f64,
        n => (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0,
    }
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let mut loaded = Vec::new();
    let mut idle = Vec::new();
    let mut switchovers = Vec::new();
    let mut idle_switchovers = Vec::new();
    for i in 1..=a.runs {
        eprintln!("run {i}/{}: automatic failover under load", a.runs);
        loaded.push(failover_run(&a, true).await?);
        eprintln!("run {i}/{}: automatic failover, no load (baseline)", a.runs);
        idle.push(failover_run(&a, false).await?);
        eprintln!("run {i}/{}: switchover under load", a.runs);
        switchovers.push(switchover_run(&a, true).await?);
        eprintln!("run {i}/{}: switchover, no load (baseline)", a.runs);
        idle_switchovers.push(switchover_run(&a, false).await?);
    }
    let s = |ms: f64| ms / 1000.0;
    let rto: Vec<i64> = loaded.iter().map(|r| r.rto_ms).collect();
    let rto_med = s(median(rto.clone()));
    let rto_max = s(rto.iter().copied().max().unwrap_or(0) as f64);
    let idle_rto: Vec<i64> = idle.iter().map(|r| r.rto_ms).collect();
    let idle_med = s(median(idle_rto.clone()));
    let idle_max = s(idle_rto.iter().copied().max().unwrap_or(0) as f64);
    let refused: Vec<i64> = switchovers.iter().map(|r| r.refused_ms).collect();
    let refused_max = s(refused.iter().copied().max().unwrap_or(0) as f64);
    let refused_med = s(median(refused));
    let idle_refused: Vec<i64> = idle_switchovers.iter().map(|r| r.refused_ms).collect();
    let idle_refused_max = s(idle_refused.iter().copied().max().unwrap_or(0) as f64);
    let idle_refused_med = s(median(idle_refused));
    let lost_switchover: usize = switchovers
        .iter()
        .chain(&idle_switchovers)
        .map(|r| r.lost)
        .sum();
    let violations: Vec<&String> = loaded
        .iter()
        .flat_map(|r| &r.violations)
        .chain(idle.iter().flat_map(|r| &r.violations))
        .chain(switchovers.iter().flat_map(|r| &r.violations))
        .chain(idle_switchovers.iter().flat_map(|r| &r.violations))
        .collect();
    let ratios = vec![
        Ratio::new(
            "failover RTO, median (loaded vs idle)",
            rto_med,
            idle_med,
            "s",
            "<= 30 s",
            |_| rto_med <= 30.0,
        ),
        Ratio::new(
            "failover RTO, worst (loaded vs idle)",
            rto_max,
            idle_max,
            "s",
            "<= 60 s",
            |_| rto_max <= 60.0,
        ),
        Ratio::new(
            "switchover: writes refused, median (loaded vs idle)",
            refused_med,
            idle_refused_med,
            "s",
            "<= 10 s",
            |_| refused_med <= 10.0,
        ),
        Ratio::new(
            "switchover: writes refused, worst (loaded vs idle)",
            refused_max,
            idle_refused_max,
            "s",
            "<= 10 s",
            |_| refused_max <= 10.0,
        ),
    ];
    let phase_medians: serde_json::Map<String, serde_json::Value> = [
        Phase::Fencing,
        Phase::CatchUp,
        Phase::Promotion,
        Phase::Routing,
    ]
    .iter()
    .map(|p| {
        let v: Vec<i64> = loaded
            .iter()
            .map(|r| r.phases.get(p).copied().unwrap_or(0) as i64)
            .collect();
        (p.as_str().to_string(), json!(median(v)))
    })
    .collect();
    let details = json!({
        "load": {"per_minute": a.rate, "payload_bytes": a.payload_bytes,
                 "lease_ttl_s": a.lease_ttl_s, "failed_checks": a.failed_checks},
        "failover_median_ms": {
            "detection": median(loaded.iter().map(|r| r.detection_ms).collect()),
            "decision": median(loaded.iter().map(|r| r.decision_ms).collect()),
            "phases": phase_medians,
            "reconnect": median(loaded.iter().map(|r| r.reconnect_ms).collect()),
            "rto": median(loaded.iter().map(|r| r.rto_ms).collect()),
        },
        // Asynchronous replication: what an unplanned failover lost (acknowledged on US,
        // never applied on EU), and how much writing that is at the load's rate.
        "failover_lost_median": median(loaded.iter().map(|r| r.lost as i64).collect()),
        "failover_lost_median_s": median(loaded.iter().map(|r| r.lost as i64).collect())
            / (a.rate as f64 / 60.0),
        "switchover_lost": lost_switchover,
        "violations": violations,
        "runs": {
            "failover": loaded,
            "failover_idle": idle,
            "switchover": switchovers,
            "switchover_idle": idle_switchovers,
        },
    });
    print(ctx, "failover (two-region lab)", &ratios, details)?;
    let met = ratios.iter().all(|r| r.met) && lost_switchover == 0 && violations.is_empty();
    if !met && !ctx.json {
        eprintln!(
            "not met: see the table; switchover lost {lost_switchover} acknowledged writes; \
             {} moments with more than one writable region",
            violations.len()
        );
    }
    Ok(if met { 0 } else { 1 })
}
