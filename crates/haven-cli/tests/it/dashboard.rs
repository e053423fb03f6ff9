//! `haven serve`: the JSON API and the dashboard, against real brokers with a backup and a
//! mirror running as their own processes. The API is checked with a real HTTP client
//! (tokens, roles, JSON errors); the dashboard in headless Chromium as a person sees it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::{Broker, Rec};

const VIEWER: &str = "viewer-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";

struct Setup {
    us: Broker,
    _eu: Broker,
    dir: tempfile::TempDir,
    config: String,
    children: Vec<Child>,
    serve: Child,
    base: String,
}

impl Drop for Setup {
    fn drop(&mut self) {
        for c in self
            .children
            .iter_mut()
            .chain(std::iter::once(&mut self.serve))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_haven"))
        .args(args)
        .env_remove("HAVEN_API_TOKENS")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn records(from: usize, n: usize) -> Vec<Rec> {
    (from..from + n)
        .map(|i| Rec {
            partition: Some((i % 2) as i32),
            key: Some(format!("k{i}").into_bytes()),
            value: Some(format!("payment {i}").into_bytes()),
            ..Default::default()
        })
        .collect()
}

/// Two brokers, topic `orders` (2 partitions, 40 records), a backup job and a mirror job
/// running, and `haven serve` with a viewer and an operator token, RPO target 3 s.
fn setup() -> Setup {
    let us = Broker::start().unwrap();
    let eu = Broker::start().unwrap();
    us.create_topic("orders", 2).unwrap();
    us.produce("orders", &records(0, 40)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("haven.toml");
    std::fs::write(
        &config,
        format!(
            r#"[clusters.us]
bootstrap = "{}"
[clusters.eu]
bootstrap = "{}"
[repositories.main]
url = "file://{}"
[jobs.orders]
kind = "backup"
cluster = "us"
repository = "main"
topics = "orders"
flush_ms = 200
[mirrors.us-to-eu]
from = "us"
to = "eu"
topics = "orders"
[objectives]
rpo_s = 3
"#,
            us.bootstrap(),
            eu.bootstrap(),
            dir.path().join("repo").display()
        ),
    )
    .unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("# name role token\nvera viewer {VIEWER}\nolga operator {OPERATOR}\n"),
    )
    .unwrap();
    let c = config.display().to_string();
    let children = vec![
        spawn(
            &["--config", &c, "backup", "--job", "orders"],
            &dir.path().join("backup.log"),
        ),
        spawn(
            &["--config", &c, "mirror", "--job", "us-to-eu"],
            &dir.path().join("mirror.log"),
        ),
    ];
    let port = testbed::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let state = dir.path().join("state").display().to_string();
    let serve = spawn(
        &[
            "--config",
            &c,
            "serve",
            "--listen",
            &listen,
            "--tokens-file",
            &tokens.display().to_string(),
            "--refresh",
            "0.5",
            "--state-dir",
            &state,
        ],
        &dir.path().join("serve.log"),
    );
    Setup {
        us,
        _eu: eu,
        config: c,
        children,
        serve,
        base: format!("http://{listen}"),
        dir,
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// GET (or POST with `body`) `path` with `token`: the status and the JSON body.
fn call(
    s: &Setup,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    try_call(s, method, path, token, body).unwrap()
}

fn try_call(
    s: &Setup,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> reqwest::Result<(u16, Value)> {
    let c = client();
    let url = format!("{}{path}", s.base);
    let mut r = if method == "POST" {
        c.post(url)
    } else {
        c.get(url)
    };
    if let Some(t) = token {
        r = r.header("Authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        r = r
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    let resp = r.send()?;
    let status = resp.status().as_u16();
    let text = resp.text()?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

fn wait_for<T>(what: &str, secs: u64, s: &Setup, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            let log = |n: &str| std::fs::read_to_string(s.dir.path().join(n)).unwrap_or_default();
            panic!(
                "timed out waiting for {what}\nserve.log:\n{}\nbackup.log:\n{}\nmirror.log:\n{}",
                log("serve.log"),
                log("backup.log"),
                log("mirror.log")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_error(status: u16, v: &Value, expected: u16, contains: &str) {
    assert_eq!(status, expected, "{v}");
    assert_eq!(v["error"]["status"], expected, "{v}");
    let m = v["error"]["message"].as_str().unwrap_or_default();
    assert!(m.contains(contains), "{contains:?} not in {m:?}");
}

#[test]
fn the_api_reads_the_posture_from_the_systems_and_refuses_what_a_token_may_not_do() {
    let s = setup();
    // The first reading comes; until then reads answer 503, never a panic.
    let ready = wait_for("the first reading", 60, &s, || {
        let (st, v) = try_call(&s, "GET", "/api/v1/readiness", Some(VIEWER), None).ok()?;
        (st == 200).then_some(v)
    });
    assert!(ready["readiness"]["verdict"].is_string(), "{ready}");

    // Authentication and roles.
    let (st, v) = call(&s, "GET", "/api/v1/readiness", None, None);
    assert_error(st, &v, 401, "Authorization: Bearer");
    let (st, v) = call(
        &s,
        "GET",
        "/api/v1/posture",
        Some("not-a-known-token-at-all"),
        None,
    );
    assert_error(st, &v, 401, "not known");
    let (st, v) = call(
        &s,
        "POST",
        "/api/v1/switchover",
        Some(VIEWER),
        Some(r#"{"to":"eu"}"#),
    );
    assert_error(st, &v, 403, "token vera has the viewer role");
    let (st, v) = call(&s, "POST", "/api/v1/refresh", Some(VIEWER), None);
    assert_error(st, &v, 403, "operator");
    // An operator reaches the engine, which refuses a switchover without regions.
    let (st, v) = call(
        &s,
        "POST",
        "/api/v1/switchover",
        Some(OPERATOR),
        Some(r#"{"to":"eu"}"#),
    );
    assert_error(st, &v, 409, "unknown region");
    let (st, v) = call(
        &s,
        "POST",
        "/api/v1/switchover",
        Some(OPERATOR),
        Some("to=eu"),
    );
    assert_error(st, &v, 400, "not JSON");
    let (st, v) = call(&s, "POST", "/api/v1/refresh", Some(OPERATOR), None);
    assert_eq!(st, 202, "{v}");

    // Bad input: JSON errors naming the fix.
    let (st, v) = call(&s, "GET", "/api/v1/nope", Some(VIEWER), None);
    assert_error(st, &v, 404, "GET /api/v1 lists the API");
    let (st, v) = call(&s, "GET", "/api/v1/audit?limit=abc", Some(VIEWER), None);
    assert_error(
        st,
        &v,
        400,
        "limit=\"abc\": expected a number from 1 to 500",
    );
    let (st, v) = call(&s, "GET", "/api/v1/audit?limit=0", Some(VIEWER), None);
    assert_error(st, &v, 400, "from 1 to 500");
    let (st, v) = call(&s, "GET", "/api/v1/posture?verbose=1", Some(VIEWER), None);
    assert_error(st, &v, 400, "unknown query parameter \"verbose\"");
    let (st, v) = call(
        &s,
        "GET",
        "/api/v1/audit?repository=other",
        Some(VIEWER),
        None,
    );
    assert_error(st, &v, 404, "no repository \"other\"");
    let (st, v) = call(&s, "GET", "/api/v1/drills/x%2F..%2Fy", Some(VIEWER), None);
    assert_eq!(st, 400, "{v}");

    // The backup's durable offsets reach the high watermarks: read from the repository
    // and the cluster, per partition, 20 records each.
    let backups = wait_for("the backup to be durable", 60, &s, || {
        let (_, v) = call(&s, "GET", "/api/v1/backups", Some(VIEWER), None);
        let parts = v["backups"][0]["partitions"].as_array()?.clone();
        (parts.len() == 2
            && parts
                .iter()
                .all(|p| p["durable"] == 20 && p["high_watermark"] == 20 && p["lag_records"] == 0))
        .then_some(v)
    });
    assert_eq!(backups["backups"][0]["job"], "orders", "{backups}");
    assert!(backups["backups"][0]["last_flush_at"].as_i64().unwrap() > 0);
    // The mirror: every partition copied.
    wait_for("the mirror to be copied", 60, &s, || {
        let (_, v) = call(&s, "GET", "/api/v1/mirrors", Some(VIEWER), None);
        let m = v["mirrors"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == "us-to-eu")?
            .clone();
        let parts = m["partitions"].as_array()?;
        (parts.len() == 2 && parts.iter().all(|p| p["mirrored_to"] == 20)).then_some(())
    });
    // Records produced while nothing copies them show as lag in records, then in seconds.
    // (The mirror keeps running; the backup too: they catch up, and the figures with them.)
    s.us.produce("orders", &records(40, 10)).unwrap();
    wait_for("the new records to be durable", 60, &s, || {
        let (_, v) = call(&s, "GET", "/api/v1/backups", Some(VIEWER), None);
        let parts = v["backups"][0]["partitions"].as_array()?.clone();
        parts.iter().all(|p| p["durable"] == 25).then_some(())
    });

    // Nothing is wrong with the data; what is missing is the evidence: no drill, no
    // restore test. The verdict says so in words.
    let (_, v) = call(&s, "GET", "/api/v1/readiness", Some(VIEWER), None);
    let text = v["readiness"]["text"].as_str().unwrap();
    assert!(text.starts_with("degraded: "), "{v}");
    assert!(text.contains("no drill on record"), "{text}");
    let alerts: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["alert"].as_str().unwrap())
        .collect();
    assert!(alerts.contains(&"HavenDrillOverdue"), "{alerts:?}");
    assert!(alerts.contains(&"HavenRestoreTestOverdue"), "{alerts:?}");
    assert!(!alerts.iter().any(|a| a.contains("RpoAboveTarget")), "{v}");

    // Metrics for Prometheus, names the alert rules use.
    let m = client()
        .get(format!("{}/metrics", s.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(m.contains("haven_posture_ready 0"), "{m}");
    assert!(
        m.contains("haven_repository_problems{repository=\"main\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("haven_drill_last_pass_timestamp_seconds 0"),
        "{m}"
    );
    assert!(
        m.contains("haven_posture_findings{alert=\"HavenDrillOverdue\",severity=\"warning\"} 1"),
        "{m}"
    );

    // The index lists the API.
    let (st, v) = call(&s, "GET", "/api/v1", Some(VIEWER), None);
    assert_eq!(st, 200);
    assert!(v["paths"]["GET /api/v1/rpo"].is_string(), "{v}");
    let _ = &s.config;
}

#[test]
fn serve_refuses_a_public_address_without_tokens() {
    let out = crate::haven(&["--config", "/dev/null", "serve", "--listen", "0.0.0.0:0"]);
    // /dev/null is an empty config: valid. The address is refused before anything runs.
    assert_eq!(crate::code(&out), 2, "{}", crate::stderr(&out));
    assert!(
        crate::stderr(&out).contains("--tokens-file"),
        "{}",
        crate::stderr(&out)
    );
    let out = crate::haven_env(
        &["--config", "/dev/null", "serve"],
        &[("HAVEN_API_TOKENS", "a viewer short".into())],
    );
    assert_eq!(crate::code(&out), 2, "{}", crate::stderr(&out));
    assert!(
        crate::stderr(&out).contains("HAVEN_API_TOKENS line 1"),
        "{}",
        crate::stderr(&out)
    );
    assert!(
        !crate::stderr(&out).contains("short\n"),
        "the token is echoed"
    );
}

#[test]
fn the_dashboard_shows_the_verdict_updates_live_and_turns_a_stopped_mirror_red() {
    let mut s = setup();
    let browser = testbed::Browser::start().unwrap();
    browser
        .goto(&format!("{}/#token={VIEWER}", s.base))
        .unwrap();
    // The readiness header in words, as a person reads it.
    let verdict = browser
        .wait_for(
            "the verdict",
            Duration::from_secs(60),
            "const t = document.getElementById('verdict').textContent; return t.startsWith('waiting') ? null : t;",
        )
        .unwrap();
    let verdict = verdict.as_str().unwrap().to_string();
    assert!(
        verdict.starts_with("degraded: ") || verdict.starts_with("not ready: "),
        "{verdict}"
    );
    // The token left the address bar (it stays in the tab's session storage).
    let href = browser.eval("return location.href;").unwrap();
    assert!(!href.as_str().unwrap().contains(VIEWER), "{href}");

    // The mirror's partition 0 row: copied up to 20 of 20.
    let row = |p: i32| {
        format!(
            "const r = document.querySelector('tr[data-partition=\"mirror:us-to-eu:orders/{p}\"]'); \
             return r ? {{cls: r.className, cells: [...r.cells].map(c => c.textContent)}} : null;"
        )
    };
    browser
        .wait_for(
            "partition 0 of the mirror, copied",
            Duration::from_secs(60),
            &format!(
                "const v = (() => {{ {} }})(); return v && v.cells[4] === '20 / 20' ? v : null;",
                row(0)
            ),
        )
        .unwrap();
    // Records produced: the figure changes on the page without a reload.
    browser
        .eval("window.__sameDocument = 1; return true;")
        .unwrap();
    s.us.produce("orders", &records(40, 10)).unwrap();
    browser
        .wait_for(
            "partition 0 to show 25 / 25",
            Duration::from_secs(60),
            &format!(
                "const v = (() => {{ {} }})(); return v && v.cells[4] === '25 / 25' ? v : null;",
                row(0)
            ),
        )
        .unwrap();
    assert_eq!(browser.eval("return window.__sameDocument;").unwrap(), 1);

    // The mirror stops (SIGKILL); records keep coming: after the RPO target (3 s) the
    // partition turns red, behind the target, and the verdict becomes "not ready".
    let mut mirror = s.children.remove(1);
    mirror.kill().unwrap();
    mirror.wait().unwrap();
    s.us.produce("orders", &records(60, 10)).unwrap();
    let red = browser
        .wait_for(
            "partition 0 to turn red",
            Duration::from_secs(60),
            &format!(
                "const v = (() => {{ {} }})(); return v && v.cls === 'bad' ? v : null;",
                row(0)
            ),
        )
        .unwrap();
    assert_eq!(red["cells"][5], "behind the RPO target", "{red}");
    assert_eq!(red["cells"][3], "5", "{red}");
    let verdict = browser
        .wait_for(
            "the verdict to say not ready",
            Duration::from_secs(30),
            "const t = document.getElementById('verdict').textContent; return t.startsWith('not ready: ') ? t : null;",
        )
        .unwrap();
    assert!(
        verdict.as_str().unwrap().contains("mirror us-to-eu"),
        "{verdict}"
    );
    let header = browser
        .eval("return document.getElementById('readiness').className;")
        .unwrap();
    assert_eq!(header, "not-ready");
    // Sorted by lag: the red partitions come first.
    let first = browser
        .eval("return document.querySelector('#partitions tbody tr').className;")
        .unwrap();
    assert_eq!(first, "bad");
    let shot = s.dir.path().join("dashboard.png");
    browser.screenshot(&shot).unwrap();
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    // To look at it: HAVEN_KEEP_SCREENSHOT=/tmp/dashboard.png cargo test ... dashboard
    if let Ok(keep) = std::env::var("HAVEN_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }

    // The server goes away: the page says its data is stale instead of showing it as now.
    s.serve.kill().unwrap();
    s.serve.wait().unwrap();
    browser
        .wait_for(
            "the page to say STALE",
            Duration::from_secs(30),
            "const f = document.getElementById('freshness'); return f.className.includes('stale') && f.textContent.startsWith('STALE') ? f.textContent : null;",
        )
        .unwrap();
    println!("screenshot: {}", shot.display());
}
