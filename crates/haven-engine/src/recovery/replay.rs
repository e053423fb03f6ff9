//! Replaying the events of a window to a sink, from the backup or the live cluster, in
//! per-partition offset order, batch by batch. After every batch the progress (next offset
//! per partition) is stored in the repository under `replays/ID/`, so `--resume ID`
//! continues after the last batch the sink acknowledged. Sinks are idempotent (Postgres)
//! or carry provenance (Kafka `haven-source`), so a batch cut by a crash is harmless.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use haven_kafka::ClusterConfig;
use serde::{Deserialize, Serialize};

use super::sink::{Event, Sink};
use crate::read::{chunks_for, in_window, Bound, Selection};
use crate::repo::Repository;
use crate::{blocking, Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Backup,
    Live,
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub topics: Vec<String>,
    pub partitions: Option<Vec<i32>>,
    pub from: Bound,
    pub to: Bound,
    pub source: Source,
    pub batch: usize,
    /// Replay id (progress under `replays/ID/`).
    pub id: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    pub id: String,
    pub records: u64,
    pub batches: u64,
    /// Records skipped because an earlier run already delivered them.
    pub resumed_past: u64,
    pub partitions: Vec<(String, i32, u64)>,
}

/// Next offset to deliver per "topic/partition".
type Progress = BTreeMap<String, i64>;

async fn load_progress(repo: &Repository, id: &str) -> Result<(Progress, u64)> {
    let mut objects = repo.store().list(&format!("replays/{id}/")).await?;
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    let Some(last) = objects.last() else {
        return Ok((Progress::new(), 0));
    };
    let raw = repo.store().get(&last.key).await?;
    let p: Progress =
        serde_json::from_slice(&raw).map_err(|e| Error::Damaged(format!("{}: {e}", last.key)))?;
    Ok((p, objects.len() as u64))
}

async fn save_progress(repo: &Repository, id: &str, seq: u64, p: &Progress) -> Result<()> {
    let body = serde_json::to_vec(p).map_err(|e| Error::Task(e.to_string()))?;
    repo.store()
        .put_new(&format!("replays/{id}/{seq:010}.json"), Bytes::from(body))
        .await?;
    Ok(())
}

struct Run<'a> {
    sink: &'a mut Sink,
    repo: Option<&'a Repository>,
    id: String,
    progress: Progress,
    seq: u64,
    batch: Vec<Event>,
    batch_size: usize,
    report: ReplayReport,
}

impl Run<'_> {
    async fn push(&mut self, e: Event) -> Result<()> {
        let key = format!("{}/{}", e.topic, e.partition);
        if self
            .progress
            .get(&key)
            .is_some_and(|next| e.record.offset < *next)
        {
            self.report.resumed_past += 1;
            return Ok(());
        }
        self.batch.push(e);
        if self.batch.len() >= self.batch_size {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.sink.write(&self.batch).await?;
        for e in self.batch.drain(..) {
            self.progress
                .insert(format!("{}/{}", e.topic, e.partition), e.record.offset + 1);
            self.report.records += 1;
            match self
                .report
                .partitions
                .iter_mut()
                .find(|x| x.0 == e.topic && x.1 == e.partition)
            {
                Some(x) => x.2 += 1,
                None => self
                    .report
                    .partitions
                    .push((e.topic.clone(), e.partition, 1)),
            }
        }
        self.report.batches += 1;
        if let Some(repo) = self.repo {
            self.seq += 1;
            save_progress(repo, &self.id, self.seq, &self.progress).await?;
        }
        Ok(())
    }
}

/// Replays the window to `sink`. The backup source needs `repo`; the live source needs
/// `cluster`. `repo`, when given, also keeps the progress.
pub async fn replay(
    repo: Option<&Repository>,
    cluster: Option<&ClusterConfig>,
    opts: &ReplayOptions,
    sink: &mut Sink,
) -> Result<ReplayReport> {
    let (progress, seq) = match repo {
        Some(r) => load_progress(r, &opts.id).await?,
        None => (Progress::new(), 0),
    };
    let mut run = Run {
        sink,
        repo,
        id: opts.id.clone(),
        progress,
        seq,
        batch: Vec::with_capacity(opts.batch),
        batch_size: opts.batch.max(1),
        report: ReplayReport {
            id: opts.id.clone(),
            ..Default::default()
        },
    };
    match opts.source {
        Source::Backup => {
            let repo = repo.ok_or_else(|| Error::Input("--source backup needs --repo".into()))?;
            let state = repo.load_state().await?;
            repo.ensure_readable(&state)?;
            for topic in &opts.topics {
                let sel = Selection {
                    topic: topic.clone(),
                    partitions: opts.partitions.clone(),
                    generation: None,
                    from: opts.from,
                    to: opts.to,
                };
                for (p, c) in chunks_for(&state, &sel)? {
                    for r in repo.read_chunk(c).await? {
                        if in_window(r.offset, r.timestamp, opts.from, opts.to) {
                            run.push(Event {
                                topic: topic.clone(),
                                partition: p,
                                record: r,
                            })
                            .await?;
                        }
                    }
                }
            }
        }
        Source::Live => {
            let cluster =
                cluster.ok_or_else(|| Error::Input("--source live needs --brokers".into()))?;
            for topic in &opts.topics {
                let (c, t, parts, from, to) = (
                    cluster.clone(),
                    topic.clone(),
                    opts.partitions.clone(),
                    opts.from,
                    opts.to,
                );
                // Offsets of the window per partition, then the records (blocking reads).
                let ranges = blocking(move || {
                    let i = c.inspector("haven-inspector")?;
                    let n = haven_kafka::list_topics(&i, &c.brokers, Duration::from_secs(10))?
                        .into_iter()
                        .find(|x| x.name == t)
                        .map(|x| x.partitions)
                        .ok_or_else(|| {
                            Error::Input(format!("topic {t} is not on {}", c.brokers))
                        })?;
                    let mut out = Vec::new();
                    for p in 0..n {
                        if parts.as_ref().is_some_and(|v| !v.contains(&p)) {
                            continue;
                        }
                        let times: Vec<i64> = [from, to]
                            .iter()
                            .filter_map(|b| match b {
                                Bound::Time(ts) => Some(*ts),
                                _ => None,
                            })
                            .collect();
                        let at = haven_kafka::offsets_at_times(
                            &c,
                            &i,
                            &t,
                            p,
                            &times,
                            Duration::from_secs(10),
                        )?;
                        let mut by_time = at.offsets.iter();
                        let mut resolve = |b: Bound, default: i64| match b {
                            Bound::Unbounded => default,
                            Bound::Offset(o) => o.clamp(at.low, at.high),
                            Bound::Time(_) => by_time.next().copied().unwrap_or(at.high),
                        };
                        let a = resolve(from, at.low);
                        let z = resolve(to, at.high);
                        out.push((p, a, z));
                    }
                    Ok(out)
                })
                .await?;
                for (p, a, b) in ranges {
                    let (c, t) = (cluster.clone(), topic.clone());
                    let (tx, mut rx) = tokio::sync::mpsc::channel::<haven_format::Record>(1000);
                    let reader = tokio::task::spawn_blocking(move || {
                        haven_kafka::scan(&c, &t, p, a, b, Duration::from_secs(30), |m| {
                            tx.blocking_send(haven_kafka::record_ref(m).to_owned())
                                .is_ok()
                        })
                    });
                    while let Some(r) = rx.recv().await {
                        if in_window(r.offset, r.timestamp, opts.from, opts.to) {
                            run.push(Event {
                                topic: topic.clone(),
                                partition: p,
                                record: r,
                            })
                            .await?;
                        }
                    }
                    reader.await.map_err(|e| Error::Task(e.to_string()))??;
                }
            }
        }
    }
    run.flush().await?;
    Ok(run.report)
}
