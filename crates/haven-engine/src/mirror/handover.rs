//! A mirror's part in a region handover (switchover or failover): the Kafka barrier (the
//! new region holds every record the old one held when its routes closed), the last
//! consumer-group offset sync through the mirror's map, and what the new region holds of
//! each partition (the coordinates a failback starts from).
//!
//! Kafka itself is fenced by routing (tansu has no ACLs): the barrier is the source's high
//! watermarks read once the old region's routes are closed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::groups::{GroupSync, SyncPartition};
use super::status::{positions, status, PartitionStatus};
use super::{position, MirrorOptions};
use crate::events::Observer;
use crate::{blocking, Error, Result};

/// How long the source may take to answer before it counts as lost (a failover does not
/// wait the mirror's usual 10 s for a region that is gone).
pub const PROBE: Duration = Duration::from_secs(2);

/// One partition as the new region holds it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Held {
    pub topic: String,
    pub partition: i32,
    pub target_topic: String,
    /// Every source record before this offset is on the target.
    pub mirrored_to: i64,
    /// The target offset after the last mirrored record: what the target holds from
    /// there on was written on the target itself (or by another mirror).
    pub target_next: i64,
}

/// Whether the source cluster answers within [`PROBE`].
pub async fn source_answers(opts: &MirrorOptions) -> bool {
    let source = opts.source.clone();
    blocking(move || {
        let c = source.inspector("haven-inspector")?;
        haven_kafka::list_topics(&c, &source.brokers, PROBE)?;
        Ok(())
    })
    .await
    .is_ok()
}

/// The source's high watermark of every mirrored partition now: the Kafka barrier.
pub async fn source_highs(opts: &MirrorOptions) -> Result<BTreeMap<(String, i32), i64>> {
    let opts = opts.clone();
    blocking(move || {
        let s = opts.source.inspector("haven-inspector")?;
        let mut out = BTreeMap::new();
        for t in haven_kafka::list_topics(&s, &opts.source.brokers, Duration::from_secs(10))? {
            if !opts.selects(&t.name) {
                continue;
            }
            for p in 0..t.partitions {
                let (_, high) = haven_kafka::watermarks(&s, &t.name, p, Duration::from_secs(10))?;
                out.insert((t.name.clone(), p), high);
            }
        }
        Ok(out)
    })
    .await
}

/// Waits until the target holds every source record before `barrier` (records that came
/// from the target itself excepted); returns the partitions as last seen. Fails after
/// `timeout` naming the partitions still behind (the mirror must be running).
pub async fn await_barrier(
    opts: &MirrorOptions,
    barrier: &BTreeMap<(String, i32), i64>,
    timeout: Duration,
) -> Result<Vec<PartitionStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = status(opts).await?;
        let behind: Vec<String> = now
            .iter()
            .filter(|p| {
                let b = barrier
                    .get(&(p.topic.clone(), p.partition))
                    .copied()
                    .unwrap_or(0);
                p.mirrored_to < b && p.at_risk.as_ref().is_some_and(|r| r.from < b)
            })
            .map(|p| {
                let b = barrier[&(p.topic.clone(), p.partition)];
                format!("{}/{} at {} of {b}", p.topic, p.partition, p.mirrored_to)
            })
            .collect();
        if behind.is_empty() {
            return Ok(now);
        }
        if Instant::now() >= deadline {
            return Err(Error::Unreachable(format!(
                "mirror {} did not reach the barrier in {} s: {} (is `haven mirror --job {}` running?)",
                opts.name,
                timeout.as_secs(),
                behind.join(", "),
                opts.name
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One last group-offset sync: every selected group's commits on the source, translated
/// through the map, committed on the target (forward only, never over active members).
/// Returns the group commits made.
pub async fn final_group_sync(opts: &MirrorOptions, observer: &dyn Observer) -> Result<u64> {
    if opts.groups.is_empty() {
        return Ok(0);
    }
    let o = opts.clone();
    let views = blocking(move || positions(&o)).await?;
    let parts = views
        .into_iter()
        .map(|v| SyncPartition {
            target_topic: opts.target_topic(&v.topic),
            mirrored_to: v.pos.next_source().unwrap_or(v.low).max(v.low),
            map: v.pos.map,
            topic: v.topic,
            partition: v.partition,
        })
        .collect();
    Ok(GroupSync::new(opts).run(parts, observer).await)
}

/// What the target holds of every partition the mirror ever copied, read from the target
/// alone (the source may be gone).
pub async fn held(opts: &MirrorOptions) -> Result<Vec<Held>> {
    let opts = opts.clone();
    blocking(move || {
        let t = opts.target.inspector("haven-inspector")?;
        let mut map = position::load_map(&opts.target, &t, &opts.name, &opts.source_id)?;
        // The map's partitions, and those of the target's mirrored topics (copied since
        // the last checkpoint of the map).
        let mut keys: std::collections::BTreeSet<(String, i32)> = map.keys().cloned().collect();
        for tt in haven_kafka::list_topics(&t, &opts.target.brokers, Duration::from_secs(10))? {
            if let Some(topic) = tt.name.strip_prefix(opts.prefix.as_str()) {
                if opts.selects(topic) {
                    keys.extend((0..tt.partitions).map(|p| (topic.to_string(), p)));
                }
            }
        }
        let items: Vec<(String, i32, String)> = keys
            .into_iter()
            .map(|(topic, p)| {
                let target_topic = opts.target_topic(&topic);
                (topic, p, target_topic)
            })
            .collect();
        position::catch_up_all(&opts.target, &t, &opts.source_id, &items, &mut map)?;
        Ok(items
            .into_iter()
            .map(|(topic, partition, target_topic)| Held {
                mirrored_to: map
                    .get(&(topic.clone(), partition))
                    .and_then(|p| p.next_source())
                    .unwrap_or(0),
                target_next: map
                    .get(&(topic.clone(), partition))
                    .and_then(|p| p.next_target())
                    .unwrap_or(0),
                topic,
                partition,
                target_topic,
            })
            .collect())
    })
    .await
}
