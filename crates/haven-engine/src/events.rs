//! Typed internal events: every notable thing the engine does is one of these. An
//! [`Observer`] receives them; the CLI's observer logs them, counts them as metrics and
//! drives the progress bar, tests collect them.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A backup planned its partitions. `target_records` is known for snapshots (`--once`).
    BackupStarted {
        partitions: usize,
        target_records: Option<u64>,
    },
    /// A segment became durable in the repository.
    SegmentWritten {
        key: String,
        records: u64,
        bytes: u64,
        /// Milliseconds between the oldest record's timestamp and durability.
        oldest_age_ms: Option<i64>,
    },
    /// Records the source deleted before Haven read them.
    RecordsLost {
        topic: String,
        partition: i32,
        from: i64,
        to: i64,
        reason: String,
    },
    /// A topic was deleted and re-created: its data goes to a new generation.
    TopicRecreated { topic: String, generation: u32 },
    /// A topic's partition count or configuration changed (or was first seen).
    TopicChanged { topic: String, partitions: i32 },
    /// How far a partition's backup (or mirror) is behind the source: `records` not yet
    /// durable (high watermark minus durable offset) and `seconds`, the age of its oldest
    /// non-durable record (or an upper bound of it: the time since the partition was last
    /// fully durable).
    PartitionLag {
        topic: String,
        partition: i32,
        records: i64,
        seconds: f64,
        durable_offset: i64,
    },
    /// This process gave partitions to another member of its job (rebalance): it stops
    /// reporting their lag.
    PartitionsReleased { partitions: Vec<(String, i32)> },
    /// Consumer-group commits were sampled; `changes` of them were new.
    GroupsSampled { groups: usize, changes: usize },
    /// Another writer appended to the log at the same time; the backup reconciled.
    ConcurrentAppend { seq: u64 },
    /// A restore starts: `records` planned in all.
    RestoreStarted { records: u64 },
    /// Records a restore has written and seen acknowledged so far (including those an
    /// interrupted run had already written).
    RestoreProgress { records: u64 },
    /// A mirror session started with this many partitions selected.
    MirrorStarted { partitions: usize },
    /// Totals of a mirror process so far (sent with each lag measure).
    MirrorProgress {
        records: u64,
        bytes: u64,
        skipped_origin: u64,
    },
    /// A consumer group's offsets were translated and committed on the target.
    GroupSynced { group: String, partitions: usize },
    /// A consumer group's offsets could not be synced (typically: active on the target).
    GroupNotSynced { group: String, reason: String },
    /// A recoverable error (broker unreachable, ...); the engine retries.
    Retrying { what: String, error: String },
}

/// Receives engine events. Must be cheap: it runs on the engine's task.
pub trait Observer: Send + Sync {
    fn event(&self, event: &Event);
}

/// Logs every event with `tracing`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogObserver;

impl Observer for LogObserver {
    fn event(&self, event: &Event) {
        match event {
            Event::RecordsLost { .. } => tracing::error!(?event, "records lost at the source"),
            Event::Retrying { .. }
            | Event::ConcurrentAppend { .. }
            | Event::GroupNotSynced { .. } => tracing::warn!(?event),
            Event::PartitionLag { .. }
            | Event::GroupsSampled { .. }
            | Event::GroupSynced { .. }
            | Event::MirrorProgress { .. }
            | Event::RestoreProgress { .. } => {
                tracing::debug!(?event)
            }
            _ => tracing::info!(?event),
        }
    }
}

/// Collects events in memory (tests).
#[derive(Debug, Default)]
pub struct Collect(pub std::sync::Mutex<Vec<Event>>);

impl Observer for Collect {
    fn event(&self, event: &Event) {
        if let Ok(mut v) = self.0.lock() {
            v.push(event.clone());
        }
    }
}
