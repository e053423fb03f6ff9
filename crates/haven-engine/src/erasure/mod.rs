//! Erasure by crypto-shredding (FORMAT.md, "Erasure").
//!
//! A record whose topic has an erasure rule and which carries a subject id is sealed, before
//! it enters a chunk, under that subject's own key: its key, value and headers become one
//! AES-256-GCM ciphertext; its offset and timestamp stay. The subject is named only by a
//! keyed hash. Subject keys live outside the segments, one object each under `subjects/`,
//! so that `haven forget` can destroy one: it stores a proof (`forgotten/`, audited as
//! `forget`, without the subject id) and deletes the key. Segments never change, so the
//! hash chain and `verify` still hold; readers return that subject's records redacted.

pub mod rules;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use haven_format::{Record, RecordRef, SealedRef, SubjectKey};
use haven_storage::{StorageError, Store};
use serde::{Deserialize, Serialize};

use crate::repo::Repository;
use crate::{Error, Result};

pub const SUBJECTS_PREFIX: &str = "subjects/";
pub const FORGOTTEN_PREFIX: &str = "forgotten/";
/// The header a redacted record carries (its only content).
pub const REDACTED_HEADER: &str = "haven-redacted";

pub fn subject_key_name(hash: &[u8; 32]) -> String {
    format!("{SUBJECTS_PREFIX}{}.json", hex::encode(hash))
}

/// `subjects/{hash}.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectKeyObject {
    pub format: String,
    pub version: u16,
    /// The key's id (16 hex): sealed records name it.
    pub id: String,
    /// The key (64 hex).
    pub key: String,
    pub created_at: String,
}

impl SubjectKeyObject {
    fn new(k: &SubjectKey) -> Self {
        SubjectKeyObject {
            format: "haven-subject-key".into(),
            version: 1,
            id: hex::encode(k.id()),
            key: hex::encode(k.bytes()),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    pub fn parse(name: &str, raw: &[u8]) -> Result<SubjectKey> {
        let damaged = |what: &str| Error::Damaged(format!("{name}: not a subject key ({what})"));
        let o: SubjectKeyObject =
            serde_json::from_slice(raw).map_err(|e| damaged(&e.to_string()))?;
        if o.format != "haven-subject-key" || o.version != 1 {
            return Err(damaged("unknown format or version"));
        }
        let bytes: [u8; 32] = hex::decode(&o.key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| damaged("key is not 32 bytes of hex"))?;
        let k = SubjectKey::from_bytes(bytes);
        if hex::encode(k.id()) != o.id {
            return Err(damaged("id does not match the key"));
        }
        Ok(k)
    }
}

/// `forgotten/{ms:013}-{hash}.json`: the proof that a subject's key was destroyed. It
/// holds the keyed hash, never the subject id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetProof {
    pub format: String,
    pub version: u16,
    pub at: String,
    /// The subject's keyed hash (64 hex).
    pub subject: String,
    /// The id of the key destroyed (None: no key existed: nothing of it was backed up).
    pub key_id: Option<String>,
    pub by: String,
    pub reason: String,
}

/// Subject keys this process has seen (Some) or found absent (None: never made, or
/// destroyed).
#[derive(Debug, Default)]
pub struct SubjectKeys {
    cache: Mutex<HashMap<[u8; 32], Option<SubjectKey>>>,
    /// Proofs seen under `forgotten/` when the cache was last checked.
    forgotten_seen: Mutex<usize>,
    /// The store was measured to refuse a second create of a key: a new subject's key is
    /// then put first (one request), not looked up first (two).
    create_only: std::sync::atomic::AtomicBool,
}

/// A sealed record's pieces, owned while its chunk is built.
pub struct Sealed {
    subject: [u8; 32],
    key_id: [u8; 8],
    nonce: [u8; 12],
    ciphertext: Vec<u8>,
}

impl Sealed {
    /// The record as the chunk stores it: offset and timestamp of `r`, the rest sealed.
    pub fn record<'a>(&'a self, r: &RecordRef<'_>) -> RecordRef<'a> {
        RecordRef {
            offset: r.offset,
            timestamp: r.timestamp,
            timestamp_type: r.timestamp_type,
            key: None,
            value: None,
            headers: Vec::new(),
            sealed: Some(SealedRef {
                subject: &self.subject,
                key_id: &self.key_id,
                nonce: &self.nonce,
                ciphertext: &self.ciphertext,
            }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| Error::Task("subject key cache poisoned".into()))
}

impl SubjectKeys {
    /// The subject's key, read from the store once (None: absent).
    pub async fn get(&self, store: &Store, hash: &[u8; 32]) -> Result<Option<SubjectKey>> {
        if let Some(k) = lock(&self.cache)?.get(hash) {
            return Ok(k.clone());
        }
        let name = subject_key_name(hash);
        let k = match store.get(&name).await {
            Ok(raw) => Some(SubjectKeyObject::parse(&name, &raw)?),
            Err(StorageError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        lock(&self.cache)?.insert(*hash, k.clone());
        Ok(k)
    }

    /// Says whether the store enforces create-only puts (as measured by its probe).
    pub fn set_create_only(&self, enforced: bool) {
        self.create_only
            .store(enforced, std::sync::atomic::Ordering::Relaxed);
    }

    /// The subject's key for sealing: the stored one, else a new one stored create-only
    /// first (a segment never names a key that was not durable before it). On a store
    /// that enforces create-only puts a new key is put at once (a subject already stored
    /// makes it fail, and the stored key is read); on others it is looked up first, so
    /// that a stored key is never replaced.
    pub async fn get_or_create(&self, store: &Store, hash: &[u8; 32]) -> Result<SubjectKey> {
        let cached = lock(&self.cache)?.get(hash).cloned().flatten();
        if let Some(k) = cached {
            return Ok(k);
        }
        if !self.create_only.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(k) = self.get(store, hash).await? {
                return Ok(k);
            }
        }
        let name = subject_key_name(hash);
        let k = SubjectKey::generate();
        let body = serde_json::to_vec_pretty(&SubjectKeyObject::new(&k))
            .map_err(|e| Error::Task(e.to_string()))?;
        let k = match store.put_new(&name, Bytes::from(body)).await {
            Ok(()) => k,
            // Another writer made it first: use theirs.
            Err(StorageError::AlreadyExists { .. }) => {
                SubjectKeyObject::parse(&name, &store.get(&name).await?)?
            }
            Err(e) => return Err(e.into()),
        };
        lock(&self.cache)?.insert(*hash, Some(k.clone()));
        Ok(k)
    }

    /// Forgets every cached key when a subject was forgotten since the last look (one
    /// listing): a writer calls it before each segment, so it stops sealing with a
    /// destroyed key.
    pub async fn refresh(&self, store: &Store) -> Result<()> {
        let n = store.list(FORGOTTEN_PREFIX).await?.len();
        let mut seen = lock(&self.forgotten_seen)?;
        if *seen != n {
            lock(&self.cache)?.clear();
            *seen = n;
        }
        Ok(())
    }
}

/// Seals `r` when its topic has a rule and it carries a subject id.
pub async fn seal(
    rules: &rules::Rules,
    keys: &SubjectKeys,
    store: &Store,
    topic: &str,
    r: &RecordRef<'_>,
) -> Result<Option<Sealed>> {
    let Some(id) = rules.subject_of(topic, r) else {
        return Ok(None);
    };
    let subject = rules.hash(&id);
    let key = keys.get_or_create(store, &subject).await?;
    let (nonce, ciphertext) = key.seal(
        &subject,
        &haven_format::pack_tail(&haven_format::record_tail(r)),
    );
    Ok(Some(Sealed {
        subject,
        key_id: key.id(),
        nonce,
        ciphertext,
    }))
}

/// The keys of the subjects of the sealed records among `records` (fetched before they are
/// opened: decoding is synchronous). Nothing is fetched when none is sealed.
pub async fn keys_for(
    keys: &SubjectKeys,
    store: &Store,
    records: &[RecordRef<'_>],
) -> Result<HashMap<[u8; 32], Option<SubjectKey>>> {
    let mut out = HashMap::new();
    for r in records {
        let Some(s) = &r.sealed else { continue };
        let Ok(h) = <[u8; 32]>::try_from(s.subject) else {
            continue;
        };
        if let std::collections::hash_map::Entry::Vacant(e) = out.entry(h) {
            e.insert(keys.get(store, &h).await?);
        }
    }
    Ok(out)
}

/// A redacted record: offset, timestamp and its type kept; no key, no value; one header
/// `haven-redacted: erased`.
pub fn redacted(r: &RecordRef<'_>) -> Record {
    Record {
        offset: r.offset,
        timestamp: r.timestamp,
        timestamp_type: r.timestamp_type,
        key: None,
        value: None,
        headers: vec![haven_format::Header {
            name: REDACTED_HEADER.into(),
            value: Some(b"erased".to_vec()),
        }],
    }
}

/// Opens a sealed record with the keys [`keys_for`] fetched: the record, or redacted when
/// its subject's key was destroyed. A key that exists but does not open it is damage.
pub fn open(r: &RecordRef<'_>, keys: &HashMap<[u8; 32], Option<SubjectKey>>) -> Result<Record> {
    let Some(s) = &r.sealed else {
        return Ok(r.to_owned());
    };
    let key = <[u8; 32]>::try_from(s.subject)
        .ok()
        .and_then(|h| keys.get(&h).cloned().flatten());
    match key {
        Some(k) if k.id()[..] == *s.key_id => {
            let tail = k
                .open(s.subject, s.nonce, s.ciphertext)
                .and_then(|packed| haven_format::unpack_tail(&packed))
                .map_err(|e| Error::Damaged(format!("offset {}: {e}", r.offset)))?;
            haven_format::unsealed(r, &tail)
                .map_err(|e| Error::Damaged(format!("offset {}: {e}", r.offset)))
        }
        // Absent, or a later key of the same subject: the one it was sealed with is gone.
        _ => Ok(redacted(r)),
    }
}

/// The outcome of `haven forget`.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetReport {
    pub proof: String,
    pub key_destroyed: Option<String>,
}

/// Destroys a subject's key: the proof first (create-only, audited as `forget`), then the
/// key object, checked gone. A re-run finishes a forget stopped between the two.
pub async fn forget(
    repo: &Repository,
    rules: &rules::Rules,
    subject: &str,
    by: &str,
    reason: &str,
) -> Result<ForgetReport> {
    if subject.is_empty() {
        return Err(Error::Input("--subject is empty".into()));
    }
    let hash = rules.hash(subject.as_bytes());
    let name = subject_key_name(&hash);
    let key = match repo.store().get(&name).await {
        Ok(raw) => Some(SubjectKeyObject::parse(&name, &raw)?),
        Err(StorageError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let proof = ForgetProof {
        format: "haven-forget".into(),
        version: 1,
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        subject: hex::encode(hash),
        key_id: key.as_ref().map(|k| hex::encode(k.id())),
        by: by.to_string(),
        reason: reason.to_string(),
    };
    let proof_name = format!(
        "{FORGOTTEN_PREFIX}{:013}-{}.json",
        chrono::Utc::now().timestamp_millis(),
        hex::encode(hash)
    );
    let body = serde_json::to_vec_pretty(&proof).map_err(|e| Error::Task(e.to_string()))?;
    crate::recovery::audit::put_recorded(
        repo,
        &proof_name,
        body,
        "forget",
        None,
        serde_json::json!({"key_id": proof.key_id, "by": by, "reason": reason}),
    )
    .await?;
    if key.is_some() {
        repo.store().delete(&name).await?;
        if repo.store().exists(&name).await? {
            return Err(Error::Task(format!(
                "{name} is still there after deleting it: the store keeps it (Object Lock?); \
                 the subject is not erased"
            )));
        }
    }
    Ok(ForgetReport {
        proof: proof_name,
        key_destroyed: proof.key_id,
    })
}

fn hex_name(name: &str, prefix: &str, digits: usize) -> bool {
    name.strip_prefix(prefix)
        .and_then(|n| n.strip_suffix(".json"))
        .is_some_and(|h| h.len() == digits && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A name Haven writes under `subjects/`.
pub fn is_subject_key_name(name: &str) -> bool {
    hex_name(name, SUBJECTS_PREFIX, 64)
}

/// A name Haven writes under `forgotten/`: 13 digits, '-', 64 hex.
pub fn is_proof_name(name: &str) -> bool {
    name.strip_prefix(FORGOTTEN_PREFIX)
        .and_then(|n| n.split_once('-'))
        .is_some_and(|(ms, rest)| {
            ms.len() == 13 && ms.bytes().all(|b| b.is_ascii_digit()) && hex_name(rest, "", 64)
        })
}

/// The subject key object a proof says was destroyed, when `store` still holds that very
/// key (not a later one of the same subject).
async fn still_stored(store: &Store, p: &ForgetProof) -> Result<Option<String>> {
    let Some(id) = &p.key_id else {
        return Ok(None);
    };
    let Some(hash) = hex::decode(&p.subject)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
    else {
        return Ok(None);
    };
    let name = subject_key_name(&hash);
    match store.get(&name).await {
        Ok(raw) => Ok(SubjectKeyObject::parse(&name, &raw)
            .is_ok_and(|k| hex::encode(k.id()) == *id)
            .then_some(name)),
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Proofs whose key is still in `store` (a forget stopped before deleting it).
pub async fn unfinished(store: &Store) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (name, p) in proofs(store, &|_| false).await? {
        if still_stored(store, &p).await?.is_some() {
            out.push(name);
        }
    }
    Ok(out)
}

/// The proofs under `forgotten/`, by name, but those `skip` names (they are not read).
pub async fn proofs(
    store: &Store,
    skip: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<(String, ForgetProof)>> {
    let mut objects = store.list(FORGOTTEN_PREFIX).await?;
    objects.retain(|o| !skip(&o.key));
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = Vec::new();
    for o in objects {
        let raw = store.get(&o.key).await?;
        let p: ForgetProof = serde_json::from_slice(&raw)
            .map_err(|e| Error::Damaged(format!("{}: not a forget proof: {e}", o.key)))?;
        out.push((o.key, p));
    }
    Ok(out)
}

/// Deletes from `store` the subject keys the proofs say were destroyed (a copy made by
/// `repo sync` before the forget). Returns how many it deleted.
pub async fn apply_proofs(proofs: &[(String, ForgetProof)], store: &Store) -> Result<u64> {
    let mut n = 0;
    for (_, p) in proofs {
        if let Some(name) = still_stored(store, p).await? {
            store.delete(&name).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// What the repository holds for erasure: the rules (writers) and the key cache.
#[derive(Debug, Clone, Default)]
pub struct Erasure {
    pub rules: Option<Arc<rules::Rules>>,
    pub keys: Arc<SubjectKeys>,
}
