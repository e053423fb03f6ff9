//! `haven lab up|status|down`: the two-region lab as a user runs it, in the background.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;

use crate::{code, haven, ok, path};

/// Stops the lab whatever happens to the test.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = haven(&["lab", "down", "--dir", &self.0]);
    }
}

fn json(out: &std::process::Output) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn answers(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

fn port(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// Produces one record to partition 2 of `topic` on `bootstrap`; its key.
fn produce(bootstrap: &str, topic: &str) -> String {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .expect("a producer");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let key = format!("transfer-{}-{nanos}", std::process::id());
    p.send(
        BaseRecord::to(topic)
            .partition(2)
            .key(&key)
            .payload("{\"amount\":100}"),
    )
    .map_err(|(e, _)| e)
    .expect("send");
    p.flush(Duration::from_secs(10)).expect("flush");
    key
}

/// Whether partition 2 of `topic` on `bootstrap` holds a record keyed `key` within 60 s.
fn arrives(bootstrap: &str, topic: &str, key: &str) -> bool {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "lab-test")
        .set("fetch.wait.max.ms", "10")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(topic, 2, Offset::Beginning)
            .is_err()
            || c.assign(&tpl).is_err()
        {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) if m.key() == Some(key.as_bytes()) => return true,
                _ => {}
            }
        }
    }
    false
}

#[test]
fn lab_comes_up_in_the_background_mirrors_goes_down_leaving_nothing_running_and_comes_back_on_its_data(
) {
    let dir = tempfile::tempdir().unwrap();
    let d = path(dir.path());
    let _down = Down(d.clone());

    let state = json(&haven(&[
        "--json",
        "lab",
        "up",
        "--dir",
        &d,
        "--lease-ttl-s",
        "3",
    ]));
    let pid = state["pid"].as_u64().expect("the supervisor's pid");
    assert!(dir.path().join("lab.json").exists());
    let config = state["config"].as_str().expect("the config").to_string();
    assert!(std::path::Path::new(&config).starts_with(dir.path().canonicalize().unwrap()));

    // Up again: the same lab, nothing started twice.
    let again = json(&haven(&["--json", "lab", "up", "--dir", &d]));
    assert_eq!(again["pid"].as_u64(), Some(pid));
    assert_eq!(again["already_up"], Value::Bool(true));

    // Every part answers and US holds the lease.
    let out = haven(&["--json", "lab", "status", "--dir", &d]);
    let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(code(&out), 0, "status: {status}");
    assert_eq!(status["active"], "us");
    let parts = status["parts"].as_array().expect("parts");
    assert!(parts.len() >= 15, "{parts:?}");
    // Each region's object store and backup job are parts of the default lab.
    for name in ["s3-us", "s3-eu", "backup-us", "backup-eu"] {
        assert!(
            parts.iter().any(|p| p["name"] == name),
            "no {name}: {parts:?}"
        );
    }
    assert!(
        parts.iter().all(|p| p["up"] == Value::Bool(true)),
        "{parts:?}"
    );

    // The config it wrote drives the other commands: US is the active region.
    let out = haven(&["--config", &config, "--json", "failover", "status"]);
    let fs: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("failover status ({e}): {}", crate::stderr(&out)));
    assert_eq!(fs["active"], "us", "{fs}");

    // A transfer event produced in US reaches EU through the lab's mirror.
    let e = &state["endpoints"];
    let (us, eu) = (
        e["kafka_us"].as_str().expect("kafka us"),
        e["kafka_eu"].as_str().expect("kafka eu"),
    );
    let topic = e["topic"].as_str().expect("topic");
    let key = produce(us, topic);
    assert!(arrives(eu, topic, &key), "{key} did not reach EU");

    // A fault by hand, seen by status, healed.
    let out = haven(&["lab", "fault", "--dir", &d, "agent-crash", "eu"]);
    assert!(ok(&out).contains("eu's agent killed -9"));
    let out = haven(&["--json", "lab", "status", "--dir", &d]);
    assert_eq!(code(&out), 1);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let eu_agent = status["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "agent-eu")
        .cloned()
        .unwrap();
    assert_eq!(eu_agent["up"], Value::Bool(false), "{status}");
    ok(&haven(&["lab", "fault", "--dir", &d, "heal"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while code(&haven(&["lab", "status", "--dir", &d])) != 0 {
        assert!(Instant::now() < deadline, "the lab did not heal");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        code(&haven(&["lab", "fault", "--dir", &d, "frobnicate"])),
        2
    );

    // Data to keep: a row in US's database (replicated to EU), the epoch.
    let (pg_us_url, pg_eu_url) = (
        e["postgres_us"].as_str().unwrap().to_string(),
        e["postgres_eu"].as_str().unwrap().to_string(),
    );
    sql(&pg_us_url, "INSERT INTO accounts (owner) VALUES ('kept-1')");
    until_rows(&pg_eu_url, "kept-1", 1);
    let epoch = status["epoch"].as_u64().expect("an epoch");

    // Down: the supervisor and every server are gone.
    let pg_us = port(e["postgres_us"].as_str().unwrap());
    let etcd = port(e["etcd"][0].as_str().unwrap());
    let down = json(&haven(&["--json", "lab", "down", "--dir", &d]));
    assert_eq!(down["stopped"], Value::Bool(true));
    assert!(
        !haven_lab::control::alive(pid as u32),
        "the supervisor still runs"
    );
    assert!(!answers(pg_us), "US's Postgres still answers");
    assert!(!answers(etcd), "etcd still answers");
    let out = haven(&["lab", "status", "--dir", &d]);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no lab"));
    // Down again: nothing to do, not an error.
    let again = json(&haven(&["--json", "lab", "down", "--dir", &d]));
    assert_eq!(again["stopped"], Value::Bool(false));

    // Up again: on the same data and ports, US active again, its epoch never lower.
    let back = json(&haven(&[
        "--json",
        "lab",
        "up",
        "--dir",
        &d,
        "--lease-ttl-s",
        "3",
    ]));
    assert_eq!(back["reused"], Value::Bool(true), "{back}");
    assert_eq!(back["endpoints"], state["endpoints"], "the endpoints moved");
    assert_eq!(back["active"], "us", "{back}");
    let out = haven(&["--json", "lab", "status", "--dir", &d]);
    let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(code(&out), 0, "status after up again: {status}");
    assert!(
        status["epoch"].as_u64().expect("an epoch") >= epoch,
        "{status}"
    );
    // The row is in both databases, the record in both clusters, and both links work
    // again: replication (a new row reaches EU) and the mirror (a new record reaches EU).
    assert_eq!(rows(&pg_us_url, "kept-1"), 1);
    assert_eq!(rows(&pg_eu_url, "kept-1"), 1);
    assert!(arrives(us, topic, &key), "{key} is no longer on US");
    assert!(arrives(eu, topic, &key), "{key} is no longer on EU");
    sql(&pg_us_url, "INSERT INTO accounts (owner) VALUES ('kept-2')");
    until_rows(&pg_eu_url, "kept-2", 1);
    let key2 = produce(us, topic);
    assert_ne!(key2, key);
    assert!(
        arrives(eu, topic, &key2),
        "{key2} did not reach EU after up again"
    );
    let down = json(&haven(&["--json", "lab", "down", "--dir", &d]));
    assert_eq!(down["stopped"], Value::Bool(true));
}

/// Rows of `accounts` owned by `owner`.
fn rows(url: &str, owner: &str) -> i64 {
    let (url, owner) = (url.to_string(), owner.to_string());
    haven_lab::rt().block_on(async move {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        c.query_one("SELECT count(*) FROM accounts WHERE owner = $1", &[&owner])
            .await
            .expect("count")
            .get(0)
    })
}

/// Waits (30 s at most) until `accounts` holds `n` rows owned by `owner`.
fn until_rows(url: &str, owner: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while rows(url, owner) != n {
        assert!(
            Instant::now() < deadline,
            "{n} rows of {owner} never reached {url}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sql(url: &str, statement: &str) {
    let (url, statement) = (url.to_string(), statement.to_string());
    haven_lab::rt().block_on(async move {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        c.batch_execute(&statement).await.expect("damage");
    });
}

/// The invariant `id` of a `workload check --json` report.
fn invariant(report: &Value, id: &str) -> Value {
    report["invariants"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["id"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("no {id} in {report}"))
}

fn check(d: &str) -> (i32, Value) {
    let out = haven(&["--json", "workload", "check", "--lab", d]);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check JSON ({e}): {}", crate::stderr(&out)));
    (code(&out), report)
}

#[test]
fn the_ledger_workload_passes_its_checks_and_the_checker_names_each_kind_of_damage() {
    let dir = tempfile::tempdir().unwrap();
    let d = path(dir.path());
    let _down = Down(d.clone());
    let state = json(&haven(&["--json", "lab", "up", "--dir", &d]));
    let summary = json(&haven(&[
        "--json",
        "workload",
        "ledger",
        "--lab",
        &d,
        "--rate",
        "1200",
        "--duration-s",
        "4",
        "--reads-per-write",
        "1",
        "--connections",
        "2",
    ]));
    let applied = summary["applied"].as_u64().unwrap();
    assert!(applied >= 40, "{summary}");
    assert_eq!(summary["by_region"]["us"], summary["acknowledged"]);
    assert_eq!(summary["read_errors"], 0, "{summary}");

    // Untouched: every invariant holds, record for record.
    let (rc, report) = check(&d);
    assert_eq!(rc, 0, "{report:#}");
    assert_eq!(report["transfers"].as_u64(), Some(applied));
    assert_eq!(report["topic_records"].as_u64(), Some(applied));
    assert_eq!(report["lost"], 0);
    assert_eq!(invariant(&report, "W8")["ok"], Value::Bool(true));

    let e = &state["endpoints"];
    let us_pg = e["postgres_us"].as_str().unwrap().to_string();
    let acks = std::fs::read_to_string(dir.path().join("workload/acks.ndjson")).unwrap();
    let applied_ids: Vec<String> = acks
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|a| a["outcome"] == "applied")
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();

    // A changed balance: money is no longer conserved, and the topic disagrees.
    sql(
        &us_pg,
        "UPDATE ledger_accounts SET balance = balance + 7 WHERE id = 500",
    );
    let (rc, report) = check(&d);
    assert_eq!(rc, 1);
    let w1 = invariant(&report, "W1");
    assert_eq!(w1["ok"], Value::Bool(false));
    assert!(
        w1["first_example"]
            .as_str()
            .unwrap()
            .starts_with("account 500:"),
        "{w1}"
    );
    let w7 = invariant(&report, "W7");
    assert!(
        w7["first_example"]
            .as_str()
            .unwrap()
            .starts_with("account 500:"),
        "{w7}"
    );
    sql(
        &us_pg,
        "UPDATE ledger_accounts SET balance = balance - 7 WHERE id = 500",
    );

    // A deleted transfer: its entries are orphans, the topic has it, a client was told.
    let victim = &applied_ids[applied_ids.len() / 2];
    sql(
        &us_pg,
        &format!("DELETE FROM ledger_transfers WHERE id = '{victim}'"),
    );
    let (rc, report) = check(&d);
    assert_eq!(rc, 1);
    for w in ["W2", "W5", "W9"] {
        let i = invariant(&report, w);
        assert_eq!(i["ok"], Value::Bool(false), "{w}: {i}");
        assert!(
            i["first_example"]
                .as_str()
                .unwrap()
                .contains(victim.as_str()),
            "{w}: {i}"
        );
    }
    assert_eq!(report["lost"], 1);

    // A duplicated event.
    let twice = &applied_ids[0];
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", e["kafka_us"].as_str().unwrap())
        .create()
        .unwrap();
    let payload = format!("{{\"transfer_id\":\"{twice}\",\"src\":1,\"dst\":2,\"amount\":0}}");
    p.send(
        BaseRecord::to(e["topic"].as_str().unwrap())
            .key(twice.as_str())
            .payload(&payload),
    )
    .map_err(|(e, _)| e)
    .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    let (_, report) = check(&d);
    let w4 = invariant(&report, "W4");
    assert_eq!(w4["ok"], Value::Bool(false), "{w4}");
    assert!(
        w4["first_example"]
            .as_str()
            .unwrap()
            .starts_with(twice.as_str()),
        "{w4}"
    );
}
