//! `haven failover status`: which region is active and with which epoch (from etcd), and
//! the RPO ledger: per partition mirrored into the standby, the lag in records and
//! seconds and exactly what an unplanned failover now would lose. What cannot be read (a
//! cluster or etcd down) is reported as such, never left out silently.

use serde::Serialize;

use crate::config::Config;
use crate::mirror::status::PartitionStatus;
use crate::mirror::MirrorOptions;
use crate::{Error, Result};

#[derive(Debug, Clone, Serialize)]
pub struct RegionStatus {
    pub name: String,
    pub cluster: String,
    /// `primary` or `standby` as configured.
    pub configured_as: String,
    /// Whether it holds the lease now.
    pub active: bool,
}

/// One mirrored partition's entry in the RPO ledger.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerRow {
    /// The region the mirror copies into (the failover target).
    pub into: String,
    pub mirror: String,
    #[serde(flatten)]
    pub partition: PartitionStatus,
}

/// One replicated database in the RPO ledger: the replica a failover would promote.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseRow {
    /// The replica (in the region a failover would go to).
    pub database: String,
    pub region: String,
    /// Its source, in the active region.
    pub source: String,
    /// `now() - heartbeat` on the replica: how stale it is, in seconds (includes the clock
    /// skew between the servers). What a failover now would lose is at most this.
    pub lag_seconds: Option<f64>,
    /// WAL bytes the source's slot holds that the replica has not confirmed.
    pub lag_bytes: Option<i64>,
    /// The source LSN up to which the replica applied (the divergence anchor).
    pub remote_lsn: Option<String>,
    pub subscription_enabled: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverStatus {
    pub primary: String,
    pub standby: String,
    pub mode: String,
    /// The region holding the lease, its epoch and agent; None when nobody holds it.
    pub active: Option<String>,
    pub agent: Option<String>,
    pub epoch: u64,
    pub regions: Vec<RegionStatus>,
    /// The etcd members, each as it answers for itself.
    pub members: Vec<haven_etcd::Member>,
    /// A majority of the configured members is up and knows a leader. A lone member may
    /// still call itself leader for a moment after losing its peers: this counts peers.
    pub quorum: bool,
    pub ledger: Vec<LedgerRow>,
    /// Per replicated database.
    pub databases: Vec<DatabaseRow>,
    /// The worst lag in seconds and the records an unplanned failover would lose now.
    pub rpo_seconds: f64,
    pub records_at_risk: i64,
    /// Parts that could not be read, with the reason (the rest is still shown).
    pub unknown: Vec<String>,
}

/// Reads etcd and every mirror into a failover target, every record at risk read.
pub async fn status(cfg: &Config) -> Result<FailoverStatus> {
    status_limited(cfg, None).await
}

/// As [`status`], reading at most `scan_limit` records at risk per partition (see
/// [`crate::mirror::status::status_limited`]).
pub async fn status_limited(cfg: &Config, scan_limit: Option<i64>) -> Result<FailoverStatus> {
    let f = cfg.failover.as_ref().ok_or_else(|| {
        Error::Input(
            "no [failover] in the config: name the primary and standby regions (see `haven config example`)"
                .into(),
        )
    })?;
    let mut unknown = Vec::new();
    let (epoch, holder) = match super::coordinator(cfg).await {
        Ok(mut c) => match c.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                unknown.push(format!("lease and epoch: {e}"));
                (0, None)
            }
        },
        Err(e) => {
            unknown.push(format!("lease and epoch: {e}"));
            (0, None)
        }
    };
    let members = match &cfg.coordination {
        Some(c) => haven_etcd::members(&c.endpoints, c.timeout()).await,
        None => Vec::new(),
    };
    let quorum = members.iter().filter(|m| m.up && m.has_leader).count() * 2 > members.len();
    let mut regions = Vec::new();
    let mut ledger = Vec::new();
    for (name, r) in &cfg.regions {
        let configured_as = if *name == f.primary {
            "primary"
        } else if *name == f.standby {
            "standby"
        } else {
            "other"
        };
        regions.push(RegionStatus {
            name: name.clone(),
            cluster: r.cluster.clone(),
            configured_as: configured_as.into(),
            active: holder.as_ref().is_some_and(|h| h.region == *name),
        });
        let Some(mirror) = &r.mirror_in else {
            continue;
        };
        // What failing over INTO this region would lose: only for regions not active.
        if holder.as_ref().is_some_and(|h| h.region == *name) {
            continue;
        }
        let opts = MirrorOptions::from_config(cfg, mirror)?;
        match crate::mirror::status::status_limited(&opts, scan_limit).await {
            Ok(parts) => ledger.extend(parts.into_iter().map(|p| LedgerRow {
                into: name.clone(),
                mirror: mirror.clone(),
                partition: p,
            })),
            Err(e) => unknown.push(format!("mirror {mirror} into {name}: {e}")),
        }
    }
    let active = holder.as_ref().map(|h| h.region.clone());
    let databases = databases(cfg, active.as_deref(), &mut unknown).await;
    let rpo_seconds = ledger
        .iter()
        .map(|r| r.partition.lag_seconds)
        .chain(databases.iter().filter_map(|d| d.lag_seconds))
        .fold(0.0, f64::max);
    let records_at_risk = ledger
        .iter()
        .filter_map(|r| r.partition.at_risk.as_ref())
        .map(|a| a.records)
        .sum();
    Ok(FailoverStatus {
        primary: f.primary.clone(),
        standby: f.standby.clone(),
        mode: format!("{:?}", f.mode).to_lowercase(),
        active: holder.as_ref().map(|h| h.region.clone()),
        agent: holder.as_ref().map(|h| h.agent.clone()),
        epoch,
        regions,
        members,
        quorum,
        ledger,
        databases,
        rpo_seconds,
        records_at_risk,
        unknown,
    })
}

/// Every database not in the active region, with its peer as the source.
async fn databases(
    cfg: &Config,
    active: Option<&str>,
    unknown: &mut Vec<String>,
) -> Vec<DatabaseRow> {
    let mut rows = Vec::new();
    for (name, d) in &cfg.databases {
        if Some(d.region.as_str()) == active {
            continue;
        }
        let Some((source, _)) = super::config::peer_of(cfg, name) else {
            continue;
        };
        let mut row = DatabaseRow {
            database: name.clone(),
            region: d.region.clone(),
            source: source.clone(),
            lag_seconds: None,
            lag_bytes: None,
            remote_lsn: None,
            subscription_enabled: None,
        };
        match connect(cfg, name).await {
            Ok(pg) => match pg.replica_lag(&d.subscription).await {
                Ok(l) => {
                    row.lag_seconds = l.seconds;
                    row.remote_lsn = l.subscription.as_ref().and_then(|s| s.remote_lsn.clone());
                    row.subscription_enabled = l.subscription.as_ref().map(|s| s.enabled);
                    if l.subscription.is_none() {
                        unknown.push(format!(
                            "database {name}: no subscription {:?} (not a replica now)",
                            d.subscription
                        ));
                    }
                }
                Err(e) => unknown.push(e.to_string()),
            },
            Err(e) => unknown.push(e),
        }
        match connect(cfg, source).await {
            Ok(pg) => match pg.slot_lag(&d.subscription).await {
                Ok(l) => row.lag_bytes = l.map(|l| l.bytes),
                Err(e) => unknown.push(e.to_string()),
            },
            Err(e) => unknown.push(format!("{e} (source of {name})")),
        }
        rows.push(row);
    }
    rows
}

async fn connect(cfg: &Config, name: &str) -> std::result::Result<haven_pg::Pg, String> {
    let d = cfg
        .databases
        .get(name)
        .ok_or_else(|| format!("no database {name}"))?;
    d.connect(name, std::time::Duration::from_secs(3))
        .await
        .map_err(|e| e.to_string())
}
