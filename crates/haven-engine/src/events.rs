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
    /// non-durable record (or an upper bound of it: for a backup, the time since the first
    /// lag sample that saw that record in the partition; for a mirror, the time since the
    /// partition was last fully durable).
    PartitionLag {
        topic: String,
        partition: i32,
        records: i64,
        seconds: f64,
        durable_offset: i64,
    },
    /// A backup process reads with this many readers (librdkafka consumers).
    ReadersStarted { readers: usize },
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
    /// A mirror rebuilt its target topics as exact copies of the source's (failback).
    MirrorRebuilt { epoch: u64, topics: Vec<String> },
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
    /// A group named in the mirror's configuration has no commit on the mirrored
    /// partitions of the source (sent once, until it has one): a typo, or a group that has
    /// not consumed yet. Nothing is synced for it.
    GroupNeverSynced { group: String },
    /// A recoverable error (broker unreachable, ...); the engine retries.
    Retrying { what: String, error: String },
    /// A signed head of a repository's audit chain was stored (and copied).
    AuditHeadSigned {
        repository: String,
        seq: u64,
        object: String,
    },
    /// The standby's agent starts an automatic failover (every gate passed).
    AutomaticFailover {
        from: String,
        to: String,
        free_rounds: u32,
    },
    /// The lease is free but a gate keeps the standby from failing over automatically.
    AutomaticFailoverBlocked { region: String, reason: String },
    /// A region's write route was closed by its agent (its claim to the lease ran out).
    RouteClosed { route: String, region: String },
    /// A plan's step starts (`step` counts from 1).
    StepStarted {
        action: String,
        step: usize,
        total: usize,
        what: String,
    },
    /// A plan's step is done and recorded.
    StepDone {
        action: String,
        step: usize,
        total: usize,
        what: String,
        ms: u64,
    },
    /// This region took the lease: it is the active region with this epoch.
    LeaseAcquired { region: String, epoch: u64 },
    /// This region's tenure is over (expired, or another region took the lease): it no
    /// longer claims to be writable.
    LeaseLost { region: String, epoch: u64 },
    /// This region gave the lease up (a clean stop).
    LeaseReleased { region: String, epoch: u64 },
}

impl std::fmt::Display for Event {
    /// One sentence per event, for logs read by a person.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::BackupStarted {
                partitions,
                target_records,
            } => match target_records {
                Some(n) => write!(f, "backup started: {partitions} partitions, {n} records to read"),
                None => write!(f, "backup started: {partitions} partitions"),
            },
            Event::SegmentWritten {
                key,
                records,
                bytes,
                oldest_age_ms,
            } => {
                write!(f, "segment {key} durable: {records} records, {bytes} bytes")?;
                match oldest_age_ms {
                    Some(ms) => write!(f, ", oldest record {ms} ms old"),
                    None => Ok(()),
                }
            }
            Event::RecordsLost {
                topic,
                partition,
                from,
                to,
                reason,
            } => write!(
                f,
                "records lost at the source: {topic}/{partition} offsets {from}..{to}: {reason}"
            ),
            Event::TopicRecreated { topic, generation } => write!(
                f,
                "topic {topic} was deleted and re-created: its records go to generation {generation}"
            ),
            Event::TopicChanged { topic, partitions } => {
                write!(f, "topic {topic}: {partitions} partitions")
            }
            Event::PartitionLag {
                topic,
                partition,
                records,
                seconds,
                durable_offset,
            } => write!(
                f,
                "{topic}/{partition}: {records} records ({seconds:.1} s) behind, durable to offset {durable_offset}"
            ),
            Event::ReadersStarted { readers } => write!(f, "reading with {readers} readers"),
            Event::PartitionsReleased { partitions } => {
                let names: Vec<String> =
                    partitions.iter().map(|(t, p)| format!("{t}/{p}")).collect();
                write!(f, "partitions handed to another member: {}", names.join(", "))
            }
            Event::GroupsSampled { groups, changes } => {
                write!(f, "consumer groups sampled: {groups} groups, {changes} new commits")
            }
            Event::ConcurrentAppend { seq } => write!(
                f,
                "another writer appended segment {seq} at the same time: reconciled with the log"
            ),
            Event::RestoreStarted { records } => write!(f, "restore started: {records} records"),
            Event::RestoreProgress { records } => write!(f, "restored {records} records"),
            Event::MirrorRebuilt { epoch, topics } => write!(
                f,
                "mirror rebuilt its target topics {} (epoch {epoch}): copying the source's again from its start",
                topics.join(", ")
            ),
            Event::MirrorStarted { partitions } => {
                write!(f, "mirror session started: {partitions} partitions")
            }
            Event::MirrorProgress {
                records,
                bytes,
                skipped_origin,
            } => write!(
                f,
                "mirrored {records} records ({bytes} bytes); {skipped_origin} not copied back to their origin"
            ),
            Event::GroupSynced { group, partitions } => {
                write!(f, "group {group}: offsets synced on {partitions} partitions")
            }
            Event::GroupNotSynced { group, reason } => {
                write!(f, "group {group}: offsets not synced: {reason}")
            }
            Event::GroupNeverSynced { group } => write!(
                f,
                "group {group} (configured with --groups) has no committed offset on the mirrored \
                 partitions of the source: nothing to sync; check the name"
            ),
            Event::Retrying { what, error } => write!(f, "{what} failed, retrying: {error}"),
            Event::AuditHeadSigned {
                repository,
                seq,
                object,
            } => write!(
                f,
                "audit chain of {repository} signed at entry {seq} ({object})"
            ),
            Event::LeaseAcquired { region, epoch } => {
                write!(f, "region {region} took the lease: active with epoch {epoch}")
            }
            Event::LeaseLost { region, epoch } => write!(
                f,
                "region {region} lost the lease of epoch {epoch}: it no longer accepts writes"
            ),
            Event::LeaseReleased { region, epoch } => {
                write!(f, "region {region} released the lease of epoch {epoch}")
            }
            Event::AutomaticFailover {
                from,
                to,
                free_rounds,
            } => write!(
                f,
                "automatic failover from {from} to {to}: the lease was free for {free_rounds} rounds and every gate passed"
            ),
            Event::AutomaticFailoverBlocked { region, reason } => write!(
                f,
                "region {region} does not fail over automatically: {reason}"
            ),
            Event::RouteClosed { route, region } => write!(
                f,
                "route {route} closed: region {region} no longer holds the lease"
            ),
            Event::StepStarted {
                action,
                step,
                total,
                what,
            } => write!(f, "{action}: step {step} of {total}: {what}"),
            Event::StepDone {
                action,
                step,
                total,
                what,
                ms,
            } => write!(f, "{action}: step {step} of {total} done in {ms} ms: {what}"),
        }
    }
}

/// Receives engine events. Must be cheap: it runs on the engine's task.
pub trait Observer: Send + Sync {
    fn event(&self, event: &Event);
}

/// Gives every event to two observers (the CLI's and the notifier, say).
pub struct Tee<'a>(pub &'a dyn Observer, pub &'a dyn Observer);

impl Observer for Tee<'_> {
    fn event(&self, event: &Event) {
        self.0.event(event);
        self.1.event(event);
    }
}

/// Logs every event with `tracing`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogObserver;

impl Observer for LogObserver {
    fn event(&self, event: &Event) {
        match event {
            Event::RecordsLost { .. } => tracing::error!("{event}"),
            Event::Retrying { .. }
            | Event::ConcurrentAppend { .. }
            | Event::GroupNotSynced { .. }
            | Event::GroupNeverSynced { .. }
            | Event::LeaseLost { .. }
            | Event::RouteClosed { .. }
            | Event::AutomaticFailover { .. }
            | Event::AutomaticFailoverBlocked { .. } => tracing::warn!("{event}"),
            Event::PartitionLag { .. }
            | Event::GroupsSampled { .. }
            | Event::GroupSynced { .. }
            | Event::MirrorProgress { .. }
            | Event::RestoreProgress { .. } => {
                tracing::debug!("{event}")
            }
            _ => tracing::info!("{event}"),
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
