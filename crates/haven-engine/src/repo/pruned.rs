//! Segments deleted by retention (`haven prune`), as the log still knows them: before a
//! segment is deleted, a prune manifest (`prune/{ms:013}-{first seq:020}.json`, create-only,
//! its SHA-256 in an audit entry `prune`) records its sequence number, digest and the
//! offset ranges it held. The catalog takes a pruned segment's place in the hash chain from
//! the manifest, so that the segment after it still chains (its predecessor digest is the
//! recorded one) and the ranges after it still abut: `verify` stays meaningful for what
//! remains, and a segment deleted without a manifest is still damage.

use std::collections::BTreeMap;

use haven_format::Digest;
use haven_storage::ObjectInfo;
use serde::{Deserialize, Serialize};

use super::{segment_seq, Repository};
use crate::{Error, Result};

/// Where prune manifests live.
pub const PRUNE_PREFIX: &str = "prune/";

/// One `haven prune`: the segments it deleted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PruneManifest {
    /// Always `haven-prune`.
    pub format: String,
    pub version: u32,
    /// When it was decided (unix ms).
    pub at: i64,
    /// The policy that made each segment due, in words.
    pub policy: String,
    /// The holds in force then (names), none of which covers a pruned segment.
    pub holds: Vec<String>,
    pub segments: Vec<PrunedSegment>,
}

/// A deleted segment: its place in the chain and what it held.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PrunedSegment {
    pub seq: u64,
    /// The segment's digest (hex): its identity in the hash chain.
    pub sha256: String,
    pub created_at: i64,
    pub bytes: u64,
    pub ranges: Vec<PrunedRange>,
}

/// One partition's range in a deleted segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PrunedRange {
    pub topic: String,
    pub generation: u32,
    pub partition: i32,
    /// `[from, to)`
    pub from: i64,
    pub to: i64,
    pub records: u64,
    pub min_timestamp: Option<i64>,
    pub max_timestamp: Option<i64>,
}

impl PrunedSegment {
    /// The recorded digest, decoded.
    pub fn digest(&self) -> Result<Digest> {
        let v = hex::decode(&self.sha256).ok();
        v.and_then(|v| <[u8; 32]>::try_from(v).ok()).ok_or_else(|| {
            Error::Damaged(format!(
                "a prune manifest names segment {} with a digest that is not 64 hex digits",
                self.seq
            ))
        })
    }
}

/// The key of a manifest written at `at` whose first segment is `first`.
pub fn manifest_key(at: i64, first: u64) -> String {
    format!("{PRUNE_PREFIX}{at:013}-{first:020}.json")
}

/// Whether `key` is a name Haven gives a prune manifest.
pub fn is_manifest_key(key: &str) -> bool {
    key.strip_prefix(PRUNE_PREFIX)
        .and_then(|r| r.strip_suffix(".json"))
        .and_then(|r| r.split_once('-'))
        .is_some_and(|(a, b)| {
            a.len() == 13
                && b.len() == 20
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        })
}

/// Parses a manifest, naming the object when it is not one.
pub fn parse_manifest(key: &str, raw: &[u8]) -> Result<PruneManifest> {
    let m: PruneManifest = serde_json::from_slice(raw)
        .map_err(|e| Error::Damaged(format!("{key}: not a prune manifest: {e}")))?;
    if m.format != "haven-prune" || m.version != 1 {
        return Err(Error::Damaged(format!(
            "{key}: not a prune manifest of version 1 (format {:?}, version {})",
            m.format, m.version
        )));
    }
    Ok(m)
}

/// Every pruned segment the manifests record, by sequence number.
pub async fn load(repo: &Repository) -> Result<BTreeMap<u64, PrunedSegment>> {
    let mut out = BTreeMap::new();
    for obj in repo.store().list(PRUNE_PREFIX).await? {
        if !is_manifest_key(&obj.key) {
            continue;
        }
        let raw = repo.store().get(&obj.key).await?;
        for s in parse_manifest(&obj.key, &raw)?.segments {
            out.insert(s.seq, s);
        }
    }
    Ok(out)
}

/// One place of the log, in order: a segment still stored, or one pruned.
pub enum Place<'a> {
    Stored(ObjectInfo),
    Pruned(&'a PrunedSegment),
}

/// The log in sequence order: stored segments, and pruned ones where no stored segment
/// holds their place (a prune that stopped after its manifest leaves both: the stored
/// one is read).
pub fn places(stored: Vec<ObjectInfo>, pruned: &BTreeMap<u64, PrunedSegment>) -> Vec<Place<'_>> {
    let mut out: Vec<(u64, Place<'_>)> = Vec::with_capacity(stored.len() + pruned.len());
    let mut have = std::collections::BTreeSet::new();
    for o in stored {
        let seq = segment_seq(&o.key).unwrap_or(0);
        have.insert(seq);
        out.push((seq, Place::Stored(o)));
    }
    for (seq, p) in pruned {
        if !have.contains(seq) {
            out.push((*seq, Place::Pruned(p)));
        }
    }
    out.sort_by_key(|(s, _)| *s);
    out.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_keys_are_recognised_exactly() {
        let k = manifest_key(1_795_000_000_000, 7);
        assert!(is_manifest_key(&k), "{k}");
        assert!(!is_manifest_key("prune/1.json"));
        assert!(!is_manifest_key("prune/1795000000000-7.json"));
        assert!(!is_manifest_key("log/00000000000000000001.seg"));
    }

    #[test]
    fn a_manifest_of_another_kind_is_refused_by_name() {
        let e = parse_manifest("prune/x.json", b"{\"format\":\"other\"}").unwrap_err();
        assert!(e.to_string().contains("prune/x.json"), "{e}");
    }
}
