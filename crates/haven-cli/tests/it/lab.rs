//! The two-region failover lab the switchover and failover tests run in (the
//! `haven-lab` crate: 3 etcd members, two Postgres 15 clusters with logical replication,
//! HAProxy, Knot DNS, an agent per region, the writer and the sampler), with the tests'
//! conveniences: a failure to start is a panic naming it.

use std::time::{Duration, Instant};

pub(crate) use haven_lab::{
    rt, write_via_route, writes_directly, Ack, Lab, LabOptions, Load, Sample, Seen,
};
use testbed::Postgres;

/// Where `kafka.dr.example.` points, and the epoch beside it, at the lab's DNS server.
pub(crate) fn dns_state(lab: &Lab) -> (Vec<String>, Option<String>) {
    let dig = |name: &str, kind: &str| -> Vec<String> {
        let out = std::process::Command::new("kdig")
            .args([
                "@127.0.0.1",
                "-p",
                &lab.dns.port().to_string(),
                name,
                kind,
                "+short",
            ])
            .output()
            .expect("kdig (apt-get install knot-dnsutils)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().trim_matches('"').to_string())
            .filter(|l| !l.is_empty())
            .collect()
    };
    (
        dig("kafka.dr.example.", "A"),
        dig("_epoch.kafka.dr.example.", "TXT").pop(),
    )
}

pub(crate) async fn admin(pg: &Postgres, name: &str) -> haven_pg::Pg {
    haven_lab::admin(pg, name).await.unwrap()
}

pub(crate) fn lab() -> Lab {
    lab_with("manual")
}

pub(crate) fn spawn_agent(
    cfg: &str,
    region: &str,
    port: u16,
    state: &std::path::Path,
) -> std::process::Child {
    haven_lab::spawn_agent(
        env!("CARGO_BIN_EXE_haven").as_ref(),
        cfg,
        region,
        port,
        state,
    )
    .unwrap()
}

pub(crate) fn lab_with(mode: &str) -> Lab {
    lab_linked(mode, false)
}

/// With `cut_links`, US's agent reaches the etcd members through proxies the test can
/// cut: a partition of US from EU and the witness (as far as coordination goes).
pub(crate) fn lab_linked(mode: &str, cut_links: bool) -> Lab {
    let mut o = LabOptions::new(env!("CARGO_BIN_EXE_haven"));
    o.mode = mode.into();
    o.cut_links = cut_links;
    Lab::start(&o).expect("start the two-region lab")
}

pub(crate) fn owners(pg: &Postgres) -> Vec<String> {
    haven_lab::owners(pg).unwrap()
}

pub(crate) fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until US's agent holds the lease and US takes writes through the route (the
/// primary of a fresh deployment); returns the epoch.
pub(crate) fn us_active(lab: &Lab) -> u64 {
    lab.wait_us_active(Duration::from_secs(30)).unwrap()
}

/// The sampler, and the writer (one write after another) when `with_writer`.
pub(crate) struct Traffic(haven_lab::Traffic);

impl Traffic {
    pub(crate) fn start(lab: &Lab, with_writer: bool) -> Traffic {
        Traffic(haven_lab::Traffic::start(
            lab,
            with_writer.then(Load::default),
        ))
    }

    pub(crate) fn stop(self) -> Seen {
        self.0.stop().unwrap()
    }
}
