//! `haven workload ledger`: transfers through the write route at a fixed rate, retried
//! with the same id until acknowledged (so it follows a failover), balance reads in both
//! regions, and the outbox relay to the active region's Kafka.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use haven_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use haven_kafka::ClusterConfig;
use serde::Serialize;
use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};

use super::{Ack, ACCOUNTS, ACKS_FILE, FLAGGED, LATENCY_FILE, OPENING_BALANCE, SUMMARY_FILE};
use crate::control::{port_of, LabState};

/// What to run.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Where the acknowledgement log, the latency per second and the summary go
    /// (outside the regions).
    pub dir: PathBuf,
    pub rate_per_min: u32,
    pub duration: Duration,
    /// Bytes of each transfer event (the seed: 5 KB).
    pub event_bytes: usize,
    /// Balance reads per transfer, half through the route, half on EU's replica.
    pub reads_per_write: u32,
    /// Concurrent writer sessions.
    pub connections: usize,
    /// Prefix of this run's transfer ids.
    pub run_id: String,
}

/// The end of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub run_id: String,
    pub seconds: f64,
    pub acknowledged: u64,
    pub applied: u64,
    pub declined: u64,
    /// Retries answered "already committed" (an earlier attempt's commit was lost in
    /// transit, e.g. at a failover): W8 in action.
    pub existing: u64,
    /// Transfers given up when the run ended without an answer (not acknowledged).
    pub unacknowledged: u64,
    /// Attempts that failed and were retried.
    pub retries: u64,
    pub rate_per_min: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// Transfers acknowledged under 100 ms (the seed's target), in percent.
    pub under_100ms_pct: f64,
    /// The longest time without an acknowledged transfer.
    pub longest_gap_ms: f64,
    /// Acknowledged transfers per region that answered.
    pub by_region: BTreeMap<String, u64>,
    pub reads: u64,
    pub read_errors: u64,
    pub read_p99_ms: f64,
    /// Outbox rows published to Kafka by the relay.
    pub relayed: u64,
    pub relay_errors: u64,
}

/// One second of the run, for progress and for `latency.ndjson`.
#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    pub at_ms: i64,
    pub elapsed_s: f64,
    pub acknowledged: u64,
    pub in_second: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub region: String,
}

#[derive(Default)]
struct Shared {
    window: Vec<f64>,
    window_errors: u64,
    all: Vec<f64>,
    reads: Vec<f64>,
    read_errors: u64,
    last_region: String,
    /// When each acknowledgement arrived (ms since the Unix epoch).
    ack_times: Vec<i64>,
    summary: Summary,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Which region a database port belongs to.
pub(crate) fn region_of(lab: &LabState, port: u16) -> String {
    let e = &lab.endpoints;
    if port_of(&e.postgres_us) == Some(port) {
        "us".into()
    } else if port_of(&e.postgres_eu) == Some(port) {
        "eu".into()
    } else {
        format!("port {port}")
    }
}

pub(crate) fn route_url(lab: &LabState) -> String {
    format!(
        "postgresql://app@{}/postgres?connect_timeout=2",
        lab.endpoints.write_route
    )
}

pub(crate) async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

/// Which region a session's server is.
async fn server_region(c: &Client, lab: &LabState) -> Result<String, tokio_postgres::Error> {
    let row = c.query_one("SELECT inet_server_port()", &[]).await?;
    let port: Option<i32> = row.get(0);
    Ok(region_of(lab, port.unwrap_or(0) as u16))
}

/// Creates the accounts (once: re-runs keep the ledger) through the write route.
async fn init(lab: &LabState) -> anyhow::Result<()> {
    let url = route_url(lab);
    let deadline = Instant::now() + Duration::from_secs(30);
    let c = loop {
        match connect(&url).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => {
                return Err(e).context("no database takes writes through the write route")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let flagged_opening = super::FLAGGED_OPENING;
    let total = (ACCOUNTS - FLAGGED) as i64 * OPENING_BALANCE + FLAGGED as i64 * flagged_opening;
    c.batch_execute(&format!(
        "BEGIN;
         INSERT INTO ledger_meta VALUES ('initial_total', {total}) ON CONFLICT DO NOTHING;
         INSERT INTO ledger_accounts (id, balance, no_overdraft)
           SELECT i, CASE WHEN i <= {FLAGGED} THEN {flagged_opening} ELSE {OPENING_BALANCE} END,
                  i <= {FLAGGED}
           FROM generate_series(1, {ACCOUNTS}) i ON CONFLICT DO NOTHING;
         COMMIT;"
    ))
    .await
    .context("create the ledger's accounts")?;
    Ok(())
}

/// One transfer in one transaction: `applied`, `declined` or `existing`.
pub(crate) async fn transfer(
    c: &mut Client,
    id: &str,
    src: i32,
    dst: i32,
    amount: i64,
    payload: &str,
) -> Result<&'static str, tokio_postgres::Error> {
    let tx = c.transaction().await?;
    let new = tx
        .query_opt(
            "INSERT INTO ledger_transfers (id, src, dst, amount) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO NOTHING RETURNING id",
            &[&id, &src, &dst, &amount],
        )
        .await?;
    if new.is_none() {
        tx.rollback().await?;
        return Ok("existing");
    }
    // Both accounts locked in id order: concurrent transfers cannot deadlock.
    tx.query(
        "SELECT id FROM ledger_accounts WHERE id IN ($1, $2) ORDER BY id FOR UPDATE",
        &[&src, &dst],
    )
    .await?;
    let debit = tx
        .query_opt(
            "UPDATE ledger_accounts SET balance = balance - $2, version = version + 1
             WHERE id = $1 AND (NOT no_overdraft OR balance >= $2) RETURNING version",
            &[&src, &amount],
        )
        .await?;
    let Some(debit) = debit else {
        tx.rollback().await?;
        return Ok("declined");
    };
    let credit = tx
        .query_one(
            "UPDATE ledger_accounts SET balance = balance + $2, version = version + 1
             WHERE id = $1 RETURNING version",
            &[&dst, &amount],
        )
        .await?;
    let (dv, cv): (i64, i64) = (debit.get(0), credit.get(0));
    tx.execute(
        "INSERT INTO ledger_entries (account, version, transfer_id, amount)
         VALUES ($1, $2, $3, -$4::bigint), ($5, $6, $3, $4::bigint)",
        &[&src, &dv, &id, &amount, &dst, &cv],
    )
    .await?;
    tx.execute(
        "INSERT INTO ledger_outbox (transfer_id, payload) VALUES ($1, $2)",
        &[&id, &payload],
    )
    .await?;
    tx.commit().await?;
    Ok("applied")
}

fn event(id: &str, src: i32, dst: i32, amount: i64, bytes: usize) -> String {
    let head = format!(
        "{{\"transfer_id\":\"{id}\",\"src\":{src},\"dst\":{dst},\"amount\":{amount},\"currency\":\"EUR\",\"memo\":\""
    );
    let pad = bytes.saturating_sub(head.len() + 2);
    let mut s = head;
    // Varied bytes (a reference, not a run of one letter) so compression is realistic.
    let mut x: u64 = id.bytes().fold(1469598103934665603, |h, b| {
        (h ^ b as u64).wrapping_mul(1099511628211)
    });
    for _ in 0..pad {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push((b'a' + (x % 26) as u8) as char);
    }
    s.push_str("\"}");
    s
}

fn pick(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Runs the workload until `duration` passes or `stop` turns true; `progress` is called
/// every second; `observe`, when given, gets every acknowledgement once it is in the log.
pub async fn run(
    lab: &LabState,
    o: &WorkloadOptions,
    stop: watch::Receiver<bool>,
    progress: impl Fn(&Tick) + Send + Sync + 'static,
    observe: Option<tokio::sync::mpsc::UnboundedSender<Ack>>,
) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(&o.dir).with_context(|| format!("create {}", o.dir.display()))?;
    init(lab).await?;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (acks, acks_done) = appender(o.dir.join(ACKS_FILE), observe)?;
    let (seconds, seconds_done) = appender::<Tick>(o.dir.join(LATENCY_FILE), None)?;
    let started = Instant::now();
    let (done_tx, done) = watch::channel(false);
    // The run's end: its duration, or a signal.
    {
        let mut stop = stop.clone();
        let duration = o.duration;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(duration) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            let _ = done_tx.send(true);
        });
    }
    let mut tasks = Vec::new();
    let per_conn = (o.rate_per_min as f64 / 60.0 / o.connections.max(1) as f64).max(0.01);
    for i in 0..o.connections.max(1) {
        tasks.push(tokio::spawn(writer(
            lab.clone(),
            o.clone(),
            i,
            per_conn,
            shared.clone(),
            acks.clone(),
            done.clone(),
        )));
    }
    let reads = if o.reads_per_write > 0 {
        Some(tokio::spawn(reader(
            lab.clone(),
            o.rate_per_min as f64 / 60.0 * o.reads_per_write as f64,
            shared.clone(),
            done.clone(),
        )))
    } else {
        None
    };
    // The relay drains the outbox after the writers have stopped.
    let (relay_stop, relay_done) = watch::channel(false);
    let relay = lab
        .endpoints
        .topic
        .clone()
        .map(|topic| tokio::spawn(relay(lab.clone(), topic, shared.clone(), relay_done)));
    let ticker = tokio::spawn(ticker(
        seconds,
        started,
        shared.clone(),
        done.clone(),
        progress,
    ));
    for t in tasks {
        let _ = t.await;
    }
    if let Some(r) = reads {
        let _ = r.await;
    }
    let _ = relay_stop.send(true);
    if let Some(r) = relay {
        let _ = r.await;
    }
    let _ = ticker.await;
    // Every acknowledgement in the log (flushed, forwarded) before the run ends.
    drop(acks);
    let _ = tokio::task::spawn_blocking(move || {
        let _ = acks_done.join();
        let _ = seconds_done.join();
    })
    .await;
    let mut s = {
        let mut g = shared.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = std::mem::take(&mut g.all);
        let mut reads = std::mem::take(&mut g.reads);
        let mut s = g.summary.clone();
        s.latency_p50_ms = percentile(&mut all, 0.5);
        s.latency_p99_ms = percentile(&mut all, 0.99);
        s.latency_max_ms = all.last().copied().unwrap_or(0.0);
        s.under_100ms_pct = if all.is_empty() {
            0.0
        } else {
            100.0 * all.iter().filter(|l| **l < 100.0).count() as f64 / all.len() as f64
        };
        s.read_p99_ms = percentile(&mut reads, 0.99);
        s.read_errors = g.read_errors;
        s
    };
    s.run_id = o.run_id.clone();
    s.seconds = started.elapsed().as_secs_f64();
    s.rate_per_min = s.acknowledged as f64 / s.seconds.max(0.001) * 60.0;
    s.longest_gap_ms = longest_gap(&mut shared.lock().unwrap_or_else(|e| e.into_inner()).ack_times);
    std::fs::write(o.dir.join(SUMMARY_FILE), serde_json::to_vec_pretty(&s)?)
        .with_context(|| format!("write {}", o.dir.join(SUMMARY_FILE).display()))?;
    Ok(s)
}

/// The longest time between two acknowledgements.
fn longest_gap(times: &mut [i64]) -> f64 {
    times.sort_unstable();
    times
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64)
        .fold(0.0, f64::max)
}

/// Appends values as JSON lines to `path` from a thread of its own (file writes do not
/// block the runtime), flushed as soon as the queue is empty; each value is then passed
/// to `forward`, so an observer never sees one before it is in the file.
fn appender<T: Serialize + Send + 'static>(
    path: PathBuf,
    forward: Option<tokio::sync::mpsc::UnboundedSender<T>>,
) -> anyhow::Result<(std::sync::mpsc::Sender<T>, std::thread::JoinHandle<()>)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    let (tx, rx) = std::sync::mpsc::channel::<T>();
    let handle = std::thread::spawn(move || {
        let mut w = std::io::BufWriter::new(file);
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            for v in &batch {
                if let Ok(line) = serde_json::to_string(v) {
                    let _ = writeln!(w, "{line}");
                }
            }
            let _ = w.flush();
            if let Some(f) = &forward {
                for v in batch {
                    let _ = f.send(v);
                }
            }
        }
    });
    Ok((tx, handle))
}

async fn writer(
    lab: LabState,
    o: WorkloadOptions,
    index: usize,
    per_second: f64,
    shared: Arc<Mutex<Shared>>,
    acks: std::sync::mpsc::Sender<Ack>,
    done: watch::Receiver<bool>,
) {
    let url = route_url(&lab);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seed = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ now_ms() as u64;
    let mut client: Option<(Client, String)> = None;
    let mut n: u64 = 0;
    while !*done.borrow() {
        tick.tick().await;
        if *done.borrow() {
            break;
        }
        n += 1;
        let id = format!("{}-{index}-{n}", o.run_id);
        let src = (pick(&mut seed) % ACCOUNTS as u64) as i32 + 1;
        let mut dst = (pick(&mut seed) % ACCOUNTS as u64) as i32 + 1;
        if dst == src {
            dst = src % ACCOUNTS + 1;
        }
        let amount = (pick(&mut seed) % 1000) as i64 + 1;
        let payload = event(&id, src, dst, amount, o.event_bytes);
        let begun = Instant::now();
        let mut attempts = 0u32;
        let mut gave_up_at: Option<Instant> = None;
        loop {
            attempts += 1;
            if client.is_none() {
                if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(2), connect(&url)).await
                {
                    if let Ok(r) = server_region(&c, &lab).await {
                        client = Some((c, r));
                    }
                }
            }
            let outcome = match client.as_mut() {
                Some((c, _)) => match tokio::time::timeout(
                    Duration::from_secs(5),
                    transfer(c, &id, src, dst, amount, &payload),
                )
                .await
                {
                    Ok(Ok(outcome)) => Some(outcome),
                    _ => None,
                },
                None => None,
            };
            match outcome {
                Some(outcome) => {
                    let latency = begun.elapsed().as_secs_f64() * 1000.0;
                    let region = client.as_ref().map(|c| c.1.clone()).unwrap_or_default();
                    {
                        let mut g = shared.lock().unwrap_or_else(|e| e.into_inner());
                        g.window.push(latency);
                        g.all.push(latency);
                        g.last_region = region.clone();
                        g.ack_times.push(now_ms());
                        let s = &mut g.summary;
                        s.acknowledged += 1;
                        s.retries += (attempts - 1) as u64;
                        match outcome {
                            "applied" => s.applied += 1,
                            "declined" => s.declined += 1,
                            _ => s.existing += 1,
                        }
                        *s.by_region.entry(region.clone()).or_default() += 1;
                    }
                    let _ = acks.send(Ack {
                        id: id.clone(),
                        at_ms: now_ms(),
                        latency_ms: latency,
                        outcome: outcome.into(),
                        region,
                        attempts,
                    });
                    break;
                }
                None => {
                    client = None;
                    shared
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .window_errors += 1;
                    // After the end, an unanswered transfer gets 5 s more, then is given
                    // up (and not acknowledged).
                    if *done.borrow() {
                        let t = *gave_up_at.get_or_insert_with(Instant::now);
                        if t.elapsed() > Duration::from_secs(5) {
                            shared
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .summary
                                .unacknowledged += 1;
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Balance reads: alternately through the write route (the active region) and on EU's
/// replica as `reader`.
async fn reader(
    lab: LabState,
    per_second: f64,
    shared: Arc<Mutex<Shared>>,
    done: watch::Receiver<bool>,
) {
    let route = format!(
        "postgresql://reader@{}/postgres?connect_timeout=2",
        lab.endpoints.write_route
    );
    let eu = lab
        .endpoints
        .postgres_eu
        .replacen("postgres@", "reader@", 1);
    let urls = [route, eu];
    let mut clients: [Option<Client>; 2] = [None, None];
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second.max(0.01)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seed = now_ms() as u64 | 1;
    let mut i = 0usize;
    while !*done.borrow() {
        tick.tick().await;
        i = (i + 1) % 2;
        if clients[i].is_none() {
            clients[i] = tokio::time::timeout(Duration::from_secs(2), connect(&urls[i]))
                .await
                .ok()
                .and_then(|c| c.ok());
        }
        let account = (pick(&mut seed) % ACCOUNTS as u64) as i32 + 1;
        let begun = Instant::now();
        let ok = match &clients[i] {
            Some(c) => matches!(
                tokio::time::timeout(
                    Duration::from_secs(2),
                    c.query_opt(
                        "SELECT balance FROM ledger_accounts WHERE id = $1",
                        &[&account]
                    )
                )
                .await,
                Ok(Ok(_))
            ),
            None => false,
        };
        let mut g = shared.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            g.reads.push(begun.elapsed().as_secs_f64() * 1000.0);
            g.summary.reads += 1;
        } else {
            g.read_errors += 1;
            clients[i] = None;
        }
    }
}

/// The outbox relay: publishes unpublished rows, oldest first, to the topic on the
/// cluster of the region the write route leads to, then marks them published. Keeps
/// going for up to 10 s after the end to drain the outbox.
async fn relay(
    lab: LabState,
    topic: String,
    shared: Arc<Mutex<Shared>>,
    done: watch::Receiver<bool>,
) {
    let url = route_url(&lab);
    let mut client: Option<Client> = None;
    let mut producers = Targets::default();
    let mut drain_until: Option<Instant> = None;
    loop {
        if *done.borrow() {
            let until =
                *drain_until.get_or_insert_with(|| Instant::now() + Duration::from_secs(10));
            if Instant::now() > until {
                break;
            }
        }
        match relay_once(&lab, &topic, &url, &mut client, &mut producers).await {
            Ok((_, 0)) if drain_until.is_some() => break,
            Ok((_, 0)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok((n, _)) => {
                shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .summary
                    .relayed += n
            }
            Err(_) => {
                client = None;
                shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .summary
                    .relay_errors += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The relay's producers per cluster, and the transfer ids the current target's topic
/// holds (read again whenever the target changes).
#[derive(Default)]
struct Targets {
    producers: BTreeMap<String, FutureProducer>,
    current: Option<String>,
    known: HashSet<String>,
}

async fn relay_once(
    lab: &LabState,
    topic: &str,
    url: &str,
    client: &mut Option<Client>,
    producers: &mut Targets,
) -> anyhow::Result<(u64, usize)> {
    if client.is_none() {
        *client = Some(tokio::time::timeout(Duration::from_secs(2), connect(url)).await??);
    }
    let Some(c) = client.as_ref() else {
        return Ok((0, 0));
    };
    let region = server_region(c, lab).await?;
    let bootstrap = match region.as_str() {
        "us" => lab.endpoints.kafka_us.clone(),
        "eu" => lab.endpoints.kafka_eu.clone(),
        _ => None,
    }
    .with_context(|| format!("no Kafka cluster for region {region}"))?;
    let rows = c
        .query(
            "SELECT seq, transfer_id, payload FROM ledger_outbox WHERE published_at IS NULL
             ORDER BY seq LIMIT 500",
            &[],
        )
        .await?;
    if rows.is_empty() {
        return Ok((0, 0));
    }
    if producers.current.as_deref() != Some(bootstrap.as_str()) {
        // The target changed (the start, a switchover, a failover, or back again): learn
        // which transfers its topic already holds (copied there by a mirror, or published
        // before a crash), so that an outbox row whose "published" mark was lost with the
        // old region is not published twice.
        let (b, t) = (bootstrap.clone(), topic.to_string());
        producers.known = tokio::task::spawn_blocking(move || {
            super::check::read_topic(&b, &t).map(|evs| evs.into_iter().map(|e| e.id).collect())
        })
        .await??;
        producers.current = Some(bootstrap.clone());
        // A fresh producer, as a service moving regions starts one: an idempotent
        // producer's sequence numbers do not survive its partitions being re-created (a
        // failback rebuilds the old region's topics).
        producers.producers.remove(&bootstrap);
    }
    if !producers.producers.contains_key(&bootstrap) {
        let producer = ClusterConfig::new(&bootstrap).producer()?;
        producers.producers.insert(bootstrap.clone(), producer);
    }
    let Targets {
        producers: ps,
        known,
        ..
    } = producers;
    let Some(p) = ps.get(&bootstrap) else {
        return Ok((0, 0));
    };
    let mut sends = Vec::with_capacity(rows.len());
    let mut seqs: Vec<i64> = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    for r in &rows {
        let (seq, id, payload): (i64, String, String) = (r.get(0), r.get(1), r.get(2));
        seqs.push(seq);
        if known.contains(&id) {
            continue;
        }
        let record = FutureRecord::to(topic).key(&id).payload(&payload);
        match p.send_result(record) {
            Ok(delivery) => sends.push(delivery),
            Err((e, _)) => anyhow::bail!("queue a transfer event: {e}"),
        }
        ids.push(id);
    }
    // Every event delivered (acks=all, idempotent) before the rows are marked.
    for delivery in sends {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => anyhow::bail!("publish a transfer event: {e}"),
            Err(_) => anyhow::bail!("publish a transfer event: the producer went away"),
        }
    }
    let published = ids.len() as u64;
    known.extend(ids);
    c.execute(
        "UPDATE ledger_outbox SET published_at = now() WHERE seq = ANY($1)",
        &[&seqs],
    )
    .await?;
    Ok((published, seqs.len()))
}

async fn ticker(
    log: std::sync::mpsc::Sender<Tick>,
    started: Instant,
    shared: Arc<Mutex<Shared>>,
    mut done: watch::Receiver<bool>,
    progress: impl Fn(&Tick),
) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = done.wait_for(|d| *d) => {}
        }
        let tick = {
            let mut g = shared.lock().unwrap_or_else(|e| e.into_inner());
            let mut w = std::mem::take(&mut g.window);
            let errors = std::mem::take(&mut g.window_errors);
            Tick {
                at_ms: now_ms(),
                elapsed_s: started.elapsed().as_secs_f64(),
                acknowledged: g.summary.acknowledged,
                in_second: w.len() as u64,
                p50_ms: percentile(&mut w, 0.5),
                p99_ms: percentile(&mut w, 0.99),
                errors,
                region: g.last_region.clone(),
            }
        };
        progress(&tick);
        let _ = log.send(tick);
        if *done.borrow() {
            break;
        }
    }
}
