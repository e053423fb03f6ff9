//! Switchover and failover on real servers: 3 etcd members, two Postgres 15 clusters with
//! logical replication (US publishes, EU subscribes), one HAProxy whose write backend
//! has a US and an EU server (the Postgres servers), and an agent per region.
//!
//! While it runs, an application writes through HAProxy as role `app`, and a sampler
//! checks every 100 ms that at most one region accepts an `app` write (through the route
//! or directly) and that the epoch the agents report never goes down.

use std::time::{Duration, Instant};

use crate::lab::*;
use crate::{code, haven, path, stderr};

#[test]
fn switchover_loses_no_acknowledged_write_and_one_region_takes_writes() {
    let lab = lab();
    let eu_agent = lab.agents[1].1;
    // The primary's agent takes the lease on a fresh deployment and opens its route.
    let epoch_before = us_active(&lab);
    let state = lab.dir.path().join("state");
    let state = path(&state);

    let traffic = Traffic::start(&lab, true);
    std::thread::sleep(Duration::from_secs(2));

    // The RPO ledger has the replica: its heartbeat age, the slot's bytes, remote_lsn.
    let out = haven(&["--json", "--config", &lab.cfg, "failover", "status"]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let db = &st["databases"][0];
    assert_eq!(db["database"], "ledger-eu", "{st}");
    assert_eq!(db["source"], "ledger-us", "{st}");
    assert!(db["lag_seconds"].as_f64().is_some_and(|s| s < 30.0), "{st}");
    assert!(
        db["lag_bytes"].is_i64() && db["remote_lsn"].is_string(),
        "{st}"
    );

    // The plan, then the switchover itself.
    let out = haven(&[
        "--config",
        &lab.cfg,
        "switchover",
        "--to",
        "eu",
        "--dry-run",
        "--state-dir",
        &state,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        plan.contains("fence database ledger-us") && plan.contains("hand the region lease to eu"),
        "{plan}"
    );
    let started = Instant::now();
    let out = haven(&[
        "--json",
        "--config",
        &lab.cfg,
        "switchover",
        "--to",
        "eu",
        "--yes",
        "--state-dir",
        &state,
    ]);
    let took = started.elapsed();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["to"], "eu");
    assert_eq!(report["epoch"].as_u64(), Some(epoch_before + 1), "{report}");
    // DNS points at EU, with the new epoch beside it.
    assert_eq!(
        dns_state(&lab),
        (
            vec!["10.0.1.1".to_string()],
            Some((epoch_before + 1).to_string())
        )
    );

    // Writes go on, now into EU.
    until(
        "a write lands in EU through the route",
        Duration::from_secs(20),
        || rt().block_on(write_via_route(lab.proxy.port("be_write"))) == Some(lab.eu.port()),
    );
    std::thread::sleep(Duration::from_secs(1));
    let done = traffic.stop();
    let (acked, samples) = (&done.acked, done.samples.len());

    // Zero loss: every acknowledged write is in EU, row for row; reverse replication
    // brings EU's writes to US.
    let mut want: Vec<String> = acked.iter().map(|a| a.0.clone()).collect();
    want.sort();
    let eu_rows = owners(&lab.eu);
    // A write without an answer (timed out) may or may not have committed.
    let unknown = &done.unknown;
    let missing: Vec<&String> = want.iter().filter(|o| !eu_rows.contains(o)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged writes missing in EU: {missing:?}"
    );
    let extra: Vec<&String> = eu_rows
        .iter()
        .filter(|o| !want.contains(o) && !unknown.contains(o))
        .collect();
    assert!(extra.is_empty(), "rows nobody wrote: {extra:?}");
    until(
        "US catches up through reverse replication",
        Duration::from_secs(20),
        || owners(&lab.us) == eu_rows,
    );
    let gap = acked
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .max()
        .unwrap_or_default();
    eprintln!(
        "switchover took {took:?}; longest pause between acknowledged writes {gap:?}; {} writes; {samples} samples",
        acked.len()
    );
    assert!(gap <= Duration::from_secs(10), "writes refused for {gap:?}");
    let v = &done.violations;
    assert!(v.is_empty(), "{v:?}");
    assert!(samples > 10);
    assert_eq!(
        super::failover::lease_epoch_of(eu_agent),
        Some(epoch_before + 1)
    );
    until(
        "EU's agent adopts the lease",
        Duration::from_secs(10),
        || super::failover::lease_status(eu_agent) == Some(200),
    );

    // Every step is in the audit log with the epoch; a second run has nothing to do.
    let audit = std::fs::read_dir(lab.dir.path().join("state/audit/chain"))
        .unwrap()
        .count();
    assert!(audit >= 10, "{audit} audit entries");
    let out = haven(&[
        "--config",
        &lab.cfg,
        "switchover",
        "--to",
        "eu",
        "--yes",
        "--state-dir",
        &state,
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already the active region"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn failover_after_the_us_region_dies_takes_over_once_its_lease_expired() {
    let mut lab = lab();
    let eu_agent = lab.agents[1].1;
    let epoch_before = us_active(&lab);
    let state = path(&lab.dir.path().join("state"));
    let traffic = Traffic::start(&lab, true);
    // Heartbeats, as the active region's agent would write them.
    rt().block_on(async { admin(&lab.us, "ledger-us").await.beat().await.unwrap() });
    std::thread::sleep(Duration::from_secs(2));

    // The US region dies: its agent (kill -9) and its database.
    let killed = Instant::now();
    let _ = lab.agents[0].2.kill();
    let _ = lab.agents[0].2.wait();
    lab.us.stop().unwrap();
    let down = Instant::now();

    // While the quorum still sees US's lease, a failover is refused (exit 2).
    let out = haven(&[
        "--config",
        &lab.cfg,
        "failover",
        "--to",
        "eu",
        "--yes",
        "--state-dir",
        &state,
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("still holds the lease"),
        "{}",
        stderr(&out)
    );

    // Once it expired (TTL 3 s), the failover goes through.
    let report = fail_over_to_eu_once_the_lease_expired(&lab, &state);
    until(
        "a write lands in EU through the route",
        Duration::from_secs(20),
        || rt().block_on(write_via_route(lab.proxy.port("be_write"))) == Some(lab.eu.port()),
    );
    std::thread::sleep(Duration::from_secs(2));
    let done = traffic.stop();
    let (acked, samples) = (&done.acked, done.samples.len());
    let eu_port = lab.eu.port();
    let first_eu = acked.iter().find(|a| a.2 == eu_port).map(|a| a.1 - killed);
    assert!(
        acked.iter().all(|a| a.2 != eu_port || a.1 > down),
        "EU acknowledged a write while US was up"
    );
    eprintln!("failover: RTO {first_eu:?} (kill -9 to the first write acknowledged in EU); {samples} samples");
    assert!(
        first_eu.is_some(),
        "no write was acknowledged after the failover"
    );
    assert_eq!(report["epoch"].as_u64(), Some(epoch_before + 1), "{report}");
    assert_eq!(
        dns_state(&lab),
        (
            vec!["10.0.1.1".to_string()],
            Some((epoch_before + 1).to_string())
        ),
        "DNS must point at EU with the new epoch"
    );
    let evidence = &report["evidence"][0];
    assert_eq!(evidence["database"], "ledger-eu", "{report}");
    assert!(evidence["remote_lsn"].is_string(), "{report}");
    assert!(evidence["heartbeat_age_s"].is_number(), "{report}");
    // Every write acknowledged after the failover is in EU; ids did not collide (the
    // sequence was set past US's snapshot by the gap).
    let eu_rows = owners(&lab.eu);
    for (o, _, by) in acked {
        if *by == eu_port {
            assert!(eu_rows.contains(o), "{o} acknowledged by EU is missing");
        }
    }
    let v = &done.violations;
    assert!(v.is_empty(), "{v:?}");
    until(
        "EU's agent adopts the lease",
        Duration::from_secs(10),
        || super::failover::lease_status(eu_agent) == Some(200),
    );
}

#[test]
fn the_standby_agent_fails_over_by_itself_in_automatic_mode() {
    let mut lab = lab_with("automatic");
    let eu_agent = lab.agents[1].1;
    let epoch_before = us_active(&lab);
    let traffic = Traffic::start(&lab, true);
    // Long enough for US's agent to stamp heartbeats and EU's to measure its lag.
    std::thread::sleep(Duration::from_secs(3));

    let killed = Instant::now();
    let _ = lab.agents[0].2.kill();
    let _ = lab.agents[0].2.wait();
    lab.us.stop().unwrap();
    let down = Instant::now();

    until(
        "EU's agent takes over by itself",
        Duration::from_secs(40),
        || {
            super::failover::lease_status(eu_agent) == Some(200)
                && rt().block_on(write_via_route(lab.proxy.port("be_write"))) == Some(lab.eu.port())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let done = traffic.stop();
    let (acked, samples) = (&done.acked, done.samples.len());
    let eu_port = lab.eu.port();
    let rto = acked
        .iter()
        .find(|a| a.2 == eu_port)
        .map(|a| a.1 - killed)
        .expect("a write acknowledged by EU after the failover");
    assert!(
        acked.iter().all(|a| a.2 != eu_port || a.1 > down),
        "EU acknowledged a write while US was up"
    );
    eprintln!("automatic failover: RTO {rto:?} (TTL 3 s, 2 checks); {samples} samples");
    assert_eq!(
        super::failover::lease_epoch_of(eu_agent),
        Some(epoch_before + 1)
    );
    let v = &done.violations;
    assert!(v.is_empty(), "{v:?}");
    // The agent ran the same plan: its audit log has every step with the new epoch.
    let audit = lab.dir.path().join("agent-eu/audit/chain");
    let entries: Vec<serde_json::Value> = std::fs::read_dir(&audit)
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    assert!(
        entries.iter().all(|e| e["action"] == "failover"),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|e| e["epoch"] == epoch_before + 1),
        "{entries:?}"
    );
}

#[test]
fn a_short_flap_changes_nothing_and_a_partition_of_us_fails_over_to_eu() {
    let lab = lab_linked("automatic", true);
    let (us_agent, eu_agent) = (lab.agents[0].1, lab.agents[1].1);
    let proxy_port = lab.proxy.port("be_write");
    let epoch_before = us_active(&lab);
    let traffic = Traffic::start(&lab, false);
    std::thread::sleep(Duration::from_secs(3));
    let set_links = |down: bool| lab.us_links.iter().for_each(|l| l.set_down(down));

    // A flap shorter than the detection time (TTL 3 s, 2 checks): no failover.
    set_links(true);
    std::thread::sleep(Duration::from_millis(800));
    set_links(false);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        super::failover::lease_epoch_of(eu_agent),
        Some(epoch_before),
        "a short flap caused a failover"
    );
    until(
        "US takes writes again after the flap",
        Duration::from_secs(10),
        || rt().block_on(write_via_route(proxy_port)) == Some(lab.us.port()),
    );

    // US is cut off from the etcd quorum for good: it fences itself, EU takes over.
    let cut = Instant::now();
    set_links(true);
    until("EU takes over by itself", Duration::from_secs(40), || {
        super::failover::lease_status(eu_agent) == Some(200)
            && rt().block_on(write_via_route(proxy_port)) == Some(lab.eu.port())
    });
    let rto = cut.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let done = traffic.stop();
    let (all_samples, samples) = (&done.samples, done.samples.len());
    eprintln!("partition: EU took writes {rto:?} after US was cut off; {samples} samples");
    // US fenced itself (its agent could not renew) before EU opened: no sample after the
    // cut where US took a write once EU did, and US stopped before EU started.
    let us_port = lab.us.port();
    let eu_port = lab.eu.port();
    let us_stopped = all_samples
        .iter()
        .find(|s| s.0 > cut && !s.1 && s.3 != Some(us_port))
        .map(|s| s.0)
        .expect("US never stopped taking writes");
    let eu_started = all_samples
        .iter()
        .find(|s| s.0 > cut && (s.2 || s.3 == Some(eu_port)))
        .map(|s| s.0)
        .expect("EU never took writes");
    assert!(us_stopped < eu_started, "US was still open when EU opened");
    eprintln!(
        "US fenced itself {:?} after the cut; EU opened {:?} after it",
        us_stopped - cut,
        eu_started - cut
    );
    let v = &done.violations;
    assert!(v.is_empty(), "{v:?}");
    assert_eq!(
        super::failover::lease_epoch_of(eu_agent),
        Some(epoch_before + 1)
    );
    assert!(
        !rt().block_on(writes_directly(lab.us.port())),
        "the cut-off US still takes application writes"
    );
    // Healing the link does not give US its writes back: EU is active now.
    set_links(false);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(super::failover::lease_status(us_agent), Some(503));
    assert!(!rt().block_on(writes_directly(lab.us.port())));
    assert_eq!(
        rt().block_on(write_via_route(proxy_port)),
        Some(lab.eu.port())
    );
}

#[test]
fn a_switchover_that_fails_half_way_stays_fenced_and_continues_when_run_again() {
    let lab = lab();
    let proxy_port = lab.proxy.port("be_write");
    let epoch_before = us_active(&lab);
    // A hook that tells EU's clients where to write, failing until its marker exists.
    let marker = lab.dir.path().join("dns-ready");
    let mut text = std::fs::read_to_string(&lab.cfg).unwrap();
    text.push_str(&format!(
        "\n[routes.clients-eu]\nregion = \"eu\"\nkind = \"command\"\ncommand = \"test -f {} || {{ echo 'DNS API down' >&2; exit 1; }}\"\n",
        marker.display()
    ));
    std::fs::write(&lab.cfg, text).unwrap();
    let state = path(&lab.dir.path().join("state"));
    let run = || {
        haven(&[
            "--config",
            &lab.cfg,
            "switchover",
            "--to",
            "eu",
            "--yes",
            "--state-dir",
            &state,
        ])
    };
    let out = run();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("open route clients-eu")
            && err.contains("DNS API down")
            && err.contains("run the same command again"),
        "{err}"
    );
    // Stopped after the lease moved and before EU's write route opened: US is fenced,
    // nothing reaches EU through the proxy yet.
    assert!(!rt().block_on(writes_directly(lab.us.port())));
    assert_ne!(
        rt().block_on(write_via_route(proxy_port)),
        Some(lab.us.port())
    );

    std::fs::write(&marker, "").unwrap();
    let out = run();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stderr(&out).contains("continuing after step"),
        "{}",
        stderr(&out)
    );
    assert!(
        text.contains(&format!("epoch {}", epoch_before + 1)),
        "{text}"
    );
    until(
        "a write lands in EU through the route",
        Duration::from_secs(20),
        || rt().block_on(write_via_route(proxy_port)) == Some(lab.eu.port()),
    );
}

#[test]
fn with_the_replication_link_cut_the_ledger_and_the_failover_report_say_what_is_lost() {
    let mut lab = lab();
    let epoch_before = us_active(&lab);
    let state = path(&lab.dir.path().join("state"));
    let status = |lab: &Lab| -> serde_json::Value {
        let out = haven(&["--json", "--config", &lab.cfg, "failover", "status"]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let traffic = Traffic::start(&lab, true);
    std::thread::sleep(Duration::from_secs(2));
    let before = status(&lab);
    assert!(
        before["databases"][0]["lag_seconds"].as_f64().unwrap() < 3.0,
        "{before}"
    );

    // A marker committed on US after every write acknowledged so far; once EU holds it,
    // EU holds all of them (logical replication applies in commit order).
    let marked = Instant::now();
    rt().block_on(async {
        let c = lab.us.connect().await.unwrap();
        c.execute("INSERT INTO accounts (owner) VALUES ('marker')", &[])
            .await
            .unwrap();
    });
    until("EU holds the marker", Duration::from_secs(20), || {
        rt().block_on(async {
            let c = lab.eu.connect().await.unwrap();
            let row = c
                .query_one("SELECT count(*) FROM accounts WHERE owner = 'marker'", &[])
                .await
                .unwrap();
            row.get::<_, i64>(0) == 1
        })
    });

    // The link between the regions' databases is cut; US keeps taking writes.
    lab.replication.set_down(true);
    let cut = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let during = status(&lab);
    let lag = during["databases"][0]["lag_seconds"].as_f64().unwrap();
    assert!(
        lag >= 3.0,
        "the ledger must show the replica falling behind: {during}"
    );
    assert!(
        during["databases"][0]["lag_bytes"].as_i64().unwrap() > 0,
        "{during}"
    );
    assert!(during["rpo_seconds"].as_f64().unwrap() >= lag, "{during}");

    // US dies; EU fails over once the lease expired.
    let _ = lab.agents[0].2.kill();
    let _ = lab.agents[0].2.wait();
    lab.us.stop().unwrap();
    let (report, attempt) = fail_over_to_eu_timed(&lab, &state);
    // EU's heartbeat age is read during that attempt; the last beat that crossed was
    // at most one beat interval (1 s) before the cut.
    let cut_to_attempt = attempt.duration_since(cut).as_secs_f64();
    until(
        "a write lands in EU through the route",
        Duration::from_secs(20),
        || rt().block_on(write_via_route(lab.proxy.port("be_write"))) == Some(lab.eu.port()),
    );
    let done = traffic.stop();
    let acked = &done.acked;
    let v = &done.violations;
    assert!(v.is_empty(), "{v:?}");
    assert_eq!(report["epoch"].as_u64(), Some(epoch_before + 1), "{report}");
    let age = report["evidence"][0]["heartbeat_age_s"].as_f64().unwrap();
    assert!(
        age >= cut_to_attempt - 1.0,
        "the report must show how stale EU was: {report}"
    );

    // What US acknowledged before the marker is in EU; what it acknowledged during the
    // cut is lost, and the report's staleness covers it.
    let eu_rows = owners(&lab.eu);
    let us_port = lab.us.port();
    let by_us: Vec<&Ack> = acked.iter().filter(|a| a.2 == us_port).collect();
    let before_cut: Vec<&&Ack> = by_us.iter().filter(|a| a.1 < marked).collect();
    assert!(!before_cut.is_empty());
    for a in &before_cut {
        assert!(
            eu_rows.contains(&a.0),
            "{} was acknowledged before the marker EU received",
            a.0
        );
    }
    let lost = by_us.iter().filter(|a| !eu_rows.contains(&a.0)).count();
    assert!(lost > 0, "writes during the cut cannot have reached EU");
    eprintln!(
        "replication cut: ledger showed {lag:.1} s behind; the failover reported {age:.1} s; {lost} acknowledged writes lost"
    );
}

/// Runs `haven failover --to eu` until it goes through (the only refusal allowed on the
/// way: US still holds the lease); returns its JSON report.
fn fail_over_to_eu_once_the_lease_expired(lab: &Lab, state: &str) -> serde_json::Value {
    fail_over_to_eu_timed(lab, state).0
}

/// As [`fail_over_to_eu_once_the_lease_expired`], also returning when the attempt that
/// went through started (its report's measurements were taken after that instant).
fn fail_over_to_eu_timed(lab: &Lab, state: &str) -> (serde_json::Value, Instant) {
    let mut report = serde_json::Value::Null;
    let mut started = Instant::now();
    until("the failover goes through", Duration::from_secs(30), || {
        started = Instant::now();
        let out = haven(&[
            "--json",
            "--config",
            &lab.cfg,
            "failover",
            "--to",
            "eu",
            "--yes",
            "--state-dir",
            state,
        ]);
        if code(&out) == 0 {
            report = serde_json::from_slice(&out.stdout).unwrap();
            return true;
        }
        assert!(
            stderr(&out).contains("still holds the lease"),
            "{}",
            stderr(&out)
        );
        false
    });
    (report, started)
}
