//! Restoring a region's backup into a segregated cluster (a broker of its own, started
//! for the drill and gone after it) and reconciling it with the source: record by record
//! (key, value, headers, timestamp, in order), and against the database (every restored
//! transfer event is a committed transfer, none twice).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use haven_engine::drill::reconcile;
use haven_kafka::ClusterConfig;
use testbed::Broker;

use super::DrillOptions;
use crate::control::LabState;
use crate::regions::{TRANSFERS_PARTITIONS, TRANSFERS_TOPIC};

/// Offsets of a source partition the restore left out (`from..to`, `to` exclusive).
pub(super) type Missing = BTreeMap<i32, Vec<(i64, i64)>>;

/// What `haven restore` did: its exit status, its stderr, and the ranges it said it left
/// out (`--skip-damaged`).
pub(super) struct Restored {
    pub ok: bool,
    pub stderr: String,
    pub missing: Missing,
    pub seconds: f64,
}

/// Starts a segregated broker (blocking work off the runtime).
pub(super) async fn segregated_broker() -> anyhow::Result<Broker> {
    tokio::task::spawn_blocking(Broker::start)
        .await?
        .context("start the segregated cluster (a tansu broker of the drill's own)")
}

/// `haven --config CFG restore --repo REPO --brokers SEG --topics ledger.transfers
/// [EXTRA...]`.
pub(super) async fn restore(
    o: &DrillOptions,
    lab: &LabState,
    repo: &str,
    target: &Broker,
    extra: &[&str],
) -> anyhow::Result<Restored> {
    let started = std::time::Instant::now();
    let out = tokio::process::Command::new(&o.haven)
        .arg("--config")
        .arg(&lab.config)
        .args(["restore", "--repo", repo, "--brokers", &target.bootstrap()])
        .args(["--topics", &TRANSFERS_TOPIC.replace('.', "\\.")])
        .args(extra)
        .output()
        .await
        .with_context(|| format!("run {}", o.haven.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    Ok(Restored {
        ok: out.status.success(),
        missing: missing_ranges(&stderr),
        stderr,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The `warning: missing: TOPIC/P offsets A..B` lines of a restore with `--skip-damaged`.
fn missing_ranges(stderr: &str) -> Missing {
    let mut out = Missing::new();
    for line in stderr.lines() {
        let Some(rest) = line.trim().strip_prefix("warning: missing: ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(tp), Some("offsets"), Some(range)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let (Some((_, p)), Some((a, b))) = (tp.rsplit_once('/'), range.split_once("..")) else {
            continue;
        };
        if let (Ok(p), Ok(a), Ok(b)) = (p.parse(), a.parse(), b.parse()) {
            out.entry(p).or_default().push((a, b));
        }
    }
    out
}

/// The digests of `[from, until)` of a partition of the transfers topic (blocking).
fn read_digests(
    bootstrap: &str,
    partition: i32,
    from: i64,
    until: i64,
) -> anyhow::Result<Vec<(i64, String)>> {
    reconcile::digests(
        &ClusterConfig::new(bootstrap),
        TRANSFERS_TOPIC,
        partition,
        from,
        until,
    )
    .with_context(|| format!("read {TRANSFERS_TOPIC}/{partition} on {bootstrap}"))
}

fn high_watermark(bootstrap: &str, partition: i32) -> anyhow::Result<i64> {
    let c = ClusterConfig::new(bootstrap).inspector("haven-drill")?;
    Ok(haven_kafka::watermarks(&c, TRANSFERS_TOPIC, partition, Duration::from_secs(10))?.1)
}

/// The comparison of a segregated restore with its source.
#[derive(Debug, Default)]
pub(super) struct Reconciliation {
    /// Records in the segregated cluster, and per partition.
    pub restored: u64,
    pub per_partition: Vec<(i32, u64)>,
    /// Source records the comparison covered (the restored range, less what the restore
    /// said it left out).
    pub compared: u64,
    /// The first record that differs, or is missing or extra: where and how.
    pub first_difference: Option<String>,
    /// Source offsets left out by the restore (`--skip-damaged`).
    pub left_out: u64,
    /// Restored transfer events not committed in the database, or seen twice.
    pub not_in_database: u64,
    pub duplicates: u64,
    pub first_business: Option<String>,
}

/// Compares the segregated cluster's topic with the source region's, partition by
/// partition: the restored records, in order, must be the source's from offset 0, less
/// the ranges in `missing`; `until` (per partition), when given, is where the source's
/// range ends (else where the restored records end). Then each restored event's transfer
/// must be in the database (`lab`'s US database), and no transfer twice.
pub(super) async fn reconcile(
    lab: &LabState,
    target: &Broker,
    missing: &Missing,
    until: Option<&BTreeMap<i32, i64>>,
) -> anyhow::Result<Reconciliation> {
    let Some(source) = lab.endpoints.kafka_us.clone() else {
        bail!("the lab has no Kafka");
    };
    let target = target.bootstrap();
    let (missing, until, seg) = (missing.clone(), until.cloned(), target.clone());
    let mut r = tokio::task::spawn_blocking(move || -> anyhow::Result<Reconciliation> {
        let target = seg;
        let mut r = Reconciliation::default();
        for p in 0..TRANSFERS_PARTITIONS {
            let n = high_watermark(&target, p)?;
            let got = read_digests(&target, p, 0, n)?;
            r.restored += got.len() as u64;
            r.per_partition.push((p, got.len() as u64));
            let left: Vec<(i64, i64)> = missing.get(&p).cloned().unwrap_or_default();
            let skipped = |o: i64| left.iter().any(|(a, b)| (*a..*b).contains(&o));
            let left_out: i64 = left.iter().map(|(a, b)| b - a).sum();
            r.left_out += left_out.max(0) as u64;
            let end = match until.as_ref().and_then(|u| u.get(&p)) {
                Some(e) => *e,
                None => n + left_out,
            };
            let want: Vec<(i64, String)> = read_digests(&source, p, 0, end)?
                .into_iter()
                .filter(|(o, _)| !skipped(*o))
                .collect();
            r.compared += want.len() as u64;
            if r.first_difference.is_none() {
                r.first_difference =
                    reconcile::first_difference(&format!("partition {p}"), &want, &got);
            }
        }
        Ok(r)
    })
    .await??;
    business(lab, &target_events(&target).await?, &mut r).await?;
    Ok(r)
}

/// The transfer ids of the segregated cluster's events (the checker's reader).
async fn target_events(target: &str) -> anyhow::Result<Vec<String>> {
    let target = target.to_string();
    let events = tokio::task::spawn_blocking(move || {
        crate::ledger::check::read_topic(&target, TRANSFERS_TOPIC)
    })
    .await??;
    Ok(events.into_iter().map(|e| e.id).collect())
}

/// Every restored event's transfer committed in US's database, and none twice.
async fn business(lab: &LabState, ids: &[String], r: &mut Reconciliation) -> anyhow::Result<()> {
    let db = crate::ledger::workload::connect(&lab.endpoints.postgres_us)
        .await
        .context("connect to US's database")?;
    let rows = db
        .query("SELECT id FROM ledger_transfers", &[])
        .await
        .context("read the committed transfers")?;
    let committed: HashSet<String> = rows.iter().map(|row| row.get(0)).collect();
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            r.duplicates += 1;
            r.first_business
                .get_or_insert_with(|| format!("{id}: restored twice"));
        } else if !committed.contains(id) {
            r.not_in_database += 1;
            r.first_business.get_or_insert_with(|| {
                format!("{id:?}: restored, but no such transfer in the database")
            });
        }
    }
    Ok(())
}

/// Writes `what` into the drill's directory for the evidence (the restore's stderr).
pub(super) fn keep(dir: &Path, name: &str, what: &str) {
    let _ = std::fs::write(dir.join(name), what);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ranges_a_restore_left_out() {
        let m = missing_ranges(
            "warning: damaged: log/0001.seg: checksum\n\
             warning: missing: ledger.transfers/2 offsets 40..90 (in no intact segment)\n\
             warning: missing: ledger.transfers/0 offsets 7..9 (in no intact segment)\n",
        );
        assert_eq!(m.get(&2), Some(&vec![(40, 90)]));
        assert_eq!(m.get(&0), Some(&vec![(7, 9)]));
        assert_eq!(m.len(), 2);
    }
}
