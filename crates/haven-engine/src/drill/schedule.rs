//! Scheduled restore tests (`[drills.NAME]`): a non-disruptive drill that restores a
//! repository's backup into a segregated cluster (never a region's), checks every chunk
//! first, and reconciles the restored records with the source cluster record by record.
//! The agent of the section's region runs each when it is due (`every_s` after the last
//! one stored in the repository); `haven drill schedule --run NAME` runs one now. The
//! report is drill evidence like any other (stored create-only, its hash in the audit
//! chain), and the restore itself is audited, so the dashboard's restore-test age sees it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::reconcile::{digests, first_difference};
use super::{config_hash, DrillReport, InvariantResult, Measured, Objectives, Step, Verdict};
use crate::config::Config;
use crate::events::{Event, Observer};
use crate::restore::{self, RestoreOptions};
use crate::{blocking, Error, Result};
use haven_kafka::ClusterConfig;

/// One scheduled restore test.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RestoreTestSection {
    /// The region whose agent runs it.
    pub region: String,
    /// The repository restored (a name from `[repositories]`).
    pub repository: String,
    /// The cluster the backup was taken from: the restore is reconciled with it.
    pub source: String,
    /// The segregated cluster restored into (a name from `[clusters]`, not a region's).
    /// Each run writes new topics there, named `haven-restore-test-<time>.<topic>`.
    pub target: String,
    /// Topics restored: a regular expression of whole names.
    #[serde(default = "all_topics")]
    pub topics: String,
    /// Seconds between two runs (default: a day).
    #[serde(default = "a_day")]
    pub every_s: u64,
    /// The restore and reconciliation must end within this (seconds; default 15 min,
    /// the seed's RTO).
    #[serde(default = "fifteen_minutes")]
    pub rto_s: u64,
    /// Keep each run's restored topics in the target (default: deleted once
    /// reconciled, whatever the verdict, so the segregated cluster does not fill up).
    #[serde(default)]
    pub keep_topics: bool,
}

fn all_topics() -> String {
    ".*".into()
}
fn a_day() -> u64 {
    86_400
}
fn fifteen_minutes() -> u64 {
    900
}

/// The scenario name of a restore test's reports.
pub const SCENARIO: &str = "restore-test";

impl RestoreTestSection {
    /// Checks the section against the rest of the config: the target must be a cluster
    /// no region writes to (fail closed: a restore test never touches production).
    pub fn validate(&self, name: &str, cfg: &Config) -> std::result::Result<(), (String, String)> {
        let key = |f: &str| format!("drills.{name}.{f}");
        if !cfg.repositories.contains_key(&self.repository) {
            return Err((
                key("repository"),
                format!(
                    "{:?} is not a repository of [repositories]",
                    self.repository
                ),
            ));
        }
        for (f, c) in [("source", &self.source), ("target", &self.target)] {
            if !cfg.clusters.contains_key(c) {
                return Err((key(f), format!("{c:?} is not a cluster of [clusters]")));
            }
        }
        if self.target == self.source {
            return Err((
                key("target"),
                "the target is the source: name a segregated cluster".into(),
            ));
        }
        if let Some((r, _)) = cfg.regions.iter().find(|(_, r)| r.cluster == self.target) {
            return Err((
                key("target"),
                format!(
                    "{:?} is region {r}'s cluster: a restore test writes only to a segregated cluster",
                    self.target
                ),
            ));
        }
        if !cfg.regions.is_empty() && !cfg.regions.contains_key(&self.region) {
            return Err((
                key("region"),
                format!("{:?} is not a region of [regions]", self.region),
            ));
        }
        if let Err(e) = crate::backup::topic_regex(&self.topics) {
            return Err((key("topics"), e.to_string()));
        }
        if self.every_s < 60 {
            return Err((
                key("every_s"),
                format!("{} s is too often: at least 60", self.every_s),
            ));
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Runs the restore test `name` now: its report, judged and stored in the repository.
pub async fn run(
    cfg: &Config,
    name: &str,
    s: &RestoreTestSection,
    operator: &str,
    observer: &dyn Observer,
) -> Result<DrillReport> {
    let repo = crate::repo::open_configured(&cfg.repository(&s.repository), None, false).await?;
    let started = chrono::Utc::now();
    let clock = Instant::now();
    let mut timeline = vec![Step {
        at_ms: now_ms(),
        what: format!(
            "objectives fixed: restored and reconciled within {} s, every chunk readable, \
             every restored record equal to the source's",
            s.rto_s
        ),
    }];
    let mut invariants = Vec::new();
    let mut not_measured = Vec::new();
    let mut rto = None;
    match restore_and_compare(cfg, &repo, s, &started, &mut timeline).await {
        Ok((r0, r1)) => {
            rto = Some(clock.elapsed().as_secs_f64());
            invariants.push(r0);
            invariants.extend(r1);
        }
        Err(e) => not_measured.push(format!("the restore test could not run: {e}")),
    }
    let mut report = DrillReport {
        id: format!("{SCENARIO}-{name}-{}", started.format("%Y%m%dT%H%M%SZ")),
        scenario: SCENARIO.into(),
        description: format!(
            "Scheduled restore test {name}: repository {} restored into the segregated cluster {} \
             (topics {}), every chunk checked first, reconciled record by record with {}.",
            s.repository, s.target, s.topics, s.source
        ),
        started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        operator: operator.into(),
        haven_version: env!("CARGO_PKG_VERSION").into(),
        config_sha256: config_hash(&serde_json::to_vec(cfg).unwrap_or_default()),
        objectives: Objectives {
            rto_s: s.rto_s as f64,
            rpo_s: 0.0,
            max_lost: None,
            max_two_writable: 0,
            workload: false,
        },
        stop_conditions: vec![
            "a chunk that cannot be read: nothing is written, FAIL naming it".into(),
            "a target that is a region's cluster: refused when the config is read".into(),
        ],
        measured: Measured {
            rto_s: rto,
            ..Measured::default()
        },
        invariants,
        not_measured,
        failures: vec![],
        timeline,
        seconds: vec![],
        verdict: Verdict::Fail,
    };
    report.judge();
    super::store(&repo, &report).await?;
    if report.verdict == Verdict::Fail {
        observer.event(&Event::Retrying {
            what: format!("restore test {name} ({})", report.id),
            error: format!("FAIL: {}", report.failures.join("; ")),
        });
    }
    Ok(report)
}

/// The restore and the comparison: R0 (every chunk readable) and R1 (record by record).
async fn restore_and_compare(
    cfg: &Config,
    repo: &crate::repo::Repository,
    s: &RestoreTestSection,
    started: &chrono::DateTime<chrono::Utc>,
    timeline: &mut Vec<Step>,
) -> Result<(InvariantResult, Vec<InvariantResult>)> {
    let state = repo.load_state_for_reading(false).await?;
    let target = cfg.cluster(&s.target).client_config()?;
    let source = cfg.cluster(&s.source).client_config()?;
    let mut opts = RestoreOptions::new(target.clone(), crate::backup::topic_regex(&s.topics)?);
    opts.prefix = format!("haven-restore-test-{}.", started.format("%Y%m%dt%H%M%S"));
    let plan = restore::plan(repo, &state, &opts).await?;
    if plan.partitions.is_empty() {
        return Err(Error::Input(format!(
            "no record of the repository matches {:?}",
            s.topics
        )));
    }
    let damaged = restore::preflight(repo, &state, &plan).await?;
    let r0 = InvariantResult::new(
        "R0",
        "every chunk of the backup restored is readable (checksums, keys)",
        Some(damaged.is_empty()),
        match damaged.first() {
            None => format!("{} partitions checked", plan.partitions.len()),
            Some(d) => format!(
                "{} damaged chunk(s), first {} chunk {}: {}",
                damaged.len(),
                d.object,
                d.ordinal,
                d.what
            ),
        },
    );
    if !damaged.is_empty() {
        timeline.push(Step {
            at_ms: now_ms(),
            what: "damaged chunks found: nothing restored".into(),
        });
        return Ok((r0, vec![]));
    }
    let restored = restore::run(
        repo,
        &state,
        &plan,
        &target,
        &crate::events::Collect::default(),
        &[],
    )
    .await;
    let compared = match restored {
        Ok(report) => compare(s, &plan, &source, &target, report, timeline).await,
        Err(e) => Err(e),
    };
    if !s.keep_topics {
        let topics: std::collections::BTreeSet<String> = plan
            .partitions
            .iter()
            .filter(|p| p.target_partition.is_some())
            .map(|p| p.target_topic.clone())
            .collect();
        let topics: Vec<String> = topics.into_iter().collect();
        let deleted = haven_kafka::delete_topics_checked(&target, &topics).await;
        timeline.push(Step {
            at_ms: now_ms(),
            what: match deleted {
                Ok(others) if others.is_empty() => {
                    format!("the {} restored topics deleted from {}", topics.len(), s.target)
                }
                Ok(others) => format!(
                    "the {} restored topics deleted from {}; the broker deleted {} other \
                     topics with them ({}), which Haven did not ask for (tansu 0.6 does this)",
                    topics.len(),
                    s.target,
                    others.len(),
                    others.join(", ")
                ),
                Err(e) => format!(
                    "the restored topics could not be deleted from {} ({e}): delete {}* there by hand",
                    s.target, opts.prefix
                ),
            },
        });
    }
    Ok((r0, compared?))
}

/// R1: the restore compared with the source record by record.
async fn compare(
    s: &RestoreTestSection,
    plan: &restore::RestorePlan,
    source: &ClusterConfig,
    target: &ClusterConfig,
    report: restore::RestoreReport,
    timeline: &mut Vec<Step>,
) -> Result<Vec<InvariantResult>> {
    let (source, target) = (source.clone(), target.clone());
    timeline.push(Step {
        at_ms: now_ms(),
        what: format!(
            "restored {} records into {} in {:.1} s",
            report.records, s.target, report.seconds
        ),
    });
    // Record by record: the source's range of each planned partition against what the
    // restore wrote. A source whose retention has since dropped the oldest offsets is
    // compared on what it still holds (the restored records' tail).
    let plan2 = plan.clone();
    let (compared, differences, trimmed) = blocking(move || {
        let (mut compared, mut differences, mut trimmed) = (0u64, Vec::new(), 0u64);
        let inspector = source.inspector("haven-restore-test")?;
        for pp in &plan2.partitions {
            let Some(tp) = pp.target_partition else {
                continue;
            };
            let (low, _) = haven_kafka::watermarks(
                &inspector,
                &pp.source_topic,
                pp.partition,
                Duration::from_secs(10),
            )?;
            let want = digests(
                &source,
                &pp.source_topic,
                pp.partition,
                pp.first_offset.max(low),
                pp.last_offset + 1,
            )?;
            let mut got = digests(
                &target,
                &pp.target_topic,
                tp,
                pp.target_start,
                pp.target_start + pp.records as i64,
            )?;
            if low > pp.first_offset && got.len() > want.len() {
                trimmed += (got.len() - want.len()) as u64;
                got.drain(..got.len() - want.len());
            }
            compared += want.len() as u64;
            if let Some(d) = first_difference(
                &format!("{}/{}", pp.source_topic, pp.partition),
                &want,
                &got,
            ) {
                differences.push(d);
            }
        }
        Ok((compared, differences, trimmed))
    })
    .await?;
    timeline.push(Step {
        at_ms: now_ms(),
        what: format!("reconciled {compared} records with {}", s.source),
    });
    let mut r1 = InvariantResult::new(
        "R1",
        "the restore equals the source record by record (key, value, headers, timestamp, order)",
        Some(differences.is_empty() && compared > 0),
        format!(
            "{} records restored into {} partitions, {compared} compared with {}{}; {} partition(s) differ",
            report.records,
            plan.partitions.len(),
            s.source,
            if trimmed > 0 {
                format!(" ({trimmed} older than the source's retention not compared)")
            } else {
                String::new()
            },
            differences.len()
        ),
    );
    r1.first_example = differences.first().cloned();
    Ok(vec![r1])
}

/// When each restore test of `region` last ran (from the reports stored in its
/// repository), and when it is next due.
pub async fn due(
    cfg: &Config,
    region: Option<&str>,
) -> Result<BTreeMap<String, (Option<DrillReport>, chrono::DateTime<chrono::Utc>)>> {
    let mut out = BTreeMap::new();
    for (name, s) in &cfg.drills {
        if region.is_some_and(|r| r != s.region) {
            continue;
        }
        let repo =
            crate::repo::open_configured(&cfg.repository(&s.repository), None, false).await?;
        let prefix = format!("{SCENARIO}-{name}-");
        let last = super::stored(&repo)
            .await?
            .into_iter()
            .filter(|r| r.id.starts_with(&prefix))
            .max_by(|a, b| a.started_at.cmp(&b.started_at));
        let next = match &last {
            Some(r) => {
                chrono::DateTime::parse_from_rfc3339(&r.started_at)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .unwrap_or_else(|_| chrono::Utc::now())
                    + chrono::Duration::seconds(s.every_s as i64)
            }
            None => chrono::Utc::now(),
        };
        out.insert(name.clone(), (last, next));
    }
    Ok(out)
}

/// The agent's loop: runs each restore test of `region` when it is due, until `stop`.
/// A failure to run one is logged and retried at the next check (every minute).
pub async fn run_due(
    cfg: &Config,
    region: &str,
    operator: &str,
    observer: &dyn Observer,
    mut stop: watch::Receiver<bool>,
) {
    if !cfg.drills.values().any(|s| s.region == region) {
        return;
    }
    loop {
        match due(cfg, Some(region)).await {
            Ok(all) => {
                for (name, (_, next)) in all {
                    if next > chrono::Utc::now() || *stop.borrow() {
                        continue;
                    }
                    let Some(s) = cfg.drills.get(&name) else {
                        continue;
                    };
                    match run(cfg, &name, s, operator, observer).await {
                        Ok(r) => tracing::info!("restore test {name}: {:?} ({})", r.verdict, r.id),
                        Err(e) => observer.event(&Event::Retrying {
                            what: format!("restore test {name}"),
                            error: e.to_string(),
                        }),
                    }
                }
            }
            Err(e) => observer.event(&Event::Retrying {
                what: "read when the restore tests last ran".into(),
                error: e.to_string(),
            }),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
