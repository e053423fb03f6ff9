//! Key-encryption keys and their rotation (FORMAT.md, "Key rotation").
//!
//! Each segment's chunks are sealed with its own data key, wrapped in the segment's index
//! by the key-encryption key (KEK) current when it was written. A rotation never rewrites a
//! segment: it wraps every segment's data key again under the new KEK and stores those
//! wrappings in one create-only object under `keys/`, recorded in the audit chain
//! (`key-rotate`). The newest rotation names the current KEK (before any, the descriptor's
//! `key_id`); writers seal new segments under it. A reader opens a segment with any key
//! it holds that wraps the segment's data key, in the index or in a rotation, so backups
//! from before a rotation stay readable with the new key alone, and the old KEK can be
//! destroyed once every segment opens with the new one (`haven key status`).

use std::collections::{BTreeMap, BTreeSet};

use haven_format::{Digest, KeyId, MasterKey, WrappedKey};
use serde::{Deserialize, Serialize};

use super::Repository;
use crate::{Error, Result};

pub const KEYS_PREFIX: &str = "keys/";

/// The keys a process was given (`--key-file`, which may hold several, or `HAVEN_KEY`).
#[derive(Clone, Default)]
pub struct KeyRing {
    keys: Vec<MasterKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({})", self.ids().join(", "))
    }
}

impl KeyRing {
    pub fn new(keys: Vec<MasterKey>) -> KeyRing {
        let mut ring = KeyRing::default();
        for k in keys {
            ring.add(k);
        }
        ring
    }

    /// Adds a key (a key already held is not added twice).
    pub fn add(&mut self, key: MasterKey) {
        if self.get(&key.id().0).is_none() {
            self.keys.push(key);
        }
    }

    /// Parses keys of 64 hex digits, one per line or separated by commas or spaces; `#`
    /// starts a comment. `what` names the source in errors.
    pub fn parse(text: &str, what: &str) -> Result<KeyRing> {
        let mut ring = KeyRing::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            for word in line
                .split([',', ' ', '\t'])
                .filter(|w| !w.trim().is_empty())
            {
                let key = MasterKey::from_hex(word)
                    .map_err(|e| Error::Key(format!("{what} line {}: {e}", n + 1)))?;
                ring.add(key);
            }
        }
        Ok(ring)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id().0 == id)
    }

    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id().0).collect()
    }
}

/// `keys/{ms:013}-{to}.json`: one rotation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    pub format: String,
    pub version: u16,
    pub at: String,
    /// The current KEK before this rotation.
    pub from: String,
    /// The KEK current from now on.
    pub to: String,
    pub by: String,
    pub reason: String,
    /// Every segment whose data key had no wrapping under `to` yet.
    pub wraps: Vec<Rewrap>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrap {
    pub seq: u64,
    /// The segment's digest (hex): the wrapping is bound to it.
    pub digest: String,
    pub nonce: String,
    pub wrapped: String,
}

/// What `keys/` holds.
#[derive(Debug, Clone, Default)]
pub struct KeyLog {
    pub rotations: Vec<(String, Rotation)>,
    /// Objects under `keys/` that are not rotations Haven wrote: left out (their wrappings
    /// are not used) and reported by `verify`.
    pub skipped: Vec<(String, String)>,
    rewraps: BTreeMap<u64, Vec<(Digest, WrappedKey)>>,
}

fn damaged(key: &str, what: impl std::fmt::Display) -> Error {
    Error::Damaged(format!("{key}: not a key rotation Haven wrote ({what})"))
}

fn hex_array<const N: usize>(key: &str, field: &str, text: &str) -> Result<[u8; N]> {
    hex::decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| damaged(key, format!("{field} is not {N} bytes of hex")))
}

type Wraps = Vec<(u64, Digest, WrappedKey)>;

/// Parses a rotation object and its wrappings.
pub fn parse_rotation(key: &str, raw: &[u8]) -> Result<(Rotation, Wraps)> {
    let r: Rotation = serde_json::from_slice(raw).map_err(|e| damaged(key, e))?;
    if r.format != "haven-key-rotation" || r.version != 1 {
        return Err(damaged(key, "unknown format or version"));
    }
    let mut wraps = Vec::new();
    for w in &r.wraps {
        let wrapped = WrappedKey {
            key_id: KeyId(r.to.clone()),
            nonce: hex_array::<12>(key, "nonce", &w.nonce)?,
            ciphertext: hex::decode(&w.wrapped).map_err(|_| damaged(key, "wrapped is not hex"))?,
        };
        wraps.push((w.seq, hex_array::<32>(key, "digest", &w.digest)?, wrapped));
    }
    Ok((r, wraps))
}

/// A name `haven key rotate` writes: `keys/{13 digits}-{16 hex}.json`.
pub fn is_rotation_key(key: &str) -> bool {
    let Some(name) = key
        .strip_prefix(KEYS_PREFIX)
        .and_then(|k| k.strip_suffix(".json"))
    else {
        return false;
    };
    let Some((ms, id)) = name.split_once('-') else {
        return false;
    };
    ms.len() == 13
        && ms.bytes().all(|b| b.is_ascii_digit())
        && id.len() == 16
        && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl KeyLog {
    /// Reads every rotation, oldest first.
    pub async fn load(store: &haven_storage::Store) -> Result<KeyLog> {
        let mut objects = store.list(KEYS_PREFIX).await?;
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        let mut log = KeyLog::default();
        for o in objects {
            let raw = store.get(&o.key).await?;
            match parse_rotation(&o.key, &raw) {
                Ok((r, wraps)) => {
                    for (seq, digest, w) in wraps {
                        log.rewraps.entry(seq).or_default().push((digest, w));
                    }
                    log.rotations.push((o.key, r));
                }
                Err(e) => {
                    tracing::warn!(object = %o.key, error = %e, "key rotation left out");
                    log.skipped.push((o.key, e.to_string()));
                }
            }
        }
        Ok(log)
    }

    /// The KEK new segments are sealed with.
    pub fn current(&self, created_with: &str) -> String {
        self.rotations
            .last()
            .map_or_else(|| created_with.to_string(), |(_, r)| r.to.clone())
    }

    /// Every KEK the repository has used, oldest first.
    pub fn known(&self, created_with: &str) -> Vec<String> {
        let mut out = vec![created_with.to_string()];
        for (_, r) in &self.rotations {
            if !out.contains(&r.to) {
                out.push(r.to.clone());
            }
        }
        out
    }

    /// The wrappings of segment `seq`'s data key made by rotations.
    pub fn rewraps(&self, seq: u64) -> &[(Digest, WrappedKey)] {
        self.rewraps.get(&seq).map_or(&[], Vec::as_slice)
    }

    /// The KEKs that can open segment `seq`, whose index wraps its data key under `own`.
    pub fn openers(&self, seq: u64, own: &KeyId) -> BTreeSet<String> {
        std::iter::once(own.0.clone())
            .chain(self.rewraps(seq).iter().map(|(_, w)| w.key_id.0.clone()))
            .collect()
    }

    /// Objects read from `keys/` (rotations and skipped ones).
    pub fn len(&self) -> usize {
        self.rotations.len() + self.skipped.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rotations.is_empty()
    }
}

/// Opens segment `seq`'s data key with a key of `ring`: its own wrapping first, then those
/// of rotations. `Error::Key` names the keys that would open it.
pub fn data_key(
    ring: &KeyRing,
    log: &KeyLog,
    seq: u64,
    own: &WrappedKey,
    segment: &str,
) -> Result<[u8; 32]> {
    if let Some(k) = ring.get(&own.key_id.0) {
        return k.unwrap_key(own).map_err(|e| Error::format(segment, e));
    }
    for (digest, w) in log.rewraps(seq) {
        if let Some(k) = ring.get(&w.key_id.0) {
            return k
                .unwrap_rewrapped(w, seq, digest)
                .map_err(|e| Error::format(segment, e));
        }
    }
    Err(missing_key(ring, log, seq, own, segment))
}

fn missing_key(ring: &KeyRing, log: &KeyLog, seq: u64, own: &WrappedKey, segment: &str) -> Error {
    let given = ring.ids();
    Error::Key(format!(
        "{segment} opens only with key {}; the key file or HAVEN_KEY holds {}: add one of \
         those keys (nothing was read)",
        log.openers(seq, &own.key_id)
            .into_iter()
            .collect::<Vec<_>>()
            .join(" or "),
        if given.is_empty() {
            "no key".to_string()
        } else {
            given.join(", ")
        }
    ))
}

/// Checks, before anything is read, that `ring` opens every encrypted segment `state`
/// refers to, so that a reader never hands out part of a selection and then stops.
pub fn ensure_readable(ring: &KeyRing, log: &KeyLog, state: &super::RepoState) -> Result<()> {
    let mut seen = BTreeSet::new();
    for p in state.partitions.values() {
        for c in &p.chunks {
            let Some(own) = &c.wrapped_key else { continue };
            if !seen.insert(c.seq) {
                continue;
            }
            let opens = ring.get(&own.key_id.0).is_some()
                || log
                    .rewraps(c.seq)
                    .iter()
                    .any(|(_, w)| ring.get(&w.key_id.0).is_some());
            if !opens {
                return Err(missing_key(ring, log, c.seq, own, &c.key));
            }
        }
    }
    Ok(())
}

/// The result of `haven key rotate`.
#[derive(Debug, Clone, Serialize)]
pub struct RotateReport {
    pub from: String,
    pub to: String,
    /// The rotation object written (None: every segment already opened with `to`).
    pub object: Option<String>,
    pub rewrapped_segments: u64,
    pub already_under_new_key: u64,
    pub pruned_segments: u64,
}

/// Wraps every segment's data key under `new_key` and makes it the current KEK. Opens the
/// data keys with the repository's key ring; a segment it cannot open stops the rotation
/// before anything is written. A re-run (same new key) covers segments written since.
pub async fn rotate(
    repo: &Repository,
    new_key: &MasterKey,
    by: &str,
    reason: &str,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<RotateReport> {
    let Some(created_with) = repo.descriptor.key_id.clone() else {
        return Err(Error::Input(format!(
            "{} is not encrypted: there is no key to rotate (a repository keeps the choice it \
             was created with)",
            repo.store().url()
        )));
    };
    let log = repo.key_log();
    let from = log.current(&created_with);
    let to = new_key.id().0;
    let segments = repo.segments().await?;
    let total = segments.len() as u64;
    let mut report = RotateReport {
        from: from.clone(),
        to: to.clone(),
        object: None,
        rewrapped_segments: 0,
        already_under_new_key: 0,
        pruned_segments: super::pruned::load(repo).await?.len() as u64,
    };
    let mut wraps = Vec::new();
    for (n, obj) in segments.iter().enumerate() {
        let (ix, digest) = repo.read_index(obj).await?;
        progress(n as u64 + 1, total);
        let Some(own) = &ix.wrapped_key else {
            return Err(Error::Damaged(format!(
                "{}: not encrypted in an encrypted repository",
                obj.key
            )));
        };
        if log.openers(ix.seq, &own.key_id).contains(&to) {
            report.already_under_new_key += 1;
            continue;
        }
        let dk = data_key(repo.keys(), &log, ix.seq, own, &obj.key)?;
        let w = new_key.rewrap(&dk, ix.seq, &digest);
        wraps.push(Rewrap {
            seq: ix.seq,
            digest: hex::encode(digest),
            nonce: hex::encode(w.nonce),
            wrapped: hex::encode(&w.ciphertext),
        });
    }
    if wraps.is_empty() && from == to {
        return Ok(report);
    }
    report.rewrapped_segments = wraps.len() as u64;
    let rotation = Rotation {
        format: "haven-key-rotation".into(),
        version: 1,
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        from: from.clone(),
        to: to.clone(),
        by: by.to_string(),
        reason: reason.to_string(),
        wraps,
    };
    let key = format!(
        "{KEYS_PREFIX}{:013}-{to}.json",
        chrono::Utc::now().timestamp_millis()
    );
    let body = serde_json::to_vec_pretty(&rotation).map_err(|e| Error::Task(e.to_string()))?;
    crate::recovery::audit::put_recorded(
        repo,
        &key,
        body,
        "key-rotate",
        None,
        serde_json::json!({
            "from": from, "to": to, "segments": report.rewrapped_segments,
            "by": by, "reason": reason,
        }),
    )
    .await?;
    report.object = Some(key);
    repo.reload_keys().await?;
    Ok(report)
}

/// Where a repository's keys stand (`haven key status`).
#[derive(Debug, Clone, Serialize)]
pub struct KeyStatus {
    pub encrypted: bool,
    pub created_with: Option<String>,
    pub current: Option<String>,
    pub rotations: Vec<RotationSummary>,
    /// Per KEK the repository has used: how many stored segments it opens, and whether
    /// this process was given it.
    pub keys: Vec<KeyUse>,
    /// Stored segments the current KEK does not open (written after a rotation by a writer
    /// without the new key): `haven key rotate` again covers them.
    pub not_under_current: Vec<u64>,
    pub stored_segments: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RotationSummary {
    pub object: String,
    pub at: String,
    pub from: String,
    pub to: String,
    pub by: String,
    pub reason: String,
    pub segments: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyUse {
    pub id: String,
    pub opens_segments: u64,
    pub given: bool,
    /// Not current, and every stored segment opens without it: it may be destroyed.
    pub retirable: bool,
}

pub async fn status(repo: &Repository) -> Result<KeyStatus> {
    let log = repo.key_log();
    let Some(created_with) = repo.descriptor.key_id.clone() else {
        return Ok(KeyStatus {
            encrypted: false,
            created_with: None,
            current: None,
            rotations: vec![],
            keys: vec![],
            not_under_current: vec![],
            stored_segments: repo.segments().await?.len() as u64,
        });
    };
    let current = log.current(&created_with);
    let known = log.known(&created_with);
    let mut opens: BTreeMap<String, u64> = known.iter().map(|k| (k.clone(), 0)).collect();
    let mut not_under_current = Vec::new();
    let segments = repo.segments().await?;
    for obj in &segments {
        let (ix, _) = repo.read_index(obj).await?;
        let Some(own) = &ix.wrapped_key else { continue };
        let openers = log.openers(ix.seq, &own.key_id);
        for k in &openers {
            *opens.entry(k.clone()).or_default() += 1;
        }
        if !openers.contains(&current) {
            not_under_current.push(ix.seq);
        }
    }
    let keys = known
        .iter()
        .map(|id| KeyUse {
            id: id.clone(),
            opens_segments: opens.get(id).copied().unwrap_or(0),
            given: repo.keys().get(id).is_some(),
            retirable: *id != current && not_under_current.is_empty(),
        })
        .collect();
    Ok(KeyStatus {
        encrypted: true,
        created_with: Some(created_with),
        current: Some(current),
        rotations: log
            .rotations
            .iter()
            .map(|(k, r)| RotationSummary {
                object: k.clone(),
                at: r.at.clone(),
                from: r.from.clone(),
                to: r.to.clone(),
                by: r.by.clone(),
                reason: r.reason.clone(),
                segments: r.wraps.len() as u64,
            })
            .collect(),
        keys,
        not_under_current,
        stored_segments: segments.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rings_parse_lines_commas_and_comments() {
        let a = MasterKey::generate();
        let b = MasterKey::generate();
        let text = format!(
            "# old key\n{}\n\n{} , {}  # new\n",
            a.to_hex(),
            b.to_hex(),
            a.to_hex()
        );
        let ring = KeyRing::parse(&text, "f").unwrap();
        assert_eq!(ring.ids(), vec![a.id().0, b.id().0]);
        let e = KeyRing::parse("abcd\n", "keys.txt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("keys.txt line 1"), "{e}");
        assert!(KeyRing::parse("# nothing\n", "f").unwrap().is_empty());
    }
}
