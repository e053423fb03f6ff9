//! `haven drill run SCENARIO --lab DIR`: a DR drill on a running lab under the ledger
//! workload: the fault (or the switchover), RTO and RPO measured from the workload's
//! acknowledgements, two writable regions sampled every 100 ms, the invariants checked,
//! and the evidence written ([`haven_engine::drill::DrillReport`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use haven_engine::drill::{
    config_hash, latency_phases, DrillReport, InvariantResult, Measured, Objectives, Step, Verdict,
};
use tokio::sync::watch;

use crate::control::LabState;
use crate::ledger::check::{self, CheckOptions};
use crate::ledger::workload::{self, now_ms, Tick, WorkloadOptions};
use crate::ledger::LATENCY_FILE;

mod backups;
mod earlier_db;
mod failback;
mod reconcile;
mod report;
mod scenario;
mod steps;

pub use report::write_report;
use report::{captured_transfers, read_seconds};
pub use scenario::Scenario;
use steps::{
    active_region, inject, pause, start_fault, start_sampler, switchover, wait_first_ack, Answered,
};

/// How to run a drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub lab_dir: PathBuf,
    pub scenario: Scenario,
    pub objectives: Objectives,
    /// The `haven` binary (a switchover runs it).
    pub haven: PathBuf,
    /// Load before the fault, and after the new region's first acknowledgement.
    pub warmup: Duration,
    pub after: Duration,
    /// How long a partition lasts.
    pub partition: Duration,
    /// How long a crashed server stays down (pg-crash, broker-crash).
    pub down: Duration,
    pub rate_per_min: u32,
    pub event_bytes: usize,
    pub reads_per_write: u32,
    pub operator: String,
}

/// Where a drill's files go: `DIR/drills/ID.json`, `ID.html` and `ID/` (its workload
/// log, switchover state).
pub fn drills_dir(lab_dir: &Path) -> PathBuf {
    lab_dir.join("drills")
}

/// The default operator name: the user running the drill.
pub fn default_operator() -> String {
    haven_engine::recovery::audit::current_user()
}

/// Runs the drill; `say` narrates it. Ctrl-C (`stop`) ends it early: the lab is healed,
/// the workload stopped, and the report says it was interrupted (FAIL).
pub async fn run(
    o: &DrillOptions,
    stop: watch::Receiver<bool>,
    say: impl Fn(&str) + Send + Sync + Clone + 'static,
) -> anyhow::Result<DrillReport> {
    let lab = LabState::require(&o.lab_dir)?;
    if backups::is_backup_drill(o.scenario) {
        backups::require_backups(&lab)?;
    }
    // Right after a switchover the new holder's agent may take a moment to answer.
    let mut before = active_region(&lab);
    let asked = Instant::now();
    while before.is_none() && asked.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        before = active_region(&lab);
    }
    if before.as_deref() != Some("us") {
        bail!(
            "the drill needs US active and EU standby; the lab's active region is {}. \
             Start a fresh lab (`haven lab down` then `haven lab up`)",
            before.as_deref().unwrap_or("none")
        );
    }
    let started = chrono::Utc::now();
    let id = format!("{}-{}", o.scenario.name(), started.format("%Y%m%dT%H%M%SZ"));
    let dir = drills_dir(&o.lab_dir).join(&id);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut timeline = vec![Step {
        at_ms: now_ms(),
        what: format!(
            "objectives fixed: RTO <= {:.0} s, RPO <= {:.1} s{}, no two writable regions",
            o.objectives.rto_s,
            o.objectives.rpo_s,
            o.objectives
                .max_lost
                .map(|m| format!(", at most {m} acknowledged transfers lost"))
                .unwrap_or_default()
        ),
    }];
    let mut not_measured = Vec::new();
    if matches!(
        o.scenario,
        Scenario::RegionOutage | Scenario::Partition | Scenario::Failback
    ) {
        let ready = steps::standby_ready(&lab).await;
        timeline.push(Step {
            at_ms: now_ms(),
            what: ready,
        });
    }

    // The load, and the sampler.
    let wl = WorkloadOptions {
        dir: dir.clone(),
        rate_per_min: o.rate_per_min,
        duration: Duration::from_secs(24 * 3600),
        event_bytes: o.event_bytes,
        reads_per_write: o.reads_per_write,
        connections: 4,
        run_id: format!("d{}", started.format("%H%M%S")),
    };
    let (wl_stop_tx, wl_stop) = watch::channel(false);
    let lab2 = lab.clone();
    // Who answered each transfer, and when: RTO is read from these.
    let (acks_tx, mut acks_rx) = tokio::sync::mpsc::unbounded_channel();
    let answered: Answered = Default::default();
    {
        let answered = answered.clone();
        tokio::spawn(async move {
            while let Some(a) = acks_rx.recv().await {
                let a: crate::ledger::Ack = a;
                if let Ok(mut v) = answered.lock() {
                    v.push((a.region, a.at_ms));
                }
            }
        });
    }
    let workload = tokio::spawn(async move {
        workload::run(&lab2, &wl, wl_stop, |_t: &Tick| {}, Some(acks_tx)).await
    });
    let sampling = Arc::new(AtomicBool::new(false));
    let (both, samples, sampler) = start_sampler(&lab, sampling.clone());
    timeline.push(Step {
        at_ms: now_ms(),
        what: format!(
            "ledger load started: {} transfers a minute, sampler every 100 ms",
            o.rate_per_min
        ),
    });
    say(&format!(
        "{id}: load for {} s before the fault",
        o.warmup.as_secs()
    ));
    // Ctrl-C during the warm-up: no fault is injected at all.
    let mut interrupted = pause(o.warmup, &stop).await;

    // The fault.
    let limit = Duration::from_secs_f64(o.objectives.rto_s * 2.0);
    let mut fault_at = now_ms();
    let mut rto = None;
    let mut fault_err = None;
    let mut phase_invariants: Vec<InvariantResult> = Vec::new();
    if !interrupted {
        match o.scenario {
            Scenario::RegionOutage | Scenario::Partition | Scenario::Failback => {
                match start_fault(o, &mut timeline, &say).await {
                    Ok(at) => fault_at = at,
                    Err(e) => fault_err = Some(e),
                }
                if fault_err.is_none() {
                    let first = wait_first_ack(&answered, "eu", fault_at, limit, &stop).await;
                    interrupted = *stop.borrow();
                    if let Some(t) = first {
                        rto = Some((t - fault_at) as f64 / 1000.0);
                        timeline.push(Step {
                            at_ms: t,
                            what: "first transfer acknowledged by EU".into(),
                        });
                        say(&format!(
                            "EU took the first transfer after {:.1} s",
                            (t - fault_at) as f64 / 1000.0
                        ));
                    }
                }
                if o.scenario == Scenario::Partition && fault_err.is_none() {
                    let held = Instant::now();
                    while held.elapsed() < o.partition && !*stop.borrow() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    match inject(&o.lab_dir, &["heal"]).await {
                        Ok(d) => timeline.push(Step {
                            at_ms: now_ms(),
                            what: format!("partition healed: {d}"),
                        }),
                        Err(e) => fault_err = Some(format!("heal: {e:#}")),
                    }
                }
            }
            Scenario::PgCrash | Scenario::BrokerCrash => {
                match start_fault(o, &mut timeline, &say).await {
                    Ok(at) => {
                        fault_at = at;
                        let pg = o.scenario == Scenario::PgCrash;
                        let took = |t: i64, what: &str| {
                            let secs = (t - fault_at) as f64 / 1000.0;
                            say(&format!("US took a transfer {secs:.1} s after the fault"));
                            (
                                Some(secs),
                                Step {
                                    at_ms: t,
                                    what: what.into(),
                                },
                            )
                        };
                        // A broker crash does not stop transfers (their events wait in
                        // the outbox): its RTO is the fault to the next acknowledgement.
                        if !pg {
                            let first = wait_first_ack(&answered, "us", fault_at, o.down, &stop);
                            if let Some(t) = first.await {
                                let step;
                                (rto, step) =
                                    took(t, "transfer acknowledged by US with its broker down");
                                timeline.push(step);
                            }
                        }
                        interrupted = pause(
                            o.down.saturating_sub(Duration::from_millis(
                                (now_ms() - fault_at).max(0) as u64,
                            )),
                            &stop,
                        )
                        .await;
                        match inject(&o.lab_dir, &["heal"]).await {
                            Ok(d) => {
                                let healed = now_ms();
                                timeline.push(Step {
                                    at_ms: healed,
                                    what: format!("server started again: {d}"),
                                });
                                // A Postgres crash: recovered when US acknowledges a
                                // transfer after the restart (an answer arriving after
                                // the fault may be a commit from before it).
                                if pg {
                                    let first =
                                        wait_first_ack(&answered, "us", healed, limit, &stop);
                                    if let Some(t) = first.await {
                                        let step;
                                        (rto, step) = took(
                                            t,
                                            "first transfer acknowledged by US after the restart",
                                        );
                                        timeline.push(step);
                                    }
                                }
                            }
                            Err(e) => fault_err = Some(format!("heal: {e:#}")),
                        }
                    }
                    Err(e) => fault_err = Some(e),
                }
                interrupted |= *stop.borrow();
            }
            Scenario::ObjectStoreOutage
            | Scenario::CorruptedBackup
            | Scenario::SegregatedRestore
            | Scenario::EarlierDatabase => {
                let outcome = match o.scenario {
                    Scenario::EarlierDatabase => {
                        earlier_db::earlier_database(o, &lab, &dir, &mut timeline, &say, &stop)
                            .await
                    }
                    Scenario::ObjectStoreOutage => {
                        backups::object_store_outage(o, &lab, &mut timeline, &say, &stop).await
                    }
                    Scenario::CorruptedBackup => {
                        backups::corrupted_backup(o, &lab, &dir, &mut timeline, &say).await
                    }
                    _ => backups::segregated_restore(o, &lab, &dir, &mut timeline, &say).await,
                };
                if let Some(t) = outcome.fault_at {
                    fault_at = t;
                }
                rto = outcome.rto;
                fault_err = outcome.err;
                phase_invariants = outcome.invariants;
                not_measured.extend(outcome.not_measured);
                interrupted |= *stop.borrow();
            }
            Scenario::Switchover => {
                let state = dir.join("switchover-state");
                fault_at = now_ms();
                timeline.push(Step {
                    at_ms: fault_at,
                    what: "switchover to EU started".into(),
                });
                say("switchover to EU");
                match switchover(o, &lab, "eu", &state).await {
                    Ok(()) => {
                        timeline.push(Step {
                            at_ms: now_ms(),
                            what: "switchover to EU done".into(),
                        });
                        if let Some(t) =
                            wait_first_ack(&answered, "eu", fault_at, limit, &stop).await
                        {
                            rto = Some((t - fault_at) as f64 / 1000.0);
                            timeline.push(Step {
                                at_ms: t,
                                what: "first transfer acknowledged by EU".into(),
                            });
                        }
                    }
                    Err(e) => fault_err = Some(format!("{e:#}")),
                }
            }
        }
    }
    if !interrupted && fault_err.is_none() {
        pause(o.after, &stop).await;
    }
    let mut captured = None;
    if o.scenario == Scenario::Failback && fault_err.is_none() && !*stop.borrow() {
        let fb = failback::fail_back(o, &lab, &mut timeline, &say, &stop).await;
        captured = fb.captured;
        phase_invariants.extend(fb.invariants);
        fault_err = fb.err.map(|e| format!("failback: {e}"));
    }
    let back_to_us = matches!(o.scenario, Scenario::Switchover | Scenario::Failback);
    if back_to_us && fault_err.is_none() && !*stop.borrow() {
        let back = now_ms();
        timeline.push(Step {
            at_ms: back,
            what: "switchover back to US started".into(),
        });
        say("switchover back to US");
        match switchover(o, &lab, "us", &dir.join("switchover-state")).await {
            Ok(()) => {
                timeline.push(Step {
                    at_ms: now_ms(),
                    what: "switchover back to US done".into(),
                });
                if let Some(t) = wait_first_ack(&answered, "us", back, limit, &stop).await {
                    timeline.push(Step {
                        at_ms: t,
                        what: "first transfer acknowledged by US again".into(),
                    });
                }
                pause(o.after.min(Duration::from_secs(3)), &stop).await;
            }
            Err(e) => fault_err = Some(format!("back: {e:#}")),
        }
    }
    interrupted |= *stop.borrow();

    // Stop the load (it drains its outbox), then the sampler.
    let _ = wl_stop_tx.send(true);
    let summary = workload.await?;
    sampling.store(true, Ordering::SeqCst);
    let _ = sampler.await;
    timeline.push(Step {
        at_ms: now_ms(),
        what: "ledger load stopped".into(),
    });
    let after_region = active_region(&lab);
    if interrupted {
        // Leave the lab whole: a half-injected fault is healed.
        if !back_to_us || o.scenario == Scenario::Failback {
            let _ = inject(&o.lab_dir, &["heal"]).await;
        }
        not_measured.push("the drill was interrupted (Ctrl-C) before it finished".into());
    }
    if let Some(e) = &fault_err {
        not_measured.push(format!("the fault or switchover failed: {e}"));
    }
    let summary = match summary {
        Ok(s) => Some(s),
        Err(e) => {
            not_measured.push(format!("the workload failed: {e:#}"));
            None
        }
    };

    // The invariants, and the RPO from the acknowledgements.
    say("checking the ledger's invariants");
    let co = CheckOptions {
        dir: dir.clone(),
        region: None,
        // Only a failover may lose what the RPO allows; a switchover and a fault
        // recovered in place may lose nothing at all.
        fault_at_ms: match o.scenario {
            Scenario::RegionOutage | Scenario::Partition | Scenario::Failback => Some(fault_at),
            _ => None,
        },
        rpo_target_s: o.objectives.rpo_s,
        retry_probe: true,
    };
    let mut measured = Measured {
        rto_s: rto,
        two_writable: Some(both.load(Ordering::SeqCst)),
        samples: samples.load(Ordering::SeqCst),
        acknowledged: summary.as_ref().map(|s| s.acknowledged).unwrap_or(0),
        latency_p99_ms: summary.as_ref().map(|s| s.latency_p99_ms).unwrap_or(0.0),
        active_before: before.clone(),
        active_after: after_region,
        ..Measured::default()
    };
    // Latency before the fault, to recovery, and after, from the acknowledgement log.
    match crate::ledger::read_acks(&dir.join(crate::ledger::ACKS_FILE)) {
        Ok(acks) => {
            let acks: Vec<(i64, f64)> = acks.iter().map(|a| (a.at_ms, a.latency_ms)).collect();
            let recovered = rto.map(|r| fault_at + (r * 1000.0).round() as i64);
            measured.latency = latency_phases(&acks, fault_at, recovered);
        }
        Err(e) => not_measured.push(format!("transaction latency: {e:#}")),
    }
    let mut invariants = Vec::new();
    let mut lost_ids = None;
    match check::check(&lab, &co).await {
        Ok(r) => {
            measured.lost = Some(r.lost);
            measured.lost_seconds = Some(r.lost_seconds);
            lost_ids = Some(r.lost_ids.clone());
            invariants = r
                .invariants
                .into_iter()
                .map(|i| InvariantResult {
                    id: i.id.into(),
                    name: i.name.into(),
                    ok: i.ok,
                    detail: i.detail,
                    first_example: i.first_example,
                })
                .collect();
        }
        Err(e) => not_measured.push(format!("the workload's checker failed: {e:#}")),
    }
    invariants.append(&mut phase_invariants);
    if o.scenario == Scenario::ObjectStoreOutage && fault_err.is_none() && !interrupted {
        match backups::nothing_lost_after_outage(o, &lab, &dir, &say).await {
            Ok(mut found) => invariants.append(&mut found),
            Err(e) => not_measured.push(format!("B3, the backup after the outage: {e:#}")),
        }
    }
    if o.scenario.in_place() {
        let after = measured.active_after.clone();
        invariants.push(InvariantResult {
            id: "A1".into(),
            name: "the active region stays US (a crash recovered in place is no failover)".into(),
            ok: Some(after.as_deref() == Some("us")),
            detail: format!(
                "active before: {}, after: {}",
                before.as_deref().unwrap_or("none"),
                after.as_deref().unwrap_or("none")
            ),
            first_example: None,
        });
    }
    if o.scenario == Scenario::Failback && fault_err.is_none() && !interrupted {
        match failback::topics_agree(&lab).await {
            Ok(r) => invariants.push(r),
            Err(e) => not_measured.push(format!("F3, the topics after the failback: {e:#}")),
        }
    }
    // After a partition US is back (fenced), and after a failback it was captured: what
    // it acknowledged and EU lost must be in the capture.
    let capture_checked = matches!(o.scenario, Scenario::Partition | Scenario::Failback);
    if capture_checked && fault_err.is_none() && !interrupted {
        if let Some(lost) = &lost_ids {
            let found = match captured.take() {
                Some(c) => Ok(c),
                None => {
                    say("capturing what US wrote that EU never got (failback)");
                    captured_transfers(&lab).await
                }
            };
            match found {
                Ok((object, ids)) => {
                    let missed: Vec<&String> =
                        lost.iter().filter(|id| !ids.contains(*id)).collect();
                    if o.scenario == Scenario::Partition {
                        timeline.push(Step {
                            at_ms: now_ms(),
                            what: format!("failback capture stored: {object}"),
                        });
                    }
                    invariants.push(InvariantResult {
                        id: "F1".into(),
                        name: "every acknowledged transfer EU lost is in the failback capture".into(),
                        ok: Some(missed.is_empty()),
                        detail: format!(
                            "{} lost, {} transfers captured from US, {} of the lost not captured ({object})",
                            lost.len(),
                            ids.len(),
                            missed.len()
                        ),
                        first_example: missed.first().map(|s| s.to_string()),
                    });
                }
                Err(e) => not_measured.push(format!("the failback capture failed: {e:#}")),
            }
        }
    }
    let seconds = read_seconds(&dir.join(LATENCY_FILE));
    let config = std::fs::read(&lab.config).unwrap_or_default();
    let mut report = DrillReport {
        id: id.clone(),
        scenario: o.scenario.name().into(),
        description: o.scenario.description().into(),
        started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        operator: o.operator.clone(),
        haven_version: env!("CARGO_PKG_VERSION").into(),
        config_sha256: config_hash(&config),
        objectives: o.objectives.clone(),
        stop_conditions: vec![
            format!(
                "{} within {:.0} s (twice the RTO objective): stop, heal, FAIL",
                match o.scenario {
                    Scenario::ObjectStoreOutage => "US's backup not caught up",
                    Scenario::CorruptedBackup | Scenario::SegregatedRestore =>
                        "the restore not reconciled",
                    s if s.in_place() => "no transfer acknowledged by the restarted region",
                    _ => "no transfer acknowledged by the new region",
                },
                o.objectives.rto_s * 2.0
            ),
            "Ctrl-C: stop the load, heal the lab, FAIL (interrupted)".into(),
            "the lab not at US active and EU standby at the start: refuse to start".into(),
        ],
        measured,
        invariants,
        not_measured,
        failures: vec![],
        timeline,
        seconds,
        verdict: Verdict::Fail,
    };
    report.judge();
    write_report(&o.lab_dir, &report)?;
    Ok(report)
}
