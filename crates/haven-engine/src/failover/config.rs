//! The failover sections of `haven.toml`: `[coordination]` (the etcd members), `[regions.NAME]`
//! (what each region runs) and `[failover]` (which region is primary, and the gates of an
//! automatic failover). Validated with the rest of the file: unknown keys and dangling
//! names are errors naming the key and the fix.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// `[coordination]`: where the region lease and the fencing epoch live.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CoordinationSection {
    /// etcd client URLs, one member per region plus a witness (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// Names this deployment's keys (`/haven/{cluster}/...`).
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Seconds a region keeps the lease without renewing it (at least 2).
    #[serde(default = "default_ttl")]
    pub lease_ttl_s: u64,
    /// Milliseconds one etcd request may take, retries of a dead member included.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_cluster() -> String {
    "prod".into()
}

fn default_ttl() -> u64 {
    10
}

fn default_timeout() -> u64 {
    1500
}

impl CoordinationSection {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_s)
    }
}

/// `[regions.NAME]`: what a region runs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegionSection {
    /// Its Kafka cluster (a name from `[clusters]`).
    pub cluster: String,
    /// The mirror that copies the other region's topics into it (a name from `[mirrors]`):
    /// its lag is what a failover to this region would lose.
    #[serde(default)]
    pub mirror_in: Option<String>,
}

/// Whether a failover happens by itself.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only an operator fails over (the default).
    #[default]
    Manual,
    /// The standby's agent fails over when the primary's lease expires and every gate
    /// passes. Never an automatic failback.
    Automatic,
}

/// `[failover]`: the pair of regions and the gates of an automatic failover.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FailoverSection {
    pub primary: String,
    pub standby: String,
    #[serde(default)]
    pub mode: Mode,
    /// An automatic failover is refused when more records than this are at risk.
    #[serde(default = "default_max_records")]
    pub max_records_at_risk: u64,
    /// ... or when the oldest record at risk is older than this (seconds).
    #[serde(default = "default_max_seconds")]
    pub max_seconds_at_risk: u64,
    /// Consecutive failed health checks before the primary counts as down.
    #[serde(default = "default_checks")]
    pub failed_checks: u32,
    /// At most one automatic failover per this many seconds.
    #[serde(default = "default_interval")]
    pub min_interval_s: u64,
}

fn default_max_records() -> u64 {
    10_000
}

fn default_max_seconds() -> u64 {
    60
}

fn default_checks() -> u32 {
    3
}

fn default_interval() -> u64 {
    600
}

/// A key of the file and what is wrong with it.
pub type Problem = (String, String);

/// Checks the failover sections against each other and the rest of the file.
pub fn validate(cfg: &Config) -> Result<(), Problem> {
    if let Some(c) = &cfg.coordination {
        if c.endpoints.is_empty() {
            return Err((
                "coordination.endpoints".into(),
                "empty: list the etcd members (one per region plus a witness)".into(),
            ));
        }
        for e in &c.endpoints {
            let ok = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .and_then(|rest| rest.rsplit_once(':'))
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err((
                    "coordination.endpoints".into(),
                    format!("{e:?} is not http(s)://HOST:PORT"),
                ));
            }
        }
        if c.endpoints.len() < 3 {
            return Err((
                "coordination.endpoints".into(),
                format!(
                    "{} member(s): a quorum that survives losing a region needs at least 3 \
                     (one per region plus a witness)",
                    c.endpoints.len()
                ),
            ));
        }
        if c.lease_ttl_s < 2 {
            return Err((
                "coordination.lease_ttl_s".into(),
                "at least 2 (etcd's minimum lease TTL is 1.5 election timeouts)".into(),
            ));
        }
    }
    for (name, r) in &cfg.regions {
        if !cfg.clusters.contains_key(&r.cluster) {
            return Err((
                format!("regions.{name}.cluster"),
                format!(
                    "no cluster named {:?}: define [clusters.{}] or fix the name",
                    r.cluster, r.cluster
                ),
            ));
        }
        if let Some(m) = &r.mirror_in {
            match cfg.mirrors.get(m) {
                None => {
                    return Err((
                        format!("regions.{name}.mirror_in"),
                        format!("no mirror named {m:?}: define [mirrors.{m}] or fix the name"),
                    ))
                }
                Some(mirror) if mirror.to != r.cluster => {
                    return Err((
                        format!("regions.{name}.mirror_in"),
                        format!(
                            "mirror {m:?} copies into cluster {:?}, not into this region's {:?}",
                            mirror.to, r.cluster
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    if let Some(f) = &cfg.failover {
        for (key, region) in [("primary", &f.primary), ("standby", &f.standby)] {
            if !cfg.regions.contains_key(region) {
                return Err((
                    format!("failover.{key}"),
                    format!(
                        "no region named {region:?}: define [regions.{region}] or fix the name"
                    ),
                ));
            }
        }
        if f.primary == f.standby {
            return Err((
                "failover.standby".into(),
                "the standby must be another region than the primary".into(),
            ));
        }
        if cfg.coordination.is_none() {
            return Err((
                "failover".into(),
                "needs [coordination] (the etcd members that hold the region lease)".into(),
            ));
        }
        if f.failed_checks == 0 {
            return Err(("failover.failed_checks".into(), "at least 1".into()));
        }
    }
    Ok(())
}

/// Regions by name (for callers that only need the map type).
pub type Regions = BTreeMap<String, RegionSection>;
