//! `haven drill run` on the real lab, shortened: the region-outage, switchover, partition,
//! Postgres-crash, broker-crash, earlier-database and backup drills must PASS, and their evidence must say
//! so, in JSON and in a page a browser shows.

use std::process::Command;

use serde_json::Value;

use crate::{code, haven, path};

/// A lab in the background, stopped whatever happens to the test.
struct LabDir(tempfile::TempDir);

impl LabDir {
    fn up() -> LabDir {
        let dir = tempfile::tempdir().unwrap();
        let out = haven(&[
            "lab",
            "up",
            "--dir",
            &path(dir.path()),
            "--lease-ttl-s",
            "3",
        ]);
        assert_eq!(code(&out), 0, "lab up: {}", crate::stderr(&out));
        LabDir(dir)
    }
    fn d(&self) -> String {
        path(self.0.path())
    }
}

impl Drop for LabDir {
    fn drop(&mut self) {
        let _ = haven(&["lab", "down", "--dir", &self.d()]);
    }
}

/// Runs a short drill; its JSON report and exit code.
fn drill(lab: &LabDir, scenario: &str, extra: &[&str]) -> (i32, Value) {
    drill_within(lab, scenario, extra, "30")
}

/// [`drill`] with an RTO objective of `rto_s` seconds.
fn drill_within(lab: &LabDir, scenario: &str, extra: &[&str], rto_s: &str) -> (i32, Value) {
    let d = lab.d();
    let mut args = vec![
        "--json",
        "drill",
        "run",
        scenario,
        "--lab",
        &d,
        "--warmup-s",
        "4",
        "--after-s",
        "3",
        "--rate",
        "2400",
        "--reads-per-write",
        "1",
        "--rto-s",
        rto_s,
    ];
    args.extend_from_slice(extra);
    let out = haven(&args);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill {scenario}: no JSON report ({e}): {}",
            crate::stderr(&out)
        )
    });
    (code(&out), report)
}

fn assert_pass(rc: i32, r: &Value) {
    assert_pass_with(rc, r, 9);
}

fn assert_pass_with(rc: i32, r: &Value, invariants: usize) {
    assert_eq!(r["verdict"], "PASS", "{r:#}");
    assert_eq!(rc, 0);
    assert!(r["not_measured"].as_array().unwrap().is_empty(), "{r:#}");
    let inv = r["invariants"].as_array().unwrap();
    assert_eq!(inv.len(), invariants, "{r:#}");
    assert!(inv.iter().all(|i| i["ok"] == Value::Bool(true)), "{r:#}");
    assert_eq!(r["measured"]["two_writable"], 0, "{r:#}");
    assert!(r["measured"]["samples"].as_u64().unwrap() > 20, "{r:#}");
}

#[test]
fn a_region_outage_drill_fails_over_automatically_and_passes_with_its_evidence() {
    let lab = LabDir::up();
    let (rc, r) = drill(&lab, "region-outage", &[]);
    assert_pass(rc, &r);
    let m = &r["measured"];
    assert_eq!(m["active_before"], "us");
    assert_ne!(r["operator"], "unknown", "{r:#}");
    assert_eq!(m["active_after"], "eu");
    let rto = m["rto_s"].as_f64().unwrap();
    assert!(rto > 2.0 && rto <= 30.0, "RTO {rto}");
    assert!(m["lost_seconds"].as_f64().unwrap() <= 1.0, "{m}");
    // Latency per phase, each transfer counted once, in the phase it was answered in.
    let phases = m["latency"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["before the fault", "fault to recovery", "after recovery"],
        "{m}"
    );
    let counted: u64 = phases
        .iter()
        .map(|p| p["transfers"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, m["acknowledged"].as_u64().unwrap(), "{m}");
    assert!(phases[0]["transfers"].as_u64().unwrap() > 0, "{m}");
    assert!(phases[2]["transfers"].as_u64().unwrap() > 0, "{m}");

    // The evidence: create-only files, listed in the history.
    let base = lab.0.path().join("drills").join(r["id"].as_str().unwrap());
    let saved: Value =
        serde_json::from_slice(&std::fs::read(base.with_extension("json")).unwrap()).unwrap();
    assert_eq!(saved, r);
    let out = haven(&["--json", "drill", "history", "--lab", &lab.d()]);
    let history: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history[0]["id"], r["id"]);

    // The page, as a browser shows it: its verdict first.
    let chromium = testbed::find_tool("chromium", "scripts/setup.sh (Debian's chromium)", &[])
        .expect("chromium");
    let html = base.with_extension("html");
    let shown = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&shown.stdout);
    assert!(
        dom.contains("<span class=\"verdict\" id=\"verdict\">PASS</span>"),
        "the page does not show its verdict: {}",
        &dom[..dom.len().min(2000)]
    );
    assert!(dom.contains("<svg"), "no chart");
    assert!(
        dom.contains("<table id=\"latency\">") && dom.contains("fault to recovery"),
        "no latency per phase"
    );

    // A second outage drill is refused: EU is active now.
    let out = haven(&["drill", "run", "region-outage", "--lab", &lab.d()]);
    assert_eq!(code(&out), 1);
    assert!(
        crate::stderr(&out).contains("needs US active"),
        "{}",
        crate::stderr(&out)
    );
}

#[test]
fn a_switchover_drill_there_and_back_loses_nothing() {
    let lab = LabDir::up();
    let (rc, r) = drill(&lab, "switchover", &[]);
    assert_pass(rc, &r);
    assert_eq!(r["measured"]["lost"], 0);
    assert_eq!(r["measured"]["active_after"], "us");
    assert_eq!(r["objectives"]["max_lost"], 0);
    // The failback drill runs by hand and in `haven bench drill --scenarios failback`, not
    // here: in two of its last three runs in this suite (a clean-clone CI run among them)
    // US's tansu stopped answering for minutes after the rebuild's DeleteTopics (tansu 0.6
    // deletes every topic on it) and the reseed could not go on. Its operations are tested
    // in `failback::failback_captures_reconciles_and_applies_once`.
}

/// A Postgres crash and a broker crash in US, each recovered in place on one lab: US
/// stays active, transfers resume, nothing acknowledged is lost, every event arrives once.
/// Then the downstream service's database restored to an earlier point, recovered by
/// `haven recover` (rewind, read again) until it equals its events.
#[test]
fn crashes_recovered_in_place_lose_nothing_and_fail_nothing_over() {
    let lab = LabDir::up();
    for scenario in ["pg-crash", "broker-crash"] {
        let (rc, r) = drill(&lab, scenario, &["--down-s", "3"]);
        // W1-W9, and A1: US stays the active region.
        assert_pass_with(rc, &r, 10);
        let m = &r["measured"];
        assert_eq!(m["lost"], 0, "{scenario}: {m}");
        assert_eq!(r["objectives"]["max_lost"], 0, "{scenario}");
        assert_eq!(m["active_after"], "us", "{scenario}: {m}");
        let rto = m["rto_s"].as_f64().unwrap();
        if scenario == "pg-crash" {
            // Down for 3 s: transfers resume only after the restart.
            assert!((3.0..=30.0).contains(&rto), "{scenario}: RTO {rto}");
        } else {
            // Transfers never depended on the broker: one is taken while it is down.
            assert!(rto < 3.0, "{scenario}: RTO {rto}");
        }
        let steps = timeline(&r);
        assert!(
            steps.iter().any(|s| s.starts_with("server started again")),
            "{scenario}: {steps:?}"
        );
    }
    earlier_database(&lab);
}

/// The earlier-database drill on a lab whose topic holds the crash drills' transfers.
fn earlier_database(lab: &LabDir) {
    // Against the scenario's own RTO objective (60 s, the target): its RTO is the
    // restore to an exact database, through a plan, a rewind and a re-read, and on this
    // 2-core machine beside the other tests it took 31.7 s in a clean-clone CI run
    // (17.8-18.9 s alone). The other assertions are unchanged.
    let (rc, r) = drill_within(lab, "earlier-database", &["--down-s", "4"], "60");
    // W1-W9, A1 (US stays active), E1 (the restore's damage seen), E2 (equal afterwards).
    assert_pass_with(rc, &r, 12);
    let e1 = invariant(&r, "E1");
    let missing: u64 = e1["detail"]
        .as_str()
        .and_then(|d| d.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(missing > 0, "the restore lost nothing to repair: {e1}");
    let e2 = invariant(&r, "E2");
    assert!(
        e2["detail"].as_str().unwrap().contains("applied once each"),
        "{e2}"
    );
    let m = &r["measured"];
    assert_eq!(m["lost"], 0, "{m}");
    assert_eq!(m["active_after"], "us", "{m}");
    let steps = timeline(&r);
    for step in [
        "impact seen",
        "recovery planned",
        "recovery applied",
        "service read again",
    ] {
        assert!(
            steps.iter().any(|s| s.starts_with(step)),
            "{step}: {steps:?}"
        );
    }
}

#[test]
fn a_partition_drill_never_has_two_writable_regions() {
    let lab = LabDir::up();
    let (rc, r) = drill(&lab, "partition", &["--partition-s", "8"]);
    // W1-W9, and F1: every acknowledged transfer EU lost is in the failback capture.
    assert_pass_with(rc, &r, 10);
    let f1 = r["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "F1")
        .unwrap_or_else(|| panic!("no F1: {r:#}"));
    let lost = r["measured"]["lost"].as_u64().unwrap();
    assert!(
        f1["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{lost} lost, ")),
        "{f1}"
    );
    assert_eq!(r["measured"]["active_after"], "eu");
    // The self-fencing window at a 3 s lease: 0.7 x 3 + 0.5 s.
    let rpo = r["objectives"]["rpo_s"].as_f64().unwrap();
    assert!((rpo - 2.6).abs() < 1e-9, "{rpo}");
}

fn invariant<'a>(r: &'a Value, id: &str) -> &'a Value {
    r["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id)
        .unwrap_or_else(|| panic!("no {id}: {r:#}"))
}

/// The backup drills on one lab, under load, US active throughout: a corrupted segment
/// that verify names, a restore refuses, `--skip-damaged` works around, and that is
/// repaired; a restore into a segregated cluster reconciled record by record and against
/// the database; an object-store outage the backup holds on through (its RPO alarm
/// fired, nothing lost).
#[test]
fn backup_drills_reconcile_hold_on_through_an_outage_and_find_the_damage() {
    let lab = LabDir::up();
    // These RTOs are restores by the debug build beside the rest of the suite (77.4 s in
    // a full run, against 20-27 s for the release build at the seed's load in `haven
    // bench drill`, which holds them to the 60 s): here the objective only bounds
    // a stuck drill, and every invariant must still hold.
    let drill =
        |lab: &LabDir, scenario: &str, extra: &[&str]| drill_within(lab, scenario, extra, "180");

    // The outage first, on a fresh lab; down 8 s, four times the lab's storage timeout.
    let (rc, r) = drill(&lab, "object-store-outage", &["--down-s", "8"]);
    // W1-W9, B1 (held on), B2 (RPO alarm), B3/B4 (nothing lost, reconciled), A1.
    assert_pass_with(rc, &r, 14);
    assert_eq!(r["measured"]["lost"], 0);
    let rto = r["measured"]["rto_s"].as_f64().unwrap();
    assert!(
        rto >= 8.0,
        "caught up before the store came back? RTO {rto}"
    );
    assert!(
        invariant(&r, "B1")["detail"]
            .as_str()
            .unwrap()
            .contains("samples answered"),
        "{r:#}"
    );

    // Then the restores, while the backup is small: the corrupted backup's RTO includes
    // three reads of it (verify, the refused restore's check, the restore around it).
    let (rc, r) = drill(&lab, "corrupted-backup", &[]);
    // W1-W9, C1 (verify names it), C2 (refused, nothing written), C3/C4 (worked around,
    // reconciled), C5 (repaired), A1.
    assert_pass_with(rc, &r, 15);
    let c2 = invariant(&r, "C2")["detail"].as_str().unwrap().to_string();
    assert!(c2.contains("0 records written"), "{c2}");
    let c3 = invariant(&r, "C3")["detail"].as_str().unwrap().to_string();
    assert!(c3.contains("left out as damaged"), "{c3}");

    let (rc, r) = drill(&lab, "segregated-restore", &[]);
    // W1-W9, R1 (record by record), R2 (against the database), A1.
    assert_pass_with(rc, &r, 12);
    let restored: u64 = invariant(&r, "R1")["detail"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(restored > 50, "{r:#}");
}

/// `haven drill schedule`: a restore test of a real backup into a segregated broker,
/// reconciled record by record (PASS, evidence stored, the schedule shows it ran; its
/// topics kept with `keep_topics`, deleted by default); a segment damaged at rest fails
/// it naming the object with nothing restored; a target that is a region's cluster is
/// refused when the config is read.
#[test]
fn a_scheduled_restore_test_reconciles_a_segregated_restore_and_finds_damage() {
    let (src, seg, dir, repo) = backed_up_payments(120, 2);
    let cfg = dir.path().join("haven.toml");
    let config = |target: &str, keep: bool| {
        format!(
            "[clusters.us]\nbootstrap = \"{}\"\n[clusters.scratch]\nbootstrap = \"{}\"\n\
             [repositories.main]\nurl = \"{}\"\n[regions.us]\ncluster = \"us\"\n\
             [drills.nightly]\nregion = \"us\"\nrepository = \"main\"\nsource = \"us\"\n\
             target = \"{target}\"\ntopics = \"payments\"\nevery_s = 3600\nkeep_topics = {keep}\n",
            src.bootstrap(),
            seg.bootstrap(),
            path(&repo)
        )
    };
    std::fs::write(&cfg, config("scratch", true)).unwrap();
    let c = path(&cfg);
    let schedule = |extra: &[&str]| {
        let mut args = vec!["--config", &c, "--json", "drill", "schedule"];
        args.extend_from_slice(extra);
        let out = haven(&args);
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {}", crate::stderr(&out)));
        (code(&out), v)
    };

    let (rc, list) = schedule(&[]);
    assert_eq!(rc, 0);
    assert_eq!(list[0]["name"], "nightly");
    assert!(list[0]["last"].is_null(), "{list}");

    let (rc, r) = schedule(&["--run", "nightly"]);
    assert_eq!(r["verdict"], "PASS", "{r:#}");
    assert_eq!(rc, 0);
    assert!(r["not_measured"].as_array().unwrap().is_empty(), "{r:#}");
    let r1 = invariant(&r, "R1")["detail"].as_str().unwrap().to_string();
    assert!(
        r1.starts_with("120 records restored into 2 partitions, 120 compared"),
        "{r1}"
    );
    assert_eq!(invariant(&r, "R0")["ok"], true);
    // Independently of Haven's reconciliation: the segregated copy, record by record.
    let restored = topics_of(&seg)
        .into_iter()
        .find(|t| t.ends_with(".payments"))
        .expect("a restored topic in the segregated cluster");
    for p in 0..2 {
        let (a, b) = (
            src.read_partition("payments", p).unwrap(),
            seg.read_partition(&restored, p).unwrap(),
        );
        assert_eq!(a.len(), 60);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (&x.key, &x.value, &x.headers, x.timestamp),
                (&y.key, &y.value, &y.headers, y.timestamp)
            );
        }
        assert_eq!(a.len(), b.len());
    }
    let (_, list) = schedule(&[]);
    assert_eq!(list[0]["last"]["verdict"], "PASS", "{list}");
    assert_ne!(list[0]["next_due"], Value::Null);

    // By default a run's topics are deleted once reconciled. (tansu 0.6 deletes every
    // topic on a DeleteTopics request, the first run's kept one too: the timeline must
    // say so, since Haven did not ask for it.)
    std::fs::write(&cfg, config("scratch", false)).unwrap();
    let kept = topics_of(&seg);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (rc, r) = schedule(&["--run", "nightly"]);
    assert_eq!((rc, &r["verdict"]), (0, &Value::from("PASS")), "{r:#}");
    let now = topics_of(&seg);
    assert!(
        now.iter().all(|t| kept.contains(t)),
        "the second run's topics are gone: {now:?}"
    );
    let steps = r["timeline"].to_string();
    assert!(
        steps.contains("restored topics deleted from scratch"),
        "{steps}"
    );
    let vanished: Vec<&String> = kept.iter().filter(|t| !now.contains(t)).collect();
    if !vanished.is_empty() {
        assert!(
            steps.contains("which Haven did not ask for") && steps.contains(vanished[0].as_str()),
            "{steps}"
        );
    }

    // One byte flipped in a segment: FAIL, the object named, nothing restored.
    let seg_file = std::fs::read_dir(repo.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&seg_file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&seg_file, bytes).unwrap();
    let before = topics_of(&seg).len();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (rc, r) = schedule(&["--run", "nightly"]);
    assert_eq!(r["verdict"], "FAIL", "{r:#}");
    assert_eq!(rc, 1);
    let r0 = invariant(&r, "R0");
    assert_eq!(r0["ok"], false, "{r0}");
    let name = seg_file.file_name().unwrap().to_string_lossy().to_string();
    assert!(r0["detail"].as_str().unwrap().contains(&name), "{r0}");
    assert_eq!(topics_of(&seg).len(), before, "nothing restored");

    // A target that is a region's cluster: refused before anything runs.
    std::fs::write(&cfg, config("us", false)).unwrap();
    let out = haven(&["--config", &c, "drill", "schedule"]);
    assert_eq!(code(&out), 2, "{}", crate::stderr(&out));
    assert!(
        crate::stderr(&out).contains("segregated"),
        "{}",
        crate::stderr(&out)
    );
}

fn topics_of(b: &testbed::Broker) -> Vec<String> {
    let bootstrap = b.bootstrap();
    let i = haven_kafka::ClusterConfig::new(&bootstrap)
        .inspector("test")
        .unwrap();
    haven_kafka::list_topics(&i, &bootstrap, std::time::Duration::from_secs(10))
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect()
}

/// The agent runs a scheduled restore test of its region by itself when it falls due (a
/// test never run is due at once): a report appears in the repository, PASS, without
/// anyone running `drill schedule --run`. A test of another region is left alone.
#[test]
fn the_agent_runs_a_restore_test_of_its_region_when_it_falls_due() {
    let (src, seg, dir, repo) = backed_up_payments(40, 1);
    let etcd = testbed::EtcdCluster::start(3).unwrap();
    let cfg = dir.path().join("haven.toml");
    std::fs::write(
        &cfg,
        format!(
            "[clusters.us]\nbootstrap = \"{}\"\n[clusters.eu]\nbootstrap = \"127.0.0.1:1\"\n\
             [clusters.scratch]\nbootstrap = \"{}\"\n\
             [repositories.main]\nurl = \"{}\"\n\
             [regions.us]\ncluster = \"us\"\n[regions.eu]\ncluster = \"eu\"\n\
             [coordination]\nendpoints = {:?}\nlease_ttl_s = 3\n\
             [failover]\nprimary = \"us\"\nstandby = \"eu\"\nmode = \"manual\"\n\
             [drills.nightly]\nregion = \"us\"\nrepository = \"main\"\nsource = \"us\"\n\
             target = \"scratch\"\ntopics = \"payments\"\nevery_s = 3600\n\
             [drills.eu-nightly]\nregion = \"eu\"\nrepository = \"main\"\nsource = \"us\"\n\
             target = \"scratch\"\ntopics = \"payments\"\nevery_s = 3600\n",
            src.bootstrap(),
            seg.bootstrap(),
            path(&repo),
            etcd.endpoints(),
        ),
    )
    .unwrap();
    let c = path(&cfg);
    let port = testbed::free_port().unwrap();
    let mut agent = crate::lab::spawn_agent(&c, "us", port, &dir.path().join("agent-us"));
    let last = |name: &str| -> Value {
        let out = haven(&["--config", &c, "--json", "drill", "schedule"]);
        let list: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {}", crate::stderr(&out)));
        list.as_array()
            .unwrap_or_else(|| panic!("not a list: {list}"))
            .iter()
            .find(|d| d["name"] == name)
            .map(|d| d["last"].clone())
            .unwrap_or(Value::Null)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut seen = Value::Null;
    while std::time::Instant::now() < deadline {
        seen = last("nightly");
        if !seen.is_null() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let log = std::fs::read_to_string(dir.path().join("agent-us.log")).unwrap_or_default();
    assert_eq!(seen["verdict"], "PASS", "{seen:#}\nagent log:\n{log}");
    assert!(seen["id"].as_str().unwrap().contains("nightly"), "{seen:#}");
    // EU's test is EU's agent's to run.
    assert!(
        last("eu-nightly").is_null(),
        "US's agent ran EU's restore test"
    );
}

/// A source broker with `n` records in `payments` (`partitions` of them) backed up into
/// DIR/repo, and a segregated broker to restore into: (source, segregated, DIR, repo).
fn backed_up_payments(
    n: usize,
    partitions: i32,
) -> (
    testbed::Broker,
    testbed::Broker,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let (src, seg) = (
        testbed::Broker::start().unwrap(),
        testbed::Broker::start().unwrap(),
    );
    src.create_topic("payments", partitions).unwrap();
    src.produce("payments", &crate::backup::edge_records(n, partitions))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    crate::backup_once(
        &src,
        &path(&repo),
        "payments",
        &["--group-interval", "0"],
        &[],
    );
    (src, seg, dir, repo)
}

/// What each step of a report's timeline says.
fn timeline(r: &Value) -> Vec<&str> {
    r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["what"].as_str().unwrap())
        .collect()
}
