//! `haven repo sync` between two real S3 servers (Garage): the copy verifies on its own,
//! a sync killed mid-pass leaves a copy that still verifies and the next pass completes
//! it byte for byte, and a residency rule stops the copy before a pinned topic's segment.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use haven_storage::Store;
use testbed::{Broker, DelayProxy, Rec, S3Server};

use crate::{code, haven, ok, stderr};

fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("endpoint with a port")
}

/// The repository settings that point at `s3` through `endpoint`: plain options, and the
/// secret key from a file in `dir`.
fn options(s3: &S3Server, endpoint: &str, dir: &std::path::Path) -> String {
    let secret = dir.join(format!("s3-{}.secret", port_of(endpoint)));
    let mut o: Vec<String> = s3
        .options()
        .into_iter()
        .filter(|(k, v)| {
            if *k == "aws_secret_access_key" {
                std::fs::write(&secret, v).unwrap();
            }
            *k != "aws_secret_access_key"
        })
        .map(|(k, v)| {
            let v = if k == "aws_endpoint" {
                endpoint.to_string()
            } else {
                v
            };
            format!("{k} = \"{v}\"")
        })
        .collect();
    o.sort();
    format!(
        "{{ {} }}\nsecret_options = {{ aws_secret_access_key = \"file:{}\" }}",
        o.join(", "),
        secret.display()
    )
}

/// Every object of a copy as (key, bytes), read through the repository's own store.
fn objects(cfg: &str, repo: &str) -> Vec<(String, Vec<u8>)> {
    let out = ok(&haven(&["--config", cfg, "--json", "ls", "--repo", repo]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The head pins the log; the audit log pins the rest.
    let audit = ok(&haven(&[
        "--config", cfg, "--json", "audit", "--repo", repo,
    ]));
    vec![
        ("head".into(), v["head"].to_string().into_bytes()),
        ("segments".into(), v["segments"].to_string().into_bytes()),
        ("audit".into(), audit.into_bytes()),
    ]
}

fn verify(cfg: &str, repo: &str) -> (i32, String) {
    let out = haven(&["--config", cfg, "--json", "verify", "--repo", repo]);
    (code(&out), String::from_utf8_lossy(&out.stdout).to_string())
}

#[test]
fn a_copy_in_another_s3_verifies_alone_survives_a_kill_and_respects_residency() {
    let us_s3 = S3Server::start().expect("start garage (us)");
    let eu_s3 = S3Server::start().expect("start garage (eu)");
    us_s3.create_bucket("backup-us").unwrap();
    eu_s3.create_bucket("backup-eu").unwrap();
    // The EU store is 60 ms away, so that a pass takes long enough to be killed in.
    let link = DelayProxy::start(0, port_of(&eu_s3.endpoint()), Duration::from_millis(60)).unwrap();
    let b = Broker::start().unwrap();
    b.create_topic("payments", 2).unwrap();
    b.create_topic("kyc.customers", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haven.toml");
    std::fs::write(
        &cfg,
        format!(
            "[clusters.us]\nbootstrap = \"{}\"\nregion = \"us\"\n\
             [repositories.main]\nurl = \"s3://backup-us/prod\"\nregion = \"us\"\noptions = {}\n\
             [repositories.main-eu]\nurl = \"s3://backup-eu/prod\"\nregion = \"eu\"\noptions = {}\n\
             [repositories.other]\nurl = \"s3://backup-us/other\"\nregion = \"us\"\noptions = {}\n\
             [residency.kyc]\ntopics = \"kyc\\\\..*\"\nregions = [\"us\"]\n",
            b.bootstrap(),
            options(&us_s3, &us_s3.endpoint(), dir.path()),
            options(
                &eu_s3,
                &format!("http://127.0.0.1:{}", link.port()),
                dir.path()
            ),
            options(&us_s3, &us_s3.endpoint(), dir.path()),
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let backup = |topics: &str| {
        ok(&haven(&[
            "--config",
            &cfg,
            "backup",
            "--once",
            "--brokers",
            &b.bootstrap(),
            "--repo",
            "main",
            "--topics",
            topics,
        ]));
    };
    for i in 0..8 {
        let recs: Vec<Rec> = (0..50)
            .map(|j| {
                Rec::kv(&format!("k{i}-{j}"), &format!("{{\"i\":{i},\"j\":{j}}}"))
                    .to_partition(j % 2)
            })
            .collect();
        b.produce("payments", &recs).unwrap();
        backup("payments");
    }
    ok(&haven(&[
        "--config", &cfg, "hold", "add", "h1", "--repo", "main", "--topics", "payments",
        "--reason", "test",
    ]));

    let total = {
        let out = ok(&haven(&[
            "--config", &cfg, "--json", "ls", "--repo", "main",
        ]));
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["segments"]
            .as_u64()
            .unwrap()
    };
    assert!(total >= 8, "{total} segments");

    // A pass killed part-way: what it copied still verifies on its own. The copy's log is
    // watched directly on the EU server (not through the slow link).
    let o = eu_s3.options();
    let o: Vec<(&str, &str)> = o.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let eu_direct = Store::open_with("s3://backup-eu/prod", &o).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let eu_segments = || {
        rt.block_on(eu_direct.list("log/"))
            .map(|v| v.len() as u64)
            .unwrap_or(0)
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_haven"))
        .args([
            "--config", &cfg, "repo", "sync", "--from", "main", "--to", "main-eu", "--once",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while eu_segments() < 2 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let partial = eu_segments();
    assert!(
        (2..total).contains(&partial),
        "killed with {partial} of {total} segments copied"
    );
    let (c, v) = verify(&cfg, "main-eu");
    assert_eq!(c, 0, "the partial copy verifies: {v}");

    // The next pass completes it: the same log, audit trail and holds.
    let out = ok(&haven(&[
        "--config", &cfg, "--json", "repo", "sync", "--from", "main", "--to", "main-eu", "--once",
    ]));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        r["copied_segments"].as_u64().unwrap(),
        total - partial,
        "{r}"
    );
    assert!(r["lag_objects"].as_u64().unwrap() > 0, "{r}");
    let (c, v) = verify(&cfg, "main-eu");
    assert_eq!(c, 0, "{v}");
    assert_eq!(objects(&cfg, "main"), objects(&cfg, "main-eu"));
    let holds = ok(&haven(&[
        "--config", &cfg, "hold", "ls", "--repo", "main-eu",
    ]));
    assert!(holds.contains("h1"), "{holds}");
    // Nothing left: a pass copies nothing.
    let out = ok(&haven(&[
        "--config", &cfg, "--json", "repo", "sync", "--from", "main", "--to", "main-eu", "--once",
    ]));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["lag_objects"], 0, "{r}");

    // A segment holding a topic pinned to US is never copied to EU: the copy stops before
    // it, exit 1, and the refusal is in the source's audit chain.
    b.produce("kyc.customers", &[Rec::kv("c1", "{\"name\":\"A\"}")])
        .unwrap();
    backup("kyc\\..*");
    b.produce("payments", &[Rec::kv("late", "{}")]).unwrap();
    backup("payments");
    let out = haven(&[
        "--config", &cfg, "repo", "sync", "--from", "main", "--to", "main-eu", "--once",
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("residency rule \"kyc\""),
        "{}",
        stderr(&out)
    );
    let eu = ok(&haven(&[
        "--config", &cfg, "--json", "ls", "--repo", "main-eu",
    ]));
    assert!(!eu.contains("kyc.customers"), "{eu}");
    let (c, v) = verify(&cfg, "main-eu");
    assert_eq!(c, 0, "{v}");
    let audit = ok(&haven(&[
        "--config", &cfg, "--json", "audit", "--repo", "main",
    ]));
    assert!(audit.contains("repo-sync-refused"), "{audit}");

    // A copy into a store holding another repository is refused (exit 2), and so is a
    // copy onto itself.
    ok(&haven(&[
        "--config",
        &cfg,
        "backup",
        "--once",
        "--brokers",
        &b.bootstrap(),
        "--repo",
        "other",
        "--topics",
        "payments",
    ]));
    let out = haven(&[
        "--config", &cfg, "repo", "sync", "--from", "main", "--to", "other", "--once",
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another repository"),
        "{}",
        stderr(&out)
    );
    let out = haven(&[
        "--config", &cfg, "repo", "sync", "--from", "main", "--to", "main", "--once",
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}
