//! `haven backup --once` with erasure rules (every record sealed for its customer) against
//! the same backup without them, same topic, same run.

use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::json;
use testbed::{Broker, S3Server};

use super::{data, print, Ratio};
use crate::Ctx;

/// Backup with crypto-shredding against the same backup without it.
///
/// Starts a tansu broker, produces N MiB of 1 KiB payment events whose `customer` field
/// names one of --customers subjects, then alternates, --rounds times: `haven backup
/// --once` into a fresh repository without erasure rules, and with
/// `erasure_subjects = { "bench" = "json:/customer" }` (each record's key, value and
/// headers sealed under its customer's key; a key object created for each new customer).
/// With --s3 the repositories are on a local Garage server (each new customer costs a GET
/// and a PUT on S3); otherwise on a local directory, where the segments' size is compared
/// too (sealed records are compressed before they are sealed). Best round of each.
/// Targets: wall <= 1.5x, size <= 1.5x.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// MiB of payload to produce.
    #[arg(long, default_value_t = 64)]
    mb: usize,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Distinct customers (data subjects) among the events, at most 50000.
    #[arg(long, default_value_t = 5000)]
    customers: u32,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Repositories on a local Garage (S3) server instead of a local directory.
    #[arg(long)]
    s3: bool,
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn round(
    exe: &std::path::Path,
    config: &std::path::Path,
    repo: &str,
    env: &[(String, String)],
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = Command::new(exe)
        .arg("--config")
        .arg(config)
        .args(["-q", "--json", "backup", "--once", "--group-interval", "0"])
        .args(["--topics", "bench", "--brokers", "local", "--repo", repo])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "haven backup failed: {}", out.status);
    Ok(t.elapsed().as_secs_f64())
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let say = |s: String| {
        if !ctx.json {
            eprintln!("{s}");
        }
    };
    anyhow::ensure!(
        (1..=50_000).contains(&a.customers),
        "--customers: between 1 and 50000"
    );
    let broker = tokio::task::spawn_blocking(Broker::start).await??;
    let n = (a.mb * 1024 * 1024 / 1024).max(1) as u64;
    say(format!(
        "producing {n} events ({} MiB) of {} customers ...",
        a.mb, a.customers
    ));
    let customers = a.customers;
    let broker = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        broker.create_topic("bench", a.partitions)?;
        let mut rng = data::rng(17);
        let mut i = 0u64;
        while i < n {
            let mut batch =
                data::batch(&mut rng, i, (i + 20_000).min(n), 1024, a.partitions, false);
            // Fold the customers into --customers distinct ids.
            for r in &mut batch {
                if let Some(v) = r.value.as_mut() {
                    let text = String::from_utf8_lossy(v).into_owned();
                    if let Some(at) = text.find("\"customer\":\"cust-") {
                        let id = &text[at + 17..at + 25];
                        let folded = u32::from_str_radix(id, 16).unwrap_or(0) % customers;
                        let text = format!("{}{folded:08x}{}", &text[..at + 17], &text[at + 25..]);
                        *v = text.into_bytes();
                    }
                }
            }
            broker.produce("bench", &batch)?;
            i += batch.len() as u64;
        }
        Ok(broker)
    })
    .await??;

    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("subject.secret"),
        "bench-subject-hash-secret-0123456789\n",
    )?;
    let (s3, env): (Option<S3Server>, Vec<(String, String)>) = if a.s3 {
        let s3 = tokio::task::spawn_blocking(S3Server::start).await??;
        s3.create_bucket("bench")?;
        let env = s3
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        (Some(s3), env)
    } else {
        (None, Vec::new())
    };
    let exe = std::env::current_exe()?;
    let (mut plain, mut sealed) = (f64::INFINITY, f64::INFINITY);
    let mut sizes = (0u64, 0u64);
    for r in 0..a.rounds {
        let url = |what: &str| match &s3 {
            Some(_) => format!("s3://bench/{what}-{r}"),
            None => dir.path().join(format!("{what}-{r}")).display().to_string(),
        };
        let config = dir.path().join(format!("haven-{r}.toml"));
        std::fs::write(
            &config,
            format!(
                "[clusters.local]\nbootstrap = \"{}\"\n\n[repositories.plain]\nurl = \"{}\"\n\n\
                 [repositories.sealed]\nurl = \"{}\"\nsubject_hash_key = \"file:{}\"\n\
                 erasure_subjects = {{ \"bench\" = \"json:/customer\" }}\n",
                broker.bootstrap(),
                url("plain"),
                url("sealed"),
                dir.path().join("subject.secret").display()
            ),
        )?;
        let p = round(&exe, &config, "plain", &env)?;
        let s = round(&exe, &config, "sealed", &env)?;
        say(format!(
            "round {}: plain {p:.2}s, sealed per customer {s:.2}s",
            r + 1
        ));
        plain = plain.min(p);
        sealed = sealed.min(s);
        if s3.is_none() {
            sizes = (
                dir_bytes(&dir.path().join(format!("plain-{r}/log"))),
                dir_bytes(&dir.path().join(format!("sealed-{r}/log"))),
            );
        }
    }
    let mut ratios = vec![Ratio::new(
        "backup wall, every record sealed per customer",
        sealed,
        plain,
        "s",
        "<= 1.5",
        |r| r <= 1.5,
    )];
    if sizes.0 > 0 {
        ratios.push(Ratio::new(
            "segment bytes, sealed per customer",
            sizes.1 as f64 / 1048576.0,
            sizes.0 as f64 / 1048576.0,
            "MiB",
            "<= 1.5",
            |r| r <= 1.5,
        ));
    }
    print(
        ctx,
        "bench erasure: backup with crypto-shredding vs without (best round)",
        &ratios,
        json!({"events": n, "customers": a.customers, "store": if a.s3 { "garage" } else { "local directory" }}),
    )?;
    Ok(0)
}
