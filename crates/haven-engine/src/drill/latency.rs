//! Transaction latency around a drill's fault: before it, from the fault to recovery
//! (the first transfer the new region acknowledged), and after, as the seed asks (under
//! 100 ms) and as a report shows whether a failover only moved the service or also slowed
//! it.

use serde::{Deserialize, Serialize};

/// The seed's latency target for one transfer.
pub const TARGET_MS: f64 = 100.0;

/// Latency of the transfers acknowledged in one phase of a drill.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LatencyPhase {
    /// `before the fault`, `fault to recovery`, `after recovery`.
    pub phase: String,
    pub transfers: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Transfers acknowledged within [`TARGET_MS`], in percent.
    pub under_100ms_pct: f64,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn phase(name: &str, mut v: Vec<f64>) -> LatencyPhase {
    v.sort_by(f64::total_cmp);
    let under = v.iter().filter(|&&x| x <= TARGET_MS).count();
    LatencyPhase {
        phase: name.to_string(),
        transfers: v.len() as u64,
        p50_ms: percentile(&v, 0.5),
        p99_ms: percentile(&v, 0.99),
        max_ms: v.last().copied().unwrap_or(0.0),
        under_100ms_pct: if v.is_empty() {
            0.0
        } else {
            under as f64 * 100.0 / v.len() as f64
        },
    }
}

/// The phases of `acks` ((acknowledged at, unix ms; latency, ms)) around a fault at
/// `fault_at_ms` that recovered at `recovered_at_ms` (None: never, within the drill:
/// everything after the fault is then one phase). A transfer belongs to the phase its
/// acknowledgement arrived in: one begun before the fault and answered after recovery
/// counts after, with the wait it had.
pub fn latency_phases(
    acks: &[(i64, f64)],
    fault_at_ms: i64,
    recovered_at_ms: Option<i64>,
) -> Vec<LatencyPhase> {
    let (mut before, mut during, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for &(at, ms) in acks {
        if at < fault_at_ms {
            before.push(ms);
        } else if recovered_at_ms.is_none_or(|r| at < r) {
            during.push(ms);
        } else {
            after.push(ms);
        }
    }
    let mut out = vec![phase("before the fault", before)];
    match recovered_at_ms {
        Some(_) => {
            out.push(phase("fault to recovery", during));
            out.push(phase("after recovery", after));
        }
        None => out.push(phase("after the fault (no recovery measured)", during)),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_acknowledgement_counts_in_the_phase_it_arrived_in() {
        let acks = [
            (100, 10.0),
            (200, 30.0),
            (999, 50.0),
            (1000, 900.0), // at the fault: during
            (1500, 4000.0),
            (2000, 20.0), // at recovery: after
            (2100, 120.0),
        ];
        let p = latency_phases(&acks, 1000, Some(2000));
        let names: Vec<&str> = p.iter().map(|x| x.phase.as_str()).collect();
        assert_eq!(
            names,
            ["before the fault", "fault to recovery", "after recovery"]
        );
        assert_eq!(
            (
                p[0].transfers,
                p[0].p50_ms,
                p[0].max_ms,
                p[0].under_100ms_pct
            ),
            (3, 30.0, 50.0, 100.0)
        );
        assert_eq!(
            (p[1].transfers, p[1].p50_ms, p[1].p99_ms),
            (2, 900.0, 4000.0)
        );
        assert_eq!(p[1].under_100ms_pct, 0.0);
        assert_eq!((p[2].transfers, p[2].under_100ms_pct), (2, 50.0));
    }

    #[test]
    fn without_recovery_everything_after_the_fault_is_one_phase() {
        let p = latency_phases(&[(5, 1.0), (15, 2.0), (25, 3.0)], 10, None);
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].transfers, 2);
        assert!(p[1].phase.contains("no recovery"));
        let empty = latency_phases(&[], 10, Some(20));
        assert!(empty.iter().all(|x| x.transfers == 0 && x.p99_ms == 0.0));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }
}
