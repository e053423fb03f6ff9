//! Event-driven recovery on the seed's example: document-management produces documents,
//! machine-management (a Postgres database) consumes them and produces machine events,
//! billing and notifications consume those. Continuous backup runs; machine-management's
//! database is restored from a pg_dump taken at T0; Haven measures and repairs.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use testbed::{Broker, Postgres, Rec};

use crate::{code, haven, ok, stderr};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A consumer of `group` positioned at the group's committed offsets (or the start).
fn member(b: &Broker, group: &str, topic: &str, partitions: i32) -> BaseConsumer {
    let c: BaseConsumer = b
        .config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut parts = TopicPartitionList::new();
    for p in 0..partitions {
        parts.add_partition(topic, p);
    }
    let committed = c.committed_offsets(parts, Duration::from_secs(10)).unwrap();
    let mut tpl = TopicPartitionList::new();
    for e in committed.elements() {
        let o = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        tpl.add_partition_offset(topic, e.partition(), o).unwrap();
    }
    c.assign(&tpl).unwrap();
    c
}

/// Reads everything up to the current end of `topic`, calls `f` for each record, commits.
fn drain(
    b: &Broker,
    c: &BaseConsumer,
    topic: &str,
    partitions: i32,
    mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) {
    let highs: Vec<i64> = (0..partitions)
        .map(|p| b.high_watermark(topic, p).unwrap())
        .collect();
    let mut pos: Vec<i64> = (0..partitions)
        .map(|p| {
            match c
                .position()
                .unwrap()
                .find_partition(topic, p)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            }
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while pos.iter().zip(&highs).any(|(p, h)| p < h) {
        assert!(
            Instant::now() < deadline,
            "draining {topic} stuck at {pos:?} of {highs:?}"
        );
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            f(&m);
            pos[m.partition() as usize] = m.offset() + 1;
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in pos.iter().enumerate() {
        tpl.add_partition_offset(topic, p as i32, Offset::Offset(*o))
            .unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).unwrap();
}

/// The machines table as rows.
fn machines(rt: &tokio::runtime::Runtime, pg: &Postgres) -> BTreeMap<String, (i64, String)> {
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.url("mm"), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .query("SELECT id, docs, last_doc FROM machines ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    (r.get::<_, i64>(1), r.get::<_, String>(2)),
                )
            })
            .collect()
    })
}

/// machine-management: applies documents to its database; optionally emits machine events.
fn machine_management(
    rt: &tokio::runtime::Runtime,
    b: &Broker,
    pg: &Postgres,
    emit: bool,
) -> Vec<(i32, i64)> {
    let c = member(b, "machine-management", "documents", 2);
    let mut docs = Vec::new();
    drain(b, &c, "documents", 2, |m| {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        docs.push((
            v["machine"].as_str().unwrap().to_string(),
            v["doc"].as_str().unwrap().to_string(),
        ));
    });
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.url("mm"), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for (machine, doc) in &docs {
            client
                .execute(
                    "INSERT INTO machines (id, docs, last_doc) VALUES ($1, 1, $2) \
                     ON CONFLICT (id) DO UPDATE SET docs = machines.docs + 1, last_doc = $2",
                    &[machine, doc],
                )
                .await
                .unwrap();
        }
    });
    if !emit {
        return Vec::new();
    }
    let events: Vec<Rec> = docs
        .iter()
        .map(|(m, d)| Rec::kv(m, &format!(r#"{{"machine_id":"{m}","doc":"{d}"}}"#)))
        .collect();
    b.produce("machine-events", &events).unwrap()
}

fn documents(b: &Broker, from: usize, n: usize) {
    let recs: Vec<Rec> = (from..from + n)
        .map(|i| {
            Rec::kv(
                &format!("m-{}", i % 7),
                &format!(r#"{{"machine":"m-{}","doc":"doc-{i}"}}"#, i % 7),
            )
        })
        .collect();
    b.produce("documents", &recs).unwrap();
}

/// A tiny HTTP endpoint: answers every POST with `status`, keeps the bodies.
fn http_server(status: u16, reason: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/events", l.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            // Headers, then Content-Length bytes of body.
            loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(h) = text.find("\r\n\r\n") {
                    let len = text[..h]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= h + 4 + len {
                        g.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[h + 4..h + 4 + len]).to_string());
                        break;
                    }
                }
            }
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reason}",
                reason.len()
            );
        }
    });
    (url, got)
}

struct Backup(Child);

impl Drop for Backup {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

#[test]
fn restored_database_is_measured_rebuilt_and_compensated() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = Broker::start().unwrap();
    let pg = Postgres::start().unwrap();
    for (t, n) in [
        ("documents", 2),
        ("machine-events", 2),
        ("machine-compensations", 1),
        ("invoices", 1),
    ] {
        b.create_topic(t, n).unwrap();
    }
    rt.block_on(async {
        let c = pg.connect().await.unwrap();
        c.batch_execute("CREATE DATABASE mm").await.unwrap();
    });
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&pg.url("mm"), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c.batch_execute("CREATE TABLE machines (id text PRIMARY KEY, docs bigint NOT NULL, last_doc text NOT NULL)").await.unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").display().to_string();
    let cfg = dir.path().join("haven.toml");
    std::fs::write(
        &cfg,
        format!(
            "[clusters.us]\nbootstrap = \"{}\"\n\n[repositories.main]\nurl = \"{repo}\"\n\n\
             [services.document-management]\nproduces = [\"documents\"]\n\n\
             [services.machine-management]\nproduces = [\"machine-events\"]\nconsumes = [\"documents\"]\ngroups = [\"machine-management\"]\n\n\
             [services.billing]\nproduces = [\"invoices\"]\nconsumes = [\"machine-events\"]\ngroups = [\"billing\"]\n\n\
             [services.notifications]\nconsumes = [\"machine-events\"]\ngroups = [\"notifications\"]\n",
            b.bootstrap()
        ),
    )
    .unwrap();
    let c = cfg.display().to_string();
    let h = |args: &[&str]| {
        let mut v = vec!["--config", c.as_str()];
        v.extend_from_slice(args);
        haven(&v)
    };
    let _backup = Backup(
        Command::new(env!("CARGO_BIN_EXE_haven"))
            .args([
                "--config",
                &c,
                "backup",
                "--brokers",
                "us",
                "--repo",
                "main",
                "--topics",
                "documents|machine-events",
                "--group-interval",
                "1",
            ])
            .args([
                "--group",
                "machine-management",
                "--group",
                "billing",
                "--group",
                "notifications",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Before T0: everything flows, every service keeps up.
    documents(&b, 0, 20);
    machine_management(&rt, &b, &pg, true);
    let billing = member(&b, "billing", "machine-events", 2);
    drain(&b, &billing, "machine-events", 2, |_| {});
    let notifications = member(&b, "notifications", "machine-events", 2);
    drain(&b, &notifications, "machine-events", 2, |_| {});
    drop(notifications);
    let mm_at_t0: Vec<i64> = (0..2)
        .map(|p| b.high_watermark("documents", p).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(2500));
    let t0 = now_ms();
    let dump = dir.path().join("mm-t0.sql");
    let st = Command::new(pg.tool("pg_dump"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "mm",
            "-f",
        ])
        .arg(&dump)
        .status()
        .unwrap();
    assert!(st.success());
    std::thread::sleep(Duration::from_millis(1500));

    // The window: 15 documents, 15 machine events; billing processes them, notifications
    // is down.
    documents(&b, 20, 15);
    let produced = machine_management(&rt, &b, &pg, true);
    assert_eq!(produced.len(), 15);
    drain(&b, &billing, "machine-events", 2, |_| {});
    let expected = machines(&rt, &pg);
    std::thread::sleep(Duration::from_millis(2500));
    let t1 = now_ms();

    // The incident: machine-management's database comes back from the T0 dump.
    rt.block_on(async {
        let c = pg.connect().await.unwrap();
        c.batch_execute("DROP DATABASE mm WITH (FORCE)")
            .await
            .unwrap();
        c.batch_execute("CREATE DATABASE mm").await.unwrap();
    });
    let st = Command::new(pg.tool("psql"))
        .args([
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "mm",
            "-f",
        ])
        .arg(&dump)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    assert_ne!(machines(&rt, &pg), expected, "the restore lost the window");

    let (t0s, t1s) = (t0.to_string(), t1.to_string());
    fn with(mut v: Vec<&str>) -> Vec<&str> {
        v.extend_from_slice(&["--brokers", "us", "--repo", "main"]);
        v
    }

    // Impact: exactly the 15 events, billing affected, notifications unaffected.
    let out = ok(&h(&with(vec![
        "--json",
        "impact",
        "--service",
        "machine-management",
        "--restored-to",
        &t0s,
        "--incident",
        &t1s,
        // The backup samples every second; on a loaded machine samples can be a few
        // seconds apart, so a gap is what exceeds three of the 5 s default.
        "--group-interval",
        "5",
    ])));
    let imp: serde_json::Value = serde_json::from_str(&out).unwrap();
    let d = &imp["downstream"][0];
    assert_eq!(d["topic"], "machine-events");
    assert_eq!(d["records"], 15, "{imp}");
    for p in 0..2 {
        let offs: Vec<i64> = produced.iter().filter(|x| x.0 == p).map(|x| x.1).collect();
        let r = d["produced"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["partition"] == p)
            .unwrap();
        if let (Some(first), Some(last)) = (offs.first(), offs.last()) {
            assert_eq!(
                (r["from"].as_i64().unwrap(), r["to"].as_i64().unwrap()),
                (*first, last + 1),
                "{imp}"
            );
        }
    }
    let group = |g: &str| {
        d["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["group"] == g)
            .cloned()
            .unwrap_or_else(|| panic!("{g} missing: {imp}"))
    };
    assert_eq!(group("billing")["status"], "affected");
    assert_eq!(group("billing")["processed"], 15);
    assert_eq!(group("notifications")["status"], "unaffected");
    assert_eq!(group("notifications")["processed"], 0);
    let up = &imp["upstream"][0];
    assert_eq!(
        (up["topic"].as_str(), up["group"].as_str()),
        (Some("documents"), Some("machine-management"))
    );
    for p in 0..2usize {
        assert_eq!(up["partitions"][p]["at_t0"], mm_at_t0[p], "{imp}");
    }
    let consumed: i64 = up["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["records"].as_i64().unwrap())
        .sum();
    assert_eq!(consumed, 15);
    let md = ok(&h(&with(vec![
        "impact",
        "--service",
        "machine-management",
        "--restored-to",
        &t0s,
        "--incident",
        &t1s,
        "--markdown",
    ])));
    assert!(
        md.contains("| billing | affected | 15 |")
            && md.contains("| notifications | unaffected | 0 |"),
        "{md}"
    );

    // A window the timeline does not fully cover (the incident an hour ahead, past the last
    // sample) is named, and every group says what it cannot know.
    let later = (now_ms() + 3_600_000).to_string();
    let out = ok(&h(&with(vec![
        "--json",
        "impact",
        "--service",
        "machine-management",
        "--restored-to",
        &t0s,
        "--incident",
        &later,
        // The backup samples every second; on a loaded machine samples can be a few
        // seconds apart, so a gap is what exceeds three of the 5 s default.
        "--group-interval",
        "5",
    ])));
    let gap: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        !gap["timeline_gaps"].as_array().unwrap().is_empty(),
        "{gap}"
    );
    for g in gap["downstream"][0]["groups"].as_array().unwrap() {
        assert!(
            g["note"].as_str().unwrap_or("").contains("no sample"),
            "{g}"
        );
    }
    assert!(
        imp["timeline_gaps"].as_array().unwrap().is_empty(),
        "the real window is covered: {imp}"
    );
    // Clear errors.
    let out = h(&with(vec![
        "impact",
        "--service",
        "machine-mgmt",
        "--restored-to",
        &t0s,
    ]));
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("unknown service") && stderr(&out).contains("machine-management"),
        "{}",
        stderr(&out)
    );
    let out = h(&with(vec![
        "impact",
        "--service",
        "machine-management",
        "--restored-to",
        "2020-01-01T00:00:00Z",
    ]));
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("before the start of the backup's group timeline"),
        "{}",
        stderr(&out)
    );

    // Rewind machine-management to T0, then let it consume again: its database is back to
    // what it would have been without the loss, row by row.
    let out = ok(&h(&with(vec![
        "--json",
        "rewind",
        "--group",
        "machine-management",
        "--to",
        &t0s,
        "--dry-run",
    ])));
    assert!(out.contains("\"dry_run\": true"), "{out}");
    let out = h(&with(vec![
        "rewind",
        "--group",
        "machine-management",
        "--to",
        &t0s,
    ]));
    assert_eq!(code(&out), 2, "no terminal, no --yes: refused");
    ok(&h(&with(vec![
        "rewind",
        "--group",
        "machine-management",
        "--to",
        &t0s,
        "--yes",
        "--watch-ms",
        "1000",
    ])));
    machine_management(&rt, &b, &pg, false);
    assert_eq!(machines(&rt, &pg), expected, "rebuilt database differs");

    // Replay the window's machine events into a Postgres table, twice: one row each.
    let sink = format!("{}?table=replayed_events", pg.url("mm"));
    for _ in 0..2 {
        let out = ok(&h(&with(vec![
            "--json",
            "replay",
            "--topics",
            "machine-events",
            "--from",
            &t0s,
            "--to",
            &t1s,
            "--sink",
            &sink,
        ])));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["records"], 15, "{v}");
    }
    let rows: i64 = rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&pg.url("mm"), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.query_one("SELECT count(*) FROM replayed_events", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(rows, 15);
    // A replay resumed after it finished delivers nothing twice.
    let out = ok(&h(&with(vec![
        "--json",
        "replay",
        "--topics",
        "machine-events",
        "--from",
        &t0s,
        "--to",
        &t1s,
        "--sink",
        &sink,
        "--batch",
        "4",
    ])));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    let out = ok(&h(&with(vec![
        "--json",
        "replay",
        "--topics",
        "machine-events",
        "--from",
        &t0s,
        "--to",
        &t1s,
        "--sink",
        &sink,
        "--resume",
        &id,
    ])));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["records"].as_u64(), v["resumed_past"].as_u64()),
        (Some(0), Some(15)),
        "{v}"
    );
    // From the live cluster to stdout, and from the backup to a topic with provenance.
    let out = ok(&h(&with(vec![
        "replay",
        "--source",
        "live",
        "--topics",
        "machine-events",
        "--from",
        &t0s,
        "--to",
        &t1s,
    ])));
    assert_eq!(out.lines().count(), 15, "{out}");
    b.create_topic("rebuild", 1).unwrap();
    ok(&h(&with(vec![
        "replay",
        "--topics",
        "machine-events",
        "--from",
        &t0s,
        "--to",
        &t1s,
        "--sink",
        "kafka:rebuild",
    ])));
    let rebuilt = b.read_partition("rebuild", 0).unwrap();
    assert_eq!(rebuilt.len(), 15);
    assert!(rebuilt
        .iter()
        .all(|r| r.headers.iter().any(|h| h.0 == "haven-source")));
    // To an HTTP endpoint, and to one that refuses, and to none at all.
    let (url, got) = http_server(200, "");
    ok(&h(&with(vec![
        "replay",
        "--topics",
        "machine-events",
        "--from",
        &t0s,
        "--to",
        &t1s,
        "--sink",
        &url,
        "--batch",
        "4",
    ])));
    let lines: usize = got.lock().unwrap().iter().map(|b| b.lines().count()).sum();
    assert_eq!(lines, 15);
    let (url, _) = http_server(422, "machine m-3 unknown");
    let out = h(&with(vec![
        "replay",
        "--topics",
        "machine-events",
        "--from",
        &t0s,
        "--sink",
        &url,
    ]));
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("422") && stderr(&out).contains("machine m-3 unknown"),
        "{}",
        stderr(&out)
    );
    let dead = format!("http://127.0.0.1:{}/x", testbed::free_port().unwrap());
    let out = h(&with(vec![
        "replay",
        "--topics",
        "machine-events",
        "--from",
        &t0s,
        "--sink",
        &dead,
        "--retries",
        "1",
    ]));
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("unreachable"), "{}", stderr(&out));

    // Compensate twice: each compensating event once.
    let template = r#"{"type":"machine.event.revoked","machine":"{{value.machine_id}}","doc":"{{value.doc}}"}"#;
    for (run, emitted) in [(0, 15), (1, 0)] {
        let out = ok(&h(&with(vec![
            "--json",
            "compensate",
            "--service",
            "machine-management",
            "--restored-to",
            &t0s,
            "--incident",
            &t1s,
            "--to-topic",
            "machine-compensations",
            "--template",
            template,
            "--yes",
        ])));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let n = v["report"]["emitted"].as_u64().unwrap_or(0);
        assert_eq!(n, emitted, "run {run}: {v}");
    }
    let comps = b.read_partition("machine-compensations", 0).unwrap();
    assert_eq!(comps.len(), 15);
    let ids: std::collections::BTreeSet<_> = comps
        .iter()
        .map(|c| {
            c.headers
                .iter()
                .find(|h| h.0 == "haven-compensation-id")
                .unwrap()
                .1
                .clone()
        })
        .collect();
    assert_eq!(ids.len(), 15);

    // The same with an external command deciding: one compensation for each event.
    let out = ok(&h(&with(vec![
        "compensate",
        "--service",
        "machine-management",
        "--restored-to",
        &t0s,
        "--incident",
        &t1s,
        "--to-topic",
        "invoices",
        "--command",
        r#"read line; echo '{"key":"k","value":"credit note"}'"#,
        "--dry-run",
    ])));
    assert!(
        out.contains("15 compensating events to emit for 15 original events"),
        "{out}"
    );
    // And with an HTTP hook answering one compensating event per original.
    let (hook, calls) = http_server(200, "{\"value\":\"credit note\"}\n");
    let out = ok(&h(&with(vec![
        "compensate",
        "--service",
        "machine-management",
        "--restored-to",
        &t0s,
        "--incident",
        &t1s,
        "--to-topic",
        "invoices",
        "--hook",
        &hook,
        "--dry-run",
    ])));
    assert!(out.contains("15 compensating events to emit"), "{out}");
    assert_eq!(
        calls.lock().unwrap().len(),
        15,
        "one call per original event"
    );
    // The hybrid: a plan to review, then applied step by step.
    let plan = dir.path().join("plan.json").display().to_string();
    let psink = format!("{}?table=plan_replay", pg.url("mm"));
    ok(&h(&with(vec![
        "recover",
        "--service",
        "machine-management",
        "--restored-to",
        &t0s,
        "--incident",
        &t1s,
        "--out",
        &plan,
        "--replay-sink",
        &psink,
    ])));
    let p: serde_json::Value = serde_json::from_slice(&std::fs::read(&plan).unwrap()).unwrap();
    assert_eq!(p["steps"][0]["step"], "rewind");
    assert_eq!(p["steps"][1]["step"], "replay");
    ok(&h(&with(vec!["recover", "--apply", &plan, "--yes"])));
    let out = ok(&h(&with(vec!["recover", "--apply", &plan, "--yes"])));
    assert!(out.contains("0 of 2 steps left"), "{out}");
    // A plan whose replay sink refuses: the rewind step is done, the apply stops at the
    // replay and says how to continue; the next apply starts at that step.
    let (bad, _) = http_server(400, "schema mismatch");
    let plan2 = dir.path().join("plan2.json").display().to_string();
    ok(&h(&with(vec![
        "recover",
        "--service",
        "machine-management",
        "--restored-to",
        &t0s,
        "--incident",
        &t1s,
        "--out",
        &plan2,
        "--replay-sink",
        &bad,
    ])));
    let out = h(&with(vec!["recover", "--apply", &plan2, "--yes"]));
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("step 2")
            && stderr(&out).contains("schema mismatch")
            && stderr(&out).contains("again"),
        "{}",
        stderr(&out)
    );
    let out = ok(&h(&with(vec!["recover", "--apply", &plan2, "--dry-run"])));
    assert!(out.contains("1 of 2 steps left"), "{out}");
    let audit = ok(&h(&["--json", "audit", "--repo", "main"]));
    let entries: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let actions: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["entry"]["action"].as_str().unwrap())
        .collect();
    for a in ["rewind", "replay", "compensate", "recover-apply"] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }

    // A group still active is not rewound: billing keeps consuming and committing.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let bb = b.bootstrap();
    let active = std::thread::spawn(move || {
        use rdkafka::producer::Producer as _;
        let p: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bb)
            .create()
            .unwrap();
        let mut i = 0;
        while !s2.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = p.send(
                rdkafka::producer::BaseRecord::<str, str>::to("machine-events")
                    .key("m-1")
                    .payload("late"),
            );
            p.poll(Duration::from_millis(0));
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
            if i % 3 == 0 {
                let _ = p.flush(Duration::from_secs(5));
            }
        }
    });
    let args: Vec<String> = [
        "--config",
        c.as_str(),
        "rewind",
        "--group",
        "billing",
        "--to",
        t0s.as_str(),
        "--yes",
        "--watch-ms",
        "2000",
        "--brokers",
        "us",
        "--repo",
        "main",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    let probe = std::thread::spawn(move || {
        let v: Vec<&str> = args.iter().map(String::as_str).collect();
        haven(&v)
    });
    // billing drains and commits while haven looks.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !probe.is_finished() {
        assert!(Instant::now() < deadline, "rewind of an active group hangs");
        drain(&b, &billing, "machine-events", 2, |_| {});
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = probe.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    active.join().unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("is active"), "{}", stderr(&out));
}
