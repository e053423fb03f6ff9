//! The audit log: every action that changed a cluster or produced evidence (rewind,
//! replay, compensate, recover --apply, failover plans, drills, failback) is recorded in
//! the repository, append-only and hash-chained: entry N is the create-only object
//! `audit/chain/N.json` (12 digits) and holds `seq` = N and the SHA-256 of entry N-1's
//! bytes, so an edited, deleted or reordered entry breaks the chain where it happened
//! (`audit_verify`). Two writers racing for N: the create-only put fences them and the
//! loser appends after the winner. Entries written before the chain (`audit/TIME-RAND.json`)
//! are still read, listed first, and reported as unchained. `haven audit` prints them.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::repo::Repository;
use crate::{Error, Result};

/// One recorded action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// Unix ms.
    pub at: i64,
    /// Who ran it ([`current_user`]) and where.
    pub user: String,
    pub host: String,
    /// `rewind`, `replay`, `compensate`, `recover-apply`, ...
    pub action: String,
    /// SHA-256 of the plan or parameters the action executed (hex).
    pub plan_sha256: String,
    /// What was done, as the command reports it.
    pub details: serde_json::Value,
    /// The fencing epoch the action ran under (failover operations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The entry's place in the chain (1, 2, ...); None before the chain existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// SHA-256 (hex) of the previous entry's bytes ([`GENESIS`] for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_sha256: Option<String>,
    /// PCI DSS 10.2.2: `success`, `failure` (a step that failed: `details.error` says why)
    /// or `refused` (absent on older entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// PCI DSS 10.2.2: the object acted on (a stored document's key, a topic, a plan),
    /// when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

/// What the first entry of a chain names as its predecessor.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where chained entries live.
pub const CHAIN_PREFIX: &str = "audit/chain/";

/// The key of chain entry `seq`.
pub fn chain_key(seq: u64) -> String {
    format!("{CHAIN_PREFIX}{seq:012}.json")
}

/// The sequence number a chain key names.
pub fn seq_of(key: &str) -> Option<u64> {
    key.strip_prefix(CHAIN_PREFIX)?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

/// Who runs this process: `$USER` or `$LOGNAME`, else (a container, a service without
/// login variables) the name `/etc/passwd` gives the process's uid, else `uid N`.
pub fn current_user() -> String {
    if let Some(u) = ["USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|u| !u.is_empty())
    {
        return u;
    }
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|r| r.split_whitespace().next().map(str::to_string))
        });
    let Some(uid) = uid else {
        return "unknown".into();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

fn whoami() -> (String, String) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    (current_user(), host)
}

/// SHA-256 (hex) of a value's canonical JSON.
pub fn sha256_of<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// An entry for an action done now, by this user on this host.
pub fn entry(
    action: &str,
    plan_sha256: &str,
    epoch: Option<u64>,
    details: serde_json::Value,
) -> Entry {
    let (user, host) = whoami();
    let outcome = details["outcome"]
        .as_str()
        .unwrap_or(if action.ends_with("-refused") {
            "refused"
        } else {
            "success"
        })
        .to_string();
    let object = ["object", "topic", "target", "plan"]
        .iter()
        .find_map(|k| details[*k].as_str())
        .map(str::to_string);
    Entry {
        at: chrono::Utc::now().timestamp_millis(),
        user,
        host,
        action: action.to_string(),
        plan_sha256: plan_sha256.to_string(),
        details,
        epoch,
        seq: None,
        prev_sha256: None,
        outcome: Some(outcome),
        object,
    }
}

/// The chain's last entry: its sequence number and the SHA-256 of its bytes (0 and
/// [`GENESIS`] for an empty chain).
pub async fn head(repo: &Repository) -> Result<(u64, String)> {
    head_in(repo.store()).await
}

/// [`head`] of the chain under `audit/` in any store (a repository's, or a local state
/// directory's).
pub async fn head_in(store: &haven_storage::Store) -> Result<(u64, String)> {
    let last = store
        .list(CHAIN_PREFIX)
        .await?
        .into_iter()
        .filter_map(|o| seq_of(&o.key))
        .max();
    match last {
        None => Ok((0, GENESIS.to_string())),
        Some(seq) => {
            let raw = store.get(&chain_key(seq)).await?;
            Ok((seq, hex::encode(Sha256::digest(&raw))))
        }
    }
}

/// Appends an entry; returns its key.
pub async fn record(
    repo: &Repository,
    action: &str,
    plan_sha256: &str,
    details: serde_json::Value,
) -> Result<String> {
    record_with_epoch(repo, action, plan_sha256, None, details).await
}

/// Appends an entry made under a fencing epoch; returns its key.
pub async fn record_with_epoch(
    repo: &Repository,
    action: &str,
    plan_sha256: &str,
    epoch: Option<u64>,
    details: serde_json::Value,
) -> Result<String> {
    append(repo.store(), entry(action, plan_sha256, epoch, details)).await
}

/// Appends `entry` to the chain under `audit/` of `store`; returns its key.
pub async fn append(store: &haven_storage::Store, mut entry: Entry) -> Result<String> {
    for _ in 0..50u32 {
        let (seq, prev) = head_in(store).await?;
        entry.seq = Some(seq + 1);
        entry.prev_sha256 = Some(prev);
        let body = serde_json::to_vec_pretty(&entry).map_err(|e| Error::Task(e.to_string()))?;
        let key = chain_key(seq + 1);
        match store.put_new(&key, Bytes::from(body)).await {
            Ok(()) => return Ok(key),
            // Another writer took this place: append after it.
            Err(haven_storage::StorageError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Task(
        "could not append to the audit chain: 50 other writers appended first".into(),
    ))
}

/// Stores a document create-only at `key` and records it in the audit log with its
/// SHA-256; returns the audit entry's key.
pub async fn put_recorded(
    repo: &Repository,
    key: &str,
    body: Vec<u8>,
    action: &str,
    epoch: Option<u64>,
    mut details: serde_json::Value,
) -> Result<String> {
    let sha = hex::encode(Sha256::digest(&body));
    repo.store().put_new(key, bytes::Bytes::from(body)).await?;
    details["object"] = serde_json::Value::String(key.to_string());
    record_with_epoch(repo, action, &sha, epoch, details).await
}

/// Reads a document stored by [`put_recorded`], checked against its audit entry.
pub async fn get_recorded(repo: &Repository, key: &str, action: &str) -> Result<Vec<u8>> {
    let entries = list(repo).await?;
    let Some((_, entry)) = entries
        .iter()
        .find(|(_, e)| e.action == action && e.details["object"].as_str() == Some(key))
    else {
        return Err(Error::Damaged(format!("{key}: no audit entry records it")));
    };
    let raw = repo.store().get(key).await?;
    if hex::encode(Sha256::digest(&raw)) != entry.plan_sha256 {
        return Err(Error::Damaged(format!(
            "{key}: differs from what its audit entry recorded (SHA-256)"
        )));
    }
    Ok(raw.to_vec())
}

/// Every entry, oldest first.
pub async fn list(repo: &Repository) -> Result<Vec<(String, Entry)>> {
    let mut objects = repo.store().list("audit/").await?;
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = Vec::new();
    for o in objects {
        let raw = repo.store().get(&o.key).await?;
        let e: Entry = serde_json::from_slice(&raw)
            .map_err(|e| Error::Damaged(format!("{}: not an audit entry: {e}", o.key)))?;
        out.push((o.key, e));
    }
    Ok(out)
}
