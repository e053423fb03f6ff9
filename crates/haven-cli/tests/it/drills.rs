//! `haven drill run` on the real lab, shortened: the region-outage, switchover and
//! partition drills must PASS, and their evidence must say so, in JSON and in a page a
//! browser shows.

use std::process::Command;

use serde_json::Value;

use crate::{code, haven, path};

/// A lab in the background, stopped whatever happens to the test.
struct LabDir(tempfile::TempDir);

impl LabDir {
    fn up() -> LabDir {
        let dir = tempfile::tempdir().unwrap();
        let out = haven(&[
            "lab",
            "up",
            "--dir",
            &path(dir.path()),
            "--lease-ttl-s",
            "3",
        ]);
        assert_eq!(code(&out), 0, "lab up: {}", crate::stderr(&out));
        LabDir(dir)
    }
    fn d(&self) -> String {
        path(self.0.path())
    }
}

impl Drop for LabDir {
    fn drop(&mut self) {
        let _ = haven(&["lab", "down", "--dir", &self.d()]);
    }
}

/// Runs a short drill; its JSON report and exit code.
fn drill(lab: &LabDir, scenario: &str, extra: &[&str]) -> (i32, Value) {
    let d = lab.d();
    let mut args = vec![
        "--json",
        "drill",
        "run",
        scenario,
        "--lab",
        &d,
        "--warmup-s",
        "4",
        "--after-s",
        "3",
        "--rate",
        "2400",
        "--reads-per-write",
        "1",
        "--rto-s",
        "30",
    ];
    args.extend_from_slice(extra);
    let out = haven(&args);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill {scenario}: no JSON report ({e}): {}",
            crate::stderr(&out)
        )
    });
    (code(&out), report)
}

fn assert_pass(rc: i32, r: &Value) {
    assert_pass_with(rc, r, 9);
}

fn assert_pass_with(rc: i32, r: &Value, invariants: usize) {
    assert_eq!(r["verdict"], "PASS", "{r:#}");
    assert_eq!(rc, 0);
    assert!(r["not_measured"].as_array().unwrap().is_empty(), "{r:#}");
    let inv = r["invariants"].as_array().unwrap();
    assert_eq!(inv.len(), invariants, "{r:#}");
    assert!(inv.iter().all(|i| i["ok"] == Value::Bool(true)), "{r:#}");
    assert_eq!(r["measured"]["two_writable"], 0, "{r:#}");
    assert!(r["measured"]["samples"].as_u64().unwrap() > 20, "{r:#}");
}

#[test]
fn a_region_outage_drill_fails_over_automatically_and_passes_with_its_evidence() {
    let lab = LabDir::up();
    let (rc, r) = drill(&lab, "region-outage", &[]);
    assert_pass(rc, &r);
    let m = &r["measured"];
    assert_eq!(m["active_before"], "us");
    assert_ne!(r["operator"], "unknown", "{r:#}");
    assert_eq!(m["active_after"], "eu");
    let rto = m["rto_s"].as_f64().unwrap();
    assert!(rto > 2.0 && rto <= 30.0, "RTO {rto}");
    assert!(m["lost_seconds"].as_f64().unwrap() <= 1.0, "{m}");

    // The evidence: create-only files, listed in the history.
    let base = lab.0.path().join("drills").join(r["id"].as_str().unwrap());
    let saved: Value =
        serde_json::from_slice(&std::fs::read(base.with_extension("json")).unwrap()).unwrap();
    assert_eq!(saved, r);
    let out = haven(&["--json", "drill", "history", "--lab", &lab.d()]);
    let history: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history[0]["id"], r["id"]);

    // The page, as a browser shows it: its verdict first.
    let chromium = testbed::find_tool("chromium", "scripts/setup.sh (Debian's chromium)", &[])
        .expect("chromium");
    let html = base.with_extension("html");
    let shown = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&shown.stdout);
    assert!(
        dom.contains("<span class=\"verdict\" id=\"verdict\">PASS</span>"),
        "the page does not show its verdict: {}",
        &dom[..dom.len().min(2000)]
    );
    assert!(dom.contains("<svg"), "no chart");

    // A second outage drill is refused: EU is active now.
    let out = haven(&["drill", "run", "region-outage", "--lab", &lab.d()]);
    assert_eq!(code(&out), 1);
    assert!(
        crate::stderr(&out).contains("needs US active"),
        "{}",
        crate::stderr(&out)
    );
}

#[test]
fn a_switchover_drill_there_and_back_loses_nothing() {
    let lab = LabDir::up();
    let (rc, r) = drill(&lab, "switchover", &[]);
    assert_pass(rc, &r);
    assert_eq!(r["measured"]["lost"], 0);
    assert_eq!(r["measured"]["active_after"], "us");
    assert_eq!(r["objectives"]["max_lost"], 0);
}

#[test]
fn a_partition_drill_never_has_two_writable_regions() {
    let lab = LabDir::up();
    let (rc, r) = drill(&lab, "partition", &["--partition-s", "8"]);
    // W1-W9, and F1: every acknowledged transfer EU lost is in the failback capture.
    assert_pass_with(rc, &r, 10);
    let f1 = r["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "F1")
        .unwrap_or_else(|| panic!("no F1: {r:#}"));
    let lost = r["measured"]["lost"].as_u64().unwrap();
    assert!(
        f1["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{lost} lost, ")),
        "{f1}"
    );
    assert_eq!(r["measured"]["active_after"], "eu");
    // The self-fencing window at a 3 s lease: 0.7 x 3 + 0.5 s.
    let rpo = r["objectives"]["rpo_s"].as_f64().unwrap();
    assert!((rpo - 2.6).abs() < 1e-9, "{rpo}");
}
