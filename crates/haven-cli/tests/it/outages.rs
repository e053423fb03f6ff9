//! Outages that must not move the active region. With EU down, US keeps taking writes, a
//! switchover is refused before it changes anything, and EU catches up when it is back.
//! Without an etcd quorum no region takes writes, by design: the witness is down and
//! US is cut off from EU. Emulated on one machine as each side sees it: the witness
//! member killed; US's agent cut off from every member (US's own member alone has no
//! quorum, so reaching it would change nothing); US's member frozen (to EU it is gone).
//! EU's agent runs in automatic mode and still must not fail over.

use std::time::{Duration, Instant};

use crate::lab::*;
use crate::{code, haven, path, stderr};

#[test]
fn with_the_witness_down_a_partition_stops_writes_in_both_regions_until_it_heals() {
    let mut lab = lab_linked("automatic", true);
    let eu_agent = lab.agents[1].1;
    let proxy_port = lab.proxy.port("be_write");
    let (us_port, eu_port) = (lab.us.port(), lab.eu.port());
    let epoch_before = us_active(&lab);
    let traffic = Traffic::start(&lab, false);

    // The witness dies: US and EU still make a quorum, nothing changes.
    lab.etcd.kill(2);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(rt().block_on(write_via_route(proxy_port)), Some(us_port));

    // The partition.
    let cut = Instant::now();
    lab.us_links.iter().for_each(|l| l.set_down(true));
    lab.etcd.freeze(0, true).unwrap();
    until("US fences itself", Duration::from_secs(15), || {
        rt().block_on(async {
            write_via_route(proxy_port).await != Some(us_port) && !writes_directly(us_port).await
        })
    });
    let fenced = Instant::now();
    // Well past what an automatic failover takes with a quorum (TTL 3 s, 2 checks: 4-6 s).
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(super::failover::lease_status(eu_agent), Some(503));
    let state = path(&lab.dir.path().join("state"));
    let out = haven(&[
        "--config",
        &lab.cfg,
        "failover",
        "--to",
        "eu",
        "--force",
        "--yes",
        "--state-dir",
        &state,
    ]);
    assert_ne!(code(&out), 0, "a failover went through without a quorum");
    assert!(
        stderr(&out).contains("--force cannot help"),
        "{}",
        stderr(&out)
    );
    let healed = Instant::now();

    // Healed: one region takes writes again (US, the last active one, or EU's automatic
    // failover once the lease is free), with a higher epoch.
    lab.etcd.freeze(0, false).unwrap();
    lab.us_links.iter().for_each(|l| l.set_down(false));
    lab.etcd.restart(2).unwrap();
    until(
        "a region takes writes again",
        Duration::from_secs(40),
        || {
            let r = rt().block_on(write_via_route(proxy_port));
            r == Some(us_port) || r == Some(eu_port)
        },
    );
    let back = healed.elapsed();
    let done = traffic.stop();
    let v = &done.violations;
    assert!(v.is_empty(), "{v:?}");
    let stopped: Vec<&Sample> = done
        .samples
        .iter()
        .filter(|s| s.0 >= fenced && s.0 < healed)
        .collect();
    assert!(stopped.len() > 50, "{} samples", stopped.len());
    for s in &stopped {
        assert!(
            !s.1 && !s.2 && s.3.is_none(),
            "a region took writes without a quorum: {s:?}"
        );
    }
    let epochs: Vec<u64> = lab
        .agents
        .iter()
        .filter_map(|a| super::failover::lease_epoch_of(a.1))
        .collect();
    assert!(epochs.iter().all(|e| *e >= epoch_before), "{epochs:?}");
    eprintln!(
        "no quorum: US fenced itself {:?} after the cut, no region took writes for {:?}; a region took writes {back:?} after the heal",
        fenced - cut,
        healed - fenced
    );
}

#[test]
fn with_eu_down_us_keeps_taking_writes_a_switchover_is_refused_and_eu_catches_up() {
    let mut lab = lab();
    let proxy_port = lab.proxy.port("be_write");
    let us_port = lab.us.port();
    let epoch = us_active(&lab);
    let traffic = Traffic::start(&lab, true);
    std::thread::sleep(Duration::from_secs(2));

    // EU dies: its agent killed, its database stopped.
    let _ = lab.agents[1].2.kill();
    let _ = lab.agents[1].2.wait();
    lab.eu.stop().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let out = haven(&["--json", "--config", &lab.cfg, "failover", "status"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["epoch"], epoch, "{status}");
    assert!(
        status["unknown"].to_string().contains("ledger-eu"),
        "{status}"
    );
    let state = path(&lab.dir.path().join("state"));
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
    assert_ne!(code(&out), 0, "a switchover to a dead region went through");
    assert!(stderr(&out).contains("ledger-eu"), "{}", stderr(&out));
    assert_eq!(
        rt().block_on(write_via_route(proxy_port)),
        Some(us_port),
        "the refused switchover closed US"
    );

    // EU comes back: its database catches up with everything US acknowledged.
    lab.eu.restart().unwrap();
    let state_eu = lab.dir.path().join("agent-eu");
    let cfg = lab.cfg.clone();
    lab.agents[1].2 = spawn_agent(&cfg, "eu", lab.agents[1].1, &state_eu);
    std::thread::sleep(Duration::from_secs(2));
    let done = traffic.stop();
    let v = &done.violations;
    assert!(v.is_empty(), "{v:?}");
    // US acknowledged writes all along: no pause longer than a second.
    let gaps = done.acked.windows(2).map(|w| w[1].1 - w[0].1);
    let longest = gaps.max().unwrap_or_default();
    assert!(longest < Duration::from_secs(1), "US paused {longest:?}");
    assert!(done.acked.iter().all(|a| a.2 == us_port));
    until(
        "EU holds every write US acknowledged",
        Duration::from_secs(30),
        || {
            let on_eu = owners(&lab.eu);
            done.acked.iter().all(|a| on_eu.binary_search(&a.0).is_ok())
        },
    );
    assert_eq!(
        super::failover::lease_epoch_of(lab.agents[0].1),
        Some(epoch)
    );
    eprintln!(
        "EU down: US acknowledged {} writes, longest pause {longest:?}; EU caught up",
        done.acked.len()
    );
}
