//! The Kafka half of `haven failback reseed`: the old region's mirrored topics rebuilt as
//! exact copies of the active region's, records that first came from the old region
//! included, in the active region's order and at its offsets.
//!
//! Per mirror from the active region's cluster into the old one's (its map and the old
//! region's topics are on the old cluster):
//! 1. a `rebuild-requested` marker (this tenure's epoch) in the mirror's map, unless an
//!    earlier run wrote it; the mirror (it runs while the old region is not active) acts
//!    on it: deletes and creates the topics again, moves synced groups to their start,
//!    writes `rebuilt` with the source's high watermarks, and copies everything below
//!    them whatever its origin (`mirror::rebuild`);
//! 2. the wait until the mirror holds every record below those watermarks;
//! 3. the check: each rebuilt partition is one run, the source's offsets from its start
//!    onto the target's from 0, in order, nothing skipped;
//! 4. a `source-rebuilt` marker in the map of the mirror the other way (old -> active, on
//!    the active cluster), so that it forgets offsets of the deleted topics and, once it
//!    runs again after the switchover back, maps the rebuilt copies onto the records they
//!    copy instead of copying them back.
//!
//! Deleting the old region's topics discards what they held, so the reseed runs only with
//! a verified capture of them (`reseed::capture_of`) that names every mirror the other
//! way.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::mirror::position::{self, Marker, MarkerKind};
use crate::mirror::{rebuild, MirrorOptions};
use crate::{blocking, Error, Result};

/// One rebuilt partition.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RebuiltPartition {
    pub topic: String,
    pub partition: i32,
    /// The active region's records copied (its offsets `low..high` at the rebuild onto
    /// `0..records` of the rebuilt topic).
    pub records: i64,
    pub high: i64,
}

/// One mirror's rebuild.
#[derive(Debug, Clone, Serialize)]
pub struct TopicsReseed {
    /// The mirror into the old region that rebuilt its topics.
    pub mirror: String,
    /// The mirrors the other way, told the topics were rebuilt.
    pub reverse: Vec<String>,
    pub topics: Vec<String>,
    /// Whether this run asked for the rebuild (false: an earlier run had).
    pub requested: bool,
    pub partitions: Vec<RebuiltPartition>,
    pub seconds: f64,
}

/// The mirrors from `from`'s cluster into `to`'s.
pub fn mirrors_between(cfg: &Config, from: &str, to: &str) -> Vec<String> {
    let cluster_of = |r: &str| cfg.regions.get(r).map(|s| s.cluster.clone());
    let (from, to) = (cluster_of(from), cluster_of(to));
    cfg.mirrors
        .iter()
        .filter(|(_, m)| Some(&m.from) == from.as_ref() && Some(&m.to) == to.as_ref())
        .map(|(name, _)| name.clone())
        .collect()
}

/// Reads a mirror's markers from its map on the target (async).
async fn markers(opts: &MirrorOptions) -> Result<Vec<Marker>> {
    let o = opts.clone();
    blocking(move || {
        let t = o.target.inspector("haven-inspector")?;
        Ok(position::load_state(&o.target, &t, &o.name, &o.source_id)?.markers)
    })
    .await
}

/// Rebuilds the old region's topics through mirror `name` (active -> old) and tells the
/// `reverse` mirrors (old -> active). `timeout` bounds each wait.
pub async fn rebuild(
    cfg: &Config,
    name: &str,
    reverse: &[String],
    epoch: u64,
    timeout: Duration,
) -> Result<TopicsReseed> {
    let started = Instant::now();
    let opts = MirrorOptions::from_config(cfg, name)?;
    let mut requested = false;
    let known = markers(&opts).await?;
    if rebuild::find(&known, MarkerKind::Rebuilt, epoch).is_none()
        && rebuild::find(&known, MarkerKind::RebuildRequested, epoch).is_none()
    {
        let o = opts.clone();
        let topics = blocking(move || {
            let s = o.source.inspector("haven-inspector")?;
            Ok(
                haven_kafka::list_topics(&s, &o.source.brokers, Duration::from_secs(10))?
                    .into_iter()
                    .filter(|t| o.selects(&t.name))
                    .map(|t| t.name)
                    .collect::<Vec<_>>(),
            )
        })
        .await?;
        let request = Marker {
            source_cluster: opts.source_id.clone(),
            marker: MarkerKind::RebuildRequested,
            epoch,
            topics,
            offsets: BTreeMap::new(),
            at: chrono::Utc::now().to_rfc3339(),
        };
        rebuild::write_marker(&opts.target, &opts.name, &request).await?;
        requested = true;
    }
    // The mirror acts on the request at its next session start (a running one ends its
    // session within a checkpoint interval).
    let deadline = Instant::now() + timeout;
    let done = loop {
        // A cluster that does not answer for a moment is asked again until the deadline.
        let last = match markers(&opts).await {
            Ok(known) => match rebuild::find(&known, MarkerKind::Rebuilt, epoch) {
                Some(m) => break m.clone(),
                None => None,
            },
            Err(e) => Some(e),
        };
        if let (Some(e), true) = (&last, Instant::now() > deadline) {
            return Err(Error::Unreachable(format!(
                "mirror {name}'s map on {} could not be read: {e}",
                opts.target_id
            )));
        }
        if Instant::now() > deadline {
            return Err(Error::Unreachable(format!(
                "mirror {name} did not rebuild {}'s topics within {} s: it must be running \
                 (`haven mirror --job {name}`; it runs while its target is not the active \
                 region). The request stays in its map: run this again once it runs",
                opts.target_id,
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let partitions = await_copied(&opts, &done, deadline).await?;
    for r in reverse {
        tell_reverse(cfg, r, &opts, &done).await?;
    }
    Ok(TopicsReseed {
        mirror: name.to_string(),
        reverse: reverse.to_vec(),
        topics: done.topics.clone(),
        requested,
        partitions,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Waits until every partition of the rebuild holds the source's records below its
/// watermark, then checks each is one run from the source's start onto 0.
async fn await_copied(
    opts: &MirrorOptions,
    done: &Marker,
    deadline: Instant,
) -> Result<Vec<RebuiltPartition>> {
    let highs: BTreeMap<(String, i32), i64> = done
        .partitions()
        .into_iter()
        .filter_map(|k| {
            let h = done.offsets.get(&format!("{}/{}", k.0, k.1)).copied()?;
            Some((k, h))
        })
        .collect();
    loop {
        let o = opts.clone();
        let hs = highs.clone();
        let read = blocking(move || {
            let t = o.target.inspector("haven-inspector")?;
            let s = o.source.inspector("haven-inspector")?;
            let mut map = position::load_map(&o.target, &t, &o.name, &o.source_id)?;
            let items: Vec<(String, i32, String)> = hs
                .keys()
                .map(|(topic, p)| (topic.clone(), *p, o.target_topic(topic)))
                .collect();
            position::catch_up_all(&o.target, &t, &o.source_id, &items, &mut map)?;
            let mut behind = Vec::new();
            let mut out = Vec::new();
            for ((topic, p), high) in hs {
                let pos = map.remove(&(topic.clone(), p)).unwrap_or_default();
                let (low, _) = haven_kafka::watermarks(&s, &topic, p, Duration::from_secs(10))?;
                if pos.next_source().unwrap_or(low) < high {
                    behind.push(format!(
                        "{topic}/{p} at {} of {high}",
                        pos.next_source().unwrap_or(low)
                    ));
                    continue;
                }
                // Exact: the records below `high` are one run, from the source's first
                // onto the rebuilt topic's first.
                let copied: Vec<_> = pos.map.runs.iter().filter(|r| r.source < high).collect();
                let exact = match copied.as_slice() {
                    [] => high <= low,
                    [r] => r.source == low && r.target == 0 && r.source + r.len >= high,
                    _ => false,
                };
                if !exact {
                    return Err(Error::Task(format!(
                        "the rebuilt {}/{p} is not an exact copy of {topic}/{p}: its map runs \
                         {:?} (expected one run from {low} onto 0): records were skipped, \
                         or something else wrote into it during the rebuild. Nothing is \
                         lost (the capture and {} hold everything); run the reseed again \
                         once only the mirror writes there",
                        o.target_topic(&topic),
                        copied,
                        o.source_id
                    )));
                }
                out.push(RebuiltPartition {
                    topic,
                    partition: p,
                    records: high - low,
                    high,
                });
            }
            Ok((behind, out))
        })
        .await;
        let behind = match read {
            Ok((behind, out)) if behind.is_empty() => return Ok(out),
            Ok((behind, _)) => behind,
            // Not an exact copy: no waiting mends that.
            Err(e @ Error::Task(_)) => return Err(e),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(e) => vec![format!("not read ({e})")],
        };
        if Instant::now() > deadline {
            return Err(Error::Unreachable(format!(
                "mirror {} is still copying the rebuilt topics: {} (run this again to go on \
                 waiting)",
                opts.name,
                behind.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes `source-rebuilt` into the reverse mirror's map (on the active cluster): its
/// runs of the deleted topics no longer hold; the active cluster holds records of the new
/// generation from its high watermarks now on.
async fn tell_reverse(
    cfg: &Config,
    reverse: &str,
    forward: &MirrorOptions,
    done: &Marker,
) -> Result<()> {
    let opts = MirrorOptions::from_config(cfg, reverse)?;
    if rebuild::find(
        &markers(&opts).await?,
        MarkerKind::SourceRebuilt,
        done.epoch,
    )
    .is_some()
    {
        return Ok(());
    }
    // The reverse mirror's source topics are the rebuilt ones (named on the old cluster).
    let topics: Vec<String> = done
        .topics
        .iter()
        .map(|t| forward.target_topic(t))
        .filter(|t| opts.selects(t))
        .collect();
    let o = opts.clone();
    let ps: Vec<(String, i32)> = done
        .partitions()
        .into_iter()
        .map(|(t, p)| (forward.target_topic(&t), p))
        .filter(|(t, _)| topics.contains(t))
        .collect();
    let offsets = blocking(move || {
        let t = o.target.inspector("haven-inspector")?;
        let mut out = BTreeMap::new();
        for (topic, p) in ps {
            let (_, high) =
                haven_kafka::watermarks(&t, &o.target_topic(&topic), p, Duration::from_secs(10))?;
            out.insert(format!("{topic}/{p}"), high);
        }
        Ok(out)
    })
    .await?;
    let marker = Marker {
        source_cluster: opts.source_id.clone(),
        marker: MarkerKind::SourceRebuilt,
        epoch: done.epoch,
        topics,
        offsets,
        at: chrono::Utc::now().to_rfc3339(),
    };
    rebuild::write_marker(&opts.target, &opts.name, &marker).await
}
