//! Switchover and failover on real servers: 3 etcd members, two Postgres 15 clusters with
//! logical replication (US publishes, EU subscribes), one HAProxy whose write backend
//! has a US and an EU server (the Postgres servers), and an agent per region.
//!
//! While it runs, an application writes through HAProxy as role `app`, and a sampler
//! checks every 100 ms that at most one region accepts an `app` write (through the route
//! or directly) and that the epoch the agents report never goes down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haven_pg::Pg;
use testbed::{EtcdCluster, Haproxy, HaproxyBackend, Postgres};

use crate::{code, haven, path, stderr};

struct Lab {
    _etcd: EtcdCluster,
    us: Postgres,
    eu: Postgres,
    proxy: Haproxy,
    dns: testbed::Knot,
    dir: tempfile::TempDir,
    cfg: String,
    agents: Vec<(String, u16, std::process::Child)>,
    /// US's links to the etcd members (empty unless asked for).
    us_links: Vec<testbed::DelayProxy>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, _, c) in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const TSIG_B64: &str = "aGF2ZW4tdGVzdC1rZXktMzItYnl0ZXMtbG9uZy4uLi4=";

/// Where `kafka.dr.example.` points, and the epoch beside it, at the lab's DNS server.
fn dns_state(lab: &Lab) -> (Vec<String>, Option<String>) {
    let dig = |name: &str, kind: &str| -> Vec<String> {
        let out = std::process::Command::new("kdig")
            .args([
                "@127.0.0.1",
                "-p",
                &lab.dns.port().to_string(),
                name,
                kind,
                "+short",
            ])
            .output()
            .expect("kdig (apt-get install knot-dnsutils)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().trim_matches('"').to_string())
            .filter(|l| !l.is_empty())
            .collect()
    };
    (
        dig("kafka.dr.example.", "A"),
        dig("_epoch.kafka.dr.example.", "TXT").pop(),
    )
}

const SCHEMA: &str = "CREATE TABLE accounts (id bigserial PRIMARY KEY, owner text NOT NULL);
     CREATE ROLE app LOGIN;
     GRANT ALL ON accounts TO app; GRANT ALL ON SEQUENCE accounts_id_seq TO app;";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn admin(pg: &Postgres, name: &str) -> Pg {
    Pg::connect(name, &pg.url("postgres"), None, Duration::from_secs(10))
        .await
        .unwrap()
}

fn lab() -> Lab {
    lab_with("manual")
}

fn spawn_agent(cfg: &str, region: &str, port: u16, state: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_haven"))
        .args(["--config", cfg, "agent", "--region", region])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(state)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(state.with_extension("log")).unwrap())
        .spawn()
        .unwrap()
}

fn lab_with(mode: &str) -> Lab {
    lab_linked(mode, false)
}

/// With `cut_links`, US's agent reaches the etcd members through proxies the test can
/// cut: a partition of US from EU and the witness (as far as coordination goes).
fn lab_linked(mode: &str, cut_links: bool) -> Lab {
    let etcd = EtcdCluster::start(3).unwrap();
    let (us, eu) = (Postgres::start().unwrap(), Postgres::start().unwrap());
    rt().block_on(async {
        let (u, e) = (admin(&us, "ledger-us").await, admin(&eu, "ledger-eu").await);
        for db in [&u, &e] {
            db.exec("schema", SCHEMA).await.unwrap();
            db.ensure_tables().await.unwrap();
        }
        u.ensure_publication("haven").await.unwrap();
        e.ensure_subscription("haven", &us.conninfo("postgres"), "haven", true)
            .await
            .unwrap();
        e.wait_synced("haven", Duration::from_secs(30))
            .await
            .unwrap();
        // The standby's application roles are fenced while it is the standby.
        e.fence(&["app".into()]).await.unwrap();
    });
    let proxy = Haproxy::start(&[HaproxyBackend {
        name: "be_write".into(),
        servers: vec![
            ("us".into(), format!("127.0.0.1:{}", us.port())),
            ("eu".into(), format!("127.0.0.1:{}", eu.port())),
        ],
        disabled: true,
    }])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dns =
        testbed::Knot::start("dr.example.", &["kafka A 10.0.0.1"], "haven", TSIG_B64).unwrap();
    let key_file = dir.path().join("tsig.key");
    std::fs::write(&key_file, TSIG_B64).unwrap();
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    let socket = path(&proxy.socket());
    let text = format!(
        r#"
[clusters.us]
bootstrap = "127.0.0.1:1"
[clusters.eu]
bootstrap = "127.0.0.1:2"

[coordination]
endpoints = [{endpoints}]
cluster = "lab"
lease_ttl_s = 3

[regions.us]
cluster = "us"
[regions.eu]
cluster = "eu"

[failover]
primary = "us"
standby = "eu"
mode = "{mode}"
failed_checks = 2

[databases.ledger-us]
region = "us"
url = "{us_url}"
roles = ["app"]
peer = "ledger-eu"
sequence_gap = 1000

[databases.ledger-eu]
region = "eu"
url = "{eu_url}"
roles = ["app"]
sequence_gap = 1000

[routes.write-us]
region = "us"
kind = "haproxy"
socket = "{socket}"
backend = "be_write"
server = "us"

[routes.write-eu]
region = "eu"
kind = "haproxy"
socket = "{socket}"
backend = "be_write"
server = "eu"

[routes.dns-us]
region = "us"
kind = "dns"
dns_server = "127.0.0.1:{dns_port}"
zone = "dr.example."
name = "kafka.dr.example."
address = "10.0.0.1"
key_name = "haven"
key_file = "{key_file}"

[routes.dns-eu]
region = "eu"
kind = "dns"
dns_server = "127.0.0.1:{dns_port}"
zone = "dr.example."
name = "kafka.dr.example."
address = "10.0.1.1"
key_name = "haven"
key_file = "{key_file}"
"#,
        endpoints = endpoints.join(", "),
        us_url = us.url("postgres"),
        eu_url = eu.url("postgres"),
        dns_port = dns.port(),
        key_file = path(&key_file),
    );
    let cfg = dir.path().join("haven.toml");
    std::fs::write(&cfg, text).unwrap();
    let cfg = path(&cfg);
    let mut lab = Lab {
        _etcd: etcd,
        us,
        eu,
        proxy,
        dns,
        dir,
        cfg,
        agents: vec![],
        us_links: vec![],
    };
    let mut us_cfg = lab.cfg.clone();
    if cut_links {
        let mut text = std::fs::read_to_string(&lab.cfg).unwrap();
        for i in 0..3 {
            let port = lab._etcd.client_port(i);
            let link = testbed::DelayProxy::start(0, port, Duration::ZERO).unwrap();
            text = text.replace(
                &format!("127.0.0.1:{port}\""),
                &format!("127.0.0.1:{}\"", link.port()),
            );
            lab.us_links.push(link);
        }
        let p = lab.dir.path().join("haven-us.toml");
        std::fs::write(&p, text).unwrap();
        us_cfg = path(&p);
    }
    for region in ["us", "eu"] {
        let port = testbed::free_port().unwrap();
        let state = lab.dir.path().join(format!("agent-{region}"));
        let cfg = if region == "us" { &us_cfg } else { &lab.cfg };
        let child = spawn_agent(cfg, region, port, &state);
        lab.agents.push((region.into(), port, child));
    }
    lab
}

/// Which region an `app` write reaches through the proxy (it rolls back), if any.
async fn write_via_route(port: u16) -> Option<u16> {
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
async fn writes_directly(pg_port: u16) -> bool {
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
    let Ok(tx) = c.simple_query("BEGIN").await else {
        return false;
    };
    drop(tx);
    let ok = c
        .execute("INSERT INTO accounts (owner) VALUES ('probe')", &[])
        .await
        .is_ok();
    let _ = c.simple_query("ROLLBACK").await;
    ok
}

/// When, whether US and EU took an application write directly, and which database a
/// write through the route reached.
type Sample = (Instant, bool, bool, Option<u16>);

/// Samples every 100 ms until stopped: violations (more than one region accepting
/// writes, an epoch going down) as text.
fn sampler(
    lab: &Lab,
    stop: Arc<AtomicBool>,
    violations: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<Vec<Sample>> {
    let proxy_port = lab.proxy.port("be_write");
    let (us_port, eu_port) = (lab.us.port(), lab.eu.port());
    let agent_ports: Vec<u16> = lab.agents.iter().map(|a| a.1).collect();
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
                violations.lock().unwrap().push(format!(
                    "both regions accept writes: route {route:?}, us {us_direct}, eu {eu_direct}"
                ));
            }
            for (i, p) in agent_ports.iter().enumerate() {
                if let Some(e) = super::failover::lease_epoch_of(*p) {
                    if e < max_epoch[i] {
                        violations.lock().unwrap().push(format!(
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
type Ack = (String, Instant, u16);

/// The application: writes through the proxy until stopped; returns every acknowledged
/// write.
fn writer(
    port: u16,
    stop: Arc<AtomicBool>,
    unknown: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<Vec<Ack>> {
    std::thread::spawn(move || {
        let rt = rt();
        let mut acked = Vec::new();
        let mut n = 0;
        rt.block_on(async {
            let url = format!("postgresql://app@127.0.0.1:{port}/postgres?connect_timeout=1");
            let mut client: Option<tokio_postgres::Client> = None;
            while !stop.load(Ordering::SeqCst) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    // Like any application, with timeouts: a session the proxy holds for
                    // a dead server must not block it forever.
                    let connecting = tokio::time::timeout(
                        Duration::from_secs(2),
                        tokio_postgres::connect(&url, tokio_postgres::NoTls),
                    );
                    client = match connecting
                        .await
                        .unwrap_or_else(|_| Err(tokio_postgres::Error::__private_api_timeout()))
                    {
                        Ok((c, conn)) => {
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
                        "INSERT INTO accounts (owner) VALUES ($1) RETURNING inet_server_port()",
                        &[&owner],
                    ),
                )
                .await;
                match inserted {
                    Ok(Ok(row)) => {
                        let by = row.get::<_, Option<i32>>(0).unwrap_or(0) as u16;
                        acked.push((owner, Instant::now(), by))
                    }
                    Ok(Err(_)) => {
                        client = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(_) => {
                        // No answer: it may or may not have committed.
                        unknown.lock().unwrap().push(owner);
                        client = None;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        acked
    })
}

fn owners(pg: &Postgres) -> Vec<String> {
    rt().block_on(async {
        let c = pg.connect().await.unwrap();
        c.query(
            "SELECT owner FROM accounts WHERE owner LIKE 'w%' ORDER BY owner",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    })
}

fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn switchover_loses_no_acknowledged_write_and_one_region_takes_writes() {
    let lab = lab();
    let (us_agent, eu_agent) = (lab.agents[0].1, lab.agents[1].1);
    // The primary's agent takes the lease on a fresh deployment and opens its route.
    until(
        "US takes the lease and opens its route",
        Duration::from_secs(30),
        || {
            super::failover::lease_status(us_agent) == Some(200)
                && rt().block_on(write_via_route(lab.proxy.port("be_write"))) == Some(lab.us.port())
        },
    );
    let epoch_before = super::failover::lease_epoch_of(us_agent).unwrap();
    let state = lab.dir.path().join("state");
    let state = path(&state);

    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let sampling = sampler(&lab, stop.clone(), violations.clone());
    let stop_writer = Arc::new(AtomicBool::new(false));
    let unknown = Arc::new(Mutex::new(Vec::new()));
    let writing = writer(
        lab.proxy.port("be_write"),
        stop_writer.clone(),
        unknown.clone(),
    );
    std::thread::sleep(Duration::from_secs(2));

    // The RPO ledger has the replica: its heartbeat age, the slot's bytes, remote_lsn.
    let out = haven(&["--json", "--config", &lab.cfg, "failover", "status"]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let db = &st["databases"][0];
    assert_eq!(db["database"], "ledger-eu", "{st}");
    assert_eq!(db["source"], "ledger-us", "{st}");
    assert!(db["lag_seconds"].as_f64().is_some_and(|s| s < 30.0), "{st}");
    assert!(
        db["lag_bytes"].is_i64() && db["remote_lsn"].is_string(),
        "{st}"
    );

    // The plan, then the switchover itself.
    let out = haven(&[
        "--config",
        &lab.cfg,
        "switchover",
        "--to",
        "eu",
        "--dry-run",
        "--state-dir",
        &state,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        plan.contains("fence database ledger-us") && plan.contains("hand the region lease to eu"),
        "{plan}"
    );
    let started = Instant::now();
    let out = haven(&[
        "--json",
        "--config",
        &lab.cfg,
        "switchover",
        "--to",
        "eu",
        "--yes",
        "--state-dir",
        &state,
    ]);
    let took = started.elapsed();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["to"], "eu");
    assert_eq!(report["epoch"].as_u64(), Some(epoch_before + 1), "{report}");
    // DNS points at EU, with the new epoch beside it.
    assert_eq!(
        dns_state(&lab),
        (
            vec!["10.0.1.1".to_string()],
            Some((epoch_before + 1).to_string())
        )
    );

    // Writes go on, now into EU.
    until(
        "a write lands in EU through the route",
        Duration::from_secs(20),
        || rt().block_on(write_via_route(lab.proxy.port("be_write"))) == Some(lab.eu.port()),
    );
    std::thread::sleep(Duration::from_secs(1));
    stop_writer.store(true, Ordering::SeqCst);
    let acked = writing.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    let all_samples = sampling.join().unwrap();
    let samples = all_samples.len();

    // Zero loss: every acknowledged write is in EU, row for row; reverse replication
    // brings EU's writes to US.
    let mut want: Vec<String> = acked.iter().map(|a| a.0.clone()).collect();
    want.sort();
    let eu_rows = owners(&lab.eu);
    // A write without an answer (timed out) may or may not have committed.
    let unknown = unknown.lock().unwrap().clone();
    let missing: Vec<&String> = want.iter().filter(|o| !eu_rows.contains(o)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged writes missing in EU: {missing:?}"
    );
    let extra: Vec<&String> = eu_rows
        .iter()
        .filter(|o| !want.contains(o) && !unknown.contains(o))
        .collect();
    assert!(extra.is_empty(), "rows nobody wrote: {extra:?}");
    until(
        "US catches up through reverse replication",
        Duration::from_secs(20),
        || owners(&lab.us) == eu_rows,
    );
    let gap = acked
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .max()
        .unwrap_or_default();
    eprintln!(
        "switchover took {took:?}; longest pause between acknowledged writes {gap:?}; {} writes; {samples} samples",
        acked.len()
    );
    assert!(gap <= Duration::from_secs(10), "writes refused for {gap:?}");
    let v = violations.lock().unwrap();
    assert!(v.is_empty(), "{v:?}");
    assert!(samples > 10);
    assert_eq!(
        super::failover::lease_epoch_of(eu_agent),
        Some(epoch_before + 1)
    );
    until(
        "EU's agent adopts the lease",
        Duration::from_secs(10),
        || super::failover::lease_status(eu_agent) == Some(200),
    );

    // Every step is in the audit log with the epoch; a second run has nothing to do.
    let audit = std::fs::read_dir(lab.dir.path().join("state/audit"))
        .unwrap()
        .count();
    assert!(audit >= 10, "{audit} audit entries");
    let out = haven(&[
        "--config",
        &lab.cfg,
        "switchover",
        "--to",
        "eu",
        "--yes",
        "--state-dir",
        &state,
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already the active region"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn failover_after_the_us_region_dies_takes_over_once_its_lease_expired() {
    let mut lab = lab();
    let (us_agent, eu_agent) = (lab.agents[0].1, lab.agents[1].1);
    until(
        "US takes the lease and opens its route",
        Duration::from_secs(30),
        || {
            super::failover::lease_status(us_agent) == Some(200)
                && rt().block_on(write_via_route(lab.proxy.port("be_write"))) == Some(lab.us.port())
        },
    );
    let epoch_before = super::failover::lease_epoch_of(us_agent).unwrap();
    let state = path(&lab.dir.path().join("state"));
    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let sampling = sampler(&lab, stop.clone(), violations.clone());
    let stop_writer = Arc::new(AtomicBool::new(false));
    let unknown = Arc::new(Mutex::new(Vec::new()));
    let writing = writer(
        lab.proxy.port("be_write"),
        stop_writer.clone(),
        unknown.clone(),
    );
    // Heartbeats, as the active region's agent would write them.
    rt().block_on(async { admin(&lab.us, "ledger-us").await.beat().await.unwrap() });
    std::thread::sleep(Duration::from_secs(2));

    // The US region dies: its agent (kill -9) and its database.
    let killed = Instant::now();
    let _ = lab.agents[0].2.kill();
    let _ = lab.agents[0].2.wait();
    lab.us.stop().unwrap();
    let down = Instant::now();

    // While the quorum still sees US's lease, a failover is refused (exit 2).
    let out = haven(&[
        "--config",
        &lab.cfg,
        "failover",
        "--to",
        "eu",
        "--yes",
        "--state-dir",
        &state,
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("still holds the lease"),
        "{}",
        stderr(&out)
    );

    // Once it expired (TTL 3 s), the failover goes through.
    let mut report = serde_json::Value::Null;
    until("the failover goes through", Duration::from_secs(30), || {
        let out = haven(&[
            "--json",
            "--config",
            &lab.cfg,
            "failover",
            "--to",
            "eu",
            "--yes",
            "--state-dir",
            &state,
        ]);
        if code(&out) == 0 {
            report = serde_json::from_slice(&out.stdout).unwrap();
            true
        } else {
            assert!(
                stderr(&out).contains("still holds the lease"),
                "{}",
                stderr(&out)
            );
            false
        }
    });
    until(
        "a write lands in EU through the route",
        Duration::from_secs(20),
        || rt().block_on(write_via_route(lab.proxy.port("be_write"))) == Some(lab.eu.port()),
    );
    std::thread::sleep(Duration::from_secs(2));
    stop_writer.store(true, Ordering::SeqCst);
    let acked = writing.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    let all_samples = sampling.join().unwrap();
    let samples = all_samples.len();
    let eu_port = lab.eu.port();
    let first_eu = acked.iter().find(|a| a.2 == eu_port).map(|a| a.1 - killed);
    assert!(
        acked.iter().all(|a| a.2 != eu_port || a.1 > down),
        "EU acknowledged a write while US was up"
    );
    eprintln!("failover: RTO {first_eu:?} (kill -9 to the first write acknowledged in EU); {samples} samples");
    assert!(
        first_eu.is_some(),
        "no write was acknowledged after the failover"
    );
    assert_eq!(report["epoch"].as_u64(), Some(epoch_before + 1), "{report}");
    assert_eq!(
        dns_state(&lab),
        (
            vec!["10.0.1.1".to_string()],
            Some((epoch_before + 1).to_string())
        ),
        "DNS must point at EU with the new epoch"
    );
    let evidence = &report["evidence"][0];
    assert_eq!(evidence["database"], "ledger-eu", "{report}");
    assert!(evidence["remote_lsn"].is_string(), "{report}");
    assert!(evidence["heartbeat_age_s"].is_number(), "{report}");
    // Every write acknowledged after the failover is in EU; ids did not collide (the
    // sequence was set past US's snapshot by the gap).
    let eu_rows = owners(&lab.eu);
    for (o, _, by) in &acked {
        if *by == eu_port {
            assert!(eu_rows.contains(o), "{o} acknowledged by EU is missing");
        }
    }
    let v = violations.lock().unwrap();
    assert!(v.is_empty(), "{v:?}");
    until(
        "EU's agent adopts the lease",
        Duration::from_secs(10),
        || super::failover::lease_status(eu_agent) == Some(200),
    );
}

#[test]
fn the_standby_agent_fails_over_by_itself_in_automatic_mode() {
    let mut lab = lab_with("automatic");
    let (us_agent, eu_agent) = (lab.agents[0].1, lab.agents[1].1);
    until(
        "US takes the lease and opens its route",
        Duration::from_secs(30),
        || {
            super::failover::lease_status(us_agent) == Some(200)
                && rt().block_on(write_via_route(lab.proxy.port("be_write"))) == Some(lab.us.port())
        },
    );
    let epoch_before = super::failover::lease_epoch_of(us_agent).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let sampling = sampler(&lab, stop.clone(), violations.clone());
    let stop_writer = Arc::new(AtomicBool::new(false));
    let unknown = Arc::new(Mutex::new(Vec::new()));
    let writing = writer(
        lab.proxy.port("be_write"),
        stop_writer.clone(),
        unknown.clone(),
    );
    // Long enough for US's agent to stamp heartbeats and EU's to measure its lag.
    std::thread::sleep(Duration::from_secs(3));

    let killed = Instant::now();
    let _ = lab.agents[0].2.kill();
    let _ = lab.agents[0].2.wait();
    lab.us.stop().unwrap();
    let down = Instant::now();

    until(
        "EU's agent takes over by itself",
        Duration::from_secs(40),
        || {
            super::failover::lease_status(eu_agent) == Some(200)
                && rt().block_on(write_via_route(lab.proxy.port("be_write"))) == Some(lab.eu.port())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    stop_writer.store(true, Ordering::SeqCst);
    let acked = writing.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    let all_samples = sampling.join().unwrap();
    let samples = all_samples.len();
    let eu_port = lab.eu.port();
    let rto = acked
        .iter()
        .find(|a| a.2 == eu_port)
        .map(|a| a.1 - killed)
        .expect("a write acknowledged by EU after the failover");
    assert!(
        acked.iter().all(|a| a.2 != eu_port || a.1 > down),
        "EU acknowledged a write while US was up"
    );
    eprintln!("automatic failover: RTO {rto:?} (TTL 3 s, 2 checks); {samples} samples");
    assert_eq!(
        super::failover::lease_epoch_of(eu_agent),
        Some(epoch_before + 1)
    );
    let v = violations.lock().unwrap();
    assert!(v.is_empty(), "{v:?}");
    // The agent ran the same plan: its audit log has every step with the new epoch.
    let audit = lab.dir.path().join("agent-eu/audit");
    let entries: Vec<serde_json::Value> = std::fs::read_dir(&audit)
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    assert!(
        entries.iter().all(|e| e["action"] == "failover"),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|e| e["epoch"] == epoch_before + 1),
        "{entries:?}"
    );
}

#[test]
fn a_short_flap_changes_nothing_and_a_partition_of_us_fails_over_to_eu() {
    let lab = lab_linked("automatic", true);
    let (us_agent, eu_agent) = (lab.agents[0].1, lab.agents[1].1);
    let proxy_port = lab.proxy.port("be_write");
    until(
        "US takes the lease and opens its route",
        Duration::from_secs(30),
        || {
            super::failover::lease_status(us_agent) == Some(200)
                && rt().block_on(write_via_route(proxy_port)) == Some(lab.us.port())
        },
    );
    let epoch_before = super::failover::lease_epoch_of(us_agent).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let sampling = sampler(&lab, stop.clone(), violations.clone());
    std::thread::sleep(Duration::from_secs(3));
    let set_links = |down: bool| lab.us_links.iter().for_each(|l| l.set_down(down));

    // A flap shorter than the detection time (TTL 3 s, 2 checks): no failover.
    set_links(true);
    std::thread::sleep(Duration::from_millis(800));
    set_links(false);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        super::failover::lease_epoch_of(eu_agent),
        Some(epoch_before),
        "a short flap caused a failover"
    );
    until(
        "US takes writes again after the flap",
        Duration::from_secs(10),
        || rt().block_on(write_via_route(proxy_port)) == Some(lab.us.port()),
    );

    // US is cut off from the etcd quorum for good: it fences itself, EU takes over.
    let cut = Instant::now();
    set_links(true);
    until("EU takes over by itself", Duration::from_secs(40), || {
        super::failover::lease_status(eu_agent) == Some(200)
            && rt().block_on(write_via_route(proxy_port)) == Some(lab.eu.port())
    });
    let rto = cut.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let all_samples = sampling.join().unwrap();
    let samples = all_samples.len();
    eprintln!("partition: EU took writes {rto:?} after US was cut off; {samples} samples");
    // US fenced itself (its agent could not renew) before EU opened: no sample after the
    // cut where US took a write once EU did, and US stopped before EU started.
    let us_port = lab.us.port();
    let eu_port = lab.eu.port();
    let us_stopped = all_samples
        .iter()
        .find(|s| s.0 > cut && !s.1 && s.3 != Some(us_port))
        .map(|s| s.0)
        .expect("US never stopped taking writes");
    let eu_started = all_samples
        .iter()
        .find(|s| s.0 > cut && (s.2 || s.3 == Some(eu_port)))
        .map(|s| s.0)
        .expect("EU never took writes");
    assert!(us_stopped < eu_started, "US was still open when EU opened");
    eprintln!(
        "US fenced itself {:?} after the cut; EU opened {:?} after it",
        us_stopped - cut,
        eu_started - cut
    );
    let v = violations.lock().unwrap();
    assert!(v.is_empty(), "{v:?}");
    assert_eq!(
        super::failover::lease_epoch_of(eu_agent),
        Some(epoch_before + 1)
    );
    assert!(
        !rt().block_on(writes_directly(lab.us.port())),
        "the cut-off US still takes application writes"
    );
    // Healing the link does not give US its writes back: EU is active now.
    set_links(false);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(super::failover::lease_status(us_agent), Some(503));
    assert!(!rt().block_on(writes_directly(lab.us.port())));
    assert_eq!(
        rt().block_on(write_via_route(proxy_port)),
        Some(lab.eu.port())
    );
}

#[test]
fn a_switchover_that_fails_half_way_stays_fenced_and_continues_when_run_again() {
    let lab = lab();
    let us_agent = lab.agents[0].1;
    let proxy_port = lab.proxy.port("be_write");
    until(
        "US takes the lease and opens its route",
        Duration::from_secs(30),
        || {
            super::failover::lease_status(us_agent) == Some(200)
                && rt().block_on(write_via_route(proxy_port)) == Some(lab.us.port())
        },
    );
    let epoch_before = super::failover::lease_epoch_of(us_agent).unwrap();
    // A hook that tells EU's clients where to write, failing until its marker exists.
    let marker = lab.dir.path().join("dns-ready");
    let mut text = std::fs::read_to_string(&lab.cfg).unwrap();
    text.push_str(&format!(
        "\n[routes.clients-eu]\nregion = \"eu\"\nkind = \"command\"\ncommand = \"test -f {} || {{ echo 'DNS API down' >&2; exit 1; }}\"\n",
        marker.display()
    ));
    std::fs::write(&lab.cfg, text).unwrap();
    let state = path(&lab.dir.path().join("state"));
    let run = || {
        haven(&[
            "--config",
            &lab.cfg,
            "switchover",
            "--to",
            "eu",
            "--yes",
            "--state-dir",
            &state,
        ])
    };
    let out = run();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("open route clients-eu")
            && err.contains("DNS API down")
            && err.contains("run the same command again"),
        "{err}"
    );
    // Stopped after the lease moved and before EU's write route opened: US is fenced,
    // nothing reaches EU through the proxy yet.
    assert!(!rt().block_on(writes_directly(lab.us.port())));
    assert_ne!(
        rt().block_on(write_via_route(proxy_port)),
        Some(lab.us.port())
    );

    std::fs::write(&marker, "").unwrap();
    let out = run();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stderr(&out).contains("continuing after step"),
        "{}",
        stderr(&out)
    );
    assert!(
        text.contains(&format!("epoch {}", epoch_before + 1)),
        "{text}"
    );
    until(
        "a write lands in EU through the route",
        Duration::from_secs(20),
        || rt().block_on(write_via_route(proxy_port)) == Some(lab.eu.port()),
    );
}
