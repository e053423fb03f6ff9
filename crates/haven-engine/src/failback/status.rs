//! `haven failback`: where a failback stands and the next step, read from the lease and
//! the repository's captures and reconciliation reports.

use serde::Serialize;

use super::reconcile::applied_before;
use crate::config::Config;
use crate::repo::Repository;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The region still holds the lease: nothing to fail back.
    NoFailover,
    /// Nothing captured under the active region's tenure yet.
    Capture,
    /// Captured; not reconciled with --apply yet.
    Reconcile,
    /// Reconciled; the old region is to be re-seeded.
    Reseed,
    /// Re-seeded: switch back when ready.
    SwitchBack,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailbackStatus {
    pub region: String,
    pub active: Option<String>,
    pub epoch: u64,
    pub stage: Stage,
    /// The latest capture of this region under the active tenure, and its counts.
    pub capture: Option<String>,
    pub transactions: u64,
    pub records: u64,
    /// The reconciliation that applied it, if any.
    pub applied_report: Option<String>,
    pub next: String,
}

/// Where the failback of `region` (by default the region not holding the lease) stands.
pub async fn status(
    cfg: &Config,
    repo: Option<&Repository>,
    region: Option<&str>,
) -> Result<FailbackStatus> {
    let mut coord = crate::failover::coordinator(cfg).await?;
    let (epoch, holder) = coord
        .snapshot()
        .await
        .map_err(|e| Error::Unreachable(format!("cannot read the lease: {e}")))?;
    let active = holder.map(|h| h.region);
    let region = match region {
        Some(r) => r.to_string(),
        None => {
            let others: Vec<&String> = cfg
                .regions
                .keys()
                .filter(|r| Some(r.as_str()) != active.as_deref())
                .collect();
            match others.as_slice() {
                [one] => one.to_string(),
                _ => {
                    return Err(Error::Input(
                        "name the old primary's region with --region".into(),
                    ))
                }
            }
        }
    };
    let mut s = FailbackStatus {
        region: region.clone(),
        active: active.clone(),
        epoch,
        stage: Stage::NoFailover,
        capture: None,
        transactions: 0,
        records: 0,
        applied_report: None,
        next: String::new(),
    };
    if active.as_deref() == Some(region.as_str()) {
        s.next = format!("{region} is the active region (epoch {epoch}): nothing to fail back");
        return Ok(s);
    }
    let Some(active) = active else {
        s.next = "no region holds the lease: see `haven failover status`".into();
        return Ok(s);
    };
    if planned_move(cfg, &region, &active, epoch).await {
        s.next = format!(
            "{active} became active through a planned switchover (epoch {epoch}): nothing to \
             fail back; `haven switchover --to {region}` moves back"
        );
        return Ok(s);
    }
    let Some(repo) = repo else {
        s.stage = Stage::Capture;
        s.next = format!(
            "{active} took over; give --repo to see the captures, or capture what {region} \
             wrote: `haven failback capture --region {region} --repo NAME`"
        );
        return Ok(s);
    };
    let suffix = format!("-{region}-e{epoch}");
    let latest = super::captures(repo)
        .await?
        .into_iter()
        .rev()
        .find(|id| id.ends_with(&suffix));
    let Some(id) = latest else {
        s.stage = Stage::Capture;
        s.next = format!(
            "{active} took over (epoch {epoch}): capture what {region} wrote that {active} never \
             got, before anything on {region} changes: `haven failback capture --region {region}`"
        );
        return Ok(s);
    };
    let c = super::load(repo, &id).await?;
    s.transactions = c.summary.transactions;
    s.records = c.summary.records;
    s.capture = Some(id.clone());
    s.applied_report = applied_before(repo, &id).await?;
    if s.applied_report.is_none() {
        s.stage = Stage::Reconcile;
        s.next = format!(
            "review the verdicts (`haven failback reconcile`), then write what the policies \
             accept to {active}: `haven failback reconcile --apply`"
        );
    } else {
        s.stage = Stage::Reseed;
        s.next = format!(
            "re-seed {region} as a standby of {active}: `haven failback reseed --region {region}`"
        );
    }
    let reseeded = crate::recovery::audit::list(repo)
        .await?
        .into_iter()
        .any(|(_, e)| {
            e.action == super::reseed::RESEED_ACTION && e.details["capture"].as_str() == Some(&id)
        });
    if reseeded {
        s.stage = Stage::SwitchBack;
        s.next = format!(
            "{region} is a standby of {active} again: switch back when ready with \
             `haven switchover --to {region}`"
        );
    }
    Ok(s)
}

/// Whether the active region's databases recorded a planned cut (a switchover) under the
/// current epoch. Databases that do not answer count as not planned.
async fn planned_move(cfg: &Config, region: &str, active: &str, epoch: u64) -> bool {
    for (_, _, peer_name, peer) in super::pairs(cfg, region, active) {
        let Ok(pg) = peer
            .connect(peer_name, std::time::Duration::from_secs(10))
            .await
        else {
            continue;
        };
        if let Ok(Some(cut)) = pg.cut(&peer.subscription).await {
            if super::switched_over(&cut, epoch) {
                return true;
            }
        }
    }
    false
}
