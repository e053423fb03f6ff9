//! `haven repo sync`: a copy of a repository in another store (the other region's), object
//! for object, so that it verifies on its own.
//!
//! Every object is copied create-only under the same key and read back: its SHA-256 must
//! be the source's, and a segment must also verify (trailer digest, index) and extend the
//! copy's chain (the next sequence number, naming the copy's head as its predecessor).
//! The order keeps the copy verifiable after a kill at any point: the descriptor, the
//! audit chain, prune manifests, holds and key rotations, then segments in log order, then the rest. A
//! re-run copies what is missing, so a killed sync resumes where it stopped.
//!
//! Erasure: a subject key the source's `forgotten/` proofs say was destroyed is deleted
//! from the copy at the start of every pass.
//!
//! Residency: a segment or failback capture holding a topic pinned to regions the target
//! is not in is never copied; the sync stops before it (the copy's log stays a prefix),
//! records `repo-sync-refused` in the source's audit chain and says so.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use haven_format::Digest;
use haven_storage::{ObjectInfo, StorageError, Store};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::{pruned, segment_seq, Repository, DESCRIPTOR_KEY, LOG_PREFIX};
use crate::residency::Rules;
use crate::{Error, Result};

/// Where the copy goes and what it may hold.
pub struct SyncTarget<'a> {
    /// The name used in messages and audit entries.
    pub name: &'a str,
    pub store: &'a Store,
    /// The target's declared region (None: no region, refused for any pinned topic).
    pub region: Option<&'a str>,
    pub residency: &'a Rules,
}

/// One pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// Objects on the source not on the target when the pass began, and the age (s) of the
    /// oldest segment among them: the copy's lag.
    pub lag_objects: u64,
    pub lag_seconds: f64,
    pub copied_objects: u64,
    pub copied_bytes: u64,
    pub copied_segments: u64,
    /// The copy's log head after the pass (`seq:digest`).
    pub target_head: Option<String>,
    /// Why the pass stopped before copying everything (a residency rule).
    pub refused: Option<String>,
    /// Subject keys deleted from the copy because the source holds a proof they were
    /// forgotten (`haven forget`).
    pub erased_keys: u64,
}

/// Objects Haven never copies: the create-only probe is per store.
fn copied(key: &str) -> bool {
    !key.starts_with("probe/")
}

/// Copy order: descriptor, audit, prune manifests, holds and key rotations, segments, the
/// rest.
fn rank(key: &str) -> (u8, String) {
    let r = if key == DESCRIPTOR_KEY {
        0
    } else if key.starts_with("audit/") || key.starts_with("audit-heads") {
        1
    } else if key.starts_with(pruned::PRUNE_PREFIX) {
        2
    } else if key.starts_with(crate::retention::holds::HOLDS_PREFIX)
        || key.starts_with(super::keys::KEYS_PREFIX)
        || key.starts_with(crate::erasure::FORGOTTEN_PREFIX)
        || key.starts_with(crate::erasure::SUBJECTS_PREFIX)
    {
        3
    } else if key.starts_with(LOG_PREFIX) {
        4
    } else {
        5
    };
    (r, key.to_string())
}

/// The copy's head: its last stored segment, or a later pruned one it has a manifest for.
async fn target_head(target: &Store) -> Result<Option<(u64, Digest)>> {
    let mut segs: Vec<ObjectInfo> = target
        .list(LOG_PREFIX)
        .await?
        .into_iter()
        .filter(|o| segment_seq(&o.key).is_some())
        .collect();
    segs.sort_by_key(|o| segment_seq(&o.key));
    let Some(last) = segs.last() else {
        return Ok(None);
    };
    let bytes = target.get(&last.key).await?;
    let (ix, d) = haven_format::verify_object(&bytes).map_err(|e| Error::format(&last.key, e))?;
    Ok(Some((ix.seq, d)))
}

/// The topics a segment or failback capture holds records of (None: holds no record data).
fn topics_of(key: &str, bytes: &[u8]) -> Result<Option<BTreeSet<String>>> {
    if segment_seq(key).is_some() {
        let (ix, _) = haven_format::verify_object(bytes).map_err(|e| Error::format(key, e))?;
        return Ok(Some(
            ix.partitions.iter().map(|p| p.topic.clone()).collect(),
        ));
    }
    if key.starts_with("failback/capture-") {
        let c: crate::failback::Capture = serde_json::from_slice(bytes)
            .map_err(|e| Error::Damaged(format!("{key}: not a failback capture: {e}")))?;
        return Ok(Some(
            c.kafka
                .iter()
                .flat_map(|k| k.partitions.iter().map(|p| p.topic.clone()))
                .collect(),
        ));
    }
    Ok(None)
}

/// Every object of a store and its size.
async fn listing(store: &Store) -> Result<BTreeMap<String, u64>> {
    Ok(store
        .list("")
        .await?
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect())
}

/// Copies what the target lacks, in order, each object checked on arrival.
pub async fn sync_once(
    source: &Repository,
    target: &SyncTarget<'_>,
    refused_before: &mut BTreeSet<String>,
) -> Result<SyncReport> {
    let mut report = SyncReport::default();
    let src = source.store();
    let mut on_target = listing(target.store).await?;
    if let Some(_size) = on_target.get(DESCRIPTOR_KEY) {
        let theirs = target.store.get(DESCRIPTOR_KEY).await?;
        let ours = src.get(DESCRIPTOR_KEY).await?;
        if theirs != ours {
            return Err(Error::Input(format!(
                "{} already holds another repository ({DESCRIPTOR_KEY} differs): a copy goes \
                 into an empty location or into a copy of this repository",
                target.name
            )));
        }
    } else if on_target.keys().any(|k| copied(k)) {
        return Err(Error::Input(format!(
            "{} holds objects but no {DESCRIPTOR_KEY}: not a copy of this repository; give \
             an empty location",
            target.name
        )));
    }
    // A subject forgotten on the source is forgotten on the copy too: its key goes before
    // anything is copied. The proof itself is copied below, so a proof the copy holds was
    // applied by an earlier pass and is not read again.
    let proofs = crate::erasure::proofs(src, &|name| on_target.contains_key(name)).await?;
    if !proofs.is_empty() {
        report.erased_keys = crate::erasure::apply_proofs(&proofs, target.store).await?;
        if report.erased_keys > 0 {
            on_target = listing(target.store).await?;
        }
    }
    let mut todo: Vec<ObjectInfo> = Vec::new();
    for o in src.list("").await? {
        if !copied(&o.key) {
            continue;
        }
        match on_target.get(&o.key) {
            None => todo.push(o),
            Some(size) if *size != o.size => {
                return Err(Error::Damaged(format!(
                    "{} holds {} with another size ({size} bytes, the source {}): the copy \
                     differs from the source; run `haven verify` on both",
                    target.name, o.key, o.size
                )))
            }
            Some(_) => {}
        }
    }
    todo.sort_by_key(|o| rank(&o.key));
    report.lag_objects = todo.len() as u64;
    let now = chrono::Utc::now().timestamp_millis();
    if let Some(first) = todo.iter().find(|o| segment_seq(&o.key).is_some()) {
        let (ix, _) = source.read_index(first).await?;
        report.lag_seconds = (now - ix.created_at).max(0) as f64 / 1000.0;
    }
    let mut head = target_head(target.store).await?;
    let recorded = pruned::load(source).await?;
    for o in todo {
        let bytes = src.get(&o.key).await?;
        if let Some(topics) = topics_of(&o.key, &bytes)? {
            let violation = topics
                .iter()
                .find_map(|t| target.residency.check(t, target.region));
            if let Some(v) = violation {
                let why = format!(
                    "{} not copied to {}: refused by {v}; the copy stops before it",
                    o.key, target.name
                );
                if refused_before.insert(o.key.clone()) {
                    crate::recovery::audit::record(
                        source,
                        "repo-sync-refused",
                        &hex::encode(Sha256::digest(&bytes)),
                        serde_json::json!({
                            "object": o.key, "target": target.name,
                            "rule": v.rule, "topic": v.topic, "region": v.region,
                        }),
                    )
                    .await?;
                }
                report.refused = Some(why);
                if segment_seq(&o.key).is_some() {
                    break;
                }
                continue;
            }
        }
        if let Some(seq) = segment_seq(&o.key) {
            let (ix, digest) =
                haven_format::verify_object(&bytes).map_err(|e| Error::format(&o.key, e))?;
            // The predecessor: the copy's head when it is segment seq - 1, else a pruned
            // segment its manifest records (copied first).
            let prev: Option<Digest> = match seq {
                1 => None,
                _ => match head {
                    Some((hs, hd)) if hs + 1 == seq => Some(hd),
                    _ => recorded.get(&(seq - 1)).map(|p| p.digest()).transpose()?,
                },
            };
            let links = ix.seq == seq && ix.prev_digest == prev && (seq == 1 || prev.is_some());
            if !links {
                return Err(Error::Damaged(format!(
                    "{}: does not extend the copy's chain (head {}): the source or the copy is \
                     damaged; run `haven verify` on both",
                    o.key,
                    head.map_or("none".into(), |(s, _)| s.to_string())
                )));
            }
            head = Some((seq, digest));
            report.copied_segments += 1;
        }
        match target.store.put_new(&o.key, bytes.clone()).await {
            Ok(()) => {}
            // Written by a sync that was killed after its put: checked below like any.
            Err(StorageError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let back: Bytes = target.store.get(&o.key).await?;
        if Sha256::digest(&back) != Sha256::digest(&bytes) {
            return Err(Error::Damaged(format!(
                "{} on {}: what was read back differs from the source (SHA-256)",
                o.key, target.name
            )));
        }
        report.copied_objects += 1;
        report.copied_bytes += bytes.len() as u64;
    }
    report.target_head = head.map(|(s, d)| format!("{s}:{}", hex::encode(d)));
    Ok(report)
}
