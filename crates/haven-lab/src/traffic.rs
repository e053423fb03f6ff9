//! The lab's traffic: the application writing through the route, and the sampler that
//! checks, every 100 ms, that at most one region accepts writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testbed::Postgres;

use crate::agent::lease_epoch_of;
use crate::regions::{rt, Lab};

/// Which region an `app` write reaches through the proxy (it rolls back), if any.
pub async fn write_via_route(port: u16) -> Option<u16> {
    let url = format!("postgresql://app@127.0.0.1:{port}/postgres?connect_timeout=1");
    let (c, conn) = tokio::time::timeout(
        Duration::from_secs(1),
        tokio_postgres::connect(&url, tokio_postgres::NoTls),
    )
    .await
    .ok()?
    .ok()?;
    tokio::spawn(conn);
    let row = c
        .query_one(
            "INSERT INTO accounts (owner) VALUES ('probe') RETURNING inet_server_port()",
            &[],
        )
        .await
        .ok()?;
    // Autocommit would keep it: delete it again (the probe is about acceptance).
    let _ = c
        .execute("DELETE FROM accounts WHERE owner = 'probe'", &[])
        .await;
    row.get::<_, Option<i32>>(0).map(|p| p as u16)
}

/// Whether an `app` session connecting straight to the database could write.
pub async fn writes_directly(pg_port: u16) -> bool {
    let url = format!("postgresql://app@127.0.0.1:{pg_port}/postgres?connect_timeout=1");
    let Ok(Ok((c, conn))) = tokio::time::timeout(
        Duration::from_secs(1),
        tokio_postgres::connect(&url, tokio_postgres::NoTls),
    )
    .await
    else {
        return false;
    };
    tokio::spawn(conn);
    if c.simple_query("BEGIN").await.is_err() {
        return false;
    }
    let ok = c
        .execute("INSERT INTO accounts (owner) VALUES ('probe')", &[])
        .await
        .is_ok();
    let _ = c.simple_query("ROLLBACK").await;
    ok
}

/// When, whether US and EU took an application write directly, and which database a
/// write through the route reached.
pub type Sample = (Instant, bool, bool, Option<u16>);

/// Samples every 100 ms until stopped: violations (more than one region accepting
/// writes, an epoch going down) as text.
pub fn sampler(
    lab: &Lab,
    stop: Arc<AtomicBool>,
    violations: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<Vec<Sample>> {
    let proxy_port = lab.write_port();
    let (us_port, eu_port) = (lab.us.port(), lab.eu.port());
    let agent_ports: Vec<u16> = lab.agents.iter().map(|a| a.1).collect();
    let violation = move |text: String| {
        if let Ok(mut v) = violations.lock() {
            v.push(text);
        }
    };
    std::thread::spawn(move || {
        let rt = rt();
        let mut samples = Vec::new();
        // Per agent: the epoch each one reports never goes down.
        let mut max_epoch = vec![0u64; agent_ports.len()];
        while !stop.load(Ordering::SeqCst) {
            let at = Instant::now();
            let (route, us_direct, eu_direct) = rt.block_on(async {
                (
                    write_via_route(proxy_port).await,
                    writes_directly(us_port).await,
                    writes_directly(eu_port).await,
                )
            });
            let mut writable = std::collections::BTreeSet::new();
            if us_direct || route == Some(us_port) {
                writable.insert("us");
            }
            if eu_direct || route == Some(eu_port) {
                writable.insert("eu");
            }
            if writable.len() > 1 {
                violation(format!(
                    "both regions accept writes: route {route:?}, us {us_direct}, eu {eu_direct}"
                ));
            }
            for (i, p) in agent_ports.iter().enumerate() {
                if let Some(e) = lease_epoch_of(*p) {
                    if e < max_epoch[i] {
                        violation(format!(
                            "agent {i}: epoch went down from {} to {e}",
                            max_epoch[i]
                        ));
                    }
                    max_epoch[i] = max_epoch[i].max(e);
                }
            }
            samples.push((at, us_direct, eu_direct, route));
            std::thread::sleep(Duration::from_millis(100).saturating_sub(at.elapsed()));
        }
        samples
    })
}

/// One acknowledged write: its owner, when, and the Postgres port that acknowledged it.
pub type Ack = (String, Instant, u16);

/// How the writer writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    /// Transactions a second (None: one after another, 10 ms apart).
    pub per_second: Option<f64>,
    /// Bytes of payload per row (0: none).
    pub payload_bytes: usize,
}

impl Load {
    /// The seed's load: 10,000 transactions a minute of 5 KB.
    pub fn seed() -> Load {
        Load {
            per_second: Some(10_000.0 / 60.0),
            payload_bytes: 5 * 1024,
        }
    }
}

/// The application: writes through the proxy until stopped, one transaction at a time,
/// reconnecting (with timeouts, like any application) when its session breaks. Returns
/// every acknowledged write; a write without an answer goes to `unknown` (it may or may
/// not have committed).
pub fn writer(
    port: u16,
    load: Load,
    stop: Arc<AtomicBool>,
    unknown: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<Vec<Ack>> {
    std::thread::spawn(move || {
        let rt = rt();
        let mut acked = Vec::new();
        let payload: Option<String> = (load.payload_bytes > 0).then(|| {
            (0..load.payload_bytes)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect()
        });
        let started = Instant::now();
        let mut n = 0u64;
        rt.block_on(async {
            let url = format!("postgresql://app@127.0.0.1:{port}/postgres?connect_timeout=1");
            let mut client: Option<tokio_postgres::Client> = None;
            while !stop.load(Ordering::SeqCst) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    let connecting = tokio::time::timeout(
                        Duration::from_secs(2),
                        tokio_postgres::connect(&url, tokio_postgres::NoTls),
                    );
                    client = match connecting.await {
                        Ok(Ok((c, conn))) => {
                            tokio::spawn(conn);
                            Some(c)
                        }
                        _ => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                }
                let Some(c) = client.as_ref() else { continue };
                n += 1;
                let owner = format!("w{n}");
                let inserted = tokio::time::timeout(
                    Duration::from_secs(2),
                    c.query_one(
                        "INSERT INTO accounts (owner, payload) VALUES ($1, $2) \
                         RETURNING inet_server_port()",
                        &[&owner, &payload],
                    ),
                )
                .await;
                match inserted {
                    Ok(Ok(row)) => {
                        let by = row.get::<_, Option<i32>>(0).unwrap_or(0) as u16;
                        acked.push((owner, Instant::now(), by))
                    }
                    // The server refused it (an SQLSTATE): the autocommit insert was
                    // rolled back.
                    Ok(Err(e)) if e.as_db_error().is_some() => {
                        client = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    // The connection broke with the insert in flight (a fence closes
                    // sessions): it may have committed before the answer was lost.
                    Ok(Err(_)) | Err(_) => {
                        if let Ok(mut u) = unknown.lock() {
                            u.push(owner);
                        }
                        client = None;
                    }
                }
                match load.per_second {
                    Some(rate) => {
                        let next = started + Duration::from_secs_f64(n as f64 / rate);
                        tokio::time::sleep(next.saturating_duration_since(Instant::now())).await;
                    }
                    None => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        acked
    })
}

/// The owners of the writer's rows in a database, sorted.
pub fn owners(pg: &Postgres) -> anyhow::Result<Vec<String>> {
    rt().block_on(async {
        let c = pg.connect().await?;
        let rows = c
            .query(
                "SELECT owner FROM accounts WHERE owner LIKE 'w%' ORDER BY owner",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    })
}

/// The application writing through the route (optional) and the sampler checking every
/// 100 ms that at most one region takes writes, while faults are injected.
pub struct Traffic {
    stop_sampler: Arc<AtomicBool>,
    stop_writer: Arc<AtomicBool>,
    violations: Arc<Mutex<Vec<String>>>,
    unknown: Arc<Mutex<Vec<String>>>,
    sampling: std::thread::JoinHandle<Vec<Sample>>,
    writing: Option<std::thread::JoinHandle<Vec<Ack>>>,
}

/// What the traffic saw once stopped.
pub struct Seen {
    /// Every write acknowledged, in order.
    pub acked: Vec<Ack>,
    /// Writes without an answer (they may or may not have committed).
    pub unknown: Vec<String>,
    pub samples: Vec<Sample>,
    /// More than one region taking writes, an epoch going down.
    pub violations: Vec<String>,
}

impl Traffic {
    /// The sampler, and the writer with `load` if given.
    pub fn start(lab: &Lab, load: Option<Load>) -> Traffic {
        let stop_sampler = Arc::new(AtomicBool::new(false));
        let stop_writer = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let unknown = Arc::new(Mutex::new(Vec::new()));
        let sampling = sampler(lab, stop_sampler.clone(), violations.clone());
        let writing =
            load.map(|l| writer(lab.write_port(), l, stop_writer.clone(), unknown.clone()));
        Traffic {
            stop_sampler,
            stop_writer,
            violations,
            unknown,
            sampling,
            writing,
        }
    }

    /// Stops the writer, then the sampler. A panicked thread is an error.
    pub fn stop(self) -> anyhow::Result<Seen> {
        self.stop_writer.store(true, Ordering::SeqCst);
        let acked = match self.writing {
            Some(w) => w
                .join()
                .map_err(|_| anyhow::anyhow!("the writer panicked"))?,
            None => Vec::new(),
        };
        self.stop_sampler.store(true, Ordering::SeqCst);
        let samples = self
            .sampling
            .join()
            .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
        let unknown = self.unknown.lock().map(|u| u.clone()).unwrap_or_default();
        let violations = self
            .violations
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        Ok(Seen {
            acked,
            unknown,
            samples,
            violations,
        })
    }
}
