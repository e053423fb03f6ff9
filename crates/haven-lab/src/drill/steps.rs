//! The steps a drill is made of: injecting a fault, a switchover, waiting for the first
//! acknowledgement, sampling for two writable regions.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use haven_engine::drill::Step;
use tokio::sync::watch;

use super::{DrillOptions, Scenario};
use crate::control::{self, LabState};
use crate::ledger::workload::now_ms;
use crate::traffic::writes_directly;

pub(super) fn active_region(lab: &LabState) -> Option<String> {
    lab.active().map(|(region, _)| region)
}

pub(super) fn pg_port(url: &str) -> u16 {
    control::port_of(url).unwrap_or(0)
}

/// Samples every 100 ms whether each region's database takes an application write
/// directly; counts the samples where both do.
pub(super) fn start_sampler(
    lab: &LabState,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let both = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let (us, eu) = (
        pg_port(&lab.endpoints.postgres_us),
        pg_port(&lab.endpoints.postgres_eu),
    );
    let (b, s) = (both.clone(), samples.clone());
    let handle = tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            let (a, e) = tokio::join!(writes_directly(us), writes_directly(eu));
            s.fetch_add(1, Ordering::SeqCst);
            if a && e {
                b.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(100).saturating_sub(t.elapsed())).await;
        }
    });
    (both, samples, handle)
}

pub(super) async fn inject(dir: &Path, words: &[&str]) -> anyhow::Result<String> {
    let (dir, words): (PathBuf, Vec<String>) = (
        dir.to_path_buf(),
        words.iter().map(|w| w.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || control::fault(&dir, &words)).await?
}

/// Injects the scenario's fault and puts it on the timeline: when, or why it failed.
pub(super) async fn start_fault(
    o: &DrillOptions,
    timeline: &mut Vec<Step>,
    say: &impl Fn(&str),
) -> Result<i64, String> {
    let words: &[&str] = match o.scenario {
        Scenario::RegionOutage | Scenario::Failback => &["region-down", "us"],
        Scenario::Partition => &["link-cut"],
        Scenario::PgCrash => &["pg-crash", "us"],
        Scenario::BrokerCrash => &["broker-crash", "us"],
        Scenario::Switchover => return Err("a switchover injects no fault".into()),
        _ => return Err("a backup drill injects its fault itself".into()),
    };
    let at = now_ms();
    let d = inject(&o.lab_dir, words)
        .await
        .map_err(|e| format!("{e:#}"))?;
    timeline.push(Step {
        at_ms: at,
        what: format!("fault: {d}"),
    });
    say(&format!("fault injected: {d}"));
    Ok(at)
}

/// `haven --config CFG switchover --to REGION --yes`.
pub(super) async fn switchover(
    o: &DrillOptions,
    lab: &LabState,
    to: &str,
    state: &Path,
) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(&o.haven)
        .arg("--config")
        .arg(&lab.config)
        .args(["switchover", "--to", to, "--yes", "--state-dir"])
        .arg(state)
        .output()
        .await
        .with_context(|| format!("run {}", o.haven.display()))?;
    if !out.status.success() {
        bail!(
            "switchover to {to} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Waits `d`, or less if `stop` turns true; whether it did.
pub(super) async fn pause(d: Duration, stop: &watch::Receiver<bool>) -> bool {
    let mut stop = stop.clone();
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    let stopped = *stop.borrow();
    stopped
}

/// The acknowledgements seen so far: who answered, and when (ms since the Unix epoch).
pub(super) type Answered = Arc<std::sync::Mutex<Vec<(String, i64)>>>;

/// The first acknowledgement by `region` at or after `since_ms`.
pub(super) fn first_ack_by(acks: &Answered, region: &str, since_ms: i64) -> Option<i64> {
    acks.lock()
        .ok()?
        .iter()
        .filter(|(r, at)| r == region && *at >= since_ms)
        .map(|(_, at)| *at)
        .min()
}

/// Waits until `region` acknowledges a transfer after `since_ms`, or `limit` passes, or
/// `stop`.
pub(super) async fn wait_first_ack(
    acks: &Answered,
    region: &str,
    since_ms: i64,
    limit: Duration,
    stop: &watch::Receiver<bool>,
) -> Option<i64> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !*stop.borrow() {
        if let Some(t) = first_ack_by(acks, region, since_ms) {
            return Some(t);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first_ack_by(acks, region, since_ms)
}

/// Waits (30 s at most) until EU could vouch for what a failover would lose: the RPO
/// ledger reads every mirror and replica without an unknown (right after a switchover
/// EU is briefly not a replica, and its agent would rightly refuse an automatic
/// failover). What it found goes on the timeline either way.
pub(super) async fn standby_ready(lab: &LabState) -> String {
    let Ok((cfg, _)) = haven_engine::config::Config::load(Some(&lab.config)) else {
        return "standby readiness not read: the lab's config does not load".into();
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match haven_engine::failover::status::status_limited(&cfg, Some(100)).await {
            Ok(s) if s.unknown.is_empty() => {
                return format!(
                    "standby ready: {} records at risk, RPO now {:.1} s",
                    s.records_at_risk, s.rpo_seconds
                )
            }
            Ok(s) => s.unknown.join("; "),
            Err(e) => format!("{e}"),
        };
        if Instant::now() > deadline {
            return format!("standby not ready after 30 s (the drill goes on): {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
