//! `haven workload check`: the ledger's invariants W1-W9 on one region's database and
//! topic, each with its first counter-example.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use haven_kafka::rdkafka::Message;
use haven_kafka::ClusterConfig;
use serde::Serialize;
use tokio_postgres::Client;

use super::workload::{connect, region_of, transfer};
use super::{read_acks, ACCOUNTS, ACKS_FILE, FLAGGED, OPENING_BALANCE};
use crate::control::LabState;

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The workload directory (its acknowledgement log).
    pub dir: PathBuf,
    /// The region whose database and topic are checked; None: the one the write route
    /// leads to.
    pub region: Option<String>,
    /// When the fault happened (ms since the Unix epoch): W9 requires every transfer
    /// acknowledged before `fault - rpo_target` to be present. None: every one.
    pub fault_at_ms: Option<i64>,
    pub rpo_target_s: f64,
    /// Re-submit an acknowledged transfer through the write route (W8). Off when the
    /// route must not be written to.
    pub retry_probe: bool,
}

/// One invariant's result: `ok` is None when it could not be checked (which fails the
/// verdict as surely as a violation).
#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    pub id: &'static str,
    pub name: &'static str,
    pub ok: Option<bool>,
    pub detail: String,
    pub first_example: Option<String>,
}

/// The checker's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub region: String,
    pub transfers: u64,
    pub topic_records: u64,
    pub acknowledged: u64,
    /// Acknowledged transfers (applied or found existing) missing from the database.
    pub lost: u64,
    /// From the oldest lost acknowledgement to the fault (or the newest lost one): the
    /// RPO measured in seconds of acknowledged writes.
    pub lost_seconds: f64,
    /// The ids of those lost transfers.
    pub lost_ids: Vec<String>,
    pub invariants: Vec<Invariant>,
    pub passed: bool,
}

fn inv(id: &'static str, name: &'static str) -> Invariant {
    Invariant {
        id,
        name,
        ok: None,
        detail: String::new(),
        first_example: None,
    }
}

fn pass(mut i: Invariant, detail: String) -> Invariant {
    i.ok = Some(true);
    i.detail = detail;
    i
}

fn fail(mut i: Invariant, detail: String, example: String) -> Invariant {
    i.ok = Some(false);
    i.detail = detail;
    i.first_example = Some(example);
    i
}

fn unchecked(mut i: Invariant, why: String) -> Invariant {
    i.ok = None;
    i.detail = why;
    i
}

pub(crate) fn opening(account: i32) -> i64 {
    if account <= FLAGGED {
        super::FLAGGED_OPENING
    } else {
        OPENING_BALANCE
    }
}

/// One event of the topic: its transfer and its coordinates.
pub(crate) struct Event {
    pub(crate) id: String,
    pub(crate) src: i32,
    pub(crate) dst: i32,
    pub(crate) amount: i64,
    at: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

/// Every event of `topic` on `bootstrap` (blocking).
pub(crate) fn read_topic(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<Event>> {
    let cluster = ClusterConfig::new(bootstrap);
    let inspector = cluster.inspector("haven-ledger-check")?;
    let topics = haven_kafka::list_topics(&inspector, bootstrap, Duration::from_secs(10))?;
    let Some(info) = topics.iter().find(|t| t.name == topic) else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    for p in 0..info.partitions {
        let (low, high) = haven_kafka::watermarks(&inspector, topic, p, Duration::from_secs(10))?;
        haven_kafka::scan(
            &cluster,
            topic,
            p,
            low,
            high,
            Duration::from_secs(20),
            |m| {
                let v: serde_json::Value = m
                    .payload()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or_default();
                out.push(Event {
                    id: v["transfer_id"].as_str().unwrap_or("").to_string(),
                    src: v["src"].as_i64().unwrap_or(0) as i32,
                    dst: v["dst"].as_i64().unwrap_or(0) as i32,
                    amount: v["amount"].as_i64().unwrap_or(0),
                    at: format!("{topic}/{p}/{}", m.offset()),
                    partition: p,
                    offset: m.offset(),
                });
                true
            },
        )?;
    }
    Ok(out)
}

async fn first(c: &Client, sql: &str) -> anyhow::Result<Option<String>> {
    let row = c
        .query_opt(sql, &[])
        .await
        .with_context(|| sql.to_string())?;
    Ok(row.map(|r| r.get::<_, String>(0)))
}

pub async fn check(lab: &LabState, o: &CheckOptions) -> anyhow::Result<Report> {
    let e = &lab.endpoints;
    // The region: as told, else where the write route leads.
    let region = match &o.region {
        Some(r) => r.clone(),
        None => {
            let url = format!(
                "postgresql://reader@{}/postgres?connect_timeout=2",
                e.write_route
            );
            let c = connect(&url)
                .await
                .context("the write route leads nowhere: say which region to check (--region)")?;
            let port: Option<i32> = c.query_one("SELECT inet_server_port()", &[]).await?.get(0);
            region_of(lab, port.unwrap_or(0) as u16)
        }
    };
    let (pg, kafka) = match region.as_str() {
        "us" => (&e.postgres_us, &e.kafka_us),
        "eu" => (&e.postgres_eu, &e.kafka_eu),
        other => anyhow::bail!("no region {other} in the lab (us or eu)"),
    };
    let c = connect(pg)
        .await
        .with_context(|| format!("connect to {region}'s database"))?;
    let mut out = Vec::new();

    // W1: money is conserved.
    let total: Option<i64> = c
        .query_opt(
            "SELECT value FROM ledger_meta WHERE key = 'initial_total'",
            &[],
        )
        .await?
        .map(|r| r.get(0));
    let sum: Option<i64> = c
        .query_one("SELECT sum(balance)::bigint FROM ledger_accounts", &[])
        .await?
        .get(0);
    let w1 = inv(
        "W1",
        "money conserved: the balances sum to the initial total",
    );
    out.push(match (total, sum) {
        (Some(t), Some(s)) if t == s => pass(w1, format!("{s} = {t}")),
        (Some(t), Some(s)) => {
            let sql = format!(
                "SELECT a.id::text || ': balance ' || a.balance || ', opening + entries ' ||
                    (CASE WHEN a.no_overdraft THEN {f} ELSE {o} END + coalesce(sum(e.amount), 0))
                 FROM ledger_accounts a LEFT JOIN ledger_entries e ON e.account = a.id
                 GROUP BY a.id HAVING a.balance <> CASE WHEN a.no_overdraft THEN {f} ELSE {o} END
                    + coalesce(sum(e.amount), 0)
                 ORDER BY a.id LIMIT 1",
                f = opening(1),
                o = OPENING_BALANCE
            );
            let odd = first(&c, &sql)
                .await?
                .unwrap_or_else(|| "no single account explains it".into());
            fail(
                w1,
                format!("{s} <> {t} (off by {})", s - t),
                format!("account {odd}"),
            )
        }
        _ => unchecked(
            w1,
            "the ledger has no accounts: run the workload first".into(),
        ),
    });

    // W2: each transfer's two entries cancel out; no entry without a transfer.
    let w2 = inv(
        "W2",
        "debits equal credits: each transfer has two entries summing to 0",
    );
    let bad = first(
        &c,
        "SELECT t.id || ': ' || count(e.*) || ' entries summing to ' || coalesce(sum(e.amount), 0)
         FROM ledger_transfers t LEFT JOIN ledger_entries e ON e.transfer_id = t.id
         GROUP BY t.id HAVING count(e.*) <> 2 OR coalesce(sum(e.amount), 0) <> 0
         ORDER BY t.id LIMIT 1",
    )
    .await?;
    let orphan = first(
        &c,
        "SELECT e.transfer_id || ': an entry of account ' || e.account || ' without its transfer'
         FROM ledger_entries e LEFT JOIN ledger_transfers t ON t.id = e.transfer_id
         WHERE t.id IS NULL ORDER BY e.transfer_id LIMIT 1",
    )
    .await?;
    out.push(match bad.or(orphan) {
        None => pass(w2, "every transfer balanced".into()),
        Some(x) => fail(w2, "unbalanced transfer".into(), x),
    });

    // W3: flagged accounts never go below zero.
    let w3 = inv("W3", "no flagged (no-overdraft) account is negative");
    out.push(
        match first(
            &c,
            "SELECT id || ': ' || balance FROM ledger_accounts
             WHERE no_overdraft AND balance < 0 ORDER BY id LIMIT 1",
        )
        .await?
        {
            None => pass(w3, format!("{FLAGGED} flagged accounts checked")),
            Some(x) => fail(
                w3,
                "a flagged account is overdrawn".into(),
                format!("account {x}"),
            ),
        },
    );

    // W6: each account's entries are numbered 1..version, no gap, no extra.
    let w6 = inv(
        "W6",
        "each account's entries numbered 1..version without a gap",
    );
    out.push(
        match first(
            &c,
            "SELECT a.id || ': version ' || a.version || ', ' || coalesce(e.n, 0) || ' entries, highest '
                || coalesce(e.hi, 0)
             FROM ledger_accounts a LEFT JOIN (SELECT account, count(*) n, max(version) hi,
                min(version) lo FROM ledger_entries GROUP BY account) e ON e.account = a.id
             WHERE a.version <> coalesce(e.n, 0) OR coalesce(e.hi, 0) <> coalesce(e.n, 0)
                OR coalesce(e.lo, 1) <> 1
             ORDER BY a.id LIMIT 1",
        )
        .await?
        {
            None => pass(w6, format!("{ACCOUNTS} accounts checked")),
            Some(x) => fail(w6, "an account's entries have a gap".into(), format!("account {x}")),
        },
    );

    // The database's transfers and the topic's events.
    let rows = c
        .query("SELECT id, src, dst, amount FROM ledger_transfers", &[])
        .await?;
    let db: HashMap<String, (i32, i32, i64)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let pending: HashSet<String> = c
        .query(
            "SELECT transfer_id FROM ledger_outbox WHERE published_at IS NULL",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Acknowledged transfers lost with the old region within the RPO target of the fault
    // (W9 allows them): the topic may hold them, ahead of the database. They are named
    // apart in W5 and W7 (failback reconciles them), not counted as violations.
    let acks = read_acks(&o.dir.join(ACKS_FILE));
    let cutoff = o
        .fault_at_ms
        .map(|f| f - (o.rpo_target_s * 1000.0) as i64)
        .unwrap_or(i64::MAX);
    let within_rpo: HashSet<String> = match (&acks, o.fault_at_ms) {
        (Ok(acks), Some(_)) => acks
            .iter()
            .filter(|a| a.outcome != "declined" && a.at_ms >= cutoff && !db.contains_key(&a.id))
            .map(|a| a.id.clone())
            .collect(),
        _ => HashSet::new(),
    };
    // The other way round: transfers whose events the old region published within the
    // RPO target of the fault and its mirror had not copied yet (the database crossed,
    // the event did not): behind in the topic, named apart (failback re-produces them).
    let published_lately: HashSet<String> = match o.fault_at_ms {
        Some(f) => c
            .query(
                "SELECT transfer_id FROM ledger_outbox WHERE published_at IS NOT NULL
                   AND published_at >= to_timestamp($1::float8 / 1000)
                   AND published_at <= to_timestamp($2::float8 / 1000)",
                &[&(cutoff as f64), &(f as f64)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect(),
        None => HashSet::new(),
    };
    let events = match (kafka, &e.topic) {
        (Some(b), Some(t)) => {
            let (b, t) = (b.clone(), t.clone());
            Some(tokio::task::spawn_blocking(move || read_topic(&b, &t)).await?)
        }
        _ => None,
    };
    let mut topic_records = 0u64;
    let w4 = inv("W4", "no transfer id twice, in Postgres or in the topic");
    let w5 = inv("W5", "Postgres and the topic hold the same transfers");
    let w7 = inv("W7", "balances folded from the topic equal the database's");
    match events {
        None => {
            out.push(unchecked(w4, "the lab has no Kafka".into()));
            out.push(unchecked(w5, "the lab has no Kafka".into()));
            out.push(unchecked(w7, "the lab has no Kafka".into()));
        }
        Some(Err(err)) => {
            let why = format!("cannot read the topic in {region}: {err:#}");
            out.push(unchecked(w4, why.clone()));
            out.push(unchecked(w5, why.clone()));
            out.push(unchecked(w7, why));
        }
        Some(Ok(events)) => {
            topic_records = events.len() as u64;
            // W4 (Postgres's primary key makes its half hold by construction).
            let mut seen: HashMap<&str, &str> = HashMap::new();
            let mut dup = None;
            for ev in &events {
                if let Some(prev) = seen.insert(&ev.id, &ev.at) {
                    dup.get_or_insert(format!("{} at {prev} and {}", ev.id, ev.at));
                }
            }
            out.push(match dup {
                None => pass(
                    w4,
                    format!("{} events, {} transfers", events.len(), db.len()),
                ),
                Some(x) => fail(w4, "a transfer event appears twice".into(), x),
            });
            // W5, each way; transfers still in the outbox are named apart.
            let mut missing: Vec<&String> = db
                .keys()
                .filter(|id| !seen.contains_key(id.as_str()))
                .collect();
            missing.sort();
            let (unpublished, lost): (Vec<&String>, Vec<&String>) =
                missing.into_iter().partition(|id| pending.contains(*id));
            let (behind, lost): (Vec<&String>, Vec<&String>) = lost
                .into_iter()
                .partition(|id| published_lately.contains(*id));
            let (ahead, mut extra): (Vec<&&str>, Vec<&&str>) = seen
                .keys()
                .filter(|id| !db.contains_key(**id))
                .partition(|id| within_rpo.contains(**id));
            extra.sort();
            let mut ahead_note = if ahead.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} ahead of the database, lost with the old region within the RPO target (failback reconciles them)",
                    ahead.len()
                )
            };
            if !behind.is_empty() {
                ahead_note.push_str(&format!(
                    "; {} events behind the database, published on the old region within the RPO target and not mirrored before the fault (failback re-produces them; first {})",
                    behind.len(),
                    behind[0]
                ));
            }
            out.push(if lost.is_empty() && unpublished.is_empty() && extra.is_empty() {
                pass(w5, format!("{} transfers on both sides{ahead_note}", db.len()))
            } else {
                let example = lost
                    .first()
                    .map(|id| format!("{id}: in Postgres, not in the topic"))
                    .or_else(|| {
                        unpublished
                            .first()
                            .map(|id| format!("{id}: in Postgres, still in the outbox"))
                    })
                    .or_else(|| extra.first().map(|id| format!("{id}: in the topic, not in Postgres")))
                    .unwrap_or_default();
                fail(
                    w5,
                    format!(
                        "{} only in Postgres ({} of them still in the outbox), {} only in the topic",
                        lost.len() + unpublished.len(),
                        unpublished.len(),
                        extra.len()
                    ),
                    example,
                )
            });
            // W7: fold the topic (each transfer once) from the opening balances.
            let mut folded: BTreeMap<i32, i64> = (1..=ACCOUNTS).map(|a| (a, opening(a))).collect();
            let mut once = HashSet::new();
            for ev in &events {
                if !within_rpo.contains(&ev.id) && once.insert(ev.id.as_str()) {
                    *folded.entry(ev.src).or_default() -= ev.amount;
                    *folded.entry(ev.dst).or_default() += ev.amount;
                }
            }
            // The events behind (named apart above) as the database holds them.
            for id in &behind {
                if let Some((src, dst, amount)) = db.get(*id) {
                    *folded.entry(*src).or_default() -= amount;
                    *folded.entry(*dst).or_default() += amount;
                }
            }
            let balances: BTreeMap<i32, i64> = c
                .query("SELECT id, balance FROM ledger_accounts", &[])
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let off = balances
                .iter()
                .find(|(a, b)| folded.get(a) != Some(b))
                .map(|(a, b)| {
                    format!(
                        "account {a}: database {b}, topic {}",
                        folded.get(a).copied().unwrap_or(0)
                    )
                });
            out.push(match off {
                None => pass(w7, format!("{} accounts agree{ahead_note}", balances.len())),
                Some(x) => fail(w7, "the topic and the database disagree".into(), x),
            });
        }
    }

    // W8 and W9 need the acknowledgement log.
    let w8 = inv("W8", "a retried transfer creates nothing");
    let w9 = inv(
        "W9",
        "every acknowledged transfer before the fault minus the RPO target is present",
    );
    let (mut lost_n, mut lost_s, mut acked_n) = (0u64, 0.0f64, 0u64);
    let mut lost_ids = Vec::new();
    match acks {
        Err(err) => {
            out.push(unchecked(w8, format!("{err:#}")));
            out.push(unchecked(w9, format!("{err:#}")));
        }
        Ok(acks) => {
            let committed: Vec<_> = acks.iter().filter(|a| a.outcome != "declined").collect();
            acked_n = committed.len() as u64;
            // W8: the oldest committed transfer, submitted again through the route.
            out.push(match (o.retry_probe, committed.first()) {
                (false, _) => unchecked(w8, "the retry probe was turned off".into()),
                (true, None) => unchecked(w8, "no acknowledged transfer to retry".into()),
                (true, Some(a)) => retry_probe(lab, &c, &a.id).await,
            });
            // W9 and the RPO measured.
            let missing: Vec<_> = committed
                .iter()
                .filter(|a| !db.contains_key(&a.id))
                .collect();
            lost_n = missing.len() as u64;
            lost_ids = missing.iter().map(|a| a.id.clone()).collect();
            // The RPO in seconds: from the oldest lost acknowledgement to the fault (or,
            // without one, to the newest lost acknowledgement).
            if let (Some(first_lost), Some(last_lost)) = (
                missing.iter().map(|a| a.at_ms).min(),
                missing.iter().map(|a| a.at_ms).max(),
            ) {
                let end = o.fault_at_ms.unwrap_or(last_lost).max(last_lost);
                lost_s = (end - first_lost).max(0) as f64 / 1000.0;
            }
            let late: Vec<_> = missing.iter().filter(|a| a.at_ms < cutoff).collect();
            out.push(match late.first() {
                None => pass(
                    w9,
                    format!(
                        "{} acknowledged, {} missing (all within the RPO target of the fault)",
                        committed.len(),
                        missing.len()
                    ),
                ),
                Some(a) => fail(
                    w9,
                    format!(
                        "{} acknowledged transfers missing before the cut-off",
                        late.len()
                    ),
                    format!("{} acknowledged at {} ms by {}", a.id, a.at_ms, a.region),
                ),
            });
        }
    }
    out.sort_by_key(|i| i.id);
    let passed = out.iter().all(|i| i.ok == Some(true));
    Ok(Report {
        region,
        transfers: db.len() as u64,
        topic_records,
        acknowledged: acked_n,
        lost: lost_n,
        lost_seconds: lost_s,
        lost_ids,
        invariants: out,
        passed,
    })
}

/// W8: submits transfer `id` again through the write route; it must answer `existing`
/// and change nothing (transfers and entries counted before and after).
async fn retry_probe(lab: &LabState, c: &Client, id: &str) -> Invariant {
    let w8 = inv("W8", "a retried transfer creates nothing");
    let count = "SELECT (SELECT count(*) FROM ledger_transfers) || '/' || (SELECT count(*) FROM ledger_entries)";
    let before = match first(c, count).await {
        Ok(Some(x)) => x,
        _ => return unchecked(w8, "cannot count the transfers".into()),
    };
    let url = super::workload::route_url(lab);
    let mut route = match connect(&url).await {
        Ok(r) => r,
        Err(e) => return unchecked(w8, format!("the write route takes no writes: {e}")),
    };
    let outcome = match transfer(&mut route, id, 1, 2, 1, "{}").await {
        Ok(o) => o,
        Err(e) => return unchecked(w8, format!("the retry failed: {e}")),
    };
    // The route may lead to the other region: let its change (if any) replicate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = first(c, count).await.ok().flatten().unwrap_or_default();
    if outcome == "existing" && before == after {
        pass(
            w8,
            format!("{id} retried: answered existing, transfers/entries {after}"),
        )
    } else {
        fail(
            w8,
            "a retry changed the ledger".into(),
            format!("{id}: answered {outcome}, transfers/entries {before} -> {after}"),
        )
    }
}
