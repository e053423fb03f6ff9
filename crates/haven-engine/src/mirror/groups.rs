//! Continuous consumer-group offset sync: every sync interval, each selected group's
//! committed offsets on the source are translated exactly through the partitions' offset
//! maps and committed on the target.
//!
//! Rules (each one avoids a known failure of offset-sync tools):
//! - A commit ahead of what is mirrored is not translated yet (it would skip records).
//! - Offsets on the target only move forward: a group that already consumed further on the
//!   target (it failed over) is never pulled back.
//! - A group with active members on the target is left alone: the broker refuses the
//!   commit and the refusal is reported (`GroupNotSynced`), never retried blindly.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haven_kafka::rdkafka::consumer::BaseConsumer;
use haven_kafka::ClusterConfig;
use regex::Regex;

use super::MirrorOptions;
use crate::blocking;
use crate::events::{Event, Observer};
use crate::offsets::OffsetMap;

/// An owned partition as the sync sees it.
#[derive(Debug, Clone)]
pub struct SyncPartition {
    pub topic: String,
    pub partition: i32,
    pub target_topic: String,
    pub map: OffsetMap,
    /// Every source record before this offset is on the target.
    pub mirrored_to: i64,
}

type Clients = HashMap<String, (BaseConsumer, BaseConsumer)>;

pub struct GroupSync {
    source: ClusterConfig,
    target: ClusterConfig,
    patterns: Vec<Regex>,
    /// Values that are valid group names (`ledger-svc`, `orders.consumer`): synced as
    /// names even where the source cannot list groups, and as patterns too.
    names: Vec<String>,
    /// Named groups already reported as having nothing to sync.
    reported: Arc<Mutex<std::collections::BTreeSet<String>>>,
    own_group: String,
    clients: Arc<Mutex<Clients>>,
}

impl GroupSync {
    pub fn new(opts: &MirrorOptions) -> Self {
        GroupSync {
            source: opts.source.clone(),
            target: opts.target.clone(),
            patterns: opts
                .groups
                .iter()
                .filter_map(|g| Regex::new(&format!("^(?:{g})$")).ok())
                .collect(),
            names: opts
                .groups
                .iter()
                .filter(|g| is_group_name(g))
                .cloned()
                .collect(),
            reported: Default::default(),
            own_group: format!("haven-mirror-{}", opts.name),
            clients: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// One sync round; returns the number of group commits made on the target.
    pub async fn run(&mut self, parts: Vec<SyncPartition>, observer: &dyn Observer) -> u64 {
        if parts.is_empty() {
            return 0;
        }
        let (source, target) = (self.source.clone(), self.target.clone());
        let (patterns, names, own) = (
            self.patterns.clone(),
            self.names.clone(),
            self.own_group.clone(),
        );
        let clients = self.clients.clone();
        let reported = self.reported.clone();
        let res = blocking(move || {
            let mut events = Vec::new();
            let mut commits = 0;
            let inspector = source.inspector("haven-inspector")?;
            let mut groups: Vec<String> =
                match haven_kafka::list_groups(&inspector, Duration::from_secs(5)) {
                    Ok(all) => all
                        .into_iter()
                        .filter(|g| *g != own && patterns.iter().any(|p| p.is_match(g)))
                        .collect(),
                    Err(_) => Vec::new(),
                };
            for n in &names {
                if !groups.contains(n) {
                    groups.push(n.clone());
                }
            }
            let mut clients = clients
                .lock()
                .map_err(|_| crate::Error::Task("lock poisoned".into()))?;
            for group in groups {
                if !clients.contains_key(&group) {
                    let pair = (source.inspector(&group)?, target.inspector(&group)?);
                    clients.insert(group.clone(), pair);
                }
                let (src, tgt) = &clients[&group];
                match sync_group(src, tgt, &parts) {
                    Ok(Some(n)) => {
                        if let Ok(mut r) = reported.lock() {
                            r.remove(&group);
                        }
                        if n > 0 {
                            commits += 1;
                            events.push(Event::GroupSynced {
                                group,
                                partitions: n,
                            });
                        }
                    }
                    Ok(None) => {
                        let first = reported
                            .lock()
                            .map(|mut r| r.insert(group.clone()))
                            .unwrap_or(false);
                        if first && names.contains(&group) {
                            events.push(Event::GroupNeverSynced { group });
                        }
                    }
                    Err(e) => events.push(Event::GroupNotSynced {
                        group,
                        reason: e.to_string(),
                    }),
                }
            }
            Ok((events, commits))
        })
        .await;
        match res {
            Ok((events, commits)) => {
                for e in &events {
                    observer.event(e);
                }
                commits
            }
            Err(e) => {
                observer.event(&Event::Retrying {
                    what: "sync consumer-group offsets".into(),
                    error: e.to_string(),
                });
                0
            }
        }
    }
}

/// Whether a `--groups` value is a plain group name (Kafka's legal characters), to be
/// synced by name as well as matched as a pattern.
pub fn is_group_name(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 249
        && g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Translates and commits one group's offsets (blocking); returns the partitions moved,
/// or None when the group has no commit on the mirrored partitions of the source.
fn sync_group(
    src: &BaseConsumer,
    tgt: &BaseConsumer,
    parts: &[SyncPartition],
) -> haven_kafka::Result<Option<usize>> {
    let timeout = Duration::from_secs(5);
    let source_parts: Vec<(String, i32)> = parts
        .iter()
        .map(|p| (p.topic.clone(), p.partition))
        .collect();
    let committed = haven_kafka::committed(src, &source_parts, timeout)?;
    if committed.is_empty() {
        return Ok(None);
    }
    let target_parts: Vec<(String, i32)> = parts
        .iter()
        .map(|p| (p.target_topic.clone(), p.partition))
        .collect();
    let on_target: BTreeMap<(String, i32), i64> =
        haven_kafka::committed(tgt, &target_parts, timeout)?
            .into_iter()
            .map(|(t, p, o)| ((t, p), o))
            .collect();
    let mut moves = Vec::new();
    for (t, p, c) in committed {
        let Some(sp) = parts.iter().find(|x| x.topic == t && x.partition == p) else {
            continue;
        };
        let Some(to) = sp.map.translate_committed(c, sp.mirrored_to) else {
            continue;
        };
        let current = on_target.get(&(sp.target_topic.clone(), p)).copied();
        if current.is_none_or(|cur| cur < to) {
            moves.push((sp.target_topic.clone(), p, to));
        }
    }
    if !moves.is_empty() {
        haven_kafka::commit_as(tgt, &moves)?;
    }
    Ok(Some(moves.len()))
}

#[cfg(test)]
mod tests {
    use super::is_group_name;

    #[test]
    fn group_names_with_dashes_and_dots_are_names() {
        for g in ["billing", "ledger-svc", "orders.consumer", "a_b-c.d"] {
            assert!(is_group_name(g), "{g}");
        }
        for g in ["orders.*", "(a|b)", "", "x y", "^billing$"] {
            assert!(!is_group_name(g), "{g}");
        }
    }
}
