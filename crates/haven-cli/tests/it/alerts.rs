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
