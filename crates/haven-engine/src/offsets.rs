//! Offset translation: the one module that maps offsets of one log onto another, for
//! restore (and, later, mirroring and recovery).
//!
//! A map is a list of ranges: `len` consecutive *selected* source records starting at
//! `source` landed at consecutive target offsets starting at `target`. Source offsets
//! inside a range that were not selected (gaps from compaction or markers) have no target
//! of their own; they translate to the target of the next selected record, which is where a
//! consumer that had reached them must resume.

use serde::{Deserialize, Serialize};

/// `len` selected records: source offsets `sources` (increasing, maybe with gaps) mapped to
/// target offsets `target..target+len`. Stored compactly as runs of consecutive offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// First source offset of the run.
    pub source: i64,
    /// Its target offset.
    pub target: i64,
    /// Number of consecutive source offsets (and target offsets) in the run.
    pub len: i64,
}

/// The offset map of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetMap {
    pub runs: Vec<Run>,
}

impl OffsetMap {
    /// Records that source offset `source` landed at target offset `target` (calls must come
    /// in increasing source order).
    pub fn push(&mut self, source: i64, target: i64) {
        if let Some(last) = self.runs.last_mut() {
            if last.source + last.len == source && last.target + last.len == target {
                last.len += 1;
                return;
            }
        }
        self.runs.push(Run {
            source,
            target,
            len: 1,
        });
    }

    /// Where a consumer positioned at source offset `source` (the next record it would
    /// read) must resume on the target. None when `source` is past everything mapped: the
    /// caller decides (typically the target's end).
    pub fn translate(&self, source: i64) -> Option<i64> {
        // First run whose end is after `source`.
        let i = self.runs.partition_point(|r| r.source + r.len <= source);
        let r = self.runs.get(i)?;
        if source >= r.source {
            Some(r.target + (source - r.source))
        } else {
            // In a gap before run i: resume at its first record.
            Some(r.target)
        }
    }

    /// Translates a consumer group's committed source offset `committed` for a log that is
    /// still being written (mirroring): every source record before `mirrored_to` is on the
    /// target. None while the group is ahead of the mirror (translating then would skip
    /// records) or nothing is mapped yet; otherwise the target offset of the first record
    /// the group has not processed, or the target position right after the last mapped
    /// record when the group has processed everything mirrored.
    pub fn translate_committed(&self, committed: i64, mirrored_to: i64) -> Option<i64> {
        if committed > mirrored_to {
            return None;
        }
        self.translate(committed)
            .or_else(|| self.runs.last().map(|r| r.target + r.len))
    }

    pub fn records(&self) -> i64 {
        self.runs.iter().map(|r| r.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_compact_and_translate_exactly() {
        let mut m = OffsetMap::default();
        // Source offsets 10..15, then a gap (15..20 compacted away), then 20..22.
        for (i, s) in (10..15).chain(20..22).enumerate() {
            m.push(s, 100 + i as i64);
        }
        assert_eq!(m.runs.len(), 2);
        assert_eq!(m.records(), 7);
        assert_eq!(m.translate(10), Some(100));
        assert_eq!(m.translate(14), Some(104));
        assert_eq!(
            m.translate(15),
            Some(105),
            "a gap resumes at the next record"
        );
        assert_eq!(m.translate(19), Some(105));
        assert_eq!(m.translate(21), Some(106));
        assert_eq!(m.translate(22), None);
        assert_eq!(m.translate(0), Some(100));
    }

    #[test]
    fn committed_offsets_translate_only_behind_the_mirror() {
        let mut m = OffsetMap::default();
        assert_eq!(m.translate_committed(0, 0), None, "nothing mapped yet");
        for (i, s) in (10..15).chain(20..22).enumerate() {
            m.push(s, 100 + i as i64);
        }
        // Mirrored everything before source offset 22.
        assert_eq!(m.translate_committed(12, 22), Some(102));
        assert_eq!(m.translate_committed(17, 22), Some(105));
        assert_eq!(m.translate_committed(22, 22), Some(107), "all processed");
        assert_eq!(
            m.translate_committed(23, 22),
            None,
            "group ahead of the mirror"
        );
    }
}
