//! Restore: source and target compared record by record.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::{Broker, Consumed, Rec};

use crate::{backup_once, code, haven, ok, path, stderr};

fn records(n: usize, partitions: i32, ts0: i64) -> Vec<Rec> {
    (0..n)
        .map(|i| {
            let mut r = Rec::kv(&format!("k{}", i % 13), &format!("{{\"i\":{i}}}"))
                .to_partition(i as i32 % partitions)
                .at(ts0 + i as i64 * 1000);
            if i % 5 == 0 {
                r = r.header("h", Some(b"x")).header("h", None);
            }
            if i % 7 == 0 {
                r.key = None;
            }
            r
        })
        .collect()
}

/// Everything but the offset must match.
fn same_content(a: &Consumed, b: &Consumed) -> bool {
    a.key == b.key && a.value == b.value && a.timestamp == b.timestamp && a.headers == b.headers
}

#[test]
fn whole_topic_into_another_cluster_with_rename_and_exact_offset_map() {
    let us = Broker::start().unwrap();
    let eu = Broker::start().unwrap();
    us.create_topic("orders", 3).unwrap();
    us.produce("orders", &records(300, 3, 1_700_000_000_000))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    backup_once(&us, &repo, "orders", &[], &[]);

    // A dry run changes nothing.
    let out = ok(&haven(&[
        "--json",
        "restore",
        "--repo",
        &repo,
        "--brokers",
        &eu.bootstrap(),
        "--topics",
        "orders",
        "--rename",
        "orders=orders.restored",
        "--dry-run",
    ]));
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["plan"]["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(plan["plan"]["topics"][0]["create"], true);
    assert!(
        !dir.path().join("repo/restores").exists(),
        "a dry run wrote to the repository"
    );
    assert!(
        eu.read_partition("orders.restored", 0).is_err(),
        "a dry run created the topic"
    );

    let out = ok(&haven(&[
        "--json",
        "restore",
        "--repo",
        &repo,
        "--brokers",
        &eu.bootstrap(),
        "--topics",
        "orders",
        "--rename",
        "orders=orders.restored",
    ]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["records"], 300);
    let id = report["id"].as_str().unwrap().to_string();
    // The restore is recorded as a tested restore in the repository's audit log (what
    // the dashboard's "last restore test" reads).
    let entry = report["audit_entry"].as_str().expect("an audit entry");
    let audit: serde_json::Value =
        serde_json::from_str(&ok(&haven(&["--json", "audit", "--repo", &repo]))).unwrap();
    let text = audit.to_string();
    assert!(
        text.contains("\"restore\"") && text.contains(&id),
        "{entry}: {audit:#}"
    );
    for p in 0..3 {
        let src = us.read_partition("orders", p).unwrap();
        // The restored side is read with kafka-python (no code shared with librdkafka).
        let dst = testbed::independent_read(&eu.bootstrap(), "orders.restored", p).unwrap();
        assert_eq!(src.len(), dst.len());
        for (s, d) in src.iter().zip(&dst) {
            assert!(same_content(s, d), "partition {p}: {s:?} != {d:?}");
            let t = ok(&haven(&[
                "--json",
                "offsets",
                "translate",
                "--repo",
                &repo,
                "--restore",
                &id,
                "--topic",
                "orders",
                "--partition",
                &p.to_string(),
                "--offset",
                &s.offset.to_string(),
            ]));
            let t: serde_json::Value = serde_json::from_str(&t).unwrap();
            assert_eq!(t["target_offset"].as_i64(), Some(d.offset));
        }
    }
}

#[test]
fn time_window_and_point_in_time() {
    let b = Broker::start().unwrap();
    b.create_topic("events", 2).unwrap();
    let t0 = 1_700_000_000_000;
    b.produce("events", &records(100, 2, t0)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    backup_once(&b, &repo, "events", &[], &[]);
    let iso = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339()
    };

    ok(&haven(&[
        "restore",
        "--repo",
        &repo,
        "--brokers",
        &b.bootstrap(),
        "--topics",
        "events",
        "--prefix",
        "window.",
        "--from",
        &iso(t0 + 20_000),
        "--to",
        &iso(t0 + 40_000),
    ]));
    ok(&haven(&[
        "restore",
        "--repo",
        &repo,
        "--brokers",
        &b.bootstrap(),
        "--topics",
        "events",
        "--prefix",
        "at.",
        "--at",
        &iso(t0 + 9_000),
    ]));
    for p in 0..2 {
        let src = b.read_partition("events", p).unwrap();
        let window: Vec<&Consumed> = src
            .iter()
            .filter(|r| r.timestamp >= t0 + 20_000 && r.timestamp < t0 + 40_000)
            .collect();
        let got = b.read_partition("window.events", p).unwrap();
        assert_eq!(got.len(), window.len());
        assert!(got.iter().zip(&window).all(|(g, w)| same_content(g, w)));
        let at: Vec<&Consumed> = src.iter().filter(|r| r.timestamp <= t0 + 9_000).collect();
        let got = b.read_partition("at.events", p).unwrap();
        assert_eq!(got.len(), at.len(), "--at includes the instant itself");
        assert!(got.iter().zip(&at).all(|(g, w)| same_content(g, w)));
    }
}

#[test]
fn sigkill_mid_restore_then_resume_writes_each_record_once() {
    let b = Broker::start().unwrap();
    b.create_topic("big", 2).unwrap();
    let recs: Vec<Rec> = (0..40_000)
        .map(|i| Rec::kv(&format!("k{i}"), &"x".repeat(300)).to_partition(i % 2))
        .collect();
    b.produce("big", &recs).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    backup_once(&b, &repo, "big", &[], &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_haven"))
        .args([
            "restore",
            "--repo",
            &repo,
            "--brokers",
            &b.bootstrap(),
            "--topics",
            "big",
            "--rename",
            "big=big.copy",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.high_watermark("big.copy", 0).unwrap_or(0) < 2_000 {
        assert!(Instant::now() < deadline, "restore made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial =
        b.high_watermark("big.copy", 0).unwrap() + b.high_watermark("big.copy", 1).unwrap();
    assert!(
        partial < 40_000,
        "the restore finished before it was killed; make it bigger"
    );
    let id = std::fs::read_dir(dir.path().join("repo/restores"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let id = id.to_string_lossy().to_string();
    let out = ok(&haven(&[
        "--json",
        "restore",
        "--repo",
        &repo,
        "--brokers",
        &b.bootstrap(),
        "--resume",
        &id,
    ]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["records"].as_i64().unwrap() + partial, 40_000);
    for p in 0..2 {
        let src = b.read_partition("big", p).unwrap();
        let dst = b.read_partition("big.copy", p).unwrap();
        assert_eq!(src.len(), dst.len(), "partition {p}");
        assert!(src
            .iter()
            .zip(&dst)
            .all(|(s, d)| same_content(s, d) && s.offset == d.offset));
    }
}

#[test]
fn bad_input_gives_clear_errors_and_writes_nothing() {
    let b = Broker::start().unwrap();
    b.create_topic("t", 1).unwrap();
    b.produce("t", &records(10, 1, 1_700_000_000_000)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    backup_once(&b, &repo, "t", &[], &[]);
    let run = |extra: &[&str]| {
        let bs = b.bootstrap();
        let mut args = vec!["restore", "--repo", &repo, "--brokers", &bs];
        args.extend_from_slice(extra);
        haven(&args)
    };
    let out = run(&[
        "--topics",
        "t",
        "--from",
        "2026-01-02T00:00:00Z",
        "--to",
        "2026-01-01T00:00:00Z",
    ]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("empty window"), "{}", stderr(&out));
    let out = run(&["--topics", "nope"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("no topic in the repository matches"),
        "{}",
        stderr(&out)
    );
    let out = run(&["--topics", "t", "--rename", "t"]);
    assert_eq!(code(&out), 2);
    b.create_topic("t.two", 2).unwrap();
    let out = run(&["--topics", "t", "--rename", "t=t.two"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("2 partitions"), "{}", stderr(&out));
    let out = run(&["--resume", "no-such-id"]);
    assert_eq!(code(&out), 2);
    assert!(
        !dir.path().join("repo/restores").exists(),
        "a failed restore wrote to the repository"
    );
    let out = haven(&[
        "offsets",
        "translate",
        "--repo",
        &repo,
        "--restore",
        "x",
        "--topic",
        "t",
        "--partition",
        "0",
        "--offset",
        "1",
    ]);
    assert_eq!(code(&out), 2);
}

/// The first record a real consumer of `group` reads from each partition of `topic`.
fn first_read(b: &Broker, group: &str, topic: &str, partitions: i32) -> Vec<Consumed> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let c: BaseConsumer = b
        .config()
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut got: Vec<Option<Consumed>> = vec![None; partitions as usize];
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "consumer of {group} read nothing from {topic}: {got:?}"
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let slot = &mut got[m.partition() as usize];
            if slot.is_none() {
                *slot = Some(Consumed::from_message(&m));
            }
        }
    }
    got.into_iter().map(Option::unwrap).collect()
}

#[test]
fn consumer_group_resumes_on_the_target_at_exactly_the_next_record() {
    let us = Broker::start().unwrap();
    let eu = Broker::start().unwrap();
    us.create_topic("payments", 2).unwrap();
    us.produce("payments", &records(100, 2, 1_700_000_000_000))
        .unwrap();
    // billing processed 37 records of partition 0 and 12 of partition 1.
    crate::commit(&us, "billing", "payments", 0, 37);
    crate::commit(&us, "billing", "payments", 1, 12);
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    ok(&haven(&[
        "backup",
        "--brokers",
        &us.bootstrap(),
        "--repo",
        &repo,
        "--topics",
        "payments",
        "--once",
        "--group",
        "billing",
    ]));

    // The plan shows the translation before anything is written.
    let out = ok(&haven(&[
        "--json",
        "restore",
        "--repo",
        &repo,
        "--brokers",
        &eu.bootstrap(),
        "--topics",
        "payments",
        "--consumer-groups",
        "billing",
        "--from",
        "20",
        "--rename",
        "payments=w.payments",
        "--dry-run",
    ]));
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    let g: Vec<(i64, i64, i64)> = plan["plan"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["partition"].as_i64().unwrap(),
                g["source_offset"].as_i64().unwrap(),
                g["target_offset"].as_i64().unwrap(),
            )
        })
        .collect();
    // Window from offset 20: offset 37 is the 18th restored record; 12 precedes the window.
    assert_eq!(g, vec![(0, 37, 17), (1, 12, 0)], "{plan}");

    for (name, extra) in [("payments", vec![]), ("w.payments", vec!["--from", "20"])] {
        let eu_bootstrap = eu.bootstrap();
        let mut args = vec![
            "restore",
            "--repo",
            &repo,
            "--brokers",
            &eu_bootstrap,
            "--topics",
            "payments",
            "--consumer-groups",
            "billing",
        ];
        let rename = format!("payments={name}");
        args.extend(["--rename", &rename]);
        args.extend(extra.iter().copied());
        let out = ok(&haven(&args));
        assert!(out.contains("group billing"), "{out}");
    }
    let src0 = us.read_partition("payments", 0).unwrap();
    let src1 = us.read_partition("payments", 1).unwrap();
    let first = first_read(&eu, "billing", "payments", 2);
    assert!(
        same_content(&first[0], &src0[37]),
        "whole restore, p0: {:?} vs {:?}",
        first[0],
        src0[37]
    );
    assert!(same_content(&first[1], &src1[12]), "whole restore, p1");
    let first = first_read(&eu, "billing", "w.payments", 2);
    assert!(
        same_content(&first[0], &src0[37]),
        "window restore, p0: {:?}",
        first[0]
    );
    assert!(
        same_content(&first[1], &src1[20]),
        "window restore, p1 resumes at the window's first record"
    );
}

#[test]
fn encrypted_repository_restores_with_its_key_and_refuses_otherwise() {
    let b = Broker::start().unwrap();
    b.create_topic("sec", 1).unwrap();
    b.produce("sec", &records(30, 1, 1_700_000_000_000))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    let key = haven_format::MasterKey::generate();
    let env = [("HAVEN_KEY", key.to_hex())];
    let bs = b.bootstrap();
    ok(&crate::haven_env(
        &[
            "backup",
            "--brokers",
            &bs,
            "--repo",
            &repo,
            "--topics",
            "sec",
            "--once",
        ],
        &env,
    ));
    let restore = |env: &[(&str, String)], target: &str| {
        let rename = format!("sec={target}");
        crate::haven_env(
            &[
                "restore",
                "--repo",
                &repo,
                "--brokers",
                &bs,
                "--topics",
                "sec",
                "--rename",
                &rename,
            ],
            env,
        )
    };
    let out = restore(&[], "sec.nokey");
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("encrypted"), "{}", stderr(&out));
    let out = restore(
        &[("HAVEN_KEY", haven_format::MasterKey::generate().to_hex())],
        "sec.wrong",
    );
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("wrong key"), "{}", stderr(&out));
    assert!(b.read_partition("sec.nokey", 0).is_err() && b.read_partition("sec.wrong", 0).is_err());
    ok(&restore(&env, "sec.copy"));
    let src = b.read_partition("sec", 0).unwrap();
    let dst = b.read_partition("sec.copy", 0).unwrap();
    assert_eq!(src.len(), dst.len());
    assert!(src.iter().zip(&dst).all(|(s, d)| same_content(s, d)));
}

#[test]
fn a_missing_segment_is_a_clear_error_before_anything_is_written() {
    let b = Broker::start().unwrap();
    b.create_topic("m", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    for i in 0..3 {
        b.produce("m", &records(10, 1, 1_700_000_000_000 + i * 100_000))
            .unwrap();
        backup_once(&b, &repo, "m", &[], &[]);
    }
    let seg = dir.path().join("repo/log").join(format!("{:020}.seg", 2));
    let bytes = std::fs::read(&seg).unwrap();
    // Truncate it: the index can no longer be found.
    std::fs::write(&seg, &bytes[..bytes.len() / 2]).unwrap();
    let out = haven(&[
        "restore",
        "--repo",
        &repo,
        "--brokers",
        &b.bootstrap(),
        "--topics",
        "m",
        "--rename",
        "m=m.copy",
    ]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains(&format!("{:020}.seg", 2)),
        "names the object: {}",
        stderr(&out)
    );
    assert!(b.read_partition("m.copy", 0).is_err(), "nothing written");
    std::fs::remove_file(&seg).unwrap();
    let out = haven(&[
        "restore",
        "--repo",
        &repo,
        "--brokers",
        &b.bootstrap(),
        "--topics",
        "m",
        "--rename",
        "m=m.copy",
    ]);
    assert_ne!(code(&out), 0);
    assert!(b.read_partition("m.copy", 0).is_err(), "nothing written");
}

#[test]
fn repartition_six_to_three_keeps_each_keys_records_together_and_in_order() {
    use rdkafka::producer::DefaultProducerContext;
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let b = Broker::start().unwrap();
    b.create_topic("wide", 6).unwrap();
    let recs: Vec<Rec> = (0..600)
        .map(|i| {
            // Keyed as a producer would: every record of a key in one source partition.
            let c = i % 40;
            let mut r = Rec::kv(&format!("customer-{c}"), &format!("{i}")).to_partition(c % 6);
            if i % 50 == 0 {
                r.key = None;
                r.partition = Some(i % 6);
            }
            r
        })
        .collect();
    b.produce("wide", &recs).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    backup_once(&b, &repo, "wide", &[], &[]);
    b.create_topic("narrow", 3).unwrap();
    let bs = b.bootstrap();
    let out = haven(&[
        "restore",
        "--repo",
        &repo,
        "--brokers",
        &bs,
        "--topics",
        "wide",
        "--rename",
        "wide=narrow",
    ]);
    assert_eq!(
        code(&out),
        2,
        "an incompatible partition count needs --repartition"
    );
    assert!(stderr(&out).contains("--repartition"), "{}", stderr(&out));
    ok(&haven(&[
        "restore",
        "--repo",
        &repo,
        "--brokers",
        &bs,
        "--topics",
        "wide",
        "--rename",
        "wide=narrow",
        "--repartition",
    ]));

    // The oracle: librdkafka's Java-compatible partitioner on a 3-partition topic.
    b.create_topic("oracle", 3).unwrap();
    let p: ThreadedProducer<DefaultProducerContext> =
        b.config().set("partitioner", "murmur2").create().unwrap();
    for c in 0..40 {
        let key = format!("customer-{c}");
        p.send(BaseRecord::<str, str>::to("oracle").key(&key).payload("x"))
            .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let mut oracle = std::collections::BTreeMap::new();
    for part in 0..3 {
        for r in b.read_partition("oracle", part).unwrap() {
            oracle.insert(r.key.unwrap(), part);
        }
    }
    let mut total = 0;
    for part in 0..3 {
        let got = b.read_partition("narrow", part).unwrap();
        total += got.len();
        let mut last_seq: std::collections::BTreeMap<Vec<u8>, i64> = Default::default();
        for r in got {
            let seq: i64 = String::from_utf8(r.value.clone().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            match &r.key {
                Some(k) => {
                    assert_eq!(
                        oracle[k],
                        part,
                        "key {:?} placed unlike the Java partitioner",
                        String::from_utf8_lossy(k)
                    );
                    if let Some(prev) = last_seq.insert(k.clone(), seq) {
                        assert!(
                            prev < seq,
                            "key {:?} out of order: {prev} then {seq}",
                            String::from_utf8_lossy(k)
                        );
                    }
                }
                None => assert_eq!(
                    (seq % 6) % 3,
                    part as i64,
                    "a keyless record goes to its source partition mod 3"
                ),
            }
        }
    }
    assert_eq!(total, 600);
}

/// A repository written directly with gaps in its offsets (as compaction or transaction
/// markers leave them; tansu can produce neither), one segment per "hour".
async fn synthetic_repo(
    dir: &std::path::Path,
) -> (haven_engine::repo::Repository, haven_storage::Store) {
    use haven_format::{Record, TimestampType};
    let store = haven_storage::Store::open(&dir.display().to_string()).unwrap();
    let repo = haven_engine::repo::Repository::open_or_create(store.clone(), Default::default())
        .await
        .unwrap();
    let mut state = repo.load_state().await.unwrap();
    let mut offset = 0i64;
    for hour in 0..10i64 {
        let mut seg = repo.new_segment(state.head, "test");
        let start = offset;
        let mut recs = Vec::new();
        for i in 0..50i64 {
            recs.push(Record {
                offset,
                timestamp: 1_700_000_000_000 + hour * 3_600_000 + i * 1000,
                timestamp_type: TimestampType::CreateTime,
                key: Some(format!("k{}", offset % 7).into_bytes()),
                value: Some(format!("v{offset}").into_bytes()),
                headers: vec![],
            });
            // Every third record is followed by a gap of 2 offsets.
            offset += if i % 3 == 2 { 3 } else { 1 };
        }
        seg.add_partition("compacted", 0, 0, start, offset, &recs, vec![])
            .unwrap();
        repo.commit_segment(&mut state, seg).await.unwrap();
    }
    (repo, store)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_reads_only_its_chunks_and_gaps_translate_exactly() {
    use haven_engine::read::Bound;
    use haven_engine::restore::{self, RestoreOptions};
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (repo, store) = synthetic_repo(dir.path()).await;
    let b = std::sync::Arc::new(
        tokio::task::spawn_blocking(Broker::start)
            .await
            .unwrap()
            .unwrap(),
    );
    let state = repo.load_state().await.unwrap();
    let (from, to) = (
        1_700_000_000_000 + 4 * 3_600_000,
        1_700_000_000_000 + 5 * 3_600_000,
    );
    let window_chunks: u64 = state
        .partitions
        .values()
        .flat_map(|p| &p.chunks)
        .filter(|c| c.meta.max_timestamp >= from && c.meta.min_timestamp < to)
        .map(|c| c.meta.byte_len)
        .sum();
    let before = store.traffic().bytes_read.load(Ordering::Relaxed);
    let opts = RestoreOptions {
        from: Bound::Time(from),
        to: Bound::Time(to),
        suffix: ".hour4".into(),
        provenance_headers: true,
        ..RestoreOptions::new(
            haven_kafka::ClusterConfig::new(b.bootstrap()),
            haven_engine::backup::topic_regex("compacted").unwrap(),
        )
    };
    let plan = restore::plan(&repo, &state, &opts).await.unwrap();
    let report = restore::run(
        &repo,
        &state,
        &plan,
        &opts.cluster,
        &haven_engine::events::Collect::default(),
        &[],
    )
    .await
    .unwrap();
    let read = store.traffic().bytes_read.load(Ordering::Relaxed) - before;
    assert_eq!(report.records, 50);
    assert_eq!(
        read, window_chunks,
        "the restore read exactly the window's chunk (plan and run share it)"
    );

    // Gaps: the hour-4 records sit at source offsets with holes; on the target they are
    // contiguous, and an offset in a hole translates to the next record.
    let got = {
        let b = b.clone();
        tokio::task::spawn_blocking(move || b.read_partition("compacted.hour4", 0))
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(got.len(), 50);
    let offsets = restore::load_offsets(&repo, &plan.id).await.unwrap();
    let map = &offsets.partitions[0].map;
    for (i, r) in got.iter().enumerate() {
        let source: i64 = String::from_utf8(r.value.clone().unwrap()).unwrap()[1..]
            .parse()
            .unwrap();
        assert_eq!(map.translate(source), Some(i as i64));
        let prov = r
            .headers
            .iter()
            .find(|h| h.0 == "haven-source")
            .and_then(|h| h.1.clone())
            .unwrap();
        assert_eq!(
            String::from_utf8(prov).unwrap(),
            format!("compacted/0/{source}")
        );
        if i > 0 {
            let prev: i64 = String::from_utf8(got[i - 1].value.clone().unwrap()).unwrap()[1..]
                .parse()
                .unwrap();
            for hole in prev + 1..source {
                assert_eq!(
                    map.translate(hole),
                    Some(i as i64),
                    "hole {hole} resumes at the next record"
                );
            }
        }
    }
}

#[test]
fn an_offset_window_for_one_partition() {
    let b = Broker::start().unwrap();
    b.create_topic("ow", 2).unwrap();
    b.produce("ow", &records(100, 2, 1_700_000_000_000))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    backup_once(&b, &repo, "ow", &[], &[]);
    let bs = b.bootstrap();
    ok(&haven(&[
        "restore",
        "--repo",
        &repo,
        "--brokers",
        &bs,
        "--topics",
        "ow",
        "--suffix",
        ".part",
        "--partitions",
        "1",
        "--offsets",
        "1=10..20",
    ]));
    let src = b.read_partition("ow", 1).unwrap();
    let got = b.read_partition("ow.part", 1).unwrap();
    assert_eq!(got.len(), 10);
    assert!(got
        .iter()
        .zip(&src[10..20])
        .all(|(g, s)| same_content(g, s)));
    assert_eq!(
        b.high_watermark("ow.part", 0).unwrap(),
        0,
        "partition 0 was not selected"
    );
    let out = haven(&[
        "restore",
        "--repo",
        &repo,
        "--brokers",
        &bs,
        "--topics",
        "ow",
        "--offsets",
        "1=20..10",
    ]);
    assert_eq!(code(&out), 2);
}
