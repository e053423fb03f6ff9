use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::place::Place;
use crate::process::{find_tool, kill, tail, wait_for_port};
use crate::proxy::DelayProxy;
use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const TANSU_INSTALL: &str = "cargo install tansu --version 0.6.0 --features libsql --locked";

/// A record to produce. `partition: None` lets the producer's partitioner choose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rec {
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Option<i64>,
}

impl Rec {
    pub fn kv(key: &str, value: &str) -> Rec {
        Rec {
            key: Some(key.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            ..Rec::default()
        }
    }
    pub fn to_partition(mut self, p: i32) -> Rec {
        self.partition = Some(p);
        self
    }
    pub fn at(mut self, ts: i64) -> Rec {
        self.timestamp = Some(ts);
        self
    }
    pub fn header(mut self, name: &str, value: Option<&[u8]>) -> Rec {
        self.headers
            .push((name.to_string(), value.map(<[u8]>::to_vec)));
        self
    }
}

/// A record read back from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Consumed {
    /// A copy of a consumed message (null key or value kept distinct from empty).
    pub fn from_message(m: &rdkafka::message::BorrowedMessage<'_>) -> Consumed {
        Consumed {
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis().unwrap_or(-1),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// A tansu broker on a free loopback port, with sqlite storage in a temporary directory
/// (or in a kept [`Place`], [`Broker::start_in`]).
pub struct Broker {
    child: Option<Child>,
    dir: Place,
    port: u16,
    log: PathBuf,
    /// When set, the broker is "in another region": clients reach it (and it advertises
    /// itself) only through this delaying proxy.
    proxy: Option<DelayProxy>,
}

impl Broker {
    /// Starts a broker and waits until it answers metadata requests.
    pub fn start() -> Result<Broker> {
        Broker::start_in(Place::temp("haven-tansu-")?, None)
    }

    /// Starts a broker in a "remote region": every client connection, including the
    /// ones the broker advertises in metadata, goes through a proxy that delays each
    /// direction by `one_way` (80 ms in the seed's US-EU setup).
    pub fn start_remote(one_way: Duration) -> Result<Broker> {
        Broker::start_in(Place::temp("haven-tansu-")?, Some(one_way))
    }

    /// Starts a broker in `place` (on the topics and ports it had there, or new ones);
    /// `remote`: behind a delaying proxy as [`Broker::start_remote`].
    pub fn start_in(mut dir: Place, remote: Option<Duration>) -> Result<Broker> {
        let port = dir.port("kafka")?;
        let proxy = match remote {
            Some(one_way) => Some(DelayProxy::start(dir.port("link")?, port, one_way)?),
            None => None,
        };
        let log = dir.path().join("tansu.log");
        let mut b = Broker {
            child: None,
            dir,
            port,
            log,
            proxy,
        };
        b.spawn()?;
        Ok(b)
    }

    /// Cuts (or restores) the network link to a broker started with
    /// [`Broker::start_remote`]: open connections drop, new ones are refused.
    pub fn set_link_down(&self, down: bool) {
        if let Some(p) = &self.proxy {
            p.set_down(down);
        }
    }

    fn spawn(&mut self) -> Result<()> {
        let tansu = find_tool("tansu", TANSU_INSTALL, &[])?;
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.client_port());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut child = Command::new(&tansu)
            .current_dir(self.dir.path())
            .arg("broker")
            .arg("--listener-url")
            .arg(&listener)
            .arg("--advertised-listener-url")
            .arg(&advertised)
            .arg("--storage-engine")
            .arg("sqlite://tansu.db")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", tansu.display()))?;
        wait_for_port(self.port, &mut child, &self.log, Duration::from_secs(30))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let c: BaseConsumer = self.config().create()?;
        loop {
            match c.fetch_metadata(None, Duration::from_secs(2)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "broker on port {} not ready: {e}\n{}",
                        self.port,
                        tail(&self.log)
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers` and `--brokers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.client_port())
    }

    /// The port clients use: the proxy's for a remote broker.
    fn client_port(&self) -> u16 {
        self.proxy.as_ref().map_or(self.port, DelayProxy::port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Whether the broker was started on the data of an earlier one (a kept place).
    pub fn reused(&self) -> bool {
        self.dir.reused()
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the broker (SIGKILL) and keeps its data.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// Starts the broker again on the same port with the same data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// A client configuration pointing at this broker.
    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap())
            .set("broker.address.family", "v4")
            .set("log_level", "3");
        c
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
            .block_on(f)
    }

    /// Creates a topic (blocking; call from `spawn_blocking` or outside a runtime).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        self.create_topic_with(name, partitions, &[])
    }

    pub fn create_topic_with(
        &self,
        name: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (k, v) in configs {
            t = t.set(k, v);
        }
        let res = Self::block_on(admin.create_topics(&[t], &AdminOptions::new()))?;
        for r in res {
            r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
        }
        Ok(())
    }

    pub fn delete_topic(&self, name: &str) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        let res = Self::block_on(admin.delete_topics(&[name], &AdminOptions::new()))?;
        for r in res {
            r.map_err(|(t, e)| anyhow::anyhow!("delete topic {t}: {e}"))?;
        }
        Ok(())
    }

    /// A long-lived idempotent librdkafka producer for this broker.
    pub fn producer(&self) -> Result<Producer> {
        let ctx = Collect::default();
        let producer: ThreadedProducer<Collect> = self
            .config()
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create_with_context(ctx.clone())?;
        Ok(Producer { producer, ctx })
    }

    /// Produces records with librdkafka's producer (blocking) and returns each record's
    /// (partition, offset) in order.
    pub fn produce(&self, topic: &str, records: &[Rec]) -> Result<Vec<(i32, i64)>> {
        self.producer()?.send(topic, records)
    }

    /// High watermark of a partition (blocking).
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Result<i64> {
        let c: BaseConsumer = self.config().create()?;
        Ok(
            c.fetch_watermarks(topic, partition, Duration::from_secs(10))?
                .1,
        )
    }

    /// Reads a whole partition, from its start to its current high watermark (blocking).
    pub fn read_partition(&self, topic: &str, partition: i32) -> Result<Vec<Consumed>> {
        let c: BaseConsumer = self
            .config()
            .set("group.id", "testbed-reader")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        let (low, high) = c.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        let mut out = Vec::new();
        if high <= low {
            return Ok(out);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(low))?;
        c.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while out.last().is_none_or(|m: &Consumed| m.offset + 1 < high) {
            if Instant::now() > deadline {
                bail!(
                    "reading {topic}/{partition}: got {} records, stuck before {high}",
                    out.len()
                );
            }
            if let Some(m) = c.poll(Duration::from_millis(200)) {
                let m = m?;
                out.push(Consumed::from_message(&m));
            }
        }
        Ok(out)
    }
}

/// A producer that stays connected between sends (see [`Broker::producer`]).
pub struct Producer {
    producer: ThreadedProducer<Collect>,
    ctx: Collect,
}

impl Producer {
    /// Sends records, waits until all are delivered, and returns each record's
    /// (partition, offset) in order.
    pub fn send(&self, topic: &str, records: &[Rec]) -> Result<Vec<(i32, i64)>> {
        if let Ok(mut v) = self.ctx.0.lock() {
            v.clear();
        }
        for (i, r) in records.iter().enumerate() {
            let mut headers = OwnedHeaders::new();
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: v.as_deref(),
                });
            }
            let mut br: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(topic, i).headers(headers);
            if let Some(k) = &r.key {
                br = br.key(k.as_slice());
            }
            if let Some(v) = &r.value {
                br = br.payload(v.as_slice());
            }
            if let Some(p) = r.partition {
                br = br.partition(p);
            }
            if let Some(ts) = r.timestamp {
                br = br.timestamp(ts);
            }
            let mut pending = br;
            loop {
                match self.producer.send(pending) {
                    Ok(()) => break,
                    Err((e, back))
                        if e.rdkafka_error_code()
                            == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                    {
                        std::thread::sleep(Duration::from_millis(5));
                        pending = back;
                    }
                    Err((e, _)) => bail!("produce to {topic}: {e}"),
                }
            }
        }
        self.producer.flush(Duration::from_secs(60))?;
        let got = self
            .ctx
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("delivery lock poisoned"))?;
        let mut out = vec![(0, -1); records.len()];
        for (i, res) in got.iter() {
            match res {
                Ok(po) => out[*i] = *po,
                Err(e) => bail!("record {i} to {topic} not delivered: {e}"),
            }
        }
        if let Some(i) = out.iter().position(|o| o.1 < 0) {
            bail!("record {i} to {topic}: no delivery report");
        }
        Ok(out)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", tail(&self.log));
        }
    }
}

type Deliveries = Vec<(usize, Result<(i32, i64), String>)>;

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Deliveries>>);

impl ClientContext for Collect {}

impl ProducerContext for Collect {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, i: usize) {
        let r = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        if let Ok(mut v) = self.0.lock() {
            v.push((i, r));
        }
    }
}
