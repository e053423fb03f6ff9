//! The standby's loop in automatic mode: when the primary's lease has been gone for
//! `failed_checks` consecutive rounds and every gate passes, the standby's agent runs the
//! same failover plan `haven failover --to` runs (the engine's executor, audit and all).
//!
//! Gates (each failing one is reported once, as `AutomaticFailoverBlocked`):
//! - `[failover] mode = "automatic"`, this region is the configured standby and the last
//!   active region is the configured primary (never an automatic failback);
//! - the lease has been free for `failed_checks` consecutive rounds (a flapping link
//!   shorter than that does nothing; etcd without quorum answers nothing: no round counts);
//! - data at risk, as last measured while the primary held the lease: the replicas'
//!   heartbeat age at most `max_seconds_at_risk`, and the mirror into this region at most
//!   `max_records_at_risk` records behind (unknown counts as too much: fail closed). A
//!   measurement that fails does not erase the last good one: a primary that crashes
//!   keeps its lease for up to a TTL, and the rounds in that window cannot measure (its
//!   broker and database are gone), while the measurement just before the crash is the
//!   evidence that counts. A last good measurement older than [`MAX_MEASURE_AGE_TTLS`]
//!   lease TTLs counts as unknown;
//! - at most one automatic failover per `min_interval_s` (kept in the state directory,
//!   so a restart does not reset it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use haven_etcd::Coordinator;
use serde::{Deserialize, Serialize};

use super::config::{FailoverSection, Mode};
use super::plan::Kind;
use super::region::RegionOps;
use crate::config::Config;
use crate::events::{Event, Observer};

/// How old (in lease TTLs) the last good measurement of data at risk may be at the
/// gate: the mirror is measured every 5 rounds (one TTL; in the background, each bounded
/// to 2 TTL, and counted from its start) and
/// detection takes about 1.4 TTL after a crash, so a measurement taken just before the
/// crash is about 2.4 TTL old at the gate; 6 leaves room for slow rounds.
pub const MAX_MEASURE_AGE_TTLS: u32 = 6;

/// What the standby has measured and counted so far.
#[derive(Debug, Default)]
pub struct Standby {
    free_rounds: u32,
    rounds: u64,
    /// The last good measurements, and when they were taken.
    lag_s: Option<(f64, Instant)>,
    records: Option<(i64, Instant)>,
    /// The mirror's measurement running in the background, and when it started.
    measuring: Option<(Instant, tokio::task::JoinHandle<Option<i64>>)>,
    blocked: Option<String>,
}

/// The lease TTL.
fn ttl(cfg: &Config) -> Duration {
    cfg.coordination
        .as_ref()
        .map(|c| Duration::from_secs(c.lease_ttl_s))
        .unwrap_or(Duration::from_secs(10))
}

/// A measurement no older than `max_age`.
fn fresh<T: Copy>(m: Option<(T, Instant)>, max_age: Duration) -> Option<T> {
    m.filter(|(_, at)| at.elapsed() <= max_age).map(|(v, _)| v)
}

/// Records at risk the standby reads per partition when it measures (see `measure`).
const STANDBY_SCAN_LIMIT: i64 = 1_000;

#[derive(Debug, Serialize, Deserialize)]
struct LastAutomatic {
    at_ms: i64,
    epoch: u64,
}

fn last_path(state_dir: &Path) -> PathBuf {
    state_dir.join("automatic-failover.json")
}

impl Standby {
    /// One round while this region does not hold the lease. `holder`: the region holding
    /// it as just read (None: free), or Err if etcd did not answer. Whether it ran a
    /// failover (successful or not).
    #[allow(clippy::too_many_arguments)]
    pub async fn round(
        &mut self,
        cfg: &Config,
        region: &str,
        holder: Result<Option<String>, ()>,
        coord: &mut Coordinator,
        ops: &mut RegionOps<'_>,
        state_dir: &Path,
        agent_id: &str,
        observer: &dyn Observer,
    ) -> bool {
        let Some(f) = cfg.failover.as_ref() else {
            return false;
        };
        if f.mode != Mode::Automatic || region != f.standby {
            return false;
        }
        self.rounds += 1;
        match holder {
            Err(()) => self.free_rounds = 0,
            Ok(Some(_)) => {
                self.free_rounds = 0;
                self.measure(cfg, region, ops).await;
            }
            Ok(None) => {
                self.free_rounds += 1;
                if self.free_rounds >= f.failed_checks {
                    if let Err(why) = self.gates(cfg, region, f, coord, state_dir).await {
                        if self.blocked.as_deref() != Some(why.as_str()) {
                            observer.event(&Event::AutomaticFailoverBlocked {
                                region: region.into(),
                                reason: why.clone(),
                            });
                            self.blocked = Some(why);
                        }
                        return false;
                    }
                    self.blocked = None;
                    self.fail_over(cfg, f, region, state_dir, agent_id, observer)
                        .await;
                    return true;
                }
            }
        }
        false
    }

    /// Data at risk, while the primary holds the lease.
    async fn measure(&mut self, cfg: &Config, region: &str, ops: &mut RegionOps<'_>) {
        if !super::config::databases_of(cfg, region).is_empty() {
            if let Some(lag) = ops.replica_lag_s().await {
                self.lag_s = Some((lag, Instant::now()));
            }
        }
        let mirrored = cfg.regions.get(region).and_then(|r| r.mirror_in.clone());
        if mirrored.is_none() {
            return;
        }
        // The mirror is measured in the background: across a slow link (or with a
        // backlog to read back after a switchover) a measurement can take longer than a
        // round, and the rounds must go on meanwhile. It counts from when it started.
        if let Some((started, h)) = self.measuring.take() {
            if !h.is_finished() {
                self.measuring = Some((started, h));
                return;
            }
            if let Ok(Some(n)) = h.await {
                self.records = Some((n, started));
            }
        }
        if self.records.is_none() || self.rounds % 5 == 1 {
            let cfg = cfg.clone();
            // Bounded: a primary that just died keeps its lease for up to a TTL, and a
            // measurement stuck on its dead broker must end before it could count.
            let limit = (ttl(&cfg) * 2).max(Duration::from_secs(5));
            let task = tokio::spawn(async move {
                // A bounded reading (as the dashboard's): past the scan limit records at
                // risk are counted by offsets, overstated and never understated, so the
                // gate errs towards not failing over.
                let reading = super::status::status_limited(&cfg, Some(STANDBY_SCAN_LIMIT));
                match tokio::time::timeout(limit, reading).await {
                    Err(_) => {
                        tracing::info!("data at risk not measured: no answer within {limit:?}");
                        None
                    }
                    Ok(Ok(s)) if s.unknown.is_empty() => Some(s.records_at_risk),
                    Ok(Ok(s)) => {
                        tracing::info!("data at risk not measured: unknown {:?}", s.unknown);
                        None
                    }
                    Ok(Err(e)) => {
                        tracing::info!("data at risk not measured: {e}");
                        None
                    }
                }
            });
            self.measuring = Some((Instant::now(), task));
        }
    }

    async fn gates(
        &self,
        cfg: &Config,
        region: &str,
        f: &FailoverSection,
        coord: &mut Coordinator,
        state_dir: &Path,
    ) -> Result<(), String> {
        match coord.active().await {
            Ok(Some(a)) if a == f.primary => {}
            Ok(a) => {
                return Err(format!(
                    "the last active region is {}, not the primary {}: never an automatic failback",
                    a.as_deref().unwrap_or("none"),
                    f.primary
                ))
            }
            Err(e) => return Err(format!("cannot read the last active region: {e}")),
        }
        if let Ok(raw) = std::fs::read(last_path(state_dir)) {
            if let Ok(last) = serde_json::from_slice::<LastAutomatic>(&raw) {
                let since = chrono::Utc::now().timestamp_millis() - last.at_ms;
                if since < (f.min_interval_s * 1000) as i64 {
                    return Err(format!(
                        "an automatic failover ran {} s ago (epoch {}): at most one per {} s",
                        since / 1000,
                        last.epoch,
                        f.min_interval_s
                    ));
                }
            }
        }
        let max_age = ttl(cfg) * MAX_MEASURE_AGE_TTLS;
        match fresh(self.lag_s, max_age) {
            Some(s) if s <= f.max_seconds_at_risk as f64 => {}
            Some(s) => {
                return Err(format!(
                    "the replicas were {s:.1} s behind when last measured (max_seconds_at_risk {})",
                    f.max_seconds_at_risk
                ))
            }
            None if !super::config::databases_of(cfg, region).is_empty() => {
                return Err(format!(
                    "the replicas' lag was not measured in the last {} s while the primary \
                     held the lease (no heartbeat seen): data at risk unknown",
                    max_age.as_secs()
                ))
            }
            None => {}
        }
        let mirrored = cfg.regions.get(region).and_then(|r| r.mirror_in.as_ref());
        match fresh(self.records, max_age) {
            Some(r) if r > f.max_records_at_risk as i64 => Err(format!(
                "{r} mirrored records were at risk when last measured (max_records_at_risk {})",
                f.max_records_at_risk
            )),
            None if mirrored.is_some() => Err(format!(
                "the mirror's lag was not measured in the last {} s while the primary held the \
                 lease: data at risk unknown",
                max_age.as_secs()
            )),
            _ => Ok(()),
        }
    }

    async fn fail_over(
        &mut self,
        cfg: &Config,
        f: &FailoverSection,
        region: &str,
        state_dir: &Path,
        agent_id: &str,
        observer: &dyn Observer,
    ) {
        observer.event(&Event::AutomaticFailover {
            from: f.primary.clone(),
            to: region.into(),
            free_rounds: self.free_rounds,
        });
        let done = async {
            let prepared =
                super::run::prepare(cfg, Kind::Failover, region, false, state_dir).await?;
            super::run::execute(cfg, &prepared, agent_id, observer).await
        }
        .await;
        match done {
            Ok(report) => {
                let last = LastAutomatic {
                    at_ms: chrono::Utc::now().timestamp_millis(),
                    epoch: report.epoch,
                };
                let _ = std::fs::create_dir_all(state_dir);
                if let Ok(body) = serde_json::to_vec(&last) {
                    let _ = std::fs::write(last_path(state_dir), body);
                }
                self.free_rounds = 0;
            }
            Err(e) => observer.event(&Event::Retrying {
                what: format!("automatic failover to {region}"),
                error: e.to_string(),
            }),
        }
    }
}

/// How long the agent sleeps between rounds (shared with the lease loop).
pub fn round_interval(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_millis(200))
}
