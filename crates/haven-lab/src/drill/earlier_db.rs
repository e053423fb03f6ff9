//! The earlier-database drill (the first seed's incident): under the ledger load, the
//! database of the ledger's downstream service (`balances`, [`crate::ledger::service`]) is
//! restored to an earlier point, as after a bad restore from an older backup. The
//! service carries on from its latest offsets, so what it had applied since that point
//! is gone from its database and will never be read again: the impact. It is recovered
//! the event-driven way, with Haven's own commands as an operator runs them:
//! `haven recover` plans from US's backup (the group's offsets at that point, from the
//! backup's group timeline), `recover --apply` rewinds the group, and the service reads
//! again (what its database still holds is skipped, what it lost is applied). Afterwards
//! its database must equal the events it committed past, exactly: each applied once,
//! every balance the opening balance moved by those events.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use haven_engine::drill::{InvariantResult, Step};
use tokio::sync::watch;

use super::backups::Outcome;
use super::steps::pause;
use super::DrillOptions;
use crate::control::LabState;
use crate::ledger::service::{self, Consistency, Service};
use crate::ledger::workload::now_ms;
use crate::regions::TRANSFERS_TOPIC;

/// Runs the drill's phase (the load runs meanwhile); US must be active.
pub(super) async fn earlier_database(
    o: &DrillOptions,
    lab: &LabState,
    dir: &Path,
    timeline: &mut Vec<Step>,
    say: &(impl Fn(&str) + Send + Sync),
    stop: &watch::Receiver<bool>,
) -> Outcome {
    let mut out = Outcome::default();
    let mut step = |what: String| {
        timeline.push(Step {
            at_ms: now_ms(),
            what,
        })
    };
    match phase(o, lab, dir, &mut step, say, stop, &mut out).await {
        Ok(()) => {}
        Err(e) => out.err = Some(format!("{e:#}")),
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn phase(
    o: &DrillOptions,
    lab: &LabState,
    dir: &Path,
    step: &mut impl FnMut(String),
    say: &(impl Fn(&str) + Send + Sync),
    stop: &watch::Receiver<bool>,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let e = &lab.endpoints;
    let bootstrap = e
        .kafka_us
        .clone()
        .context("the lab has no Kafka: start it without --no-kafka")?;
    if e.s3_us.is_none() {
        bail!("the lab has no backups (the group's timeline lives there): start it without --no-backups");
    }
    // The service, made afresh, reads every transfer so far.
    let db = service::create(&e.postgres_us, &bootstrap, TRANSFERS_TOPIC).await?;
    let running = Service::start(&bootstrap, TRANSFERS_TOPIC, &db)?;
    step(format!(
        "service {} started on a new database ({db}), group {} from the start of {TRANSFERS_TOPIC}",
        service::SERVICE,
        service::GROUP
    ));
    say("the balances service catches up with the topic");
    let lag = caught_up(&bootstrap, Duration::from_secs(180), stop).await?;
    step(format!(
        "service caught up ({} transfers applied, {lag} records behind)",
        running.applied()
    ));
    pause(Duration::from_secs(2), stop).await;

    // The point the database will be restored to: a copy of it now.
    service::snapshot(&db).await?;
    let point = now_ms();
    let point_iso = iso(point);
    step(format!(
        "backup of the service's database taken ({point_iso}): the point it is restored to"
    ));
    say(&format!(
        "database backed up at {point_iso}; the service goes on"
    ));
    // The backup's group timeline samples every second; the restore comes later.
    if pause(o.down.max(Duration::from_secs(4)), stop).await {
        let _ = stopped(running).await;
        return Ok(());
    }

    // The fault: the database restored from that copy while the service is down, then
    // the service started again (from its latest offsets, as services do).
    let before = stopped(running).await?;
    service::restore_snapshot(&db).await?;
    let fault_at = now_ms();
    out.fault_at = Some(fault_at);
    step(format!(
        "fault: the service's database restored to {point_iso} ({} transfers applied before it)",
        before.applied
    ));
    say("the service's database is restored to the earlier point");
    let running = Service::start(&bootstrap, TRANSFERS_TOPIC, &db)?;
    pause(Duration::from_secs(2), stop).await;
    stopped(running).await?;
    let impact = service::consistency(&bootstrap, TRANSFERS_TOPIC, &db).await?;
    step(format!(
        "impact seen: {} transfers the service committed past are not in its database, {} accounts off",
        impact.missing.len(),
        impact.accounts_off
    ));
    out.invariants.push(damage_seen(&impact));

    // The recovery, by Haven's commands as an operator runs them.
    say("haven recover: plan from US's backup, then apply (rewind the group)");
    let plan = dir.join("recovery-plan.json");
    let args: Vec<String> = vec![
        "recover".into(),
        "--service".into(),
        service::SERVICE.into(),
        "--restored-to".into(),
        point_iso.clone(),
        "--brokers".into(),
        "us".into(),
        "--repo".into(),
        crate::backups::repository("us"),
        "--group-interval".into(),
        "1".into(),
        "--out".into(),
        plan.display().to_string(),
    ];
    let planned = haven(o, lab, &args).await?;
    step(format!("recovery planned: {}", first_line(&planned)));
    let applied = haven(
        o,
        lab,
        &[
            "recover".into(),
            "--apply".into(),
            plan.display().to_string(),
            "--brokers".into(),
            "us".into(),
            "--repo".into(),
            crate::backups::repository("us"),
            "--yes".into(),
        ],
    )
    .await?;
    step(format!(
        "recovery applied: {}",
        line_with(&applied, "applied")
    ));
    let running = Service::start(&bootstrap, TRANSFERS_TOPIC, &db)?;
    step("service started again on the rewound group".into());
    caught_up(&bootstrap, Duration::from_secs(120), stop).await?;
    let replayed = stopped(running).await?;
    let after = service::consistency(&bootstrap, TRANSFERS_TOPIC, &db).await?;
    let done = now_ms();
    if after.holds() {
        out.rto = Some((done - fault_at) as f64 / 1000.0);
    }
    step(format!(
        "service read again: {} transfers applied, {} skipped as already in its database",
        replayed.applied, replayed.skipped
    ));
    out.invariants
        .push(replay_equality(&after, replayed.skipped));
    // The service's database stays for inspection; the next drill makes it afresh.
    Ok(())
}

/// The restore's damage was there to repair (a drill whose fault did nothing proves
/// nothing).
fn damage_seen(c: &Consistency) -> InvariantResult {
    let ok = !c.missing.is_empty();
    InvariantResult {
        id: "E1".into(),
        name: "the restore lost transfers the service had committed past (the impact)".into(),
        ok: Some(ok),
        detail: if ok {
            format!(
                "{} of {} transfers missing, {} accounts off",
                c.missing.len(),
                c.committed_past,
                c.accounts_off
            )
        } else {
            "nothing was missing: no transfer arrived between the backup and the restore".into()
        },
        first_example: c.missing.first().cloned(),
    }
}

/// After the recovery: every event below the group's offsets applied exactly once and
/// the balances equal to the events (W7 for the service).
fn replay_equality(c: &Consistency, skipped: u64) -> InvariantResult {
    let ok = c.holds();
    InvariantResult {
        id: "E2".into(),
        name: "after rewind and replay, the service's database equals its events".into(),
        ok: Some(ok),
        detail: if ok {
            format!(
                "{} transfers applied once each, every balance equal ({skipped} read again were skipped)",
                c.committed_past
            )
        } else {
            format!(
                "{} missing, {} in the database without an event, {} accounts off",
                c.missing.len(),
                c.extra,
                c.accounts_off
            )
        },
        first_example: c
            .missing
            .first()
            .map(|m| format!("{m}: not applied"))
            .or_else(|| {
                c.first_off
                    .map(|(a, db, ev)| format!("account {a}: database {db}, events {ev}"))
            }),
    }
}

/// Stops the service off the runtime (it joins its thread).
async fn stopped(s: Service) -> anyhow::Result<service::Applied> {
    tokio::task::spawn_blocking(move || s.stop()).await?
}

/// Waits until the service's group is at most a few records behind the topic's end;
/// returns how far behind it was.
async fn caught_up(
    bootstrap: &str,
    timeout: Duration,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<i64> {
    let started = Instant::now();
    loop {
        let b = bootstrap.to_string();
        let lag = tokio::task::spawn_blocking(move || service::lag(&b, TRANSFERS_TOPIC)).await??;
        if lag <= 20 {
            return Ok(lag);
        }
        if started.elapsed() > timeout || *stop.borrow() {
            bail!("the balances service was still {lag} records behind after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs `haven --config LAB ARGS...`; its output, or an error holding it.
async fn haven(o: &DrillOptions, lab: &LabState, args: &[String]) -> anyhow::Result<String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, output) = super::backups::haven(o, lab, &args).await?;
    if !ok {
        bail!("haven {} failed: {}", args.join(" "), output.trim());
    }
    Ok(output)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// The last line mentioning `word`, else the last line (the output holds stdout, then
/// stderr).
fn line_with(s: &str, word: &str) -> String {
    s.lines()
        .rfind(|l| l.contains(word))
        .or_else(|| s.lines().rfind(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .trim()
        .to_string()
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
