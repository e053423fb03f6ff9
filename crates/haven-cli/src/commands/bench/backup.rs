//! `haven backup --once` against a plain rdkafka consumer draining the same topic.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use haven_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use haven_kafka::rdkafka::message::Message;
use haven_kafka::rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use testbed::Broker;

use super::{cpu_seconds, data, print, Ratio};
use crate::Ctx;

/// Backup of a topic against a plain rdkafka consumer draining it, same broker, same run.
///
/// Starts a tansu broker, produces N MiB of realistic 1 KiB JSON events over P partitions,
/// then alternates, --rounds times: a plain librdkafka consumer draining every partition
/// (same fetch.wait.max.ms as Haven), --readers plain consumers draining in parallel (what
/// parallel fetching can gain on this broker), and `haven backup --once` into a fresh
/// local repository with one reader and with --readers (a child process: its CPU time
/// and peak RSS are measured). Also measures the CPU of zstd level 3 on the same payload,
/// the work a backup cannot avoid. Best round of each. Targets: one reader wall <= 1.1x,
/// readers wall <= 0.8x; CPU <= 1.3x (consumer + zstd); peak RSS <= 64 MiB.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// MiB of payload to produce.
    #[arg(long, default_value_t = 1024)]
    mb: usize,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[arg(long, default_value_t = 1024)]
    event_size: usize,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Readers of the parallel run (default: one per partition).
    #[arg(long)]
    readers: Option<usize>,
}

/// The best wall and CPU, and the highest peak RSS, over the rounds.
struct Best {
    wall: f64,
    cpu: f64,
    rss: f64,
}

impl Default for Best {
    fn default() -> Self {
        Best {
            wall: f64::INFINITY,
            cpu: f64::INFINITY,
            rss: 0.0,
        }
    }
}

/// One `haven backup --once --readers N` into a fresh repository, as a child process:
/// its wall time, CPU and peak RSS (MiB).
fn haven_round(
    exe: &std::path::Path,
    bootstrap: &str,
    readers: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let c0 = cpu_seconds(true);
    let t = Instant::now();
    let out = Command::new(exe)
        .args(["-q", "--json", "backup", "--once", "--group-interval", "0"])
        .args(["--topics", "bench", "--readers", &readers.to_string()])
        .arg("--brokers")
        .arg(bootstrap)
        .arg("--repo")
        .arg(&repo)
        .stderr(Stdio::inherit())
        .output()?;
    let w = t.elapsed().as_secs_f64();
    let c = cpu_seconds(true) - c0;
    anyhow::ensure!(out.status.success(), "haven backup failed: {}", out.status);
    // The child's own peak RSS (getrusage would count the parent's pages at spawn).
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((w, c, report["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)))
}

fn drain(broker: &Broker, topic: &str, partitions: i32) -> anyhow::Result<(u64, u64)> {
    let all: Vec<i32> = (0..partitions).collect();
    drain_some(broker, topic, &all)
}

/// `n` plain consumers in threads, the partitions dealt out among them: what parallel
/// fetching can gain on this broker and machine at best.
fn drain_parallel(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    n: usize,
) -> anyhow::Result<(u64, u64)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let mine: Vec<i32> = (0..partitions).skip(i).step_by(n).collect();
                s.spawn(move || drain_some(broker, topic, &mine))
            })
            .collect();
        let mut total = (0, 0);
        for h in handles {
            let (c, b) = h
                .join()
                .map_err(|_| anyhow::anyhow!("a draining thread panicked"))??;
            total = (total.0 + c, total.1 + b);
        }
        Ok(total)
    })
}

fn drain_some(broker: &Broker, topic: &str, parts: &[i32]) -> anyhow::Result<(u64, u64)> {
    let c: BaseConsumer = broker
        .config()
        .set("group.id", "bench-baseline")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("queued.max.messages.kbytes", "16384")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut highs = Vec::new();
    for p in parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
        highs.push(c.fetch_watermarks(topic, *p, Duration::from_secs(10))?.1);
    }
    c.assign(&tpl)?;
    let mut pos = vec![0i64; parts.len()];
    let (mut n, mut bytes) = (0u64, 0u64);
    while pos.iter().zip(&highs).any(|(p, h)| p < h) {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m?;
            bytes += (m.payload_len() + m.key().map_or(0, <[u8]>::len)) as u64;
            n += 1;
            if let Some(i) = parts.iter().position(|p| *p == m.partition()) {
                pos[i] = m.offset() + 1;
            }
        }
    }
    Ok((n, bytes))
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let say = |s: String| {
        if !ctx.json {
            eprintln!("{s}");
        }
    };
    let broker = tokio::task::spawn_blocking(Broker::start).await??;
    let n = (a.mb * 1024 * 1024 / a.event_size).max(1) as u64;
    say(format!(
        "producing {n} events ({} MiB) to {} partitions ...",
        a.mb, a.partitions
    ));
    let (broker, produce_s, zstd_cpu) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            broker.create_topic("bench", a.partitions)?;
            let mut rng = data::rng(11);
            let t = Instant::now();
            let mut zstd_cpu = 0.0;
            let mut i = 0u64;
            while i < n {
                let batch = data::batch(
                    &mut rng,
                    i,
                    (i + 20_000).min(n),
                    a.event_size,
                    a.partitions,
                    false,
                );
                // The unavoidable work: zstd level 3 over the same bytes, in 1 MiB chunks.
                let mut raw = Vec::with_capacity(1 << 20);
                let c0 = cpu_seconds(false);
                for r in &batch {
                    raw.extend_from_slice(r.key.as_deref().unwrap_or_default());
                    raw.extend_from_slice(r.value.as_deref().unwrap_or_default());
                    if raw.len() >= 1 << 20 {
                        std::hint::black_box(zstd::bulk::compress(&raw, 3)?);
                        raw.clear();
                    }
                }
                if !raw.is_empty() {
                    std::hint::black_box(zstd::bulk::compress(&raw, 3)?);
                }
                zstd_cpu += cpu_seconds(false) - c0;
                broker.produce("bench", &batch)?;
                i += batch.len() as u64;
            }
            Ok((broker, t.elapsed().as_secs_f64(), zstd_cpu))
        })
        .await??;
    say(format!("produced in {produce_s:.1}s"));

    let exe = std::env::current_exe()?;
    let (mut base_wall, mut base_cpu) = (f64::INFINITY, f64::INFINITY);
    let many = a.readers.unwrap_or(a.partitions.max(1) as usize);
    let (mut single, mut parallel) = (Best::default(), Best::default());
    let mut parallel_drain_wall = f64::INFINITY;
    let mut payload = 0u64;
    let broker = std::sync::Arc::new(broker);
    for round in 0..a.rounds {
        let b = broker.clone();
        let (w, c, (cnt, bytes)) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let c0 = cpu_seconds(false);
            let t = Instant::now();
            let r = drain(&b, "bench", a.partitions)?;
            Ok((t.elapsed().as_secs_f64(), cpu_seconds(false) - c0, r))
        })
        .await??;
        anyhow::ensure!(cnt == n, "baseline drained {cnt} of {n} records");
        payload = bytes;
        say(format!(
            "round {round}: plain consumer {w:.2}s wall, {c:.2}s CPU"
        ));
        base_wall = base_wall.min(w);
        base_cpu = base_cpu.min(c);
        let b = broker.clone();
        let (w, cnt) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let t = Instant::now();
            let (cnt, _) = drain_parallel(&b, "bench", a.partitions, many)?;
            Ok((t.elapsed().as_secs_f64(), cnt))
        })
        .await??;
        anyhow::ensure!(cnt == n, "parallel baseline drained {cnt} of {n} records");
        say(format!(
            "round {round}: {many} plain consumers in parallel {w:.2}s wall"
        ));
        parallel_drain_wall = parallel_drain_wall.min(w);

        for (readers, best) in [(1, &mut single), (many, &mut parallel)] {
            let (exe, bootstrap) = (exe.clone(), broker.bootstrap());
            let (w, c, r) =
                tokio::task::spawn_blocking(move || haven_round(&exe, &bootstrap, readers))
                    .await??;
            say(format!(
                "round {round}: haven backup --readers {readers}: {w:.2}s wall, {c:.2}s CPU, {r:.0} MiB"
            ));
            best.wall = best.wall.min(w);
            best.cpu = best.cpu.min(c);
            best.rss = best.rss.max(r);
        }
    }
    let gib = payload as f64 / (1u64 << 30) as f64;
    let ratios = [
        Ratio::new(
            &format!("wall time, {many} readers"),
            parallel.wall,
            base_wall,
            "s",
            "<= 0.8",
            |r| r <= 0.8,
        ),
        Ratio::new(
            &format!("wall time, {many} plain consumers in parallel"),
            parallel_drain_wall,
            base_wall,
            "s",
            "(the broker's limit)",
            |_| true,
        ),
        Ratio::new(
            "wall time, 1 reader",
            single.wall,
            base_wall,
            "s",
            "<= 1.1",
            |r| r <= 1.1,
        ),
        Ratio::new(
            &format!("CPU per GiB, {many} readers"),
            parallel.cpu / gib,
            (base_cpu + zstd_cpu) / gib,
            "s/GiB",
            "<= 1.3 (consumer + zstd)",
            |r| r <= 1.3,
        ),
        Ratio::new(
            "CPU per GiB, 1 reader",
            single.cpu / gib,
            (base_cpu + zstd_cpu) / gib,
            "s/GiB",
            "<= 1.3 (consumer + zstd)",
            |r| r <= 1.3,
        ),
        Ratio::new(
            &format!("peak RSS, {many} readers"),
            parallel.rss,
            64.0,
            "MiB",
            "<= 1.0 (of 64 MiB)",
            |r| r <= 1.0,
        ),
        Ratio::new(
            "peak RSS, 1 reader",
            single.rss,
            64.0,
            "MiB",
            "<= 1.0 (of 64 MiB)",
            |r| r <= 1.0,
        ),
    ];
    print(
        ctx,
        &format!(
            "backup: {n} events, {:.2} GiB of payload, {} partitions",
            gib, a.partitions
        ),
        &ratios,
        json!({
            "plain_consumer_cpu_s": base_cpu, "zstd_cpu_s": zstd_cpu,
            "haven_cpu_s": {"1": single.cpu, many.to_string(): parallel.cpu},
            "produce_s": produce_s,
        }),
    )?;
    Ok(0)
}
