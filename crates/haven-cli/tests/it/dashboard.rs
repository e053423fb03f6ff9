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

    // A click on the row charts that partition's own lag, from its own history.
    let key = "mirror:us-to-eu:orders/0";
    browser
        .eval(&format!(
            "document.querySelector('tr[data-partition=\"{key}\"]').click(); return true;"
        ))
        .unwrap();
    let charted = browser
        .wait_for(
            "the chart to show partition 0 alone",
            Duration::from_secs(30),
            "const f = document.getElementById('chart-for').textContent; const n = document.querySelectorAll('#chart polyline').length; return f.startsWith('mirror:') && n === 1 ? f : null;",
        )
        .unwrap();
    assert_eq!(charted, key);
    let series = call(
        &s,
        "GET",
        &format!(
            "/api/v1/history?partition={}",
            key.replace(':', "%3A").replace('/', "%2F")
        ),
        Some(VIEWER),
        None,
    )
    .1;
    assert!(
        series["points"].as_array().is_some_and(|p| !p.is_empty()),
        "{series}"
    );
    assert!(series["points"][0]["lag_s"].is_number(), "{series}");
    let (status, v) = call(
        &s,
        "GET",
        "/api/v1/history?partition=mirror:nope:x/0",
        Some(VIEWER),
        None,
    );
    assert_error(status, &v, 404, "no lag on record for partition");
    browser
        .eval("document.getElementById('chart-all').click(); return true;")
        .unwrap();
    browser
        .wait_for(
            "the chart to show all partitions again",
            Duration::from_secs(30),
            "return document.getElementById('chart-for').textContent === 'all partitions' && document.querySelectorAll('#chart polyline').length === 4 ? true : null;",
        )
        .unwrap();

    // A legal hold placed with the CLI shows in the compliance panel.
    crate::ok(&crate::haven(&[
        "--config",
        &s.config,
        "hold",
        "add",
        "case-17",
        "--repo",
        "main",
        "--topics",
        "orders",
        "--reason",
        "inquiry 17",
    ]));
    let holds = browser
        .wait_for(
            "the hold in the compliance panel",
            Duration::from_secs(30),
            "const r = document.querySelector('#compliance tr[data-repository=\"main\"]'); const t = r ? r.cells[2].textContent : ''; return t.startsWith('case-17') ? [...r.cells].map(c => c.textContent) : null;",
        )
        .unwrap();
    assert!(holds[2].as_str().unwrap().contains("orders"), "{holds}");
    assert_eq!(holds[1], "keep everything", "{holds}");
    assert_eq!(holds[3], "not encrypted", "{holds}");
    assert_eq!(holds[4], "none", "{holds}");

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

/// The operator's switchover through the API is the engine's plan, run by the engine's
/// executor (the same steps, epoch and audit as `haven switchover`), on the real lab.
#[test]
fn a_switchover_started_through_the_api_runs_the_engines_plan() {
    use crate::lab::{lab, until, us_active};
    let lab = lab();
    let epoch = us_active(&lab);
    let tokens = lab.dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("vera viewer {VIEWER}\nolga operator {OPERATOR}\n"),
    )
    .unwrap();
    let port = testbed::free_port().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let state = lab.dir.path().join("state");
    let mut serve = spawn(
        &[
            "--config",
            &lab.cfg,
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tokens-file",
            &tokens.display().to_string(),
            "--refresh",
            "0.5",
            "--state-dir",
            &state.display().to_string(),
        ],
        &lab.dir.path().join("serve.log"),
    );
    let get = |path: &str| -> Option<Value> {
        let r = client()
            .get(format!("{base}{path}"))
            .header("Authorization", format!("Bearer {VIEWER}"))
            .send()
            .ok()?;
        (r.status() == 200).then(|| r.json().ok())?
    };
    let post = |path: &str, body: &str| -> (u16, Value) {
        let r = client()
            .post(format!("{base}{path}"))
            .header("Authorization", format!("Bearer {OPERATOR}"))
            .body(body.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    };
    until("the API shows US active", Duration::from_secs(60), || {
        get("/api/v1/regions").is_some_and(|v| v["active"] == "us" && v["epoch"] == epoch)
    });
    // The RPO ledger has the replica a failover would promote.
    let rpo = get("/api/v1/rpo").unwrap();
    assert_eq!(rpo["databases"][0]["database"], "ledger-eu", "{rpo}");

    let (st, op) = post("/api/v1/switchover", r#"{"to":"eu"}"#);
    assert_eq!(st, 202, "{op}");
    assert_eq!(op["by"], "olga");
    let id = op["id"].as_u64().unwrap();
    let mut done = Value::Null;
    until("the switchover to finish", Duration::from_secs(90), || {
        done = get(&format!("/api/v1/operations/{id}")).unwrap_or_default();
        done["state"] != "running"
    });
    assert_eq!(done["state"], "done", "{done:#}");
    assert_eq!(
        done["report"]["epoch"].as_u64(),
        Some(epoch + 1),
        "{done:#}"
    );
    let steps: Vec<&str> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        steps
            .iter()
            .any(|s| s.contains("done") && s.contains("hand the region lease to eu")),
        "{steps:#?}"
    );
    // Audited: who asked (the token's name), then every step with its epoch.
    let audit: Vec<Value> = std::fs::read_dir(state.join("audit/chain"))
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    let asked = audit
        .iter()
        .find(|e| e["action"] == "api-switchover")
        .expect("the request is audited");
    assert_eq!(asked["details"]["by"], "olga", "{asked}");
    assert!(audit.iter().filter(|e| e["action"] == "switchover").count() >= 5);
    // The local audit log is a hash chain that verifies.
    let v: Value = serde_json::from_str(&crate::ok(&crate::haven(&[
        "--json",
        "audit",
        "verify-state",
        "--state-dir",
        &crate::path(&state),
    ])))
    .unwrap();
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(
        v["report"]["entries"].as_u64().unwrap(),
        audit.len() as u64,
        "{v:#}"
    );
    // The next readings show EU active; asking again is refused by the engine.
    until("the API shows EU active", Duration::from_secs(30), || {
        get("/api/v1/regions").is_some_and(|v| v["active"] == "eu" && v["epoch"] == epoch + 1)
    });
    let (st, v) = post("/api/v1/switchover", r#"{"to":"eu"}"#);
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already the active region"),
        "{v}"
    );
    let _ = serve.kill();
    let _ = serve.wait();
}

/// A mirror that has not run yet, 1,500 records behind: the reading counts them without
/// reading them all every time (1,000 at most per partition and reading), and says the
/// count is an upper bound; the lag in seconds is the oldest record's age, exact.
#[test]
fn a_large_backlog_is_bounded_in_a_reading_and_marked_inexact() {
    let us = Broker::start().unwrap();
    let eu = Broker::start().unwrap();
    us.create_topic("idle", 1).unwrap();
    let mut recs = records(0, 1500);
    for r in &mut recs {
        r.partition = Some(0);
    }
    us.produce("idle", &recs).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("haven.toml");
    std::fs::write(
        &config,
        format!(
            "[clusters.us]\nbootstrap = \"{}\"\n[clusters.eu]\nbootstrap = \"{}\"\n\
             [mirrors.idle]\nfrom = \"us\"\nto = \"eu\"\ntopics = \"idle\"\n",
            us.bootstrap(),
            eu.bootstrap()
        ),
    )
    .unwrap();
    let port = testbed::free_port().unwrap();
    let mut serve = spawn(
        &[
            "--config",
            &config.display().to_string(),
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--refresh",
            "0.5",
            "--state-dir",
            &dir.path().join("state").display().to_string(),
        ],
        &dir.path().join("serve.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let part = loop {
        let v: Option<Value> = client()
            .get(format!("http://127.0.0.1:{port}/api/v1/mirrors"))
            .send()
            .ok()
            .and_then(|r| r.json().ok());
        if let Some(p) = v
            .as_ref()
            .and_then(|v| v["mirrors"][0]["partitions"].get(0))
        {
            break p.clone();
        }
        assert!(Instant::now() < deadline, "no reading of the mirror: {v:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(part["lag_records"], 1500, "{part}");
    assert_eq!(part["at_risk"]["records"], 1500, "{part}");
    assert_eq!(part["at_risk"]["exact"], false, "{part}");
    assert_eq!(part["at_risk"]["to"], 1499, "{part}");
    assert!(part["lag_seconds"].as_f64().unwrap() >= 0.0, "{part}");
    // `haven mirror status` reads every record at risk: the same count, exact.
    let out = crate::haven(&[
        "--json",
        "mirror",
        "status",
        "--from",
        &us.bootstrap(),
        "--to",
        &eu.bootstrap(),
        "--topics",
        "idle",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let exact = v
        .as_array()
        .map(|a| a[0].clone())
        .unwrap_or_else(|| v["partitions"][0].clone());
    assert_eq!(exact["at_risk"]["records"], 1500, "{v}");
    assert_eq!(exact["at_risk"]["exact"], true, "{v}");
    let _ = serve.kill();
    let _ = serve.wait();
}

/// `haven agent --dashboard`: the region's agent serves /lease for the load balancer and
/// the dashboard's API and metrics on the same address.
#[test]
fn the_agent_serves_the_dashboard_beside_its_lease() {
    let etcd = testbed::EtcdCluster::start(3).unwrap();
    let us = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("haven.toml");
    let endpoints: Vec<String> = etcd
        .endpoints()
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect();
    std::fs::write(
        &config,
        format!(
            "[clusters.us]\nbootstrap = \"{b}\"\n[clusters.eu]\nbootstrap = \"{b}\"\n\
             [coordination]\nendpoints = [{}]\nlease_ttl_s = 3\n\
             [regions.us]\ncluster = \"us\"\n[regions.eu]\ncluster = \"eu\"\n\
             [failover]\nprimary = \"us\"\nstandby = \"eu\"\n",
            endpoints.join(", "),
            b = us.bootstrap()
        ),
    )
    .unwrap();
    let port = testbed::free_port().unwrap();
    let mut agent = spawn(
        &[
            "--config",
            &config.display().to_string(),
            "agent",
            "--region",
            "us",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--dashboard",
            "--refresh",
            "0.5",
            "--state-dir",
            &dir.path().join("state").display().to_string(),
        ],
        &dir.path().join("agent.log"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lease = client().get(format!("{base}/lease")).send().ok();
        let regions: Option<Value> = client()
            .get(format!("{base}/api/v1/regions"))
            .send()
            .ok()
            .and_then(|r| r.json().ok());
        if lease.is_some_and(|l| l.status() == 200)
            && regions.as_ref().is_some_and(|v| v["active"] == "us")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not serve its lease and the dashboard: {regions:?}\n{}",
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = client()
        .get(format!("{base}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        m.contains("haven_failover_lease_holder{region=\"us\"} 1"),
        "{m}"
    );
    assert!(m.contains("haven_posture_ready"), "{m}");
    let page = client()
        .get(format!("{base}/"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("id=\"verdict\""), "{page}");
    let _ = agent.kill();
    let _ = agent.wait();
}
