//! The drills of the backups, each under the ledger load with US active throughout:
//! an object-store outage (the backup holds on, its RPO alarm fires, nothing is lost when
//! the store returns), a corrupted backup object (verify names it, a restore refuses it
//! or works around it), and a restore into a segregated cluster reconciled with the
//! source and the database.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use haven_engine::drill::{InvariantResult, Step};
use tokio::sync::watch;

use super::reconcile::{self, keep, Reconciliation};
use super::steps::inject;
use super::{DrillOptions, Scenario};
use crate::backups::repository;
use crate::control::LabState;
use crate::ledger::workload::now_ms;
use crate::regions::{TRANSFERS_PARTITIONS, TRANSFERS_TOPIC};

/// What a phase of a backup drill gives the runner.
#[derive(Default)]
pub(super) struct Outcome {
    pub fault_at: Option<i64>,
    pub rto: Option<f64>,
    pub invariants: Vec<InvariantResult>,
    pub not_measured: Vec<String>,
    pub err: Option<String>,
}

/// What a backup's `/metrics` says.
#[derive(Debug, Clone, Copy, Default)]
struct BackupMetrics {
    records_total: u64,
    /// The largest lag in seconds of any partition, and the records not yet durable.
    lag_seconds: f64,
    lag_records: i64,
}

async fn scrape(url: &str) -> Option<BackupMetrics> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = crate::control::port_of(url)?;
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .ok()?
    .ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut text))
        .await
        .ok()?
        .ok()?;
    let mut m = BackupMetrics::default();
    let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
    for l in text.lines() {
        if l.starts_with("haven_backup_records_total ") {
            m.records_total = value(l)? as u64;
        } else if l.starts_with("haven_backup_lag_seconds{") {
            m.lag_seconds = m.lag_seconds.max(value(l)?);
        } else if l.starts_with("haven_backup_lag_records{") {
            m.lag_records += value(l)? as i64;
        }
    }
    Some(m)
}

fn metrics_url(lab: &LabState) -> anyhow::Result<String> {
    lab.endpoints.backup_metrics_us.clone().with_context(|| {
        "the lab has no backups: start it without --no-backups (`haven lab down`, then `haven lab up`)"
    })
}

/// Refuses a backup drill on a lab without backups, before any load starts.
pub(super) fn require_backups(lab: &LabState) -> anyhow::Result<()> {
    metrics_url(lab).map(|_| ())
}

/// Waits until US's backup has nothing waiting (every record durable) or `limit` passes.
async fn wait_durable(url: &str, limit: Duration) -> Option<BackupMetrics> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(m) = scrape(url).await {
            if m.lag_records == 0 {
                return Some(m);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// The high watermarks of US's transfers topic now.
async fn source_ends(lab: &LabState) -> anyhow::Result<BTreeMap<i32, i64>> {
    let Some(bootstrap) = lab.endpoints.kafka_us.clone() else {
        bail!("the lab has no Kafka");
    };
    tokio::task::spawn_blocking(move || {
        let c = haven_kafka::ClusterConfig::new(&bootstrap).inspector("haven-drill")?;
        let mut out = BTreeMap::new();
        for p in 0..TRANSFERS_PARTITIONS {
            let (_, high) =
                haven_kafka::watermarks(&c, TRANSFERS_TOPIC, p, Duration::from_secs(10))?;
            out.insert(p, high);
        }
        Ok(out)
    })
    .await?
}

/// The two invariants of a reconciliation: record by record, and against the database.
fn reconciled(ids: [&str; 2], r: &Reconciliation, what: &str) -> Vec<InvariantResult> {
    let mut record = InvariantResult::new(
        ids[0],
        "the segregated restore equals the source record by record (key, value, headers, timestamp, order)",
        Some(r.first_difference.is_none() && r.restored > 0),
        format!(
            "{} records restored ({}), {} source records compared{}; {what}",
            r.restored,
            r.per_partition
                .iter()
                .map(|(p, n)| format!("p{p} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            r.compared,
            if r.left_out > 0 {
                format!(", {} left out as damaged", r.left_out)
            } else {
                String::new()
            }
        ),
    );
    record.first_example = r.first_difference.clone();
    let mut business = InvariantResult::new(
        ids[1],
        "every restored transfer event is a committed transfer in the database, none twice",
        Some(r.not_in_database == 0 && r.duplicates == 0),
        format!(
            "{} not in the database, {} twice",
            r.not_in_database, r.duplicates
        ),
    );
    business.first_example = r.first_business.clone();
    vec![record, business]
}

/// Object-store outage: US's store killed -9 for `o.down`, sampled every 250 ms.
pub(super) async fn object_store_outage(
    o: &DrillOptions,
    lab: &LabState,
    timeline: &mut Vec<Step>,
    say: &(impl Fn(&str) + Sync),
    stop: &watch::Receiver<bool>,
) -> Outcome {
    let mut out = Outcome::default();
    let url = match metrics_url(lab) {
        Ok(u) => u,
        Err(e) => {
            out.err = Some(format!("{e:#}"));
            return out;
        }
    };
    let before = scrape(&url).await;
    let fault_at = now_ms();
    match inject(&o.lab_dir, &["s3-down", "us"]).await {
        Ok(d) => {
            timeline.push(Step {
                at_ms: fault_at,
                what: format!("fault: {d}"),
            });
            say(&format!("fault injected: {d}"));
        }
        Err(e) => {
            out.err = Some(format!("{e:#}"));
            return out;
        }
    }
    out.fault_at = Some(fault_at);
    // While the store is down: does the backup answer, do its counters hold, does its
    // lag pass the RPO objective (the alarm's condition)?
    let (mut samples, mut answered, mut went_back) = (0u64, 0u64, false);
    let mut last_total = before.map(|m| m.records_total).unwrap_or(0);
    let mut max_lag: f64 = 0.0;
    let mut alarm_at = None;
    let until = Instant::now() + o.down;
    while Instant::now() < until && !*stop.borrow() {
        samples += 1;
        if let Some(m) = scrape(&url).await {
            answered += 1;
            went_back |= m.records_total < last_total;
            last_total = m.records_total;
            max_lag = max_lag.max(m.lag_seconds);
            if m.lag_seconds > o.objectives.rpo_s && alarm_at.is_none() {
                alarm_at = Some(now_ms());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Some(t) = alarm_at {
        timeline.push(Step {
            at_ms: t,
            what: format!(
                "RPO alarm: US's backup lag above {:.1} s with its store down",
                o.objectives.rpo_s
            ),
        });
    }
    let healed = now_ms();
    match inject(&o.lab_dir, &["heal"]).await {
        Ok(d) => timeline.push(Step {
            at_ms: healed,
            what: format!("object store started again: {d}"),
        }),
        Err(e) => {
            out.err = Some(format!("heal: {e:#}"));
            return out;
        }
    }
    // Recovered: the backup's lag back under the RPO objective.
    let limit = Duration::from_secs_f64(o.objectives.rto_s * 2.0);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !*stop.borrow() {
        if let Some(m) = scrape(&url).await {
            went_back |= m.records_total < last_total;
            last_total = m.records_total;
            if m.lag_seconds <= o.objectives.rpo_s && m.records_total > 0 {
                let t = now_ms();
                out.rto = Some((t - fault_at) as f64 / 1000.0);
                timeline.push(Step {
                    at_ms: t,
                    what: "US's backup caught up: lag back under the RPO objective".into(),
                });
                say(&format!(
                    "the backup caught up {:.1} s after the fault",
                    (t - fault_at) as f64 / 1000.0
                ));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    out.invariants.push(InvariantResult::new(
        "B1",
        "the backup held on through the outage (answered throughout, its counters never reset)",
        Some(samples > 0 && answered == samples && !went_back),
        format!(
            "{answered} of {samples} metric samples answered during the outage{}",
            if went_back {
                "; its record counter went back (the process restarted)"
            } else {
                ""
            }
        ),
    ));
    out.invariants.push(InvariantResult::new(
        "B2",
        "the RPO alarm fired during the outage (backup lag above the RPO objective)",
        Some(alarm_at.is_some()),
        format!(
            "largest lag sampled {max_lag:.1} s against {:.1} s, store down {:.1} s",
            o.objectives.rpo_s,
            (healed - fault_at) as f64 / 1000.0
        ),
    ));
    out
}

/// After an outage, with the load stopped: every record of US's topic is in the backup,
/// shown by restoring it into a segregated cluster and comparing record by record.
pub(super) async fn nothing_lost_after_outage(
    o: &DrillOptions,
    lab: &LabState,
    dir: &std::path::Path,
    say: &(impl Fn(&str) + Sync),
) -> anyhow::Result<Vec<InvariantResult>> {
    let url = metrics_url(lab)?;
    say("waiting for US's backup to make every record durable");
    let Some(_) = wait_durable(&url, Duration::from_secs(60)).await else {
        bail!("US's backup still had records waiting 60 s after the load stopped");
    };
    let ends = source_ends(lab).await?;
    say("restoring US's backup into a segregated cluster to compare");
    let target = reconcile::segregated_broker().await?;
    let r = reconcile::restore(o, lab, &repository("us"), &target, &[]).await?;
    keep(dir, "restore.stderr", &r.stderr);
    if !r.ok {
        bail!("the restore failed: {}", r.stderr.trim());
    }
    let rec = reconcile::reconcile(lab, &target, &r.missing, Some(&ends)).await?;
    Ok(reconciled(
        ["B3", "B4"],
        &rec,
        "the whole topic after the store returned",
    ))
}

/// A restore into a segregated cluster under load: non-disruptive (US stays active), its
/// RTO the restore and the reconciliation.
pub(super) async fn segregated_restore(
    o: &DrillOptions,
    lab: &LabState,
    dir: &std::path::Path,
    timeline: &mut Vec<Step>,
    say: &(impl Fn(&str) + Sync),
) -> Outcome {
    let mut out = Outcome::default();
    let start = now_ms();
    out.fault_at = Some(start);
    timeline.push(Step {
        at_ms: start,
        what: "restore of US's backup into a segregated cluster started".into(),
    });
    say("restoring US's backup into a segregated cluster");
    let run = async {
        let target = reconcile::segregated_broker().await?;
        let r = reconcile::restore(o, lab, &repository("us"), &target, &[]).await?;
        keep(dir, "restore.stderr", &r.stderr);
        if !r.ok {
            bail!("the restore failed: {}", r.stderr.trim());
        }
        let restored = now_ms();
        let rec = reconcile::reconcile(lab, &target, &r.missing, None).await?;
        anyhow::Ok((r.seconds, restored, rec))
    };
    match run.await {
        Ok((secs, restored, rec)) => {
            timeline.push(Step {
                at_ms: restored,
                what: format!(
                    "restore done in {secs:.1} s: {} records in the segregated cluster",
                    rec.restored
                ),
            });
            let t = now_ms();
            timeline.push(Step {
                at_ms: t,
                what: "reconciled with the source and the database".into(),
            });
            out.rto = Some((t - start) as f64 / 1000.0);
            out.invariants = reconciled(
                ["R1", "R2"],
                &rec,
                "up to the backup's position at the restore",
            );
        }
        Err(e) => out.err = Some(format!("{e:#}")),
    }
    out
}

/// A segment of US's backup damaged at rest (one byte flipped), found by `verify`,
/// refused by a plain restore, worked around by `--skip-damaged` (everything else
/// restored and equal to the source), then repaired (the original bytes put back).
pub(super) async fn corrupted_backup(
    o: &DrillOptions,
    lab: &LabState,
    dir: &std::path::Path,
    timeline: &mut Vec<Step>,
    say: &(impl Fn(&str) + Sync),
) -> Outcome {
    let mut out = Outcome::default();
    let store = match open_store(lab).await {
        Ok(s) => s,
        Err(e) => {
            out.err = Some(format!("{e:#}"));
            return out;
        }
    };
    let (key, original) = match damage(&store).await {
        Ok(x) => x,
        Err(e) => {
            out.err = Some(format!("corrupt a segment: {e:#}"));
            return out;
        }
    };
    let at = now_ms();
    out.fault_at = Some(at);
    timeline.push(Step {
        at_ms: at,
        what: format!("fault: one byte flipped in {key} of US's backup"),
    });
    say(&format!("fault injected: one byte flipped in {key}"));
    let run = async {
        // C1: verify names it.
        let v = haven(o, lab, &["verify", "--repo", &repository("us")]).await?;
        keep(dir, "verify.out", &v.1);
        let named = !v.0 && v.1.contains(&key);
        out.invariants.push(InvariantResult::new(
            "C1",
            "verify finds the damaged object and names it",
            Some(named),
            format!(
                "verify {} and {} {key}",
                if v.0 { "passed" } else { "failed" },
                if v.1.contains(&key) {
                    "named"
                } else {
                    "did not name"
                }
            ),
        ));
        timeline.push(Step {
            at_ms: now_ms(),
            what: format!(
                "verify: {}",
                if named {
                    "damage named"
                } else {
                    "damage not named"
                }
            ),
        });
        // C2: a plain restore refuses, naming it, and writes nothing.
        let target = reconcile::segregated_broker().await?;
        let plain = reconcile::restore(o, lab, &repository("us"), &target, &[]).await?;
        keep(dir, "restore-refused.stderr", &plain.stderr);
        let written = ends_of(&target).await.unwrap_or_default();
        out.invariants.push(InvariantResult::new(
            "C2",
            "a restore refuses the damaged backup, naming the object, and writes nothing",
            Some(!plain.ok && plain.stderr.contains(&key) && written == 0),
            format!(
                "restore {}; {} its stderr; {written} records written",
                if plain.ok { "succeeded" } else { "refused" },
                if plain.stderr.contains(&key) {
                    "the object named in"
                } else {
                    "the object not named in"
                }
            ),
        ));
        // C3: --skip-damaged works around it, and says what it left out.
        let target = reconcile::segregated_broker().await?;
        let around =
            reconcile::restore(o, lab, &repository("us"), &target, &["--skip-damaged"]).await?;
        keep(dir, "restore-skip-damaged.stderr", &around.stderr);
        if !around.ok {
            bail!(
                "the restore with --skip-damaged failed: {}",
                around.stderr.trim()
            );
        }
        let rec = reconcile::reconcile(lab, &target, &around.missing, None).await?;
        let t = now_ms();
        timeline.push(Step {
            at_ms: t,
            what: format!(
                "worked around: {} records restored, {} offsets left out as damaged, reconciled",
                rec.restored, rec.left_out
            ),
        });
        let mut inv = reconciled(["C3", "C4"], &rec, "restored with --skip-damaged");
        inv[0].ok = inv[0].ok.map(|ok| ok && rec.left_out > 0);
        if rec.left_out == 0 {
            inv[0]
                .detail
                .push_str("; the restore said nothing was left out");
        }
        out.invariants.extend(inv);
        anyhow::Ok(t)
    };
    let result = run.await;
    // Repair whatever happened: the original bytes back, then verify again.
    let repaired = repair(&store, &key, original).await;
    let v = haven(o, lab, &["verify", "--repo", &repository("us")]).await;
    out.invariants.push(InvariantResult::new(
        "C5",
        "after the object is put back from a good copy, verify passes",
        Some(repaired.is_ok() && matches!(v, Ok((true, _)))),
        match (&repaired, &v) {
            (Err(e), _) => format!("repair failed: {e:#}"),
            (_, Err(e)) => format!("verify failed to run: {e:#}"),
            (_, Ok((ok, _))) => format!("verify {}", if *ok { "passed" } else { "failed" }),
        },
    ));
    match result {
        Ok(t) => out.rto = Some((t - at) as f64 / 1000.0),
        Err(e) => out.err = Some(format!("{e:#}")),
    }
    out
}

/// Runs `haven --config CFG ARGS...`: whether it succeeded, and its stdout and stderr.
pub(super) async fn haven(
    o: &DrillOptions,
    lab: &LabState,
    args: &[&str],
) -> anyhow::Result<(bool, String)> {
    let out = tokio::process::Command::new(&o.haven)
        .arg("--config")
        .arg(&lab.config)
        .args(args)
        .output()
        .await
        .with_context(|| format!("run {}", o.haven.display()))?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

async fn ends_of(target: &testbed::Broker) -> anyhow::Result<i64> {
    let b = target.bootstrap();
    tokio::task::spawn_blocking(move || {
        let c = haven_kafka::ClusterConfig::new(&b).inspector("haven-drill")?;
        let mut n = 0;
        for p in 0..TRANSFERS_PARTITIONS {
            // A refused restore may not even create the topic.
            if let Ok((_, high)) =
                haven_kafka::watermarks(&c, TRANSFERS_TOPIC, p, Duration::from_secs(5))
            {
                n += high;
            }
        }
        anyhow::Ok(n)
    })
    .await?
}

async fn open_store(lab: &LabState) -> anyhow::Result<haven_storage::Store> {
    let (cfg, _) = haven_engine::config::Config::load(Some(&lab.config))?;
    let repo = haven_engine::repo::open_configured(&cfg.repository(&repository("us")), None, false)
        .await?;
    Ok(repo.store().clone())
}

/// Flips one byte in the middle of a segment of the backup's log that holds records
/// (the middle one of the first half, so the backup is not writing near it); the key and
/// the original bytes.
async fn damage(store: &haven_storage::Store) -> anyhow::Result<(String, bytes::Bytes)> {
    let mut segs: Vec<_> = store
        .list("log/")
        .await?
        .into_iter()
        .filter(|o| o.key.ends_with(".seg") && o.size > 4096)
        .collect();
    segs.sort_by(|a, b| a.key.cmp(&b.key));
    if segs.len() < 2 {
        bail!(
            "US's backup holds {} segments with records; the drill needs 2 (a longer warm-up)",
            segs.len()
        );
    }
    let key = segs[segs.len() / 4].key.clone();
    let original = store.get(&key).await?;
    let mut bad = original.to_vec();
    let i = bad.len() / 2;
    bad[i] ^= 0x5a;
    store.delete(&key).await?;
    store.put_new(&key, bytes::Bytes::from(bad)).await?;
    Ok((key, original))
}

async fn repair(
    store: &haven_storage::Store,
    key: &str,
    original: bytes::Bytes,
) -> anyhow::Result<()> {
    store.delete(key).await?;
    store.put_new(key, original).await?;
    Ok(())
}

/// Whether a scenario is one of these.
pub(super) fn is_backup_drill(s: Scenario) -> bool {
    matches!(
        s,
        Scenario::ObjectStoreOutage | Scenario::CorruptedBackup | Scenario::SegregatedRestore
    )
}
