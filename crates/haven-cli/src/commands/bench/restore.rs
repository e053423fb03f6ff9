//! `haven restore` against a plain rdkafka producer writing the same records.

use std::collections::{BTreeMap, VecDeque};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Instant;

use haven_engine::read::Bound;
use haven_engine::repo::Repository;
use haven_engine::restore::{self, RestoreOptions};
use haven_format::{Record, TimestampType};
use haven_kafka::rdkafka::producer::FutureRecord;
use haven_kafka::ClusterConfig;
use haven_storage::Store;
use serde_json::json;
use testbed::Broker;

use super::{cpu_seconds, data, print, Ratio};
use crate::Ctx;

/// Restore of a repository against a plain rdkafka producer, same broker, same run.
///
/// Writes N MiB of realistic 1 KiB JSON events over P partitions into a local repository,
/// then alternates, --rounds times: a plain librdkafka producer (idempotent, acks=all, as
/// Haven's) writing the same records from memory to a fresh topic, and `haven restore` of
/// the repository to a fresh topic (a child process). Then restores a 1% time window and
/// counts the bytes it read from the repository against the stored bytes of the chunks the
/// window overlaps. Targets: wall <= 1.1x; window reads <= 1.05x (+ one index per segment).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 1024)]
    mb: usize,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[arg(long, default_value_t = 1024)]
    event_size: usize,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Plain producers writing in parallel for the "does one producer bound it" figure.
    #[arg(long, default_value_t = 4)]
    writers: usize,
}

const T0: i64 = 1_795_000_000_000;

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let say = |s: String| {
        if !ctx.json {
            eprintln!("{s}");
        }
    };
    let n = (a.mb * 1024 * 1024 / a.event_size).max(1) as u64;
    let dir = tempfile::tempdir()?;
    let repo_path = dir.path().join("repo");
    let store = Store::open(&repo_path.display().to_string())?;
    let repo = Repository::open_or_create(store.clone(), Default::default()).await?;
    say(format!(
        "writing {n} events ({} MiB) into a repository ...",
        a.mb
    ));
    let mut rng = data::rng(5);
    let mut all: Vec<Vec<Record>> = vec![Vec::new(); a.partitions as usize];
    let mut next = vec![0i64; a.partitions as usize];
    for i in 0..n {
        let p = (i % a.partitions as u64) as usize;
        let (k, v) = data::event(&mut rng, i, a.event_size);
        all[p].push(Record {
            offset: next[p],
            timestamp: T0 + i as i64,
            timestamp_type: TimestampType::CreateTime,
            key: Some(k),
            value: Some(v),
            headers: vec![],
        });
        next[p] += 1;
    }
    // Segments of about 64 MiB, every partition in each, as a backup would write them.
    let per_segment = (64 * 1024 * 1024 / a.event_size / a.partitions as usize).max(1);
    let mut state = repo.load_state().await?;
    let mut start = 0;
    while start < all[0].len() {
        let mut seg = repo.new_segment(state.head, "bench");
        for (p, recs) in all.iter().enumerate() {
            let end = (start + per_segment).min(recs.len());
            if start < end {
                let slice = &recs[start..end];
                seg.add_partition(
                    "bench",
                    0,
                    p as i32,
                    slice[0].offset,
                    slice[slice.len() - 1].offset + 1,
                    slice,
                    vec![],
                )?;
            }
        }
        repo.commit_segment(&mut state, seg).await?;
        start += per_segment;
    }
    let broker = std::sync::Arc::new(tokio::task::spawn_blocking(Broker::start).await??);
    let cluster = ClusterConfig::new(broker.bootstrap());
    let exe = std::env::current_exe()?;
    let (mut base_wall, mut base_cpu) = (f64::INFINITY, f64::INFINITY);
    let (mut haven_wall, mut haven_cpu) = (f64::INFINITY, f64::INFINITY);
    let mut par_wall = f64::INFINITY;
    let all = std::sync::Arc::new(all);
    for round in 0..a.rounds {
        let topic = format!("baseline-{round}");
        let b = broker.clone();
        let parts = a.partitions;
        let t2 = topic.clone();
        tokio::task::spawn_blocking(move || b.create_topic(&t2, parts)).await??;
        let c0 = cpu_seconds(false);
        let t = Instant::now();
        let every: Vec<usize> = (0..all.len()).collect();
        produce_plain(&cluster, &topic, &all, &every).await?;
        let (w, c) = (t.elapsed().as_secs_f64(), cpu_seconds(false) - c0);
        say(format!(
            "round {round}: plain producer {w:.2}s wall, {c:.2}s CPU"
        ));
        base_wall = base_wall.min(w);
        base_cpu = base_cpu.min(c);

        // The same records through `writers` plain producers at once, each its own
        // client and connection, partitions dealt out: does one producer bound a restore?
        let topic = format!("parallel-{round}");
        let (b, t2) = (broker.clone(), topic.clone());
        tokio::task::spawn_blocking(move || b.create_topic(&t2, parts)).await??;
        let t = Instant::now();
        let writers = a.writers.clamp(1, all.len().max(1));
        let mut tasks = Vec::new();
        for i in 0..writers {
            let mine: Vec<usize> = (i..all.len()).step_by(writers).collect();
            let (cluster, topic, all) = (cluster.clone(), topic.clone(), all.clone());
            tasks.push(tokio::spawn(async move {
                produce_plain(&cluster, &topic, &all, &mine).await
            }));
        }
        for task in tasks {
            task.await??;
        }
        let w = t.elapsed().as_secs_f64();
        say(format!(
            "round {round}: {writers} plain producers in parallel {w:.2}s wall"
        ));
        par_wall = par_wall.min(w);

        let c0 = cpu_seconds(true);
        let t = Instant::now();
        let rename = format!("bench=restored-{round}");
        let status = Command::new(&exe)
            .args(["-q", "restore", "--topics", "bench", "--rename", &rename])
            .arg("--repo")
            .arg(&repo_path)
            .arg("--brokers")
            .arg(broker.bootstrap())
            .stdout(Stdio::null())
            .status()?;
        let (w, c) = (t.elapsed().as_secs_f64(), cpu_seconds(true) - c0);
        anyhow::ensure!(status.success(), "haven restore failed: {status}");
        say(format!(
            "round {round}: haven restore {w:.2}s wall, {c:.2}s CPU"
        ));
        haven_wall = haven_wall.min(w);
        haven_cpu = haven_cpu.min(c);
    }

    // A 1% time window, restored in-process to count what it reads.
    let span = n as i64;
    let (from, to) = (T0 + span / 2, T0 + span / 2 + (span / 100).max(1));
    let window_stored: u64 = state
        .partitions
        .values()
        .flat_map(|p| &p.chunks)
        .filter(|c| c.meta.max_timestamp >= from && c.meta.min_timestamp < to)
        .map(|c| c.meta.byte_len)
        .sum();
    let before = store.traffic().bytes_read.load(Ordering::Relaxed);
    let opts = RestoreOptions {
        from: Bound::Time(from),
        to: Bound::Time(to),
        renames: BTreeMap::from([("bench".to_string(), "window".to_string())]),
        ..RestoreOptions::new(
            ClusterConfig::new(broker.bootstrap()),
            haven_engine::backup::topic_regex("bench")?,
        )
    };
    let plan = restore::plan(&repo, &state, &opts).await?;
    // What `haven restore` does: every chunk checked before anything is written.
    let damaged = restore::preflight(&repo, &state, &plan).await?;
    if !damaged.is_empty() {
        return Err(restore::refusal(&damaged).into());
    }
    let report = restore::run(
        &repo,
        &state,
        &plan,
        &opts.cluster,
        &haven_engine::events::Collect::default(),
        &[],
    )
    .await?;
    let read = store.traffic().bytes_read.load(Ordering::Relaxed) - before;
    let ratios = [
        Ratio::new("wall time", haven_wall, base_wall, "s", "<= 1.1", |r| {
            r <= 1.1
        }),
        Ratio::new("CPU", haven_cpu, base_cpu, "s", "(info)", |_| true),
        Ratio::new(
            &format!(
                "{} plain producers vs one",
                a.writers.clamp(1, a.partitions.max(1) as usize)
            ),
            par_wall,
            base_wall,
            "s",
            "(info: < 1 means one producer bounds a restore)",
            |_| true,
        ),
        Ratio::new(
            "window bytes read",
            read as f64 / 1048576.0,
            window_stored as f64 / 1048576.0,
            "MiB",
            "<= 1.05",
            |r| r <= 1.05,
        ),
    ];
    print(
        ctx,
        &format!(
            "restore: {n} events, {} MiB of payload, {} partitions, {} segments",
            a.mb, a.partitions, state.segments
        ),
        &ratios,
        json!({"window_records": report.records, "window_chunk_bytes": window_stored, "window_bytes_read": read}),
    )?;
    Ok(0)
}

/// Writes the records of the partitions `parts` of `all` to `topic` through one plain
/// idempotent producer (acks=all, as Haven's), up to 5,000 in flight.
async fn produce_plain(
    cluster: &ClusterConfig,
    topic: &str,
    all: &[Vec<Record>],
    parts: &[usize],
) -> anyhow::Result<()> {
    let producer = cluster.producer()?;
    let mut in_flight = VecDeque::new();
    for &p in parts {
        let recs = &all[p];
        for r in recs {
            let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .partition(p as i32)
                .timestamp(r.timestamp);
            if let Some(k) = &r.key {
                fr = fr.key(k.as_slice());
            }
            if let Some(v) = &r.value {
                fr = fr.payload(v.as_slice());
            }
            loop {
                match producer.send_result(fr) {
                    Ok(f) => {
                        in_flight.push_back(f);
                        break;
                    }
                    Err((_, back)) => {
                        for _ in 0..in_flight.len().min(1000) {
                            if let Some(f) = in_flight.pop_front() {
                                f.await?.map_err(|(e, _)| e)?;
                            }
                        }
                        fr = back;
                    }
                }
            }
            if in_flight.len() >= 5000 {
                for _ in 0..1000 {
                    if let Some(f) = in_flight.pop_front() {
                        f.await?.map_err(|(e, _)| e)?;
                    }
                }
            }
        }
    }
    while let Some(f) = in_flight.pop_front() {
        f.await?.map_err(|(e, _)| e)?;
    }
    Ok(())
}
