//! The two-region failover lab the switchover and failover tests run in: 3 etcd members,
//! two Postgres 15 clusters with logical replication (US publishes, EU subscribes), one
//! HAProxy whose write backend has a US and an EU server, a cuttable replication link (EU's
//! subscription reaches US through a proxy), a Knot DNS server for the DNS
//! routes, and an agent per region; plus the application writer and the sampler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haven_pg::Pg;
use testbed::{EtcdCluster, Haproxy, HaproxyBackend, Postgres};

use crate::path;

pub(crate) struct Lab {
    pub(crate) _etcd: EtcdCluster,
    pub(crate) us: Postgres,
    pub(crate) eu: Postgres,
    pub(crate) proxy: Haproxy,
    pub(crate) dns: testbed::Knot,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) cfg: String,
    pub(crate) agents: Vec<(String, u16, std::process::Child)>,
    /// US's links to the etcd members (empty unless asked for).
    pub(crate) us_links: Vec<testbed::DelayProxy>,
    /// The replication link: EU's subscription reaches US's database through it.
    pub(crate) replication: testbed::DelayProxy,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, _, c) in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) const TSIG_B64: &str = "aGF2ZW4tdGVzdC1rZXktMzItYnl0ZXMtbG9uZy4uLi4=";

/// Where `kafka.dr.example.` points, and the epoch beside it, at the lab's DNS server.
pub(crate) fn dns_state(lab: &Lab) -> (Vec<String>, Option<String>) {
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

pub(crate) const SCHEMA: &str =
    "CREATE TABLE accounts (id bigserial PRIMARY KEY, owner text NOT NULL);
     CREATE ROLE app LOGIN;
     GRANT ALL ON accounts TO app; GRANT ALL ON SEQUENCE accounts_id_seq TO app;";

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) async fn admin(pg: &Postgres, name: &str) -> Pg {
    Pg::connect(name, &pg.url("postgres"), None, Duration::from_secs(10))
        .await
        .unwrap()
}

pub(crate) fn lab() -> Lab {
    lab_with("manual")
}

pub(crate) fn spawn_agent(
    cfg: &str,
    region: &str,
    port: u16,
    state: &std::path::Path,
) -> std::process::Child {
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

pub(crate) fn lab_with(mode: &str) -> Lab {
    lab_linked(mode, false)
}

/// With `cut_links`, US's agent reaches the etcd members through proxies the test can
/// cut: a partition of US from EU and the witness (as far as coordination goes).
pub(crate) fn lab_linked(mode: &str, cut_links: bool) -> Lab {
    let etcd = EtcdCluster::start(3).unwrap();
    let (us, eu) = (Postgres::start().unwrap(), Postgres::start().unwrap());
    let replication = testbed::DelayProxy::start(0, us.port(), Duration::ZERO).unwrap();
    let via_link = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        replication.port()
    );
    rt().block_on(async {
        let (u, e) = (admin(&us, "ledger-us").await, admin(&eu, "ledger-eu").await);
        for db in [&u, &e] {
            db.exec("schema", SCHEMA).await.unwrap();
            db.ensure_tables().await.unwrap();
        }
        u.ensure_publication("haven").await.unwrap();
        e.ensure_subscription("haven", &via_link, "haven", true)
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
        replication,
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
pub(crate) async fn write_via_route(port: u16) -> Option<u16> {
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
pub(crate) async fn writes_directly(pg_port: u16) -> bool {
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
pub(crate) type Sample = (Instant, bool, bool, Option<u16>);

/// Samples every 100 ms until stopped: violations (more than one region accepting
/// writes, an epoch going down) as text.
pub(crate) fn sampler(
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
pub(crate) type Ack = (String, Instant, u16);

/// The application: writes through the proxy until stopped; returns every acknowledged
/// write.
pub(crate) fn writer(
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

pub(crate) fn owners(pg: &Postgres) -> Vec<String> {
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

pub(crate) fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until US's agent holds the lease and US takes writes through the route (the
/// primary of a fresh deployment); returns the epoch.
pub(crate) fn us_active(lab: &Lab) -> u64 {
    let us_agent = lab.agents[0].1;
    until(
        "US takes the lease and opens its route",
        Duration::from_secs(30),
        || {
            super::failover::lease_status(us_agent) == Some(200)
                && rt().block_on(write_via_route(lab.proxy.port("be_write"))) == Some(lab.us.port())
        },
    );
    super::failover::lease_epoch_of(us_agent).expect("US's agent reports its epoch")
}

/// The application writing through the proxy (optional) and the sampler checking every
/// 100 ms that at most one region takes writes, while a test injects faults.
pub(crate) struct Traffic {
    stop_sampler: Arc<AtomicBool>,
    stop_writer: Arc<AtomicBool>,
    violations: Arc<Mutex<Vec<String>>>,
    unknown: Arc<Mutex<Vec<String>>>,
    sampling: std::thread::JoinHandle<Vec<Sample>>,
    writing: Option<std::thread::JoinHandle<Vec<Ack>>>,
}

/// What the traffic saw once stopped.
pub(crate) struct Seen {
    /// Every write acknowledged, in order.
    pub(crate) acked: Vec<Ack>,
    /// Writes without an answer (they may or may not have committed).
    pub(crate) unknown: Vec<String>,
    pub(crate) samples: Vec<Sample>,
    /// More than one region taking writes, an epoch going down.
    pub(crate) violations: Vec<String>,
}

impl Traffic {
    pub(crate) fn start(lab: &Lab, with_writer: bool) -> Traffic {
        let stop_sampler = Arc::new(AtomicBool::new(false));
        let stop_writer = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let unknown = Arc::new(Mutex::new(Vec::new()));
        let sampling = sampler(lab, stop_sampler.clone(), violations.clone());
        let writing = with_writer.then(|| {
            writer(
                lab.proxy.port("be_write"),
                stop_writer.clone(),
                unknown.clone(),
            )
        });
        Traffic {
            stop_sampler,
            stop_writer,
            violations,
            unknown,
            sampling,
            writing,
        }
    }

    /// Stops the writer, then the sampler.
    pub(crate) fn stop(self) -> Seen {
        self.stop_writer.store(true, Ordering::SeqCst);
        let acked = self
            .writing
            .map(|w| w.join().expect("the writer panicked"))
            .unwrap_or_default();
        self.stop_sampler.store(true, Ordering::SeqCst);
        let samples = self.sampling.join().expect("the sampler panicked");
        let unknown = self.unknown.lock().map(|u| u.clone()).unwrap_or_default();
        let violations = self
            .violations
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        Seen {
            acked,
            unknown,
            samples,
            violations,
        }
    }
}
