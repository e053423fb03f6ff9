//! How long a partition's oldest record not yet durable has waited, from the high
//! watermarks the backup samples (every [`super::LAG_INTERVAL`]).
//!
//! The record at the durable offset was not yet in the partition at the last sample
//! whose high watermark was at or below that offset: its wait is at most the time since
//! that sample (an upper bound, never an understatement). Keeping the samples since the
//! partition was last durable to its end answers this for any durable offset, so a
//! partition under steady load that the backup keeps up with shows a lag of about one
//! sampling interval, not the time since it was last wholly durable (which under load may
//! never come). The caller narrows it with the timestamp of the oldest record it holds.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

/// Samples kept per partition: beyond this the oldest is kept and the ones after it are
/// thinned, so the bound stays an upper bound.
const MAX_SAMPLES: usize = 1024;

/// Per partition: the (time, high watermark) samples with a high watermark above the
/// durable offset, oldest first (high watermarks only grow, so the queue is sorted), and
/// the time of the last sample at or below it.
#[derive(Debug, Default)]
pub(crate) struct LagClock {
    seen: BTreeMap<(String, i32), Samples>,
}

#[derive(Debug, Default)]
struct Samples {
    below: Option<Instant>,
    /// (first seen, last seen, high watermark).
    above: VecDeque<(Instant, Instant, i64)>,
}

impl LagClock {
    /// Records a sample of `high` at `now`, with `durable` the next offset to make
    /// durable; returns the seconds the oldest non-durable record has waited at most
    /// (0 when everything is durable).
    pub(crate) fn sample(
        &mut self,
        topic: &str,
        partition: i32,
        durable: i64,
        high: i64,
        now: Instant,
    ) -> f64 {
        let s = self.seen.entry((topic.to_string(), partition)).or_default();
        if high <= durable {
            s.above.clear();
            s.below = Some(now);
            return 0.0;
        }
        match s.above.back_mut() {
            Some((_, last, h)) if *h >= high => *last = now,
            _ => s.above.push_back((now, now, high)),
        }
        while let Some(&(_, last, h)) = s.above.front() {
            if h > durable {
                break;
            }
            s.below = Some(last);
            s.above.pop_front();
        }
        if s.above.len() > MAX_SAMPLES {
            s.above.remove(1);
        }
        // Without a sample below (the backup started behind), the first sample above.
        let since = s
            .below
            .or(s.above.front().map(|&(t, _, _)| t))
            .unwrap_or(now);
        now.saturating_duration_since(since).as_secs_f64()
    }

    /// Forgets a partition (given away to another process).
    pub(crate) fn forget(&mut self, topic: &str, partition: i32) {
        self.seen.remove(&(topic.to_string(), partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn steady_load_kept_up_with_shows_about_one_interval() {
        let mut c = LagClock::default();
        let t0 = Instant::now();
        // Every 2 s, 80 more records arrive; the backup has made durable all but the
        // last 20 (never wholly caught up).
        let mut last = 0.0;
        for i in 1..=30i64 {
            let now = t0 + Duration::from_secs(2 * i as u64);
            last = c.sample("t", 0, 80 * i - 20, 80 * i, now);
        }
        assert_eq!(
            last, 2.0,
            "the records waiting arrived since the previous sample"
        );
        // A sample seeing the same records still waiting: they are older by 1 s.
        let now = t0 + Duration::from_secs(61);
        assert_eq!(c.sample("t", 0, 80 * 30 - 20, 80 * 30, now), 3.0);
    }

    #[test]
    fn an_outage_grows_the_lag_and_catching_up_clears_it() {
        let mut c = LagClock::default();
        let t0 = Instant::now();
        assert_eq!(c.sample("t", 1, 100, 100, t0), 0.0);
        for s in 1..=10u64 {
            let lag = c.sample(
                "t",
                1,
                100,
                100 + 10 * s as i64,
                t0 + Duration::from_secs(s),
            );
            assert_eq!(lag, s as f64);
        }
        assert_eq!(
            c.sample("t", 1, 200, 200, t0 + Duration::from_secs(11)),
            0.0
        );
    }

    proptest! {
        /// The lag reported is never below the wait of the oldest non-durable record
        /// (it arrived after the sample before the one that first saw it), and at most
        /// one sampling interval above it.
        #[test]
        fn never_understates_by_more_than_one_interval(
            steps in proptest::collection::vec((0i64..50, 0i64..60), 1..80),
        ) {
            let mut c = LagClock::default();
            let t0 = Instant::now();
            let (mut high, mut durable) = (0i64, 0i64);
            // When each offset arrived (by sample index).
            let mut arrived: Vec<u64> = Vec::new();
            for (i, (add, advance)) in steps.into_iter().enumerate() {
                let i = i as u64 + 1;
                high += add;
                while (arrived.len() as i64) < high {
                    arrived.push(i);
                }
                durable = (durable + advance).min(high);
                let lag = c.sample("t", 0, durable, high, t0 + Duration::from_secs(i));
                if durable == high {
                    prop_assert_eq!(lag, 0.0);
                } else {
                    // It arrived after sample first - 1: its wait is at most i - first + 1.
                    let first = arrived[durable as usize];
                    let at_most = (i - first + 1) as f64;
                    // Records already there at the first sample have no sample before.
                    let bound = if first == 1 { at_most - 1.0 } else { at_most };
                    prop_assert_eq!(lag, bound);
                }
            }
        }
    }
}
