//! `haven verify`: every checksum, the hash chain and offset continuity of the log, stray
//! objects among the segments, every record object beside the log (`audit/`,
//! `audit-heads/`, `restores/`, `replays/`, `drills/`, `failback/`, `prune/`, `holds/`,
//! `keys/`, `subjects/`, `forgotten/`), the audit chain, each prune manifest, key rotation
//! and forget proof against its audit entry, and that every forgotten key is gone.

use serde::Serialize;

use crate::repo::{RepoState, Repository};
use crate::{Error, Result};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The damaged object (or partition).
    pub object: String,
    pub what: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub segments: u64,
    pub bytes: u64,
    pub chunks_decoded: u64,
    pub records_decoded: u64,
    /// Objects under `audit/`, `restores/`, `replays/` and `drills/` read and parsed.
    pub records_objects: u64,
    /// Segments retention deleted, each recorded in a prune manifest.
    pub pruned_segments: u64,
    pub head: Option<String>,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads every byte of every segment. `deep` also decrypts and decompresses every chunk.
pub async fn verify(repo: &Repository, deep: bool) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut state = RepoState::default();
    let data_key_needed = deep && repo.descriptor.key_id.is_some() && repo.keys().is_empty();
    if data_key_needed {
        return Err(Error::Key(
            "--deep on an encrypted repository needs its key".into(),
        ));
    }
    for obj in repo.store().list(crate::repo::LOG_PREFIX).await? {
        if crate::repo::segment_seq(&obj.key).is_none() {
            report.problems.push(Problem {
                object: obj.key.clone(),
                what: "a stray object among the segments (not a segment name Haven writes): \
                       it is not read; find out who put it there"
                    .into(),
            });
        }
    }
    let pruned = match crate::repo::pruned::load(repo).await {
        Ok(p) => p,
        Err(Error::Damaged(what)) => {
            report.problems.push(Problem {
                object: crate::repo::pruned::PRUNE_PREFIX.into(),
                what,
            });
            Default::default()
        }
        Err(e) => return Err(e),
    };
    for place in crate::repo::pruned::places(repo.segments().await?, &pruned) {
        let obj = match place {
            crate::repo::pruned::Place::Stored(obj) => obj,
            crate::repo::pruned::Place::Pruned(p) => {
                report.pruned_segments += 1;
                if let Err(e) = state.apply_pruned(p) {
                    report.problems.push(Problem {
                        object: crate::repo::segment_key(p.seq),
                        what: e.to_string(),
                    });
                }
                continue;
            }
        };
        report.segments += 1;
        report.bytes += obj.size;
        let (bytes, ix, digest) = match repo.read_segment(&obj.key).await {
            Ok(x) => x,
            Err(Error::Format { key, source }) => {
                report.problems.push(Problem {
                    object: key,
                    what: source.to_string(),
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        if crate::repo::segment_seq(&obj.key) != Some(ix.seq) {
            report.problems.push(Problem {
                object: obj.key.clone(),
                what: format!(
                    "holds segment {} under another name: objects were swapped or copied",
                    ix.seq
                ),
            });
            continue;
        }
        state.apply(&obj.key, &ix, digest);
        if deep {
            let dk = match ix
                .wrapped_key
                .as_ref()
                .map(|w| repo.data_key(ix.seq, w, &obj.key))
                .transpose()
            {
                Ok(k) => k,
                Err(e) => {
                    report.problems.push(Problem {
                        object: obj.key.clone(),
                        what: e.to_string(),
                    });
                    continue;
                }
            };
            for p in &ix.partitions {
                for c in &p.chunks {
                    let s = &bytes[c.byte_offset as usize..(c.byte_offset + c.byte_len) as usize];
                    let encrypted = ix.wrapped_key.is_some();
                    match haven_format::visit_stored_chunk(
                        ix.seq,
                        encrypted,
                        c,
                        s,
                        dk.as_ref(),
                        |_| Ok(()),
                    ) {
                        Ok(n) => {
                            report.chunks_decoded += 1;
                            report.records_decoded += n;
                        }
                        Err(e) => report.problems.push(Problem {
                            object: obj.key.clone(),
                            what: format!("{}/{} chunk {}: {e}", p.topic, p.partition, c.ordinal),
                        }),
                    }
                }
            }
        }
    }
    for d in state.damage() {
        report.problems.push(Problem {
            object: d.object,
            what: d.what,
        });
    }
    verify_records(repo, &mut report).await?;
    report.head = state.head.map(|(s, d)| format!("{s}:{}", hex::encode(d)));
    Ok(report)
}

/// Reads and parses every object beside the log: audit entries, restore plans and offset
/// maps, replay progress. `haven audit`, `offsets translate` and `replay --resume` depend on
/// them, so a damaged one is damage to the repository.
async fn verify_records(repo: &Repository, report: &mut VerifyReport) -> Result<()> {
    for prefix in [
        "audit/",
        "audit-heads/",
        "audit-heads-of/",
        "restores/",
        "replays/",
        "drills/",
        "failback/",
        "prune/",
        "holds/",
        crate::repo::keys::KEYS_PREFIX,
        crate::erasure::SUBJECTS_PREFIX,
        crate::erasure::FORGOTTEN_PREFIX,
    ] {
        for obj in repo.store().list(prefix).await? {
            let Some((what, check)) = record_kind(&obj.key) else {
                report.problems.push(Problem {
                    object: obj.key.clone(),
                    what: format!("a stray object under {prefix} (not a name Haven writes)"),
                });
                continue;
            };
            let bytes = repo.store().get(&obj.key).await?;
            report.records_objects += 1;
            if let Err(e) = check(&bytes) {
                report.problems.push(Problem {
                    object: obj.key.clone(),
                    what: format!("not {what}: {e}"),
                });
            }
        }
    }
    // Each prune manifest and key rotation must be the one its audit entry recorded: a
    // segment deleted under a manifest written by hand, or a key swapped in by hand, is
    // damage. The audit log is read once for all.
    let mut recorded: Vec<(String, &str)> = Vec::new();
    for (prefix, action, is_ours) in [
        (
            crate::repo::pruned::PRUNE_PREFIX,
            "prune",
            crate::repo::pruned::is_manifest_key as fn(&str) -> bool,
        ),
        (
            crate::repo::keys::KEYS_PREFIX,
            "key-rotate",
            crate::repo::keys::is_rotation_key,
        ),
        (
            crate::erasure::FORGOTTEN_PREFIX,
            "forget",
            crate::erasure::is_proof_name,
        ),
    ] {
        for o in repo.store().list(prefix).await? {
            if is_ours(&o.key) {
                recorded.push((o.key, action));
            }
        }
    }
    if !recorded.is_empty() {
        use sha2::{Digest as _, Sha256};
        let entries = crate::recovery::audit::list(repo).await?;
        for (key, action) in recorded {
            let entry = entries.iter().find(|(_, e)| {
                e.action == action && e.details["object"].as_str() == Some(key.as_str())
            });
            let what = match entry {
                None => Some("no audit entry records it".to_string()),
                Some((_, e)) => {
                    let raw = repo.store().get(&key).await?;
                    (hex::encode(Sha256::digest(&raw)) != e.plan_sha256)
                        .then(|| "differs from what its audit entry recorded (SHA-256)".into())
                }
            };
            if let Some(what) = what {
                report.problems.push(Problem { object: key, what });
            }
        }
    }
    // A forget whose key is still there did not erase anything.
    if let Ok(names) = crate::erasure::unfinished(repo.store()).await {
        for object in names {
            report.problems.push(Problem {
                object,
                what: "the subject's key is still stored: the forget did not finish (run \
                       `haven forget` again for that subject)"
                    .into(),
            });
        }
    }
    // The audit chain: an entry edited, deleted or reordered, or cut short behind a
    // signed head (signatures are checked by `haven audit verify --public-key`).
    let chain = crate::recovery::audit_verify::verify_chain(repo, None, &[]).await?;
    for what in chain.problems {
        report.problems.push(Problem {
            object: "audit chain".into(),
            what,
        });
    }
    Ok(())
}

type Check = fn(&[u8]) -> std::result::Result<(), serde_json::Error>;

/// A drill report page: UTF-8 HTML.
fn html_page(b: &[u8]) -> std::result::Result<(), serde_json::Error> {
    use serde::de::Error;
    match std::str::from_utf8(b) {
        Ok(t) if t.starts_with("<!DOCTYPE html>") => Ok(()),
        _ => Err(serde_json::Error::custom("not an HTML page")),
    }
}

/// A Markdown page: UTF-8 text.
fn utf8_text(b: &[u8]) -> std::result::Result<(), serde_json::Error> {
    use serde::de::Error;
    std::str::from_utf8(b)
        .map(|_| ())
        .map_err(|_| serde_json::Error::custom("not UTF-8 text"))
}

/// A subject key: its JSON, and an id that matches the key.
fn subject_key(b: &[u8]) -> std::result::Result<(), serde_json::Error> {
    use serde::de::Error;
    crate::erasure::SubjectKeyObject::parse("", b)
        .map(|_| ())
        .map_err(|e| serde_json::Error::custom(e.to_string()))
}

/// A key rotation: its JSON and every wrapping's hex.
fn rotation(b: &[u8]) -> std::result::Result<(), serde_json::Error> {
    use serde::de::Error;
    crate::repo::keys::parse_rotation("", b)
        .map(|_| ())
        .map_err(|e| serde_json::Error::custom(e.to_string()))
}

fn parses<T: serde::de::DeserializeOwned>(b: &[u8]) -> std::result::Result<(), serde_json::Error> {
    serde_json::from_slice::<T>(b).map(|_| ())
}

/// What an object beside the log must hold, from its name (FORMAT.md, "Objects").
fn record_kind(key: &str) -> Option<(&'static str, Check)> {
    use crate::recovery::audit::Entry;
    use crate::restore::{RestoreOffsets, RestorePlan};
    if key.starts_with("audit/") && key.ends_with(".json") {
        Some(("an audit entry", parses::<Entry>))
    } else if (key.starts_with("audit-heads/") || key.starts_with("audit-heads-of/"))
        && key.ends_with(".json")
    {
        Some((
            "a signed audit head",
            parses::<crate::recovery::audit_verify::Head>,
        ))
    } else if key.starts_with("failback/reconcile/") && key.ends_with(".json") {
        Some((
            "a failback reconciliation report",
            parses::<crate::failback::reconcile::ReconcileReport>,
        ))
    } else if key.starts_with("failback/reconcile/") && key.ends_with(".md") {
        Some(("a failback reconciliation page", utf8_text))
    } else if key.starts_with("failback/capture-") && key.ends_with(".json") {
        Some(("a failback capture", parses::<crate::failback::Capture>))
    } else if key.starts_with("restores/") && key.ends_with("/plan.json") {
        Some(("a restore plan", parses::<RestorePlan>))
    } else if key.starts_with("restores/") && key.ends_with("/offsets.json") {
        Some(("a restore offset map", parses::<RestoreOffsets>))
    } else if key.starts_with("replays/") && key.ends_with(".json") {
        Some((
            "replay progress",
            parses::<std::collections::BTreeMap<String, i64>>,
        ))
    } else if crate::repo::pruned::is_manifest_key(key) {
        Some((
            "a prune manifest",
            parses::<crate::repo::pruned::PruneManifest>,
        ))
    } else if key.starts_with(crate::retention::holds::HOLDS_PREFIX) && key.ends_with(".json") {
        Some((
            "a legal hold event",
            parses::<crate::retention::holds::HoldEvent>,
        ))
    } else if crate::erasure::is_subject_key_name(key) {
        Some(("a subject key", subject_key))
    } else if crate::erasure::is_proof_name(key) {
        Some(("a forget proof", parses::<crate::erasure::ForgetProof>))
    } else if crate::repo::keys::is_rotation_key(key) {
        Some(("a key rotation", rotation))
    } else if key.starts_with("drills/") && key.ends_with(".json") {
        Some(("a drill report", parses::<crate::drill::DrillReport>))
    } else if key.starts_with("drills/") && key.ends_with(".html") {
        Some(("a drill report page", html_page))
    } else {
        None
    }
}
