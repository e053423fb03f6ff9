//! What the backup has read but not yet made durable, per partition, and how it becomes
//! the next segment. No I/O here: the Kafka loop feeds it, tests feed it synthetic streams.
//! Records are encoded into chunk bodies as they arrive (one copy, no allocation per
//! record), so buffered memory is close to the bytes buffered.

use std::collections::BTreeMap;

use haven_format::{
    ChunkEncoder, EncodedChunk, FormatError, GroupCommit, Loss, RecordRef, SegmentBuilder,
    TopicMeta,
};

/// Uncompressed size at which a chunk is closed.
pub const CHUNK_TARGET: usize = 1024 * 1024;

/// One partition being backed up.
#[derive(Debug)]
pub struct Pending {
    pub generation: u32,
    /// First offset not yet durable: where the next segment's range starts.
    pub durable: i64,
    /// Records read since `durable`, in closed chunks then the open one.
    pub chunks: Vec<EncodedChunk>,
    pub current: ChunkEncoder,
    /// Position the consumer reported at end-of-partition: every offset below it was read.
    pub eof_position: Option<i64>,
    pub losses: Vec<Loss>,
    /// Snapshot target (`--once`): the high watermark seen at start.
    pub target: Option<i64>,
    pub bytes: usize,
    /// Smallest timestamp of the records held.
    pub oldest_timestamp: Option<i64>,
}

impl Pending {
    pub fn new(generation: u32, durable: i64, target: Option<i64>) -> Self {
        Pending {
            generation,
            durable,
            chunks: Vec::new(),
            current: ChunkEncoder::new(),
            eof_position: None,
            losses: Vec::new(),
            target,
            bytes: 0,
            oldest_timestamp: None,
        }
    }

    fn last_offset(&self) -> Option<i64> {
        self.current
            .last_offset()
            .or_else(|| self.chunks.last().map(|c| c.last_offset))
    }

    /// Whether records are held.
    pub fn has_records(&self) -> bool {
        !self.current.is_empty() || !self.chunks.is_empty()
    }

    /// Number of records held.
    pub fn record_count(&self) -> u64 {
        self.chunks.iter().map(|c| c.record_count).sum::<u64>() + self.current.count()
    }

    /// End of what has been read: the covered range of the next segment is `durable..end()`.
    pub fn end(&self) -> i64 {
        let after_last = self.last_offset().map_or(self.durable, |o| o + 1);
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

    fn seal(&mut self) {
        let enc = std::mem::take(&mut self.current);
        self.chunks.extend(enc.finish());
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.current = ChunkEncoder::new();
        self.losses.clear();
        self.eof_position = None;
        self.bytes = 0;
        self.oldest_timestamp = None;
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
    pub fn push(
        &mut self,
        topic: &str,
        partition: i32,
        record: &RecordRef<'_>,
    ) -> Result<Pushed, FormatError> {
        let Some(p) = self.parts.get_mut(&(topic.to_string(), partition)) else {
            return Ok(Pushed::Unknown);
        };
        if record.offset < p.end() {
            return Ok(Pushed::Duplicate);
        }
        // Close the open chunk before it would outgrow the target, so its buffer (reserved
        // once at the target size) never reallocates.
        if !p.current.is_empty()
            && p.current.len() + ChunkEncoder::encoded_len(record) > CHUNK_TARGET
        {
            p.seal();
        }
        if p.current.is_empty() {
            p.current = ChunkEncoder::with_capacity(CHUNK_TARGET);
        }
        let before = p.current.len();
        p.current.push(record)?;
        let n = p.current.len() - before;
        p.bytes += n;
        self.bytes += n;
        p.oldest_timestamp = Some(
            p.oldest_timestamp
                .map_or(record.timestamp, |t| t.min(record.timestamp)),
        );
        if p.current.len() >= CHUNK_TARGET {
            p.seal();
        }
        Ok(Pushed::Kept)
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
    pub fn fill(&mut self, segment: &mut SegmentBuilder) -> Result<u64, FormatError> {
        let mut n = 0;
        for t in &self.topics {
            segment.add_topic(t.clone());
        }
        segment.add_group_commits(self.group_commits.iter().cloned());
        for s in &self.group_samples {
            segment.add_group_sample(*s);
        }
        for ((topic, partition), p) in self.parts.iter_mut() {
            p.seal();
            let end = p.end();
            if end > p.durable {
                segment.add_encoded_partition(
                    topic,
                    p.generation,
                    *partition,
                    p.durable,
                    end,
                    &p.chunks,
                    p.losses.clone(),
                )?;
                n += p.record_count();
            }
        }
        Ok(n)
    }

    /// After the segment is durable: everything pending is now durable.
    pub fn committed(&mut self) {
        for p in self.parts.values_mut() {
            p.durable = p.end();
            p.clear();
        }
        self.topics.clear();
        self.group_commits.clear();
        self.group_samples.clear();
        self.bytes = 0;
    }

    /// Another writer made `[durable, new_durable)` of a partition durable: drop what we
    /// hold of it, so nothing is written twice.
    pub fn advance(
        &mut self,
        topic: &str,
        partition: i32,
        new_durable: i64,
    ) -> Result<(), FormatError> {
        if let Some(p) = self.parts.get_mut(&(topic.to_string(), partition)) {
            if new_durable > p.durable {
                p.seal();
                let mut kept = Vec::new();
                for c in p.chunks.drain(..) {
                    if c.first_offset >= new_durable {
                        kept.push(c);
                    } else if c.last_offset >= new_durable {
                        kept.extend(c.from_offset(new_durable)?);
                    }
                }
                p.chunks = kept;
                p.losses.retain(|l| l.from >= new_durable);
                if p.eof_position.is_some_and(|e| e <= new_durable) {
                    p.eof_position = None;
                }
                p.durable = new_durable;
                p.bytes = p.chunks.iter().map(|c| c.body().len()).sum();
                p.oldest_timestamp = p.chunks.iter().map(|c| c.min_timestamp).min();
            }
        }
        self.bytes = self.parts.values().map(|p| p.bytes).sum();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_format::{verify_object, Record, TimestampType};

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

    fn segment(b: &mut Batch) -> haven_format::SegmentIndex {
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
            assert_eq!(b.push("t", 0, &rec(o).as_ref()).unwrap(), Pushed::Kept);
        }
        assert!(!b.all_done());
        // a trailing control record at 19: the consumer's position at EOF says 20.
        b.eof("t", 0, 20);
        assert!(b.all_done());
        let ix = segment(&mut b);
        let p = &ix.partitions[0];
        assert_eq!((p.start_offset, p.end_offset), (10, 20));
        assert_eq!(p.record_count(), 4);
        assert!(p.losses.is_empty());
    }

    #[test]
    fn duplicates_are_dropped_and_losses_recorded() {
        let mut b = Batch::default();
        b.parts.insert(("t".into(), 1), Pending::new(0, 0, None));
        b.push("t", 1, &rec(0).as_ref()).unwrap();
        assert_eq!(b.push("t", 1, &rec(0).as_ref()).unwrap(), Pushed::Duplicate);
        let l = b.loss("t", 1, 50, "retention").unwrap();
        assert_eq!((l.from, l.to), (1, 50));
        b.push("t", 1, &rec(50).as_ref()).unwrap();
        assert_eq!(b.push("u", 0, &rec(1).as_ref()).unwrap(), Pushed::Unknown);
        let ix = segment(&mut b);
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
            b.push("t", 0, &rec(o).as_ref()).unwrap();
        }
        b.advance("t", 0, 6).unwrap();
        let p = &b.parts[&("t".into(), 0)];
        assert_eq!(p.durable, 6);
        assert_eq!(p.chunks.first().map(|c| c.first_offset), Some(6));
        assert_eq!(p.record_count(), 4);
        assert_eq!(p.end(), 10);
        let ix = segment(&mut b);
        assert_eq!(
            (ix.partitions[0].start_offset, ix.partitions[0].end_offset),
            (6, 10)
        );
        assert_eq!(ix.partitions[0].record_count(), 4);
    }
}
