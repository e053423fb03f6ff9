//! `haven mirror`: continuous replication of topics from one cluster to another.
//!
//! Records are copied partition to partition (same partition number, same order) with
//! their keys, values, headers and timestamps, plus provenance headers (`provenance`). The
//! target cluster is the only state: where each partition stands is rebuilt from the map
//! topic and the target partition's tail (`position`), so a mirror killed at any moment
//! resumes exactly (nothing duplicated, nothing skipped). Every delivery extends the
//! partition's offset map, which translates consumer-group offsets exactly (`groups`).
//!
//! Failures (broker restarts, network cuts, a producer error) end the *session*: the mirror
//! waits until every record in flight is settled, then starts over from the target's
//! state after a back-off. Lag keeps being reported meanwhile.

pub mod groups;
pub mod handover;
pub mod position;
pub mod rebuild;
pub use haven_format::provenance;
pub mod status;
mod target;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use haven_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use haven_kafka::rdkafka::error::KafkaError as RdError;
use haven_kafka::rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use haven_kafka::rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use haven_kafka::rdkafka::types::RDKafkaErrorCode;
use haven_kafka::rdkafka::{Offset, TopicPartitionList};
use haven_kafka::ClusterConfig;
use regex::Regex;
use serde::Serialize;
use tokio::sync::watch;

use crate::events::{Event, Observer};
use crate::residency::Rules;
use crate::{blocking, Error, Result};
use position::{MapEntry, Position};
use target::{Change, MirrorContext};

/// Records taken from the consumer's queue at once when they are already there.
const BURST: usize = 500;

/// How a mirror runs.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    /// Names the mirror's map topic and consumer group; keep it stable.
    pub name: String,
    pub source: ClusterConfig,
    /// Source cluster id written in provenance headers (its name in haven.toml).
    pub source_id: String,
    pub target: ClusterConfig,
    pub target_id: String,
    /// Region of the target cluster, for residency rules.
    pub target_region: Option<String>,
    /// Matched against whole source topic names.
    pub topics: Regex,
    /// Target topic = prefix + source topic.
    pub prefix: String,
    /// Consumer groups (regular expressions) whose offsets are synced to the target.
    pub groups: Vec<String>,
    pub residency: Rules,
    /// Mirror up to the source's high watermarks seen at start, then stop.
    pub once: bool,
    /// How often group offsets are synced.
    pub sync_interval: Duration,
    /// How often the offset map is checkpointed to the map topic.
    pub checkpoint_interval: Duration,
    /// Records in flight (sent, not yet acknowledged) before reading pauses.
    pub max_in_flight: usize,
    /// Key and value bytes in flight before reading pauses (bounds memory whatever the
    /// record size, and keeps librdkafka's queue from filling).
    pub max_in_flight_bytes: usize,
}

impl MirrorOptions {
    pub fn new(
        source: (ClusterConfig, String),
        target: (ClusterConfig, String),
        topics: Regex,
    ) -> Self {
        let name = format!("{}-to-{}", source.1, target.1)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        MirrorOptions {
            name,
            source: source.0,
            source_id: source.1,
            target: target.0,
            target_id: target.1,
            target_region: None,
            topics,
            prefix: String::new(),
            groups: Vec::new(),
            residency: Rules::default(),
            once: false,
            sync_interval: Duration::from_secs(1),
            checkpoint_interval: Duration::from_secs(5),
            max_in_flight: 20_000,
            max_in_flight_bytes: 64 << 20,
        }
    }

    /// The options of a mirror configured as `[mirrors.NAME]` (clusters by their names).
    pub fn from_config(cfg: &crate::config::Config, name: &str) -> Result<Self> {
        let m = cfg.mirrors.get(name).ok_or_else(|| {
            Error::Input(format!(
                "no mirror named {name:?} in the config: define [mirrors.{name}]"
            ))
        })?;
        let mut opts = MirrorOptions::new(
            (cfg.cluster(&m.from).client_config()?, m.from.clone()),
            (cfg.cluster(&m.to).client_config()?, m.to.clone()),
            crate::backup::topic_regex(&m.topics)?,
        );
        opts.name = name.to_string();
        opts.prefix = m.prefix.clone().unwrap_or_default();
        opts.groups = m.groups.clone();
        opts.residency = cfg.residency_rules();
        opts.target_region = cfg.cluster(&m.to).region;
        Ok(opts)
    }

    pub fn target_topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// Whether a source topic is mirrored: it matches `topics` and is not a mirror's own map
    /// topic (a `.*` mirror of an active-active pair would otherwise copy the other
    /// direction's map).
    pub fn selects(&self, topic: &str) -> bool {
        self.topics.is_match(topic) && !topic.starts_with(position::MAP_TOPIC_PREFIX)
    }
}

/// What a mirror run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MirrorReport {
    pub records: u64,
    pub bytes: u64,
    /// Records not copied because they originated on the target (active-active).
    pub skipped_origin: u64,
    pub partitions: usize,
    /// Sessions started (1 + restarts after failures).
    pub sessions: u64,
    pub group_commits: u64,
    /// Records found twice on a target partition (must stay 0).
    pub duplicates: u64,
    pub seconds: f64,
}

/// Runs a mirror until it is done (`once`) or `stop` turns true, restarting its session
/// after operational failures.
pub async fn run(
    opts: &MirrorOptions,
    observer: &dyn Observer,
    mut stop: watch::Receiver<bool>,
) -> Result<MirrorReport> {
    let started = Instant::now();
    let mut report = MirrorReport::default();
    let mut backoff = Duration::from_millis(500);
    // A snapshot (`once`) gives up after this long without progress; a continuous mirror
    // keeps retrying, as a daemon should (its lag metrics show the outage).
    let give_up = Duration::from_secs(10);
    let mut failing_since: Option<(Instant, u64)> = None;
    loop {
        report.sessions += 1;
        match session(opts, observer, &mut stop, &mut report).await {
            Ok(()) => break,
            Err(e) if e.is_usage() => return Err(e),
            Err(e) => {
                let since = match failing_since {
                    Some((t, records)) if records == report.records => t,
                    _ => {
                        failing_since = Some((Instant::now(), report.records));
                        Instant::now()
                    }
                };
                if opts.once && since.elapsed() >= give_up {
                    return Err(Error::Unreachable(format!(
                        "mirror {} gave up after {} s without progress: {e}",
                        opts.name,
                        since.elapsed().as_secs()
                    )));
                }
                observer.event(&Event::Retrying {
                    what: format!("mirror session (next in {} ms)", backoff.as_millis()),
                    error: e.to_string(),
                });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                if *stop.borrow() {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// One owned partition.
struct Part {
    topic: String,
    partition: i32,
    target_topic: String,
    pos: Position,
    /// First source offset not yet settled (copied and acknowledged, or skipped).
    durable_next: i64,
    /// (source offset, timestamp ms, is a copy) of records sent and not yet acknowledged.
    pending: VecDeque<(i64, i64)>,
    /// Source high watermark at the last measure (or the snapshot's end).
    high: i64,
    end: Option<i64>,
    caught_up_at: Instant,
    /// Runs of `pos.map` already checkpointed (the last one may have grown since).
    checkpointed: usize,
    last_checkpointed: Option<crate::offsets::Run>,
}

impl Part {
    fn done(&self) -> bool {
        self.end.is_some_and(|e| self.durable_next >= e) && self.pending.is_empty()
    }
}

type DeliveryOutcome = Result<
    haven_kafka::rdkafka::producer::future_producer::OwnedDeliveryResult,
    futures::channel::oneshot::Canceled,
>;

/// A record sent (or skipped) and waiting for its turn to settle.
struct InFlight {
    part: usize,
    offset: i64,
    /// Key + value bytes (what librdkafka's queue holds for it).
    bytes: usize,
    delivery: Option<DeliveryFuture>,
    /// A skipped copy of the target's record at this target offset (see `map_back`).
    mapped: Option<i64>,
}

/// Maps a skipped source record that is a copy of the target's record `target`, when the
/// map stays increasing (it always does on a source rebuilt from the target).
fn map_back(pos: &mut Position, source: i64, target: i64) {
    if pos.next_target().is_none_or(|n| target >= n) {
        pos.push(source, target);
    }
}

struct Session<'a> {
    opts: &'a MirrorOptions,
    observer: &'a dyn Observer,
    producer: Arc<FutureProducer>,
    parts: Vec<Option<Part>>,
    index: HashMap<String, HashMap<i32, usize>>,
    in_flight: VecDeque<InFlight>,
    in_flight_bytes: usize,
    known: Arc<Mutex<BTreeMap<(String, i32), Position>>>,
    checkpoint: Option<Checkpoint>,
    report: &'a mut MirrorReport,
}

/// Map entries sent and not yet all acknowledged, and the positions they cover.
struct Checkpoint {
    futs: Vec<DeliveryFuture>,
    snapshot: Vec<((String, i32), Position)>,
}

async fn session(
    opts: &MirrorOptions,
    observer: &dyn Observer,
    stop: &mut watch::Receiver<bool>,
    report: &mut MirrorReport,
) -> Result<()> {
    let t0 = Instant::now();
    let (topics, target_inspector) = target::prepare(opts).await?;
    tracing::info!("mirror: target prepared in {:?}", t0.elapsed());
    let parts: Vec<(String, i32)> = topics
        .iter()
        .flat_map(|t| (0..t.partitions).map(move |p| (t.name.clone(), p)))
        .collect();
    let load = || {
        let (o, ti) = (opts.clone(), target_inspector.clone());
        blocking(move || position::load_state(&o.target, &ti, &o.name, &o.source_id))
    };
    let mut state = load().await?;
    if let Some(request) = rebuild::pending(&state.markers).cloned() {
        rebuild::perform(opts, &request, observer).await?;
        state = load().await?;
    }
    let mut map_end = state.map_end;
    let o = opts.clone();
    let ps = parts.clone();
    let ti = target_inspector.clone();
    let known = blocking(move || {
        let mut map = state.positions;
        let items: Vec<(String, i32, String)> = ps
            .iter()
            .map(|(t, p)| (t.clone(), *p, o.target_topic(t)))
            .collect();
        position::catch_up_all(&o.target, &ti, &o.source_id, &items, &mut map)?;
        map.retain(|k, _| ps.contains(k));
        Ok(map)
    })
    .await?;
    tracing::info!("mirror: positions read back in {:?}", t0.elapsed());
    let duplicates: u64 = known.values().map(|p| p.duplicates).sum();
    if duplicates > report.duplicates {
        report.duplicates = duplicates;
    }
    let producer = Arc::new(opts.target.producer()?);
    let known = Arc::new(Mutex::new(known));
    let source = Arc::new(opts.source.inspector("haven-inspector")?);
    let (changes_tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let context = MirrorContext {
        opts: opts.clone(),
        known: known.clone(),
        producer: producer.clone(),
        source: source.clone(),
        target: target_inspector.clone(),
        changes: changes_tx,
    };
    let consumer = opts
        .source
        .reader_with_context(&format!("haven-mirror-{}", opts.name), context)?;
    let mut s = Session {
        opts,
        observer,
        producer: producer.clone(),
        parts: Vec::new(),
        index: HashMap::new(),
        in_flight: VecDeque::new(),
        in_flight_bytes: 0,
        known: known.clone(),
        checkpoint: None,
        report,
    };
    if opts.once {
        let k = known
            .lock()
            .map_err(|_| Error::Task("lock poisoned".into()))?
            .clone();
        let (src, ps) = (source.clone(), parts.clone());
        let starts = blocking(move || target::starts(&src, &ps, &k, true)).await?;
        let mut tpl = TopicPartitionList::new();
        for st in &starts {
            if st.end.is_some_and(|e| st.start >= e) {
                continue;
            }
            tpl.add_partition_offset(&st.topic, st.partition, Offset::Offset(st.start))
                .map_err(|e| Error::Task(e.to_string()))?;
        }
        s.apply(Change::Assigned(starts));
        consumer
            .assign(&tpl)
            .map_err(|e| Error::Task(format!("assign partitions: {e}")))?;
    } else {
        let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| Error::Task(format!("subscribe to {names:?}: {e}")))?;
    }
    observer.event(&Event::MirrorStarted {
        partitions: parts.len(),
    });
    let mut sync = groups::GroupSync::new(opts);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_lag = Instant::now();
    let mut next_sync = Instant::now();
    let mut next_checkpoint = Instant::now() + opts.checkpoint_interval;
    let result: Result<()> = async {
        loop {
            while let Ok(c) = changes.try_recv() {
                s.apply(c);
            }
            s.settle_ready()?;
            if opts.once && s.parts.iter().flatten().all(Part::done) {
                break;
            }
            if s.in_flight.len() >= opts.max_in_flight
                || s.in_flight_bytes >= opts.max_in_flight_bytes
            {
                s.settle_front().await?;
                continue;
            }
            tokio::select! {
                msg = consumer.recv() => match msg {
                    Ok(m) => {
                        while let Ok(c) = changes.try_recv() {
                            s.apply(c);
                        }
                        s.copy(&m)?;
                        drop(m);
                        // Take what is already fetched in one go: the producer sees bursts,
                        // not a trickle (fewer wake-ups of its broker thread).
                        for _ in 0..BURST {
                            match consumer.recv().now_or_never() {
                                Some(Ok(m)) => s.copy(&m)?,
                                Some(Err(e)) => {
                                    consume_error(e, observer).await?;
                                    break;
                                }
                                None => break,
                            }
                        }
                    }
                    Err(e) => consume_error(e, observer).await?,
                },
                _ = tick.tick() => {}
                _ = stop.changed() => {
                    if *stop.borrow() {
                        break;
                    }
                }
            }
            let now = Instant::now();
            if now >= next_lag {
                next_lag = now + Duration::from_secs(1);
                s.measure_lag(&source).await;
            }
            if now >= next_sync && !opts.groups.is_empty() {
                next_sync = now + opts.sync_interval;
                s.sync_groups(&mut sync).await;
            }
            s.poll_checkpoint(false).await?;
            if now >= next_checkpoint {
                next_checkpoint = now + opts.checkpoint_interval;
                s.start_checkpoint()?;
                if let Some(m) = s.marker_since(&target_inspector, &mut map_end).await {
                    return Err(Error::Task(format!(
                        "a {:?} marker (epoch {}) is in the mirror's map: a new session acts on it",
                        m.marker, m.epoch
                    )));
                }
            }
        }
        Ok(())
    }
    .await;
    tracing::info!("mirror: copy loop ended at {:?}", t0.elapsed());
    // Whatever happened, settle what is in flight so the next session (or process) reads
    // a target that no longer changes behind its back.
    let p = producer.clone();
    let flushed = blocking(move || {
        p.flush(Duration::from_secs(330))
            .map_err(|e| Error::Task(format!("flush the target producer: {e}")))
    })
    .await;
    result?;
    flushed?;
    while !s.in_flight.is_empty() {
        s.settle_front().await?;
    }
    s.checkpoint_now().await?;
    if !opts.groups.is_empty() {
        s.sync_groups(&mut sync).await;
    }
    s.measure_lag(&source).await;
    s.report.partitions = s.parts.iter().flatten().count();
    tracing::info!("mirror: session ended at {:?}", t0.elapsed());
    drop(consumer);
    Ok(())
}

/// What a consumer error means for the session.
async fn consume_error(e: RdError, observer: &dyn Observer) -> Result<()> {
    match e {
        RdError::PartitionEOF(_) => Ok(()),
        RdError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange) => Err(Error::Task(
            "the source deleted records the mirror had not copied yet (retention); restarting at the source's start".into(),
        )),
        e => {
            observer.event(&Event::Retrying {
                what: "consume from the source".into(),
                error: e.to_string(),
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(())
        }
    }
}

impl Session<'_> {
    fn apply(&mut self, change: Change) {
        match change {
            Change::Assigned(starts) => {
                for st in starts {
                    let part = Part {
                        target_topic: self.opts.target_topic(&st.topic),
                        pos: st.pos,
                        durable_next: st.start,
                        pending: VecDeque::new(),
                        high: st.end.unwrap_or(st.start),
                        end: st.end,
                        caught_up_at: Instant::now(),
                        checkpointed: 0,
                        last_checkpointed: None,
                        topic: st.topic,
                        partition: st.partition,
                    };
                    if let Some(l) = st.lost {
                        self.observer.event(&Event::RecordsLost {
                            topic: part.topic.clone(),
                            partition: part.partition,
                            from: l.0,
                            to: l.1,
                            reason: "deleted at the source (retention) before the mirror copied it"
                                .into(),
                        });
                    }
                    let slot = self
                        .index
                        .get(&part.topic)
                        .and_then(|m| m.get(&part.partition))
                        .copied();
                    match slot {
                        Some(i) => self.parts[i] = Some(part),
                        None => {
                            let i = self.parts.len();
                            self.index
                                .entry(part.topic.clone())
                                .or_default()
                                .insert(part.partition, i);
                            self.parts.push(Some(part));
                        }
                    }
                }
            }
            Change::Revoked(revoked) => {
                self.observer.event(&Event::PartitionsReleased {
                    partitions: revoked.clone(),
                });
                for (t, p) in revoked {
                    if let Some(i) = self.index.get(&t).and_then(|m| m.get(&p)) {
                        self.parts[*i] = None;
                    }
                }
            }
        }
    }

    /// Sends one source record to the target (or skips it when it came from there).
    fn copy(&mut self, m: &BorrowedMessage<'_>) -> Result<()> {
        let Some(i) = self
            .index
            .get(m.topic())
            .and_then(|x| x.get(&m.partition()))
            .copied()
        else {
            return Ok(());
        };
        let opts = self.opts;
        let Some(part) = self.parts[i].as_mut() else {
            return Ok(());
        };
        let offset = m.offset();
        if offset < part.durable_next
            || part.pending.back().is_some_and(|(o, _)| offset <= *o)
            || part.end.is_some_and(|e| offset >= e)
        {
            return Ok(());
        }
        let origin_header = position::header(m, provenance::ORIGIN_HEADER);
        let source_header = position::header(m, provenance::SOURCE_HEADER);
        let origin = provenance::origin(origin_header, source_header);
        // A copy of one of the target's own records (it came back after a rebuild).
        let back = source_header
            .and_then(provenance::decode)
            .filter(|s| s.cluster == opts.target_id);
        let copy_all = part.pos.copy_all_below.is_some_and(|b| offset < b);
        if !copy_all && (origin == Some(opts.target_id.as_bytes()) || back.is_some()) {
            // Once the source was rebuilt from the target, its copies map exactly onto the
            // records they copy (a group there translates to where it really is).
            let mapped = back
                .filter(|s| {
                    part.pos.generation > 0
                        && s.topic == part.target_topic
                        && s.partition == part.partition
                })
                .map(|s| s.offset);
            self.report.skipped_origin += 1;
            if part.pending.is_empty() {
                if let Some(t) = mapped {
                    map_back(&mut part.pos, offset, t);
                }
                part.durable_next = offset + 1;
            } else {
                part.pending.push_back((offset, -1));
                self.in_flight.push_back(InFlight {
                    part: i,
                    offset,
                    bytes: 0,
                    delivery: None,
                    mapped,
                });
            }
            return Ok(());
        }
        let rec = haven_kafka::record_ref(m);
        let source = provenance::encode(&opts.source_id, m.topic(), m.partition(), offset);
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len() + 1);
        for (name, value) in &rec.headers {
            if *name != provenance::SOURCE_HEADER {
                headers = headers.insert(Header {
                    key: name,
                    value: *value,
                });
            }
        }
        headers = headers.insert(Header {
            key: provenance::SOURCE_HEADER,
            value: Some(source.as_bytes()),
        });
        if let (None, Some(o)) = (origin_header, origin) {
            // Second hop: keep the first hop's origin.
            headers = headers.insert(Header {
                key: provenance::ORIGIN_HEADER,
                value: Some(o),
            });
        }
        let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&part.target_topic)
            .partition(m.partition())
            .headers(headers);
        if let Some(k) = rec.key {
            fr = fr.key(k);
        }
        if let Some(v) = rec.value {
            fr = fr.payload(v);
        }
        if rec.timestamp >= 0 {
            fr = fr.timestamp(rec.timestamp);
        }
        let delivery = loop {
            match self.producer.send_result(fr) {
                Ok(f) => break f,
                Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    // Cannot happen within the in-flight bounds (far below librdkafka's
                    // queue limits) unless those are configured lower: wait briefly.
                    std::thread::sleep(Duration::from_millis(5));
                    fr = back;
                }
                Err((e, _)) => {
                    return Err(Error::Task(format!(
                        "produce to {}: {e}",
                        part.target_topic
                    )))
                }
            }
        };
        let bytes = rec.key.map_or(0, <[u8]>::len) + rec.value.map_or(0, <[u8]>::len);
        self.report.bytes += bytes as u64;
        self.in_flight_bytes += bytes;
        part.pending.push_back((offset, rec.timestamp));
        self.in_flight.push_back(InFlight {
            part: i,
            offset,
            bytes,
            delivery: Some(delivery),
            mapped: None,
        });
        Ok(())
    }

    /// Settles every acknowledged record at the front of the queue.
    fn settle_ready(&mut self) -> Result<()> {
        while let Some(front) = self.in_flight.front_mut() {
            let res = match front.delivery.as_mut() {
                None => None,
                Some(d) => match d.now_or_never() {
                    None => return Ok(()),
                    Some(r) => Some(r),
                },
            };
            let f = self
                .in_flight
                .pop_front()
                .ok_or_else(|| Error::Task("empty".into()))?;
            self.settled(f, res)?;
        }
        Ok(())
    }

    /// Waits for the oldest record in flight.
    async fn settle_front(&mut self) -> Result<()> {
        let Some(mut f) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let res = match f.delivery.take() {
            None => None,
            Some(d) => Some(d.await),
        };
        self.settled(f, res)
    }

    fn settled(&mut self, f: InFlight, res: Option<DeliveryOutcome>) -> Result<()> {
        self.in_flight_bytes -= f.bytes;
        let target = match res {
            None => None,
            Some(Ok(Ok(d))) => Some(d),
            Some(Ok(Err((e, _)))) => {
                return Err(Error::Task(format!("the target refused a record: {e}")))
            }
            Some(Err(_)) => return Err(Error::Task("the producer was dropped".into())),
        };
        let Some(part) = self.parts.get_mut(f.part).and_then(Option::as_mut) else {
            return Ok(()); // revoked meanwhile: the next owner reads the target's tail
        };
        if part.pending.front().is_some_and(|(o, _)| *o == f.offset) {
            part.pending.pop_front();
        }
        if let Some(d) = target {
            if d.partition != part.partition {
                return Err(Error::Task(format!(
                    "{}/{} offset {} landed in partition {} of {}",
                    part.topic, part.partition, f.offset, d.partition, part.target_topic
                )));
            }
            part.pos.push(f.offset, d.offset);
            self.report.records += 1;
        } else if let Some(t) = f.mapped {
            map_back(&mut part.pos, f.offset, t);
        }
        part.durable_next = part.durable_next.max(f.offset + 1);
        if part.durable_next >= part.high {
            part.caught_up_at = Instant::now();
        }
        Ok(())
    }

    /// Measures and reports each owned partition's lag (records and seconds).
    async fn measure_lag(&mut self, source: &Arc<BaseConsumer>) {
        let keys: Vec<(usize, String, i32)> = self
            .parts
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p.topic.clone(), p.partition)))
            .collect();
        let c = source.clone();
        let highs = blocking(move || {
            let mut out = Vec::new();
            for (i, t, p) in keys {
                out.push((
                    i,
                    haven_kafka::watermarks(&c, &t, p, Duration::from_secs(2))?.1,
                ));
            }
            Ok(out)
        })
        .await;
        match highs {
            Ok(h) => {
                for (i, high) in h {
                    if let Some(Some(p)) = self.parts.get_mut(i) {
                        p.high = p.end.map_or(high, |e| e.min(high));
                    }
                }
            }
            Err(e) => self.observer.event(&Event::Retrying {
                what: "measure lag (source high watermarks)".into(),
                error: e.to_string(),
            }),
        }
        self.observer.event(&Event::MirrorProgress {
            records: self.report.records,
            bytes: self.report.bytes,
            skipped_origin: self.report.skipped_origin,
        });
        let now = Instant::now();
        let wall = chrono::Utc::now().timestamp_millis();
        for p in self.parts.iter_mut().flatten() {
            let records = (p.high - p.durable_next).max(0);
            if records == 0 {
                p.caught_up_at = now;
            }
            let oldest_pending = p
                .pending
                .iter()
                .find(|(_, ts)| *ts >= 0)
                .map(|(_, ts)| ((wall - ts).max(0)) as f64 / 1000.0);
            let unread = if records > p.pending.len() as i64 {
                now.duration_since(p.caught_up_at).as_secs_f64()
            } else {
                0.0
            };
            self.observer.event(&Event::PartitionLag {
                topic: p.topic.clone(),
                partition: p.partition,
                records,
                seconds: if records == 0 {
                    0.0
                } else {
                    oldest_pending.unwrap_or(0.0).max(unread)
                },
                durable_offset: p.durable_next,
            });
        }
    }

    /// Sends new or grown runs of every partition's map to the map topic without waiting:
    /// the acknowledgements are collected by [`Session::poll_checkpoint`], so the copy
    /// pipeline never drains for a checkpoint. Skipped while the previous one is pending.
    fn start_checkpoint(&mut self) -> Result<()> {
        if self.checkpoint.is_some() {
            return Ok(());
        }
        let topic = position::map_topic(&self.opts.name);
        let mut entries = Vec::new();
        for p in self.parts.iter_mut().flatten() {
            let runs = &p.pos.map.runs;
            let from = p.checkpointed.min(runs.len().saturating_sub(1));
            for r in runs.iter().skip(from) {
                if Some(*r) == p.last_checkpointed {
                    continue;
                }
                entries.push(MapEntry {
                    source_cluster: self.opts.source_id.clone(),
                    topic: p.topic.clone(),
                    partition: p.partition,
                    target_topic: p.target_topic.clone(),
                    run: *r,
                    generation: p.pos.generation,
                });
            }
            p.checkpointed = runs.len();
            p.last_checkpointed = runs.last().copied();
        }
        if entries.is_empty() {
            return Ok(());
        }
        let mut futs = Vec::with_capacity(entries.len());
        for e in &entries {
            let key = e.key();
            let value = serde_json::to_vec(e).map_err(|e| Error::Task(e.to_string()))?;
            let fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic)
                .partition(0)
                .key(key.as_bytes())
                .payload(&value);
            futs.push(
                self.producer
                    .send_result(fr)
                    .map_err(|(e, _)| Error::Task(format!("checkpoint to {topic}: {e}")))?,
            );
        }
        let snapshot = self
            .parts
            .iter()
            .flatten()
            .map(|p| {
                let mut pos = p.pos.clone();
                pos.scanned_to = pos.next_target().unwrap_or(0);
                ((p.topic.clone(), p.partition), pos)
            })
            .collect();
        self.checkpoint = Some(Checkpoint { futs, snapshot });
        Ok(())
    }

    /// Collects a pending checkpoint's acknowledgements (all of them when `wait`); once all
    /// are in, the positions it covered become what a rebalance starts from.
    async fn poll_checkpoint(&mut self, wait: bool) -> Result<()> {
        let Some(cp) = self.checkpoint.as_mut() else {
            return Ok(());
        };
        let topic = position::map_topic(&self.opts.name);
        let mut rest = Vec::new();
        for mut f in cp.futs.drain(..) {
            let res = if wait {
                Some((&mut f).await)
            } else {
                (&mut f).now_or_never()
            };
            match res {
                None => rest.push(f),
                Some(Ok(Ok(_))) => {}
                Some(Ok(Err((e, _)))) => {
                    return Err(Error::Task(format!("checkpoint to {topic}: {e}")))
                }
                Some(Err(_)) => return Err(Error::Task("the producer was dropped".into())),
            }
        }
        if !rest.is_empty() {
            cp.futs = rest;
            return Ok(());
        }
        if let Some(cp) = self.checkpoint.take() {
            if let Ok(mut known) = self.known.lock() {
                known.extend(cp.snapshot);
            }
        }
        Ok(())
    }

    /// Checkpoints everything copied so far and waits for it.
    async fn checkpoint_now(&mut self) -> Result<()> {
        self.poll_checkpoint(true).await?;
        self.start_checkpoint()?;
        self.poll_checkpoint(true).await
    }

    /// A rebuild marker written into the map since `from` (read every checkpoint; a failed
    /// read is reported and tried again at the next one).
    async fn marker_since(
        &self,
        inspector: &Arc<BaseConsumer>,
        from: &mut i64,
    ) -> Option<position::Marker> {
        let (o, ti, mut at) = (self.opts.clone(), inspector.clone(), *from);
        match blocking(move || Ok((rebuild::asked_since(&o, &ti, &mut at)?, at))).await {
            Ok((m, end)) => {
                *from = end;
                m
            }
            Err(e) => {
                self.observer.event(&Event::Retrying {
                    what: "read the mirror's map for rebuild markers".into(),
                    error: e.to_string(),
                });
                None
            }
        }
    }

    async fn sync_groups(&mut self, sync: &mut groups::GroupSync) {
        let parts: Vec<groups::SyncPartition> = self
            .parts
            .iter()
            .flatten()
            .map(|p| groups::SyncPartition {
                topic: p.topic.clone(),
                partition: p.partition,
                target_topic: p.target_topic.clone(),
                map: p.pos.map.clone(),
                mirrored_to: p.durable_next,
            })
            .collect();
        let commits = sync.run(parts, self.observer).await;
        self.report.group_commits += commits;
    }
}
