//! A backup job as the posture shows it: per partition, what the repository holds durably
//! against the cluster's high watermark, and the age of the oldest record not yet durable
//! (what losing the cluster now would cost that the repository could not give back).

use std::time::Duration;

use haven_kafka::rdkafka::message::Message;
use serde::Serialize;

use crate::config::{Config, JobSection};
use crate::repo::RepoState;

#[derive(Debug, Clone, Serialize)]
pub struct BackupPartition {
    pub topic: String,
    pub partition: i32,
    /// Every record before this offset is durable in the repository.
    pub durable: i64,
    pub high_watermark: i64,
    pub lag_records: i64,
    /// Age of the oldest record not yet durable (0 when none).
    pub lag_seconds: f64,
    /// Records the broker deleted before the backup read them (recorded gaps).
    pub records_lost: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupRow {
    pub job: String,
    pub cluster: String,
    pub repository: String,
    pub topics: String,
    /// When the repository last made something durable (unix ms).
    pub last_flush_at: Option<i64>,
    pub partitions: Vec<BackupPartition>,
    /// Why the cluster could not be read.
    pub error: Option<String>,
}

/// Reads `job`'s cluster against the catalog of its repository.
pub async fn read(cfg: &Config, name: &str, job: &JobSection, state: &RepoState) -> BackupRow {
    let mut row = BackupRow {
        job: name.to_string(),
        cluster: job.cluster.clone(),
        repository: job.repository.clone(),
        topics: job.topics.clone(),
        last_flush_at: state.last_segment_at,
        partitions: Vec::new(),
        error: None,
    };
    let cluster = match cfg.cluster(&job.cluster).client_config() {
        Ok(c) => c,
        Err(e) => {
            row.error = Some(e.to_string());
            return row;
        }
    };
    let durable: Vec<((String, i32), i64, u64)> = state
        .partitions
        .keys()
        .filter_map(|(t, _, p)| {
            let (_, st) = state.latest(t, *p)?;
            let lost = st.losses.iter().map(|l| (l.to - l.from) as u64).sum();
            Some(((t.clone(), *p), st.next_offset, lost))
        })
        .collect();
    let pattern = job.topics.clone();
    let res = crate::blocking(move || {
        let topics_re = crate::backup::topic_regex(&pattern)?;
        let c = cluster.inspector("haven-inspector")?;
        let timeout = Duration::from_secs(5);
        let topics = haven_kafka::list_topics(&c, &cluster.brokers, timeout)?;
        let now = chrono::Utc::now().timestamp_millis();
        let mut out = Vec::new();
        for t in topics.iter().filter(|t| topics_re.is_match(&t.name)) {
            for p in 0..t.partitions {
                let (low, high) = haven_kafka::watermarks(&c, &t.name, p, timeout)?;
                let (done, lost) = durable
                    .iter()
                    .find(|((dt, dp), _, _)| *dt == t.name && *dp == p)
                    .map_or((low, 0), |(_, n, l)| (*n, *l));
                let from = done.max(low);
                let mut oldest = None;
                if from < high {
                    haven_kafka::scan(&cluster, &t.name, p, from, from + 1, timeout, |m| {
                        oldest = m.timestamp().to_millis();
                        false
                    })?;
                }
                out.push(BackupPartition {
                    topic: t.name.clone(),
                    partition: p,
                    durable: done,
                    high_watermark: high,
                    lag_records: (high - from).max(0),
                    lag_seconds: oldest.map_or(0.0, |ts| (now - ts).max(0) as f64 / 1000.0),
                    records_lost: lost,
                });
            }
        }
        Ok(out)
    })
    .await;
    match res {
        Ok(p) => row.partitions = p,
        Err(e) => row.error = Some(e.to_string()),
    }
    row
}
