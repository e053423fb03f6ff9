//! A repository's compliance at a glance, for the dashboard: retention, legal holds in
//! force, the key new segments are sealed with and how long it has been current, erasures.
//!
//! Read from what a reading already holds (the configuration, the audit chain, the
//! descriptor) plus the hold objects, re-read only when the audit chain records a hold
//! placed or lifted: never every segment, so it costs nothing per refresh. `haven key status`, `haven hold ls` and `haven verify` are the
//! full answers.

use serde::Serialize;

use crate::recovery::audit::Entry;
use crate::repo::Repository;
use crate::retention::holds::Hold;

/// Days after which the key in use is shown as due for rotation (PCI DSS 3.6.4 asks for
/// a defined cryptoperiod; a year is the common one).
pub const KEY_ROTATION_DAYS: f64 = 365.0;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Compliance {
    /// The retention the config sets (`repositories.NAME.retention`), None = keep all.
    pub retention: Option<String>,
    /// Topics with their own retention (pattern, period).
    pub retention_topics: Vec<(String, String)>,
    pub holds: Vec<Hold>,
    /// Why the holds could not be read (then `holds` is empty: shown as unknown).
    pub holds_error: Option<String>,
    pub encrypted: bool,
    /// The key new segments are sealed with.
    pub key_id: Option<String>,
    /// Unix ms since which it has been the current key (its rotation, or the
    /// repository's creation).
    pub key_since: Option<i64>,
    /// Key rotations on record.
    pub key_rotations: u64,
    /// Older than [`KEY_ROTATION_DAYS`].
    pub key_rotation_due: bool,
    /// Subjects erased (`haven forget`), and when the last was.
    pub erasures: u64,
    pub last_erasure_at: Option<i64>,
}

/// Summarizes repository `repo`'s compliance at `now` (unix ms) from its audit entries and
/// holds.
pub fn summarize(
    section: &crate::config::RepositorySection,
    repo: &Repository,
    audit: &[(String, Entry)],
    holds: Result<Vec<Hold>, String>,
    now: i64,
) -> Compliance {
    // The entries of `action` that succeeded (older entries carry no outcome).
    let done = |action: &str| -> Vec<&Entry> {
        audit
            .iter()
            .map(|(_, e)| e)
            .filter(|e| e.action == action)
            .filter(|e| e.outcome.as_deref().is_none_or(|o| o == "success"))
            .collect()
    };
    let rotations = done("key-rotate");
    let erasures = done("forget");
    let created = chrono::DateTime::parse_from_rfc3339(&repo.descriptor.created_at)
        .ok()
        .map(|t| t.timestamp_millis());
    let encrypted = repo.descriptor.key_id.is_some();
    let (key_id, key_since) = match rotations.last() {
        Some(r) if encrypted => (
            r.details["to"]
                .as_str()
                .map(str::to_string)
                .or_else(|| repo.descriptor.key_id.clone()),
            Some(r.at),
        ),
        _ if encrypted => (repo.descriptor.key_id.clone(), created),
        _ => (None, None),
    };
    let key_rotation_due =
        key_since.is_some_and(|s| (now - s) as f64 / 86_400_000.0 > KEY_ROTATION_DAYS);
    let (holds, holds_error) = match holds {
        Ok(h) => (h, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    Compliance {
        retention: section.retention.clone(),
        retention_topics: section
            .retention_topics
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        holds,
        holds_error,
        encrypted,
        key_id,
        key_since,
        key_rotations: rotations.len() as u64,
        key_rotation_due,
        erasures: erasures.len() as u64,
        last_erasure_at: erasures.last().map(|e| e.at),
    }
}
