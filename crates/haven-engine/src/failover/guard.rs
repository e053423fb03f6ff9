//! Haven's own writers into a region, guarded by the region lease: a mirror copies the
//! active region into the standby, so once a failover made its target the active region
//! (its source is now the old primary, whose late writes must not reach the new one), the
//! mirror stops, and it refuses to start. The reverse mirror takes over for the failback.
//!
//! An etcd that does not answer does not stop a mirror (a failover needs etcd: while it is
//! unreachable no region changes hands); the next answer decides.

use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::{Error, Result};

/// The region whose Kafka cluster is `cluster` (a name from `[clusters]`), if failover is
/// configured.
pub fn region_of_cluster(cfg: &Config, cluster: &str) -> Option<String> {
    cfg.coordination.as_ref()?;
    cfg.regions
        .iter()
        .find(|(_, r)| r.cluster == cluster)
        .map(|(name, _)| name.clone())
}

/// Whether `region` is the active one now: it holds the lease, or nobody does and it was
/// the last to. None when etcd did not answer.
async fn active_epoch(cfg: &Config, region: &str) -> Option<Option<u64>> {
    let mut c = super::coordinator(cfg).await.ok()?;
    let (epoch, holder) = c.snapshot().await.ok()?;
    let active = match holder {
        Some(h) => h.region == region,
        None => c.active().await.ok()?.as_deref() == Some(region),
    };
    Some(active.then_some(epoch))
}

fn refusal(mirror: &str, region: &str, epoch: u64) -> String {
    format!(
        "mirror {mirror} writes into region {region}, which is the active region (epoch \
         {epoch}): a mirror copies the active region into the standby, never into the active \
         one. Run the reverse mirror instead (from {region} to the old primary)"
    )
}

/// Refuses (exit 2) to start a mirror into the active region.
pub async fn check_mirror_target(cfg: &Config, mirror: &str, region: &str) -> Result<()> {
    match active_epoch(cfg, region).await {
        Some(Some(epoch)) => Err(Error::Input(refusal(mirror, region, epoch))),
        _ => Ok(()),
    }
}

/// Watches the lease every second; when `region` becomes active, sends `true` on `stop`
/// and returns why.
pub async fn stop_mirror_when_active(
    cfg: Config,
    mirror: String,
    region: String,
    stop: watch::Sender<bool>,
) -> String {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(Some(epoch)) = active_epoch(&cfg, &region).await {
            let _ = stop.send(true);
            return refusal(&mirror, &region, epoch);
        }
        if stop.is_closed() {
            return String::new();
        }
    }
}
