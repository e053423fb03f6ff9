//! What the backup has read but not yet made durable, per partition, and how it becomes
//! the next segment. No I/O here: the Kafka loop feeds it, tests feed it synthetic streams.

use std::collections::BTreeMap;

use haven_format::{GroupCommit, Loss, Record, SegmentBuilder, TopicMeta};

/// One partition being backed up.
#[derive(Debug, Clone)]
pub struct Pending {
    pub generation: u32,
    /// First offset not yet durable: where the next segment's range starts.
    pub durable: i64,
    /// Records read since `durable`, strictly increasing offsets.
    pub records: Vec<Record>,
    /// Position the consumer reported at end-of-partition: every offset below it was read.
    pub eof_position: Option<i64>,
    pub losses: Vec<Loss>,
    /// Snapshot target (`--once`): the high watermark seen at start.
    pub target: Option<i64>,
    pub bytes: usize,
}

impl Pending {
    pub fn new(generation: u32, durable: i64, target: Option<i64>) -> Self {
        Pending {
            generation,
            durable,
            records: Vec::new(),
            eof_position: None,
            losses: Vec::new(),
            target,
            bytes: 0,
        }
    }

    /// End of what has been read: the covered range of the next segment is `durable..end()`.
    pub fn end(&self) -> i64 {
        let after_last = self.records.last().map_or(self.durable, |r| r.offset + 1);
        let after_loss = self.losses.last().map_or(self.durable, |l| l.to);
        after_last
            .max(after_loss)
            .max(self.eof_position.unwrap_or(i64::MIN))
            .max(self.durable)
    }

    /// Whether a snapshot (`--once`) has everything it came for.
    pub fn done(&self) -> bool {
        self.target.is_some_and(|t| self.end() >= t)
    }
}

/// The pending state of every partition of a backup.
#[derive(Debug, Default)]
pub struct Batch {
    pub parts: BTreeMap<(String, i32), Pending>,
    pub topics: Vec<TopicMeta>,
    pub group_commits: Vec<GroupCommit>,
    pub group_samples: Vec<i64>,
    pub bytes: usize,
}

/// What [`Batch::push`] did with a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Kept,
    /// Already read or already durable (a re-delivery after a reconnect): dropped.
    Duplicate,
    /// A partition this backup does not own.
    Unknown,
}

impl Batch {
    pub fn push(&mut self, topic: &str, partition: i32, record: Record) -> Pushed {
        let Some(p) = self.parts.get_mut(&(topic.to_string(), partition)) else {
            return Pushed::Unknown;
        };
        if record.offset < p.end() {
            return Pushed::Duplicate;
        }
        let n = record.payload_len() + 32;
        p.bytes += n;
        self.bytes += n;
        p.records.push(record);
        Pushed::Kept
    }

    pub fn eof(&mut self, topic: &str, partition: i32, position: i64) {
        if let Some(p) = self.parts.get_mut(&(topic.to_string(), partition)) {
            if position >= p.end() {
                p.eof_position = Some(position);
            }
        }
    }

    /// Records `[from, to)` as lost (the source deleted them before Haven read them).
    pub fn loss(&mut self, topic: &str, partition: i32, to: i64, reason: &str) -> Option<Loss> {
        let p = self.parts.get_mut(&(topic.to_string(), partition))?;
        let from = p.end();
        if to <= from {
            return None;
        }
        let l = Loss {
            from,
            to,
            reason: reason.to_string(),
        };
        p.losses.push(l.clone());
        Some(l)
    }

    /// Whether anything would go into a segment.
    pub fn has_progress(&self) -> bool {
        !self.topics.is_empty()
            || !self.group_commits.is_empty()
            || !self.group_samples.is_empty()
            || self.parts.values().any(|p| p.end() > p.durable)
    }

    pub fn all_done(&self) -> bool {
        self.parts.values().all(Pending::done)
    }

    /// Adds everything pending to `segment`. Returns the number of records added.
    pub fn fill(&self, segment: &mut SegmentBuilder) -> Result<u64, haven_format::FormatError> {
        let mut n = 0;
        for t in &self.topics {
            segment.add_topic(t.clone());
        }
        segment.add_group_commits(self.group_commits.iter().cloned());
        for s in &self.group_samples {
            segment.add_group_sample(*s);
        }
        for ((topic, partition), p) in &self.parts {
            let end = p.end();
            if end > p.durable {
                segment.add_partition(
                    topic,
                    p.generation,
                    *partition,
                    p.durable,
                    end,
                    &p.records,
                    p.losses.clone(),
                )?;
                n += p.records.len() as u64;
            }
        }
        Ok(n)
    }

    /// After the segment is durable: everything pending is now durable.
    pub fn committed(&mut self) {
        for p in self.parts.values_mut() {
            p.durable = p.end();
            p.records.clear();
            p.losses.clear();
            p.eof_position = None;
            p.bytes = 0;
        }
        self.topics.clear();
        self.group_commits.clear();
        self.group_samples.clear();
        self.bytes = 0;
    }

    /// Another writer made `[durable, new_durable)` of a partition durable: drop what we
    /// hold of it, so nothing is written twice.
    pub fn advance(&mut self, topic: &str, partition: i32, new_durable: i64) {
        if let Some(p) = self.parts.get_mut(&(topic.to_string(), partition)) {
            if new_durable > p.durable {
                p.records.retain(|r| r.offset >= new_durable);
                p.losses.retain(|l| l.from >= new_durable);
                p.durable = new_durable;
                p.bytes = p.records.iter().map(|r| r.payload_len() + 32).sum();
            }
        }
        self.bytes = self.parts.values().map(|p| p.bytes).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_format::{verify_object, TimestampType};

    fn rec(offset: i64) -> Record {
        Record {
            offset,
            timestamp: 1000 + offset,
            timestamp_type: TimestampType::CreateTime,
            key: Some(format!("k{offset}").into_bytes()),
            value: Some(vec![b'v'; 10]),
            headers: vec![],
        }
    }

    fn segment(b: &Batch) -> haven_format::SegmentIndex {
        let mut s = SegmentBuilder::new(1, 0, "t", None, None);
        b.fill(&mut s).unwrap();
        let (bytes, _, _) = s.finish();
        verify_object(&bytes).unwrap().0
    }

    #[test]
    fn gaps_from_compaction_and_markers_are_covered_not_lost() {
        let mut b = Batch::default();
        b.parts
            .insert(("t".into(), 0), Pending::new(0, 10, Some(20)));
        // offsets 10, 11 compacted away; 15..17 were transaction markers / aborted.
        for o in [12, 13, 14, 18] {
            assert_eq!(b.push("t", 0, rec(o)), Pushed::Kept);
        }
        assert!(!b.all_done());
        // a trailing control record at 19: the consumer's position at EOF says 20.
        b.eof("t", 0, 20);
        assert!(b.all_done());
        let ix = segment(&b);
        let p = &ix.partitions[0];
        assert_eq!((p.start_offset, p.end_offset), (10, 20));
        assert_eq!(p.record_count(), 4);
        assert!(p.losses.is_empty());
    }

    #[test]
    fn duplicates_are_dropped_and_losses_recorded() {
        let mut b = Batch::default();
        b.parts.insert(("t".into(), 1), Pending::new(0, 0, None));
        b.push("t", 1, rec(0));
        assert_eq!(b.push("t", 1, rec(0)), Pushed::Duplicate);
        let l = b.loss("t", 1, 50, "retention").unwrap();
        assert_eq!((l.from, l.to), (1, 50));
        b.push("t", 1, rec(50));
        assert_eq!(b.push("u", 0, rec(1)), Pushed::Unknown);
        let ix = segment(&b);
        assert_eq!(
            (ix.partitions[0].start_offset, ix.partitions[0].end_offset),
            (0, 51)
        );
        assert_eq!(ix.partitions[0].losses.len(), 1);
        b.committed();
        assert_eq!(b.parts[&("t".into(), 1)].durable, 51);
        assert!(!b.has_progress());
    }

    #[test]
    fn advance_drops_what_another_writer_made_durable() {
        let mut b = Batch::default();
        b.parts.insert(("t".into(), 0), Pending::new(0, 0, None));
        for o in 0..10 {
            b.push("t", 0, rec(o));
        }
        b.advance("t", 0, 6);
        let p = &b.parts[&("t".into(), 0)];
        assert_eq!(p.durable, 6);
        assert_eq!(p.records.first().map(|r| r.offset), Some(6));
        assert_eq!(p.end(), 10);
    }
}
