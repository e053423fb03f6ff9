//! The audit log: every action that changed a cluster (rewind, replay to Kafka, compensate,
//! recover --apply) is recorded in the repository, append-only: one create-only object per
//! action under `audit/`, named by time so a listing is chronological. Nothing rewrites or
//! deletes them; `haven audit` prints them.

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
    Entry {
        at: chrono::Utc::now().timestamp_millis(),
        user,
        host,
        action: action.to_string(),
        plan_sha256: plan_sha256.to_string(),
        details,
        epoch,
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
    let entry = entry(action, plan_sha256, epoch, details);
    let at = entry.at;
    let body = serde_json::to_vec_pretty(&entry).map_err(|e| Error::Task(e.to_string()))?;
    for attempt in 0..5u32 {
        let key = format!(
            "audit/{at:013}-{:08x}.json",
            rand::random::<u32>() ^ attempt
        );
        match repo.store().put_new(&key, Bytes::from(body.clone())).await {
            Ok(()) => return Ok(key),
            Err(haven_storage::StorageError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Task("could not find a free audit key".into()))
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
