//! Prometheus alerting rules over the metrics Haven's processes export (`/metrics` of
//! `backup`, `mirror` and `agent`): one rule per condition an on-call engineer must act
//! on, each with a summary and a runbook line. `haven alerts` prints them; every face
//! (CLI, API) takes them from here.
//!
//! Only metrics Haven exports today are used: a rule over a series nothing exports would
//! never fire, and a silent alert is worse than none.

use serde::Serialize;

/// What the rules compare against.
#[derive(Debug, Clone, Serialize)]
pub struct Thresholds {
    /// RPO target in seconds (the seed's: under a minute).
    pub rpo_s: u64,
    /// How long a backup or mirror may make no progress while it has lag.
    pub stall_s: u64,
    /// How long a condition must hold before its alert fires.
    pub for_s: u64,
    /// A passing drill at least this often (`[objectives] drill_max_age_days`).
    pub drill_max_age_days: u64,
    /// A tested restore at least this often.
    pub restore_test_max_age_days: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            rpo_s: 60,
            stall_s: 300,
            for_s: 60,
            drill_max_age_days: 90,
            restore_test_max_age_days: 30,
        }
    }
}

impl Thresholds {
    /// The thresholds of `[objectives]`.
    pub fn of(o: &crate::posture::Objectives) -> Self {
        Thresholds {
            rpo_s: o.rpo_s,
            stall_s: o.stall_s,
            drill_max_age_days: o.drill_max_age_days,
            restore_test_max_age_days: o.restore_test_max_age_days,
            ..Default::default()
        }
    }
}

/// One alerting rule.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub alert: String,
    pub expr: String,
    /// Seconds the expression must hold (0: at once).
    pub for_s: u64,
    /// `critical` (pages) or `warning` (a ticket).
    pub severity: &'static str,
    pub summary: String,
    pub runbook: String,
}

/// The rules, for `t`.
pub fn rules(t: &Thresholds) -> Vec<Rule> {
    let (rpo, stall, for_s) = (t.rpo_s, t.stall_s, t.for_s);
    let (drill_days, restore_days) = (t.drill_max_age_days, t.restore_test_max_age_days);
    let rule =
        |alert: &str, expr: String, for_s: u64, severity, summary: String, runbook: &str| Rule {
            alert: alert.into(),
            expr,
            for_s,
            severity,
            summary,
            runbook: runbook.into(),
        };
    vec![
        rule(
            "HavenBackupRpoAboveTarget",
            format!("max by (instance, topic, partition) (haven_backup_lag_seconds) > {rpo}"),
            for_s,
            "critical",
            format!("Backup of {{{{ $labels.topic }}}}/{{{{ $labels.partition }}}} is {{{{ $value | humanizeDuration }}}} behind (RPO target {rpo} s)"),
            "A region lost now would lose this much. Check the backup's log and /metrics: broker reachable, repository writable (`haven verify`), flush interval; restart the job if it is stuck (it resumes exactly).",
        ),
        rule(
            "HavenMirrorRpoAboveTarget",
            format!("max by (instance, topic, partition) (haven_mirror_lag_seconds) > {rpo}"),
            for_s,
            "critical",
            format!("Mirror of {{{{ $labels.topic }}}}/{{{{ $labels.partition }}}} is {{{{ $value | humanizeDuration }}}} behind (RPO target {rpo} s)"),
            "A failover now would lose this much (`haven failover status` lists the records). Check the link between the regions and the mirror's log; `haven mirror status` shows the partitions behind.",
        ),
        rule(
            "HavenBackupStalled",
            format!(
                "(time() - max by (instance) (haven_backup_last_durable_timestamp_seconds) > {stall}) \
                 and on (instance) (sum by (instance) (haven_backup_lag_records) > 0)"
            ),
            0,
            "critical",
            format!("A backup has made nothing durable for over {stall} s while records wait"),
            "The repository or the broker does not answer. Check the job's log for Retrying events; `haven verify` the repository; the job resumes exactly where it stopped once they answer.",
        ),
        rule(
            "HavenMirrorStalled",
            format!(
                "(sum by (instance) (rate(haven_mirror_records_total[{stall}s])) == 0) \
                 and on (instance) (sum by (instance) (haven_mirror_lag_records) > 0)"
            ),
            stall,
            "critical",
            format!("A mirror has copied nothing for {stall} s while records wait"),
            "Check the mirror's log: the target refusing writes, the link cut, or the guard stopped it because its target became the active region (then start the reverse mirror).",
        ),
        rule(
            "HavenRecordsLost",
            "increase(haven_backup_records_lost_total[15m]) > 0".into(),
            0,
            "critical",
            "{{ $labels.topic }}/{{ $labels.partition }}: the broker deleted {{ $value }} records before the backup read them".into(),
            "Retention on the topic is shorter than the backup's lag: raise retention.ms or fix the backup's lag; the gap is recorded in the repository (`haven ls`).",
        ),
        rule(
            "HavenNoActiveRegion",
            "max(haven_failover_lease_holder) < 1".into(),
            30,
            "critical",
            "No region holds the region lease: writes are stopped everywhere".into(),
            "`haven failover status`: etcd quorum lost (writes stop by design), or the active region's agent down. Runbook: README, Failover and switchover.",
        ),
        rule(
            "HavenAgentMissing",
            "count(haven_failover_epoch) < 2 or absent(haven_failover_epoch)".into(),
            120,
            "critical",
            "Fewer than two region agents report: no standby can take over".into(),
            "Start the missing region's `haven agent` (systemd unit); until then a failover has nowhere to go.",
        ),
        rule(
            "HavenRegionChanged",
            "changes(max(haven_failover_epoch)[15m:30s]) > 0".into(),
            0,
            "warning",
            "The fencing epoch moved: a switchover or failover happened in the last 15 minutes".into(),
            "Read the report (`haven failover status`, the audit log in the state directory); after an unplanned failover keep the old region fenced until its divergence is exported.",
        ),
        rule(
            "HavenDatabaseRpoAboveTarget",
            format!("max by (database, region, source) (haven_database_lag_seconds) > {rpo}"),
            for_s,
            "critical",
            format!("Replica {{{{ $labels.database }}}} in {{{{ $labels.region }}}} is {{{{ $value | humanizeDuration }}}} behind {{{{ $labels.source }}}} (RPO target {rpo} s)"),
            "A failover now would lose this much of the database. Check the subscription (`haven failover status`), the link between the regions and the source's replication slot.",
        ),
        rule(
            "HavenDrillFailed",
            "min by (scenario) (haven_drill_last_pass) < 1".into(),
            0,
            "warning",
            "The last {{ $labels.scenario }} drill failed".into(),
            "Read its report (dashboard, Drills; or `haven drill` output): fix what failed and run the drill again; until then the failover it rehearses is not proven.",
        ),
        rule(
            "HavenDrillOverdue",
            format!("time() - max(haven_drill_last_pass_timestamp_seconds) > {}", drill_days * 86_400),
            0,
            "warning",
            format!("No drill has passed in the last {drill_days} days"),
            "Schedule one (`haven drill --scenario switchover` in a quiet hour): auditors ask for a tested failover at least this often.",
        ),
        rule(
            "HavenRestoreTestOverdue",
            format!("time() - max(haven_restore_test_last_timestamp_seconds) > {}", restore_days * 86_400),
            0,
            "warning",
            format!("No restore has been tested in the last {restore_days} days"),
            "Restore a recent window into a scratch cluster (`haven restore`, which records the test in the audit log) and compare it.",
        ),
        rule(
            "HavenRepositoryVerifyFailing",
            "max by (repository) (haven_repository_problems) > 0".into(),
            0,
            "critical",
            "Repository {{ $labels.repository }} has {{ $value }} integrity problem(s)".into(),
            "Run `haven verify` and `haven audit verify` on it: a broken segment or audit chain means data or evidence was changed or lost; restore from a copy before relying on it.",
        ),
        rule(
            "HavenPostureStale",
            "time() - max(haven_posture_reading_timestamp_seconds) > 300".into(),
            60,
            "warning",
            "The dashboard's posture reading is over 5 minutes old".into(),
            "`haven serve` cannot read the clusters, etcd or the repositories in time: check its log; what the dashboard shows is stale until then.",
        ),
        rule(
            "HavenGroupSyncRefused",
            "increase(haven_mirror_group_sync_refusals_total[15m]) > 0".into(),
            0,
            "warning",
            "Consumer-group offsets were not synced to the target (group active there)".into(),
            "A consumer group runs on the standby: its offsets there are its own. Stop it, or accept that a failover resumes it from where it is.",
        ),
    ]
}

/// A YAML double-quoted scalar (JSON's escaping is valid YAML).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The rules as a Prometheus rule file (`groups:`), ready for `promtool check rules`.
pub fn to_yaml(group: &str, rules: &[Rule]) -> String {
    let mut o = String::from("groups:\n");
    o.push_str(&format!("  - name: {}\n    rules:\n", quoted(group)));
    for r in rules {
        o.push_str(&format!("      - alert: {}\n", r.alert));
        o.push_str(&format!("        expr: {}\n", quoted(&r.expr)));
        if r.for_s > 0 {
            o.push_str(&format!("        for: {}s\n", r.for_s));
        }
        o.push_str(&format!(
            "        labels:\n          severity: {}\n",
            r.severity
        ));
        o.push_str(&format!(
            "        annotations:\n          summary: {}\n          runbook: {}\n",
            quoted(&r.summary),
            quoted(&r.runbook)
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_is_named_once_and_uses_the_thresholds() {
        let t = Thresholds {
            rpo_s: 45,
            stall_s: 120,
            for_s: 30,
            drill_max_age_days: 7,
            restore_test_max_age_days: 3,
        };
        let rs = rules(&t);
        let mut names: Vec<&str> = rs.iter().map(|r| r.alert.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), rs.len());
        let backup = rs
            .iter()
            .find(|r| r.alert == "HavenBackupRpoAboveTarget")
            .unwrap();
        assert!(backup.expr.ends_with("> 45"), "{}", backup.expr);
        assert_eq!(backup.for_s, 30);
        let y = to_yaml("haven", &rs);
        assert!(y.contains("for: 120s"), "{y}");
        assert!(y.contains("\"{{ $labels.topic }}/"), "{y}");
        let drill = rs.iter().find(|r| r.alert == "HavenDrillOverdue").unwrap();
        assert!(
            drill.expr.ends_with(&format!("> {}", 7 * 86_400)),
            "{}",
            drill.expr
        );
    }

    /// A rule over a series nothing exports never fires: every `haven_*` name in an
    /// expression is a job's (`haven_backup_*`, `haven_mirror_*`, `haven_failover_*`, fired
    /// on their series by the promtool test) or one the posture's metrics write.
    #[test]
    fn rules_use_only_exported_metrics() {
        let re = regex::Regex::new(r"haven_[a-z_]+").unwrap();
        let jobs = ["haven_backup_", "haven_mirror_", "haven_failover_"];
        for r in rules(&Thresholds::default()) {
            for m in re.find_iter(&r.expr) {
                let name = m.as_str();
                assert!(
                    crate::posture::metrics::NAMES.contains(&name)
                        || jobs.iter().any(|j| name.starts_with(j)),
                    "{}: {name} is not exported",
                    r.alert
                );
            }
        }
    }
}
