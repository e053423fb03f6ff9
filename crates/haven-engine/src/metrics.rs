//! Counting engine events as Prometheus metrics (text exposition format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::events::{Event, Observer};

/// (records, seconds, durable offset) of one partition.
type Lag = (i64, f64, i64);

/// Counters and gauges fed by [`Event`]s. Render with [`Metrics::render`].
#[derive(Debug, Default)]
pub struct Metrics {
    /// Names the per-partition lag series: `haven_{job}_lag_*` (default `backup`).
    job: &'static str,
    mirrored_records: AtomicU64,
    mirrored_bytes: AtomicU64,
    skipped_origin: AtomicU64,
    group_syncs: AtomicU64,
    group_sync_refusals: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    segments: AtomicU64,
    errors: AtomicU64,
    concurrent_appends: AtomicU64,
    /// Unix ms of the last segment that became durable.
    last_durable_ms: AtomicI64,
    /// Age in ms of the oldest record of the last segment when it became durable.
    last_oldest_age_ms: AtomicI64,
    lost: Mutex<BTreeMap<(String, i32), u64>>,
    /// Configured groups with nothing synced so far.
    never_synced: Mutex<std::collections::BTreeSet<String>>,
    lag: Mutex<BTreeMap<(String, i32), Lag>>,
}

impl Metrics {
    /// Metrics of a job kind (`backup`, `mirror`): names the lag series.
    pub fn for_job(job: &'static str) -> Self {
        Metrics {
            job,
            ..Default::default()
        }
    }

    pub fn render(&self) -> String {
        let job = if self.job.is_empty() {
            "backup"
        } else {
            self.job
        };
        let mut o = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "haven_backup_records_total",
            "counter",
            "Records made durable in the repository.",
            self.records.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "haven_backup_bytes_total",
            "counter",
            "Bytes of segments written.",
            self.bytes.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "haven_backup_segments_total",
            "counter",
            "Segments written.",
            self.segments.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "haven_errors_total",
            "counter",
            "Recoverable errors (retried).",
            self.errors.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "haven_backup_concurrent_appends_total",
            "counter",
            "Appends lost to another writer and retried.",
            self.concurrent_appends.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "haven_backup_last_durable_timestamp_seconds",
            "gauge",
            "When the last segment became durable (Unix seconds).",
            format!(
                "{:.3}",
                self.last_durable_ms.load(Ordering::Relaxed) as f64 / 1000.0
            ),
        );
        metric(
            "haven_backup_last_flush_oldest_record_age_seconds",
            "gauge",
            "Age of the oldest record of the last segment when it became durable.",
            format!(
                "{:.3}",
                self.last_oldest_age_ms.load(Ordering::Relaxed) as f64 / 1000.0
            ),
        );
        if job == "mirror" {
            for (name, kind, help, v) in [
                (
                    "haven_mirror_records_total",
                    "counter",
                    "Records copied to the target and acknowledged.",
                    &self.mirrored_records,
                ),
                (
                    "haven_mirror_bytes_total",
                    "counter",
                    "Key and value bytes copied.",
                    &self.mirrored_bytes,
                ),
                (
                    "haven_mirror_skipped_origin_total",
                    "counter",
                    "Records not copied back to the cluster they came from.",
                    &self.skipped_origin,
                ),
                (
                    "haven_mirror_group_syncs_total",
                    "counter",
                    "Consumer-group offset commits made on the target.",
                    &self.group_syncs,
                ),
                (
                    "haven_mirror_group_sync_refusals_total",
                    "counter",
                    "Group syncs refused (group active on the target, ...).",
                    &self.group_sync_refusals,
                ),
            ] {
                let _ = writeln!(
                    o,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                    v.load(Ordering::Relaxed)
                );
            }
        }
        if let Ok(groups) = self.never_synced.lock() {
            if self.job == "mirror" {
                let _ = writeln!(o, "# HELP haven_mirror_group_never_synced 1 for each group configured for offset sync that has no commit on the mirrored partitions (nothing synced for it).");
                let _ = writeln!(o, "# TYPE haven_mirror_group_never_synced gauge");
                for g in groups.iter() {
                    let _ = writeln!(
                        o,
                        "haven_mirror_group_never_synced{{group=\"{}\"}} 1",
                        g.replace('\\', "\\\\").replace('"', "\\\"")
                    );
                }
            }
        }
        let _ = writeln!(o, "# HELP haven_backup_records_lost_total Records the source deleted before Haven read them.");
        let _ = writeln!(o, "# TYPE haven_backup_records_lost_total counter");
        if let Ok(lost) = self.lost.lock() {
            for ((t, p), n) in lost.iter() {
                let _ = writeln!(
                    o,
                    "haven_backup_records_lost_total{{topic=\"{}\",partition=\"{p}\"}} {n}",
                    escape(t)
                );
            }
        }
        if let Ok(lag) = self.lag.lock() {
            let series: [(&str, &str, &str); 3] = [
                (
                    "lag_records",
                    "Records of the partition not yet durable at the destination.",
                    "records",
                ),
                (
                    "lag_seconds",
                    "Age of the partition's oldest record not yet durable at the destination (RPO now).",
                    "seconds",
                ),
                (
                    "durable_offset",
                    "Next offset to make durable (everything below is).",
                    "offset",
                ),
            ];
            for (suffix, help, which) in series {
                let name = format!("haven_{job}_{suffix}");
                let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
                for ((t, p), (records, seconds, offset)) in lag.iter() {
                    let v = match which {
                        "records" => records.to_string(),
                        "seconds" => format!("{seconds:.3}"),
                        _ => offset.to_string(),
                    };
                    let _ = writeln!(o, "{name}{{topic=\"{}\",partition=\"{p}\"}} {v}", escape(t));
                }
            }
        }
        o
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Observer for Metrics {
    fn event(&self, event: &Event) {
        match event {
            Event::SegmentWritten {
                records,
                bytes,
                oldest_age_ms,
                ..
            } => {
                self.records.fetch_add(*records, Ordering::Relaxed);
                self.bytes.fetch_add(*bytes, Ordering::Relaxed);
                self.segments.fetch_add(1, Ordering::Relaxed);
                self.last_durable_ms
                    .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
                if let Some(a) = oldest_age_ms {
                    self.last_oldest_age_ms.store(*a, Ordering::Relaxed);
                }
            }
            Event::RecordsLost {
                topic,
                partition,
                from,
                to,
                ..
            } => {
                if let Ok(mut l) = self.lost.lock() {
                    *l.entry((topic.clone(), *partition)).or_default() += (to - from).max(0) as u64;
                }
            }
            Event::PartitionLag {
                topic,
                partition,
                records,
                seconds,
                durable_offset,
            } => {
                if let Ok(mut l) = self.lag.lock() {
                    l.insert(
                        (topic.clone(), *partition),
                        (*records, *seconds, *durable_offset),
                    );
                }
            }
            Event::PartitionsReleased { partitions } => {
                if let Ok(mut l) = self.lag.lock() {
                    for k in partitions {
                        l.remove(k);
                    }
                }
            }
            Event::Retrying { .. } => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Event::ConcurrentAppend { .. } => {
                self.concurrent_appends.fetch_add(1, Ordering::Relaxed);
            }
            Event::MirrorProgress {
                records,
                bytes,
                skipped_origin,
            } => {
                self.mirrored_records.store(*records, Ordering::Relaxed);
                self.mirrored_bytes.store(*bytes, Ordering::Relaxed);
                self.skipped_origin
                    .store(*skipped_origin, Ordering::Relaxed);
            }
            Event::GroupSynced { group, .. } => {
                self.group_syncs.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut g) = self.never_synced.lock() {
                    g.remove(group);
                }
            }
            Event::GroupNeverSynced { group } => {
                if let Ok(mut g) = self.never_synced.lock() {
                    g.insert(group.clone());
                }
            }
            Event::GroupNotSynced { .. } => {
                self.group_sync_refusals.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_metrics() {
        let m = Metrics::default();
        m.event(&Event::SegmentWritten {
            key: "log/1".into(),
            records: 10,
            bytes: 100,
            oldest_age_ms: Some(1500),
        });
        m.event(&Event::RecordsLost {
            topic: "t\"x".into(),
            partition: 2,
            from: 5,
            to: 9,
            reason: "r".into(),
        });
        let text = m.render();
        assert!(text.contains("haven_backup_records_total 10\n"), "{text}");
        assert!(
            text.contains("haven_backup_last_flush_oldest_record_age_seconds 1.500"),
            "{text}"
        );
        assert!(
            text.contains("haven_backup_records_lost_total{topic=\"t\\\"x\",partition=\"2\"} 4"),
            "{text}"
        );
    }
}
