//! Whether the company can survive losing a region now, from one [`Posture`] reading:
//! the findings (each named like the Prometheus alert that pages for the same condition)
//! and the verdict in words. Pure: tested on hand-made postures.

use serde::Serialize;

use super::{Objectives, Posture};

/// One condition an on-call engineer must act on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    /// The alert's name (`haven alerts` has a rule of the same name where a metric allows).
    pub alert: String,
    /// `critical` (a region lost now would cost more than the objectives allow) or
    /// `warning` (the evidence or a safeguard is missing).
    pub severity: &'static str,
    pub summary: String,
}

/// The readiness header: the figures first, then the verdict in words.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Readiness {
    /// `ready`, `degraded` or `not-ready`.
    pub verdict: &'static str,
    /// "ready", "degraded: ...", "not ready: ...".
    pub text: String,
    /// The worst lag now (mirrors into the standby, replicas, backups), seconds.
    pub rpo_now_s: f64,
    pub rpo_target_s: f64,
    /// RTO measured by the last drill that measured one, and its target.
    pub rto_last_drill_s: Option<f64>,
    pub rto_target_s: f64,
    /// The last drill: id, verdict, when (RFC 3339) and its age in seconds.
    pub last_drill: Option<DrillRef>,
    /// The last restore test (an audited `restore`): when (ms) and its age in seconds.
    pub last_restore_test_at: Option<i64>,
    pub last_restore_test_age_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DrillRef {
    pub id: String,
    pub scenario: String,
    pub verdict: String,
    pub started_at: String,
    pub age_s: Option<f64>,
}

const DAY_S: f64 = 86_400.0;

/// The findings of `p`, critical first.
pub fn findings(p: &Posture, now_ms: i64) -> Vec<Finding> {
    let o = &p.objectives;
    let rpo = o.rpo_s as f64;
    let mut out = Vec::new();
    let mut add = |alert: &str, severity, summary: String| {
        out.push(Finding {
            alert: alert.into(),
            severity,
            summary,
        })
    };
    if let Some(f) = &p.failover {
        if f.active.is_none() {
            add(
                "HavenNoActiveRegion",
                "critical",
                "no region holds the lease: writes are stopped everywhere".into(),
            );
        }
        if !f.members.is_empty() && !f.quorum {
            add(
                "HavenNoQuorum",
                "critical",
                "etcd has no quorum: no region can take or renew the lease".into(),
            );
        }
        for d in &f.databases {
            match (d.subscription_enabled, d.lag_seconds) {
                (Some(true), Some(s)) if s > rpo => add(
                    "HavenDatabaseRpoAboveTarget",
                    "critical",
                    format!(
                        "database {} in {} is {s:.1} s behind {} (RPO target {} s)",
                        d.database, d.region, d.source, o.rpo_s
                    ),
                ),
                (Some(true), _) => {}
                _ => add(
                    "HavenNoStandby",
                    "critical",
                    format!(
                        "database {} in {} does not replicate from {}: a failover has nothing current to promote",
                        d.database, d.region, d.source
                    ),
                ),
            }
        }
    }
    let mut over: Vec<String> = p
        .mirror_partitions()
        .filter(|(_, part)| part.lag_seconds > rpo)
        .map(|(m, part)| {
            format!(
                "mirror {m} {}/{} {:.0} s ({} records)",
                part.topic, part.partition, part.lag_seconds, part.lag_records
            )
        })
        .collect();
    if !over.is_empty() {
        let n = over.len();
        over.truncate(3);
        add(
            "HavenMirrorRpoAboveTarget",
            "critical",
            format!(
                "{n} mirrored partition(s) behind the RPO target of {} s: {}",
                o.rpo_s,
                over.join(", ")
            ),
        );
    }
    for b in &p.backups {
        let behind: Vec<_> = b
            .partitions
            .iter()
            .filter(|x| x.lag_seconds > rpo)
            .collect();
        if let Some(worst) = behind
            .iter()
            .max_by(|a, b| a.lag_seconds.total_cmp(&b.lag_seconds))
        {
            add(
                "HavenBackupRpoAboveTarget",
                "critical",
                format!(
                    "backup {}: {} partition(s) behind the RPO target of {} s, worst {}/{} {:.0} s",
                    b.job,
                    behind.len(),
                    o.rpo_s,
                    worst.topic,
                    worst.partition,
                    worst.lag_seconds
                ),
            );
        }
        let waiting: i64 = b.partitions.iter().map(|x| x.lag_records).sum();
        let since = b.last_flush_at.map(|t| (now_ms - t) as f64 / 1000.0);
        if waiting > 0 && since.is_none_or(|s| s > o.stall_s as f64) {
            add(
                "HavenBackupStalled",
                "critical",
                format!(
                    "backup {}: {waiting} records wait and nothing became durable for {}",
                    b.job,
                    since.map_or("ever".into(), |s| format!("{s:.0} s"))
                ),
            );
        }
        let lost: u64 = b.partitions.iter().map(|x| x.records_lost).sum();
        if lost > 0 {
            add(
                "HavenRecordsLost",
                "warning",
                format!(
                    "backup {}: the broker deleted {lost} records before the backup read them (gaps recorded)",
                    b.job
                ),
            );
        }
    }
    for r in &p.repositories {
        if !r.problems.is_empty() {
            add(
                "HavenRepositoryVerifyFailing",
                "critical",
                format!(
                    "repository {}: {} ({} problem(s))",
                    r.name,
                    r.problems[0],
                    r.problems.len()
                ),
            );
        }
    }
    match p.drills.first() {
        None => add(
            "HavenDrillOverdue",
            "warning",
            format!(
                "no drill on record: run `haven drill` at least every {} days",
                o.drill_max_age_days
            ),
        ),
        Some(d) => {
            if d.verdict != "PASS" {
                add(
                    "HavenDrillFailed",
                    "warning",
                    format!(
                        "the last drill {} failed: {}",
                        d.id,
                        d.failures.first().cloned().unwrap_or_default()
                    ),
                );
            }
            let last_pass = p.drills.iter().find(|d| d.verdict == "PASS");
            let age = last_pass.and_then(|d| d.age_s(now_ms));
            if age.is_none_or(|a| a > o.drill_max_age_days as f64 * DAY_S) {
                add(
                    "HavenDrillOverdue",
                    "warning",
                    format!("no passing drill in the last {} days", o.drill_max_age_days),
                );
            }
        }
    }
    let restore_age = p.last_restore_test_at.map(|t| (now_ms - t) as f64 / 1000.0);
    if restore_age.is_none_or(|a| a > o.restore_test_max_age_days as f64 * DAY_S) {
        add(
            "HavenRestoreTestOverdue",
            "warning",
            format!(
                "no restore tested in the last {} days (`haven restore` records one)",
                o.restore_test_max_age_days
            ),
        );
    }
    if !p.unknown.is_empty() {
        add(
            "HavenPartUnreadable",
            "warning",
            format!(
                "{} part(s) could not be read: {}",
                p.unknown.len(),
                p.unknown[0]
            ),
        );
    }
    out.sort_by_key(|f| f.severity != "critical");
    out
}

/// The header of `p` given its `findings`.
pub fn readiness(p: &Posture, findings: &[Finding], now_ms: i64) -> Readiness {
    let o: &Objectives = &p.objectives;
    let critical: Vec<&str> = findings
        .iter()
        .filter(|f| f.severity == "critical")
        .map(|f| f.summary.as_str())
        .collect();
    let warnings: Vec<&str> = findings
        .iter()
        .filter(|f| f.severity != "critical")
        .map(|f| f.summary.as_str())
        .collect();
    let (verdict, text) = if !critical.is_empty() {
        ("not-ready", format!("not ready: {}", critical.join("; ")))
    } else if !warnings.is_empty() {
        ("degraded", format!("degraded: {}", warnings.join("; ")))
    } else {
        ("ready", "ready".to_string())
    };
    let last = p.drills.first();
    Readiness {
        verdict,
        text,
        rpo_now_s: p.rpo_now_s(),
        rpo_target_s: o.rpo_s as f64,
        rto_last_drill_s: p.drills.iter().find_map(|d| d.rto_s),
        rto_target_s: o.rto_s as f64,
        last_drill: last.map(|d| DrillRef {
            id: d.id.clone(),
            scenario: d.scenario.clone(),
            verdict: d.verdict.clone(),
            started_at: d.started_at.clone(),
            age_s: d.age_s(now_ms),
        }),
        last_restore_test_at: p.last_restore_test_at,
        last_restore_test_age_s: p
            .last_restore_test_at
            .map(|t| (now_ms - t).max(0) as f64 / 1000.0),
    }
}
