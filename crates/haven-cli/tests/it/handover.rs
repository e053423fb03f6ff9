//! Kafka's part in a region handover, on real brokers and etcd members: a switchover waits
//! until the mirror holds every record of the closed region and syncs group offsets one
//! last time; a failover with the old cluster gone records what the new one holds of each
//! partition. (That the mirror into the new primary stops by itself is
//! `failover::a_mirror_never_writes_into_the_active_region`.)

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testbed::{Broker, Consumed, EtcdCluster, Rec};

use crate::failover::{config, lease_status, signal};
use crate::mirror::committed;
use crate::{code, commit, haven, path, stderr};

struct Setup {
    _etcd: EtcdCluster,
    us: Broker,
    eu: Broker,
    dir: tempfile::TempDir,
    cfg: String,
    /// (process, /lease port) of the US and EU agents.
    agents: Vec<(Child, u16)>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        for (a, _) in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

/// Three etcd members, a broker per region, `payments` (2 partitions) on US, the mirror
/// US -> EU syncing group `ledger-svc`, both agents, US active.
fn setup() -> Setup {
    let etcd = EtcdCluster::start(3).unwrap();
    let us = Broker::start().unwrap();
    let eu = Broker::start().unwrap();
    us.create_topic("payments", 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config(&etcd, &us, &eu).replace(
        "topics = \"payments\"\n",
        "topics = \"payments\"\ngroups = [\"ledger-svc\"]\n",
    );
    let cfg = dir.path().join("haven.toml");
    std::fs::write(&cfg, text).unwrap();
    let cfg = path(&cfg);
    let mut agents = Vec::new();
    for region in ["us", "eu"] {
        let port = testbed::free_port().unwrap();
        let state = dir.path().join(format!("agent-{region}"));
        agents.push((crate::lab::spawn_agent(&cfg, region, port, &state), port));
    }
    let s = Setup {
        _etcd: etcd,
        us,
        eu,
        dir,
        cfg,
        agents,
    };
    crate::lab::until("US holds the lease", Duration::from_secs(30), || {
        lease_status(s.agents[0].1) == Some(200)
    });
    s
}

impl Setup {
    /// `haven mirror --job us-to-eu`, its group sync slowed to once an hour so that only
    /// a handover's last sync can move the groups.
    fn mirror(&self) -> (Child, std::path::PathBuf) {
        let log = self.dir.path().join("mirror.log");
        let child = Command::new(env!("CARGO_BIN_EXE_haven"))
            .args(["--config", &self.cfg, "mirror", "--job", "us-to-eu"])
            .args(["--sync-ms", "3600000"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (child, log)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let state = path(&self.dir.path().join("state"));
        let mut all = vec!["--json", "--config", &self.cfg];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--yes", "--state-dir", &state]);
        haven(&all)
    }
}

fn records(n: usize, tag: &str) -> Vec<Rec> {
    (0..n)
        .map(|i| Rec::kv(&format!("k{i}"), &format!("{tag}-{i}")).to_partition((i % 2) as i32))
        .collect()
}

fn values(rs: &[Consumed]) -> Vec<Option<Vec<u8>>> {
    rs.iter().map(|r| r.value.clone()).collect()
}

#[test]
fn a_switchover_brings_every_record_and_the_groups_offsets_over_before_eu_takes_writes() {
    let s = setup();
    let (mut mirror, _) = s.mirror();
    s.us.produce("payments", &records(200, "early")).unwrap();
    crate::lab::until(
        "the mirror copied the first records",
        Duration::from_secs(30),
        || s.eu.high_watermark("payments", 0).unwrap_or(0) >= 100,
    );
    // The consumers commit, then a burst arrives while the mirror is frozen: it is behind
    // when the old region closes.
    commit(&s.us, "ledger-svc", "payments", 0, 60);
    commit(&s.us, "ledger-svc", "payments", 1, 40);
    signal(&mirror, "-STOP");
    s.us.produce("payments", &records(4000, "burst")).unwrap();
    let out = std::thread::scope(|scope| {
        let switching = scope.spawn(|| s.run(&["switchover", "--to", "eu"]));
        // The switchover waits for the mirror: US keeps the lease meanwhile.
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            !switching.is_finished(),
            "the switchover did not wait for the mirror"
        );
        assert_eq!(
            lease_status(s.agents[0].1),
            Some(200),
            "US gave the lease up"
        );
        signal(&mirror, "-CONT");
        // Once the mirror reached the barrier (the plan's first step), it dies: the last
        // group sync is the plan's own, not the one a mirror makes when it stops.
        let progress = s
            .dir
            .path()
            .join("state/switchover-to-eu.json.progress.json");
        crate::lab::until(
            "the mirror reached the barrier",
            Duration::from_secs(60),
            || {
                std::fs::read_to_string(&progress)
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .is_some_and(|v| v["done"].get("0").is_some())
            },
        );
        let _ = mirror.kill();
        let _ = mirror.wait();
        switching.join().unwrap()
    });
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // Every record US held is on EU, in order, partition by partition.
    for p in 0..2 {
        let on_us = s.us.read_partition("payments", p).unwrap();
        let on_eu = s.eu.read_partition("payments", p).unwrap();
        assert_eq!(on_us.len(), 2100, "partition {p}");
        assert_eq!(values(&on_eu), values(&on_us), "partition {p}");
    }
    // The last sync moved the group (the mirror's own sync runs once an hour).
    assert_eq!(committed(&s.eu, "ledger-svc", "payments", 0), Some(60));
    assert_eq!(committed(&s.eu, "ledger-svc", "payments", 1), Some(40));
    let k = &report["kafka"][0];
    assert_eq!(k["mirror"], "us-to-eu", "{report}");
    assert_eq!(k["source"], "answered", "{report}");
    assert_eq!(k["records_at_risk"], 0, "{report}");
    assert!(k["group_commits"].as_u64().unwrap() >= 1, "{report}");

    assert_eq!(report["epoch"], 2, "{report}");
    crate::lab::until(
        "EU's agent holds the lease",
        Duration::from_secs(20),
        || lease_status(s.agents[1].1) == Some(200),
    );
}

#[test]
fn a_failover_without_the_old_cluster_records_what_the_new_one_holds_per_partition() {
    let mut s = setup();
    let (mut mirror, _) = s.mirror();
    s.us.produce("payments", &records(300, "copied")).unwrap();
    crate::lab::until(
        "the mirror copied every record",
        Duration::from_secs(30),
        || (0..2).all(|p| s.eu.high_watermark("payments", p).unwrap_or(0) == 150),
    );
    // The mirror stops; US takes 50 more records that never cross, then the region dies.
    let _ = mirror.kill();
    let _ = mirror.wait();
    s.us.produce("payments", &records(100, "lost")).unwrap();
    let _ = s.agents[0].0.kill();
    let _ = s.agents[0].0.wait();
    s.us.kill();

    let started = Instant::now();
    let report = loop {
        let out = s.run(&["failover", "--to", "eu"]);
        if code(&out) == 0 {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
        }
        assert!(
            stderr(&out).contains("still holds the lease"),
            "{}",
            stderr(&out)
        );
        assert!(started.elapsed() < Duration::from_secs(30), "no failover");
        std::thread::sleep(Duration::from_millis(200));
    };
    let k = &report["kafka"][0];
    assert_eq!(k["source"], "unreachable", "{report}");
    assert!(k["records_at_risk"].is_null(), "{report}");
    let mut held: Vec<(String, i64, i64)> = k["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["topic"].as_str().unwrap().to_string(),
                p["partition"].as_i64().unwrap(),
                p["mirrored_to"].as_i64().unwrap(),
            )
        })
        .collect();
    held.sort();
    assert_eq!(
        held,
        vec![("payments".into(), 0, 150), ("payments".into(), 1, 150)],
        "{report}"
    );
    eprintln!(
        "failover with the old cluster gone took {:?} (lease expiry included)",
        started.elapsed()
    );
}
