//! A small in-memory history of the posture's lag, for the dashboard's chart: one point
//! per reading, the last hour kept.

use std::collections::VecDeque;

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

pub struct History {
    points: VecDeque<Point>,
    keep_ms: i64,
}

impl History {
    pub fn new(keep_ms: i64) -> History {
        History {
            points: VecDeque::new(),
            keep_ms,
        }
    }

    pub fn push(&mut self, p: Point) {
        let cutoff = p.at - self.keep_ms;
        self.points.push_back(p);
        while self.points.front().is_some_and(|f| f.at < cutoff) {
            self.points.pop_front();
        }
    }

    pub fn points(&self) -> Vec<Point> {
        self.points.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_window() {
        let mut h = History::new(1000);
        for at in [0, 500, 1000, 1600, 2100] {
            h.push(Point {
                at,
                rpo_s: at as f64,
                mirror_s: 0.0,
                backup_s: 0.0,
                database_s: 0.0,
            });
        }
        let ats: Vec<i64> = h.points().iter().map(|p| p.at).collect();
        assert_eq!(ats, vec![1600, 2100]);
    }
}
