//! A mirror rebuilding its target topics as exact copies of the source's: what
//! `haven failback reseed` asks of the mirror from the active region into the old one, so
//! that the old region holds exactly the active region's records in its order (records
//! that first came from the old region included, which loop prevention would drop).
//!
//! The request and its result are markers in the mirror's own map topic, on the target
//! ([`Marker`]), so whichever process runs the mirror acts on it, once:
//! 1. `rebuild-requested` (epoch E, topics): written by the reseed. A running session sees
//!    it within a checkpoint interval ([`asked_since`]) and starts a new session.
//! 2. A session that starts with a request pending ([`pending`]) deletes the target topics
//!    and creates them again, moves the synced consumer groups' commits on them back to
//!    the start (the sync then moves them forward to the source's, translated), and
//!    writes `rebuilt` (E, the source's high watermarks): from there, runs are of
//!    generation E, and source records below those offsets are copied whatever their
//!    origin. A crash before `rebuilt` repeats the whole rebuild; after it, the mirror
//!    resumes like any other.
//! 3. `source-rebuilt` (E): written by the reseed into the reverse mirror's map, so that
//!    mirror forgets runs that name the old topics' offsets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use haven_kafka::rdkafka::consumer::BaseConsumer;
use haven_kafka::rdkafka::producer::FutureRecord;
use haven_kafka::ClusterConfig;

use super::position::{self, MapRecord, Marker, MarkerKind};
use super::MirrorOptions;
use crate::events::{Event, Observer};
use crate::{blocking, Error, Result};

/// Writes `marker` into `mirror`'s map topic on `target` and waits until it is stored
/// (async). Creates the map topic when the mirror never ran.
pub async fn write_marker(target: &ClusterConfig, mirror: &str, marker: &Marker) -> Result<()> {
    let topic = position::map_topic(mirror);
    haven_kafka::create_topic(
        &target.admin()?,
        &topic,
        1,
        &[("cleanup.policy".to_string(), "compact".to_string())],
    )
    .await?;
    let producer = target.producer()?;
    let key = marker.key();
    let value = serde_json::to_vec(marker).map_err(|e| Error::Task(e.to_string()))?;
    producer
        .send(
            FutureRecord::<[u8], [u8]>::to(&topic)
                .partition(0)
                .key(key.as_bytes())
                .payload(&value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| Error::Unreachable(format!("write {key} to {topic}: {e}")))?;
    Ok(())
}

/// The rebuild asked of the mirror and not done yet (the latest).
pub fn pending(markers: &[Marker]) -> Option<&Marker> {
    let done = markers
        .iter()
        .filter(|m| m.marker == MarkerKind::Rebuilt)
        .map(|m| m.epoch)
        .max();
    markers
        .iter()
        .filter(|m| m.marker == MarkerKind::RebuildRequested && done.is_none_or(|d| d < m.epoch))
        .max_by_key(|m| m.epoch)
}

/// The marker of `kind` at `epoch`, if written.
pub fn find(markers: &[Marker], kind: MarkerKind, epoch: u64) -> Option<&Marker> {
    markers
        .iter()
        .find(|m| m.marker == kind && m.epoch == epoch)
}

/// Whether a marker was written into the map since map offset `from` (blocking); moves
/// `from` to the map's end. A running session ends when one was: the next one reads it.
pub fn asked_since(
    opts: &MirrorOptions,
    inspector: &BaseConsumer,
    from: &mut i64,
) -> Result<Option<Marker>> {
    let mut found = None;
    let (_, end) = position::each_record_from(
        &opts.target,
        inspector,
        &opts.name,
        &opts.source_id,
        None,
        Some(*from),
        |r| {
            if let MapRecord::Marker(m) = r {
                found = Some(m);
            }
        },
    )?;
    *from = end;
    Ok(found)
}

/// Performs a requested rebuild (async): see the module's documentation. Returns the
/// `rebuilt` marker written.
pub async fn perform(
    opts: &MirrorOptions,
    request: &Marker,
    observer: &dyn Observer,
) -> Result<Marker> {
    let topics: Vec<String> = request
        .topics
        .iter()
        .filter(|t| opts.selects(t))
        .cloned()
        .collect();
    let targets: Vec<String> = topics.iter().map(|t| opts.target_topic(t)).collect();
    let others = haven_kafka::delete_topics_checked(&opts.target, &targets).await?;
    if !others.is_empty() {
        // Nothing Haven can undo: said as loudly as it can.
        tracing::error!(
            "the target cluster deleted {} topics Haven did not ask it to delete, with {targets:?}: {} (tansu 0.6 deletes every topic on a DeleteTopics request)",
            others.len(),
            others.join(", ")
        );
        observer.event(&Event::Retrying {
            what: format!("rebuild of {targets:?}"),
            error: format!(
                "the target cluster also deleted {}: a broker that deletes more than it is asked",
                others.join(", ")
            ),
        });
    }
    let o = opts.clone();
    let gone = targets.clone();
    blocking(move || {
        let inspector = o.target.inspector("haven-inspector")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let names: Vec<String> =
                haven_kafka::list_topics(&inspector, &o.target.brokers, Duration::from_secs(10))?
                    .into_iter()
                    .map(|t| t.name)
                    .collect();
            let left: Vec<&String> = gone.iter().filter(|t| names.contains(t)).collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Unreachable(format!(
                    "the target still lists {left:?} 30 s after they were deleted"
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await?;
    // Created again as the source's (partitions, carried configs).
    super::target::prepare(opts).await?;
    // The source's high watermarks now (the barrier a handover reads too).
    let offsets: BTreeMap<String, i64> = super::handover::source_highs(opts)
        .await?
        .into_iter()
        .filter(|((t, _), _)| topics.contains(t))
        .map(|((t, p), high)| (format!("{t}/{p}"), high))
        .collect();
    reset_groups(opts, &offsets, observer).await;
    let done = Marker {
        source_cluster: opts.source_id.clone(),
        marker: MarkerKind::Rebuilt,
        epoch: request.epoch,
        topics: topics.clone(),
        offsets,
        at: chrono::Utc::now().to_rfc3339(),
    };
    write_marker(&opts.target, &opts.name, &done).await?;
    observer.event(&Event::MirrorRebuilt {
        epoch: request.epoch,
        topics,
    });
    Ok(done)
}

/// Moves the commits of the groups the mirror syncs on the rebuilt target partitions to
/// their start (async): the old offsets name records that are gone, and the sync only
/// moves commits forward. A group the broker refuses is reported.
async fn reset_groups(
    opts: &MirrorOptions,
    offsets: &BTreeMap<String, i64>,
    observer: &dyn Observer,
) {
    if opts.groups.is_empty() {
        return;
    }
    let o = opts.clone();
    let parts: Vec<(String, i32)> = offsets
        .keys()
        .filter_map(|k| {
            let (t, p) = k.rsplit_once('/')?;
            Some((o.target_topic(t), p.parse().ok()?))
        })
        .collect();
    let res = blocking(move || {
        let inspector = o.source.inspector("haven-inspector")?;
        let mut groups: Vec<String> = haven_kafka::list_groups(&inspector, Duration::from_secs(5))
            .unwrap_or_default()
            .into_iter()
            .filter(|g| {
                o.groups
                    .iter()
                    .any(|p| regex::Regex::new(&format!("^(?:{p})$")).is_ok_and(|r| r.is_match(g)))
            })
            .collect();
        for g in o.groups.iter().filter(|g| super::groups::is_group_name(g)) {
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
        let mut refused = Vec::new();
        for g in groups {
            let c = o.target.inspector(&g)?;
            let moves: Vec<(String, i32, i64)> =
                parts.iter().map(|(t, p)| (t.clone(), *p, 0)).collect();
            if let Err(e) = haven_kafka::commit_as(&c, &moves) {
                refused.push((g, e.to_string()));
            }
        }
        Ok(refused)
    })
    .await;
    match res {
        Ok(refused) => {
            for (group, reason) in refused {
                observer.event(&Event::GroupNotSynced { group, reason });
            }
        }
        Err(e) => observer.event(&Event::Retrying {
            what: "move synced groups to the rebuilt topics' start".into(),
            error: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(kind: MarkerKind, epoch: u64) -> Marker {
        Marker {
            source_cluster: "eu".into(),
            marker: kind,
            epoch,
            topics: vec!["t".into()],
            offsets: BTreeMap::from([("t/0".to_string(), 7)]),
            at: String::new(),
        }
    }

    #[test]
    fn a_request_is_pending_until_a_rebuild_of_its_epoch_or_later() {
        use MarkerKind::*;
        assert!(pending(&[]).is_none());
        let asked = marker(RebuildRequested, 3);
        assert_eq!(pending(std::slice::from_ref(&asked)), Some(&asked));
        assert!(pending(&[asked.clone(), marker(Rebuilt, 3)]).is_none());
        assert!(pending(&[marker(Rebuilt, 2), asked.clone()]).is_some());
        let later = marker(RebuildRequested, 5);
        assert_eq!(
            pending(&[asked, marker(Rebuilt, 3), later.clone()]),
            Some(&later)
        );
    }

    #[test]
    fn markers_and_runs_parse_apart_and_keys_never_collide() {
        let m = marker(MarkerKind::SourceRebuilt, 4);
        let v = serde_json::to_vec(&m).unwrap();
        assert!(matches!(MapRecord::parse(&v).unwrap(), MapRecord::Marker(x) if x == m));
        assert_eq!(m.key(), "eu/~source-rebuilt/4");
        assert_eq!(m.partitions(), vec![("t".to_string(), 0)]);
        let run = br#"{"source_cluster":"us","topic":"orders","partition":0,"target_topic":"orders","source":1000,"target":1014,"len":250}"#;
        match MapRecord::parse(run).unwrap() {
            MapRecord::Run(e) => {
                assert_eq!((e.generation, e.key()), (0, "us/orders/0/1000".to_string()))
            }
            other => panic!("{other:?}"),
        }
    }
}
