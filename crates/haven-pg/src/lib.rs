//! Haven's adapter to Postgres (15 and later) for failover: everything Haven does to a
//! database is plain SQL on one connection (no replication protocol).
//!
//! - Bookkeeping tables in schema `haven`, created on both sides (the publication copies
//!   them): `heartbeat` (one row the active side updates every second: how stale the
//!   replica is, even once the source is gone), `barrier` (tokens written after fencing,
//!   awaited on the replica) and `seq_snapshot` (the source's sequence values, since
//!   logical replication does not copy sequences).
//! - Fencing that stops writes: the application roles lose LOGIN and CONNECT, and their
//!   sessions are terminated. Not `default_transaction_read_only`, which any session can
//!   turn off for itself. Superusers (Haven's own role) are not fenced.
//! - Detaching a subscription without its publisher (`DISABLE`, `slot_name = NONE`,
//!   `DROP`), keeping the replication origin's `remote_lsn` first: the divergence anchor.
//!
//! - The failback's side (`divergence`): the cut a failover recorded (`haven.cut`), what
//!   the old source's orphaned slot holds past it, and re-applying it once.
//!
//! Every call is bounded by the connection's timeout.

use std::time::Duration;

pub mod divergence;

use serde::Serialize;
use tokio_postgres::{Client, NoTls};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("database {name}: cannot connect: {message}")]
    Unreachable { name: String, message: String },
    #[error("database {name}: {message}")]
    Refused { name: String, message: String },
    #[error("database {name}: no answer within {timeout:?} ({what})")]
    Timeout {
        name: String,
        timeout: Duration,
        what: String,
    },
    #[error("database {name}: {message}")]
    Invalid { name: String, message: String },
}

pub type Result<T, E = PgError> = std::result::Result<T, E>;

/// Removes the password from a Postgres URL or conninfo before it is shown.
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            let user = userinfo.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}@{host}");
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes an identifier (a role, a publication) for SQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A subscription as its subscriber sees it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SubscriptionState {
    pub name: String,
    pub enabled: bool,
    /// The source's LSN up to which changes were applied (readable with the source down).
    pub remote_lsn: Option<String>,
    /// Seconds since the apply worker last heard from the source (None: not running).
    pub silent_s: Option<f64>,
}

/// How far a replica is behind, read on the replica from the replicated heartbeat.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReplicaLag {
    /// `now() - heartbeat.ts`: the RPO in seconds (includes the clock skew between the
    /// two servers). None before the first heartbeat arrived.
    pub seconds: Option<f64>,
    /// The source's transaction id counter at the last heartbeat.
    pub heartbeat_xid: Option<i64>,
    pub subscription: Option<SubscriptionState>,
}

/// What the source's replication slot still holds for a subscriber.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SlotLag {
    pub slot: String,
    /// WAL bytes the subscriber has not confirmed.
    pub bytes: i64,
    pub active: bool,
}

/// What a detach kept as evidence.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Detached {
    pub subscription: String,
    /// The source LSN up to which changes were applied (None: the subscription was already
    /// gone, or had applied nothing).
    pub remote_lsn: Option<String>,
    /// False when it was already gone (a re-run).
    pub dropped: bool,
}

/// One connection to one database, named for errors.
pub struct Pg {
    client: Client,
    name: String,
    timeout: Duration,
}

impl Pg {
    /// Connects to `url` (a `postgresql://` URL or a conninfo string); `password`, when
    /// given, overrides any in the URL. `name` names the database in errors (never the
    /// URL's password).
    pub async fn connect(
        name: &str,
        url: &str,
        password: Option<&str>,
        timeout: Duration,
    ) -> Result<Pg> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| PgError::Invalid {
            name: name.into(),
            message: format!("{} is not a Postgres URL: {e}", redact(url)),
        })?;
        if let Some(p) = password {
            config.password(p);
        }
        config.connect_timeout(timeout);
        config.application_name("haven");
        let connected = tokio::time::timeout(timeout, config.connect(NoTls))
            .await
            .map_err(|_| PgError::Timeout {
                name: name.into(),
                timeout,
                what: "connect".into(),
            })?;
        let (client, conn) = connected.map_err(|e| match e.as_db_error() {
            Some(db) => PgError::Refused {
                name: name.into(),
                message: db.message().to_string(),
            },
            None => PgError::Unreachable {
                name: name.into(),
                message: e.to_string(),
            },
        })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Pg {
            client,
            name: name.into(),
            timeout,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn error(&self, what: &str, e: tokio_postgres::Error) -> PgError {
        match e.as_db_error() {
            Some(db) => PgError::Refused {
                name: self.name.clone(),
                message: format!("{what}: {}", db.message()),
            },
            None if e.is_closed() => PgError::Unreachable {
                name: self.name.clone(),
                message: format!("{what}: connection closed"),
            },
            None => PgError::Unreachable {
                name: self.name.clone(),
                message: format!("{what}: {e}"),
            },
        }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(|e| self.error(what, e)),
            Err(_) => Err(PgError::Timeout {
                name: self.name.clone(),
                timeout: self.timeout,
                what: what.into(),
            }),
        }
    }

    /// Runs statements (no parameters, no results).
    pub async fn exec(&self, what: &str, sql: &str) -> Result<()> {
        self.bounded(what, self.client.batch_execute(sql)).await
    }

    async fn rows(&self, what: &str, sql: &str) -> Result<Vec<tokio_postgres::Row>> {
        self.bounded(what, self.client.query(sql, &[])).await
    }

    async fn scalar_text(&self, what: &str, sql: &str) -> Result<Option<String>> {
        let rows = self.rows(what, sql).await?;
        Ok(rows.first().and_then(|r| r.get::<_, Option<String>>(0)))
    }

    /// The database this connection is on.
    pub async fn database(&self) -> Result<String> {
        Ok(self
            .scalar_text("current_database", "SELECT current_database()::text")
            .await?
            .unwrap_or_default())
    }

    /// Creates Haven's bookkeeping tables (schema `haven`) if missing. Run on both sides
    /// before the subscription is created: the publication then copies them.
    pub async fn ensure_tables(&self) -> Result<()> {
        self.exec(
            "create Haven's tables",
            "BEGIN READ WRITE;
             CREATE SCHEMA IF NOT EXISTS haven;
             CREATE TABLE IF NOT EXISTS haven.heartbeat (id int PRIMARY KEY, ts timestamptz NOT NULL, xid bigint NOT NULL);
             CREATE TABLE IF NOT EXISTS haven.barrier (token text PRIMARY KEY, ts timestamptz NOT NULL);
             CREATE TABLE IF NOT EXISTS haven.seq_snapshot (seq text PRIMARY KEY, last_value bigint NOT NULL, ts timestamptz NOT NULL);
             CREATE TABLE IF NOT EXISTS haven.cut (subscription text NOT NULL, epoch bigint NOT NULL,
               remote_lsn pg_lsn, at timestamptz NOT NULL, planned boolean NOT NULL DEFAULT false,
               PRIMARY KEY (subscription, epoch));
             CREATE TABLE IF NOT EXISTS haven.reconciled (capture text NOT NULL, xid bigint NOT NULL,
               commit_lsn pg_lsn NOT NULL, at timestamptz NOT NULL, PRIMARY KEY (capture, xid));
             COMMIT;",
        )
        .await
    }

    /// Whether Haven's bookkeeping tables exist here.
    pub async fn has_tables(&self) -> Result<bool> {
        let rows = self
            .rows(
                "look for Haven's tables",
                "SELECT to_regclass('haven.heartbeat') IS NOT NULL AND to_regclass('haven.barrier') IS NOT NULL
                    AND to_regclass('haven.seq_snapshot') IS NOT NULL",
            )
            .await?;
        Ok(rows.first().map(|r| r.get::<_, bool>(0)).unwrap_or(false))
    }

    /// On the active side: stamps the heartbeat (time and transaction counter) and
    /// snapshots every sequence, in one transaction.
    pub async fn beat(&self) -> Result<()> {
        self.exec(
            "heartbeat",
            "BEGIN READ WRITE;
             INSERT INTO haven.heartbeat VALUES (1, now(), pg_current_xact_id()::text::bigint)
               ON CONFLICT (id) DO UPDATE SET ts = excluded.ts, xid = excluded.xid;
             INSERT INTO haven.seq_snapshot
               SELECT format('%I.%I', schemaname, sequencename), last_value, now()
                 FROM pg_sequences WHERE last_value IS NOT NULL AND schemaname <> 'haven'
               ON CONFLICT (seq) DO UPDATE SET last_value = excluded.last_value, ts = excluded.ts;
             COMMIT;",
        )
        .await
    }

    /// On the replica: the heartbeat's age and the subscription's state.
    pub async fn replica_lag(&self, subscription: &str) -> Result<ReplicaLag> {
        let rows = self
            .rows(
                "read the heartbeat",
                "SELECT extract(epoch FROM now() - ts)::float8, xid FROM haven.heartbeat WHERE id = 1",
            )
            .await?;
        let (seconds, heartbeat_xid) = rows
            .first()
            .map(|r| (Some(r.get::<_, f64>(0)), Some(r.get::<_, i64>(1))))
            .unwrap_or((None, None));
        Ok(ReplicaLag {
            seconds,
            heartbeat_xid,
            subscription: self.subscription(subscription).await?,
        })
    }

    /// A subscription on this database, if it exists.
    pub async fn subscription(&self, name: &str) -> Result<Option<SubscriptionState>> {
        let sql = format!(
            "SELECT s.subenabled, o.remote_lsn::text,
                    (SELECT extract(epoch FROM now() - max(st.last_msg_receipt_time))::float8
                       FROM pg_stat_subscription st WHERE st.subid = s.oid)
               FROM pg_subscription s
               LEFT JOIN pg_replication_origin_status o ON o.external_id = 'pg_' || s.oid
              WHERE s.subname = {} AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            literal(name)
        );
        let rows = self.rows("read the subscription", &sql).await?;
        Ok(rows.first().map(|r| SubscriptionState {
            name: name.into(),
            enabled: r.get(0),
            remote_lsn: r.get(1),
            silent_s: r.get(2),
        }))
    }

    /// On the source: what the slot still holds for its subscriber.
    pub async fn slot_lag(&self, slot: &str) -> Result<Option<SlotLag>> {
        let sql = format!(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, active
               FROM pg_replication_slots WHERE slot_name = {}",
            literal(slot)
        );
        let rows = self.rows("read the replication slot", &sql).await?;
        Ok(rows.first().map(|r| SlotLag {
            slot: slot.into(),
            bytes: r.get::<_, Option<i64>>(0).unwrap_or(0),
            active: r.get(1),
        }))
    }

    /// The tables a publication sends (`schema.table`), or None if it does not exist.
    pub async fn published_tables(&self, publication: &str) -> Result<Option<Vec<String>>> {
        let exists = self
            .rows(
                "read the publication",
                &format!(
                    "SELECT 1 FROM pg_publication WHERE pubname = {}",
                    literal(publication)
                ),
            )
            .await?;
        if exists.is_empty() {
            return Ok(None);
        }
        let rows = self
            .rows(
                "read the publication's tables",
                &format!(
                    "SELECT format('%s.%s', schemaname, tablename) FROM pg_publication_tables
                      WHERE pubname = {} ORDER BY 1",
                    literal(publication)
                ),
            )
            .await?;
        Ok(Some(rows.iter().map(|r| r.get::<_, String>(0)).collect()))
    }

    /// Stops the application roles from writing: no LOGIN, no CONNECT on this database
    /// (also revoked from PUBLIC, through which roles usually hold it), then their open
    /// sessions are terminated. Idempotent. Returns how many sessions were terminated.
    pub async fn fence(&self, roles: &[String]) -> Result<u64> {
        let db = ident(&self.database().await?);
        let mut sql = format!("REVOKE CONNECT ON DATABASE {db} FROM PUBLIC;");
        for r in roles {
            sql.push_str(&format!(
                "ALTER ROLE {0} NOLOGIN; REVOKE CONNECT ON DATABASE {db} FROM {0};",
                ident(r)
            ));
        }
        self.exec("fence", &sql).await?;
        self.terminate_sessions(roles).await
    }

    /// Terminates the sessions of the application roles (and of every other role that is
    /// not a superuser) on this database.
    async fn terminate_sessions(&self, roles: &[String]) -> Result<u64> {
        let list = roles
            .iter()
            .map(|r| literal(r))
            .collect::<Vec<_>>()
            .join(",");
        let roles_clause = if list.is_empty() {
            "false".to_string()
        } else {
            format!("a.usename IN ({list})")
        };
        let sql = format!(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(a.pid))::bigint
               FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.rolname = a.usename
              WHERE a.datname = current_database() AND a.backend_type = 'client backend'
                AND a.pid <> pg_backend_pid() AND ({roles_clause} OR NOT coalesce(r.rolsuper, false))"
        );
        let rows = self.rows("terminate sessions", &sql).await?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0) as u64)
    }

    /// Lets the application roles in again (LOGIN, CONNECT on this database). PUBLIC's
    /// CONNECT is not given back: only the configured roles get in.
    pub async fn unfence(&self, roles: &[String]) -> Result<()> {
        let db = ident(&self.database().await?);
        let mut sql = String::new();
        for r in roles {
            sql.push_str(&format!(
                "GRANT CONNECT ON DATABASE {db} TO {0}; ALTER ROLE {0} LOGIN;",
                ident(r)
            ));
        }
        if sql.is_empty() {
            return Ok(());
        }
        self.exec("unfence", &sql).await
    }

    /// Whether every application role is kept out (no LOGIN, no session left).
    pub async fn fenced(&self, roles: &[String]) -> Result<bool> {
        if roles.is_empty() {
            return Ok(false);
        }
        let list = roles
            .iter()
            .map(|r| literal(r))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname IN ({list}) AND rolcanlogin)
                  + (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                       AND usename IN ({list}) AND backend_type = 'client backend')"
        );
        let rows = self.rows("check the fence", &sql).await?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(1) == 0)
    }

    /// Which of `roles` do not exist (a config typo would otherwise fence nothing).
    pub async fn missing_roles(&self, roles: &[String]) -> Result<Vec<String>> {
        let rows = self
            .rows("read the roles", "SELECT rolname::text FROM pg_roles")
            .await?;
        let have: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(roles
            .iter()
            .filter(|r| !have.contains(r))
            .cloned()
            .collect())
    }

    /// Writes a barrier token (after fencing: the last write the replica must see).
    pub async fn write_barrier(&self, token: &str) -> Result<()> {
        self.exec(
            "write the barrier",
            &format!(
                "BEGIN READ WRITE; INSERT INTO haven.barrier VALUES ({}, now()) ON CONFLICT DO NOTHING; COMMIT;",
                literal(token)
            ),
        )
        .await
    }

    /// Whether a barrier token has arrived.
    pub async fn has_barrier(&self, token: &str) -> Result<bool> {
        let rows = self
            .rows(
                "read the barrier",
                &format!(
                    "SELECT 1 FROM haven.barrier WHERE token = {}",
                    literal(token)
                ),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Every sequence's last value (`schema.name` quoted as `format('%I.%I')`).
    pub async fn sequences(&self) -> Result<Vec<(String, i64)>> {
        let rows = self
            .rows(
                "read the sequences",
                "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences
                  WHERE last_value IS NOT NULL AND schemaname <> 'haven' ORDER BY 1",
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Sets every sequence of this database past anything the other side may have used:
    /// `greatest(known value, max(owning column), snapshot) + gap`, where `known` comes
    /// from the source (a switchover) and the snapshot is the replicated
    /// `haven.seq_snapshot` (a failover, source gone). Never moves a sequence back.
    /// Returns the values set.
    pub async fn advance_sequences(
        &self,
        known: &[(String, i64)],
        gap: i64,
    ) -> Result<Vec<(String, i64)>> {
        let rows = self
            .rows(
                "read the sequences' columns",
                "SELECT format('%I.%I', sn.nspname, s.relname),
                        CASE WHEN t.oid IS NULL THEN NULL ELSE format('%I.%I', tn.nspname, t.relname) END,
                        a.attname::text,
                        (SELECT last_value FROM haven.seq_snapshot
                          WHERE seq = format('%I.%I', sn.nspname, s.relname))
                   FROM pg_class s JOIN pg_namespace sn ON sn.oid = s.relnamespace
                   LEFT JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass
                        AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                   LEFT JOIN pg_class t ON t.oid = d.refobjid
                   LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
                   LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
                  WHERE s.relkind = 'S' AND sn.nspname <> 'haven' ORDER BY 1",
            )
            .await?;
        let mut set = Vec::new();
        for r in rows {
            let seq: String = r.get(0);
            let table: Option<String> = r.get(1);
            let column: Option<String> = r.get(2);
            let snapshot: Option<i64> = r.get(3);
            let mut floor = snapshot.unwrap_or(0);
            if let Some((_, v)) = known.iter().find(|(name, _)| *name == seq) {
                floor = floor.max(*v);
            }
            if let (Some(t), Some(c)) = (table, column) {
                let max = self
                    .rows(
                        "read a sequence's column",
                        &format!("SELECT max({})::bigint FROM {t}", ident(&c)),
                    )
                    .await?;
                if let Some(m) = max.first().and_then(|r| r.get::<_, Option<i64>>(0)) {
                    floor = floor.max(m);
                }
            }
            let target = floor.saturating_add(gap.max(0));
            let sql = format!(
                "SELECT setval({0}, greatest({target}, (SELECT last_value FROM {seq})), true)",
                literal(&seq)
            );
            let v = self.rows("set a sequence", &sql).await?;
            set.push((seq, v.first().map(|r| r.get::<_, i64>(0)).unwrap_or(target)));
        }
        Ok(set)
    }

    /// Ends a subscription. With `source_alive` the source's slot is dropped too (a
    /// switchover); without, nothing contacts the source (`DISABLE`, `slot_name = NONE`,
    /// `DROP`): the orphaned slot keeps what was not applied, for the failback. The
    /// origin's `remote_lsn` is read first and kept in `haven.cut` under `epoch` (the
    /// failover's) before anything is dropped. Idempotent.
    pub async fn detach(
        &self,
        subscription: &str,
        source_alive: bool,
        epoch: u64,
    ) -> Result<Detached> {
        let Some(state) = self.subscription(subscription).await? else {
            return Ok(Detached {
                subscription: subscription.into(),
                remote_lsn: None,
                dropped: false,
            });
        };
        self.record_cut(
            subscription,
            epoch,
            state.remote_lsn.as_deref(),
            source_alive,
        )
        .await?;
        let s = ident(subscription);
        if source_alive {
            self.exec("drop the subscription", &format!("DROP SUBSCRIPTION {s}"))
                .await?;
        } else {
            self.exec(
                "disable the subscription",
                &format!("ALTER SUBSCRIPTION {s} DISABLE"),
            )
            .await?;
            self.exec(
                "detach the subscription from its slot",
                &format!("ALTER SUBSCRIPTION {s} SET (slot_name = NONE)"),
            )
            .await?;
            self.exec("drop the subscription", &format!("DROP SUBSCRIPTION {s}"))
                .await?;
        }
        Ok(Detached {
            subscription: subscription.into(),
            remote_lsn: state.remote_lsn,
            dropped: true,
        })
    }

    /// Creates a publication of every table, if missing.
    pub async fn ensure_publication(&self, publication: &str) -> Result<()> {
        if self.published_tables(publication).await?.is_some() {
            return Ok(());
        }
        self.exec(
            "create the publication",
            &format!(
                "BEGIN READ WRITE; CREATE PUBLICATION {} FOR ALL TABLES; COMMIT;",
                ident(publication)
            ),
        )
        .await
    }

    /// Subscribes this database to `publication` at `conninfo`, if not subscribed yet.
    /// `copy_data = false` for a reverse subscription (both sides already hold the same
    /// rows). Errors are retried (Postgres's default): with `disable_on_error`, a dropped
    /// connection (a restart of the source, a cut link) disabled the subscription for
    /// good. A conflict that keeps failing shows as growing lag (`replica_lag`).
    pub async fn ensure_subscription(
        &self,
        subscription: &str,
        conninfo: &str,
        publication: &str,
        copy_data: bool,
    ) -> Result<()> {
        if self.subscription(subscription).await?.is_some() {
            return Ok(());
        }
        self.exec(
            "create the subscription",
            &format!(
                "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = {copy_data})",
                ident(subscription),
                literal(conninfo),
                ident(publication)
            ),
        )
        .await
    }

    /// Waits until every table of a subscription is synchronised (state `r`).
    pub async fn wait_synced(&self, subscription: &str, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let sql = format!(
            "SELECT count(*) FILTER (WHERE r.srsubstate <> 'r') FROM pg_subscription_rel r
               JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = {}",
            literal(subscription)
        );
        loop {
            let rows = self.rows("read the subscription's tables", &sql).await?;
            if rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0) == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(PgError::Timeout {
                    name: self.name.clone(),
                    timeout,
                    what: format!("subscription {subscription} to synchronise its tables"),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgresql://app:s3cret@db:5432/ledger"),
            "postgresql://app@db:5432/ledger"
        );
        assert_eq!(
            redact("host=db user=app password=s3cret dbname=x"),
            "host=db user=app password=*** dbname=x"
        );
        assert_eq!(redact("postgresql://db/x"), "postgresql://db/x");
    }

    #[test]
    fn quotes() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("o'k"), "'o''k'");
    }
}
