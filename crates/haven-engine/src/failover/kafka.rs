//! Kafka's steps in a switchover or failover, through the mirror into the new region:
//! the barrier (switchover: wait until the new region holds every record the old one held
//! once it was closed), the last consumer-group offset sync, and the evidence of what the
//! new region holds of each partition and what it misses (records at risk when the old
//! region answers; the mirrored-to offsets a failback capture starts from when it does not).
//!
//! The mirror process itself stops once the lease moved (`guard`); the reverse mirror
//! (`regions.OLD.mirror_in`) is the one allowed to run afterwards.

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Config;
use crate::events::Observer;
use crate::mirror::handover;
use crate::mirror::MirrorOptions;
use crate::{Error, Result};

/// The mirror that copies region `from` into region `to`, if one is configured.
pub fn mirror_between(cfg: &Config, from: &str, to: &str) -> Option<String> {
    let source = &cfg.regions.get(from)?.cluster;
    let m = cfg.regions.get(to)?.mirror_in.as_ref()?;
    (cfg.mirrors.get(m)?.from == *source).then(|| m.clone())
}

/// Waits until `mirror` has copied everything its source held when the step started.
pub async fn await_mirror(cfg: &Config, mirror: &str, timeout: Duration) -> Result<Value> {
    let opts = MirrorOptions::from_config(cfg, mirror)?;
    let barrier = handover::source_highs(&opts).await?;
    let seen = handover::await_barrier(&opts, &barrier, timeout).await?;
    let partitions: Vec<Value> = seen
        .iter()
        .map(|p| {
            json!({
                "topic": p.topic,
                "partition": p.partition,
                "barrier": barrier.get(&(p.topic.clone(), p.partition)),
                "mirrored_to": p.mirrored_to,
            })
        })
        .collect();
    Ok(json!({"mirror": mirror, "partitions": partitions}))
}

/// The last group sync and the evidence. `source_alive`: the source must answer
/// (switchover); otherwise an unreachable source is recorded and the step goes on.
pub async fn sync_groups(
    cfg: &Config,
    mirror: &str,
    source_alive: bool,
    observer: &dyn Observer,
) -> Result<Value> {
    let opts = MirrorOptions::from_config(cfg, mirror)?;
    if handover::source_answers(&opts).await {
        let commits = handover::final_group_sync(&opts, observer).await?;
        let status = crate::mirror::status::status(&opts).await?;
        let at_risk: i64 = status.iter().map(|p| p.lag_records).sum();
        return Ok(json!({
            "mirror": mirror,
            "source": "answered",
            "group_commits": commits,
            "records_at_risk": at_risk,
            "partitions": status,
        }));
    }
    if source_alive {
        return Err(Error::Unreachable(format!(
            "the source cluster of mirror {mirror} ({}) does not answer: a switchover needs \
             the old region; if it is lost, run `haven failover` instead",
            opts.source.brokers
        )));
    }
    let held = handover::held(&opts).await?;
    Ok(json!({
        "mirror": mirror,
        "source": "unreachable",
        "group_commits": 0,
        "records_at_risk": null,
        "partitions": held,
        "note": "records on the old region after mirrored_to never crossed: keep the old region fenced until they are exported",
    }))
}
