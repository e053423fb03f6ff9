//! Mirroring across an 80 ms inter-region link: lag under the seed's peak load, and
//! throughput against a plain consume-then-produce loop on the same data.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haven_engine::backup::topic_regex;
use haven_engine::events::LogObserver;
use haven_engine::mirror::{self, MirrorOptions};
use haven_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use haven_kafka::rdkafka::message::Message;
use haven_kafka::rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use haven_kafka::rdkafka::{Offset, TopicPartitionList};
use haven_kafka::ClusterConfig;
use serde_json::json;
use testbed::{Broker, Rec};
use tokio::sync::watch;

use super::{data, percentile, print, Ratio};
use crate::Ctx;

/// Mirror lag under a steady load across a delayed link.
///
/// Starts two tansu brokers, the target behind a proxy delaying each direction by
/// --delay-ms (the seed: 80 ms between regions), runs a continuous mirror, produces --rate
/// records a minute of --event-size bytes for --seconds (the seed's peak: 10,000 records
/// of 5 KB a minute), and measures for every record the delay between its CreateTime and
/// its arrival at a consumer reading the target. That consumer itself reads across the
/// delayed link, so the figure is an upper bound of the mirror's lag. Target: p99 <= 1 s.
#[derive(Debug, clap::Args)]
pub struct LagArgs {
    #[command(flatten)]
    load: data::SteadyLoad,
    /// One-way delay between the regions.
    #[arg(long, default_value_t = 80)]
    delay_ms: u64,
}

/// Mirror throughput against a plain consume-then-produce loop.
///
/// Produces --mb MiB of 1 KiB events to the source, then, --rounds times, copies the topic
/// to the target across the delayed link twice: with a plain librdkafka loop (a consumer
/// feeding an idempotent producer with the same settings as Haven's, all partitions, one
/// thread) and with `haven mirror --once` (a child process, start-up included). Best round
/// of each. Target: wall <= 1.1x.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 1024)]
    mb: usize,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[arg(long, default_value_t = 1024)]
    event_size: usize,
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    #[arg(long, default_value_t = 80)]
    delay_ms: u64,
    /// Let the loop add the one provenance header Haven adds to each record: isolates what
    /// the header itself costs on the broker (tansu stores each header as a row).
    #[arg(long)]
    loop_with_header: bool,
}

fn two_regions(delay_ms: u64) -> anyhow::Result<(Broker, Broker)> {
    Ok((
        Broker::start()?,
        Broker::start_remote(Duration::from_millis(delay_ms))?,
    ))
}

pub async fn lag(ctx: &Ctx, a: LagArgs) -> anyhow::Result<u8> {
    let (us, eu) = tokio::task::spawn_blocking(move || two_regions(a.delay_ms)).await??;
    let (us, eu) = (Arc::new(us), Arc::new(eu));
    let u = us.clone();
    let parts = a.load.partitions;
    tokio::task::spawn_blocking(move || u.create_topic("lag", parts)).await??;
    let mut opts = MirrorOptions::new(
        (ClusterConfig::new(us.bootstrap()), "us".into()),
        (ClusterConfig::new(eu.bootstrap()), "eu".into()),
        topic_regex("lag")?,
    );
    opts.checkpoint_interval = Duration::from_secs(5);
    let (stop_tx, stop) = watch::channel(false);
    let o = opts.clone();
    let mirror = tokio::spawn(async move { mirror::run(&o, &LogObserver, stop).await });
    // The mirror creates the target topic; wait for it, then start reading it.
    let e = eu.clone();
    let expected = a.load.events() as usize;
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<i64>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while e.high_watermark("lag", 0).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the mirror never created the target topic"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let c: BaseConsumer = e
            .config()
            .set("group.id", "bench-lag")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts {
            tpl.add_partition_offset("lag", p, Offset::Beginning)?;
        }
        c.assign(&tpl)?;
        let mut delays = Vec::with_capacity(expected);
        let mut timeline = Vec::new();
        let mut idle = Instant::now();
        while delays.len() < expected {
            anyhow::ensure!(
                idle.elapsed() < Duration::from_secs(120),
                "{} of {expected} records reached the target",
                delays.len()
            );
            if let Some(m) = c.poll(Duration::from_millis(50)) {
                let m = m?;
                if m.key() == Some(b"warm-up".as_slice()) {
                    continue;
                }
                let now = chrono::Utc::now().timestamp_millis();
                let d = now - m.timestamp().to_millis().unwrap_or(now);
                delays.push(d);
                if d > 1000 {
                    timeline.push((delays.len(), d));
                }
                idle = Instant::now();
            }
        }
        if !timeline.is_empty() {
            tracing::warn!(
                "records over 1 s (arrival index, delay ms): {:?}",
                &timeline[..timeline.len().min(20)]
            );
        }
        Ok(delays)
    });
    // Warm-up: one record per partition must cross before the measured load starts (the
    // mirror has joined its group and connected to both clusters).
    let (u, e) = (us.clone(), eu.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let warm: Vec<Rec> = (0..parts)
            .map(|p| Rec::kv("warm-up", "warm-up").to_partition(p))
            .collect();
        u.produce("lag", &warm)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while (0..parts).any(|p| e.high_watermark("lag", p).unwrap_or(0) < 1) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the warm-up records never crossed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })
    .await??;
    let (u, load) = (us.clone(), a.load);
    let produced = tokio::task::spawn_blocking(move || load.produce(&u, "lag", 5)).await?? as usize;
    let mut delays = reader.await??;
    let _ = stop_tx.send(true);
    let report = mirror.await??;
    anyhow::ensure!(report.duplicates == 0, "duplicates on the target");
    anyhow::ensure!(
        delays.len() == produced,
        "{} of {produced} records",
        delays.len()
    );
    delays.sort_unstable();
    let p99 = percentile(&delays, 0.99) as f64;
    print(
        ctx,
        &format!(
            "mirror lag: {produced} records of {} B at {}/min over {}s, {} ms each way between regions",
            a.load.event_size, a.load.rate, a.load.seconds, a.delay_ms
        ),
        &[Ratio::new(
            "p99 produce-to-visible-on-target",
            p99,
            1000.0,
            "ms",
            "<= 1.0 (of 1 s)",
            |r| r <= 1.0,
        )],
        json!({
            "p50_ms": percentile(&delays, 0.5), "p90_ms": percentile(&delays, 0.9),
            "p99_ms": p99, "max_ms": delays.last(), "records": produced,
            "note": "measured by a consumer reading across the delayed link: an upper bound",
        }),
    )?;
    Ok(0)
}

/// The baseline: consume every partition from the start, produce each record to the same
/// partition of `target` with an idempotent producer, until all are acknowledged.
fn plain_loop(
    src: &Broker,
    dst: &Broker,
    topic: &str,
    target: &str,
    partitions: i32,
    with_header: bool,
) -> anyhow::Result<u64> {
    let c: BaseConsumer = src
        .config()
        .set("group.id", "bench-loop")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("queued.max.messages.kbytes", "32768")
        .set("fetch.max.bytes", "8388608")
        .create()?;
    let p: ThreadedProducer<_> = dst
        .config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "none")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut highs = Vec::new();
    for part in 0..partitions {
        tpl.add_partition_offset(topic, part, Offset::Beginning)?;
        highs.push(c.fetch_watermarks(topic, part, Duration::from_secs(10))?.1);
    }
    c.assign(&tpl)?;
    let mut pos = vec![0i64; partitions as usize];
    let mut n = 0u64;
    while pos.iter().zip(&highs).any(|(p, h)| p < h) {
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(target).partition(m.partition());
        if with_header {
            let v = format!("us/{topic}/{}/{}", m.partition(), m.offset());
            rec = rec.headers(haven_kafka::rdkafka::message::OwnedHeaders::new().insert(
                haven_kafka::rdkafka::message::Header {
                    key: "haven-mirror-source",
                    value: Some(v.as_bytes()),
                },
            ));
        }
        if let Some(k) = m.key() {
            rec = rec.key(k);
        }
        if let Some(v) = m.payload() {
            rec = rec.payload(v);
        }
        if let Some(ts) = m.timestamp().to_millis() {
            rec = rec.timestamp(ts);
        }
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    std::thread::sleep(Duration::from_millis(1));
                    rec = back;
                }
            }
        }
        pos[m.partition() as usize] = m.offset() + 1;
        n += 1;
    }
    p.flush(Duration::from_secs(600))?;
    Ok(n)
}

pub async fn throughput(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let say = |s: String| {
        if !ctx.json {
            eprintln!("{s}");
        }
    };
    let (us, eu) = tokio::task::spawn_blocking(move || two_regions(a.delay_ms)).await??;
    let n = (a.mb * 1024 * 1024 / a.event_size).max(1) as u64;
    say(format!(
        "producing {n} events ({} MiB) to {} partitions ...",
        a.mb, a.partitions
    ));
    let us = tokio::task::spawn_blocking(move || -> anyhow::Result<Broker> {
        us.create_topic("bench", a.partitions)?;
        data::produce(&us, "bench", n, a.event_size, a.partitions)?;
        Ok(us)
    })
    .await??;
    let (us, eu) = (Arc::new(us), Arc::new(eu));
    let exe = std::env::current_exe()?;
    let (mut base, mut haven) = (f64::INFINITY, f64::INFINITY);
    for round in 0..a.rounds {
        let target = format!("loop{round}-bench");
        let (u, e, t) = (us.clone(), eu.clone(), target.clone());
        let (parts, with_header) = (a.partitions, a.loop_with_header);
        let w = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
            e.create_topic(&t, parts)?;
            let start = Instant::now();
            let copied = plain_loop(&u, &e, "bench", &t, parts, with_header)?;
            anyhow::ensure!(copied == n, "the loop copied {copied} of {n}");
            Ok(start.elapsed().as_secs_f64())
        })
        .await??;
        say(format!(
            "round {round}: plain consume-then-produce loop {w:.2}s"
        ));
        base = base.min(w);

        let prefix = format!("mirror{round}-");
        let start = Instant::now();
        let out = Command::new(&exe)
            .arg(if std::env::var("HAVEN_BENCH_V").is_ok() {
                "-v"
            } else {
                "-q"
            })
            .args(["--json", "mirror", "--once", "--topics", "bench", "--name"])
            .arg(format!("bench{round}"))
            .arg("--prefix")
            .arg(&prefix)
            .arg("--from")
            .arg(us.bootstrap())
            .arg("--to")
            .arg(eu.bootstrap())
            .stderr(Stdio::inherit())
            .output()?;
        let w = start.elapsed().as_secs_f64();
        anyhow::ensure!(out.status.success(), "haven mirror failed: {}", out.status);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        anyhow::ensure!(
            report["records"] == n,
            "haven mirrored {} of {n}",
            report["records"]
        );
        say(format!("round {round}: haven mirror {w:.2}s"));
        haven = haven.min(w);
    }
    let gib = (n * a.event_size as u64) as f64 / (1u64 << 30) as f64;
    print(
        ctx,
        &format!(
            "mirror throughput: {n} events ({gib:.2} GiB), {} partitions, {} ms each way",
            a.partitions, a.delay_ms
        ),
        &[Ratio::new("wall time", haven, base, "s", "<= 1.1", |r| {
            r <= 1.1
        })],
        json!({"loop_mib_per_s": a.mb as f64 / base, "haven_mib_per_s": a.mb as f64 / haven}),
    )?;
    Ok(0)
}
