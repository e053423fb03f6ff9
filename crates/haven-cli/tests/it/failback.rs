//! Failback on the real lab: US writes that never reached EU (Postgres transactions past
//! a cut replication link, Kafka records past a stopped mirror), then US lost at once
//! (agent and broker killed -9, Postgres crashed), EU failing over on its own and taking
//! writes, one row and one key changed on both sides; then US restarted, fenced. The
//! capture must hold exactly what the test wrote to US after the cut and nothing else,
//! the verdicts must find the two conflicts, `--apply` must write the rest to EU once
//! (checked row by row, and record by record with an independent Kafka client), and a
//! second `--apply` must be refused with EU unchanged. The re-seed must leave US's rows
//! equal to EU's and US's topic equal to EU's record by record at the same offsets
//! (records that first came from US included), with the synced group at EU's commit;
//! after the switchover back, US's new records reach EU once and a US commit inside the
//! rebuilt range translates exactly.

use std::time::Duration;

use serde_json::Value;
use testbed::Rec;

use crate::lab::{rt, until, writes_directly, Lab, LabOptions};
use crate::{code, haven};

fn run(lab: &Lab, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--config", &lab.cfg];
    all.extend_from_slice(args);
    haven(&all)
}

fn json(lab: &Lab, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run(lab, &all);
    assert_eq!(code(&out), 0, "{args:?}: {}", crate::stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs a command that must be refused as bad input (exit 2) with `why` in its message.
fn refused(lab: &Lab, args: &[&str], why: &str) {
    let out = run(lab, args);
    let err = crate::stderr(&out);
    assert_eq!(code(&out), 2, "{args:?}: {err}");
    assert!(err.contains(why), "{args:?}: {err}");
}

fn pg_rows(pg: &testbed::Postgres) -> Vec<(i64, String)> {
    rt().block_on(async {
        let c = pg.connect().await.unwrap();
        c.query("SELECT id, owner FROM accounts ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    })
}

fn us_exec(lab: &Lab, sql: &str) {
    rt().block_on(async {
        let c = lab.us.connect().await.unwrap();
        c.batch_execute(&format!("SET synchronous_commit = on; {sql}"))
            .await
            .unwrap();
    })
}

const TOPIC: &str = "ledger.transfers";
const GROUP: &str = "billing";

/// Commits `GROUP` at `offsets` (partition, offset) on a cluster.
fn commit(bootstrap: &str, offsets: &[(i32, i64)]) {
    let c = haven_kafka::ClusterConfig::new(bootstrap)
        .inspector(GROUP)
        .unwrap();
    let moves: Vec<(String, i32, i64)> = offsets
        .iter()
        .map(|(p, o)| (TOPIC.to_string(), *p, *o))
        .collect();
    haven_kafka::commit_as(&c, &moves).unwrap();
}

/// `GROUP`'s commit on a partition of a cluster (None: none).
fn committed(bootstrap: &str, partition: i32) -> Option<i64> {
    let c = haven_kafka::ClusterConfig::new(bootstrap)
        .inspector(GROUP)
        .ok()?;
    haven_kafka::committed(
        &c,
        &[(TOPIC.to_string(), partition)],
        Duration::from_secs(5),
    )
    .ok()?
    .into_iter()
    .next()
    .map(|(_, _, o)| o)
}

/// A partition as an independent client reads it: (offset, key, value, timestamp, the
/// record's own headers), Haven's mirror headers left out.
type Shown = (
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    i64,
    Vec<(String, Option<Vec<u8>>)>,
);

fn shown(bootstrap: &str, partition: i32) -> Vec<Shown> {
    testbed::independent_read(bootstrap, TOPIC, partition)
        .unwrap()
        .into_iter()
        .map(|m| {
            let own = m
                .headers
                .into_iter()
                .filter(|(n, _)| n != "haven-mirror-source" && n != "haven-origin")
                .collect();
            (m.offset, m.key, m.value, m.timestamp, own)
        })
        .collect()
}

#[test]
fn failback_captures_reconciles_and_applies_once() {
    let mut o = LabOptions::new(env!("CARGO_BIN_EXE_haven"));
    o.mode = "automatic".into();
    o.kafka = true;
    o.mirror_groups = vec![GROUP.into()];
    let mut lab = Lab::start(&o).expect("start the lab");
    lab.wait_us_active(Duration::from_secs(30)).unwrap();
    std::fs::write(
        &lab.cfg,
        std::fs::read_to_string(&lab.cfg).unwrap()
            + "\n[failback]\ntables = { \"public.accounts\" = \"reapply-if-untouched\" }\n\
               topics = { \"ledger\\\\..*\" = \"reapply-if-untouched\" }\n\
               money = [\"public.accounts.id\"]\n",
    )
    .unwrap();

    // Replicated and mirrored: 10 rows, 8 records (2 per partition).
    us_exec(
        &lab,
        "INSERT INTO accounts (owner) SELECT 'o' || g FROM generate_series(1, 10) g",
    );
    let first: std::collections::HashMap<String, i64> = pg_rows(&lab.us)
        .into_iter()
        .map(|(id, owner)| (owner, id))
        .collect();
    let k = lab.kafka.as_ref().unwrap();
    let shared: Vec<Rec> = (0..8)
        .map(|i| Rec::kv(&format!("k{i}"), &format!("v{i}")).to_partition(i % 4))
        .collect();
    k.us.produce(TOPIC, &shared).unwrap();
    until(
        "EU has the rows and the records",
        Duration::from_secs(30),
        || {
            pg_rows(&lab.eu).len() == 10
                && (0..4).all(|p| k.eu.high_watermark(TOPIC, p).unwrap_or(0) == 2)
        },
    );

    // The link to EU goes, and the mirror stops: from here on US writes alone.
    lab.replication.set_down(true);
    let k = lab.kafka.as_mut().unwrap();
    let us_to_eu = k.mirrors.iter_mut().find(|m| m.job == "us-to-eu").unwrap();
    let mut child = us_to_eu.child.take().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    us_exec(
        &lab,
        "INSERT INTO accounts (owner) SELECT 'd' || g FROM generate_series(1, 5) g",
    );
    us_exec(
        &lab,
        "UPDATE accounts SET owner = 'us-1' WHERE owner = 'o1'",
    );
    us_exec(
        &lab,
        "UPDATE accounts SET owner = 'us-2' WHERE owner = 'o2'",
    );
    us_exec(&lab, "DELETE FROM accounts WHERE owner = 'o3'");
    let ids: std::collections::HashMap<String, i64> = pg_rows(&lab.us)
        .into_iter()
        .map(|(id, owner)| (owner, id))
        .collect();
    let k = lab.kafka.as_ref().unwrap();
    let divergent: Vec<Rec> = (0..6)
        .map(|i| {
            Rec::kv(&format!("d{i}"), &format!("us-only-{i}"))
                .to_partition(i % 4)
                .header("trace", Some(b"t"))
        })
        .collect();
    let landed = k.us.produce(TOPIC, &divergent).unwrap();
    // A consumer on US read all of partition 0 (4 records) before US was lost.
    commit(&k.us.bootstrap(), &[(0, 4)]);

    // US is lost; EU takes over by itself.
    lab.inject(&haven_lab::Fault::RegionDown("us".into()))
        .unwrap();
    until("EU takes writes", Duration::from_secs(60), || {
        rt().block_on(haven_lab::write_via_route(lab.write_port())) == Some(lab.eu.port())
    });
    let eu_agent = lab.agent_port("eu").unwrap();
    until(
        "EU's agent claims the lease",
        Duration::from_secs(30),
        || haven_lab::lease_status(eu_agent) == Some(200),
    );
    // EU writes: the row US also changed, a new row, and a key US also wrote.
    rt().block_on(async {
        let c = lab.eu.connect().await.unwrap();
        c.batch_execute(
            "UPDATE accounts SET owner = 'eu-2' WHERE owner = 'o2';
             INSERT INTO accounts (owner) VALUES ('eu-new');",
        )
        .await
        .unwrap();
    });
    let k = lab.kafka.as_ref().unwrap();
    k.eu.produce(TOPIC, &[Rec::kv("d4", "eu-wrote-d4").to_partition(0)])
        .unwrap();
    // The consumer, now on EU, read EU's partition 0 (3 records).
    commit(&k.eu.bootstrap(), &[(0, 3)]);

    // US comes back fenced: its agent sees the newer epoch.
    lab.heal().unwrap();
    // The reverse mirror (EU -> US) starts now that US is not active: what it copies is
    // EU's, not divergence, and the capture must leave it out.
    lab.keep_mirrors();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !rt().block_on(writes_directly(lab.us.port())),
        "the old primary must stay fenced"
    );
    let st = json(&lab, &["failback"]);
    assert_eq!(
        (st["region"].as_str(), st["stage"].as_str()),
        (Some("us"), Some("capture")),
        "{st:#}"
    );

    // Refused while it makes no sense: EU is active, so "fail back eu" is bad input.
    refused(
        &lab,
        &["failback", "capture", "--region", "eu", "--repo", "lab"],
        "eu still holds the lease",
    );

    // The capture: exactly the four transactions and six records US wrote alone.
    let cap = json(
        &lab,
        &["failback", "capture", "--region", "us", "--repo", "lab"],
    );
    let c = &cap["capture"];
    let txns = c["databases"][0]["divergence"]["transactions"]
        .as_array()
        .unwrap();
    let shape: Vec<(String, usize)> = txns
        .iter()
        .map(|t| {
            (
                t["changes"][0]["op"].as_str().unwrap().to_string(),
                t["changes"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            ("insert".into(), 5),
            ("update".into(), 1),
            ("update".into(), 1),
            ("delete".into(), 1)
        ],
        "{c:#}"
    );
    let inserted: Vec<String> = txns[0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ch| ch["new"][1]["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(inserted, ["d1", "d2", "d3", "d4", "d5"]);
    // The delete names the row by its key (the table's replica identity is the default).
    assert_eq!(
        txns[3]["changes"][0]["old"][0]["value"].as_str(),
        Some(first["o3"].to_string().as_str())
    );
    let mut captured: Vec<(i32, i64, String, String)> = vec![];
    for p in c["kafka"][0]["partitions"].as_array().unwrap() {
        for r in p["records"].as_array().unwrap() {
            captured.push((
                p["partition"].as_i64().unwrap() as i32,
                r["offset"].as_i64().unwrap(),
                r["key"].as_str().unwrap().to_string(),
                r["value"].as_str().unwrap().to_string(),
            ));
        }
    }
    captured.sort();
    let mut expected: Vec<(i32, i64, String, String)> = landed
        .iter()
        .zip(&divergent)
        .map(|((p, off), r)| {
            (
                *p,
                *off,
                String::from_utf8(r.key.clone().unwrap()).unwrap(),
                String::from_utf8(r.value.clone().unwrap()).unwrap(),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(captured, expected);
    assert_eq!(c["summary"]["transactions"], 4);
    // The summed column: the inserted rows' ids, minus the deleted row's.
    let net: i64 = ["d1", "d2", "d3", "d4", "d5"]
        .iter()
        .map(|d| ids[*d])
        .sum::<i64>()
        - first["o3"];
    assert_eq!(
        c["summary"]["money"]["public.accounts.id"],
        net.to_string(),
        "{:#}",
        c["summary"]
    );
    assert_eq!(c["summary"]["records"], 6);

    // Verdicts: the row and the key both sides changed are conflicts.
    let dry = json(&lab, &["failback", "reconcile", "--repo", "lab"]);
    let r = &dry["report"];
    let verdicts: Vec<&str> = r["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        ["reappliable", "reappliable", "conflict", "reappliable"],
        "{r:#}"
    );
    let conflicts: Vec<&str> = r["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["verdict"] == "conflict")
        .map(|x| x["key"].as_str().unwrap())
        .collect();
    assert_eq!(conflicts, ["d4"], "{r:#}");
    assert_eq!(r["outcomes"]["would-apply"], 8, "{r:#}");
    assert_eq!(r["outcomes"]["review"], 2, "{r:#}");
    // The same for a person: counts, and what to review with the reason.
    let out = run(&lab, &["failback", "reconcile", "--repo", "lab"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("8 re-appliable, 2 conflicts")
            && text.contains("the new primary wrote this key since the cut"),
        "{text}"
    );
    let eu_before = pg_rows(&lab.eu);
    assert!(
        eu_before.iter().all(|(_, o)| !o.starts_with('d')),
        "a dry run writes nothing"
    );

    // Applied: EU gets the rest, once.
    let applied = json(&lab, &["failback", "reconcile", "--repo", "lab", "--apply"]);
    assert_eq!(applied["report"]["outcomes"]["applied"], 8, "{applied:#}");
    let owners = |rows: &[(i64, String)]| -> Vec<String> {
        let mut o: Vec<String> = rows.iter().map(|(_, o)| o.clone()).collect();
        o.sort();
        o
    };
    let eu_after = pg_rows(&lab.eu);
    let mut want: Vec<String> = ["us-1", "eu-2", "eu-new", "d1", "d2", "d3", "d4", "d5"]
        .iter()
        .map(|s| s.to_string())
        .chain((4..=10).map(|i| format!("o{i}")))
        .collect();
    want.sort();
    assert_eq!(owners(&eu_after), want);
    // Inserted rows keep US's ids.
    for d in ["d1", "d5"] {
        assert!(eu_after.contains(&(ids[d], d.to_string())), "{eu_after:?}");
    }
    let k = lab.kafka.as_ref().unwrap();
    let mut reconciled = vec![];
    for p in 0..4 {
        for m in testbed::independent_read(&k.eu.bootstrap(), TOPIC, p).unwrap() {
            let h = m
                .headers
                .iter()
                .find(|(n, _)| n == "haven-reconciled")
                .and_then(|(_, v)| v.clone());
            if let Some(h) = h {
                assert!(m.headers.iter().any(|(n, _)| n == "trace"), "{m:?}");
                reconciled.push((
                    String::from_utf8(m.key.unwrap()).unwrap(),
                    String::from_utf8(m.value.unwrap()).unwrap(),
                    String::from_utf8(h).unwrap(),
                ));
            }
        }
    }
    reconciled.sort();
    let want: Vec<(String, String, String)> = expected
        .iter()
        .filter(|(_, _, k, _)| k != "d4")
        .map(|(p, off, k, v)| (k.clone(), v.clone(), format!("us/{TOPIC}/{p}/{off}")))
        .collect();
    let mut want = want;
    want.sort();
    assert_eq!(reconciled, want);
    let highs: Vec<i64> = (0..4)
        .map(|p| k.eu.high_watermark(TOPIC, p).unwrap())
        .collect();

    // Again: refused, nothing changes; the dry run now says applied earlier.
    refused(
        &lab,
        &["failback", "reconcile", "--repo", "lab", "--apply"],
        "already applied",
    );
    let again = json(&lab, &["failback", "reconcile", "--repo", "lab"]);
    assert_eq!(
        again["report"]["outcomes"]["applied-earlier"], 8,
        "{again:#}"
    );
    assert_eq!(pg_rows(&lab.eu), eu_after);
    let k = lab.kafka.as_ref().unwrap();
    let highs_again: Vec<i64> = (0..4)
        .map(|p| k.eu.high_watermark(TOPIC, p).unwrap())
        .collect();
    assert_eq!(highs_again, highs);
    let st = json(&lab, &["failback", "--repo", "lab"]);
    assert_eq!(st["stage"], "reseed", "{st:#}");

    // Re-seeded: US's tables are EU's again, row by row, and follow EU.
    let rs = json(
        &lab,
        &["failback", "reseed", "--region", "us", "--repo", "lab"],
    );
    assert_eq!(rs["databases"][0]["slot_dropped"], true, "{rs:#}");
    assert_eq!(pg_rows(&lab.us), pg_rows(&lab.eu));
    // US's topic is EU's, record by record at the same offsets (kafka-python): the 8
    // records that first came from US are back, the 6 US wrote alone are gone (the
    // capture holds them, and 5 came back through the reconciliation).
    assert_eq!(rs["topics"][0]["requested"], true, "{rs:#}");
    let k = lab.kafka.as_ref().unwrap();
    let eu_records: Vec<Vec<Shown>> = (0..4).map(|p| shown(&k.eu.bootstrap(), p)).collect();
    let us_records: Vec<Vec<Shown>> = (0..4).map(|p| shown(&k.us.bootstrap(), p)).collect();
    assert_eq!(
        eu_records.iter().map(Vec::len).sum::<usize>(),
        14,
        "{eu_records:?}"
    );
    assert_eq!(us_records, eu_records);
    let rebuilt: i64 = rs["topics"][0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["records"].as_i64().unwrap())
        .sum();
    assert_eq!(rebuilt, 14, "{rs:#}");
    // The synced group is where it is on EU, not where it was on the old topic.
    until(
        "the group's commit translated onto the rebuilt topic",
        Duration::from_secs(30),
        || committed(&k.us.bootstrap(), 0) == Some(3),
    );
    let again = json(
        &lab,
        &["failback", "reseed", "--region", "us", "--repo", "lab"],
    );
    assert_eq!(again["databases"][0]["slot_dropped"], false, "{again:#}");
    assert_eq!(again["topics"][0]["requested"], false, "{again:#}");
    assert_eq!(
        (0..4)
            .map(|p| shown(&k.us.bootstrap(), p))
            .collect::<Vec<_>>(),
        eu_records,
        "a second re-seed changes nothing"
    );
    assert_eq!(
        again["databases"][0]["emptied"],
        serde_json::json!([]),
        "{again:#}"
    );
    // For a person: each database a step, then where it stands.
    let out = run(
        &lab,
        &["failback", "reseed", "--region", "us", "--repo", "lab"],
    );
    assert_eq!(code(&out), 0, "{}", crate::stderr(&out));
    assert!(
        crate::stderr(&out).contains("[1/2] make ledger-us a standby of ledger-eu again"),
        "{}",
        crate::stderr(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ledger-us: a standby of ledger-eu again"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    rt().block_on(async {
        let c = lab.eu.connect().await.unwrap();
        c.batch_execute("INSERT INTO accounts (owner) VALUES ('after-reseed')")
            .await
            .unwrap();
    });
    until("US follows EU", Duration::from_secs(30), || {
        pg_rows(&lab.us) == pg_rows(&lab.eu)
    });
    let st = json(&lab, &["failback", "--repo", "lab"]);
    assert_eq!(st["stage"], "switch-back", "{st:#}");

    // And back: a planned switchover to US loses nothing.
    let state = lab.dir.path().join("operator");
    let out = run(
        &lab,
        &[
            "switchover",
            "--to",
            "us",
            "--yes",
            "--state-dir",
            &crate::path(&state),
        ],
    );
    assert_eq!(code(&out), 0, "switchover: {}", crate::stderr(&out));
    until("US takes writes", Duration::from_secs(30), || {
        rt().block_on(haven_lab::write_via_route(lab.write_port())) == Some(lab.us.port())
    });
    us_exec(&lab, "INSERT INTO accounts (owner) VALUES ('us-again')");
    until("EU follows US", Duration::from_secs(30), || {
        pg_rows(&lab.us) == pg_rows(&lab.eu)
    });
    // Kafka back: US's new records reach EU once (the rebuilt ones are not copied back),
    // and a commit on US inside the rebuilt range lands on the same record on EU.
    let k = lab.kafka.as_ref().unwrap();
    let fresh: Vec<Rec> = (0..4)
        .map(|p| Rec::kv(&format!("n{p}"), "us-after-switchback").to_partition(p))
        .collect();
    k.us.produce(TOPIC, &fresh).unwrap();
    let eu_highs: Vec<i64> = eu_records.iter().map(|r| r.len() as i64).collect();
    until("EU gets US's new records", Duration::from_secs(60), || {
        lab.keep_mirrors();
        let k = lab.kafka.as_ref().unwrap();
        (0..4).all(|p| k.eu.high_watermark(TOPIC, p).unwrap_or(0) > eu_highs[p as usize])
    });
    let k = lab.kafka.as_ref().unwrap();
    commit(&k.us.bootstrap(), &[(1, 1)]);
    until(
        "the commit on US translated exactly",
        Duration::from_secs(30),
        || {
            lab.keep_mirrors();
            committed(&lab.kafka.as_ref().unwrap().eu.bootstrap(), 1) == Some(1)
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let k = lab.kafka.as_ref().unwrap();
    for (p, before) in eu_records.iter().enumerate() {
        let now = shown(&k.eu.bootstrap(), p as i32);
        assert_eq!(now[..before.len()], before[..], "partition {p}");
        let added: Vec<_> = now[before.len()..]
            .iter()
            .map(|r| r.2.clone().unwrap())
            .collect();
        assert_eq!(
            added,
            vec![b"us-after-switchback".to_vec()],
            "partition {p}"
        );
    }
    let owners_now = owners(&pg_rows(&lab.us));
    for o in ["after-reseed", "us-again", "eu-new", "us-1", "d5"] {
        assert!(owners_now.contains(&o.to_string()), "{o}: {owners_now:?}");
    }
    let st = json(&lab, &["failback", "--repo", "lab"]);
    assert_eq!(st["stage"], "no-failover", "{st:#}");
    assert!(
        st["next"].as_str().unwrap().contains("planned switchover"),
        "{st:#}"
    );
    refused(
        &lab,
        &["failback", "capture", "--region", "eu", "--repo", "lab"],
        "nothing to capture",
    );

    // Everything above is in the repository's audit chain; it verifies, a signed head
    // authenticates with the public key, and an edited entry is named.
    let key_file = lab.dir.path().join("audit.key");
    std::fs::write(&key_file, "11".repeat(32)).unwrap();
    let signed = json(
        &lab,
        &[
            "audit",
            "sign",
            "--repo",
            "lab",
            "--signing-key-file",
            &crate::path(&key_file),
        ],
    );
    let public = lab.dir.path().join("audit.pub");
    std::fs::write(&public, signed["head"]["public_key"].as_str().unwrap()).unwrap();
    let verify = ["audit", "verify", "--repo", "lab", "--public-key"];
    let mut args = verify.to_vec();
    let public_path = crate::path(&public);
    args.push(&public_path);
    let v = json(&lab, &args);
    assert_eq!(v["ok"], true, "{v:#}");
    assert!(v["report"]["entries"].as_u64().unwrap() >= 5, "{v:#}");
    assert_eq!(v["report"]["heads_authenticated"], 1, "{v:#}");
    let second = lab.dir.path().join("repo/audit/chain/000000000002.json");
    let text = std::fs::read_to_string(&second).unwrap();
    std::fs::write(&second, text.replace("failback", "fallback")).unwrap();
    let out = run(&lab, &args);
    assert_eq!(code(&out), 1, "{}", crate::stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("BROKEN: entry 2 "), "{text}");
    let out = run(&lab, &["verify", "--repo", "lab"]);
    assert_eq!(code(&out), 1, "haven verify sees the broken chain too");
}
