//! `haven failback capture`: reads what the old primary wrote past what the new primary
//! received, without changing anything on either, and stores it in the repository.
//!
//! Postgres: per database of the old region whose peer is in the active region, the cut
//! the failover recorded on the peer (`haven.cut`), then the old database's orphaned slot
//! read past that cut (`haven_pg::Pg::divergence`). Kafka: per mirror from the old
//! region's cluster into the active one, what the active cluster holds (its map and tail,
//! read from it alone), then the old cluster's records past it; records that came from
//! the active cluster itself are not divergence.

use std::time::Duration;

use super::{
    step, summarize, Capture, CapturedRecord, DatabaseCapture, KafkaCapture, PartitionCapture,
};
use crate::config::Config;
use crate::events::Observer;
use crate::failover::config::pg_error;
use crate::mirror::{handover, position, provenance, MirrorOptions};
use crate::read::bytes_json;
use crate::{blocking, Error, Result};

/// How long a database may take to answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The region holding the lease, which must not be `region` (no failover happened).
pub async fn active_region(cfg: &Config, region: &str) -> Result<(String, u64)> {
    if !cfg.regions.contains_key(region) {
        return Err(Error::Input(format!(
            "no region {region:?} in the config: the regions are {:?}",
            cfg.regions.keys().collect::<Vec<_>>()
        )));
    }
    let mut coord = crate::failover::coordinator(cfg).await?;
    let (epoch, holder) = coord
        .snapshot()
        .await
        .map_err(|e| Error::Unreachable(format!("cannot read the lease: {e}")))?;
    match holder {
        Some(h) if h.region == region => Err(Error::Input(format!(
            "{region} still holds the lease (epoch {}): no failover happened, there is nothing \
             to fail back; `haven failover status` shows the regions",
            h.epoch
        ))),
        Some(h) => Ok((h.region, h.epoch)),
        None => Err(Error::Input(format!(
            "no region holds the lease (epoch {epoch}): fail over first (`haven failover \
             status`), then capture what {region} wrote"
        ))),
    }
}

/// Reads the divergence of `region` against the active region. Changes nothing. Each
/// database and each mirror is a step `observer` hears about.
pub async fn capture(cfg: &Config, region: &str, observer: &dyn Observer) -> Result<Capture> {
    let (active, epoch) = active_region(cfg, region).await?;
    let section = cfg.failback.clone().unwrap_or_default();
    // The database pairs (old region -> active region) and the mirrors between their
    // clusters.
    let pairs = super::pairs(cfg, region, &active);
    let mirrors = super::topics::mirrors_between(cfg, region, &active);
    let total = pairs.len() + mirrors.len();
    let mut databases = Vec::new();
    for (i, (name, d, peer_name, peer)) in pairs.into_iter().enumerate() {
        let what = format!("read what {name} committed past {peer_name}'s cut");
        let work = async {
            let target = peer.connect(peer_name, TIMEOUT).await?;
            let cut = target
                .cut(&peer.subscription)
                .await
                .map_err(pg_error)?
                .ok_or_else(|| {
                    Error::Input(format!(
                        "{peer_name} has no recorded failover cut for subscription {:?}: no \
                         failover detached it (run by this version of Haven), so Haven cannot \
                         tell what {name} wrote that {peer_name} never applied",
                        peer.subscription
                    ))
                })?;
            if super::switched_over(&cut, epoch) {
                return Err(Error::Input(format!(
                    "{active} became active through a planned switchover (epoch {epoch}), \
                     which waits until every write of {region} has arrived: there is nothing \
                     to capture"
                )));
            }
            let source = d.connect(name, TIMEOUT).await?;
            let divergence = source
                .divergence(&peer.subscription, cut.remote_lsn.as_deref())
                .await
                .map_err(pg_error)?;
            Ok(DatabaseCapture {
                database: name.clone(),
                peer: peer_name.clone(),
                cut,
                divergence,
            })
        };
        databases.push(step(observer, "failback capture", (i + 1, total), what, work).await?);
    }
    let mut kafka = Vec::new();
    for (i, name) in mirrors.iter().map(String::as_str).enumerate() {
        let opts = MirrorOptions::from_config(cfg, name)?;
        let what = format!(
            "read {}'s records past what mirror {name} brought to {}",
            opts.source_id, opts.target_id
        );
        let n = databases.len() + i + 1;
        kafka.push(
            step(
                observer,
                "failback capture",
                (n, total),
                what,
                capture_mirror(name, &opts),
            )
            .await?,
        );
    }
    let summary = summarize(&databases, &kafka, &section.money);
    let now = chrono::Utc::now();
    Ok(Capture {
        id: format!(
            "capture-{}-{region}-e{epoch}",
            now.format("%Y%m%dT%H%M%S%3fZ")
        ),
        region: region.into(),
        active,
        epoch,
        captured_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        operator: crate::recovery::audit::current_user(),
        databases,
        kafka,
        summary,
    })
}

/// One mirror's divergence: per partition the active cluster holds, the old cluster's
/// records past it.
async fn capture_mirror(name: &str, opts: &MirrorOptions) -> Result<KafkaCapture> {
    let held = handover::held(opts).await?;
    let opts = opts.clone();
    let name = name.to_string();
    blocking(move || {
        let inspector = opts.source.inspector("haven-inspector")?;
        let mut partitions = Vec::new();
        for h in held {
            let (_, high) = haven_kafka::watermarks(
                &inspector,
                &h.topic,
                h.partition,
                Duration::from_secs(10),
            )?;
            let mut records = Vec::new();
            let mut skipped_origin = 0;
            haven_kafka::scan(
                &opts.source,
                &h.topic,
                h.partition,
                h.mirrored_to,
                high,
                position::STALL,
                |m| {
                    let origin = provenance::origin(
                        position::header(m, provenance::ORIGIN_HEADER),
                        position::header(m, provenance::SOURCE_HEADER),
                    );
                    if origin == Some(opts.target_id.as_bytes()) {
                        skipped_origin += 1;
                        return true;
                    }
                    let r = haven_kafka::record_ref(m);
                    records.push(CapturedRecord {
                        offset: r.offset,
                        timestamp: r.timestamp,
                        key: bytes_json(r.key),
                        value: bytes_json(r.value),
                        headers: r
                            .headers
                            .iter()
                            .map(|(n, v)| (n.to_string(), bytes_json(*v)))
                            .collect(),
                    });
                    true
                },
            )?;
            partitions.push(PartitionCapture {
                topic: h.topic,
                partition: h.partition,
                target_topic: h.target_topic,
                mirrored_to: h.mirrored_to,
                target_next: h.target_next,
                high,
                records,
                skipped_origin,
            });
        }
        Ok(KafkaCapture {
            mirror: name,
            source_cluster: opts.source_id.clone(),
            target_cluster: opts.target_id.clone(),
            partitions,
        })
    })
    .await
}
