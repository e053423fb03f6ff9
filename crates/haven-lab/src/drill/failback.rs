//! The failback drill after its region outage: US comes back fenced under the load EU is
//! taking, what it wrote that EU never got is captured and reconciled under the lab's
//! `[failback]` policies, its databases are re-seeded and its topics rebuilt from EU's,
//! and (in the runner) a planned switchover brings the load back to US. Afterwards every
//! transfer EU lost must be in the capture (F1), every captured change must have a
//! verdict and an outcome (F2), and the two regions' topics must hold the same records in
//! the same order (F3).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use haven_engine::drill::{reconcile, InvariantResult, Step};
use haven_engine::events::LogObserver;
use haven_engine::failback::{self, Capture};
use haven_engine::repo::Repository;
use haven_kafka::ClusterConfig;
use tokio::sync::watch;

use super::steps::inject;
use super::DrillOptions;
use crate::control::LabState;
use crate::ledger::workload::now_ms;
use crate::TRANSFERS_TOPIC;

/// What the failback phase found.
#[derive(Default)]
pub(super) struct FailedBack {
    /// The stored capture and the transfer ids it holds.
    pub captured: Option<(String, HashSet<String>)>,
    pub invariants: Vec<InvariantResult>,
    pub err: Option<String>,
}

/// The lab's config and repository.
async fn open(lab: &LabState) -> anyhow::Result<(haven_engine::config::Config, Repository)> {
    let (cfg, _) = haven_engine::config::Config::load(Some(&lab.config))?;
    let store = haven_storage::Store::open(&cfg.repository("lab").url)?;
    let repo = Repository::open_or_create(store, Default::default()).await?;
    Ok((cfg, repo))
}

/// Captures US's divergence and stores it in the lab's repository.
pub(super) async fn capture(lab: &LabState) -> anyhow::Result<(Capture, String)> {
    let (cfg, repo) = open(lab).await?;
    let c = failback::capture::capture(&cfg, "us", &LogObserver).await?;
    let object = failback::store(&repo, &c).await?;
    Ok((c, object))
}

/// The ids of the transfers a capture holds (inserted into `ledger_transfers`).
pub(super) fn transfer_ids(c: &Capture) -> HashSet<String> {
    c.databases
        .iter()
        .flat_map(|d| &d.divergence.transactions)
        .flat_map(|t| &t.changes)
        .filter(|ch| ch.table == "ledger_transfers" && ch.op == haven_pg::divergence::Op::Insert)
        .filter_map(|ch| ch.new.iter().find(|col| col.name == "id")?.value.clone())
        .collect()
}

/// US back, captured, reconciled and re-seeded (the switchover back is the runner's).
pub(super) async fn fail_back(
    o: &DrillOptions,
    lab: &LabState,
    timeline: &mut Vec<Step>,
    say: &impl Fn(&str),
    stop: &watch::Receiver<bool>,
) -> FailedBack {
    let mut out = FailedBack::default();
    if let Err(e) = steps(o, lab, timeline, say, stop, &mut out).await {
        out.err = Some(format!("{e:#}"));
    }
    out
}

async fn steps(
    o: &DrillOptions,
    lab: &LabState,
    timeline: &mut Vec<Step>,
    say: &impl Fn(&str),
    stop: &watch::Receiver<bool>,
    out: &mut FailedBack,
) -> anyhow::Result<()> {
    let d = inject(&o.lab_dir, &["heal"]).await?;
    timeline.push(Step {
        at_ms: now_ms(),
        what: format!("US started again, fenced: {d}"),
    });
    say("US is back (fenced): capturing what it wrote that EU never got");
    // US's Postgres takes a moment to accept connections after its restart.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (c, object) = loop {
        match capture(lab).await {
            Ok(x) => break x,
            // Tried again until the deadline; the last error is the one reported.
            Err(_) if Instant::now() < deadline && !*stop.borrow() => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.context("failback capture")),
        }
    };
    let ids = transfer_ids(&c);
    timeline.push(Step {
        at_ms: now_ms(),
        what: format!(
            "failback capture stored: {object} ({} transactions, {} records)",
            c.summary.transactions, c.summary.records
        ),
    });
    out.captured = Some((object.clone(), ids));

    let (cfg, repo) = open(lab).await?;
    let (report, key) = failback::reconcile::reconcile(&cfg, &repo, &c, true)
        .await
        .context("failback reconcile --apply")?;
    let changes = c
        .databases
        .iter()
        .map(|d| d.divergence.transactions.len())
        .sum::<usize>();
    let records = c
        .kafka
        .iter()
        .flat_map(|k| &k.partitions)
        .map(|p| p.records.len())
        .sum::<usize>();
    let judged = report.transactions.len() == changes && report.records.len() == records;
    let outcomes = report
        .outcomes
        .iter()
        .map(|(o, n)| {
            let name = serde_json::to_value(o)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            format!("{n} {name}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let outcomes = if outcomes.is_empty() {
        "nothing to apply".to_string()
    } else {
        outcomes
    };
    timeline.push(Step {
        at_ms: now_ms(),
        what: format!("failback reconciled, applied by policy: {outcomes} ({key})"),
    });
    out.invariants.push(InvariantResult::new(
        "F2",
        "every captured change has a verdict and an outcome, in a stored report",
        Some(judged),
        format!(
            "{changes} transactions and {records} records captured; {} and {} judged; outcomes {outcomes}; report {key}",
            report.transactions.len(),
            report.records.len()
        ),
    ));

    say("re-seeding US from EU (databases, and topics rebuilt by the mirror)");
    // As an operator would: a re-run continues where the last one stopped (a cluster
    // that did not answer for a moment), at most three times.
    let mut tries = 0;
    let r = loop {
        tries += 1;
        match failback::reseed::reseed(&cfg, &repo, "us", Duration::from_secs(120), &LogObserver)
            .await
        {
            Ok(r) => break r,
            Err(e) if tries < 3 && !*stop.borrow() => {
                timeline.push(Step {
                    at_ms: now_ms(),
                    what: format!("failback reseed stopped ({e}); running it again"),
                });
            }
            Err(e) => return Err(anyhow::Error::from(e).context("failback reseed")),
        }
    };
    let rebuilt: i64 = r
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| p.records)
        .sum();
    timeline.push(Step {
        at_ms: now_ms(),
        what: format!(
            "US re-seeded: {} databases, {rebuilt} records rebuilt from EU's topics in {:.1} s",
            r.databases.len(),
            r.topics.iter().map(|t| t.seconds).sum::<f64>()
        ),
    });
    Ok(())
}

/// F3, once the load stopped and the switchover back happened: US's and EU's transfer
/// topics hold the same records (as their producers wrote them) in the same order, once
/// the mirror caught up.
pub(super) async fn topics_agree(lab: &LabState) -> anyhow::Result<InvariantResult> {
    let (Some(us), Some(eu)) = (
        lab.endpoints.kafka_us.clone(),
        lab.endpoints.kafka_eu.clone(),
    ) else {
        anyhow::bail!("the lab has no Kafka");
    };
    tokio::task::spawn_blocking(move || {
        let (us, eu) = (ClusterConfig::new(&us), ClusterConfig::new(&eu));
        let (ui, ei) = (us.inspector("haven-drill")?, eu.inspector("haven-drill")?);
        let partitions = crate::TRANSFERS_PARTITIONS;
        let high = |c: &haven_kafka::rdkafka::consumer::BaseConsumer, p: i32| {
            haven_kafka::watermarks(c, TRANSFERS_TOPIC, p, Duration::from_secs(10)).map(|w| w.1)
        };
        // The mirror US -> EU copies what US took last.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut behind = false;
            for p in 0..partitions {
                behind |= high(&ei, p)? < high(&ui, p)?;
            }
            if !behind || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let mut first = None;
        let mut compared = 0;
        for p in 0..partitions {
            let read = |c: &ClusterConfig, i| {
                reconcile::digests_with(
                    c,
                    TRANSFERS_TOPIC,
                    p,
                    (0, high(i, p)?),
                    reconcile::digest_own,
                )
            };
            let (a, b) = (read(&us, &ui)?, read(&eu, &ei)?);
            compared += a.len().max(b.len());
            if first.is_none() {
                first = reconcile::first_difference(&format!("{TRANSFERS_TOPIC}/{p}"), &b, &a);
            }
        }
        let mut r = InvariantResult::new(
            "F3",
            "after the failback, US's and EU's transfer topics hold the same records in the same order",
            Some(first.is_none() && compared > 0),
            format!("{compared} records compared in {partitions} partitions (EU's as the reference, US's as the copy)"),
        );
        r.first_example = first;
        Ok(r)
    })
    .await?
}
