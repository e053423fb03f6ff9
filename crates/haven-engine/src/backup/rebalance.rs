//! Sharing partitions between backup processes of one job through Kafka's consumer-group
//! protocol.
//!
//! When the group assigns partitions to this process, the rebalance callback reads the
//! repository (the only authority on positions) and starts each partition at its first
//! non-durable offset. Correctness does not depend on ownership: every append reconciles
//! with the log (see `flush`), so a process that lost a partition but still flushes it
//! ("zombie") never writes a record twice. Ownership only avoids doing the work twice.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use haven_kafka::rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use haven_kafka::rdkafka::types::RDKafkaRespErr;
use haven_kafka::rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::repo::Repository;

/// What the rebalance callback tells the backup loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Partitions now owned: (topic, partition, generation, durable next offset, low watermark).
    Assigned(Vec<(String, i32, u32, Option<i64>, i64)>),
    Revoked(Vec<(String, i32)>),
}

pub struct BackupContext {
    pub(crate) repo: Repository,
    pub(crate) handle: tokio::runtime::Handle,
    pub(crate) inspector: Arc<BaseConsumer>,
    pub(crate) changes: mpsc::Sender<Change>,
}

impl ClientContext for BackupContext {}

impl BackupContext {
    fn load(&self) -> crate::Result<crate::repo::RepoState> {
        let fut = self.repo.load_state();
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| self.handle.block_on(fut)),
            Err(_) => self.handle.block_on(fut),
        }
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let state = match self.load() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(
                    "rebalance: cannot read the repository ({e}); not taking partitions"
                );
                return;
            }
        };
        let mut assigned = Vec::new();
        let mut out = TopicPartitionList::new();
        for e in tpl.elements() {
            let (topic, p) = (e.topic().to_string(), e.partition());
            let generation = state.topics.get(&topic).map_or(0, |t| t.generation);
            let next = state
                .partitions
                .get(&(topic.clone(), generation, p))
                .map(|s| s.next_offset);
            let low = haven_kafka::watermarks(&self.inspector, &topic, p, Duration::from_secs(10))
                .map(|w| w.0)
                .unwrap_or(0);
            let start = next.unwrap_or(low).max(low);
            if out
                .add_partition_offset(&topic, p, Offset::Offset(start))
                .is_ok()
            {
                assigned.push((topic, p, generation, next, low));
            }
        }
        // Tell the loop before any record of these partitions can reach it.
        let _ = self.changes.send(Change::Assigned(assigned));
        if let Err(e) = consumer.assign(&out) {
            tracing::error!("rebalance: assign failed: {e}");
        }
    }
}

impl ConsumerContext for BackupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                let _ = self.changes.send(Change::Revoked(revoked));
                if let Err(e) = consumer.unassign() {
                    tracing::error!("rebalance: unassign failed: {e}");
                }
            }
            other => tracing::warn!("rebalance error: {other:?}"),
        }
    }
}
