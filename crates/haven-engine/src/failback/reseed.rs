//! `haven failback reseed`: the old primary's databases made exact standbys of the
//! active region's again, once what they wrote is captured (and verified).
//!
//! Per database of the old region whose peer is active: its application roles must be
//! fenced (its agent does that), its orphaned slot is dropped (the capture holds what it
//! kept), the tables the active peer publishes are emptied and subscribed again with
//! `copy_data = true`, and the command waits until every table is synchronised. Each step
//! is idempotent and a re-run continues: once the subscription exists nothing is emptied
//! again.
//!
//! Then the old region's mirrored topics are rebuilt as exact copies of the active
//! region's (`topics`), by the mirror into it.

use std::time::Duration;

use serde::Serialize;

use super::capture::active_region;
use crate::config::Config;
use crate::failover::config::pg_error;
use crate::repo::Repository;
use crate::{Error, Result};

pub const RESEED_ACTION: &str = "failback-reseed";

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseReseed {
    pub database: String,
    pub peer: String,
    /// Whether this run dropped the orphaned slot (false: already gone).
    pub slot_dropped: bool,
    /// Tables emptied before the copy (empty when an earlier run had subscribed already).
    pub emptied: Vec<String>,
    pub subscription: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReseedReport {
    pub region: String,
    pub active: String,
    pub epoch: u64,
    pub capture: String,
    /// Whether the capture was applied with `reconcile --apply` (if not, what it holds
    /// lives on in the repository only).
    pub applied: bool,
    pub databases: Vec<DatabaseReseed>,
    /// The old region's topics rebuilt, per mirror into it.
    pub topics: Vec<super::topics::TopicsReseed>,
}

/// The latest capture of `region` under the active tenure `epoch`, verified.
pub async fn capture_of(repo: &Repository, region: &str, epoch: u64) -> Result<super::Capture> {
    let suffix = format!("-{region}-e{epoch}");
    let Some(id) = super::captures(repo)
        .await?
        .into_iter()
        .rev()
        .find(|id| id.ends_with(&suffix))
    else {
        return Err(Error::Input(format!(
            "no capture of {region} under epoch {epoch} in this repository: run `haven \
             failback capture --region {region}` first (nothing on {region} is deleted before \
             what it wrote is captured)"
        )));
    };
    super::load(repo, &id).await
}

/// Re-seeds the databases of `region` from the active region's.
pub async fn reseed(
    cfg: &Config,
    repo: &Repository,
    region: &str,
    timeout: Duration,
    observer: &dyn crate::events::Observer,
) -> Result<ReseedReport> {
    let (active, epoch) = active_region(cfg, region).await?;
    let capture = capture_of(repo, region, epoch).await?;
    let applied = super::reconcile::applied_before(repo, &capture.id)
        .await?
        .is_some();
    let mut report = ReseedReport {
        region: region.into(),
        active: active.clone(),
        epoch,
        capture: capture.id.clone(),
        applied,
        databases: vec![],
        topics: vec![],
    };
    let pairs = super::pairs(cfg, region, &active);
    // Every database must be in the capture before any of them is touched.
    if let Some((name, ..)) = pairs
        .iter()
        .find(|(name, ..)| !capture.databases.iter().any(|c| &c.database == *name))
    {
        return Err(Error::Input(format!(
            "capture {} does not hold {name}: capture again (`haven failback capture \
             --region {region}`) before re-seeding it",
            capture.id
        )));
    }
    // Every mirror the other way too: rebuilding the topics discards what they held.
    let forward = super::topics::mirrors_between(cfg, &active, region);
    let reverse = super::topics::mirrors_between(cfg, region, &active);
    if let Some(name) = reverse
        .iter()
        .find(|m| !capture.kafka.iter().any(|k| &k.mirror == *m))
    {
        return Err(Error::Input(format!(
            "capture {} does not hold mirror {name}'s partitions: capture again (`haven              failback capture --region {region}`) before rebuilding {region}'s topics",
            capture.id
        )));
    }
    let total = pairs.len() + forward.len();
    let databases = pairs.len();
    for (i, (name, d, peer_name, peer)) in pairs.into_iter().enumerate() {
        let what = format!("make {name} a standby of {peer_name} again (copy and sync)");
        let work = async {
            let started = std::time::Instant::now();
            let old = d.connect(name, Duration::from_secs(30)).await?;
            let new = peer.connect(peer_name, Duration::from_secs(30)).await?;
            if !old.fenced(&d.roles).await.map_err(pg_error)? {
                return Err(Error::Input(format!(
                    "{name}'s application roles {:?} are not fenced: start {region}'s agent \
                     (it fences a region that does not hold the lease) and run this again",
                    d.roles
                )));
            }
            let mut item = DatabaseReseed {
                database: name.clone(),
                peer: peer_name.clone(),
                slot_dropped: false,
                emptied: vec![],
                subscription: d.subscription.clone(),
                seconds: 0.0,
            };
            if old
                .subscription(&d.subscription)
                .await
                .map_err(pg_error)?
                .is_none()
            {
                item.slot_dropped = old
                    .drop_orphaned_slot(&peer.subscription)
                    .await
                    .map_err(pg_error)?;
                new.ensure_publication(&peer.publication)
                    .await
                    .map_err(pg_error)?;
                let tables = new
                    .published_tables(&peer.publication)
                    .await
                    .map_err(pg_error)?
                    .unwrap_or_default();
                old.ensure_tables().await.map_err(pg_error)?;
                item.emptied = old.truncate(&tables).await.map_err(pg_error)?;
                old.ensure_subscription(
                    &d.subscription,
                    &peer.subscription_conninfo(peer_name)?,
                    &peer.publication,
                    true,
                )
                .await
                .map_err(pg_error)?;
            }
            old.wait_synced(&d.subscription, timeout)
                .await
                .map_err(pg_error)?;
            item.seconds = started.elapsed().as_secs_f64();
            Ok(item)
        };
        let item = super::step(observer, "failback reseed", (i + 1, total), what, work).await?;
        report.databases.push(item);
    }
    for (i, name) in forward.iter().enumerate() {
        let what =
            format!("rebuild {region}'s topics as exact copies of {active}'s (mirror {name})");
        let work = super::topics::rebuild(cfg, name, &reverse, epoch, timeout);
        let item = super::step(
            observer,
            "failback reseed",
            (databases + i + 1, total),
            what,
            work,
        )
        .await?;
        report.topics.push(item);
    }
    crate::recovery::audit::record_with_epoch(
        repo,
        RESEED_ACTION,
        &crate::recovery::audit::sha256_of(&(&report.databases, &report.topics)),
        Some(epoch),
        serde_json::json!({
            "capture": report.capture,
            "region": region,
            "databases": report.databases.iter().map(|d| d.database.clone()).collect::<Vec<_>>(),
            "topics": report.topics.iter().flat_map(|t| t.topics.clone()).collect::<Vec<_>>(),
        }),
    )
    .await?;
    Ok(report)
}
