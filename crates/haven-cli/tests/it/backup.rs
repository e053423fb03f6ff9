//! Backup round trips, crash and resume, tamper detection, encryption.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use haven_engine::read::json_bytes;
use testbed::{Broker, Consumed, Rec};

use crate::{backup_once, code, commit, haven, haven_env, ok, path, stderr};

/// Edge cases of a record: null vs empty key and value, duplicate and null headers.
pub(crate) fn edge_records(n: usize, partitions: i32) -> Vec<Rec> {
    (0..n)
        .map(|i| {
            let mut r = Rec::kv(
                &format!("key-{}", i % 17),
                &format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 50)),
            )
            .to_partition((i as i32) % partitions)
            .at(1_750_000_000_000 + i as i64 * 10);
            match i % 6 {
                0 => r.key = None,
                1 => r.key = Some(vec![]),
                2 => r.value = None,
                3 => r.value = Some(vec![]),
                4 => {
                    r = r
                        .header("h", Some(b"1"))
                        .header("h", None)
                        .header("h", Some(b""))
                }
                _ => r.value = Some(vec![0xff, 0x00, 0xfe, (i % 256) as u8]),
            }
            r
        })
        .collect()
}

fn cat(repo: &str, topic: &str, partition: i32, env: &[(&str, String)]) -> Vec<Consumed> {
    let p = partition.to_string();
    let out = ok(&haven_env(
        &["cat", "--repo", repo, "--topic", topic, "--partition", &p],
        env,
    ));
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Consumed {
                partition: v["partition"].as_i64().unwrap() as i32,
                offset: v["offset"].as_i64().unwrap(),
                timestamp: v["timestamp"].as_i64().unwrap(),
                key: json_bytes(&v["key"]).unwrap(),
                value: json_bytes(&v["value"]).unwrap(),
                headers: v["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| {
                        (
                            h[0].as_str().unwrap().to_string(),
                            json_bytes(&h[1]).unwrap(),
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

pub(crate) fn assert_same(
    b: &Broker,
    repo: &str,
    topic: &str,
    partitions: i32,
    env: &[(&str, String)],
) -> usize {
    let mut n = 0;
    for p in 0..partitions {
        let expected = b.read_partition(topic, p).unwrap();
        let got = cat(repo, topic, p, env);
        assert_eq!(got.len(), expected.len(), "partition {p}: record count");
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g, e, "partition {p} offset {}", e.offset);
        }
        n += got.len();
    }
    n
}

#[test]
fn snapshot_round_trips_every_edge_case_and_group_commits() {
    let b = Broker::start().unwrap();
    b.create_topic("orders", 3).unwrap();
    b.create_topic("other", 1).unwrap();
    b.produce("orders", &edge_records(600, 3)).unwrap();
    b.produce("other", &[Rec::kv("x", "y")]).unwrap();
    commit(&b, "billing", "orders", 0, 17);

    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    let out = backup_once(&b, &repo, "orders", &["--group", "billing"], &[]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["records"], 600);
    assert_eq!(assert_same(&b, &repo, "orders", 3, &[]), 600);

    let ls: serde_json::Value =
        serde_json::from_str(&ok(&haven(&["--json", "ls", "--repo", &repo]))).unwrap();
    let parts = ls["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "only the selected topic: {ls}");
    assert!(parts
        .iter()
        .all(|p| p["records"] == 200 && p["gaps"] == 0 && p["lost"] == 0));
    assert_eq!(
        ls["groups"], 1,
        "the billing group's commit is in the timeline: {ls}"
    );
    let st = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = haven_storage::Store::open(&repo).unwrap();
        let r = haven_engine::repo::Repository::open(store, Default::default())
            .await
            .unwrap();
        r.load_state().await.unwrap()
    });
    assert_eq!(
        st.group_offsets
            .get(&("billing".into(), "orders".into(), 0)),
        Some(&17)
    );
    assert_eq!(ls["topics"][0]["partitions"], 3);

    // A second snapshot with nothing new adds no records; new records continue the ranges.
    backup_once(&b, &repo, "orders", &[], &[]);
    b.produce("orders", &edge_records(30, 3)).unwrap();
    backup_once(&b, &repo, "orders", &[], &[]);
    assert_eq!(assert_same(&b, &repo, "orders", 3, &[]), 630);
    assert_eq!(code(&haven(&["verify", "--repo", &repo, "--deep"])), 0);
}

#[test]
fn sigkill_mid_backup_then_restart_loses_and_duplicates_nothing() {
    let b = Broker::start().unwrap();
    b.create_topic("events", 2).unwrap();
    b.produce("events", &edge_records(300, 2)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_haven"))
        .args([
            "backup",
            "--brokers",
            &b.bootstrap(),
            "--repo",
            &repo,
            "--topics",
            "events",
            "--flush-ms",
            "50",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Keep producing while the backup runs, and kill it right after it wrote something.
    let log = dir.path().join("repo/log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&log).map(|d| d.count()).unwrap_or(0) < 2 {
        assert!(Instant::now() < deadline, "backup wrote nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    b.produce("events", &edge_records(200, 2)).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    b.produce("events", &edge_records(100, 2)).unwrap();
    backup_once(&b, &repo, "events", &[], &[]);
    assert_eq!(assert_same(&b, &repo, "events", 2, &[]), 600);
    assert_eq!(code(&haven(&["verify", "--repo", &repo])), 0);
}

#[test]
fn verify_names_flipped_deleted_and_swapped_segments() {
    let b = Broker::start().unwrap();
    b.create_topic("t", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    for round in 0..4 {
        b.produce("t", &edge_records(20 + round, 1)).unwrap();
        backup_once(&b, &path(&repo), "t", &["--group-interval", "0"], &[]);
    }
    assert_eq!(code(&haven(&["verify", "--repo", &path(&repo)])), 0);
    let seg = |n: u64| format!("log/{n:020}.seg");
    let damaged = |name: &str, f: &dyn Fn(&std::path::Path)| {
        let copy = dir.path().join(name);
        copy_dir(&repo, &copy);
        f(&copy);
        let out = haven(&["verify", "--repo", &path(&copy)]);
        (code(&out), String::from_utf8_lossy(&out.stdout).to_string())
    };
    let (c, out) = damaged("flipped", &|r| {
        let p = r.join(seg(2));
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[40] ^= 0x01;
        std::fs::write(&p, bytes).unwrap();
    });
    assert_eq!(c, 1);
    assert!(out.contains(&seg(2)) && out.contains("digest"), "{out}");

    let (c, out) = damaged("deleted", &|r| {
        std::fs::remove_file(r.join(seg(2))).unwrap()
    });
    assert_eq!(c, 1);
    assert!(out.contains(&seg(3)) && out.contains("missing"), "{out}");

    let (c, out) = damaged("swapped", &|r| {
        let (a, bb) = (r.join(seg(2)), r.join(seg(3)));
        let tmp = r.join("tmp");
        std::fs::rename(&a, &tmp).unwrap();
        std::fs::rename(&bb, &a).unwrap();
        std::fs::rename(&tmp, &bb).unwrap();
    });
    assert_eq!(c, 1);
    assert!(
        out.contains(&seg(2)) && out.contains("another name"),
        "{out}"
    );
}

pub(crate) fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn encrypted_repository_needs_its_key() {
    let b = Broker::start().unwrap();
    b.create_topic("secret", 1).unwrap();
    b.produce(
        "secret",
        &[
            Rec::kv("acct-1", "PLAINTEXT-BALANCE-1234"),
            Rec::kv("acct-2", "x"),
        ],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    let key = haven_format::MasterKey::generate();
    let env = [("HAVEN_KEY", key.to_hex())];
    backup_once(&b, &repo, "secret", &[], &env);
    for e in std::fs::read_dir(dir.path().join("repo/log")).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(9).any(|w| w == b"PLAINTEXT"),
            "plaintext found in a segment"
        );
    }
    assert_eq!(assert_same(&b, &repo, "secret", 1, &env), 2);
    assert_eq!(
        code(&haven_env(&["verify", "--repo", &repo, "--deep"], &env)),
        0
    );

    let out = haven(&["cat", "--repo", &repo, "--topic", "secret"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("encrypted") && stderr(&out).contains("HAVEN_KEY"),
        "{}",
        stderr(&out)
    );
    let wrong = [("HAVEN_KEY", haven_format::MasterKey::generate().to_hex())];
    let out = haven_env(&["cat", "--repo", &repo, "--topic", "secret"], &wrong);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("wrong key"), "{}", stderr(&out));
}

fn failing_backup(b: &Broker, repo: &str, topics: &str) -> std::process::Output {
    let bootstrap = b.bootstrap();
    haven(&[
        "backup",
        "--brokers",
        &bootstrap,
        "--repo",
        repo,
        "--topics",
        topics,
        "--once",
    ])
}

#[test]
fn bad_input_gives_clear_errors() {
    let b = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    let out = failing_backup(&b, &repo, "nothing.*");
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("no topic") && stderr(&out).contains("nothing.*"),
        "{}",
        stderr(&out)
    );
    let out = failing_backup(&b, &repo, "(");
    assert_eq!(code(&out), 2);
    let out = haven(&["ls", "--repo", &path(&dir.path().join("absent"))]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("not a Haven repository"),
        "{}",
        stderr(&out)
    );
}

pub(crate) fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn continuous_backup_serves_metrics_that_count_durable_records() {
    let b = Broker::start().unwrap();
    b.create_topic("live", 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    let port = testbed::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let bootstrap = b.bootstrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_haven"))
        .args([
            "backup",
            "--brokers",
            &bootstrap,
            "--repo",
            &repo,
            "--topics",
            "live",
            "--flush-ms",
            "200",
        ])
        .args(["--metrics-addr", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    b.produce("live", &edge_records(120, 2)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while !last.contains("haven_backup_records_total 120\n") {
        assert!(
            Instant::now() < deadline,
            "metrics never showed 120 durable records:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(100));
        last = scrape(port).unwrap_or_default();
    }
    assert!(last.contains("haven_backup_segments_total"), "{last}");
    // Lag per partition: every record is durable, so both partitions reach 0.
    while !(last.contains("haven_backup_lag_records{topic=\"live\",partition=\"0\"} 0\n")
        && last.contains("haven_backup_lag_records{topic=\"live\",partition=\"1\"} 0\n"))
    {
        assert!(Instant::now() < deadline, "lag never reached 0:\n{last}");
        std::thread::sleep(Duration::from_millis(100));
        last = scrape(port).unwrap_or_default();
    }
    assert!(
        last.contains("haven_backup_durable_offset{topic=\"live\",partition=\"0\"} 60\n"),
        "{last}"
    );
    // SIGTERM: the backup flushes and exits cleanly.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "backup exited with {status} on SIGTERM");
    assert_eq!(assert_same(&b, &repo, "live", 2, &[]), 120);
}

fn repo_records(repo: &str) -> u64 {
    let out = haven(&["--json", "ls", "--repo", repo]);
    if !out.status.success() {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["partitions"]
        .as_array()
        .map(|a| a.iter().map(|p| p["records"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

fn wait_for_records(repo: &str, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = repo_records(repo);
        if got == n {
            return;
        }
        assert!(
            got < n,
            "the repository holds {got} records, more than the {n} produced"
        );
        assert!(
            Instant::now() < deadline,
            "the repository holds {got} of {n} records"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn writers(repo: &str) -> std::collections::BTreeSet<String> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let r = haven_engine::repo::Repository::open(
            haven_storage::Store::open(repo).unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
        let mut w = std::collections::BTreeSet::new();
        for o in r.segments().await.unwrap() {
            let (ix, _) = r.read_index(&o).await.unwrap();
            if !ix.partitions.is_empty() {
                w.insert(ix.writer);
            }
        }
        w
    })
}

fn share_and_survive_a_kill(processes: usize) {
    let b = Broker::start().unwrap();
    b.create_topic("shared", 6).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    let bootstrap = b.bootstrap();
    let spawn = |_| {
        Command::new(env!("CARGO_BIN_EXE_haven"))
            .args([
                "backup",
                "--brokers",
                &bootstrap,
                "--repo",
                &repo,
                "--topics",
                "shared",
            ])
            .args([
                "--job",
                "scale",
                "--flush-ms",
                "100",
                "--group-interval",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut children: Vec<_> = (0..processes).map(spawn).collect();
    // Produce in waves until the group has settled and more than one process writes.
    let mut produced = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        b.produce("shared", &edge_records(60, 6)).unwrap();
        produced += 60;
        wait_for_records(&repo, produced, Duration::from_secs(60));
        if writers(&repo).len() >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{processes} processes of one job never shared the partitions: writers {:?}",
            writers(&repo)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut victim = children.remove(0);
    victim.kill().unwrap();
    victim.wait().unwrap();
    b.produce("shared", &edge_records(300, 6)).unwrap();
    // tansu 0.6 notices the dead member but never tells the others to rebalance (measured:
    // the survivors keep heartbeating the old generation). A replacement joining, as a
    // supervisor would start one, makes the group rebalance; on Kafka the session timeout
    // alone does. It joins after the session timeout (10 s), so the dead member is gone.
    std::thread::sleep(Duration::from_secs(11));
    children.push(spawn(processes));
    produced += 300;
    wait_for_records(&repo, produced, Duration::from_secs(90));
    for mut c in children {
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(assert_same(&b, &repo, "shared", 6, &[]) as u64, produced);
    assert_eq!(code(&haven(&["verify", "--repo", &repo])), 0);
}

#[test]
fn two_processes_share_a_topic_and_survive_a_kill() {
    share_and_survive_a_kill(2);
}

#[test]
fn three_processes_share_a_topic_and_survive_a_kill() {
    share_and_survive_a_kill(3);
}

#[test]
fn a_recreated_topic_is_a_new_generation_kept_apart() {
    let b = Broker::start().unwrap();
    b.create_topic("gen", 1).unwrap();
    b.produce(
        "gen",
        &[
            Rec::kv("a", "old-1"),
            Rec::kv("b", "old-2"),
            Rec::kv("c", "old-3"),
        ],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    backup_once(&b, &repo, "gen", &[], &[]);
    b.delete_topic("gen").unwrap();
    b.create_topic("gen", 1).unwrap();
    b.produce("gen", &[Rec::kv("x", "new-1")]).unwrap();
    backup_once(&b, &repo, "gen", &[], &[]);

    let ls: serde_json::Value =
        serde_json::from_str(&ok(&haven(&["--json", "ls", "--repo", &repo]))).unwrap();
    let gens: Vec<(u64, u64)> = ls["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["generation"].as_u64().unwrap(),
                p["records"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(gens, vec![(0, 3), (1, 1)], "{ls}");
    let values = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["cat", "--repo", &repo, "--topic", "gen"];
        args.extend_from_slice(extra);
        ok(&haven(&args))
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["value"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(values(&[]), vec!["new-1"]);
    assert_eq!(
        values(&["--generation", "0"]),
        vec!["old-1", "old-2", "old-3"]
    );
    assert_eq!(code(&haven(&["verify", "--repo", &repo])), 0);
}

#[test]
fn broker_killed_mid_backup_then_restarted_loses_and_duplicates_nothing() {
    let mut b = Broker::start().unwrap();
    b.create_topic("flaky", 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    let bootstrap = b.bootstrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_haven"))
        .args([
            "backup",
            "--brokers",
            &bootstrap,
            "--repo",
            &repo,
            "--topics",
            "flaky",
        ])
        .args(["--flush-ms", "100", "--group-interval", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    b.produce("flaky", &edge_records(100, 2)).unwrap();
    wait_for_records(&repo, 100, Duration::from_secs(30));
    b.kill();
    std::thread::sleep(Duration::from_secs(2));
    b.restart().unwrap();
    b.produce("flaky", &edge_records(100, 2)).unwrap();
    // The backup reconnects by itself and continues.
    wait_for_records(&repo, 200, Duration::from_secs(60));
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    assert!(child.wait().unwrap().success());
    assert_eq!(assert_same(&b, &repo, "flaky", 2, &[]), 200);
    assert_eq!(code(&haven(&["verify", "--repo", &repo])), 0);
}

#[test]
fn readers_share_partitions_without_gap_or_duplicate() {
    let b = Broker::start().unwrap();
    b.create_topic("spread", 5).unwrap();
    b.produce("spread", &edge_records(500, 5)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    // A snapshot with 3 readers for 5 partitions: one flush, so one segment holds what
    // all three read.
    let out = backup_once(
        &b,
        &repo,
        "spread",
        &[
            "--readers",
            "3",
            "--flush-ms",
            "60000",
            "--group-interval",
            "0",
        ],
        &[],
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["readers"], 3, "{report}");
    assert_eq!(report["records"], 500, "{report}");
    assert_eq!(report["segments"], 1, "{report}");
    assert_eq!(assert_same(&b, &repo, "spread", 5, &[]), 500);

    // Continuous with 2 readers, killed -9 while records arrive, then resumed with 4:
    // every record once, in order.
    let mut child = Command::new(env!("CARGO_BIN_EXE_haven"))
        .args(["backup", "--brokers", &b.bootstrap(), "--repo", &repo])
        .args(["--topics", "spread", "--readers", "2", "--flush-ms", "50"])
        .args(["--group-interval", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    b.produce("spread", &edge_records(300, 5)).unwrap();
    wait_for_records(&repo, 800, Duration::from_secs(60));
    b.produce("spread", &edge_records(300, 5)).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    b.produce("spread", &edge_records(200, 5)).unwrap();
    let out = backup_once(&b, &repo, "spread", &["--readers", "4"], &[]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["readers"], 4, "{report}");
    assert_eq!(assert_same(&b, &repo, "spread", 5, &[]), 1300);
    assert_eq!(code(&haven(&["verify", "--repo", &repo])), 0);
}
