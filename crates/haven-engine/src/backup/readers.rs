//! The backup's readers: `--readers N` librdkafka consumers in one process, each with its
//! own connections and fetches, sharing one prefetch budget and feeding one batch (so
//! still one segment per flush). A snapshot deals the partitions out; a continuous backup
//! lets the consumer group share them among the readers of every process of the job.

use std::sync::Arc;

use haven_kafka::rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use haven_kafka::rdkafka::{Offset, TopicPartitionList};

use super::rebalance::{BackupContext, Change};
use super::BackupOptions;
use crate::repo::Repository;
use crate::{Error, Result};

/// Readers per process when not told: one. Measured on the reference machine (tansu,
/// 2 cores, 4 partitions on one broker): two plain librdkafka consumers draining in
/// parallel are no faster than one, and Haven with 4 readers was 1.3-1.6x slower than
/// with one and used 83-93 MiB instead of 50-58 (README, "Benchmarks"). librdkafka
/// already fetches from every broker at once; extra readers pay where many partitions
/// share a broker that serves connections in parallel: try `--readers` there.
pub fn default_readers(_partitions: usize) -> usize {
    1
}

pub(super) fn readers_for(asked: Option<usize>, partitions: usize) -> usize {
    match asked {
        Some(n) => n.clamp(1, partitions.max(1)),
        None => default_readers(partitions),
    }
}

/// `n` readers of the job's group, each with its rebalance callback and a share of the
/// prefetch budget.
pub(super) fn start(
    repo: &Repository,
    opts: &BackupOptions,
    inspector: &Arc<BaseConsumer>,
    changes: &std::sync::mpsc::Sender<Change>,
    group_id: &str,
    n: usize,
) -> Result<Vec<StreamConsumer<BackupContext>>> {
    let mut readers = Vec::with_capacity(n);
    for _ in 0..n {
        let context = BackupContext {
            repo: repo.clone(),
            handle: tokio::runtime::Handle::current(),
            inspector: inspector.clone(),
            changes: changes.clone(),
        };
        readers.push(opts.cluster.reader_sized(
            group_id,
            context,
            haven_kafka::READER_QUEUE_KB / n.max(1),
        )?);
    }
    Ok(readers)
}

/// A snapshot: reader i reads partitions i, i + n, i + 2n ... of `assign` from the
/// offsets given.
pub(super) fn deal(
    readers: &[StreamConsumer<BackupContext>],
    assign: &[(String, i32, i64)],
) -> Result<()> {
    let n = readers.len().max(1);
    for (i, reader) in readers.iter().enumerate() {
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in assign.iter().skip(i).step_by(n) {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                .map_err(|e| Error::Task(e.to_string()))?;
        }
        reader
            .assign(&tpl)
            .map_err(|e| Error::Task(format!("assign partitions: {e}")))?;
    }
    Ok(())
}

/// Continuous: every reader joins the job's group on `topics`.
pub(super) fn subscribe(
    readers: &[StreamConsumer<BackupContext>],
    topics: &[String],
) -> Result<()> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    for reader in readers {
        reader
            .subscribe(&names)
            .map_err(|e| Error::Task(format!("subscribe to {names:?}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asked_readers_are_kept_between_one_and_the_partitions() {
        assert_eq!(readers_for(Some(0), 4), 1);
        assert_eq!(readers_for(Some(3), 4), 3);
        assert_eq!(readers_for(Some(9), 4), 4);
        assert_eq!(readers_for(Some(2), 0), 1);
        assert_eq!(readers_for(None, 6), default_readers(6));
    }
}
