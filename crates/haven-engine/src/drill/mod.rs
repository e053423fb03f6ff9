//! DR drills: what a drill declares before it starts (objectives, stop conditions), what
//! it measured, and the verdict, as evidence an auditor can read ([`DrillReport`], as
//! JSON and as a self-contained HTML page, [`html`]).
//!
//! The verdict is PASS only when every objective is met, every invariant holds and
//! nothing that should have been measured went unmeasured: a missing measurement fails
//! the drill, it never passes it.

pub mod evidence;
pub mod html;
pub mod latency;
pub mod reconcile;
pub mod schedule;

pub use evidence::{evidence_key, store, stored};
pub use latency::{latency_phases, LatencyPhase};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Fixed before the start (FFIEC: criteria set before the test).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Objectives {
    /// Fault (or switchover start) to the first transfer acknowledged by the new region.
    pub rto_s: f64,
    /// Acknowledged transfers that may be lost, in seconds of writes before the fault.
    pub rpo_s: f64,
    /// Acknowledged transfers that may be lost, in count (a switchover: 0).
    pub max_lost: Option<u64>,
    /// Samples in which two regions accepted writes (always 0).
    pub max_two_writable: u64,
    /// Whether the drill runs under the ledger workload, so that RPO and two writable
    /// regions are measured (a scheduled restore test does not: false).
    #[serde(default = "under_workload")]
    pub workload: bool,
}

fn under_workload() -> bool {
    true
}

/// One thing the drill did or saw, on its timeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    pub at_ms: i64,
    pub what: String,
}

/// One invariant of the workload's checker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InvariantResult {
    pub id: String,
    pub name: String,
    /// None: it could not be checked.
    pub ok: Option<bool>,
    pub detail: String,
    pub first_example: Option<String>,
}

impl InvariantResult {
    /// A result without a first example.
    pub fn new(id: &str, name: &str, ok: Option<bool>, detail: String) -> Self {
        InvariantResult {
            id: id.into(),
            name: name.into(),
            ok,
            detail,
            first_example: None,
        }
    }
}

/// One second of the workload around the fault.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Second {
    pub at_ms: i64,
    pub acknowledged: u64,
    pub p99_ms: f64,
    pub errors: u64,
    pub region: String,
}

/// What the drill measured; None where it could not measure.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Measured {
    pub rto_s: Option<f64>,
    pub lost: Option<u64>,
    pub lost_seconds: Option<f64>,
    /// Samples (every 100 ms) in which two regions accepted writes, and samples taken.
    pub two_writable: Option<u64>,
    pub samples: u64,
    pub acknowledged: u64,
    pub latency_p99_ms: f64,
    /// Transaction latency before the fault, from the fault to recovery, and after (the
    /// seed's target: under 100 ms). Empty in reports written before it was measured.
    #[serde(default)]
    pub latency: Vec<LatencyPhase>,
    /// The active region before and after.
    pub active_before: Option<String>,
    pub active_after: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Fail,
}

/// A drill's evidence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillReport {
    /// `<scenario>-<start, UTC, compact>`.
    pub id: String,
    pub scenario: String,
    pub description: String,
    pub started_at: String,
    pub finished_at: String,
    pub operator: String,
    pub haven_version: String,
    /// SHA-256 of the `haven.toml` the drill ran against.
    pub config_sha256: String,
    pub objectives: Objectives,
    pub stop_conditions: Vec<String>,
    pub measured: Measured,
    pub invariants: Vec<InvariantResult>,
    /// What should have been measured and was not (each fails the verdict).
    pub not_measured: Vec<String>,
    /// Objectives missed, in words.
    pub failures: Vec<String>,
    pub timeline: Vec<Step>,
    pub seconds: Vec<Second>,
    pub verdict: Verdict,
}

/// SHA-256 of a config file's bytes, in hex.
pub fn config_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl DrillReport {
    /// Compares what was measured with the objectives and sets `failures`,
    /// `not_measured` and `verdict`.
    pub fn judge(&mut self) {
        let o = &self.objectives;
        let m = &self.measured;
        let mut failures = Vec::new();
        let mut missing = std::mem::take(&mut self.not_measured);
        match m.rto_s {
            Some(r) if r > o.rto_s => {
                failures.push(format!("RTO {r:.1} s above the objective {:.0} s", o.rto_s))
            }
            Some(_) => {}
            None => missing.push("RTO: no transfer was acknowledged by the new region".into()),
        }
        match m.lost_seconds {
            Some(s) if s > o.rpo_s => failures.push(format!(
                "RPO {s:.2} s of acknowledged transfers lost, above the objective {:.1} s",
                o.rpo_s
            )),
            Some(_) => {}
            None if o.workload => missing.push("RPO: the workload's checker did not run".into()),
            None => {}
        }
        if let (Some(max), Some(lost)) = (o.max_lost, m.lost) {
            if lost > max {
                failures.push(format!(
                    "{lost} acknowledged transfers lost, above the objective {max}"
                ));
            }
        }
        match m.two_writable {
            Some(n) if n > o.max_two_writable => failures.push(format!(
                "{n} samples with two writable regions (split brain)"
            )),
            Some(_) => {}
            None if o.workload => missing.push("two writable regions: not sampled".into()),
            None => {}
        }
        for i in &self.invariants {
            match i.ok {
                Some(true) => {}
                Some(false) => failures.push(format!(
                    "{} failed: {}{}",
                    i.id,
                    i.detail,
                    i.first_example
                        .as_deref()
                        .map(|x| format!(" (first: {x})"))
                        .unwrap_or_default()
                )),
                None => missing.push(format!("{}: {}", i.id, i.detail)),
            }
        }
        if self.invariants.is_empty() {
            missing.push(if o.workload {
                "invariants W1-W9: not checked".into()
            } else {
                "no invariant was checked".into()
            });
        }
        missing.dedup();
        self.failures = failures;
        self.not_measured = missing;
        self.verdict = if self.failures.is_empty() && self.not_measured.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> DrillReport {
        DrillReport {
            id: "region-outage-1".into(),
            scenario: "region-outage".into(),
            description: String::new(),
            started_at: String::new(),
            finished_at: String::new(),
            operator: "test".into(),
            haven_version: "0".into(),
            config_sha256: config_hash(b""),
            objectives: Objectives {
                rto_s: 60.0,
                rpo_s: 1.0,
                max_lost: None,
                max_two_writable: 0,
                workload: true,
            },
            stop_conditions: vec![],
            measured: Measured {
                rto_s: Some(5.0),
                lost: Some(3),
                lost_seconds: Some(0.1),
                two_writable: Some(0),
                samples: 100,
                ..Measured::default()
            },
            invariants: vec![InvariantResult {
                id: "W1".into(),
                name: "money".into(),
                ok: Some(true),
                detail: String::new(),
                first_example: None,
            }],
            not_measured: vec![],
            failures: vec![],
            timeline: vec![],
            seconds: vec![],
            verdict: Verdict::Fail,
        }
    }

    #[test]
    fn a_drill_passes_only_when_everything_was_measured_and_met() {
        let mut r = report();
        r.judge();
        assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.failures);

        let mut slow = report();
        slow.measured.rto_s = Some(61.0);
        slow.judge();
        assert_eq!(slow.verdict, Verdict::Fail);
        assert!(slow.failures[0].contains("RTO 61.0 s"));

        let mut unmeasured = report();
        unmeasured.measured.rto_s = None;
        unmeasured.judge();
        assert_eq!(unmeasured.verdict, Verdict::Fail);
        assert!(unmeasured.failures.is_empty());

        let mut unchecked = report();
        unchecked.invariants[0].ok = None;
        unchecked.judge();
        assert_eq!(unchecked.verdict, Verdict::Fail);

        let mut split = report();
        split.measured.two_writable = Some(1);
        split.judge();
        assert_eq!(split.verdict, Verdict::Fail);

        let mut lossy = report();
        lossy.objectives.max_lost = Some(0);
        lossy.judge();
        assert_eq!(lossy.verdict, Verdict::Fail);
    }
}
