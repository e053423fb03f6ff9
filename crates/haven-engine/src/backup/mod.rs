//! `haven backup`: continuous, append-only backup of Kafka topics into a repository.
//!
//! The loop reads every selected partition with one consumer (committed records only),
//! keeps what it read in a [`Batch`], and every flush interval writes **one** segment
//! holding all partitions' progress: the number of PUTs does not grow with partitions.
//! The repository, not Kafka, remembers where the backup is: a restart reads the log and
//! continues at each partition's first non-durable offset, so a crash loses nothing and a
//! restart duplicates nothing. A segment is written with a create-only put at the next
//! log position; if another writer took it, the backup reloads the log and drops what
//! that writer already made durable.

pub mod batch;
pub mod groups;
mod lag;
pub mod readers;
pub mod rebalance;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use haven_format::TopicMeta;
use haven_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use haven_kafka::rdkafka::error::KafkaError as RdError;
use haven_kafka::rdkafka::message::Message;
use haven_kafka::rdkafka::types::RDKafkaErrorCode;
use haven_kafka::rdkafka::{Offset, TopicPartitionList};
use haven_kafka::ClusterConfig;
use haven_storage::StorageError;
use regex::Regex;
use serde::Serialize;
use tokio::sync::watch;

use crate::events::{Event, Observer};
use crate::repo::{RepoState, Repository};
use crate::{blocking, Error, Result};
use batch::{Batch, Pending};
use futures::StreamExt;
use groups::GroupSampler;
pub use readers::default_readers;
use readers::readers_for;
use rebalance::Change;

/// How a backup runs.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub cluster: ClusterConfig,
    /// Matched against whole topic names.
    pub topics: Regex,
    /// Snapshot: back up to the high watermarks seen at start, then stop.
    pub once: bool,
    /// Longest time a record waits in memory before it is written (the RPO).
    pub flush_interval: Duration,
    /// Flush early when this many bytes are buffered (bounds memory).
    pub max_buffer_bytes: usize,
    /// How often consumer-group commits are sampled; None disables the timeline.
    pub group_interval: Option<Duration>,
    /// Consumer groups always sampled, even where the cluster cannot list groups.
    pub groups: Vec<String>,
    /// Job name, recorded as the writer of each segment.
    pub job: String,
    /// Data-residency rules and the repository's region: a pinned topic is refused
    /// before its first record is read.
    pub residency: crate::residency::Rules,
    pub repository_region: Option<String>,
    /// Readers (librdkafka consumers) in this process; None: [`default_readers`].
    pub readers: Option<usize>,
}

impl BackupOptions {
    pub fn new(cluster: ClusterConfig, topics: Regex) -> Self {
        BackupOptions {
            cluster,
            topics,
            once: false,
            flush_interval: Duration::from_millis(500),
            max_buffer_bytes: 6 * 1024 * 1024,
            group_interval: Some(Duration::from_secs(5)),
            groups: Vec::new(),
            job: "default".into(),
            residency: crate::residency::Rules::default(),
            repository_region: None,
            readers: None,
        }
    }
}

/// What a backup run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackupReport {
    pub segments: u64,
    pub records: u64,
    pub bytes: u64,
    pub partitions: usize,
    /// Readers (Kafka consumers) this process read with.
    pub readers: usize,
    pub losses: Vec<(String, i32, i64, i64)>,
    pub seconds: f64,
    /// Peak resident memory of this process (Linux: VmHWM), in MiB.
    pub peak_rss_mib: Option<f64>,
}

/// This process's peak resident set size in MiB (Linux only).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Anchors a user's topic pattern so it matches whole names.
pub fn topic_regex(pattern: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        Error::Input(format!(
            "--topics {pattern:?} is not a regular expression: {e}"
        ))
    })
}

/// The topics a backup selects: the cluster must answer, at least one topic must match,
/// and residency must allow them into the repository at `repo_url`. `haven backup` calls
/// it before it creates a repository, so a typo or an unreachable broker creates nothing.
pub async fn select_topics(
    opts: &BackupOptions,
    repo_url: &str,
) -> Result<(
    haven_kafka::rdkafka::consumer::BaseConsumer,
    Vec<haven_kafka::TopicInfo>,
)> {
    let cluster = opts.cluster.clone();
    let (inspector, topics) = blocking(move || {
        let c = cluster.inspector("haven-inspector")?;
        let t = haven_kafka::list_topics(&c, &cluster.brokers, Duration::from_secs(10))?;
        Ok((c, t))
    })
    .await?;
    let all: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let selected: Vec<_> = topics
        .into_iter()
        .filter(|t| opts.topics.is_match(&t.name))
        .collect();
    if selected.is_empty() {
        return Err(Error::Input(format!(
            "no topic on {} matches {}; topics there: {}",
            opts.cluster.brokers,
            opts.topics.as_str(),
            if all.is_empty() {
                "(none)".to_string()
            } else {
                all.join(", ")
            }
        )));
    }
    opts.residency.check_topics(
        selected.iter().map(|t| t.name.as_str()),
        opts.repository_region.as_deref(),
        &format!("the repository {repo_url}"),
    )?;
    Ok((inspector, selected))
}

struct Plan {
    batch: Batch,
    assign: Vec<(String, i32, i64)>,
    topics: Vec<String>,
    inspector: Arc<haven_kafka::rdkafka::consumer::BaseConsumer>,
}

async fn plan(
    repo: &Repository,
    state: &RepoState,
    opts: &BackupOptions,
    observer: &dyn Observer,
) -> Result<Plan> {
    let (inspector, selected) = select_topics(opts, repo.store().url()).await?;
    let inspector = Arc::new(inspector);
    let admin = opts.cluster.admin()?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut batch = Batch::default();
    let mut assign = Vec::new();
    for t in &selected {
        let configs = match haven_kafka::describe_topic_configs(&admin, &t.name).await {
            Ok(c) => c,
            Err(e) => {
                observer.event(&Event::Retrying {
                    what: format!("describe configs of {}", t.name),
                    error: e.to_string(),
                });
                Vec::new()
            }
        };
        let mut generation = state.topics.get(&t.name).map_or(0, |s| s.generation);
        let mut recreated = false;
        let mut starts = Vec::new();
        for p in 0..t.partitions {
            let (c, name) = (inspector.clone(), t.name.clone());
            let (low, high) = blocking(move || {
                Ok(haven_kafka::watermarks(
                    &c,
                    &name,
                    p,
                    Duration::from_secs(10),
                )?)
            })
            .await?;
            let known = state
                .partitions
                .get(&(t.name.clone(), generation, p))
                .map(|s| s.next_offset);
            if known.is_some_and(|next| high < next) {
                recreated = true;
            }
            starts.push((p, low, high, known));
        }
        if recreated {
            generation += 1;
            observer.event(&Event::TopicRecreated {
                topic: t.name.clone(),
                generation,
            });
        }
        let prev = state.topics.get(&t.name).and_then(|s| s.meta.clone());
        let changed = recreated
            || prev.as_ref().is_none_or(|m| {
                m.partition_count != t.partitions
                    || m.configs != configs
                    || m.generation != generation
            });
        if changed {
            observer.event(&Event::TopicChanged {
                topic: t.name.clone(),
                partitions: t.partitions,
            });
            batch.topics.push(TopicMeta {
                topic: t.name.clone(),
                generation,
                partition_count: t.partitions,
                observed_at: now,
                configs,
            });
        }
        for (p, low, high, known) in starts {
            let next = if recreated { None } else { known };
            let start = next.unwrap_or(low);
            let key = (t.name.clone(), p);
            batch.parts.insert(
                key.clone(),
                Pending::new(generation, start, opts.once.then_some(high)),
            );
            if start < low {
                let reason = "deleted at the source (retention) before Haven read it";
                if let Some(l) = batch.loss(&t.name, p, low, reason) {
                    observer.event(&Event::RecordsLost {
                        topic: t.name.clone(),
                        partition: p,
                        from: l.from,
                        to: l.to,
                        reason: reason.into(),
                    });
                }
            }
            let pending = &batch.parts[&key];
            if !pending.done() {
                assign.push((t.name.clone(), p, pending.end()));
            }
        }
    }
    let topics = selected.iter().map(|t| t.name.clone()).collect();
    Ok(Plan {
        batch,
        assign,
        topics,
        inspector,
    })
}

/// Runs a backup until it is done (`--once`) or `stop` turns true.
pub async fn run(
    repo: &Repository,
    opts: &BackupOptions,
    observer: &dyn Observer,
    mut stop: watch::Receiver<bool>,
) -> Result<BackupReport> {
    let started = Instant::now();
    let mut state = repo.load_state().await?;
    let Plan {
        mut batch,
        assign,
        topics,
        inspector,
    } = plan(repo, &state, opts, observer).await?;
    // Every partition of the selected topics, for the group timeline.
    let partitions: Vec<(String, i32)> = batch.parts.keys().cloned().collect();
    let target_records = opts.once.then(|| {
        batch
            .parts
            .values()
            .map(|p| p.target.unwrap_or(0).saturating_sub(p.end()).max(0) as u64)
            .sum()
    });
    observer.event(&Event::BackupStarted {
        partitions: batch.parts.len(),
        target_records,
    });
    let mut report = BackupReport {
        partitions: batch.parts.len(),
        ..Default::default()
    };
    for p in &batch.parts {
        for l in &p.1.losses {
            report.losses.push((p.0 .0.clone(), p.0 .1, l.from, l.to));
        }
    }
    let group_id = format!("haven-backup-{}", opts.job);
    let (changes_tx, changes) = std::sync::mpsc::channel();
    // Several readers, each its own librdkafka consumer (its own connections and fetches),
    // sharing the prefetch budget; one batch, so still one segment per flush.
    let n = readers_for(
        opts.readers,
        if opts.once {
            assign.len()
        } else {
            batch.parts.len()
        },
    );
    let readers = readers::start(repo, opts, &inspector, &changes_tx, &group_id, n)?;
    observer.event(&Event::ReadersStarted { readers: n });
    report.readers = n;
    if opts.once {
        // A snapshot: this process reads every partition up to the watermarks seen at
        // start, the partitions dealt out to the readers in turn.
        readers::deal(&readers, &assign)?;
    } else {
        // Continuous: the readers of all the job's processes share partitions through the
        // consumer group. Topic changes (a new generation) become durable first, so the
        // rebalance callback reads the right generation from the repository.
        flush(repo, &mut state, &mut batch, opts, observer, &mut report).await?;
        batch.parts.clear();
        readers::subscribe(&readers, &topics)?;
    }
    let mut merged = futures::stream::select_all(
        readers
            .iter()
            .enumerate()
            .map(|(i, c)| c.stream().map(move |m| (i, m))),
    );
    let mut revoked: Vec<(String, i32)> = Vec::new();
    let mut sampler = GroupSampler::new(
        &state.group_offsets,
        [group_id.clone()],
        opts.groups.clone(),
    );
    let mut next_sample = Instant::now();
    let mut next_lag = Instant::now();
    let mut caught_up = lag::LagClock::default();
    let mut tick = tokio::time::interval(opts.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flush = Instant::now();
    let idle_flush = Duration::from_secs(60);
    let mut interrupted = false;

    loop {
        if opts.once && batch.all_done() {
            break;
        }
        tokio::select! {
            msg = merged.next() => match msg {
                None => return Err(Error::Task("the readers' streams ended".into())),
                Some((_, Ok(m))) => {
                    apply_changes(&changes, &mut batch, &mut revoked, &mut report, observer);
                    let rec = haven_kafka::record_ref(&m);
                    // A record of a data subject is sealed under the subject's key first.
                    let sealed = repo.seal(m.topic(), &rec).await?;
                    let rec = match &sealed {
                        Some(s) => s.record(&rec),
                        None => rec,
                    };
                    batch
                        .push(m.topic(), m.partition(), &rec)
                        .map_err(|e| Error::format(&format!("{}/{}", m.topic(), m.partition()), e))?;
                }
                Some((i, Err(RdError::PartitionEOF(_)))) => {
                    // The event does not say which topic: ask the reader for positions.
                    if let Ok(pos) = readers[i].position() {
                        for e in pos.elements() {
                            if let Offset::Offset(o) = e.offset() {
                                batch.eof(e.topic(), e.partition(), o);
                            }
                        }
                    }
                }
                Some((i, Err(RdError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange)))) => {
                    check_retention_loss(&readers, i, &inspector, &mut batch, &mut report, observer).await?;
                }
                Some((_, Err(e))) => {
                    observer.event(&Event::Retrying { what: "consume".into(), error: e.to_string() });
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            _ = tick.tick() => apply_changes(&changes, &mut batch, &mut revoked, &mut report, observer),
            _ = stop.changed() => {
                if *stop.borrow() {
                    break;
                }
            }
        }
        let now = Instant::now();
        // Sampling and lag measures wait on the cluster (up to its timeouts when it is
        // down): a stop request interrupts them, so shutdown stays prompt.
        if let Some(iv) = opts.group_interval {
            if now >= next_sample {
                next_sample = now + iv;
                tokio::select! {
                    _ = sample_groups(&mut sampler, opts, &partitions, &mut batch, observer) => {}
                    _ = until_stopped(&mut stop) => {
                        interrupted = true;
                        break;
                    }
                }
            }
        }
        if now >= next_lag {
            next_lag = now + LAG_INTERVAL;
            tokio::select! {
                _ = report_lag(&inspector, &batch, &mut caught_up, observer) => {}
                _ = until_stopped(&mut stop) => {
                    interrupted = true;
                    break;
                }
            }
        }
        let since_flush = now.duration_since(last_flush);
        let due = since_flush >= opts.flush_interval
            && (batch
                .parts
                .values()
                .any(|p| p.has_records() || !p.losses.is_empty())
                || !batch.topics.is_empty()
                || since_flush >= idle_flush && batch.has_progress());
        if due || batch.bytes >= opts.max_buffer_bytes || !revoked.is_empty() {
            if opts.once {
                flush(repo, &mut state, &mut batch, opts, observer, &mut report).await?;
            } else {
                let mut w = Waiting {
                    inspector: &inspector,
                    caught_up: &mut caught_up,
                    stop: &mut stop,
                };
                if !flush_holding_on(
                    repo,
                    &mut state,
                    &mut batch,
                    opts,
                    observer,
                    &mut report,
                    &mut w,
                )
                .await?
                {
                    interrupted = true;
                    break;
                }
            }
            last_flush = Instant::now();
            // Partitions given away: what we read of them is durable now; forget them.
            for k in revoked.drain(..) {
                caught_up.forget(&k.0, k.1);
                batch.parts.remove(&k);
            }
        }
    }
    // A last sample of the group timeline, unless a stop interrupted one (its sampler is
    // gone) or the cluster does not answer promptly.
    if opts.group_interval.is_some() && !interrupted {
        let last = sample_groups(&mut sampler, opts, &partitions, &mut batch, observer);
        if tokio::time::timeout(FINAL_SAMPLE_WAIT, last).await.is_err() {
            tracing::warn!(
                "the last consumer-group sample got no answer within {FINAL_SAMPLE_WAIT:?}: skipped"
            );
        }
    }
    flush(repo, &mut state, &mut batch, opts, observer, &mut report).await?;
    report.seconds = started.elapsed().as_secs_f64();
    report.peak_rss_mib = peak_rss_mib();
    Ok(report)
}

async fn sample_groups(
    sampler: &mut GroupSampler,
    opts: &BackupOptions,
    partitions: &[(String, i32)],
    batch: &mut Batch,
    observer: &dyn Observer,
) {
    let now = chrono::Utc::now().timestamp_millis();
    let cluster = opts.cluster.clone();
    let parts = partitions.to_vec();
    let mut s = std::mem::take(sampler);
    let res = blocking(move || {
        let r = s.sample_blocking(&cluster, &parts, now);
        Ok((s, r))
    })
    .await;
    match res {
        Ok((s, Ok((groups, changes, discovery_error)))) => {
            *sampler = s;
            if let Some(error) = discovery_error {
                observer.event(&Event::Retrying {
                    what: "list consumer groups (only the groups named with --group are sampled)"
                        .into(),
                    error,
                });
            }
            observer.event(&Event::GroupsSampled {
                groups,
                changes: changes.len(),
            });
            batch.group_commits.extend(changes);
            batch.group_samples.push(now);
        }
        Ok((s, Err(e))) => {
            *sampler = s;
            observer.event(&Event::Retrying {
                what: "sample consumer groups".into(),
                error: e.to_string(),
            });
        }
        Err(e) => observer.event(&Event::Retrying {
            what: "sample consumer groups".into(),
            error: e.to_string(),
        }),
    }
}

/// How long a stopping backup waits for its last group sample.
const FINAL_SAMPLE_WAIT: Duration = Duration::from_secs(2);

/// Resolves once `stop` is true (never, if its sender is gone without saying so).
async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// How often per-partition lag is measured (one watermark query per owned partition).
const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// Per owned partition: topic, partition, durable offset, oldest timestamp held.
type LagParts = Vec<(String, i32, i64, Option<i64>)>;

fn lag_parts(batch: &Batch) -> LagParts {
    batch
        .parts
        .iter()
        .map(|(k, p)| (k.0.clone(), k.1, p.durable, p.oldest_timestamp))
        .collect()
}

/// Measures how far each owned partition is behind its high watermark.
async fn report_lag(
    inspector: &Arc<BaseConsumer>,
    batch: &Batch,
    caught_up: &mut lag::LagClock,
    observer: &dyn Observer,
) {
    report_lag_of(inspector, lag_parts(batch), caught_up, observer).await
}

/// [`report_lag`] from a snapshot of the batch (taken before a flush that may hang).
async fn report_lag_of(
    inspector: &Arc<BaseConsumer>,
    parts: LagParts,
    caught_up: &mut lag::LagClock,
    observer: &dyn Observer,
) {
    let c = inspector.clone();
    let highs = blocking(move || {
        let mut out = Vec::new();
        for (t, p, durable, oldest) in parts {
            let (_, high) = haven_kafka::watermarks(&c, &t, p, Duration::from_secs(5))?;
            out.push((t, p, durable, high, oldest));
        }
        Ok(out)
    })
    .await;
    let highs = match highs {
        Ok(h) => h,
        Err(e) => {
            observer.event(&Event::Retrying {
                what: "measure lag".into(),
                error: e.to_string(),
            });
            return;
        }
    };
    let now = Instant::now();
    let wall = chrono::Utc::now().timestamp_millis();
    for (topic, partition, durable, high, oldest) in highs {
        let records = (high - durable).max(0);
        let mut seconds = caught_up.sample(&topic, partition, durable, high, now);
        // The oldest record held (read, not yet durable) is the oldest waiting: its
        // timestamp narrows the bound, unless it lies in the future (a producer's clock).
        if let Some(age) = oldest.map(|ts| wall - ts).filter(|a| *a >= 0) {
            seconds = seconds.min(age as f64 / 1000.0);
        }
        observer.event(&Event::PartitionLag {
            topic,
            partition,
            records,
            seconds,
            durable_offset: durable,
        });
    }
}

/// Applies the rebalance callback's news to the batch.
fn apply_changes(
    changes: &std::sync::mpsc::Receiver<Change>,
    batch: &mut Batch,
    revoked: &mut Vec<(String, i32)>,
    report: &mut BackupReport,
    observer: &dyn Observer,
) {
    while let Ok(change) = changes.try_recv() {
        match change {
            Change::Assigned(parts) => {
                for (topic, p, generation, next, low) in parts {
                    let key = (topic.clone(), p);
                    revoked.retain(|k| *k != key);
                    if batch.parts.contains_key(&key) {
                        if let Some(n) = next {
                            if let Err(e) = batch.advance(&topic, p, n) {
                                tracing::error!("{topic}/{p}: {e}");
                            }
                        }
                        continue;
                    }
                    batch
                        .parts
                        .insert(key, Pending::new(generation, next.unwrap_or(low), None));
                    if next.is_some_and(|n| n < low) {
                        let reason = "deleted at the source (retention) before Haven read it";
                        if let Some(l) = batch.loss(&topic, p, low, reason) {
                            report.losses.push((topic.clone(), p, l.from, l.to));
                            observer.event(&Event::RecordsLost {
                                topic: topic.clone(),
                                partition: p,
                                from: l.from,
                                to: l.to,
                                reason: reason.into(),
                            });
                        }
                    }
                }
                report.partitions = batch.parts.len();
            }
            Change::Revoked(parts) => {
                observer.event(&Event::PartitionsReleased {
                    partitions: parts.clone(),
                });
                revoked.extend(parts)
            }
        }
    }
}

/// Finds the partitions whose next offset the source deleted (retention), records the
/// loss and moves the reader that owns each (else reader `from`, which hit it) to the low
/// watermark.
async fn check_retention_loss<C: haven_kafka::rdkafka::consumer::ConsumerContext + 'static>(
    readers: &[haven_kafka::rdkafka::consumer::StreamConsumer<C>],
    from: usize,
    inspector: &Arc<BaseConsumer>,
    batch: &mut Batch,
    report: &mut BackupReport,
    observer: &dyn Observer,
) -> Result<()> {
    let parts: Vec<(String, i32, i64)> = batch
        .parts
        .iter()
        .map(|(k, p)| (k.0.clone(), k.1, p.end()))
        .collect();
    let c = inspector.clone();
    let lows = blocking(move || {
        let mut out = Vec::new();
        for (t, p, end) in parts {
            let (low, _) = haven_kafka::watermarks(&c, &t, p, Duration::from_secs(10))?;
            if end < low {
                out.push((t, p, low));
            }
        }
        Ok(out)
    })
    .await?;
    let reason = "deleted at the source (retention) before Haven read it";
    for (t, p, low) in lows {
        if let Some(l) = batch.loss(&t, p, low, reason) {
            observer.event(&Event::RecordsLost {
                topic: t.clone(),
                partition: p,
                from: l.from,
                to: l.to,
                reason: reason.into(),
            });
            report.losses.push((t.clone(), p, l.from, l.to));
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&t, p, Offset::Offset(low))
                .map_err(|e| Error::Task(e.to_string()))?;
            let owns = |c: &&haven_kafka::rdkafka::consumer::StreamConsumer<C>| {
                c.assignment()
                    .is_ok_and(|a| a.find_partition(&t, p).is_some())
            };
            let Some(consumer) = readers.iter().find(owns).or(readers.get(from)) else {
                continue;
            };
            consumer
                .incremental_assign(&tpl)
                .or_else(|_| consumer.seek(&t, p, Offset::Offset(low), Duration::from_secs(5)))
                .map_err(|e| Error::Task(format!("seek {t}/{p} to {low}: {e}")))?;
        }
    }
    Ok(())
}

/// What a backup waiting for its repository keeps doing: measuring its lag (so the RPO
/// alarm fires), and listening for a stop.
struct Waiting<'a> {
    inspector: &'a Arc<BaseConsumer>,
    caught_up: &'a mut lag::LagClock,
    stop: &'a mut watch::Receiver<bool>,
}

/// The longest pause between two attempts to write to a repository that does not answer.
const STORE_RETRY_MAX: Duration = Duration::from_secs(10);

/// A continuous backup holds on through an object-store outage: a flush the store
/// refuses (it does not answer, or answers with an error: [`StorageError::Backend`]) is
/// retried, with pauses growing from 1 s to [`STORE_RETRY_MAX`], until it succeeds or the
/// backup is stopped (then false). Meanwhile nothing more is read (memory stays bounded by
/// what was pending), what was read stays pending (a retry writes the same records), and
/// the lag keeps being measured, so the RPO and stall alarms fire during the outage.
/// Other errors end the backup as before.
async fn flush_holding_on(
    repo: &Repository,
    state: &mut RepoState,
    batch: &mut Batch,
    opts: &BackupOptions,
    observer: &dyn Observer,
    report: &mut BackupReport,
    w: &mut Waiting<'_>,
) -> Result<bool> {
    let mut pause = Duration::from_secs(1);
    let mut since: Option<Instant> = None;
    loop {
        let attempt = Instant::now();
        // A store that hangs holds a flush up to its timeout: the lag is measured
        // meanwhile too (from the batch as it was), so the alarms do not wait for it.
        let parts = lag_parts(batch);
        let result = {
            let flushing = flush(repo, state, batch, opts, observer, report);
            tokio::pin!(flushing);
            let start = tokio::time::Instant::now() + LAG_INTERVAL;
            let mut tick = tokio::time::interval_at(start, LAG_INTERVAL);
            loop {
                tokio::select! {
                    r = &mut flushing => break r,
                    _ = tick.tick() => {
                        report_lag_of(w.inspector, parts.clone(), w.caught_up, observer).await
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                if let Some(t) = since {
                    tracing::warn!(
                        "the repository answers again after {:.1} s: pending records written",
                        t.elapsed().as_secs_f64()
                    );
                }
                return Ok(true);
            }
            Err(Error::Storage(e @ StorageError::Backend { .. })) => {
                // Counted from the start of the first attempt that failed.
                let t = *since.get_or_insert(attempt);
                observer.event(&Event::Retrying {
                    what: format!(
                        "write a segment (the repository has not answered for {:.0} s; \
                         nothing more is read until it does)",
                        t.elapsed().as_secs_f64()
                    ),
                    error: e.to_string(),
                });
                report_lag(w.inspector, batch, w.caught_up, observer).await;
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = until_stopped(w.stop) => return Ok(false),
                }
                pause = (pause * 2).min(STORE_RETRY_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes everything pending as one segment. On a concurrent append, reloads the log,
/// drops what the other writer made durable, and retries.
async fn flush(
    repo: &Repository,
    state: &mut RepoState,
    batch: &mut Batch,
    opts: &BackupOptions,
    observer: &dyn Observer,
    report: &mut BackupReport,
) -> Result<()> {
    for attempt in 0..10 {
        if !batch.has_progress() {
            return Ok(());
        }
        let writer = format!("{}:{}", opts.job, std::process::id());
        // A key rotation made while this backup runs applies from its next segment.
        if let Err(e) = repo.refresh_keys().await {
            observer.event(&Event::Retrying {
                what: "re-read keys/ for a rotation".into(),
                error: e.to_string(),
            });
        }
        if repo.erasure().rules.is_some() {
            // A subject forgotten while this backup runs gets a new key, never the old one.
            if let Err(e) = repo.erasure().keys.refresh(repo.store()).await {
                observer.event(&Event::Retrying {
                    what: "re-read forgotten/".into(),
                    error: e.to_string(),
                });
            }
        }
        let mut seg = repo.new_segment(state.head, &writer);
        // Compressed JSON-like payloads take about a third of their size: avoid regrowing.
        seg.reserve(batch.bytes / 2 + 4096);
        let records = batch
            .fill(&mut seg)
            .map_err(|e| Error::format("new segment", e))?;
        let oldest = batch
            .parts
            .values()
            .filter_map(|p| p.oldest_timestamp)
            .min();
        match repo.commit_segment(state, seg).await {
            Ok((key, len)) => {
                batch.committed();
                report.segments += 1;
                report.records += records;
                report.bytes += len;
                observer.event(&Event::SegmentWritten {
                    key,
                    records,
                    bytes: len,
                    oldest_age_ms: oldest.map(|t| chrono::Utc::now().timestamp_millis() - t),
                });
                return Ok(());
            }
            Err(Error::Concurrent { seq, .. }) if attempt < 9 => {
                observer.event(&Event::ConcurrentAppend { seq });
                repo.refresh_state(state).await?;
                let advanced: BTreeMap<(String, i32), i64> = batch
                    .parts
                    .iter()
                    .filter_map(|(k, p)| {
                        state
                            .partitions
                            .get(&(k.0.clone(), p.generation, k.1))
                            .map(|s| (k.clone(), s.next_offset))
                    })
                    .collect();
                for ((t, p), next) in advanced {
                    batch
                        .advance(&t, p, next)
                        .map_err(|e| Error::format("pending records", e))?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::Concurrent {
        seq: state.head.map_or(0, |h| h.0 + 1),
        detail: "gave up after 10 attempts: too many writers on one repository".into(),
    })
}
