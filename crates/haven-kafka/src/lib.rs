//! Haven's Kafka adapter: the only crate that talks to `rdkafka`.
//!
//! It configures clients for Haven's jobs and converts between rdkafka's types and
//! [`haven_format::Record`]. Every function here that blocks on the network is synchronous
//! on purpose and documented as blocking: async callers run them with
//! `tokio::task::spawn_blocking` (see `haven_engine::kafka_blocking`).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use thiserror::Error;

pub use rdkafka;

use haven_format::TimestampType;

#[derive(Debug, Error)]
pub enum KafkaError {
    #[error("cannot reach the Kafka cluster at {brokers}: {source}")]
    Unreachable {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("Kafka {op} failed: {source}")]
    Op {
        op: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
}

pub type Result<T, E = KafkaError> = std::result::Result<T, E>;

fn op(op: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> KafkaError {
    move |source| KafkaError::Op { op, source }
}

/// Settings shared by every client Haven creates. Its `Debug` shows property names only:
/// values may be secrets (`sasl.password`).
#[derive(Clone)]
pub struct ClusterConfig {
    pub brokers: String,
    /// How long the broker may hold a fetch waiting for data. Low values cut latency and,
    /// on brokers that always hold fetches for this long (tansu), raise throughput.
    pub fetch_wait_ms: u32,
    /// Extra librdkafka properties (`security.protocol`, `sasl.*`, ...).
    pub properties: Vec<(String, String)>,
}

/// KiB of prefetched records one reader may queue (librdkafka's
/// `queued.max.messages.kbytes`); split between the readers of one process.
pub const READER_QUEUE_KB: usize = 32768;

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("brokers", &self.brokers)
            .field("fetch_wait_ms", &self.fetch_wait_ms)
            .field(
                "properties",
                &self.properties.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ClusterConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        ClusterConfig {
            brokers: brokers.into(),
            fetch_wait_ms: 10,
            properties: Vec::new(),
        }
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "haven")
            .set("log_level", "3")
            .set("broker.address.family", "v4");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// A consumer for backup and mirroring: manual offsets, committed data only, EOF events,
    /// and no silent reset when an offset is gone (it is reported as a loss instead).
    pub fn reader(&self, group_id: &str) -> Result<StreamConsumer> {
        self.reader_with_context(group_id, rdkafka::consumer::DefaultConsumerContext)
    }

    /// [`ClusterConfig::reader`] with a context that handles rebalances (group members
    /// sharing partitions).
    pub fn reader_with_context<C: rdkafka::consumer::ConsumerContext + 'static>(
        &self,
        group_id: &str,
        context: C,
    ) -> Result<StreamConsumer<C>> {
        self.reader_sized(group_id, context, READER_QUEUE_KB)
    }

    /// [`ClusterConfig::reader_with_context`] whose prefetch queue holds at most
    /// `queue_kb` KiB: several readers in one process share [`READER_QUEUE_KB`].
    pub fn reader_sized<C: rdkafka::consumer::ConsumerContext + 'static>(
        &self,
        group_id: &str,
        context: C,
        queue_kb: usize,
    ) -> Result<StreamConsumer<C>> {
        let queue_kb = queue_kb.max(1024);
        let fetch_max = (queue_kb * 1024 / 4).min(8 << 20);
        self.base()
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "error")
            .set("fetch.wait.max.ms", self.fetch_wait_ms.to_string())
            .set("queued.max.messages.kbytes", queue_kb.to_string())
            // A fetch is at most a quarter of the queue, so several stay in flight: a
            // fetch as large as the queue would stall the reader until it drained.
            .set("fetch.max.bytes", fetch_max.to_string())
            .set(
                "fetch.message.max.bytes",
                fetch_max.min(1 << 20).to_string(),
            )
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000")
            .create_with_context(context)
            .map_err(op("create consumer"))
    }

    /// A consumer used only for metadata, watermarks and reading committed offsets of
    /// `group_id` (it never joins the group).
    pub fn inspector(&self, group_id: &str) -> Result<BaseConsumer> {
        self.base()
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(op("create consumer"))
    }

    /// An idempotent producer (no duplicates from retries, per-partition order kept).
    pub fn producer(&self) -> Result<FutureProducer> {
        self.base()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "none")
            .create()
            .map_err(op("create producer"))
    }

    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>> {
        self.base().create().map_err(op("create admin client"))
    }
}

/// A topic as the cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: i32,
}

/// Lists topics (blocking). Internal topics (`__*`) are left out.
pub fn list_topics(
    consumer: &BaseConsumer,
    brokers: &str,
    timeout: Duration,
) -> Result<Vec<TopicInfo>> {
    let md = consumer
        .fetch_metadata(None, timeout)
        .map_err(|source| KafkaError::Unreachable {
            brokers: brokers.to_string(),
            source,
        })?;
    let mut out: Vec<TopicInfo> = md
        .topics()
        .iter()
        .filter(|t| !t.name().starts_with("__") && t.error().is_none())
        .map(|t| TopicInfo {
            name: t.name().to_string(),
            partitions: t.partitions().len() as i32,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Low and high watermarks of a partition (blocking).
pub fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64)> {
    consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(op("fetch watermarks"))
}

/// Committed offsets of the inspector's group for the given partitions (blocking).
/// Partitions without a commit are left out.
pub fn committed(
    consumer: &BaseConsumer,
    partitions: &[(String, i32)],
    timeout: Duration,
) -> Result<Vec<(String, i32, i64)>> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition(t, *p);
    }
    let got = consumer
        .committed_offsets(tpl, timeout)
        .map_err(op("fetch committed offsets"))?;
    Ok(got
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.topic().to_string(), e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// Commits offsets for `group` without joining it (blocking). Kafka refuses this for a
/// group with active members.
pub fn commit_offsets(
    cluster: &ClusterConfig,
    group: &str,
    offsets: &[(String, i32, i64)],
) -> Result<()> {
    commit_as(&cluster.inspector(group)?, offsets)
}

/// Commits offsets for the inspector's group (blocking); see [`commit_offsets`].
pub fn commit_as(c: &BaseConsumer, offsets: &[(String, i32, i64)]) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (t, p, o) in offsets {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))
            .map_err(op("build offsets"))?;
    }
    c.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .map_err(op("commit group offsets"))
}

/// Names of the consumer groups the cluster knows (blocking).
pub fn list_groups(consumer: &BaseConsumer, timeout: Duration) -> Result<Vec<String>> {
    let gl = consumer
        .fetch_group_list(None, timeout)
        .map_err(op("list consumer groups"))?;
    let mut names: Vec<String> = gl.groups().iter().map(|g| g.name().to_string()).collect();
    names.sort();
    Ok(names)
}

/// A topic's configuration entries (async, through the admin API).
pub async fn describe_topic_configs(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<Vec<(String, Option<String>)>> {
    let res = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(op("describe configs"))?;
    let mut out = Vec::new();
    for r in res {
        let r = r.map_err(|e| KafkaError::Topic {
            topic: topic.to_string(),
            reason: format!("describe configs: {e}"),
        })?;
        for e in r.entries {
            out.push((e.name, e.value));
        }
    }
    out.sort();
    Ok(out)
}

/// Creates a topic (async). An existing topic is not an error.
pub async fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: i32,
    configs: &[(String, String)],
) -> Result<()> {
    create_topics(admin, &[(topic.to_string(), partitions, configs.to_vec())]).await
}

/// [`delete_topics`], then which other topics vanished with them (blocking reads around
/// it): tansu 0.6 deletes every topic on a DeleteTopics request (measured), and a caller
/// must be able to say so rather than discover it later.
pub async fn delete_topics_checked(
    cluster: &ClusterConfig,
    topics: &[String],
) -> Result<Vec<String>> {
    let list = || {
        let cluster = cluster.clone();
        async move {
            tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
                let c = cluster.inspector("haven-inspector")?;
                Ok(list_topics(&c, &cluster.brokers, Duration::from_secs(10))?
                    .into_iter()
                    .map(|t| t.name)
                    .collect())
            })
            .await
            .map_err(|e| KafkaError::Topic {
                topic: String::new(),
                reason: format!("list topics: {e}"),
            })?
        }
    };
    let before = list().await?;
    delete_topics(&cluster.admin()?, topics).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = list().await?;
    Ok(before
        .into_iter()
        .filter(|t| !topics.contains(t) && !after.contains(t))
        .collect())
}

/// Deletes topics in one request (async). A topic that does not exist is not an error.
pub async fn delete_topics(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[String],
) -> Result<()> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let res = admin
        .delete_topics(
            &names,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(op("delete topic"))?;
    for r in res {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((t, code)) => {
                return Err(KafkaError::Topic {
                    topic: t,
                    reason: format!("delete: {code}"),
                })
            }
        }
    }
    Ok(())
}

/// A topic to create: name, partition count, configuration entries.
pub type NewTopicSpec = (String, i32, Vec<(String, String)>);

/// Creates topics in one request (async). Existing topics are not an error.
pub async fn create_topics(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[NewTopicSpec],
) -> Result<()> {
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(topic, partitions, configs)| {
            let mut nt = NewTopic::new(topic, *partitions, TopicReplication::Fixed(1));
            for (k, v) in configs {
                nt = nt.set(k, v);
            }
            nt
        })
        .collect();
    let res = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(op("create topic"))?;
    for r in res {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(KafkaError::Topic {
                    topic: t,
                    reason: format!("create: {code}"),
                })
            }
        }
    }
    Ok(())
}

/// A borrowed view of a consumed message, keeping null distinct from empty (no copy).
pub fn record_ref<'a>(m: &'a BorrowedMessage<'_>) -> haven_format::RecordRef<'a> {
    let (timestamp_type, timestamp) = match m.timestamp() {
        rdkafka::Timestamp::NotAvailable => (TimestampType::NotAvailable, -1),
        rdkafka::Timestamp::CreateTime(t) => (TimestampType::CreateTime, t),
        rdkafka::Timestamp::LogAppendTime(t) => (TimestampType::LogAppendTime, t),
    };
    let headers = m
        .headers()
        .map(|hs| hs.iter().map(|h| (h.key, h.value)).collect())
        .unwrap_or_default();
    haven_format::RecordRef {
        offset: m.offset(),
        timestamp,
        timestamp_type,
        key: m.key(),
        value: m.payload(),
        headers,
        sealed: None,
    }
}

/// Reads `topic`/`partition` from offset `from` up to (not including) `until` and calls
/// `visit` for each message, stopping early when it returns false (blocking). Ends at the
/// partition's end even when `until` lies beyond it; fails when no progress is made for
/// `stall` (broker unreachable).
pub fn scan(
    cluster: &ClusterConfig,
    topic: &str,
    partition: i32,
    from: i64,
    until: i64,
    stall: Duration,
    visit: impl FnMut(&BorrowedMessage<'_>) -> bool,
) -> Result<()> {
    scan_few(
        cluster,
        topic,
        partition,
        from,
        until,
        until.saturating_sub(from),
        stall,
        visit,
    )
}

/// Below this many records a scan asks the broker for small fetches.
const FEW: i64 = 1000;

/// As [`scan`], for a caller that reads at most `few` records before its visitor stops
/// (a look at a partition's first or last records): when that is a few, the consumer
/// queues one fetch instead of librdkafka's bulk prefetch (fetch after fetch until
/// 100,000 records or 64 MiB are queued), which would make the broker read megabytes of
/// a large backlog for every look at it.
#[allow(clippy::too_many_arguments)]
pub fn scan_few(
    cluster: &ClusterConfig,
    topic: &str,
    partition: i32,
    from: i64,
    until: i64,
    few: i64,
    stall: Duration,
    mut visit: impl FnMut(&BorrowedMessage<'_>) -> bool,
) -> Result<()> {
    if from >= until {
        return Ok(());
    }
    let mut cfg = cluster.base();
    cfg.set("group.id", "haven-scan")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "error")
        .set("fetch.wait.max.ms", cluster.fetch_wait_ms.to_string());
    if few < FEW {
        // One fetch of the usual size, and no more queued than that: fetch sizes are left
        // alone, since a broker that does not return a batch larger than the request
        // (tansu 0.6 does not follow KIP-74 there) would be asked again and again.
        cfg.set("queued.min.messages", few.max(1).to_string())
            .set("queued.max.messages.kbytes", "1024");
    }
    let c: BaseConsumer = cfg.create().map_err(op("create consumer"))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(op("assign"))?;
    c.assign(&tpl).map_err(op("assign"))?;
    let mut last_progress = std::time::Instant::now();
    loop {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_progress = std::time::Instant::now();
                if m.offset() >= until || !visit(&m) || m.offset() + 1 >= until {
                    return Ok(());
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(()),
            Some(Err(e)) if last_progress.elapsed() > stall => {
                return Err(KafkaError::Op {
                    op: "read partition",
                    source: e,
                })
            }
            Some(Err(_)) | None => {
                if last_progress.elapsed() > stall {
                    return Err(KafkaError::Topic {
                        topic: format!("{topic}/{partition}"),
                        reason: format!(
                            "no record arrived for {} s while reading from offset {from}",
                            stall.as_secs()
                        ),
                    });
                }
            }
        }
    }
}

/// Describes a consumer group's members (blocking): Some(member descriptions) when the
/// broker answers, None when it cannot describe groups (the caller must find another
/// signal).
pub fn group_members(
    consumer: &BaseConsumer,
    group: &str,
    timeout: Duration,
) -> Option<Vec<String>> {
    let list = consumer.fetch_group_list(Some(group), timeout).ok()?;
    let g = list.groups().iter().find(|g| g.name() == group)?;
    Some(
        g.members()
            .iter()
            .map(|m| format!("{} ({}@{})", m.id(), m.client_id(), m.client_host()))
            .collect(),
    )
}

/// A partition's watermarks and, for each asked instant, the first offset whose
/// timestamp is at or after it (the high watermark when no record is that recent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetsAtTimes {
    pub low: i64,
    pub high: i64,
    pub offsets: Vec<i64>,
}

/// Offsets by time for one partition (blocking). Some brokers (tansu 0.6) answer offset 0
/// instead of "none" for an instant after the last record, so answers are checked against
/// the last record's timestamp, read once whatever the number of instants.
pub fn offsets_at_times(
    cluster: &ClusterConfig,
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    instants: &[i64],
    timeout: Duration,
) -> Result<OffsetsAtTimes> {
    let (low, high) = watermarks(consumer, topic, partition, timeout)?;
    let mut last_ts: Option<Option<i64>> = None;
    let mut offsets = Vec::with_capacity(instants.len());
    for &ts in instants {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(ts))
            .map_err(op("offsets for times"))?;
        let got = consumer
            .offsets_for_times(tpl, timeout)
            .map_err(op("offsets for times"))?;
        let answer = got.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        });
        let trusted = match answer {
            Some(o) if high > low => {
                if last_ts.is_none() {
                    let mut t = None;
                    scan(cluster, topic, partition, high - 1, high, timeout, |m| {
                        t = m.timestamp().to_millis();
                        false
                    })?;
                    last_ts = Some(t);
                }
                match last_ts.flatten() {
                    Some(t) if t < ts => None,
                    _ => Some(o),
                }
            }
            _ => None,
        };
        offsets.push(trusted.unwrap_or(high));
    }
    Ok(OffsetsAtTimes { low, high, offsets })
}

/// A record to produce: key, value, headers in order, and a timestamp (None: the
/// producer's clock).
#[derive(Debug, Clone, Default)]
pub struct Outgoing<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
    pub timestamp: Option<i64>,
}

/// Produces records to `topic` (partitioned by key) and waits until every one is
/// acknowledged (async). Returns how many were.
pub async fn produce_all<'a>(
    producer: &FutureProducer,
    topic: &str,
    records: impl IntoIterator<Item = Outgoing<'a>>,
) -> Result<u64> {
    let failed = |reason: String| KafkaError::Topic {
        topic: topic.to_string(),
        reason,
    };
    let mut futs = Vec::new();
    for r in records {
        let mut headers = rdkafka::message::OwnedHeaders::new_with_capacity(r.headers.len());
        for (key, value) in &r.headers {
            headers = headers.insert(rdkafka::message::Header { key, value: *value });
        }
        let mut fr: rdkafka::producer::FutureRecord<'_, [u8], [u8]> =
            rdkafka::producer::FutureRecord::to(topic).headers(headers);
        if let Some(k) = r.key {
            fr = fr.key(k);
        }
        if let Some(v) = r.value {
            fr = fr.payload(v);
        }
        if let Some(ts) = r.timestamp {
            fr = fr.timestamp(ts);
        }
        futs.push(
            producer
                .send_result(fr)
                .map_err(|(e, _)| failed(format!("produce: {e}")))?,
        );
    }
    let mut n = 0;
    for f in futs {
        match f.await {
            Ok(Ok(_)) => n += 1,
            Ok(Err((e, _))) => return Err(failed(format!("produce: {e}"))),
            Err(_) => return Err(failed("the producer was dropped".into())),
        }
    }
    Ok(n)
}
