//! Mirroring between two brokers, the second one "in another region" behind an 80 ms
//! delaying proxy: record-by-record equality, SIGKILL and restart, a source broker restart,
//! consumer-group failover, active-active without loops, residency, status figures.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use testbed::{Broker, Consumed, Rec};

use crate::backup::edge_records;
use crate::{code, commit, haven, ok, stderr};

const REGION_DELAY: Duration = Duration::from_millis(80);

/// A record without the mirror's provenance headers (what a user compares).
fn strip(mut c: Consumed) -> Consumed {
    c.headers.retain(|(k, _)| !k.starts_with("haven-"));
    c
}

/// Asserts the target partition holds exactly the source partition's records (from
/// `target_start` on the target), field by field, with provenance pointing back. The
/// source is read with librdkafka, the target with kafka-python.
fn assert_mirrored(
    src: &Broker,
    dst: &Broker,
    topic: &str,
    partitions: i32,
    target_start: i64,
) -> usize {
    let mut n = 0;
    for p in 0..partitions {
        let expected = src.read_partition(topic, p).unwrap();
        // The target is read with kafka-python: no code shared with Haven or librdkafka.
        let got: Vec<Consumed> = testbed::independent_read(&dst.bootstrap(), topic, p)
            .unwrap()
            .into_iter()
            .filter(|c| c.offset >= target_start)
            .collect();
        assert_eq!(
            got.len(),
            expected.len(),
            "{topic}/{p}: {} records on the target, {} on the source",
            got.len(),
            expected.len()
        );
        for (e, g) in expected.iter().zip(&got) {
            let source = g
                .headers
                .iter()
                .find(|(k, _)| k == "haven-mirror-source")
                .and_then(|(_, v)| v.clone())
                .map(|v| String::from_utf8(v).unwrap())
                .expect("provenance header");
            assert!(
                source.ends_with(&format!("/{topic}/{p}/{}", e.offset)),
                "{source} is not {topic}/{p}/{}",
                e.offset
            );
            let (mut e, g) = (e.clone(), strip(g.clone()));
            e.offset = g.offset;
            assert_eq!(e, g, "{topic}/{p}");
        }
        n += got.len();
    }
    n
}

fn mirror_once(src: &Broker, dst: &Broker, topics: &str, extra: &[&str]) -> serde_json::Value {
    let (s, d) = (src.bootstrap(), dst.bootstrap());
    let mut args = vec![
        "--json", "mirror", "--from", &s, "--to", &d, "--topics", topics, "--once",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&haven(&args))).unwrap()
}

fn spawn_mirror(src: &Broker, dst: &Broker, topics: &str, extra: &[&str]) -> Child {
    let (s, d) = (src.bootstrap(), dst.bootstrap());
    let mut args = vec!["mirror", "--from", &s, "--to", &d, "--topics", topics];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_haven"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn high(b: &Broker, topic: &str, p: i32) -> i64 {
    b.high_watermark(topic, p).unwrap_or(-1)
}

#[test]
fn mirror_copies_every_record_and_a_sigkill_neither_duplicates_nor_skips() {
    let us = Broker::start().unwrap();
    let eu = Broker::start_remote(REGION_DELAY).unwrap();
    us.create_topic("orders", 3).unwrap();
    us.produce("orders", &edge_records(600, 3)).unwrap();
    let report = mirror_once(&us, &eu, "orders", &[]);
    assert_eq!(report["records"], 600, "{report}");
    assert_eq!(assert_mirrored(&us, &eu, "orders", 3, 0), 600);
    // Nothing new: a second run copies nothing.
    let report = mirror_once(&us, &eu, "orders", &[]);
    assert_eq!(report["records"], 0, "{report}");

    // Continuous mirror, killed with SIGKILL while records flow, then restarted.
    let mut child = spawn_mirror(&us, &eu, "orders", &[]);
    let producer = us.producer().unwrap();
    let batch = |n: i32| -> Vec<Rec> {
        (0..100)
            .map(|i| {
                Rec::kv(&format!("k{i}"), &format!("batch {n} record {i}")).to_partition(i % 3)
            })
            .collect()
    };
    for n in 0..9 {
        producer.send("orders", &batch(n)).unwrap();
    }
    wait_for("the mirror to copy something", 60, || {
        high(&eu, "orders", 0) > 200
    });
    child.kill().unwrap();
    child.wait().unwrap();
    for n in 9..20 {
        producer.send("orders", &batch(n)).unwrap();
    }
    // Killed after it copied part of the stream (the rest is copied by the restart).
    let before: i64 = (0..3).map(|p| high(&eu, "orders", p)).sum();
    assert!(before > 600 && before < 2600, "{before}");
    let report = mirror_once(&us, &eu, "orders", &[]);
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(assert_mirrored(&us, &eu, "orders", 3, 0), 2600);
}

#[test]
fn a_consumer_group_fails_over_at_exactly_the_next_record() {
    let us = Broker::start().unwrap();
    let eu = Broker::start_remote(REGION_DELAY).unwrap();
    us.create_topic("payments", 2).unwrap();
    eu.create_topic("payments", 2).unwrap();
    // The target already holds records of its own: offsets differ between regions.
    let local: Vec<Rec> = (0..14)
        .map(|i| Rec::kv("eu", &format!("local {i}")).to_partition(i % 2))
        .collect();
    eu.produce("payments", &local).unwrap();
    let recs: Vec<Rec> = (0..200)
        .map(|i| Rec::kv(&format!("k{i}"), &format!("payment {i}")).to_partition(i % 2))
        .collect();
    us.produce("payments", &recs).unwrap();
    commit(&us, "billing", "payments", 0, 37);
    commit(&us, "billing", "payments", 1, 81);

    let report = mirror_once(&us, &eu, "payments", &["--groups", "billing"]);
    assert!(report["group_commits"].as_u64().unwrap() >= 1, "{report}");

    // The translation, as the CLI reports it.
    let (s, d) = (us.bootstrap(), eu.bootstrap());
    let out = ok(&haven(&[
        "--json",
        "mirror",
        "translate",
        "--from",
        &s,
        "--to",
        &d,
        "--topics",
        "payments",
        "--group",
        "billing",
    ]));
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    let find = |p: i64| {
        t.as_array()
            .unwrap()
            .iter()
            .find(|x| x["partition"] == p)
            .unwrap()["target_offset"]
            .clone()
    };
    assert_eq!(find(0), 37 + 7, "{t}");
    assert_eq!(find(1), 81 + 7, "{t}");

    // A real consumer of the group on the target starts at the next unprocessed record.
    let c: BaseConsumer = eu
        .config()
        .set("group.id", "billing")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&["payments"]).unwrap();
    let expected: Vec<(i32, String)> = [(0, 37), (1, 81)]
        .iter()
        .map(|(p, o)| {
            let r = us.read_partition("payments", *p).unwrap();
            (
                *p,
                String::from_utf8(r[*o as usize].value.clone().unwrap()).unwrap(),
            )
        })
        .collect();
    let mut first: Vec<Option<String>> = vec![None, None];
    let deadline = Instant::now() + Duration::from_secs(60);
    while first.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "the failed-over consumer read nothing"
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let p = m.partition() as usize;
            if first[p].is_none() {
                first[p] = Some(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
            }
        }
    }
    for (p, v) in expected {
        assert_eq!(
            first[p as usize].as_deref(),
            Some(v.as_str()),
            "partition {p}"
        );
    }
}

#[test]
fn source_broker_restart_and_a_cut_link_lose_and_duplicate_nothing() {
    let mut us = Broker::start().unwrap();
    let eu = Broker::start_remote(REGION_DELAY).unwrap();
    us.create_topic("events", 2).unwrap();
    let port = testbed::free_port().unwrap().to_string();
    let addr = format!("127.0.0.1:{port}");
    let mut child = spawn_mirror(&us, &eu, "events", &["--metrics-addr", &addr]);
    let batch = |n: usize, tag: &str| -> Vec<Rec> {
        (0..n)
            .map(|i| Rec::kv(&format!("k{i}"), &format!("{tag} {i}")).to_partition((i % 2) as i32))
            .collect()
    };
    us.produce("events", &batch(300, "before")).unwrap();
    wait_for("the first records on the target", 60, || {
        high(&eu, "events", 0) >= 150
    });
    us.restart().unwrap();
    us.produce("events", &batch(300, "after restart")).unwrap();
    // The inter-region link goes down for a while, records keep arriving at the source.
    eu.set_link_down(true);
    us.produce("events", &batch(200, "during the cut")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // Lag is reported honestly meanwhile.
    let metrics = fetch(&addr);
    assert!(
        metrics.contains("haven_mirror_lag_records{topic=\"events\""),
        "{metrics}"
    );
    eu.set_link_down(false);
    wait_for("the mirror to catch up", 120, || {
        high(&eu, "events", 0) + high(&eu, "events", 1) >= 800
    });
    std::thread::sleep(Duration::from_secs(2));
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the mirror did not stop cleanly: {status}"
    );
    assert_eq!(assert_mirrored(&us, &eu, "events", 2, 0), 800);
}

fn fetch(addr: &str) -> String {
    use std::io::{Read, Write};
    for _ in 0..50 {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no metrics at {addr}");
}

#[test]
fn active_active_mirrors_do_not_loop() {
    let us = Broker::start().unwrap();
    let eu = Broker::start_remote(REGION_DELAY).unwrap();
    for b in [&us, &eu] {
        b.create_topic("profiles", 1).unwrap();
    }
    us.produce(
        "profiles",
        &(0..10)
            .map(|i| Rec::kv("us", &format!("us {i}")))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    eu.produce(
        "profiles",
        &(0..7)
            .map(|i| Rec::kv("eu", &format!("eu {i}")))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    for _ in 0..2 {
        mirror_once(&us, &eu, "profiles", &[]);
        mirror_once(&eu, &us, "profiles", &[]);
    }
    let values = |b: &Broker| -> Vec<String> {
        b.read_partition("profiles", 0)
            .unwrap()
            .into_iter()
            .map(|c| String::from_utf8(c.value.unwrap()).unwrap())
            .collect()
    };
    let (u, e) = (values(&us), values(&eu));
    assert_eq!(u.len(), 17, "{u:?}");
    assert_eq!(e.len(), 17, "{e:?}");
    for v in (0..10)
        .map(|i| format!("us {i}"))
        .chain((0..7).map(|i| format!("eu {i}")))
    {
        assert_eq!(u.iter().filter(|x| **x == v).count(), 1, "{v} on us: {u:?}");
        assert_eq!(e.iter().filter(|x| **x == v).count(), 1, "{v} on eu: {e:?}");
    }
}

#[test]
fn residency_rules_refuse_a_mirror_and_a_backup_at_check_and_run_time() {
    let us = Broker::start().unwrap();
    let eu = Broker::start().unwrap();
    us.create_topic("customers.us.profiles", 1).unwrap();
    us.create_topic("orders", 1).unwrap();
    us.produce(
        "orders",
        &(0..5)
            .map(|i| Rec::kv("k", &format!("order {i}")))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haven.toml");
    let base = format!(
        "[clusters.us]\nbootstrap = \"{}\"\nregion = \"us\"\n\n[clusters.eu]\nbootstrap = \"{}\"\nregion = \"eu\"\n\n\
         [repositories.eu-backup]\nurl = \"{}\"\nregion = \"eu\"\n\n\
         [residency.us-customers]\ntopics = \"customers\\\\.us\\\\..*\"\nregions = [\"us\"]\n",
        us.bootstrap(),
        eu.bootstrap(),
        dir.path().join("repo").display()
    );
    std::fs::write(&cfg, &base).unwrap();
    let c = cfg.display().to_string();
    // At run time, against the real topic names.
    let out = haven(&[
        "--config", &c, "mirror", "--from", "us", "--to", "eu", "--topics", ".*", "--once",
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("us-customers") && stderr(&out).contains("customers.us.profiles"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        high(&eu, "customers.us.profiles", 0),
        -1,
        "nothing may reach the target"
    );
    let out = haven(&[
        "--config",
        &c,
        "backup",
        "--brokers",
        "us",
        "--repo",
        "eu-backup",
        "--topics",
        "customers.*",
        "--once",
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("us-customers"), "{}", stderr(&out));
    // A topic the rule does not pin moves freely.
    let out = haven(&[
        "--config", &c, "--json", "mirror", "--from", "us", "--to", "eu", "--topics", "orders",
        "--once",
    ]);
    ok(&out);
    // At config check, for jobs whose patterns overlap the rule.
    std::fs::write(
        &cfg,
        format!("{base}\n[mirrors.all]\nfrom = \"us\"\nto = \"eu\"\ntopics = \".*\"\n"),
    )
    .unwrap();
    let out = haven(&["--config", &c, "config", "check"]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("mirrors.all") && stderr(&out).contains("us-customers"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn status_names_exactly_what_a_source_failure_would_lose() {
    let us = Broker::start().unwrap();
    let eu = Broker::start_remote(REGION_DELAY).unwrap();
    us.create_topic("ledger", 1).unwrap();
    let now = chrono_now();
    us.produce(
        "ledger",
        &(0..50)
            .map(|i| Rec::kv("k", &format!("{i}")).at(now - 120_000 + i))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    mirror_once(&us, &eu, "ledger", &[]);
    let oldest = now - 30_000;
    us.produce(
        "ledger",
        &(0..20)
            .map(|i| Rec::kv("k", &format!("late {i}")).at(oldest + i * 100))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let (s, d) = (us.bootstrap(), eu.bootstrap());
    let out = ok(&haven(&[
        "--json", "mirror", "status", "--from", &s, "--to", &d, "--topics", "ledger",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = &v[0];
    assert_eq!(p["mirrored_to"], 50, "{v}");
    assert_eq!(p["lag_records"], 20, "{v}");
    assert_eq!(p["at_risk"]["from"], 50, "{v}");
    assert_eq!(p["at_risk"]["to"], 69, "{v}");
    assert_eq!(p["at_risk"]["oldest_ms"], oldest, "{v}");
    assert_eq!(p["at_risk"]["newest_ms"], oldest + 1900, "{v}");
    let lag = p["lag_seconds"].as_f64().unwrap();
    assert!((30.0..60.0).contains(&lag), "{v}");
    // Once mirrored, nothing is at risk.
    mirror_once(&us, &eu, "ledger", &[]);
    let out = ok(&haven(&[
        "--json", "mirror", "status", "--from", &s, "--to", &d, "--topics", "ledger",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["lag_records"], 0, "{v}");
    assert!(v[0]["at_risk"].is_null(), "{v}");
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Committed offset of `group` on `b` for `topic`/`p` (None: no commit).
pub(crate) fn committed(b: &Broker, group: &str, topic: &str, p: i32) -> Option<i64> {
    let c: BaseConsumer = b.config().set("group.id", group).create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, p);
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).ok()?;
    let e = got.elements_for_topic(topic);
    match e.first()?.offset() {
        rdkafka::Offset::Offset(o) => Some(o),
        _ => None,
    }
}

#[test]
fn processes_share_partitions_survive_a_kill_and_sync_groups_continuously() {
    let us = Broker::start().unwrap();
    let eu = Broker::start_remote(REGION_DELAY).unwrap();
    us.create_topic("shipments", 4).unwrap();
    let batch = |n: usize, tag: &str| -> Vec<Rec> {
        (0..n)
            .map(|i| Rec::kv(&format!("k{i}"), &format!("{tag} {i}")).to_partition((i % 4) as i32))
            .collect()
    };
    us.produce("shipments", &batch(400, "first")).unwrap();
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", testbed::free_port().unwrap()))
        .collect();
    let start = |addr: &str| {
        spawn_mirror(
            &us,
            &eu,
            "shipments",
            &[
                "--name",
                "shared",
                "--groups",
                "shipping",
                "--metrics-addr",
                addr,
            ],
        )
    };
    let a = start(&addrs[0]);
    let mut b = start(&addrs[1]);
    // Both processes own partitions (each reports lag only for the partitions it owns).
    let owned = |addr: &str| fetch(addr).matches("haven_mirror_lag_records{").count();
    wait_for("both processes to own partitions", 90, || {
        let (x, y) = (owned(&addrs[0]), owned(&addrs[1]));
        x > 0 && y > 0 && x + y == 4
    });
    // A group commits on the source while the mirror runs: synced within seconds.
    commit(&us, "shipping", "shipments", 2, 60);
    wait_for("the group offset on the target", 30, || {
        committed(&eu, "shipping", "shipments", 2) == Some(60)
    });

    us.produce("shipments", &batch(400, "second")).unwrap();
    b.kill().unwrap();
    b.wait().unwrap();
    us.produce("shipments", &batch(400, "third")).unwrap();
    // tansu does not make survivors rebalance on its own: a replacement joins after the
    // dead member's session timeout, and the group hands out its partitions again.
    std::thread::sleep(Duration::from_secs(11));
    let c = start(&addrs[2]);
    us.produce("shipments", &batch(400, "fourth")).unwrap();
    wait_for("the mirror to catch up", 120, || {
        (0..4).map(|p| high(&eu, "shipments", p)).sum::<i64>() >= 1600
    });
    for mut p in [a, c] {
        let _ = Command::new("kill").arg(p.id().to_string()).status();
        assert!(p.wait().unwrap().success());
    }
    assert_eq!(assert_mirrored(&us, &eu, "shipments", 4, 0), 1600);
}

/// A bounded reading (the dashboard's) during a bulk copy takes the mirror's position from
/// its last checkpoint instead of reading the target's large batches, and says so; a few
/// records past the checkpoint are read and the position is exact. Built deterministically:
/// a mirror that checkpoints only when it stops, then runs cut short (as a kill would).
#[test]
fn a_bounded_reading_during_a_bulk_copy_uses_the_checkpoint_and_says_so() {
    use haven_engine::mirror::{self, status, MirrorOptions};
    let us = Broker::start().unwrap();
    let eu = Broker::start().unwrap();
    us.create_topic("bulk", 1).unwrap();
    let recs = |from: usize, n: usize| -> Vec<Rec> {
        (from..from + n)
            .map(|i| Rec::kv(&format!("k{i}"), &format!("v{i}")).to_partition(0))
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = haven_engine::config::Config::parse(
        &format!(
            "[clusters.us]\nbootstrap = \"{}\"\n[clusters.eu]\nbootstrap = \"{}\"\n\
             [mirrors.bulk]\nfrom = \"us\"\nto = \"eu\"\ntopics = \"bulk\"\n",
            us.bootstrap(),
            eu.bootstrap()
        ),
        &dir.path().join("haven.toml"),
    )
    .unwrap();
    let mut opts = MirrorOptions::from_config(&cfg, "bulk").unwrap();
    // Checkpoints only when a run ends by itself (`once`), never during one.
    opts.checkpoint_interval = Duration::from_secs(3600);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let observer = haven_engine::events::LogObserver;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    // A continuous run copies `n` more records and is cut short before any checkpoint.
    let copy_and_cut = |from: usize, n: usize| {
        us.produce("bulk", &recs(from, n)).unwrap();
        let (o, r) = (opts.clone(), rx.clone());
        let task = rt.spawn(async move {
            let observer = haven_engine::events::LogObserver;
            let _ = mirror::run(&o, &observer, r).await;
        });
        let end = (from + n) as i64;
        wait_for("the copy", 60, || high(&eu, "bulk", 0) >= end);
        task.abort();
        let _ = rt.block_on(task);
        assert_eq!(high(&eu, "bulk", 0), end, "copied exactly once");
    };
    let limited = || {
        let p = rt
            .block_on(status::status_limited(&opts, Some(10_000)))
            .unwrap();
        (
            p[0].mirrored_to,
            p[0].lag_records,
            p[0].position_from_checkpoint,
        )
    };
    let exact = || rt.block_on(status::status(&opts)).unwrap()[0].mirrored_to;

    // A first bulk copy, never checkpointed: nothing counts as mirrored yet, marked.
    copy_and_cut(0, 100);
    assert_eq!(limited(), (0, 100, true));
    assert_eq!(exact(), 100);
    // A run that ends by itself checkpoints what it copied.
    us.produce("bulk", &recs(100, 40)).unwrap();
    let mut once = opts.clone();
    once.once = true;
    rt.block_on(mirror::run(&once, &observer, rx.clone()))
        .unwrap();
    assert_eq!(high(&eu, "bulk", 0), 140, "copied exactly once");
    assert_eq!(limited(), (140, 0, false));
    // 30 records past the checkpoint: read, exact.
    copy_and_cut(140, 30);
    assert_eq!(limited(), (170, 0, false));
    assert_eq!(exact(), 170);
    // 300 more: the checkpoint (140), marked, the lag overstated (never understated).
    copy_and_cut(170, 300);
    assert_eq!(limited(), (140, 330, true));
    assert_eq!(exact(), 470);
}
