//! Failback: after an unplanned failover, what the old primary wrote that never crossed
//! is captured before anything on it is changed, reconciled against the new primary by
//! policy (or left for a person), and then the old region is brought back.
//!
//! - `capture`: the divergence (Postgres transactions past the cut EU recorded, Kafka
//!   records past what EU's mirror map holds), stored create-only in the repository with
//!   an audit entry holding its SHA-256;
//! - `reconcile`: a verdict per captured change (`already present`, `re-appliable`,
//!   `conflict`), the policy's outcome, and `--apply` (exactly once across re-runs);
//! - `reseed`: the old region's databases emptied and subscribed to the active region's
//!   again, and its mirrored topics rebuilt as exact copies of the active region's (only
//!   once a verified capture exists);
//! - `status`: where a failback stands and the next step.
//!
//! The invariant: nothing the old primary wrote is discarded before it is captured and
//! the capture verified (read back and checked against its audit entry).

pub mod capture;
pub mod reconcile;
pub mod reseed;
pub mod status;
pub mod topics;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::repo::Repository;
use crate::{Error, Result};

/// What happens to a captured change that could be re-applied, per table or topic.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// A report to review; nothing is written (the default).
    #[default]
    Manual,
    /// Re-applied when the row (or key) is untouched on the new primary since the cut;
    /// a conflict is left for review.
    ReapplyIfUntouched,
    /// The new primary's state wins: nothing is re-applied.
    KeepCurrent,
}

/// `[failback]`: policies per table and topic, and the columns summed as money.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FailbackSection {
    /// The policy of tables and topics not named below.
    #[serde(default)]
    pub policy: Policy,
    /// `"schema.table" = "reapply-if-untouched"`.
    #[serde(default)]
    pub tables: BTreeMap<String, Policy>,
    /// Topic regular expression (whole name) = policy; the first match wins.
    #[serde(default)]
    pub topics: BTreeMap<String, Policy>,
    /// Columns summed in a capture's summary: `"schema.table.column"`.
    #[serde(default)]
    pub money: Vec<String>,
}

impl FailbackSection {
    pub fn table_policy(&self, qualified: &str) -> Policy {
        self.tables.get(qualified).copied().unwrap_or(self.policy)
    }

    pub fn topic_policy(&self, topic: &str) -> Policy {
        self.topics
            .iter()
            .find(|(re, _)| {
                regex::Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(topic))
            })
            .map(|(_, p)| *p)
            .unwrap_or(self.policy)
    }

    /// Errors name the key and the fix.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        for re in self.topics.keys() {
            if let Err(e) = regex::Regex::new(re) {
                return Err((
                    format!("failback.topics.{re:?}"),
                    format!("not a regular expression: {e}"),
                ));
            }
        }
        for m in &self.money {
            if m.split('.').count() != 3 {
                return Err((
                    "failback.money".into(),
                    format!("{m:?}: name a column as \"schema.table.column\""),
                ));
            }
        }
        Ok(())
    }
}

/// One database's divergence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatabaseCapture {
    /// The old primary's database and its peer in the new primary's region.
    pub database: String,
    pub peer: String,
    pub cut: haven_pg::divergence::Cut,
    pub divergence: haven_pg::divergence::Divergence,
}

/// One captured Kafka record, with its coordinates on the old primary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CapturedRecord {
    pub offset: i64,
    pub timestamp: i64,
    /// [`crate::read::bytes_json`] encodings (exact; null stays null).
    pub key: serde_json::Value,
    pub value: serde_json::Value,
    pub headers: Vec<(String, serde_json::Value)>,
}

/// One partition's divergence: the old primary's records past what the new one holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartitionCapture {
    pub topic: String,
    pub partition: i32,
    pub target_topic: String,
    /// Every record before this offset is on the new primary.
    pub mirrored_to: i64,
    /// The target offset where the new primary's own records begin.
    pub target_next: i64,
    /// The old primary's high watermark when captured.
    pub high: i64,
    pub records: Vec<CapturedRecord>,
    /// Records in the range that came from the new primary itself (not divergence).
    pub skipped_origin: u64,
}

/// One mirror's divergence (old primary's cluster -> new primary's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KafkaCapture {
    pub mirror: String,
    pub source_cluster: String,
    pub target_cluster: String,
    pub partitions: Vec<PartitionCapture>,
}

/// Counts and sums of a capture.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub transactions: u64,
    pub row_changes: u64,
    /// `schema.table` -> changes.
    pub tables: BTreeMap<String, u64>,
    /// `schema.table.column` -> exact decimal sum over inserted rows minus deleted rows,
    /// plus the change of updated rows (new - old).
    pub money: BTreeMap<String, String>,
    /// `schema.table.column` -> changes whose amount could not be read (an update or
    /// delete captured without the whole old row, a value that is not a number, or a sum
    /// past 38 digits).
    #[serde(default)]
    pub money_unknown: BTreeMap<String, u64>,
    pub records: u64,
    /// Topic -> records.
    pub topics: BTreeMap<String, u64>,
    /// First and last commit or record time (ms since the Unix epoch).
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

/// Everything the old primary wrote that the new one never got.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Capture {
    pub id: String,
    /// The old primary's region, and the region active when captured.
    pub region: String,
    pub active: String,
    /// The epoch of the active region's tenure.
    pub epoch: u64,
    pub captured_at: String,
    pub operator: String,
    pub databases: Vec<DatabaseCapture>,
    pub kafka: Vec<KafkaCapture>,
    pub summary: Summary,
}

/// The databases of `region` whose peer is in `active`, with that peer: what a failback
/// captures, checks and re-seeds (name, section, peer's name, peer's section).
pub(crate) fn pairs<'a>(
    cfg: &'a crate::config::Config,
    region: &str,
    active: &str,
) -> Vec<(
    &'a String,
    &'a crate::failover::config::DatabaseSection,
    &'a String,
    &'a crate::failover::config::DatabaseSection,
)> {
    cfg.databases
        .iter()
        .filter(|(_, d)| d.region == region)
        .filter_map(|(name, d)| {
            let (peer_name, peer) = crate::failover::config::peer_of(cfg, name)?;
            (peer.region == active).then_some((name, d, peer_name, peer))
        })
        .collect()
}

/// Whether `cut` is the one a planned switchover made to reach the current `epoch` (a
/// switchover detaches before it takes the lease, so its cut is at epoch - 1): then
/// nothing diverged and there is nothing to fail back.
pub(crate) fn switched_over(cut: &haven_pg::divergence::Cut, epoch: u64) -> bool {
    cut.planned && cut.epoch + 1 >= epoch
}

/// Runs `work` as step `step` of `total` of `action`, telling `observer` when it starts
/// and when it is done (the CLI prints them as progress).
pub(crate) async fn step<T>(
    observer: &dyn crate::events::Observer,
    action: &str,
    (step, total): (usize, usize),
    what: String,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    use crate::events::Event;
    observer.event(&Event::StepStarted {
        action: action.into(),
        step,
        total,
        what: what.clone(),
    });
    let started = std::time::Instant::now();
    let out = work.await?;
    observer.event(&Event::StepDone {
        action: action.into(),
        step,
        total,
        what,
        ms: started.elapsed().as_millis() as u64,
    });
    Ok(out)
}

/// Where captures (`failback/ID.json`) and reconciliation reports
/// (`failback/reconcile/ID/TIME.{json,md}`) live in a repository.
pub const PREFIX: &str = "failback/";
pub const CAPTURE_ACTION: &str = "failback-capture";
pub const RECONCILE_ACTION: &str = "failback-reconcile";

pub fn capture_key(id: &str) -> String {
    format!("{PREFIX}{id}.json")
}

/// Stores a capture and verifies it by reading it back.
pub async fn store(repo: &Repository, c: &Capture) -> Result<String> {
    let body = serde_json::to_vec_pretty(c).map_err(|e| Error::Task(e.to_string()))?;
    let key = capture_key(&c.id);
    crate::recovery::audit::put_recorded(
        repo,
        &key,
        body,
        CAPTURE_ACTION,
        Some(c.epoch),
        serde_json::json!({
            "id": c.id,
            "region": c.region,
            "transactions": c.summary.transactions,
            "records": c.summary.records,
        }),
    )
    .await?;
    let back = load(repo, &c.id).await?;
    if back != *c {
        return Err(Error::Damaged(format!(
            "{key}: the capture read back differs from what was written"
        )));
    }
    Ok(key)
}

/// A stored capture, checked against its audit entry.
pub async fn load(repo: &Repository, id: &str) -> Result<Capture> {
    let key = capture_key(id);
    let raw = crate::recovery::audit::get_recorded(repo, &key, CAPTURE_ACTION).await?;
    serde_json::from_slice(&raw).map_err(|e| Error::Damaged(format!("{key}: not a capture: {e}")))
}

/// The ids of the stored captures, oldest first (ids sort by time).
pub async fn captures(repo: &Repository) -> Result<Vec<String>> {
    let mut ids: Vec<String> = repo
        .store()
        .list(PREFIX)
        .await?
        .into_iter()
        .filter_map(|o| {
            let name = o.key.strip_prefix(PREFIX)?.strip_suffix(".json")?;
            (name.starts_with("capture-") && !name.contains('/')).then(|| name.to_string())
        })
        .collect();
    ids.sort();
    Ok(ids)
}

/// The summary of a capture's contents.
pub fn summarize(
    databases: &[DatabaseCapture],
    kafka: &[KafkaCapture],
    money: &[String],
) -> Summary {
    use haven_pg::divergence::Op;
    let mut s = Summary::default();
    let mut time = |ms: i64| {
        s.first_ms = Some(s.first_ms.map_or(ms, |f| f.min(ms)));
        s.last_ms = Some(s.last_ms.map_or(ms, |l| l.max(ms)));
    };
    let mut tables: BTreeMap<String, u64> = BTreeMap::new();
    let mut sums: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut unknown: BTreeMap<String, u64> = BTreeMap::new();
    let (mut txns, mut changes) = (0u64, 0u64);
    let num = |cols: &[haven_pg::divergence::Column], name: &str| -> Option<Decimal> {
        cols.iter()
            .find(|c| c.name == name)
            .and_then(|c| c.value.as_deref())
            .and_then(Decimal::parse)
    };
    for d in databases {
        for t in &d.divergence.transactions {
            txns += 1;
            if let Some(ms) = crate::time::parse_pg_timestamp_ms(&t.committed_at) {
                time(ms);
            }
            for c in &t.changes {
                changes += 1;
                *tables.entry(c.qualified()).or_default() += 1;
                for m in money {
                    let Some(col) = m.strip_prefix(&format!("{}.", c.qualified())) else {
                        continue;
                    };
                    let delta = match c.op {
                        Op::Insert => num(&c.new, col),
                        Op::Delete => num(&c.old, col).map(Decimal::negate),
                        Op::Update => num(&c.new, col)
                            .zip(num(&c.old, col))
                            .and_then(|(n, o)| n.checked_add(o.negate())),
                    };
                    let sum = sums.entry(m.clone()).or_default();
                    match delta.and_then(|d| sum.checked_add(d)) {
                        Some(total) => *sum = total,
                        None => *unknown.entry(m.clone()).or_default() += 1,
                    }
                }
            }
        }
    }
    let mut topics: BTreeMap<String, u64> = BTreeMap::new();
    let mut records = 0u64;
    for k in kafka {
        for p in &k.partitions {
            records += p.records.len() as u64;
            if !p.records.is_empty() {
                *topics.entry(p.topic.clone()).or_default() += p.records.len() as u64;
            }
            for r in &p.records {
                time(r.timestamp);
            }
        }
    }
    s.transactions = txns;
    s.row_changes = changes;
    s.tables = tables;
    s.money = sums.into_iter().map(|(k, v)| (k, v.to_string())).collect();
    s.money_unknown = unknown;
    s.records = records;
    s.topics = topics;
    s
}

/// An exact decimal (Postgres' text form of a number): `units` / 10^`scale`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decimal {
    units: i128,
    scale: u32,
}

impl Decimal {
    /// `-12.340`, `7`, `+0.5`; None for anything else (NaN, exponents, too many digits).
    pub fn parse(text: &str) -> Option<Decimal> {
        let t = text.trim();
        let (neg, t) = match t.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
            || int.len() + frac.len() > 36
        {
            return None;
        }
        let units: i128 = format!("{int}{frac}").parse().ok()?;
        Some(Decimal {
            units: if neg { -units } else { units },
            scale: frac.len() as u32,
        })
    }

    fn rescale(self, scale: u32) -> Option<Decimal> {
        Some(Decimal {
            units: self
                .units
                .checked_mul(10i128.checked_pow(scale - self.scale)?)?,
            scale,
        })
    }

    /// The exact sum; None when it does not fit (38 digits).
    pub fn checked_add(self, other: Decimal) -> Option<Decimal> {
        let scale = self.scale.max(other.scale);
        let (a, b) = (self.rescale(scale)?, other.rescale(scale)?);
        Some(Decimal {
            units: a.units.checked_add(b.units)?,
            scale,
        })
    }

    pub fn negate(self) -> Decimal {
        Decimal {
            units: -self.units,
            scale: self.scale,
        }
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.units.unsigned_abs().to_string();
        let sign = if self.units < 0 { "-" } else { "" };
        let scale = self.scale as usize;
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_sums_are_exact() {
        let d = |t: &str| Decimal::parse(t).unwrap();
        let sum = |a: &str, b: &str| d(a).checked_add(d(b)).unwrap().to_string();
        assert_eq!(sum("100.50", "-0.25"), "100.25");
        assert_eq!(sum("0.1", "0.2"), "0.3");
        assert_eq!(d("-0.05").to_string(), "-0.05");
        assert_eq!(sum("7", "0.001"), "7.001");
        assert_eq!(
            d("5").negate().checked_add(d("2")).unwrap().to_string(),
            "-3"
        );
        assert_eq!(
            sum("12345678901234567890.12", "1"),
            "12345678901234567891.12"
        );
        // Past 38 digits: no answer rather than a wrong one.
        assert_eq!(
            d("99999999999999999999999999999999999").checked_add(d("0.0001")),
            None
        );
        for bad in ["NaN", "1e5", "", ".", "1.2.3", "abc", "--1"] {
            assert_eq!(Decimal::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn policies_fall_back_to_the_default() {
        let s: FailbackSection = toml::from_str(
            r#"policy = "keep-current"
               tables = { "public.accounts" = "reapply-if-untouched" }
               topics = { "ledger\\..*" = "manual" }
               money = ["public.accounts.balance"]"#,
        )
        .unwrap();
        assert_eq!(
            s.table_policy("public.accounts"),
            Policy::ReapplyIfUntouched
        );
        assert_eq!(s.table_policy("public.other"), Policy::KeepCurrent);
        assert_eq!(s.topic_policy("ledger.transfers"), Policy::Manual);
        assert_eq!(s.topic_policy("xledger.transfers"), Policy::KeepCurrent);
        assert!(s.validate().is_ok());
        assert!(toml::from_str::<FailbackSection>("polcy = \"manual\"").is_err());
        assert!(toml::from_str::<FailbackSection>("policy = \"sometimes\"").is_err());
        let bad = FailbackSection {
            money: vec!["balance".into()],
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .1
            .contains("schema.table.column"));
    }
}
