//! Delay from produce to durable-in-repository under the seed's peak load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haven_engine::backup::{self, BackupOptions};
use haven_engine::events::{Event, Observer};
use haven_engine::repo::Repository;
use haven_kafka::ClusterConfig;
use haven_storage::Store;
use serde_json::json;
use testbed::Broker;
use tokio::sync::watch;

use super::{data, percentile, print, Ratio};
use crate::Ctx;

/// Produce-to-durable delay of a continuous backup under a steady load.
///
/// Starts a tansu broker and a continuous backup (flush every --flush-ms), produces
/// --rate records a minute of --event-size bytes for --seconds (the seed's peak: 10,000
/// records of 5 KB a minute), then measures for every record the delay between its
/// CreateTime and the moment the segment holding it became durable. Target: p99 <= 1 s.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    load: data::SteadyLoad,
    #[arg(long, default_value_t = 500)]
    flush_ms: u64,
}

#[derive(Default)]
struct Durable(Mutex<HashMap<String, i64>>);

impl Observer for Durable {
    fn event(&self, e: &Event) {
        if let Event::SegmentWritten { key, .. } = e {
            if let Ok(mut m) = self.0.lock() {
                m.insert(key.clone(), chrono::Utc::now().timestamp_millis());
            }
        }
    }
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let broker = Arc::new(tokio::task::spawn_blocking(Broker::start).await??);
    let b = broker.clone();
    let parts = a.load.partitions;
    tokio::task::spawn_blocking(move || b.create_topic("rpo", parts)).await??;
    let dir = tempfile::tempdir()?;
    let repo = Repository::open_or_create(
        Store::open(&dir.path().display().to_string())?,
        Default::default(),
    )
    .await?;
    let mut opts = BackupOptions::new(
        ClusterConfig::new(broker.bootstrap()),
        backup::topic_regex("rpo")?,
    );
    opts.flush_interval = Duration::from_millis(a.flush_ms);
    opts.group_interval = None;
    let durable = Arc::new(Durable::default());
    let (stop_tx, stop) = watch::channel(false);
    let (r2, o2, d2) = (repo.clone(), opts.clone(), durable.clone());
    let backup = tokio::spawn(async move { backup::run(&r2, &o2, d2.as_ref(), stop).await });
    // Let the consumer group settle before the load starts.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let (b, load) = (broker.clone(), a.load);
    let produced = tokio::task::spawn_blocking(move || load.produce(&b, "rpo", 3)).await??;
    tokio::time::sleep(Duration::from_millis(a.flush_ms * 3 + 2000)).await;
    let _ = stop_tx.send(true);
    backup.await??;

    let state = repo.load_state().await?;
    let times = durable.0.lock().map(|m| m.clone()).unwrap_or_default();
    let mut delays = Vec::new();
    for ps in state.partitions.values() {
        for c in &ps.chunks {
            let Some(at) = times.get(&c.key) else {
                continue;
            };
            for r in repo.read_chunk(c).await? {
                delays.push(at - r.timestamp);
            }
        }
    }
    anyhow::ensure!(
        delays.len() as u64 == produced,
        "{} of {produced} records durable",
        delays.len()
    );
    delays.sort_unstable();
    let p99 = percentile(&delays, 0.99) as f64;
    let ratios = [Ratio::new(
        "p99 produce-to-durable delay",
        p99,
        1000.0,
        "ms",
        "<= 1.0 (of 1 s)",
        |r| r <= 1.0,
    )];
    print(
        ctx,
        &format!(
            "rpo: {produced} records of {} B at {}/min over {}s, flush every {} ms",
            a.load.event_size, a.load.rate, a.load.seconds, a.flush_ms
        ),
        &ratios,
        json!({
            "p50_ms": percentile(&delays, 0.5), "p90_ms": percentile(&delays, 0.9),
            "p99_ms": p99, "max_ms": delays.last(), "records": produced,
        }),
    )?;
    Ok(0)
}
