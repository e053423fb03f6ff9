//! Failover, as far as it is built: the configuration is validated, and `failover status`
//! reads the lease and the epoch from real etcd 3.4 members and the RPO ledger from the
//! mirror into the standby (real brokers).

use std::time::{Duration, Instant};

use testbed::{Broker, EtcdCluster, Rec};

use crate::{code, haven, ok, path, stderr};

fn config(etcd: &EtcdCluster, us: &Broker, eu: &Broker) -> String {
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
