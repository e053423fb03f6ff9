//! `haven failback reconcile`: a verdict for every captured change against the new
//! primary's current state, what the policy makes of it, and (`--apply`) the accepted
//! ones written to the new primary exactly once across re-runs.
//!
//! Postgres, per row change: an insert is `already present` when the row is there as
//! captured, `re-appliable` when its key is free, a `conflict` otherwise; an update or a
//! delete is `already present` when the row already looks as it would after it (gone,
//! for a delete), `re-appliable` when the row is untouched since the cut (equal to the
//! captured old image when the table has `REPLICA IDENTITY FULL`, else last written
//! before the cut by `track_commit_timestamp`), a `conflict` otherwise (fail closed when
//! neither can tell). A transaction takes its worst change's verdict; a later captured
//! change of a row an earlier captured transaction touched follows that transaction.
//! Re-applied transactions are marked in `haven.reconciled` in the same transaction.
//!
//! Kafka, per record: `already present` when the new primary holds a record whose
//! `haven-reconciled` header names its coordinates, a `conflict` when the new primary
//! wrote a record with the same key since the cut, else `re-appliable`; re-applied
//! records are produced to the same partition with that header.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use haven_kafka::rdkafka::message::{Header, Message, OwnedHeaders};
use haven_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use haven_pg::divergence::{Column, Op, RowChange, Transaction};
use serde::{Deserialize, Serialize};

use super::{Capture, PartitionCapture, Policy, RECONCILE_ACTION};
use crate::config::Config;
use crate::failover::config::{pg_error, DatabaseSection};
use crate::mirror::{position, provenance, MirrorOptions};
use crate::read::json_bytes;
use crate::repo::Repository;
use crate::{blocking, Error, Result};

/// The header a re-applied record carries: its coordinates on the old primary.
pub const RECONCILED_HEADER: &str = "haven-reconciled";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    AlreadyPresent,
    Reappliable,
    Conflict,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Already on the new primary: nothing to do.
    Present,
    /// Written to the new primary by this run.
    Applied,
    /// Written by an earlier run.
    AppliedEarlier,
    /// The policy accepts it: `--apply` writes it.
    WouldApply,
    /// Left for a person (manual policy, or a conflict).
    Review,
    /// The new primary's state wins (keep-current).
    KeptCurrent,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChangeItem {
    pub table: String,
    pub op: Op,
    /// The row's key, `col=value` joined.
    pub key: String,
    pub verdict: Verdict,
    pub why: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TransactionItem {
    pub database: String,
    pub peer: String,
    pub xid: u64,
    pub commit_lsn: String,
    pub committed_at: String,
    pub verdict: Verdict,
    pub policy: Policy,
    pub outcome: Outcome,
    pub changes: Vec<ChangeItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordItem {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: serde_json::Value,
    pub verdict: Verdict,
    pub policy: Policy,
    pub outcome: Outcome,
    pub why: String,
}

/// What a reconciliation found and did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReconcileReport {
    pub capture: String,
    pub apply: bool,
    pub at: String,
    pub operator: String,
    pub transactions: Vec<TransactionItem>,
    pub records: Vec<RecordItem>,
    /// Verdict -> transactions + records.
    pub verdicts: BTreeMap<Verdict, u64>,
    /// Outcome -> transactions + records.
    pub outcomes: BTreeMap<Outcome, u64>,
}

impl ReconcileReport {
    /// Markdown for a person: counts, then every transaction and record.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Failback reconciliation of {}\n\n{} by {} at {}.\n\n",
            self.capture,
            if self.apply { "Applied" } else { "Dry run" },
            self.operator,
            self.at
        );
        s.push_str("| verdict | count |\n|---|---|\n");
        for (v, n) in &self.verdicts {
            s.push_str(&format!("| {} | {n} |\n", name(v)));
        }
        s.push_str("\n| outcome | count |\n|---|---|\n");
        for (o, n) in &self.outcomes {
            s.push_str(&format!("| {} | {n} |\n", name(o)));
        }
        if !self.transactions.is_empty() {
            s.push_str("\n## Postgres transactions\n\n| database | xid | committed | verdict | outcome | changes |\n|---|---|---|---|---|---|\n");
            for t in &self.transactions {
                let changes: Vec<String> = t
                    .changes
                    .iter()
                    .take(5)
                    .map(|c| format!("{:?} {} ({}): {}", c.op, c.table, c.key, c.why))
                    .collect();
                let more = t.changes.len().saturating_sub(5);
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {}{} |\n",
                    t.database,
                    t.xid,
                    t.committed_at,
                    name(&t.verdict),
                    name(&t.outcome),
                    changes.join("<br>").replace('|', "\\|"),
                    if more > 0 {
                        format!("<br>... and {more} more")
                    } else {
                        String::new()
                    }
                ));
            }
        }
        if !self.records.is_empty() {
            s.push_str("\n## Kafka records\n\n| topic | partition | offset | key | verdict | outcome | why |\n|---|---|---|---|---|---|---|\n");
            for r in &self.records {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} |\n",
                    r.topic,
                    r.partition,
                    r.offset,
                    r.key.to_string().replace('|', "\\|"),
                    name(&r.verdict),
                    name(&r.outcome),
                    r.why
                ));
            }
        }
        s
    }
}

fn name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn key_text(cols: &[Column]) -> String {
    cols.iter()
        .map(|c| format!("{}={}", c.name, c.value.as_deref().unwrap_or("NULL")))
        .collect::<Vec<_>>()
        .join(",")
}

/// What the policy makes of a verdict (without `--apply`, an accepted change would apply).
pub fn outcome(verdict: Verdict, policy: Policy, apply: bool) -> Outcome {
    match (verdict, policy) {
        (Verdict::AlreadyPresent, _) => Outcome::Present,
        (_, Policy::KeepCurrent) => Outcome::KeptCurrent,
        (Verdict::Reappliable, Policy::ReapplyIfUntouched) if apply => Outcome::Applied,
        (Verdict::Reappliable, Policy::ReapplyIfUntouched) => Outcome::WouldApply,
        _ => Outcome::Review,
    }
}

/// Whether an earlier `--apply` of this capture finished (its report is stored).
pub async fn applied_before(repo: &Repository, capture: &str) -> Result<Option<String>> {
    Ok(crate::recovery::audit::list(repo)
        .await?
        .into_iter()
        .find(|(_, e)| {
            e.action == RECONCILE_ACTION
                && e.details["capture"].as_str() == Some(capture)
                && e.details["apply"].as_bool() == Some(true)
        })
        .and_then(|(_, e)| e.details["object"].as_str().map(str::to_string)))
}

/// Reconciles a stored capture against the new primary; with `apply`, writes what the
/// policies accept. The report is stored beside the capture (create-only, audited).
pub async fn reconcile(
    cfg: &Config,
    repo: &Repository,
    capture: &Capture,
    apply: bool,
) -> Result<(ReconcileReport, String)> {
    if apply {
        if let Some(report) = applied_before(repo, &capture.id).await? {
            return Err(Error::Input(format!(
                "capture {} was already applied (report {report}); `haven failback reconcile` \
                 without --apply shows where each change stands",
                capture.id
            )));
        }
    }
    let section = cfg.failback.clone().unwrap_or_default();
    let mut transactions = Vec::new();
    for d in &capture.databases {
        let peer: &DatabaseSection = cfg.databases.get(&d.peer).ok_or_else(|| {
            Error::Input(format!(
                "database {:?} of the capture is not in the config any more",
                d.peer
            ))
        })?;
        let target = peer.connect(&d.peer, Duration::from_secs(30)).await?;
        // Keys touched by earlier captured transactions, and their verdict.
        let mut touched: HashMap<(String, String), Verdict> = HashMap::new();
        for t in &d.divergence.transactions {
            let item = transaction(&target, capture, d, t, &section, apply, &mut touched).await?;
            transactions.push(item);
        }
    }
    let mut records = Vec::new();
    for k in &capture.kafka {
        let opts = MirrorOptions::from_config(cfg, &k.mirror)?;
        for p in &k.partitions {
            records.extend(partition(&opts, &k.source_cluster, p, &section, apply).await?);
        }
    }
    let mut verdicts = BTreeMap::new();
    let mut outcomes = BTreeMap::new();
    for (v, o) in transactions
        .iter()
        .map(|t| (t.verdict, t.outcome))
        .chain(records.iter().map(|r| (r.verdict, r.outcome)))
    {
        *verdicts.entry(v).or_default() += 1;
        *outcomes.entry(o).or_default() += 1;
    }
    let now = chrono::Utc::now();
    let report = ReconcileReport {
        capture: capture.id.clone(),
        apply,
        at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        operator: crate::recovery::audit::current_user(),
        transactions,
        records,
        verdicts,
        outcomes,
    };
    let base = format!(
        "{}reconcile/{}/{}",
        super::PREFIX,
        capture.id,
        now.format("%Y%m%dT%H%M%S%3fZ")
    );
    repo.store()
        .put_new(&format!("{base}.md"), bytes::Bytes::from(report.markdown()))
        .await?;
    let key = format!("{base}.json");
    let body = serde_json::to_vec_pretty(&report).map_err(|e| Error::Task(e.to_string()))?;
    crate::recovery::audit::put_recorded(
        repo,
        &key,
        body,
        RECONCILE_ACTION,
        Some(capture.epoch),
        serde_json::json!({
            "capture": capture.id,
            "apply": apply,
            "applied": report.outcomes.get(&Outcome::Applied).copied().unwrap_or(0),
            "review": report.outcomes.get(&Outcome::Review).copied().unwrap_or(0),
        }),
    )
    .await?;
    Ok((report, key))
}

async fn transaction(
    target: &haven_pg::Pg,
    capture: &Capture,
    d: &super::DatabaseCapture,
    t: &Transaction,
    section: &super::FailbackSection,
    apply: bool,
    touched: &mut HashMap<(String, String), Verdict>,
) -> Result<TransactionItem> {
    let policy = t
        .changes
        .iter()
        .map(|c| section.table_policy(&c.qualified()))
        .reduce(|a, b| if a == b { a } else { Policy::Manual })
        .unwrap_or(section.policy);
    let mut item = TransactionItem {
        database: d.database.clone(),
        peer: d.peer.clone(),
        xid: t.xid,
        commit_lsn: t.commit_lsn.clone(),
        committed_at: t.committed_at.clone(),
        verdict: Verdict::AlreadyPresent,
        policy,
        outcome: Outcome::Present,
        changes: vec![],
    };
    if target
        .reconciled(&capture.id, t.xid)
        .await
        .map_err(pg_error)?
    {
        item.verdict = Verdict::Reappliable;
        item.outcome = Outcome::AppliedEarlier;
        item.changes = t
            .changes
            .iter()
            .map(|c| ChangeItem {
                table: c.qualified(),
                op: c.op,
                key: key_text(&c.key()),
                verdict: Verdict::Reappliable,
                why: "re-applied by an earlier run".into(),
            })
            .collect();
        return Ok(item);
    }
    let mut rows_touched = Vec::new();
    for c in &t.changes {
        let row = (c.qualified(), key_text(&c.key()));
        let (verdict, why) = match touched.get(&row) {
            Some(v @ (Verdict::Reappliable | Verdict::Conflict)) => (
                *v,
                "follows an earlier captured transaction on this row".to_string(),
            ),
            _ => change(target, c, d.cut.at_ms).await?,
        };
        for k in [Some(c.key()), c.new_key()].into_iter().flatten() {
            touched.insert((c.qualified(), key_text(&k)), verdict);
            rows_touched.push((c.qualified(), key_text(&k)));
        }
        item.verdict = item.verdict.max(verdict);
        item.changes.push(ChangeItem {
            table: row.0,
            op: c.op,
            key: row.1,
            verdict,
            why,
        });
    }
    // Later captured changes of these rows stand or fall with this transaction (a row
    // its conflicting insert would have created is not there to update).
    for row in rows_touched {
        touched.insert(row, item.verdict);
    }
    item.outcome = outcome(item.verdict, policy, apply);
    if item.outcome == Outcome::Applied {
        match target.reapply(&capture.id, t).await {
            Ok(true) => {}
            Ok(false) => item.outcome = Outcome::AppliedEarlier,
            Err(haven_pg::PgError::Refused { message, .. }) => {
                item.verdict = Verdict::Conflict;
                item.outcome = Outcome::Review;
                if let Some(c) = item.changes.first_mut() {
                    c.why = format!("changed while reconciling: {message}");
                }
            }
            Err(e) => return Err(pg_error(e)),
        }
    }
    Ok(item)
}

/// The verdict of one row change against the target's current state.
async fn change(target: &haven_pg::Pg, c: &RowChange, cut_ms: i64) -> Result<(Verdict, String)> {
    let state = |key: Vec<Column>, image: Vec<Column>| async move {
        target
            .row_state(&c.schema, &c.table, &key, &image)
            .await
            .map_err(pg_error)
    };
    let untouched = |s: &haven_pg::divergence::RowState| -> (Verdict, String) {
        if c.full_old_image() {
            if s.matches {
                (
                    Verdict::Reappliable,
                    "the row is as it was at the cut".into(),
                )
            } else {
                (
                    Verdict::Conflict,
                    "the row changed on the new primary since the cut".into(),
                )
            }
        } else {
            match s.written_ms {
                Some(ms) if ms <= cut_ms => (
                    Verdict::Reappliable,
                    "the row was last written before the cut".into(),
                ),
                Some(_) => (
                    Verdict::Conflict,
                    "the row was written on the new primary since the cut".into(),
                ),
                None => (
                    Verdict::Conflict,
                    "cannot tell whether the row changed since the cut (no whole old image, \
                     no commit timestamp): review it"
                        .into(),
                ),
            }
        }
    };
    Ok(match c.op {
        Op::Insert => {
            let s = state(c.key(), c.new.clone()).await?;
            if s.found > 0 && s.matches {
                (
                    Verdict::AlreadyPresent,
                    "the row is there as captured".into(),
                )
            } else if s.found == 0 {
                (Verdict::Reappliable, "the key is free".into())
            } else {
                (
                    Verdict::Conflict,
                    "another row holds this key on the new primary".into(),
                )
            }
        }
        Op::Update => {
            let after = state(c.new_key().unwrap_or_default(), c.new.clone()).await?;
            if after.found > 0 && after.matches {
                (
                    Verdict::AlreadyPresent,
                    "the row already looks as after this update".into(),
                )
            } else {
                let before = state(c.key(), c.old.clone()).await?;
                if before.found == 0 {
                    (
                        Verdict::Conflict,
                        "the row is gone on the new primary".into(),
                    )
                } else {
                    untouched(&before)
                }
            }
        }
        Op::Delete => {
            let before = state(c.key(), c.old.clone()).await?;
            if before.found == 0 {
                (Verdict::AlreadyPresent, "the row is already gone".into())
            } else {
                untouched(&before)
            }
        }
    })
}

/// Verdicts (and, accepted, re-application) of one partition's captured records.
async fn partition(
    opts: &MirrorOptions,
    source_cluster: &str,
    p: &PartitionCapture,
    section: &super::FailbackSection,
    apply: bool,
) -> Result<Vec<RecordItem>> {
    if p.records.is_empty() {
        return Ok(vec![]);
    }
    // What the new primary wrote to the partition since the cut: re-applied records
    // (by their coordinates) and the keys of its own records.
    let (present, keys) = {
        let opts = opts.clone();
        let (topic, partition, from) = (p.target_topic.clone(), p.partition, p.target_next);
        blocking(move || {
            let inspector = opts.target.inspector("haven-inspector")?;
            let (_, high) =
                haven_kafka::watermarks(&inspector, &topic, partition, Duration::from_secs(10))?;
            let mut present = HashSet::new();
            let mut keys = HashSet::new();
            haven_kafka::scan(
                &opts.target,
                &topic,
                partition,
                from,
                high,
                position::STALL,
                |m| {
                    if let Some(c) = position::header(m, RECONCILED_HEADER) {
                        present.insert(c.to_vec());
                    } else if position::header(m, provenance::SOURCE_HEADER).is_none() {
                        if let Some(k) = m.key() {
                            keys.insert(k.to_vec());
                        }
                    }
                    true
                },
            )?;
            Ok((present, keys))
        })
        .await?
    };
    let policy = section.topic_policy(&p.topic);
    let producer = if apply {
        Some(opts.target.producer()?)
    } else {
        None
    };
    let mut out = Vec::new();
    for r in &p.records {
        let coords = provenance::encode(source_cluster, &p.topic, p.partition, r.offset);
        let key = json_bytes(&r.key)?;
        let (verdict, why) = if present.contains(coords.as_bytes()) {
            (
                Verdict::AlreadyPresent,
                "re-applied earlier (haven-reconciled header)".to_string(),
            )
        } else if key.as_ref().is_some_and(|k| keys.contains(k)) {
            (
                Verdict::Conflict,
                "the new primary wrote this key since the cut".into(),
            )
        } else {
            (
                Verdict::Reappliable,
                "no record with this key since the cut".into(),
            )
        };
        let mut outcome = outcome(verdict, policy, apply);
        if verdict == Verdict::AlreadyPresent {
            outcome = Outcome::AppliedEarlier;
        }
        if outcome == Outcome::Applied {
            if let Some(producer) = &producer {
                produce(producer, p, r, &coords).await?;
            }
        }
        out.push(RecordItem {
            topic: p.topic.clone(),
            partition: p.partition,
            offset: r.offset,
            key: r.key.clone(),
            verdict,
            policy,
            outcome,
            why,
        });
    }
    Ok(out)
}

async fn produce(
    producer: &FutureProducer,
    p: &PartitionCapture,
    r: &super::CapturedRecord,
    coords: &str,
) -> Result<()> {
    let key = json_bytes(&r.key)?;
    let value = json_bytes(&r.value)?;
    let mut values = Vec::new();
    for (name, v) in &r.headers {
        values.push((name.as_str(), json_bytes(v)?));
    }
    let mut headers = OwnedHeaders::new_with_capacity(values.len() + 1);
    for (name, v) in &values {
        headers = headers.insert(Header {
            key: name,
            value: v.as_deref(),
        });
    }
    headers = headers.insert(Header {
        key: RECONCILED_HEADER,
        value: Some(coords.as_bytes()),
    });
    let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&p.target_topic)
        .partition(p.partition)
        .timestamp(r.timestamp)
        .headers(headers);
    if let Some(k) = key.as_deref() {
        fr = fr.key(k);
    }
    if let Some(v) = value.as_deref() {
        fr = fr.payload(v);
    }
    producer
        .send(fr, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| {
            Error::Unreachable(format!(
                "re-producing {coords} to {}/{}: {e}",
                p.target_topic, p.partition
            ))
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_decide_outcomes() {
        use Outcome::*;
        use Policy::*;
        use Verdict::*;
        assert_eq!(outcome(AlreadyPresent, ReapplyIfUntouched, true), Present);
        assert_eq!(outcome(Reappliable, ReapplyIfUntouched, true), Applied);
        assert_eq!(outcome(Reappliable, ReapplyIfUntouched, false), WouldApply);
        assert_eq!(outcome(Reappliable, Manual, true), Review);
        assert_eq!(outcome(Conflict, ReapplyIfUntouched, true), Review);
        assert_eq!(outcome(Conflict, KeepCurrent, true), KeptCurrent);
        assert_eq!(outcome(Reappliable, KeepCurrent, true), KeptCurrent);
    }
}
