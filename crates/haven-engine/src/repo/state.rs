//! The catalog: what the log holds, built by reading every segment's index in order.

use std::collections::BTreeMap;

use haven_format::{ChunkMeta, Digest, GroupCommit, Loss, SegmentIndex, TopicMeta, WrappedKey};

use super::pruned::PrunedSegment;

/// (topic, generation, partition)
pub type PartitionKey = (String, u32, i32);

/// Where one chunk lives, with what is needed to decode it.
#[derive(Debug, Clone)]
pub struct ChunkRef {
    pub key: String,
    pub seq: u64,
    pub meta: ChunkMeta,
    pub wrapped_key: Option<WrappedKey>,
}

/// Everything the log says about one partition.
#[derive(Debug, Clone, Default)]
pub struct PartitionState {
    /// Start of the first covered range.
    pub first_offset: i64,
    /// End of the last covered range: the next offset a backup must read.
    pub next_offset: i64,
    pub records: u64,
    pub stored_bytes: u64,
    pub min_timestamp: Option<i64>,
    pub max_timestamp: Option<i64>,
    pub losses: Vec<Loss>,
    /// Places where a segment's range does not start where the previous one ended:
    /// (segment key, expected start, actual start).
    pub discontinuities: Vec<(String, i64, i64)>,
    pub chunks: Vec<ChunkRef>,
    /// Ranges whose segments retention deleted (`haven prune`): `(from, to, records)`,
    /// `[from, to)`. Their records are not counted in `records`.
    pub pruned: Vec<(i64, i64, u64)>,
}

impl PartitionState {
    /// Offsets in the covered ranges that hold no record and are not losses: legitimate
    /// gaps left by compaction, transaction markers or aborted records.
    pub fn gaps(&self) -> u64 {
        let covered = (self.next_offset - self.first_offset).max(0) as u64;
        let lost: u64 = self
            .losses
            .iter()
            .map(|l| (l.to - l.from).max(0) as u64)
            .sum();
        let pruned: u64 = self
            .pruned
            .iter()
            .map(|(from, to, _)| (to - from).max(0) as u64)
            .sum();
        covered
            .saturating_sub(self.records)
            .saturating_sub(lost)
            .saturating_sub(pruned)
    }

    /// Records retention deleted from this partition.
    pub fn pruned_records(&self) -> u64 {
        self.pruned.iter().map(|(_, _, n)| n).sum()
    }
}

/// The latest known state of a topic.
#[derive(Debug, Clone, Default)]
pub struct TopicState {
    pub generation: u32,
    pub meta: Option<TopicMeta>,
}

#[derive(Debug, Clone, Default)]
pub struct RepoState {
    /// Last segment of the log: (sequence, digest).
    pub head: Option<(u64, Digest)>,
    pub segments: u64,
    /// When the last segment was written (ms): the backup's last durable flush.
    pub last_segment_at: Option<i64>,
    pub partitions: BTreeMap<PartitionKey, PartitionState>,
    pub topics: BTreeMap<String, TopicState>,
    /// Latest committed offset per (group, topic, partition).
    pub group_offsets: BTreeMap<(String, String, i32), i64>,
    /// Every observed commit change, in log order.
    pub group_commits: Vec<GroupCommit>,
    /// Instants of full group samples, in log order.
    pub group_samples: Vec<i64>,
    /// Problems of the hash chain: (segment key, what is wrong).
    pub chain_breaks: Vec<(String, String)>,
    /// Built by a reader that skips damage (`--skip-damaged`): what it left out.
    pub salvage: Option<Salvage>,
    /// Segments retention deleted, known from prune manifests (their places in the chain).
    pub pruned_segments: u64,
}

/// What a reader that skips damage left out, so that it can say exactly what is missing.
#[derive(Debug, Clone, Default)]
pub struct Salvage {
    /// Segments that could not be read at all: (key, why).
    pub skipped_objects: Vec<(String, String)>,
    /// Ranges a segment held again (offsets going backwards): (segment key, partition,
    /// from, to). They were left out so that no record is read twice.
    pub skipped_ranges: Vec<(String, PartitionKey, i64, i64)>,
}

/// One thing wrong with the log, as `verify` and every reader report it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Damage {
    /// The damaged object (or the first object after the damage).
    pub object: String,
    pub what: String,
}

/// Offsets of a partition that no intact segment holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MissingRange {
    pub topic: String,
    pub generation: u32,
    pub partition: i32,
    /// `[from, to)`
    pub from: i64,
    pub to: i64,
}

impl RepoState {
    pub fn apply(&mut self, key: &str, ix: &SegmentIndex, digest: Digest) {
        self.last_segment_at = Some(
            self.last_segment_at
                .map_or(ix.created_at, |t| t.max(ix.created_at)),
        );
        self.link(key, ix.seq, ix.prev_digest, digest);
        self.segments += 1;
        self.apply_ranges(key, ix);
    }

    /// Takes a pruned segment's place in the chain and its ranges from its manifest
    /// ([`super::pruned`]): the next segment chains to the recorded digest and its ranges
    /// abut the pruned ones, which hold no chunk.
    pub fn apply_pruned(&mut self, seg: &PrunedSegment) -> crate::Result<()> {
        let key = super::segment_key(seg.seq);
        let digest = seg.digest()?;
        // A pruned segment's own link was checked before it was deleted: only its place
        // and digest are known now.
        let prev = self.head.map(|(_, d)| d);
        self.link(&key, seg.seq, prev, digest);
        self.pruned_segments += 1;
        self.last_segment_at = Some(
            self.last_segment_at
                .map_or(seg.created_at, |t| t.max(seg.created_at)),
        );
        for r in &seg.ranges {
            let k = (r.topic.clone(), r.generation, r.partition);
            let st = self.partitions.entry(k).or_insert_with(|| PartitionState {
                first_offset: r.from,
                next_offset: r.from,
                ..Default::default()
            });
            if st.next_offset != r.from {
                st.discontinuities
                    .push((key.clone(), st.next_offset, r.from));
            }
            st.next_offset = r.to;
            st.pruned.push((r.from, r.to, r.records));
            let t = self.topics.entry(r.topic.clone()).or_default();
            t.generation = t.generation.max(r.generation);
        }
        Ok(())
    }

    /// Checks that segment `seq` (naming `prev` as its predecessor) follows the head, and
    /// makes it the head.
    fn link(&mut self, key: &str, seq: u64, prev: Option<Digest>, digest: Digest) {
        match self.head {
            Some((head, d)) => {
                if seq != head + 1 {
                    self.chain_breaks.push((
                        key.into(),
                        format!(
                            "follows segment {head}: segments {}..{} are missing",
                            head + 1,
                            seq
                        ),
                    ));
                } else if prev != Some(d) {
                    self.chain_breaks.push((
                        key.into(),
                        format!("names a predecessor digest that is not segment {head}'s: a segment was replaced"),
                    ));
                }
            }
            None => {
                if seq != 1 || prev.is_some() {
                    self.chain_breaks.push((
                        key.into(),
                        format!("the log starts at segment {seq} instead of 1"),
                    ));
                }
            }
        }
        self.head = Some((seq, digest));
    }

    fn apply_ranges(&mut self, key: &str, ix: &SegmentIndex) {
        for p in &ix.partitions {
            let k = (p.topic.clone(), p.generation, p.partition);
            let st = self.partitions.entry(k).or_insert_with(|| PartitionState {
                first_offset: p.start_offset,
                next_offset: p.start_offset,
                ..Default::default()
            });
            if st.next_offset != p.start_offset {
                st.discontinuities
                    .push((key.into(), st.next_offset, p.start_offset));
                if p.start_offset < st.next_offset {
                    if let Some(s) = self.salvage.as_mut() {
                        // Offsets going backwards: these records were read already.
                        s.skipped_ranges.push((
                            key.into(),
                            (p.topic.clone(), p.generation, p.partition),
                            p.start_offset,
                            p.end_offset,
                        ));
                        continue;
                    }
                }
            }
            st.next_offset = p.end_offset;
            for c in &p.chunks {
                st.records += c.record_count;
                st.stored_bytes += c.byte_len;
                st.min_timestamp = Some(
                    st.min_timestamp
                        .map_or(c.min_timestamp, |m| m.min(c.min_timestamp)),
                );
                st.max_timestamp = Some(
                    st.max_timestamp
                        .map_or(c.max_timestamp, |m| m.max(c.max_timestamp)),
                );
                st.chunks.push(ChunkRef {
                    key: key.into(),
                    seq: ix.seq,
                    meta: c.clone(),
                    wrapped_key: ix.wrapped_key.clone(),
                });
            }
            st.losses.extend(p.losses.iter().cloned());
            let t = self.topics.entry(p.topic.clone()).or_default();
            t.generation = t.generation.max(p.generation);
        }
        for t in &ix.topics {
            let ts = self.topics.entry(t.topic.clone()).or_default();
            ts.generation = ts.generation.max(t.generation);
            ts.meta = Some(t.clone());
        }
        for g in &ix.group_commits {
            self.group_offsets
                .insert((g.group.clone(), g.topic.clone(), g.partition), g.offset);
            self.group_commits.push(g.clone());
        }
        self.group_samples.extend(ix.group_samples.iter().copied());
    }

    /// Everything wrong with the log: broken hash-chain links, partitions whose next range
    /// does not start where the previous one ended, and (when salvaging) objects skipped.
    /// The continuity checks `verify` and every reader apply.
    pub fn damage(&self) -> Vec<Damage> {
        let mut out: Vec<Damage> = Vec::new();
        if let Some(s) = &self.salvage {
            for (key, why) in &s.skipped_objects {
                out.push(Damage {
                    object: key.clone(),
                    what: format!("skipped: {why}"),
                });
            }
        }
        for (key, what) in &self.chain_breaks {
            out.push(Damage {
                object: key.clone(),
                what: format!("hash chain broken: {what}"),
            });
        }
        for ((t, g, p), ps) in &self.partitions {
            for (key, expected, found) in &ps.discontinuities {
                let what = if found > expected {
                    format!("{t}/{p} (generation {g}): range starts at offset {found}, the previous one ended at {expected}: offsets {expected}..{found} are missing")
                } else {
                    format!("{t}/{p} (generation {g}): range starts at offset {found}, the previous one ended at {expected}: offsets {found}..{expected} are held twice")
                };
                out.push(Damage {
                    object: key.clone(),
                    what,
                });
            }
        }
        out
    }

    /// Offset ranges that no intact segment holds (a deleted or unreadable segment).
    pub fn missing_ranges(&self) -> Vec<MissingRange> {
        let mut out = Vec::new();
        for ((t, g, p), ps) in &self.partitions {
            for (_, expected, found) in &ps.discontinuities {
                if found > expected {
                    out.push(MissingRange {
                        topic: t.clone(),
                        generation: *g,
                        partition: *p,
                        from: *expected,
                        to: *found,
                    });
                }
            }
        }
        out
    }

    /// Refuses a damaged log, unless it was loaded to salvage what is intact (then the
    /// reader has already been told what is missing).
    pub fn ensure_intact(&self) -> crate::Result<()> {
        if self.salvage.is_some() {
            return Ok(());
        }
        let damage = self.damage();
        match damage.first() {
            None => Ok(()),
            Some(d) => Err(crate::Error::Damaged(format!(
                "{}: {}{}; read what is intact with --skip-damaged",
                d.object,
                d.what,
                if damage.len() > 1 {
                    format!(" (and {} more problems)", damage.len() - 1)
                } else {
                    String::new()
                }
            ))),
        }
    }

    /// The state of the latest generation of `topic`'s `partition`.
    pub fn latest(&self, topic: &str, partition: i32) -> Option<(u32, &PartitionState)> {
        let generation = self.topics.get(topic)?.generation;
        self.partitions
            .get(&(topic.to_string(), generation, partition))
            .map(|s| (generation, s))
    }
}
