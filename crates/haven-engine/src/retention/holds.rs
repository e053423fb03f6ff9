//! Legal holds: a named hold on topics and a time range keeps every segment holding such
//! records from `haven prune`, whatever the retention says. Holds are events in the
//! repository (`holds/{ms:013}-{name}-{add|remove}.json`, create-only, each recorded in
//! the audit chain as `hold-add` or `hold-remove`); a hold's state is its last event.

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::recovery::audit;
use crate::repo::Repository;
use crate::{Error, Result};

pub const HOLDS_PREFIX: &str = "holds/";

/// One event of a hold.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HoldEvent {
    /// Always `haven-hold`.
    pub format: String,
    pub version: u32,
    pub name: String,
    /// `add` or `remove`.
    pub action: String,
    /// Regular expression of whole topic names (add only).
    pub topics: Option<String>,
    /// Records with a timestamp in `[from, to)` (unix ms; None: unbounded).
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub reason: String,
    pub at: i64,
    pub user: String,
}

/// A hold in force.
#[derive(Debug, Clone, Serialize)]
pub struct Hold {
    pub name: String,
    pub topics: String,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub reason: String,
    pub since: i64,
    pub by: String,
    #[serde(skip)]
    re: Option<Regex>,
}

impl Hold {
    /// Whether records of `topic` with timestamps in `[min, max]` fall under it.
    pub fn covers(&self, topic: &str, min: i64, max: i64) -> bool {
        self.re.as_ref().is_some_and(|re| re.is_match(topic))
            && self.from.is_none_or(|f| max >= f)
            && self.to.is_none_or(|t| min < t)
    }
}

/// Whether `name` can name a hold (it becomes part of object names).
fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
    {
        return Err(Error::Input(format!(
            "hold name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

fn event_key(at: i64, name: &str, action: &str) -> String {
    format!("{HOLDS_PREFIX}{at:013}-{name}-{action}.json")
}

/// Parses a hold event, naming the object when it is not one.
pub fn parse_event(key: &str, raw: &[u8]) -> Result<HoldEvent> {
    let e: HoldEvent = serde_json::from_slice(raw)
        .map_err(|e| Error::Damaged(format!("{key}: not a hold event: {e}")))?;
    if e.format != "haven-hold" || e.version != 1 {
        return Err(Error::Damaged(format!(
            "{key}: not a hold event of version 1"
        )));
    }
    Ok(e)
}

/// Every event, in the order written.
pub async fn events(repo: &Repository) -> Result<Vec<(String, HoldEvent)>> {
    let mut objs = repo.store().list(HOLDS_PREFIX).await?;
    objs.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = Vec::new();
    for o in objs {
        let raw = repo.store().get(&o.key).await?;
        out.push((o.key.clone(), parse_event(&o.key, &raw)?));
    }
    Ok(out)
}

/// The holds in force (the last event of each name is an `add`).
pub async fn in_force(repo: &Repository) -> Result<Vec<Hold>> {
    let mut last: BTreeMap<String, HoldEvent> = BTreeMap::new();
    for (_, e) in events(repo).await? {
        last.insert(e.name.clone(), e);
    }
    let mut out = Vec::new();
    let everything = Regex::new(".*").ok();
    for (name, e) in last {
        if e.action != "add" {
            continue;
        }
        let topics = e.topics.clone().unwrap_or_default();
        // A hold whose pattern no longer compiles still holds everything: fail closed.
        let re = Regex::new(&format!("^(?:{topics})$"))
            .ok()
            .or_else(|| everything.clone());
        out.push(Hold {
            name,
            topics,
            from: e.from,
            to: e.to,
            reason: e.reason,
            since: e.at,
            by: e.user,
            re,
        });
    }
    Ok(out)
}

/// Places a hold (audited `hold-add`); refuses a name already in force.
pub async fn add(
    repo: &Repository,
    name: &str,
    topics: &str,
    from: Option<i64>,
    to: Option<i64>,
    reason: &str,
) -> Result<String> {
    check_name(name)?;
    Regex::new(&format!("^(?:{topics})$")).map_err(|e| {
        Error::Input(format!(
            "--topics {topics:?} is not a regular expression: {e}"
        ))
    })?;
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(Error::Input(
                "--from must be before --to: the hold would cover no record".into(),
            ));
        }
    }
    if reason.trim().is_empty() {
        return Err(Error::Input(
            "--reason is required: say why (a case number, a request)".into(),
        ));
    }
    if in_force(repo).await?.iter().any(|h| h.name == name) {
        return Err(Error::Input(format!(
            "a hold named {name:?} is already in force: remove it first or choose another name"
        )));
    }
    write(
        repo,
        name,
        "add",
        Some(topics.to_string()),
        from,
        to,
        reason,
    )
    .await
}

/// Lifts a hold (audited `hold-remove`).
pub async fn remove(repo: &Repository, name: &str, reason: &str) -> Result<String> {
    check_name(name)?;
    if reason.trim().is_empty() {
        return Err(Error::Input(
            "--reason is required: say why the hold ends".into(),
        ));
    }
    if !in_force(repo).await?.iter().any(|h| h.name == name) {
        return Err(Error::Input(format!(
            "no hold named {name:?} is in force: `haven hold ls` lists them"
        )));
    }
    write(repo, name, "remove", None, None, None, reason).await
}

async fn write(
    repo: &Repository,
    name: &str,
    action: &str,
    topics: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    reason: &str,
) -> Result<String> {
    let at = chrono::Utc::now().timestamp_millis();
    let e = HoldEvent {
        format: "haven-hold".into(),
        version: 1,
        name: name.to_string(),
        action: action.to_string(),
        topics,
        from,
        to,
        reason: reason.to_string(),
        at,
        user: audit::current_user(),
    };
    let key = event_key(at, name, action);
    let body = serde_json::to_vec_pretty(&e).map_err(|e| Error::Task(e.to_string()))?;
    let details = serde_json::json!({
        "hold": name, "topics": e.topics, "from": from, "to": to, "reason": reason,
    });
    audit::put_recorded(repo, &key, body, &format!("hold-{action}"), None, details).await?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(topics: &str, from: Option<i64>, to: Option<i64>) -> Hold {
        Hold {
            name: "h".into(),
            topics: topics.into(),
            from,
            to,
            reason: "r".into(),
            since: 0,
            by: "u".into(),
            re: Regex::new(&format!("^(?:{topics})$")).ok(),
        }
    }

    #[test]
    fn a_hold_covers_overlapping_times_of_its_topics_only() {
        let h = hold("payments", Some(100), Some(200));
        assert!(h.covers("payments", 150, 160));
        assert!(h.covers("payments", 50, 100));
        assert!(h.covers("payments", 199, 300));
        assert!(!h.covers("payments", 200, 300));
        assert!(!h.covers("payments", 0, 99));
        assert!(!h.covers("payments-eu", 150, 160));
        assert!(hold("pay.*", None, None).covers("payments", 0, 1));
    }

    #[test]
    fn names_that_cannot_be_object_names_are_refused() {
        assert!(check_name("case-2026.17_b").is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
