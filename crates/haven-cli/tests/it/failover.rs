//! Failover, as far as it is built: the configuration is validated, and `failover status`
//! reads the lease and the epoch from real etcd 3.4 members and the RPO ledger from the
//! mirror into the standby (real brokers).

use std::time::{Duration, Instant};

use testbed::{Broker, EtcdCluster, Rec};

use crate::{code, haven, ok, path, stderr};

pub(crate) fn config(etcd: &EtcdCluster, us: &Broker, eu: &Broker) -> String {
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    format!(
        r#"
[clusters.us]
bootstrap = "{}"
region = "us"

[clusters.eu]
bootstrap = "{}"
region = "eu"

[mirrors.us-to-eu]
from = "us"
to = "eu"
topics = "payments"

[coordination]
endpoints = [{}]
cluster = "test"
lease_ttl_s = 3

[regions.us]
cluster = "us"

[regions.eu]
cluster = "eu"
mirror_in = "us-to-eu"

[failover]
primary = "us"
standby = "eu"
"#,
        us.bootstrap(),
        eu.bootstrap(),
        endpoints.join(", ")
    )
}

fn status(cfg: &str) -> (i32, serde_json::Value, String) {
    let out = haven(&["--json", "--config", cfg, "failover", "status"]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (code(&out), v, stderr(&out))
}

#[test]
fn status_shows_the_lease_holder_its_epoch_and_what_a_failover_would_lose() {
    let mut etcd = EtcdCluster::start(3).unwrap();
    let us = Broker::start().unwrap();
    let eu = Broker::start().unwrap();
    us.create_topic("payments", 2).unwrap();
    let recs = |n: usize, tag: &str| -> Vec<Rec> {
        (0..n)
            .map(|i| Rec::kv(&format!("k{i}"), &format!("{tag} {i}")).to_partition((i % 2) as i32))
            .collect()
    };
    us.produce("payments", &recs(40, "mirrored")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haven.toml");
    std::fs::write(&cfg, config(&etcd, &us, &eu)).unwrap();
    let cfg = path(&cfg);
    ok(&haven(&[
        "--config", &cfg, "mirror", "--job", "us-to-eu", "--once",
    ]));
    us.produce("payments", &recs(25, "not yet mirrored"))
        .unwrap();

    // Nobody holds the lease yet; the ledger counts exactly the 25 records not mirrored.
    let (c, v, err) = status(&cfg);
    assert_eq!(c, 0, "{err}");
    assert_eq!(v["active"], serde_json::Value::Null, "{v}");
    assert_eq!(v["epoch"], 0);
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{v}");
    assert!(members.iter().all(|m| m["up"] == true), "{v}");
    assert_eq!(
        members.iter().filter(|m| m["leader"] == true).count(),
        1,
        "{v}"
    );
    assert_eq!(v["records_at_risk"], 25, "{v}");
    let ledger = v["ledger"].as_array().unwrap();
    assert_eq!(ledger.len(), 2);
    for row in ledger {
        assert_eq!(row["into"], "eu");
        let p = row["partition"].as_i64().unwrap();
        let expected = if p == 0 { 13 } else { 12 };
        assert_eq!(row["lag_records"], expected, "{row}");
        assert_eq!(row["at_risk"]["from"], 20, "{row}");
    }

    // The US agent takes the lease: status names it with epoch 1.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let endpoints = etcd.endpoints();
    let tenure = rt.block_on(async {
        let mut c = haven_etcd::Coordinator::connect(&endpoints, "test", Duration::from_secs(2))
            .await
            .unwrap();
        match c
            .acquire("us", "agent-us", Duration::from_secs(30), 0)
            .await
            .unwrap()
        {
            haven_etcd::Acquired::Won(t) => *t,
            haven_etcd::Acquired::Held(h) => panic!("held by {h:?}"),
        }
    });
    assert_eq!(tenure.epoch, 1);
    let (c, v, err) = status(&cfg);
    assert_eq!(c, 0, "{err}");
    assert_eq!(
        (v["active"].as_str(), v["epoch"].as_u64()),
        (Some("us"), Some(1)),
        "{v}"
    );
    let text = ok(&haven(&["--config", &cfg, "failover", "status"]));
    assert!(
        text.contains("active region: us (epoch 1, agent agent-us)")
            && text.contains("25 records at risk"),
        "{text}"
    );

    // Without an etcd quorum the lease is unknown: said, exit 1, within a bounded time;
    // the ledger is still shown.
    etcd.kill(1);
    etcd.kill(2);
    let t0 = Instant::now();
    let (c, v, _) = status(&cfg);
    assert_eq!(c, 1, "{v}");
    assert!(
        v["unknown"][0].as_str().unwrap_or("").contains("lease"),
        "{v}"
    );
    assert_eq!(v["records_at_risk"], 25, "{v}");
    let members = v["members"].as_array().unwrap();
    assert_eq!(
        members.iter().filter(|m| m["up"] == false).count(),
        2,
        "{v}"
    );
    // The lone survivor may still call itself leader for up to an election timeout (etcd's
    // CheckQuorum steps it down only then): what Haven must say is that there is no quorum.
    assert_eq!(
        v["quorum"], false,
        "no quorum with 2 of 3 members down: {v}"
    );
    assert!(
        members.iter().filter(|m| m["leader"] == true).count() <= 1,
        "{v}"
    );
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
}

#[test]
fn failover_configuration_errors_name_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let base = r#"
[clusters.us]
bootstrap = "127.0.0.1:9092"
[clusters.eu]
bootstrap = "127.0.0.1:9093"
[mirrors.us-to-eu]
from = "us"
to = "eu"
topics = ".*"
[coordination]
endpoints = ["http://127.0.0.1:2379", "http://127.0.0.1:2380", "http://127.0.0.1:2381"]
[regions.us]
cluster = "us"
[regions.eu]
cluster = "eu"
mirror_in = "us-to-eu"
[failover]
primary = "us"
standby = "eu"
"#;
    let check = |text: &str| {
        let f = dir.path().join("haven.toml");
        std::fs::write(&f, text).unwrap();
        haven(&["config", "check", &path(&f)])
    };
    ok(&check(base));
    let cases = [
        (base.replace("standby = \"eu\"", "standby = \"ap\""), "failover.standby", "no region named \"ap\""),
        (base.replace("cluster = \"eu\"", "cluster = \"asia\""), "regions.eu.cluster", "no cluster named"),
        (base.replace("mirror_in = \"us-to-eu\"", "mirror_in = \"nope\""), "regions.eu.mirror_in", "no mirror named"),
        (
            base.replace(", \"http://127.0.0.1:2380\", \"http://127.0.0.1:2381\"", ""),
            "coordination.endpoints",
            "at least 3",
        ),
        (base.replace("primary = \"us\"", "primary = \"us\"\nmode = \"sometimes\""), "mode", "unknown variant"),
        (base.replace("[failover]", "[failover]\nretries = 3"), "retries", "unknown field"),
        (
            base.replace("[coordination]\nendpoints = [\"http://127.0.0.1:2379\", \"http://127.0.0.1:2380\", \"http://127.0.0.1:2381\"]\n", ""),
            "failover",
            "needs [coordination]",
        ),
    ];
    for (text, key, says) in cases {
        let out = check(&text);
        assert_eq!(code(&out), 2, "{key}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(key) && stderr(&out).contains(says),
            "{key}: {}",
            stderr(&out)
        );
    }
}

pub(crate) use haven_lab::{lease_epoch_of, lease_status};

pub(crate) fn spawn_agent(cfg: &str, region: &str, port: u16) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_haven"))
        .args([
            "--config",
            cfg,
            "agent",
            "--region",
            region,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

pub(crate) fn signal(child: &std::process::Child, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// One sample: when, /lease of us and eu, the epoch in etcd.
type Sample = (Instant, Option<u16>, Option<u16>, Option<u64>);

#[test]
fn at_most_one_region_claims_the_lease_through_a_restart_and_a_frozen_holder() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let mut etcd = EtcdCluster::start(3).unwrap();
    let endpoints = etcd.endpoints();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haven.toml");
    let quoted: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    std::fs::write(
        &cfg,
        format!(
            "[clusters.us]\nbootstrap = \"127.0.0.1:1\"\n[clusters.eu]\nbootstrap = \"127.0.0.1:2\"\n\
             [coordination]\nendpoints = [{}]\ncluster = \"agents\"\nlease_ttl_s = 3\n\
             [regions.us]\ncluster = \"us\"\n[regions.eu]\ncluster = \"eu\"\n\
             [failover]\nprimary = \"us\"\nstandby = \"eu\"\n",
            quoted.join(", ")
        ),
    )
    .unwrap();
    let cfg = path(&cfg);
    let (pu, pe) = (testbed::free_port().unwrap(), testbed::free_port().unwrap());
    let mut us = spawn_agent(&cfg, "us", pu);
    let mut eu = spawn_agent(&cfg, "eu", pe);

    // A sampler asks both agents and etcd every 100 ms while the faults happen.
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampler = {
        let (stop, samples, endpoints) = (stop.clone(), samples.clone(), endpoints.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let mut c = rt
                .block_on(haven_etcd::Coordinator::connect(
                    &endpoints,
                    "agents",
                    Duration::from_millis(500),
                ))
                .unwrap();
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let (u, e) = (lease_status(pu), lease_status(pe));
                let epoch = rt.block_on(c.epoch()).ok();
                samples.lock().unwrap().push((t, u, e, epoch));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let wait_for = |what: &str, secs: u64, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("us to claim the lease", 15, &|| {
        lease_status(pu) == Some(200)
    });
    assert_eq!(lease_status(pe), Some(503), "the standby claims nothing");

    // kill -9 of the holder's agent and an immediate restart: the new agent (same id)
    // carries on its predecessor's tenure, with the same epoch (Patroni's rule), instead
    // of leaving the region unwritable for a TTL.
    let epoch_held = lease_epoch_of(pu);
    assert!(epoch_held.is_some());
    signal(&us, "-KILL");
    us.wait().unwrap();
    us = spawn_agent(&cfg, "us", pu);
    wait_for("the restarted us agent to claim the lease", 15, &|| {
        lease_status(pu) == Some(200)
    });
    assert_eq!(
        lease_epoch_of(pu),
        epoch_held,
        "the restart took a new tenure"
    );

    // etcd loses its quorum: the holder cannot renew, and stops claiming the lease well
    // before it could expire (by then another region could hold it); with the quorum
    // back it claims it again.
    etcd.kill(1);
    etcd.kill(2);
    let cut = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    etcd.restart(1).unwrap();
    etcd.restart(2).unwrap();
    let healed = Instant::now();
    wait_for("us to claim the lease again with a quorum", 30, &|| {
        lease_status(pu) == Some(200)
    });

    // The holder freezes past its TTL; an operator takes the lease for eu (as `haven
    // failover --to eu` does): eu's agent carries it on. When the old holder wakes it
    // claims nothing, not even for an instant.
    signal(&us, "-STOP");
    let frozen = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut op = rt
        .block_on(haven_etcd::Coordinator::connect(
            &endpoints,
            "agents",
            Duration::from_secs(2),
        ))
        .unwrap();
    let before = rt.block_on(op.epoch()).unwrap();
    let taken = loop {
        match rt
            .block_on(op.acquire("eu", "plan:failover:operator", Duration::from_secs(30), 0))
            .unwrap()
        {
            haven_etcd::Acquired::Won(t) => break *t,
            haven_etcd::Acquired::Held(_) => {
                assert!(
                    frozen.elapsed() < Duration::from_secs(15),
                    "lease never expired"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert_eq!(taken.epoch, before + 1);
    let took = Instant::now();
    signal(&us, "-CONT");
    let woke = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let samples = samples.lock().unwrap().clone();
    signal(&us, "-TERM");
    signal(&eu, "-TERM");
    us.wait().unwrap();
    eu.wait().unwrap();

    // The sampled part lasts at least 8 s (5 s without quorum, 3 s after the wake-up):
    // at least one sample per 270 ms.
    assert!(samples.len() > 30, "{} samples", samples.len());
    let mut last_epoch = 0;
    for (t, u, e, epoch) in &samples {
        assert!(
            !(*u == Some(200) && *e == Some(200)),
            "two regions claimed the lease at once"
        );
        if *t < took {
            assert_ne!(*e, Some(200), "the standby claimed a lease nobody gave it");
        }
        if *t >= woke {
            assert_ne!(*u, Some(200), "the woken holder claimed a lease it lost");
        }
        if *t >= cut + Duration::from_secs(3) && *t < healed {
            assert_ne!(
                *u,
                Some(200),
                "claimed the lease without renewing it for a TTL"
            );
        }
        if let Some(epoch) = epoch {
            assert!(
                *epoch >= last_epoch,
                "epoch went down: {last_epoch} -> {epoch}"
            );
            last_epoch = *epoch;
        }
    }
    assert_eq!(last_epoch, taken.epoch);
    assert!(
        samples.iter().any(|s| s.0 >= woke && s.2 == Some(200)),
        "eu's agent never carried on the lease taken for it"
    );
    let claims_after_wake = samples
        .iter()
        .filter(|s| s.0 >= woke && s.1.is_some())
        .count();
    assert!(
        claims_after_wake > 10,
        "the woken agent answered {claims_after_wake} times"
    );
}

#[test]
fn a_mirror_never_writes_into_the_active_region() {
    let etcd = EtcdCluster::start(3).unwrap();
    let us = Broker::start().unwrap();
    let eu = Broker::start().unwrap();
    us.create_topic("payments", 1).unwrap();
    us.produce("payments", &[Rec::kv("k", "v")]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haven.toml");
    std::fs::write(&cfg, config(&etcd, &us, &eu)).unwrap();
    let cfg = path(&cfg);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut op = rt
        .block_on(haven_etcd::Coordinator::connect(
            &etcd.endpoints(),
            "test",
            Duration::from_secs(2),
        ))
        .unwrap();
    let won = |a: haven_etcd::Acquired| match a {
        haven_etcd::Acquired::Won(t) => *t,
        haven_etcd::Acquired::Held(h) => panic!("held by {h:?}"),
    };
    // US active: the mirror into EU runs.
    let us_tenure = won(rt
        .block_on(op.acquire("us", "plan:test", Duration::from_secs(30), 0))
        .unwrap());
    let log = dir.path().join("mirror.log");
    let mut mirror = std::process::Command::new(env!("CARGO_BIN_EXE_haven"))
        .args(["--config", &cfg, "mirror", "--job", "us-to-eu"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        mirror.try_wait().unwrap().is_none(),
        "the mirror stopped while US was active"
    );
    // A failover makes EU active: the mirror stops by itself, within seconds.
    rt.block_on(op.resign(us_tenure)).unwrap();
    let moved = Instant::now();
    let _eu_tenure = won(rt
        .block_on(op.acquire("eu", "plan:test", Duration::from_secs(30), 0))
        .unwrap());
    let status = loop {
        if let Some(st) = mirror.try_wait().unwrap() {
            break st;
        }
        assert!(
            moved.elapsed() < Duration::from_secs(15),
            "the mirror kept running into the active region"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("writes into region eu, which is the active region"),
        "{text}"
    );
    eprintln!(
        "the mirror stopped {:?} after EU became active",
        moved.elapsed()
    );
    // And it refuses to start again (exit 2).
    let out = haven(&["--config", &cfg, "mirror", "--job", "us-to-eu", "--once"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Run the reverse mirror"),
        "{}",
        stderr(&out)
    );
}
