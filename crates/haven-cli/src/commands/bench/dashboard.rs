//! Backup and mirror with and without a dashboard reading their clusters and repository.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use testbed::Broker;

use super::{data, print, Ratio};
use crate::Ctx;

/// Backup and mirror wall time with `haven serve` watching them, against the same jobs
/// without it, same brokers, same run.
///
/// Produces N MiB of 1 KiB JSON events, then alternates, --rounds times: `haven backup
/// --once` and `haven mirror --once` alone (the baseline), and the same two while `haven
/// serve` (--refresh, default 5 s as served) reads the posture of exactly those jobs (their cluster, repository
/// and mirror map) and a client polls /api/v1/posture every second, as an open dashboard
/// does. Best round of each. Target: within noise (<= 1.1x).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// MiB of payload to produce.
    #[arg(long, default_value_t = 256)]
    mb: usize,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[arg(long, default_value_t = 1024)]
    event_size: usize,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// `haven serve --refresh`: seconds between two readings of the clusters (the page
    /// polls the API every second either way).
    #[arg(long, default_value_t = 5.0)]
    refresh: f64,
}

/// A dashboard over one round's jobs: `haven serve` and a client polling it every second.
struct Dashboard {
    serve: Child,
    stop: Arc<AtomicBool>,
    polls: Arc<AtomicU64>,
    poller: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Dashboard {
    fn start(
        exe: &std::path::Path,
        config: &std::path::Path,
        refresh: f64,
    ) -> anyhow::Result<Dashboard> {
        let dir = tempfile::tempdir()?;
        let port = testbed::free_port()?;
        let serve = Command::new(exe)
            .arg("-q")
            .arg("--config")
            .arg(config)
            .args(["serve", "--refresh"])
            .arg(refresh.to_string())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdout(Stdio::null())
            .stderr(match std::env::var_os("HAVEN_BENCH_SERVE_LOG") {
                // HAVEN_BENCH_SERVE_LOG=FILE: the server's debug log (each reading's time).
                Some(f) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(f)?,
                ),
                None => Stdio::null(),
            })
            .env("HAVEN_LOG", "debug,librdkafka=off,rdkafka=off")
            .spawn()?;
        let stop = Arc::new(AtomicBool::new(false));
        let polls = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), polls.clone());
        let poller = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if get(port, "/api/v1/posture").is_some_and(|st| st == 200) {
                    p.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Ok(Dashboard {
            serve,
            stop,
            polls,
            poller: Some(poller),
            _dir: dir,
        })
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
        let _ = self.serve.kill();
        let _ = self.serve.wait();
    }
}

/// The round's haven.toml: the clusters by name (as a deployment names them; the mirror
/// runs under these names too, so its records carry them), the backup job and the mirror.
fn write_config(
    path: &std::path::Path,
    us: &Broker,
    eu: &Broker,
    repo: &std::path::Path,
    mirror: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    std::fs::write(
        path,
        format!(
            "[clusters.us]\nbootstrap = \"{}\"\n[clusters.eu]\nbootstrap = \"{}\"\n\
             [repositories.main]\nurl = \"file://{}\"\n\
             [jobs.bench]\nkind = \"backup\"\ncluster = \"us\"\nrepository = \"main\"\ntopics = \"bench\"\n\
             [mirrors.{mirror}]\nfrom = \"us\"\nto = \"eu\"\ntopics = \"bench\"\nprefix = \"{prefix}\"\n",
            us.bootstrap(),
            eu.bootstrap(),
            repo.display()
        ),
    )?;
    Ok(())
}

/// One GET on loopback; the status, None when nothing answers.
fn get(port: u16, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = Vec::new();
    let _ = s.read_to_end(&mut body);
    String::from_utf8_lossy(&body)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs a haven command to its end; its wall time.
fn timed(exe: &std::path::Path, args: &[String]) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = Command::new(exe)
        .arg("-q")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()?;
    anyhow::ensure!(out.success(), "haven {} failed: {out}", args.join(" "));
    Ok(t.elapsed().as_secs_f64())
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let say = |s: String| {
        if !ctx.json {
            eprintln!("{s}");
        }
    };
    let n = (a.mb * 1024 * 1024 / a.event_size).max(1) as u64;
    say(format!(
        "producing {n} events ({} MiB) to {} partitions ...",
        a.mb, a.partitions
    ));
    let (us, eu) = tokio::task::spawn_blocking(move || -> anyhow::Result<(Broker, Broker)> {
        let us = Broker::start()?;
        let eu = Broker::start()?;
        us.create_topic("bench", a.partitions)?;
        data::produce(&us, "bench", n, a.event_size, a.partitions)?;
        Ok((us, eu))
    })
    .await??;
    let exe = std::env::current_exe()?;
    let mut best = [[f64::INFINITY; 2]; 2]; // [backup, mirror][alone, watched]
    let mut polls = 0;
    for round in 0..a.rounds {
        for watched in [false, true] {
            let tag = format!("r{round}{}", if watched { "w" } else { "a" });
            let dir = tempfile::tempdir()?;
            let repo = dir.path().join("repo");
            let (mirror, prefix) = (format!("bench-{tag}"), format!("{tag}-"));
            // HAVEN_BENCH_NO_DASHBOARD: the "watched" rounds without the dashboard (to
            // tell the dashboard's cost from the round order's).
            let config = dir.path().join("haven.toml");
            write_config(&config, &us, &eu, &repo, &mirror, &prefix)?;
            let dash = if watched && std::env::var_os("HAVEN_BENCH_NO_DASHBOARD").is_none() {
                Some(Dashboard::start(&exe, &config, a.refresh)?)
            } else {
                None
            };
            if dash.is_some() {
                // Let it take its first readings before the jobs start.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let (e, r, m, p, b1, c) = (
                exe.clone(),
                repo.clone(),
                mirror.clone(),
                prefix.clone(),
                us.bootstrap(),
                config.display().to_string(),
            );
            let (bw, mw) = tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, f64)> {
                let bw = timed(
                    &e,
                    &[
                        "backup",
                        "--once",
                        "--group-interval",
                        "0",
                        "--topics",
                        "bench",
                        "--brokers",
                        &b1,
                        "--repo",
                        &r.display().to_string(),
                    ]
                    .map(String::from),
                )?;
                let mw = timed(
                    &e,
                    &[
                        "--config", &c, "mirror", "--once", "--topics", "bench", "--name", &m,
                        "--prefix", &p, "--from", "us", "--to", "eu",
                    ]
                    .map(String::from),
                )?;
                Ok((bw, mw))
            })
            .await??;
            if let Some(d) = &dash {
                polls += d.polls.load(Ordering::Relaxed);
            }
            drop(dash);
            let w = usize::from(watched);
            best[0][w] = best[0][w].min(bw);
            best[1][w] = best[1][w].min(mw);
            say(format!(
                "round {round} {}: backup {bw:.2}s, mirror {mw:.2}s",
                if watched {
                    "with the dashboard"
                } else {
                    "alone"
                }
            ));
        }
    }
    anyhow::ensure!(
        polls > 0 || std::env::var_os("HAVEN_BENCH_NO_DASHBOARD").is_some(),
        "the dashboard never answered a poll"
    );
    print(
        ctx,
        &format!(
            "jobs watched by a dashboard polling every second: {n} events, {} partitions",
            a.partitions
        ),
        &[
            Ratio::new(
                "backup wall time",
                best[0][1],
                best[0][0],
                "s",
                "<= 1.1",
                |r| r <= 1.1,
            ),
            Ratio::new(
                "mirror wall time",
                best[1][1],
                best[1][0],
                "s",
                "<= 1.1",
                |r| r <= 1.1,
            ),
        ],
        json!({"dashboard_polls_answered": polls}),
    )?;
    Ok(0)
}
