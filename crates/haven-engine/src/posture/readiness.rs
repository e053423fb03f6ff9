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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::status::PartitionStatus;
    use crate::posture::{BackupPartition, BackupRow, DrillSummary, MirrorRow, Objectives};

    const NOW: i64 = 1_800_000_000_000;

    fn at(ms_ago: i64) -> String {
        chrono::DateTime::from_timestamp_millis(NOW - ms_ago)
            .unwrap()
            .to_rfc3339()
    }

    fn drill(verdict: &str, days_ago: i64) -> DrillSummary {
        DrillSummary {
            id: format!("switchover-{days_ago}"),
            scenario: "switchover".into(),
            verdict: verdict.into(),
            started_at: at(days_ago * 86_400_000),
            rto_s: Some(4.5),
            lost: Some(0),
            failures: if verdict == "PASS" {
                vec![]
            } else {
                vec!["RTO 80.0 s above the objective 60 s".into()]
            },
            repository: "main".into(),
        }
    }

    /// Everything in order: a passing drill a week ago, a restore tested yesterday.
    fn healthy() -> Posture {
        Posture {
            taken_at: NOW,
            took_ms: 10,
            objectives: Objectives::default(),
            failover: None,
            mirrors: vec![MirrorRow {
                name: "us-to-eu".into(),
                from: "us".into(),
                to: "eu".into(),
                into_standby: true,
                partitions: vec![part(0, 0, 0.0)],
                error: None,
            }],
            backups: vec![BackupRow {
                job: "orders".into(),
                cluster: "us".into(),
                repository: "main".into(),
                topics: "orders".into(),
                last_flush_at: Some(NOW - 1000),
                partitions: vec![BackupPartition {
                    topic: "orders".into(),
                    partition: 0,
                    durable: 10,
                    high_watermark: 10,
                    lag_records: 0,
                    lag_seconds: 0.0,
                    records_lost: 0,
                }],
                error: None,
            }],
            repositories: vec![],
            drills: vec![drill("PASS", 7)],
            last_restore_test_at: Some(NOW - 86_400_000),
            unknown: vec![],
            findings: vec![],
            readiness: Readiness::default(),
        }
    }

    fn part(p: i32, lag_records: i64, lag_seconds: f64) -> PartitionStatus {
        PartitionStatus {
            topic: "orders".into(),
            partition: p,
            target_topic: "orders".into(),
            source_high: 100,
            mirrored_to: 100 - lag_records,
            lag_records,
            lag_seconds,
            at_risk: None,
            position_from_checkpoint: false,
        }
    }

    fn judge(p: &mut Posture) -> Vec<String> {
        p.findings = findings(p, NOW);
        p.readiness = readiness(p, &p.findings, NOW);
        let mut names: Vec<String> = p.findings.iter().map(|f| f.alert.clone()).collect();
        names.sort();
        names
    }

    #[test]
    fn healthy_is_ready() {
        let mut p = healthy();
        assert!(judge(&mut p).is_empty(), "{:?}", p.findings);
        assert_eq!(p.readiness.verdict, "ready");
        assert_eq!(p.readiness.text, "ready");
        assert_eq!(p.readiness.rto_last_drill_s, Some(4.5));
        assert_eq!(p.readiness.last_restore_test_age_s, Some(86_400.0));
    }

    #[test]
    fn a_mirror_behind_the_target_is_not_ready_and_named() {
        let mut p = healthy();
        p.mirrors[0].partitions.push(part(1, 42, 75.0));
        assert_eq!(judge(&mut p), vec!["HavenMirrorRpoAboveTarget"]);
        assert_eq!(p.readiness.verdict, "not-ready");
        assert!(
            p.readiness
                .text
                .starts_with("not ready: 1 mirrored partition(s)")
                && p.readiness
                    .text
                    .contains("mirror us-to-eu orders/1 75 s (42 records)"),
            "{}",
            p.readiness.text
        );
        assert_eq!(p.readiness.rpo_now_s, 75.0);
        // Exactly at the target is still within it.
        let mut p = healthy();
        p.mirrors[0].partitions[0].lag_seconds = 60.0;
        assert!(judge(&mut p).is_empty());
    }

    #[test]
    fn missing_evidence_degrades() {
        let mut p = healthy();
        p.drills = vec![drill("FAIL", 1), drill("PASS", 100)];
        p.last_restore_test_at = None;
        assert_eq!(
            judge(&mut p),
            vec![
                "HavenDrillFailed",
                "HavenDrillOverdue",
                "HavenRestoreTestOverdue"
            ]
        );
        assert_eq!(p.readiness.verdict, "degraded");
        assert!(
            p.readiness.text.contains("RTO 80.0 s above"),
            "{}",
            p.readiness.text
        );
        let mut p = healthy();
        p.drills.clear();
        assert_eq!(judge(&mut p), vec!["HavenDrillOverdue"]);
        assert!(p.readiness.text.contains("no drill on record"));
    }

    #[test]
    fn a_backup_with_waiting_records_and_no_flush_is_stalled() {
        let mut p = healthy();
        p.backups[0].partitions[0].lag_records = 5;
        p.backups[0].partitions[0].lag_seconds = 2.0;
        // Flushed a second ago: copying, not stalled.
        assert!(judge(&mut p).is_empty());
        p.backups[0].last_flush_at = Some(NOW - 301_000);
        assert_eq!(judge(&mut p), vec!["HavenBackupStalled"]);
        p.backups[0].last_flush_at = None;
        assert_eq!(judge(&mut p), vec!["HavenBackupStalled"]);
        assert!(
            p.readiness.text.contains("for ever"),
            "{}",
            p.readiness.text
        );
        p.backups[0].last_flush_at = Some(NOW);
        p.backups[0].partitions[0].records_lost = 3;
        assert_eq!(judge(&mut p), vec!["HavenRecordsLost"]);
    }

    #[test]
    fn unreadable_parts_and_broken_repositories_are_not_hidden() {
        let mut p = healthy();
        p.unknown.push("mirror us-to-eu: broker down".into());
        assert_eq!(judge(&mut p), vec!["HavenPartUnreadable"]);
        assert_eq!(p.readiness.verdict, "degraded");
        p.repositories.push(crate::posture::RepositoryRow {
            name: "main".into(),
            url: "file:///x".into(),
            segments: 3,
            last_segment_at: None,
            audit_entries: 2,
            audit_last_at: None,
            problems: vec![
                "audit/chain/000000000002.json: names a predecessor that is not entry 1".into(),
            ],
            compliance: Default::default(),
        });
        let names = judge(&mut p);
        assert!(
            names.iter().any(|n| n == "HavenRepositoryVerifyFailing"),
            "{names:?}"
        );
        assert_eq!(p.readiness.verdict, "not-ready");
        // Critical first.
        assert_eq!(p.findings[0].severity, "critical");
    }
}
