//! Preparing the target (topics, map topic, residency) and owning partitions: where each
//! assigned partition starts, decided from the target's state when the consumer group
//! hands it over.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haven_kafka::rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use haven_kafka::rdkafka::producer::{FutureProducer, Producer};
use haven_kafka::rdkafka::types::RDKafkaRespErr;
use haven_kafka::rdkafka::{ClientContext, Offset, TopicPartitionList};
use haven_kafka::TopicInfo;

use super::position::{self, Position};
use super::MirrorOptions;
use crate::{blocking, Error, Result};

/// Where an owned partition starts.
#[derive(Debug, Clone)]
pub struct Start {
    pub topic: String,
    pub partition: i32,
    pub pos: Position,
    /// First source offset to read.
    pub start: i64,
    /// Snapshot end (`once`), exclusive.
    pub end: Option<i64>,
    /// Source offsets deleted before they were copied (inclusive range).
    pub lost: Option<(i64, i64)>,
}

#[derive(Debug)]
pub enum Change {
    Assigned(Vec<Start>),
    Revoked(Vec<(String, i32)>),
}

/// Start points of partitions from their known positions and the source's watermarks
/// (blocking).
pub fn starts(
    source: &BaseConsumer,
    parts: &[(String, i32)],
    known: &BTreeMap<(String, i32), Position>,
    once: bool,
) -> Result<Vec<Start>> {
    let mut out = Vec::new();
    for (t, p) in parts {
        let (low, high) = haven_kafka::watermarks(source, t, *p, Duration::from_secs(10))?;
        let pos = known.get(&(t.clone(), *p)).cloned().unwrap_or_default();
        let next = pos.next_source();
        let start = next.unwrap_or(low).max(low);
        out.push(Start {
            topic: t.clone(),
            partition: *p,
            lost: next.filter(|n| *n < low).map(|n| (n, low - 1)),
            pos,
            start,
            end: once.then_some(high),
        });
    }
    Ok(out)
}

/// Selects the source topics, checks residency and partition counts, creates missing
/// target topics and the map topic. Returns the selected source topics and a metadata
/// client of the target (connections across a slow link are worth keeping).
pub async fn prepare(opts: &MirrorOptions) -> Result<(Vec<TopicInfo>, Arc<BaseConsumer>)> {
    if opts.source.brokers == opts.target.brokers && opts.prefix.is_empty() {
        return Err(Error::Input(
            "the source and target are the same cluster and no --prefix is set: the mirror would copy its own output forever".into(),
        ));
    }
    let o = opts.clone();
    let (source_topics, target_topics, inspector) = blocking(move || {
        let s = o.source.inspector("haven-inspector")?;
        let t = o.target.inspector("haven-inspector")?;
        Ok((
            haven_kafka::list_topics(&s, &o.source.brokers, Duration::from_secs(10))?,
            haven_kafka::list_topics(&t, &o.target.brokers, Duration::from_secs(10))?,
            Arc::new(t),
        ))
    })
    .await?;
    let selected: Vec<TopicInfo> = source_topics
        .iter()
        .filter(|t| opts.selects(&t.name))
        .cloned()
        .collect();
    if selected.is_empty() {
        return Err(Error::Input(format!(
            "no topic on the source {} matches {}; topics there: {}",
            opts.source.brokers,
            opts.topics.as_str(),
            source_topics
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    opts.residency.check_topics(
        selected.iter().map(|t| t.name.as_str()),
        opts.target_region.as_deref(),
        &format!("the target cluster {:?}", opts.target_id),
    )?;
    let source_admin = opts.source.admin()?;
    let mut create = Vec::new();
    for t in &selected {
        let name = opts.target_topic(&t.name);
        match target_topics.iter().find(|x| x.name == name) {
            Some(x) if x.partitions < t.partitions => {
                return Err(Error::Input(format!(
                    "target topic {name} has {} partitions, the source {} has {}: partition p is mirrored to partition p, so add partitions to the target (or delete it and let the mirror create it)",
                    x.partitions, t.name, t.partitions
                )))
            }
            Some(_) => {}
            None => {
                let configs: Vec<(String, String)> =
                    haven_kafka::describe_topic_configs(&source_admin, &t.name)
                        .await
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|(k, v)| {
                            crate::restore::CARRIED_CONFIGS
                                .contains(&k.as_str())
                                .then_some((k, v?))
                        })
                        .collect();
                create.push((name, t.partitions, configs));
            }
        }
    }
    let map = position::map_topic(&opts.name);
    if !target_topics.iter().any(|t| t.name == map) {
        create.push((
            map,
            1,
            vec![("cleanup.policy".to_string(), "compact".to_string())],
        ));
    }
    if !create.is_empty() {
        haven_kafka::create_topics(&opts.target.admin()?, &create).await?;
    }
    Ok((selected, inspector))
}

/// Runs blocking work from a librdkafka callback without stalling the async runtime.
fn in_place<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(f),
        Err(_) => f(),
    }
}

/// The consumer context of a mirror process sharing partitions through the group.
pub struct MirrorContext {
    pub opts: MirrorOptions,
    pub known: Arc<Mutex<BTreeMap<(String, i32), Position>>>,
    pub producer: Arc<FutureProducer>,
    pub source: Arc<BaseConsumer>,
    pub target: Arc<BaseConsumer>,
    pub changes: tokio::sync::mpsc::UnboundedSender<Change>,
}

impl ClientContext for MirrorContext {}

impl MirrorContext {
    /// Positions of newly assigned partitions: what this process knew, extended by what
    /// the previous owner wrote since (read back from the target).
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) -> Result<()> {
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let mut known = self
            .known
            .lock()
            .map_err(|_| Error::Task("lock poisoned".into()))?
            .clone();
        let items: Vec<(String, i32, String)> = parts
            .iter()
            .map(|(t, p)| (t.clone(), *p, self.opts.target_topic(t)))
            .collect();
        position::catch_up_all(
            &self.opts.target,
            &self.target,
            &self.opts.source_id,
            &items,
            &mut known,
        )?;
        let starts = starts(&self.source, &parts, &known, false)?;
        let mut out = TopicPartitionList::new();
        for s in &starts {
            out.add_partition_offset(&s.topic, s.partition, Offset::Offset(s.start))
                .map_err(|e| Error::Task(e.to_string()))?;
        }
        // Tell the loop before any record of these partitions can reach it.
        let _ = self.changes.send(Change::Assigned(starts));
        consumer
            .assign(&out)
            .map_err(|e| Error::Task(format!("assign: {e}")))
    }
}

impl ConsumerContext for MirrorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = in_place(|| self.assign(consumer, tpl)) {
                    tracing::error!(
                        "rebalance: cannot position the assigned partitions ({e}); not taking them"
                    );
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                let _ = self.changes.send(Change::Revoked(revoked));
                // The next owner reads the target's tail: nothing of ours may still be on
                // its way there when it does.
                if let Err(e) = in_place(|| self.producer.flush(Duration::from_secs(60))) {
                    tracing::error!("rebalance: flushing the target producer failed: {e}");
                }
                if let Err(e) = consumer.unassign() {
                    tracing::error!("rebalance: unassign failed: {e}");
                }
            }
            other => tracing::warn!("rebalance error: {other:?}"),
        }
    }
}
