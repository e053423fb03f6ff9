//! The posture as Prometheus metrics (`/metrics` of `haven serve`, and of `haven agent
//! --dashboard`): what the alert rules over drills, restore tests, replicas and
//! repositories read. Lag of backups and mirrors is exported by the jobs themselves
//! (`haven_backup_*`, `haven_mirror_*`), not repeated here.

use std::fmt::Write;

use super::Posture;

/// Every metric name this module writes (the alert rules may use only exported names).
pub const NAMES: &[&str] = &[
    "haven_posture_reading_timestamp_seconds",
    "haven_posture_reading_duration_seconds",
    "haven_posture_ready",
    "haven_posture_rpo_seconds",
    "haven_posture_findings",
    "haven_database_lag_seconds",
    "haven_drill_last_pass",
    "haven_drill_last_pass_timestamp_seconds",
    "haven_restore_test_last_timestamp_seconds",
    "haven_repository_problems",
];

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn gauge(o: &mut String, name: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// Renders `p` in the Prometheus text format.
pub fn render(p: &Posture) -> String {
    let mut o = String::new();
    gauge(
        &mut o,
        NAMES[0],
        "When the last posture reading started (unix seconds).",
    );
    let _ = writeln!(o, "{} {}", NAMES[0], p.taken_at as f64 / 1000.0);
    gauge(&mut o, NAMES[1], "How long the last posture reading took.");
    let _ = writeln!(o, "{} {}", NAMES[1], p.took_ms as f64 / 1000.0);
    gauge(
        &mut o,
        NAMES[2],
        "1 when the verdict is ready, 0 when degraded or not ready.",
    );
    let _ = writeln!(
        o,
        "{} {}",
        NAMES[2],
        u8::from(p.readiness.verdict == "ready")
    );
    gauge(
        &mut o,
        NAMES[3],
        "The worst lag now (mirrors, replicas, backups), in seconds.",
    );
    let _ = writeln!(o, "{} {}", NAMES[3], p.readiness.rpo_now_s);
    gauge(&mut o, NAMES[4], "Findings of the last reading, per alert.");
    let mut counts = std::collections::BTreeMap::<(&str, &str), u32>::new();
    for f in &p.findings {
        *counts.entry((f.alert.as_str(), f.severity)).or_default() += 1;
    }
    for ((alert, severity), n) in counts {
        let _ = writeln!(
            o,
            "{}{{alert=\"{}\",severity=\"{severity}\"}} {n}",
            NAMES[4],
            label(alert)
        );
    }
    gauge(
        &mut o,
        NAMES[5],
        "How stale each replica a failover would promote is (now - heartbeat), seconds.",
    );
    for d in p.failover.iter().flat_map(|f| &f.databases) {
        if let Some(s) = d.lag_seconds {
            let _ = writeln!(
                o,
                "{}{{database=\"{}\",region=\"{}\",source=\"{}\"}} {s}",
                NAMES[5],
                label(&d.database),
                label(&d.region),
                label(&d.source)
            );
        }
    }
    gauge(
        &mut o,
        NAMES[6],
        "1 when the last drill of the scenario passed, 0 when it failed.",
    );
    let mut seen = std::collections::BTreeSet::new();
    for d in &p.drills {
        if seen.insert(d.scenario.as_str()) {
            let _ = writeln!(
                o,
                "{}{{scenario=\"{}\"}} {}",
                NAMES[6],
                label(&d.scenario),
                u8::from(d.verdict == "PASS")
            );
        }
    }
    gauge(
        &mut o,
        NAMES[7],
        "When the last passing drill started (unix seconds; 0: none on record).",
    );
    let last_pass = p
        .drills
        .iter()
        .filter(|d| d.verdict == "PASS")
        .filter_map(|d| chrono::DateTime::parse_from_rfc3339(&d.started_at).ok())
        .map(|t| t.timestamp_millis())
        .max()
        .unwrap_or(0);
    let _ = writeln!(o, "{} {}", NAMES[7], last_pass as f64 / 1000.0);
    gauge(
        &mut o,
        NAMES[8],
        "When a restore was last tested (unix seconds; 0: none on record).",
    );
    let _ = writeln!(
        o,
        "{} {}",
        NAMES[8],
        p.last_restore_test_at.unwrap_or(0) as f64 / 1000.0
    );
    gauge(
        &mut o,
        NAMES[9],
        "Problems found in the repository's segment chain, audit chain or drill reports.",
    );
    for r in &p.repositories {
        let _ = writeln!(
            o,
            "{}{{repository=\"{}\"}} {}",
            NAMES[9],
            label(&r.name),
            r.problems.len()
        );
    }
    o
}
