//! A small in-memory history of the posture's lag, for the dashboard's charts: one point
//! per reading, the last hour kept, for the whole posture and for each partition (keyed
//! as the page keys its rows: `mirror:NAME:TOPIC/P`, `backup:JOB:TOPIC/P`).

use std::collections::{BTreeMap, VecDeque};

use haven_engine::posture::Posture;
use serde::Serialize;

/// One reading's lags, in seconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// Unix ms.
    pub at: i64,
    /// The worst of everything (the RPO now).
    pub rpo_s: f64,
    pub mirror_s: f64,
    pub backup_s: f64,
    pub database_s: f64,
}

impl Point {
    pub fn of(p: &Posture) -> Point {
        let max = |it: &mut dyn Iterator<Item = f64>| it.fold(0.0, f64::max);
        Point {
            at: p.taken_at,
            rpo_s: p.readiness.rpo_now_s,
            mirror_s: max(&mut p.mirror_partitions().map(|(_, x)| x.lag_seconds)),
            backup_s: max(&mut p
                .backups
                .iter()
                .flat_map(|b| b.partitions.iter().map(|x| x.lag_seconds))),
            database_s: max(&mut p
                .failover
                .iter()
                .flat_map(|f| f.databases.iter().filter_map(|d| d.lag_seconds))),
        }
    }
}

/// The key of each partition in a reading, with its lag in seconds.
pub fn partition_lags(p: &Posture) -> Vec<(String, f64)> {
    let mirrors = p.mirror_partitions().map(|(m, x)| {
        (
            format!("mirror:{m}:{}/{}", x.topic, x.partition),
            x.lag_seconds,
        )
    });
    let backups = p.backups.iter().flat_map(|b| {
        b.partitions.iter().map(move |x| {
            (
                format!("backup:{}:{}/{}", b.job, x.topic, x.partition),
                x.lag_seconds,
            )
        })
    });
    mirrors.chain(backups).collect()
}

/// At most this many partitions get a series (the rest are in the totals only), so a
/// config with very many partitions keeps the history small: about 10 MB at one reading
/// per 5 s.
pub const MAX_SERIES: usize = 2048;

pub struct History {
    points: VecDeque<Point>,
    series: BTreeMap<String, VecDeque<(i64, f32)>>,
    keep_ms: i64,
}

impl History {
    pub fn new(keep_ms: i64) -> History {
        History {
            points: VecDeque::new(),
            series: BTreeMap::new(),
            keep_ms,
        }
    }

    /// Records one reading: its totals and each partition's lag.
    pub fn push(&mut self, p: Point, partitions: Vec<(String, f64)>) {
        let at = p.at;
        let cutoff = at - self.keep_ms;
        self.points.push_back(p);
        while self.points.front().is_some_and(|f| f.at < cutoff) {
            self.points.pop_front();
        }
        for (key, lag) in partitions {
            if self.series.len() >= MAX_SERIES && !self.series.contains_key(&key) {
                continue;
            }
            self.series
                .entry(key)
                .or_default()
                .push_back((at, lag as f32));
        }
        self.series.retain(|_, s| {
            while s.front().is_some_and(|f| f.0 < cutoff) {
                s.pop_front();
            }
            !s.is_empty()
        });
    }

    pub fn points(&self) -> Vec<Point> {
        self.points.iter().cloned().collect()
    }

    /// One partition's lag over the window, as (unix ms, seconds); None when it has no
    /// point in the window.
    pub fn partition(&self, key: &str) -> Option<Vec<(i64, f32)>> {
        self.series.get(key).map(|s| s.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_window() {
        let mut h = History::new(1000);
        for at in [0, 500, 1000, 1600, 2100] {
            let parts = if at < 1000 {
                vec![("gone".to_string(), 1.0), ("kept".to_string(), 2.0)]
            } else {
                vec![("kept".to_string(), at as f64)]
            };
            h.push(point(at), parts);
        }
        let ats: Vec<i64> = h.points().iter().map(|p| p.at).collect();
        assert_eq!(ats, vec![1600, 2100]);
        assert_eq!(
            h.partition("kept"),
            Some(vec![(1600, 1600.0), (2100, 2100.0)])
        );
        assert_eq!(
            h.partition("gone"),
            None,
            "a series without a point in the window goes"
        );
    }

    fn point(at: i64) -> Point {
        Point {
            at,
            rpo_s: at as f64,
            mirror_s: 0.0,
            backup_s: 0.0,
            database_s: 0.0,
        }
    }

    #[test]
    fn series_are_capped() {
        let mut h = History::new(10_000);
        let many = |n: usize| (0..n).map(|i| (format!("p{i}"), 1.0)).collect::<Vec<_>>();
        h.push(point(0), many(MAX_SERIES + 10));
        h.push(point(1), many(MAX_SERIES + 10));
        assert!(h.partition(&format!("p{}", MAX_SERIES - 1)).is_some());
        assert_eq!(h.partition(&format!("p{}", MAX_SERIES + 1)), None);
        assert_eq!(h.partition("p0").map(|s| s.len()), Some(2));
    }
}
