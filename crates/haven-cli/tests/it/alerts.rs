//! `haven alerts`: the rule file Prometheus' own tool accepts, and rules that fire on the
//! series Haven exports (checked with `promtool test rules`, Prometheus' rule evaluator,
//! on synthetic series over time).

use crate::{code, haven, stderr};

fn promtool() -> std::path::PathBuf {
    testbed::find_tool(
        "promtool",
        "apt-get install --no-install-recommends prometheus",
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs promtool in `dir`; fails the test with its output unless it succeeds.
fn promtool_ok(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rules_in(dir: &std::path::Path, args: &[&str]) {
    let mut all = vec!["alerts"];
    all.extend_from_slice(args);
    let out = haven(&all);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    std::fs::write(dir.join("rules.yml"), &out.stdout).unwrap();
}

/// Writes a promtool test file, `RUNBOOK(Alert)` replaced by that rule's runbook line as
/// `haven --json alerts` gives it (the summaries are spelled out: they are templates).
fn write_test(path: std::path::PathBuf, text: &str) {
    let out = haven(&["--json", "alerts"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut text = text.to_string();
    for r in v["rules"].as_array().unwrap() {
        let alert = r["alert"].as_str().unwrap();
        text = text.replace(&format!("RUNBOOK({alert})"), &r["runbook"].to_string());
    }
    assert!(!text.contains("RUNBOOK("), "{text}");
    std::fs::write(path, text).unwrap();
}

#[test]
fn promtool_accepts_the_rules_and_they_fire_on_the_series_haven_exports() {
    let dir = tempfile::tempdir().unwrap();
    rules_in(dir.path(), &["--rpo-s", "60", "--for-s", "60"]);
    promtool_ok(dir.path(), &["check", "rules", "rules.yml"]);
    // Every 30 s: partition 0's backup falls 90 s behind at 1 min (partition 1 stays at
    // 5 s), the broker deletes 3 unread records at 1.5 min, the lease moves from US to EU
    // at 2 min (epoch 1 -> 2). In a second case only US's agent reports.
    write_test(
        dir.path().join("test.yml"),
        r#"rule_files: [rules.yml]
evaluation_interval: 30s
tests:
  - interval: 30s
    input_series:
      - series: 'haven_backup_lag_seconds{instance="b1",topic="payments",partition="0"}'
        values: '10 10 90 90 90 90 90 90 90'
      - series: 'haven_backup_lag_seconds{instance="b1",topic="payments",partition="1"}'
        values: '5x8'
      - series: 'haven_backup_records_lost_total{instance="b1",topic="payments",partition="0"}'
        values: '0 0 0 3 3 3 3 3 3'
      - series: 'haven_failover_epoch{instance="us"}'
        values: '1 1 1 1 2 2 2 2 2'
      - series: 'haven_failover_epoch{instance="eu"}'
        values: '1 1 1 1 2 2 2 2 2'
      - series: 'haven_failover_lease_holder{instance="us"}'
        values: '1 1 1 1 0 0 0 0 0'
      - series: 'haven_failover_lease_holder{instance="eu"}'
        values: '0 0 0 0 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 1m
        alertname: HavenBackupRpoAboveTarget
        exp_alerts: []
      - eval_time: 3m
        alertname: HavenBackupRpoAboveTarget
        exp_alerts:
          - exp_labels: {severity: critical, instance: b1, topic: payments, partition: "0"}
            exp_annotations: {summary: "Backup of payments/0 is 1m 30s behind (RPO target 60 s)", runbook: RUNBOOK(HavenBackupRpoAboveTarget)}
      - eval_time: 1m
        alertname: HavenRecordsLost
        exp_alerts: []
      - eval_time: 2m
        alertname: HavenRecordsLost
        exp_alerts:
          - exp_labels: {severity: critical, instance: b1, topic: payments, partition: "0"}
            exp_annotations: {summary: "payments/0: the broker deleted 3 records before the backup read them", runbook: RUNBOOK(HavenRecordsLost)}
      - eval_time: 1m
        alertname: HavenRegionChanged
        exp_alerts: []
      - eval_time: 3m
        alertname: HavenRegionChanged
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations: {summary: "The fencing epoch moved: a switchover or failover happened in the last 15 minutes", runbook: RUNBOOK(HavenRegionChanged)}
      - eval_time: 3m
        alertname: HavenNoActiveRegion
        exp_alerts: []
      - eval_time: 3m
        alertname: HavenAgentMissing
        exp_alerts: []
  - interval: 30s
    input_series:
      - series: 'haven_failover_epoch{instance="us"}'
        values: '1x8'
      - series: 'haven_failover_lease_holder{instance="us"}'
        values: '0x8'
    alert_rule_test:
      - eval_time: 3m
        alertname: HavenAgentMissing
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations: {summary: "Fewer than two region agents report: no standby can take over", runbook: RUNBOOK(HavenAgentMissing)}
      - eval_time: 3m
        alertname: HavenNoActiveRegion
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations: {summary: "No region holds the region lease: writes are stopped everywhere", runbook: RUNBOOK(HavenNoActiveRegion)}
"#,
    );
    promtool_ok(dir.path(), &["test", "rules", "test.yml"]);

    // A stricter target changes what fires: at 30 s no partition is 60 s behind, but
    // with --rpo-s 8 partition 0 is (10 s) once --for-s 0.
    rules_in(dir.path(), &["--rpo-s", "8", "--for-s", "0"]);
    write_test(
        dir.path().join("strict.yml"),
        r#"rule_files: [rules.yml]
evaluation_interval: 30s
tests:
  - interval: 30s
    input_series:
      - series: 'haven_backup_lag_seconds{instance="b1",topic="payments",partition="0"}'
        values: '10 10'
    alert_rule_test:
      - eval_time: 30s
        alertname: HavenBackupRpoAboveTarget
        exp_alerts:
          - exp_labels: {severity: critical, instance: b1, topic: payments, partition: "0"}
            exp_annotations: {summary: "Backup of payments/0 is 10s behind (RPO target 8 s)", runbook: RUNBOOK(HavenBackupRpoAboveTarget)}
"#,
    );
    promtool_ok(dir.path(), &["test", "rules", "strict.yml"]);
}

/// The rules over `haven serve`'s posture metrics fire on series named as serve exports
/// them (the dashboard test reads the same names off a real /metrics).
#[test]
fn posture_rules_fire_on_the_series_serve_exports() {
    let dir = tempfile::tempdir().unwrap();
    rules_in(
        dir.path(),
        &[
            "--rpo-s",
            "60",
            "--for-s",
            "60",
            "--drill-max-age-days",
            "1",
            "--restore-test-max-age-days",
            "1",
        ],
    );
    // The clock of a promtool test starts at 0 (1970): a drill passed at t=0 is a day
    // old after 86400 s. Every minute: the last switchover drill passed, then failed at
    // 20 min; the replica is 5 s behind, then 90 s from 20 min; the repository gets a
    // problem at 30 min; serve stops reading after 10 min.
    write_test(
        dir.path().join("posture.yml"),
        r#"rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'haven_drill_last_pass{scenario="switchover"}'
        values: '1x19 0x40'
      - series: 'haven_drill_last_pass_timestamp_seconds'
        values: '0x60'
      - series: 'haven_database_lag_seconds{database="ledger-eu",region="eu",source="ledger-us"}'
        values: '5x19 90x40'
      - series: 'haven_repository_problems{repository="main"}'
        values: '0x29 2x30'
      - series: 'haven_posture_reading_timestamp_seconds'
        values: '0+60x10 600x49'
    alert_rule_test:
      - eval_time: 10m
        alertname: HavenDrillFailed
        exp_alerts: []
      - eval_time: 20m
        alertname: HavenDrillFailed
        exp_alerts:
          - exp_labels: {severity: warning, scenario: switchover}
            exp_annotations: {summary: "The last switchover drill failed", runbook: RUNBOOK(HavenDrillFailed)}
      - eval_time: 10m
        alertname: HavenDatabaseRpoAboveTarget
        exp_alerts: []
      - eval_time: 40m
        alertname: HavenDatabaseRpoAboveTarget
        exp_alerts:
          - exp_labels: {severity: critical, database: ledger-eu, region: eu, source: ledger-us}
            exp_annotations: {summary: "Replica ledger-eu in eu is 1m 30s behind ledger-us (RPO target 60 s)", runbook: RUNBOOK(HavenDatabaseRpoAboveTarget)}
      - eval_time: 29m
        alertname: HavenRepositoryVerifyFailing
        exp_alerts: []
      - eval_time: 30m
        alertname: HavenRepositoryVerifyFailing
        exp_alerts:
          - exp_labels: {severity: critical, repository: main}
            exp_annotations: {summary: "Repository main has 2 integrity problem(s)", runbook: RUNBOOK(HavenRepositoryVerifyFailing)}
      - eval_time: 10m
        alertname: HavenPostureStale
        exp_alerts: []
      - eval_time: 50m
        alertname: HavenPostureStale
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations: {summary: "The dashboard's posture reading is over 5 minutes old", runbook: RUNBOOK(HavenPostureStale)}
      - eval_time: 50m
        alertname: HavenDrillOverdue
        exp_alerts: []
  - interval: 1h
    input_series:
      - series: 'haven_drill_last_pass_timestamp_seconds'
        values: '0x30'
      - series: 'haven_restore_test_last_timestamp_seconds'
        values: '3600x30'
    alert_rule_test:
      - eval_time: 23h
        alertname: HavenDrillOverdue
        exp_alerts: []
      - eval_time: 25h
        alertname: HavenDrillOverdue
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations: {summary: "No drill has passed in the last 1 days", runbook: RUNBOOK(HavenDrillOverdue)}
      - eval_time: 24h
        alertname: HavenRestoreTestOverdue
        exp_alerts: []
      - eval_time: 26h
        alertname: HavenRestoreTestOverdue
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations: {summary: "No restore has been tested in the last 1 days", runbook: RUNBOOK(HavenRestoreTestOverdue)}
"#,
    );
    promtool_ok(dir.path(), &["test", "rules", "posture.yml"]);
}

#[test]
fn alerts_refuses_thresholds_that_would_always_fire() {
    let out = haven(&["alerts", "--rpo-s", "0"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("--rpo-s"), "{}", stderr(&out));
    let out = haven(&["--json", "alerts"]);
    assert_eq!(code(&out), 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["rules"].as_array().unwrap().len() >= 8, "{v}");
}
