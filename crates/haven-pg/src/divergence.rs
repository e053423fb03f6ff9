//! The failback's Postgres side: where a failover cut a subscription (`haven.cut`, kept on
//! the database that detached), what the old source committed after that cut (read from
//! its orphaned slot through a temporary wal2json copy, never consuming the slot itself),
//! how a captured row stands on the new primary, and re-applying a captured transaction
//! there exactly once (`haven.reconciled` marks it in the same transaction).
//!
//! A transaction is divergent iff its commit's end LSN (wal2json `nextlsn`) is past the
//! cut's `remote_lsn`: the slot's own position may have moved backwards after a crash and
//! re-offer transactions the target already applied; those are counted, not captured.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{ident, literal, Pg, PgError, Result};

/// Where a failover detached a subscription.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cut {
    pub subscription: String,
    /// The fencing epoch of the failover that detached it.
    pub epoch: u64,
    /// The source's LSN up to which this database had applied (None: nothing applied).
    pub remote_lsn: Option<String>,
    /// When the cut was recorded (ms since the Unix epoch, this database's clock).
    pub at_ms: i64,
    /// A switchover's cut (the source was alive and caught up): nothing diverged.
    #[serde(default)]
    pub planned: bool,
}

/// One column of a row image; `value` is Postgres' text form (None: NULL).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
}

/// One row changed by a captured transaction.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RowChange {
    pub schema: String,
    pub table: String,
    pub op: Op,
    pub lsn: String,
    /// The row after the change (empty for a delete).
    pub new: Vec<Column>,
    /// The row before it: its key, or every column under `REPLICA IDENTITY FULL` (empty
    /// for an insert).
    pub old: Vec<Column>,
    /// The primary key's columns (empty: the table has none; the whole row is its key).
    pub pk: Vec<String>,
}

impl RowChange {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The columns that find the row as it was before this change (insert: as it is after).
    pub fn key(&self) -> Vec<Column> {
        let image = if self.op == Op::Insert {
            &self.new
        } else {
            &self.old
        };
        if self.pk.is_empty() {
            return image.clone();
        }
        image
            .iter()
            .filter(|c| self.pk.contains(&c.name))
            .cloned()
            .collect()
    }

    /// The key of the row after the change (None for a delete).
    pub fn new_key(&self) -> Option<Vec<Column>> {
        if self.op == Op::Delete {
            return None;
        }
        if self.pk.is_empty() {
            return Some(self.new.clone());
        }
        Some(
            self.new
                .iter()
                .filter(|c| self.pk.contains(&c.name))
                .cloned()
                .collect(),
        )
    }

    /// Whether `old` holds the whole row (REPLICA IDENTITY FULL, or no primary key), not
    /// only its key.
    pub fn full_old_image(&self) -> bool {
        !self.old.is_empty()
            && (self.pk.is_empty() || self.old.iter().any(|c| !self.pk.contains(&c.name)))
    }
}

/// A transaction the old source committed past the cut.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Transaction {
    pub xid: u64,
    /// The commit's end LSN (wal2json `nextlsn`).
    pub commit_lsn: String,
    /// When the source committed it (Postgres' text form).
    pub committed_at: String,
    pub changes: Vec<RowChange>,
}

/// What the old source's slot holds past the cut.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Divergence {
    pub slot: String,
    /// The slot's confirmed position when read (it may be behind the cut after a crash).
    pub slot_confirmed_lsn: String,
    /// Whether the copy was advanced to the cut before reading.
    pub advanced: bool,
    pub transactions: Vec<Transaction>,
    /// Transactions the slot re-offered although the target had applied them (commit at
    /// or before the cut): the slot moved backwards.
    pub already_applied: u64,
    /// Transactions touching only Haven's own tables (heartbeat, barrier, snapshots).
    pub haven_only: u64,
}

/// How a row stands on the database now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RowState {
    /// Rows found by the key (0 or 1 with a primary key; any number without).
    pub found: u64,
    /// Whether a found row equals the image asked about, column by column.
    pub matches: bool,
    /// When the found row was last written (ms since the Unix epoch), if
    /// `track_commit_timestamp` was on when it was.
    pub written_ms: Option<i64>,
}

/// An LSN (`X/Y`) as a number.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[derive(Deserialize)]
struct RawColumn<'a> {
    name: String,
    #[serde(rename = "type")]
    type_name: String,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PkColumn {
    name: String,
}

#[derive(Deserialize)]
struct Row<'a> {
    action: String,
    xid: Option<u64>,
    timestamp: Option<String>,
    lsn: Option<String>,
    nextlsn: Option<String>,
    schema: Option<String>,
    table: Option<String>,
    #[serde(borrow)]
    columns: Option<Vec<RawColumn<'a>>>,
    #[serde(borrow)]
    identity: Option<Vec<RawColumn<'a>>>,
    pk: Option<Vec<PkColumn>>,
}

fn text_of(raw: Option<&RawValue>) -> Option<String> {
    let raw = raw?.get();
    if raw == "null" {
        return None;
    }
    if raw.starts_with('"') {
        return serde_json::from_str::<String>(raw).ok();
    }
    Some(raw.to_string())
}

fn columns(raw: Option<Vec<RawColumn<'_>>>) -> Vec<Column> {
    raw.unwrap_or_default()
        .into_iter()
        .map(|c| Column {
            name: c.name,
            type_name: c.type_name,
            value: text_of(c.value),
        })
        .collect()
}

/// Folds wal2json (format 2) rows into transactions. Pure: tested without a server.
pub fn fold(rows: &[String], into: &mut Vec<Transaction>) -> std::result::Result<(), String> {
    for data in rows {
        let r: Row<'_> =
            serde_json::from_str(data).map_err(|e| format!("not a wal2json row ({e}): {data}"))?;
        match r.action.as_str() {
            "B" => into.push(Transaction {
                xid: r.xid.unwrap_or(0),
                commit_lsn: String::new(),
                committed_at: r.timestamp.unwrap_or_default(),
                changes: vec![],
            }),
            "C" => {
                let t = into
                    .last_mut()
                    .ok_or_else(|| format!("a commit without a begin: {data}"))?;
                t.commit_lsn = r.nextlsn.or(r.lsn).unwrap_or_default();
                if let Some(ts) = r.timestamp {
                    t.committed_at = ts;
                }
            }
            "I" | "U" | "D" => {
                let t = into
                    .last_mut()
                    .ok_or_else(|| format!("a change outside a transaction: {data}"))?;
                t.changes.push(RowChange {
                    schema: r.schema.unwrap_or_default(),
                    table: r.table.unwrap_or_default(),
                    op: match r.action.as_str() {
                        "I" => Op::Insert,
                        "U" => Op::Update,
                        _ => Op::Delete,
                    },
                    lsn: r.lsn.unwrap_or_default(),
                    new: columns(r.columns),
                    old: columns(r.identity),
                    pk: r
                        .pk
                        .unwrap_or_default()
                        .into_iter()
                        .map(|p| p.name)
                        .collect(),
                });
            }
            // Logical messages and anything newer: not row data.
            _ => {}
        }
    }
    Ok(())
}

/// `col = 'v'::type AND ...` (NULL-safe) over `alias`.
fn conditions(alias: &str, cols: &[Column]) -> String {
    if cols.is_empty() {
        return "true".into();
    }
    cols.iter()
        .map(|c| {
            format!(
                "{alias}.{} IS NOT DISTINCT FROM {}",
                ident(&c.name),
                value(c)
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn value(c: &Column) -> String {
    match &c.value {
        Some(v) => format!("{}::{}", literal(v), c.type_name),
        None => format!("NULL::{}", c.type_name),
    }
}

fn table(schema: &str, table: &str) -> String {
    format!("{}.{}", ident(schema), ident(table))
}

/// The statement that re-applies one change (it must touch exactly one row).
pub fn statement(c: &RowChange) -> String {
    let t = table(&c.schema, &c.table);
    match c.op {
        Op::Insert => format!(
            "INSERT INTO {t} ({}) VALUES ({})",
            c.new
                .iter()
                .map(|c| ident(&c.name))
                .collect::<Vec<_>>()
                .join(", "),
            c.new.iter().map(value).collect::<Vec<_>>().join(", ")
        ),
        Op::Update => format!(
            "UPDATE {t} AS r SET {} WHERE {}",
            c.new
                .iter()
                .map(|n| format!("{} = {}", ident(&n.name), value(n)))
                .collect::<Vec<_>>()
                .join(", "),
            key_condition(c)
        ),
        Op::Delete => format!("DELETE FROM {t} AS r WHERE {}", key_condition(c)),
    }
}

/// The old row: its whole image when captured (so that a row changed since fails the
/// re-apply instead of being overwritten), else its key; without a primary key, one
/// physical row of those equal to it.
fn key_condition(c: &RowChange) -> String {
    let cond = if c.full_old_image() {
        conditions("r", &c.old)
    } else {
        conditions("r", &c.key())
    };
    if c.pk.is_empty() {
        format!(
            "r.ctid = (SELECT ctid FROM {} AS r WHERE {cond} LIMIT 1)",
            table(&c.schema, &c.table)
        )
    } else {
        cond
    }
}

impl Pg {
    /// Records where a failover detached `subscription` (idempotent per epoch; the row is
    /// written in its own read-write transaction, so a fenced database takes it).
    pub async fn record_cut(
        &self,
        subscription: &str,
        epoch: u64,
        remote_lsn: Option<&str>,
        planned: bool,
    ) -> Result<()> {
        self.exec(
            "record the cut",
            &format!(
                "BEGIN READ WRITE;
                 CREATE SCHEMA IF NOT EXISTS haven;
                 CREATE TABLE IF NOT EXISTS haven.cut (subscription text NOT NULL, epoch bigint NOT NULL,
                   remote_lsn pg_lsn, at timestamptz NOT NULL, planned boolean NOT NULL DEFAULT false,
                   PRIMARY KEY (subscription, epoch));
                 INSERT INTO haven.cut (subscription, epoch, remote_lsn, at, planned)
                   VALUES ({}, {epoch}, {}, now(), {planned})
                   ON CONFLICT (subscription, epoch) DO UPDATE SET remote_lsn = excluded.remote_lsn,
                     at = excluded.at, planned = excluded.planned;
                 COMMIT;",
                literal(subscription),
                remote_lsn.map_or("NULL".into(), |l| format!("{}::pg_lsn", literal(l)))
            ),
        )
        .await
    }

    /// The latest cut of `subscription` on this database, if a failover recorded one.
    pub async fn cut(&self, subscription: &str) -> Result<Option<Cut>> {
        let exists = self
            .rows(
                "look for haven.cut",
                "SELECT to_regclass('haven.cut') IS NOT NULL",
            )
            .await?;
        if !exists.first().is_some_and(|r| r.get::<_, bool>(0)) {
            return Ok(None);
        }
        let rows = self
            .rows(
                "read the cut",
                &format!(
                    "SELECT epoch, remote_lsn::text, (extract(epoch FROM at) * 1000)::bigint, planned
                       FROM haven.cut WHERE subscription = {} ORDER BY epoch DESC LIMIT 1",
                    literal(subscription)
                ),
            )
            .await?;
        Ok(rows.first().map(|r| Cut {
            subscription: subscription.into(),
            epoch: r.get::<_, i64>(0) as u64,
            remote_lsn: r.get(1),
            at_ms: r.get(2),
            planned: r.get(3),
        }))
    }

    /// Reads every transaction committed past `after` that `slot` still holds, through a
    /// temporary wal2json copy of the slot (the slot itself is neither consumed nor moved,
    /// so a capture can be re-run). Haven's own tables are left out.
    pub async fn divergence(&self, slot: &str, after: Option<&str>) -> Result<Divergence> {
        let refused = |message: String| PgError::Refused {
            name: self.name.clone(),
            message,
        };
        let rows = self
            .rows(
                "read the slot",
                &format!(
                    "SELECT confirmed_flush_lsn::text, active, coalesce(wal_status, ''), plugin
                       FROM pg_replication_slots WHERE slot_name = {} AND slot_type = 'logical'",
                    literal(slot)
                ),
            )
            .await?;
        let Some(r) = rows.first() else {
            return Err(refused(format!(
                "no logical replication slot {slot:?}: what this database wrote after the cut \
                 cannot be read (was the slot dropped, or the database rebuilt?)"
            )));
        };
        let confirmed: Option<String> = r.get(0);
        let confirmed = confirmed.unwrap_or_else(|| "0/0".into());
        if r.get::<_, bool>(1) {
            return Err(refused(format!(
                "slot {slot:?} is in use by a subscriber: capture reads an orphaned slot only"
            )));
        }
        if r.get::<_, String>(2) == "lost" {
            return Err(refused(format!(
                "slot {slot:?} was invalidated (its WAL is gone, max_slot_wal_keep_size): \
                 the divergence cannot be read from it"
            )));
        }
        let copy = format!("haven_capture_{}", std::process::id());
        // The capture connection writes nothing, but creating a slot needs a read-write
        // transaction on a fenced database.
        self.exec(
            "allow the temporary slot",
            "SET SESSION default_transaction_read_only = off",
        )
        .await?;
        self.exec(
            "copy the slot",
            &format!(
                "SELECT pg_copy_logical_replication_slot({}, {}, true, 'wal2json')",
                literal(slot),
                literal(&copy)
            ),
        )
        .await?;
        let result = self.read_copy(slot, &copy, &confirmed, after).await;
        let _ = self
            .exec(
                "drop the temporary slot",
                &format!("SELECT pg_drop_replication_slot({})", literal(&copy)),
            )
            .await;
        result
    }

    async fn read_copy(
        &self,
        slot: &str,
        copy: &str,
        confirmed: &str,
        after: Option<&str>,
    ) -> Result<Divergence> {
        let cut = after.and_then(parse_lsn).unwrap_or(0);
        let mut advanced = false;
        if cut > parse_lsn(confirmed).unwrap_or(0) {
            let after = after.unwrap_or_default();
            self.exec(
                "advance the copy to the cut",
                &format!(
                    "SELECT pg_replication_slot_advance({}, {}::pg_lsn)",
                    literal(copy),
                    literal(after)
                ),
            )
            .await?;
            advanced = true;
        }
        let mut all = Vec::new();
        loop {
            let rows = self
                .rows(
                    "read the slot's changes",
                    &format!(
                        "SELECT data FROM pg_logical_slot_get_changes({}, NULL, 1000,
                           'format-version', '2', 'include-xids', '1', 'include-timestamp', '1',
                           'include-lsn', '1', 'include-pk', '1')",
                        literal(copy)
                    ),
                )
                .await?;
            if rows.is_empty() {
                break;
            }
            let data: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            fold(&data, &mut all).map_err(|m| PgError::Refused {
                name: self.name.clone(),
                message: m,
            })?;
        }
        let mut out = Divergence {
            slot: slot.into(),
            slot_confirmed_lsn: confirmed.into(),
            advanced,
            transactions: vec![],
            already_applied: 0,
            haven_only: 0,
        };
        for t in all {
            if parse_lsn(&t.commit_lsn).unwrap_or(0) <= cut {
                out.already_applied += 1;
            } else if t.changes.iter().all(|c| c.schema == "haven") {
                out.haven_only += 1;
            } else {
                let mut t = t;
                t.changes.retain(|c| c.schema != "haven");
                out.transactions.push(t);
            }
        }
        Ok(out)
    }

    /// How the row `key` finds stands here: how many rows, whether one equals `image`,
    /// and when it was last written (needs `track_commit_timestamp`).
    pub async fn row_state(
        &self,
        schema: &str,
        table_name: &str,
        key: &[Column],
        image: &[Column],
    ) -> Result<RowState> {
        let commit_ts = self
            .rows(
                "read track_commit_timestamp",
                "SELECT current_setting('track_commit_timestamp') = 'on'",
            )
            .await?
            .first()
            .is_some_and(|r| r.get::<_, bool>(0));
        let written = if commit_ts {
            "max((extract(epoch FROM pg_xact_commit_timestamp(r.xmin)) * 1000)::bigint)"
        } else {
            "NULL::bigint"
        };
        let matches = if image.is_empty() {
            "false".to_string()
        } else {
            format!("coalesce(bool_or({}), false)", conditions("r", image))
        };
        let rows = self
            .rows(
                "read the row",
                &format!(
                    "SELECT count(*), {matches}, {written} FROM {} AS r WHERE {}",
                    table(schema, table_name),
                    conditions("r", key)
                ),
            )
            .await?;
        let r = rows.first();
        Ok(RowState {
            found: r.map_or(0, |r| r.get::<_, i64>(0) as u64),
            matches: r.is_some_and(|r| r.get::<_, bool>(1)),
            written_ms: r.and_then(|r| r.get::<_, Option<i64>>(2)),
        })
    }

    /// Whether a captured transaction was already re-applied here.
    pub async fn reconciled(&self, capture: &str, xid: u64) -> Result<bool> {
        let exists = self
            .rows(
                "look for haven.reconciled",
                "SELECT to_regclass('haven.reconciled') IS NOT NULL",
            )
            .await?;
        if !exists.first().is_some_and(|r| r.get::<_, bool>(0)) {
            return Ok(false);
        }
        let rows = self
            .rows(
                "read haven.reconciled",
                &format!(
                    "SELECT 1 FROM haven.reconciled WHERE capture = {} AND xid = {xid}",
                    literal(capture)
                ),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Re-applies a captured transaction here in one transaction, marked in
    /// `haven.reconciled` so that it is applied once whatever the re-runs. Returns false
    /// when it was already applied. Every change must touch exactly one row, else nothing
    /// is applied and the error names the change.
    pub async fn reapply(&self, capture: &str, t: &Transaction) -> Result<bool> {
        if self.reconciled(capture, t.xid).await? {
            return Ok(false);
        }
        self.exec(
            "create haven.reconciled",
            "BEGIN READ WRITE;
             CREATE SCHEMA IF NOT EXISTS haven;
             CREATE TABLE IF NOT EXISTS haven.reconciled (capture text NOT NULL, xid bigint NOT NULL,
               commit_lsn pg_lsn NOT NULL, at timestamptz NOT NULL, PRIMARY KEY (capture, xid));
             COMMIT;",
        )
        .await?;
        self.exec("begin", "BEGIN READ WRITE").await?;
        let outcome = self.reapply_in_transaction(capture, t).await;
        match outcome {
            Ok(()) => {
                self.exec("commit the re-applied transaction", "COMMIT")
                    .await?;
                Ok(true)
            }
            Err(e) => {
                let _ = self.exec("roll back", "ROLLBACK").await;
                if self.reconciled(capture, t.xid).await? {
                    return Ok(false);
                }
                Err(e)
            }
        }
    }

    async fn reapply_in_transaction(&self, capture: &str, t: &Transaction) -> Result<()> {
        let marked = self
            .bounded(
                "mark the transaction",
                self.client.execute(
                    &format!(
                        "INSERT INTO haven.reconciled VALUES ({}, {}, {}::pg_lsn, now()) ON CONFLICT DO NOTHING",
                        literal(capture),
                        t.xid,
                        literal(&t.commit_lsn)
                    ),
                    &[],
                ),
            )
            .await?;
        if marked == 0 {
            return Err(PgError::Refused {
                name: self.name.clone(),
                message: format!("transaction {} of {capture} is already applied", t.xid),
            });
        }
        for c in &t.changes {
            let n = self
                .bounded("re-apply a change", self.client.execute(&statement(c), &[]))
                .await?;
            if n != 1 {
                return Err(PgError::Refused {
                    name: self.name.clone(),
                    message: format!(
                        "re-applying {:?} on {} (transaction {}, lsn {}) touched {n} rows, not 1",
                        c.op,
                        c.qualified(),
                        t.xid,
                        c.lsn
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Re-seeding the old source as a standby of the new primary.
impl Pg {
    /// Drops the orphaned slot `slot` (once its divergence is captured). False when it is
    /// already gone; an error when a subscriber uses it.
    pub async fn drop_orphaned_slot(&self, slot: &str) -> Result<bool> {
        let rows = self
            .rows(
                "read the slot",
                &format!(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = {}",
                    literal(slot)
                ),
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(false);
        };
        if r.get::<_, bool>(0) {
            return Err(PgError::Refused {
                name: self.name.clone(),
                message: format!("slot {slot:?} is in use by a subscriber: not orphaned"),
            });
        }
        self.exec(
            "drop the orphaned slot",
            &format!("SELECT pg_drop_replication_slot({})", literal(slot)),
        )
        .await?;
        Ok(true)
    }

    /// Empties the tables named `schema.table` that exist here, in one read-write
    /// transaction (before a subscription copies them again). Returns those emptied.
    pub async fn truncate(&self, tables: &[String]) -> Result<Vec<String>> {
        let mut here = Vec::new();
        for t in tables {
            let Some((schema, name)) = t.split_once('.') else {
                continue;
            };
            let q = table(schema, name);
            let rows = self
                .rows(
                    "look for the table",
                    &format!("SELECT to_regclass({}) IS NOT NULL", literal(&q)),
                )
                .await?;
            if rows.first().is_some_and(|r| r.get::<_, bool>(0)) {
                here.push((t.clone(), q));
            }
        }
        if !here.is_empty() {
            let list: Vec<&str> = here.iter().map(|(_, q)| q.as_str()).collect();
            self.exec(
                "empty the tables",
                &format!("BEGIN READ WRITE; TRUNCATE {}; COMMIT;", list.join(", ")),
            )
            .await?;
        }
        Ok(here.into_iter().map(|(t, _)| t).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_compare_as_numbers() {
        assert_eq!(parse_lsn("0/152EFC0"), Some(0x152EFC0));
        assert!(parse_lsn("1/0").unwrap() > parse_lsn("0/FFFFFFFF").unwrap());
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(parse_lsn("0/zz"), None);
    }

    #[test]
    fn folds_wal2json_rows_exactly() {
        let rows = [
            r#"{"action":"B","xid":726,"timestamp":"2026-12-02 04:12:10.732197+00","lsn":"0/152F058","nextlsn":"0/152F088"}"#,
            r#"{"action":"U","xid":726,"lsn":"0/152EFC0","schema":"public","table":"t","columns":[{"name":"id","type":"integer","value":1},{"name":"v","type":"text","value":"c\"q"},{"name":"n","type":"numeric(40,2)","value":12345678901234567890123.45},{"name":"z","type":"text","value":null}],"identity":[{"name":"id","type":"integer","value":1}],"pk":[{"name":"id","type":"integer"}]}"#,
            r#"{"action":"D","xid":726,"lsn":"0/152F018","schema":"public","table":"t","identity":[{"name":"id","type":"integer","value":2}],"pk":[{"name":"id","type":"integer"}]}"#,
            r#"{"action":"C","xid":726,"timestamp":"2026-12-02 04:12:10.732197+00","lsn":"0/152F058","nextlsn":"0/152F088"}"#,
        ]
        .map(String::from);
        let mut out = vec![];
        fold(&rows, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let t = &out[0];
        assert_eq!((t.xid, t.commit_lsn.as_str()), (726, "0/152F088"));
        assert_eq!(t.changes.len(), 2);
        let u = &t.changes[0];
        assert_eq!(u.op, Op::Update);
        // Numbers keep every digit; strings are unescaped; NULL stays NULL.
        assert_eq!(
            u.new[2].value.as_deref(),
            Some("12345678901234567890123.45")
        );
        assert_eq!(u.new[1].value.as_deref(), Some("c\"q"));
        assert_eq!(u.new[3].value, None);
        assert_eq!(u.key(), vec![u.old[0].clone()]);
        assert_eq!(
            statement(u),
            "UPDATE \"public\".\"t\" AS r SET \"id\" = '1'::integer, \"v\" = 'c\"q'::text, \
             \"n\" = '12345678901234567890123.45'::numeric(40,2), \"z\" = NULL::text \
             WHERE r.\"id\" IS NOT DISTINCT FROM '1'::integer"
        );
        assert_eq!(
            statement(&t.changes[1]),
            "DELETE FROM \"public\".\"t\" AS r WHERE r.\"id\" IS NOT DISTINCT FROM '2'::integer"
        );
    }

    #[test]
    fn rejects_rows_out_of_place() {
        let mut out = vec![];
        assert!(fold(&["not json".into()], &mut out).is_err());
        let orphan = r#"{"action":"I","schema":"s","table":"t","columns":[]}"#;
        assert!(fold(&[orphan.into()], &mut out).is_err());
        let commit = r#"{"action":"C","nextlsn":"0/1"}"#;
        assert!(fold(&[commit.into()], &mut out).is_err());
    }

    proptest::proptest! {
        /// Any text, and any mix of well-formed rows with arbitrary values: errors allowed,
        /// panics not; values come back exactly.
        #[test]
        fn decoder_never_panics(lines in proptest::collection::vec(".{0,80}", 0..6)) {
            let mut out = vec![];
            let _ = fold(&lines, &mut out);
        }

        #[test]
        fn values_survive_exactly(v in ".{0,40}", n in proptest::num::i64::ANY) {
            let row = serde_json::json!({
                "action": "I", "schema": "s", "table": "t", "lsn": "0/1",
                "columns": [
                    {"name": "a", "type": "text", "value": v},
                    {"name": "b", "type": "bigint", "value": n},
                ],
                "pk": [{"name": "b", "type": "bigint"}],
            });
            let rows = vec![r#"{"action":"B","xid":1}"#.to_string(), row.to_string()];
            let mut out = vec![];
            fold(&rows, &mut out).unwrap();
            let c = &out[0].changes[0];
            proptest::prop_assert_eq!(c.new[0].value.as_deref(), Some(v.as_str()));
            let n_text = n.to_string();
            proptest::prop_assert_eq!(c.new[1].value.as_deref(), Some(n_text.as_str()));
            proptest::prop_assert_eq!(c.key(), vec![c.new[1].clone()]);
            let _ = statement(c);
        }
    }
}
