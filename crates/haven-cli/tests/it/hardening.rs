//! Regression tests for defects found by trying Haven as a new user and as an adversary:
//! keys, damaged repositories, group names, partition maps, instants, empty selections,
//! relative times, closed pipes, JSON output, exit codes, bounded waits and messages.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::{Broker, Rec};

use crate::backup::edge_records;
use crate::{backup_once, code, commit, haven, haven_env, ok, path, stderr};

fn seg(n: u64) -> String {
    format!("log/{n:020}.seg")
}

fn log_objects(repo: &std::path::Path) -> usize {
    std::fs::read_dir(repo.join("log"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `haven cat` of every partition of `topic` as (partition, offset, line).
fn cat_lines(repo: &str, topic: &str, extra: &[&str]) -> (i32, Vec<(i64, i64)>, String) {
    let mut args = vec!["cat", "--repo", repo, "--topic", topic];
    args.extend_from_slice(extra);
    let out = haven(&args);
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["partition"].as_i64().unwrap(),
                v["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    (code(&out), lines, stderr(&out))
}

#[test]
fn a_key_the_repository_was_not_created_with_is_refused_before_anything_is_written() {
    let b = Broker::start().unwrap();
    b.create_topic("t", 1).unwrap();
    b.produce("t", &edge_records(20, 1)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    backup_once(&b, &path(&plain), "t", &[], &[]);
    let before = log_objects(&plain);
    b.produce("t", &edge_records(5, 1)).unwrap();
    for _ in 0..2 {
        let k = [("HAVEN_KEY", haven_format::MasterKey::generate().to_hex())];
        let out = haven_env(
            &[
                "backup",
                "--brokers",
                &b.bootstrap(),
                "--repo",
                &path(&plain),
                "--topics",
                "t",
                "--once",
            ],
            &k,
        );
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("not encrypted") && stderr(&out).contains("key id: none"),
            "{}",
            stderr(&out)
        );
        assert_eq!(log_objects(&plain), before, "nothing written");
    }
    assert_eq!(
        code(&haven(&["verify", "--repo", &path(&plain), "--deep"])),
        0
    );

    // An encrypted repository without its key: refused, naming the key id.
    let key = haven_format::MasterKey::generate();
    let enc = path(&dir.path().join("enc"));
    backup_once(&b, &enc, "t", &[], &[("HAVEN_KEY", key.to_hex())]);
    let out = haven(&[
        "backup",
        "--brokers",
        &b.bootstrap(),
        "--repo",
        &enc,
        "--topics",
        "t",
        "--once",
    ]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains(&key.id().to_string()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn readers_refuse_a_damaged_repository_and_salvage_what_is_intact_on_request() {
    let b = Broker::start().unwrap();
    b.create_topic("orders", 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    for round in 0..5 {
        b.produce("orders", &edge_records(40 + round, 2)).unwrap();
        backup_once(&b, &path(&repo), "orders", &["--group-interval", "0"], &[]);
    }
    assert_eq!(log_objects(&repo), 5, "one segment per snapshot");
    let (c, intact, _) = cat_lines(&path(&repo), "orders", &[]);
    assert_eq!(c, 0);
    assert_eq!(intact.len(), 210);

    let copy = |name: &str| {
        let to = dir.path().join(name);
        crate::backup::copy_dir(&repo, &to);
        to
    };

    // A segment deleted from the middle.
    let deleted = copy("deleted");
    let gone_bytes = std::fs::read(deleted.join(seg(3))).unwrap();
    std::fs::remove_file(deleted.join(seg(3))).unwrap();
    let (c, lines, err) = cat_lines(&path(&deleted), "orders", &[]);
    assert_eq!(c, 1, "{err}");
    assert!(lines.is_empty(), "nothing printed from a damaged log");
    assert!(
        err.contains("damaged") && err.contains("--skip-damaged"),
        "{err}"
    );
    let out = haven(&["ls", "--repo", &path(&deleted)]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    // Salvage: exactly the records of the other segments, and the missing ranges named.
    let (c, lines, err) = cat_lines(&path(&deleted), "orders", &["--skip-damaged"]);
    assert_eq!(c, 0, "{err}");
    let (ix, _) = haven_format::verify_object(&gone_bytes).unwrap();
    let mut expected = intact.clone();
    for p in &ix.partitions {
        expected.retain(|(part, o)| {
            !(*part == p.partition as i64 && *o >= p.start_offset && *o < p.end_offset)
        });
        assert!(
            err.contains(&format!(
                "missing: orders/{} offsets {}..{}",
                p.partition, p.start_offset, p.end_offset
            )),
            "{err}"
        );
    }
    assert_eq!(lines, expected);
    let ls: serde_json::Value = serde_json::from_str(&ok(&haven(&[
        "--json",
        "ls",
        "--repo",
        &path(&deleted),
        "--skip-damaged",
    ])))
    .unwrap();
    assert_eq!(ls["missing"].as_array().unwrap().len(), 2, "{ls}");

    // A segment copied under a second name: a stray object, never read as data.
    let stray = copy("stray");
    std::fs::copy(stray.join(seg(2)), stray.join("log/2.seg")).unwrap();
    let (c, lines, err) = cat_lines(&path(&stray), "orders", &[]);
    assert_eq!((c, &lines), (0, &intact), "{err}");
    let ls: serde_json::Value =
        serde_json::from_str(&ok(&haven(&["--json", "ls", "--repo", &path(&stray)]))).unwrap();
    let records: u64 = ls["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["records"].as_u64().unwrap())
        .sum();
    assert_eq!(records, 210, "{ls}");
    let out = haven(&["verify", "--repo", &path(&stray)]);
    assert_eq!(code(&out), 1);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("log/2.seg"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A segment copied over the next position of the log: refused, then skipped on request
    // with every record read exactly once.
    let copied = copy("copied");
    std::fs::copy(copied.join(seg(2)), copied.join(seg(6))).unwrap();
    let (c, lines, err) = cat_lines(&path(&copied), "orders", &[]);
    assert_eq!(c, 1, "{err}");
    assert!(lines.is_empty());
    assert!(err.contains(&seg(6)), "{err}");
    let (c, lines, err) = cat_lines(&path(&copied), "orders", &["--skip-damaged"]);
    assert_eq!((c, &lines), (0, &intact), "{err}");
    assert!(err.contains(&seg(6)), "{err}");
    let out = haven(&[
        "restore",
        "--repo",
        &path(&copied),
        "--brokers",
        &b.bootstrap(),
        "--topics",
        "orders",
        "--rename",
        "orders=orders.copy",
    ]);
    assert_eq!(code(&out), 1, "restore refuses: {}", stderr(&out));
    let out = haven(&[
        "--json",
        "restore",
        "--repo",
        &path(&copied),
        "--brokers",
        &b.bootstrap(),
        "--topics",
        "orders",
        "--rename",
        "orders=orders.copy",
        "--skip-damaged",
    ]);
    let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(v["records"], 210, "{v}");
}

#[test]
fn group_names_with_dashes_and_dots_are_synced_and_a_group_never_synced_is_named() {
    let us = Broker::start().unwrap();
    let eu = Broker::start().unwrap();
    us.create_topic("ledger", 1).unwrap();
    let recs: Vec<Rec> = (0..30).map(|i| Rec::kv("k", &format!("v{i}"))).collect();
    us.produce("ledger", &recs).unwrap();
    commit(&us, "ledger-svc", "ledger", 0, 11);
    commit(&us, "orders.consumer", "ledger", 0, 23);
    let (s, d) = (us.bootstrap(), eu.bootstrap());
    let out = haven(&[
        "--json",
        "mirror",
        "--from",
        &s,
        "--to",
        &d,
        "--topics",
        "ledger",
        "--groups",
        "ledger-svc",
        "--groups",
        "orders.consumer",
        "--groups",
        "no-such-group",
        "--once",
    ]);
    ok(&out);
    let committed = |g: &str| {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = eu.config().set("group.id", g).create().unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition("ledger", 0);
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        got.elements()[0].offset()
    };
    assert_eq!(committed("ledger-svc"), rdkafka::Offset::Offset(11));
    assert_eq!(committed("orders.consumer"), rdkafka::Offset::Offset(23));
    let err = stderr(&out);
    assert!(
        err.contains("no-such-group") && err.contains("no committed offset"),
        "{err}"
    );
    assert_eq!(err.matches("no-such-group").count(), 1, "said once: {err}");
}

#[test]
fn a_partition_map_is_shown_restored_and_translated_as_mapped() {
    let b = Broker::start().unwrap();
    b.create_topic("orders", 3).unwrap();
    b.create_topic("pm.copy", 1).unwrap();
    let recs: Vec<Rec> = (0..60)
        .map(|i| Rec::kv(&format!("k{i}"), &format!("v{i}")).to_partition(i % 3))
        .collect();
    b.produce("orders", &recs).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    backup_once(&b, &repo, "orders", &[], &[]);
    let args = |dry: bool| {
        let mut v = vec![
            "restore".to_string(),
            "--repo".into(),
            repo.clone(),
            "--brokers".into(),
            b.bootstrap(),
            "--topics".into(),
            "orders".into(),
            "--rename".into(),
            "orders=pm.copy".into(),
            "--partition-map".into(),
            "0=0,1=0,2=0".into(),
        ];
        if dry {
            v.push("--dry-run".into());
        }
        v
    };
    let dry = ok(&haven(
        &args(true).iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert!(
        dry.contains("pm.copy/0") && !dry.contains("pm.copy/1") && !dry.contains("pm.copy/2"),
        "{dry}"
    );
    let mut run = args(false);
    run.insert(0, "--json".into());
    let report: serde_json::Value = serde_json::from_str(&ok(&haven(
        &run.iter().map(String::as_str).collect::<Vec<_>>(),
    )))
    .unwrap();
    assert!(report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["target_partition"] == 0));
    let id = report["id"].as_str().unwrap();
    let target = b.read_partition("pm.copy", 0).unwrap();
    let source = b.read_partition("orders", 1).unwrap();
    let t: serde_json::Value = serde_json::from_str(&ok(&haven(&[
        "--json",
        "offsets",
        "translate",
        "--repo",
        &repo,
        "--restore",
        id,
        "--topic",
        "orders",
        "--partition",
        "1",
        "--offset",
        "7",
    ])))
    .unwrap();
    assert_eq!(t["target_partition"], 0, "{t}");
    let at = t["target_offset"].as_i64().unwrap();
    let landed = target.iter().find(|r| r.offset == at).unwrap();
    assert_eq!(landed.value, source[7].value, "{t}");
}

#[test]
fn selections_of_nothing_and_instants_out_of_range_are_usage_errors() {
    let b = Broker::start().unwrap();
    b.create_topic("orders", 2).unwrap();
    b.produce("orders", &edge_records(20, 2)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    backup_once(&b, &repo, "orders", &[], &[]);
    let bs = b.bootstrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "cat",
                "--repo",
                &repo,
                "--topic",
                "orders",
                "--partition",
                "99",
            ],
            "no partition 99",
        ),
        (
            vec![
                "cat", "--repo", &repo, "--topic", "orders", "--from", "10", "--to", "5",
            ],
            "empty window",
        ),
        (
            vec![
                "restore",
                "--repo",
                &repo,
                "--brokers",
                &bs,
                "--topics",
                "orders",
                "--offsets",
                "99=0..5",
                "--dry-run",
            ],
            "no partition 99",
        ),
        (
            vec![
                "restore",
                "--repo",
                &repo,
                "--brokers",
                &bs,
                "--topics",
                "orders",
                "--at",
                "9223372036854775807",
                "--dry-run",
            ],
            "out of range",
        ),
        (
            vec![
                "cat",
                "--repo",
                &repo,
                "--topic",
                "orders",
                "--from",
                "-999999999999d",
            ],
            "out of range",
        ),
        (
            vec![
                "restore",
                "--repo",
                &repo,
                "--brokers",
                "",
                "--topics",
                "orders",
            ],
            "--brokers \"\": empty",
        ),
    ];
    for (args, says) in cases {
        let t0 = Instant::now();
        let out = haven(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert!(t0.elapsed() < Duration::from_secs(5), "{args:?} at once");
    }
    // Relative times as the help writes them: `--from -15m`, not only `--from=-15m`.
    let out = haven(&[
        "cat", "--repo", &repo, "--topic", "orders", "--from", "-15m",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = haven(&[
        "impact",
        "--repo",
        &repo,
        "--brokers",
        &bs,
        "--service",
        "nope",
        "--restored-to",
        "-2h",
    ]);
    assert!(
        !stderr(&out).contains("unexpected argument"),
        "{}",
        stderr(&out)
    );
    let out = haven(&[
        "replay", "--repo", &repo, "--topics", "orders", "--from", "-15m", "--sink", "stdout",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// Runs haven with its stdout closed by the reader before it writes anything.
fn closed_stdout(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_haven"))
        .args(args)
        .env_remove("HAVEN_KEY")
        .env_remove("HAVEN_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: err.into_bytes(),
    }
}

#[test]
fn every_command_prints_json_that_parses_and_survives_a_closed_stdout() {
    let b = Broker::start().unwrap();
    b.create_topic("orders", 2).unwrap();
    b.create_topic("mirrored", 1).unwrap();
    b.produce("orders", &edge_records(40, 2)).unwrap();
    commit(&b, "billing", "orders", 0, 3);
    let eu = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = path(&dir.path().join("repo"));
    let bs = b.bootstrap();
    let es = eu.bootstrap();
    let restore_out: serde_json::Value = serde_json::from_str(&ok(&haven(&[
        "--json",
        "restore",
        "--repo",
        &{
            backup_once(&b, &repo, "orders", &["--group", "billing"], &[]);
            repo.clone()
        },
        "--brokers",
        &es,
        "--topics",
        "orders",
    ])))
    .unwrap();
    let restore_id = restore_out["id"].as_str().unwrap().to_string();
    let config = dir.path().join("haven.toml");
    std::fs::write(&config, format!("[clusters.us]\nbootstrap = \"{bs}\"\n")).unwrap();
    let cfg = path(&config);
    let commands: Vec<Vec<&str>> = vec![
        vec!["ls", "--repo", &repo],
        vec!["verify", "--repo", &repo],
        vec!["audit", "--repo", &repo],
        vec!["config", "example"],
        vec!["config", "check", &cfg],
        vec![
            "offsets",
            "translate",
            "--repo",
            &repo,
            "--restore",
            &restore_id,
            "--topic",
            "orders",
            "--partition",
            "0",
            "--offset",
            "3",
        ],
        vec![
            "backup",
            "--brokers",
            &bs,
            "--repo",
            &repo,
            "--topics",
            "orders",
            "--once",
        ],
        vec![
            "restore",
            "--repo",
            &repo,
            "--brokers",
            &es,
            "--topics",
            "orders",
            "--rename",
            "orders=o2",
            "--dry-run",
        ],
        vec![
            "mirror", "--from", &bs, "--to", &es, "--topics", "mirrored", "--once",
        ],
        vec![
            "mirror", "status", "--from", &bs, "--to", &es, "--topics", "mirrored",
        ],
        vec![
            "mirror",
            "translate",
            "--from",
            &bs,
            "--to",
            &es,
            "--topics",
            "mirrored",
            "--group",
            "billing",
        ],
        vec![
            "rewind",
            "--repo",
            &repo,
            "--brokers",
            &bs,
            "--group",
            "billing",
            "--to",
            "-1s",
            "--dry-run",
        ],
        // Errors are JSON too.
        vec!["failover", "status"],
        vec!["ls", "--repo", "/nonexistent/haven/repo"],
        vec!["cat", "--repo", &repo, "--topic", "absent"],
    ];
    for args in &commands {
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(args);
        let out = haven(&with_json);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            serde_json::from_str::<serde_json::Value>(&text).is_ok(),
            "{args:?} (exit {}): stdout is not one JSON document:\n{text}\nstderr: {}",
            code(&out),
            stderr(&out)
        );
        let out = closed_stdout(args);
        assert_ne!(code(&out), 101, "{args:?} panicked: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("panicked") && !stderr(&out).contains("Broken pipe"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // NDJSON commands: every line an event, the summary on stderr.
    for args in [
        vec!["--json", "cat", "--repo", &repo, "--topic", "orders"],
        vec![
            "--json", "replay", "--repo", &repo, "--topics", "orders", "--sink", "stdout",
        ],
    ] {
        let out = haven(&args);
        let text = ok(&out);
        assert_eq!(text.lines().count(), 40, "{args:?}: {text}");
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["offset"].is_i64(), "{args:?}: {l}");
        }
        let out = closed_stdout(&args);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    // Without a terminal no colour codes, and one error said once.
    let out = haven(&["-v", "cat", "--repo", &repo, "--topic", "absent"]);
    assert!(!stderr(&out).contains('\u{1b}'), "{:?}", stderr(&out));
    assert_eq!(
        stderr(&out).matches("is not in the repository").count(),
        1,
        "{}",
        stderr(&out)
    );
}

#[test]
fn exit_codes_messages_and_bounded_waits() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start().unwrap();
    b.create_topic("t", 1).unwrap();
    b.produce("t", &edge_records(10, 1)).unwrap();
    let repo = dir.path().join("repo");
    backup_once(&b, &path(&repo), "t", &[], &[]);

    // A damaged descriptor is damaged data (1), not bad usage.
    let broken = dir.path().join("broken");
    crate::backup::copy_dir(&repo, &broken);
    std::fs::write(broken.join("haven-repo.json"), b"{\"format\": ").unwrap();
    let out = haven(&["ls", "--repo", &path(&broken)]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("haven-repo.json"), "{}", stderr(&out));

    // verify covers audit/ and restores/ as well as the log.
    let audited = dir.path().join("audited");
    crate::backup::copy_dir(&repo, &audited);
    std::fs::create_dir_all(audited.join("audit")).unwrap();
    std::fs::write(
        audited.join("audit/0000000000001-deadbeef.json"),
        b"garbage",
    )
    .unwrap();
    let out = haven(&["verify", "--repo", &path(&audited)]);
    assert_eq!(code(&out), 1);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("audit/0000000000001-deadbeef.json"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // An unreachable Postgres sink is an operational failure (1).
    let port = testbed::free_port().unwrap();
    let sink = format!("postgres://haven@127.0.0.1:{port}/db?table=x");
    let out = haven(&[
        "replay",
        "--repo",
        &path(&repo),
        "--topics",
        "t",
        "--sink",
        &sink,
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));

    // A backup with a bad pattern or an unreachable broker creates no repository.
    let fresh = dir.path().join("fresh");
    let out = haven(&[
        "backup",
        "--brokers",
        &b.bootstrap(),
        "--repo",
        &path(&fresh),
        "--topics",
        "(",
        "--once",
    ]);
    assert_eq!(code(&out), 2);
    assert!(!fresh.exists(), "bad regex created the repository");
    let dead = format!("127.0.0.1:{}", testbed::free_port().unwrap());
    let t0 = Instant::now();
    let out = haven(&[
        "backup",
        "--brokers",
        &dead,
        "--repo",
        &path(&fresh),
        "--topics",
        "t",
        "--once",
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert!(!fresh.exists(), "unreachable broker created the repository");

    // mirror --once against an unreachable source gives up.
    let t0 = Instant::now();
    let out = haven(&[
        "mirror",
        "--from",
        &dead,
        "--to",
        &b.bootstrap(),
        "--topics",
        "t",
        "--once",
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());

    // S3: no credentials is said plainly; a server that never answers is bounded.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let accepted = std::thread::spawn(move || {
        let mut held = Vec::new();
        silent.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(40);
        while Instant::now() < until {
            if let Ok((s, _)) = silent.accept() {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let base = [
        ("AWS_ENDPOINT", endpoint.clone()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_REGION", "garage".to_string()),
    ];
    let mut no_creds = Command::new(env!("CARGO_BIN_EXE_haven"));
    no_creds
        .args(["ls", "--repo", "s3://bucket/prefix"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .envs(base.iter().map(|(k, v)| (k, v)));
    let out = no_creds.output().unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no S3 credentials") && stderr(&out).contains("AWS_ACCESS_KEY_ID"),
        "{}",
        stderr(&out)
    );
    let mut env: Vec<(&str, String)> = base.to_vec();
    env.push(("AWS_ACCESS_KEY_ID", "GK000000000000000000000000".into()));
    env.push(("AWS_SECRET_ACCESS_KEY", "0".repeat(64)));
    env.push(("HAVEN_STORAGE_TIMEOUT", "3s".into()));
    let t0 = Instant::now();
    let out = haven_env(&["ls", "--repo", "s3://bucket/prefix"], &env);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "waited {:?}",
        t0.elapsed()
    );
    assert!(
        stderr(&out).contains(&endpoint[7..]) || stderr(&out).contains("timed out"),
        "{}",
        stderr(&out)
    );
    drop(accepted);
}

#[test]
fn sigterm_while_the_broker_is_down_stops_a_backup_promptly() {
    let mut b = Broker::start().unwrap();
    b.create_topic("t", 2).unwrap();
    b.produce("t", &edge_records(20, 2)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_haven"))
        .args([
            "backup",
            "--brokers",
            &b.bootstrap(),
            "--repo",
            &path(&repo),
            "--topics",
            "t",
            "--flush-ms",
            "100",
            "--group-interval",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while log_objects(&repo) < 2 {
        assert!(Instant::now() < deadline, "the backup wrote nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    b.kill();
    // Let it reach its lag measures and group samples against the dead broker.
    std::thread::sleep(Duration::from_secs(4));
    let t0 = Instant::now();
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "still running {:?} after SIGTERM",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert_eq!(code(&haven(&["verify", "--repo", &path(&repo)])), 0);
}
