//! The ledger's downstream service, `balances`: it consumes `ledger.transfers` with the
//! consumer group `ledger-balances` and keeps every account's balance in a database of its
//! own (`balances`, on the active region's Postgres server, not replicated).
//!
//! It applies each transfer once (the transfer's id is recorded in the same transaction as
//! the balances it moves) and commits its offsets after the database commit, as a careful
//! service does. So a database restored to an earlier point is repaired by rewinding the
//! group to its offsets at that point (`haven recover`): what is read again and was in
//! the restored database is skipped, what was lost is applied. The earlier-database drill
//! does exactly that ([`crate::drill`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use haven_kafka::rdkafka::config::ClientConfig;
use haven_kafka::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use haven_kafka::rdkafka::Message;
use haven_kafka::ClusterConfig;

use super::check::{opening, Event};
use super::ACCOUNTS;

/// The service's name in `haven.toml` (`[services.balances]`), its group and database.
pub const SERVICE: &str = "balances";
pub const GROUP: &str = "ledger-balances";
pub const DATABASE: &str = "balances";

const SCHEMA: &str = "CREATE TABLE balances (account int PRIMARY KEY, balance bigint NOT NULL);
     CREATE TABLE applied (transfer_id text PRIMARY KEY);";

/// The service's database URL on the server of `admin_url` (a superuser URL ending in
/// `/postgres`).
pub fn database_url(admin_url: &str) -> String {
    match admin_url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{DATABASE}"),
        None => admin_url.to_string(),
    }
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

/// Makes the service afresh: its database on the server of `admin_url` with every
/// account at its opening balance and nothing applied, and its group's offsets at the
/// start of each partition of `topic` (so it reads every transfer once). Returns the
/// database's URL.
pub async fn create(admin_url: &str, bootstrap: &str, topic: &str) -> anyhow::Result<String> {
    let admin = connect(admin_url).await?;
    // Two statements apart: neither may run inside a transaction block.
    for sql in [
        format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"),
        format!("CREATE DATABASE {DATABASE}"),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .with_context(|| format!("make the service's database: {sql}"))?;
    }
    let url = database_url(admin_url);
    let c = connect(&url).await?;
    c.batch_execute(SCHEMA)
        .await
        .context("the service's schema")?;
    let opening: Vec<String> = (1..=ACCOUNTS)
        .map(|a| format!("({a},{})", opening(a)))
        .collect();
    c.batch_execute(&format!(
        "INSERT INTO balances VALUES {}",
        opening.join(",")
    ))
    .await?;
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let cluster = ClusterConfig::new(&bootstrap);
        let inspector = cluster.inspector(GROUP)?;
        let partitions = partitions(&inspector, &bootstrap, &topic)?;
        let mut starts = Vec::new();
        for (t, p) in partitions {
            let (low, _) = haven_kafka::watermarks(&inspector, &t, p, Duration::from_secs(10))?;
            starts.push((t, p, low));
        }
        Ok(haven_kafka::commit_offsets(&cluster, GROUP, &starts)?)
    })
    .await??;
    Ok(url)
}

fn partitions(
    inspector: &BaseConsumer,
    bootstrap: &str,
    topic: &str,
) -> anyhow::Result<Vec<(String, i32)>> {
    let topics = haven_kafka::list_topics(inspector, bootstrap, Duration::from_secs(10))?;
    let info = topics
        .iter()
        .find(|t| t.name == topic)
        .with_context(|| format!("no topic {topic} on {bootstrap}"))?;
    Ok((0..info.partitions)
        .map(|p| (topic.to_string(), p))
        .collect())
}

/// Records of `topic` the service's group has not committed past (blocking).
pub fn lag(bootstrap: &str, topic: &str) -> anyhow::Result<i64> {
    let inspector = ClusterConfig::new(bootstrap).inspector(GROUP)?;
    let parts = partitions(&inspector, bootstrap, topic)?;
    let committed = haven_kafka::committed(&inspector, &parts, Duration::from_secs(5))?;
    let mut lag = 0;
    for (t, p) in &parts {
        let (_, high) = haven_kafka::watermarks(&inspector, t, *p, Duration::from_secs(5))?;
        let at = committed.iter().find(|c| c.1 == *p).map_or(0, |c| c.2);
        lag += (high - at).max(0);
    }
    Ok(lag)
}

/// A running service: [`Service::stop`] commits, leaves the group and returns how many
/// transfers it applied (and skipped as applied before).
pub struct Service {
    stop: Arc<AtomicBool>,
    applied: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<anyhow::Result<Applied>>,
}

/// What a run of the service did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub applied: u64,
    /// Read again and skipped: their transfer was in the database already.
    pub skipped: u64,
}

impl Service {
    /// Starts consuming `topic` on `bootstrap` into the database at `db_url`.
    pub fn start(bootstrap: &str, topic: &str, db_url: &str) -> anyhow::Result<Service> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("broker.address.family", "v4")
            .set("group.id", GROUP)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000")
            .set("log_level", "3")
            .create()
            .context("the service's consumer")?;
        consumer
            .subscribe(&[topic])
            .with_context(|| format!("subscribe to {topic}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let applied = Arc::new(AtomicU64::new(0));
        let (s, a, url) = (stop.clone(), applied.clone(), db_url.to_string());
        let thread = std::thread::Builder::new()
            .name("ledger-balances".into())
            .spawn(move || consume(consumer, &url, &s, &a))?;
        Ok(Service {
            stop,
            applied,
            thread,
        })
    }

    /// Transfers applied so far.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    pub fn stop(self) -> anyhow::Result<Applied> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the balances service panicked"))?
    }
}

fn consume(
    consumer: BaseConsumer,
    url: &str,
    stop: &AtomicBool,
    count: &AtomicU64,
) -> anyhow::Result<Applied> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut db = rt.block_on(connect(url))?;
    let mut done = Applied::default();
    while !stop.load(Ordering::SeqCst) {
        let mut batch = Vec::new();
        if let Some(first) = consumer.poll(Duration::from_millis(100)) {
            batch.push(first);
            while batch.len() < 500 {
                match consumer.poll(Duration::ZERO) {
                    Some(m) => batch.push(m),
                    None => break,
                }
            }
        }
        let mut transfers = Vec::new();
        for m in batch {
            // A consumer error (a rebalance, a broker restarting) is retried by the client.
            let Ok(m) = m else { continue };
            let v: serde_json::Value = m
                .payload()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default();
            transfers.push((
                v["transfer_id"].as_str().unwrap_or("").to_string(),
                v["src"].as_i64().unwrap_or(0) as i32,
                v["dst"].as_i64().unwrap_or(0) as i32,
                v["amount"].as_i64().unwrap_or(0),
            ));
        }
        if transfers.is_empty() {
            continue;
        }
        let (a, s) = rt.block_on(apply(&mut db, &transfers))?;
        done.applied += a;
        done.skipped += s;
        count.fetch_add(a, Ordering::SeqCst);
        // After the database commit: a crash in between reads these again, and they are
        // skipped as applied.
        consumer
            .commit_consumer_state(CommitMode::Sync)
            .context("commit the service's offsets")?;
    }
    consumer.unsubscribe();
    Ok(done)
}

/// Applies transfers in one transaction, each once; returns (applied, skipped).
async fn apply(
    db: &mut tokio_postgres::Client,
    transfers: &[(String, i32, i32, i64)],
) -> anyhow::Result<(u64, u64)> {
    let tx = db.transaction().await?;
    let (mut applied, mut skipped) = (0, 0);
    for (id, src, dst, amount) in transfers {
        let fresh = tx
            .execute(
                "INSERT INTO applied VALUES ($1) ON CONFLICT DO NOTHING",
                &[id],
            )
            .await?;
        if fresh == 0 {
            skipped += 1;
            continue;
        }
        tx.execute(
            "UPDATE balances SET balance = balance - $2 WHERE account = $1",
            &[src, amount],
        )
        .await?;
        tx.execute(
            "UPDATE balances SET balance = balance + $2 WHERE account = $1",
            &[dst, amount],
        )
        .await?;
        applied += 1;
    }
    tx.commit().await?;
    Ok((applied, skipped))
}

/// A copy of the service's database as it is now, kept in the database itself (the
/// drill's "backup" of it).
pub async fn snapshot(db_url: &str) -> anyhow::Result<()> {
    let c = connect(db_url).await?;
    c.batch_execute(
        "BEGIN ISOLATION LEVEL REPEATABLE READ;
         DROP TABLE IF EXISTS snap_balances, snap_applied;
         CREATE TABLE snap_balances AS SELECT * FROM balances;
         CREATE TABLE snap_applied AS SELECT * FROM applied;
         COMMIT;",
    )
    .await
    .context("snapshot the service's database")
}

/// The service's database restored from [`snapshot`]: what it applied since is gone.
pub async fn restore_snapshot(db_url: &str) -> anyhow::Result<()> {
    let c = connect(db_url).await?;
    c.batch_execute(
        "BEGIN;
         TRUNCATE balances, applied;
         INSERT INTO balances SELECT * FROM snap_balances;
         INSERT INTO applied SELECT * FROM snap_applied;
         COMMIT;",
    )
    .await
    .context("restore the service's database from its snapshot")
}

/// How the service's database compares with the events its group committed past (the
/// service stopped): every one of them applied exactly once, and the balances equal the
/// opening balances moved by those events (the drill's replay equality).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consistency {
    /// Events below the group's committed offsets.
    pub committed_past: usize,
    /// Of them, not in the database (lost by the restore, not read again).
    pub missing: Vec<String>,
    /// Transfers in the database that no committed-past event carries.
    pub extra: usize,
    /// The first account whose balance differs: (account, database, events).
    pub first_off: Option<(i32, i64, i64)>,
    /// Accounts whose balance differs.
    pub accounts_off: usize,
}

impl Consistency {
    pub fn holds(&self) -> bool {
        self.missing.is_empty() && self.extra == 0 && self.accounts_off == 0
    }
}

/// Compares the service's database with the events of `topic` below its group's
/// committed offsets. Call it with the service stopped.
pub async fn consistency(
    bootstrap: &str,
    topic: &str,
    db_url: &str,
) -> anyhow::Result<Consistency> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    let (events, committed) = tokio::task::spawn_blocking(
        move || -> anyhow::Result<(Vec<Event>, BTreeMap<i32, i64>)> {
            let inspector = ClusterConfig::new(&b).inspector(GROUP)?;
            let parts = partitions(&inspector, &b, &t)?;
            let committed = haven_kafka::committed(&inspector, &parts, Duration::from_secs(10))?
                .into_iter()
                .map(|(_, p, o)| (p, o))
                .collect();
            Ok((super::check::read_topic(&b, &t)?, committed))
        },
    )
    .await??;
    let c = connect(db_url).await?;
    let applied: HashSet<String> = c
        .query("SELECT transfer_id FROM applied", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let balances: BTreeMap<i32, i64> = c
        .query("SELECT account, balance FROM balances", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut folded: BTreeMap<i32, i64> = (1..=ACCOUNTS).map(|a| (a, opening(a))).collect();
    let mut out = Consistency::default();
    let mut seen = HashSet::new();
    for e in &events {
        if e.offset >= committed.get(&e.partition).copied().unwrap_or(0) {
            continue;
        }
        out.committed_past += 1;
        if !seen.insert(e.id.as_str()) {
            continue;
        }
        if !applied.contains(&e.id) {
            out.missing.push(e.id.clone());
        }
        *folded.entry(e.src).or_default() -= e.amount;
        *folded.entry(e.dst).or_default() += e.amount;
    }
    out.extra = applied
        .iter()
        .filter(|id| !seen.contains(id.as_str()))
        .count();
    for (a, b) in &balances {
        let want = folded.get(a).copied().unwrap_or(0);
        if *b != want {
            out.accounts_off += 1;
            out.first_off.get_or_insert((*a, *b, want));
        }
    }
    Ok(out)
}
