//! `haven bench drill`: the drills of `haven drill run` at the seed's load, each on a fresh
//! lab, against the same drill under a light load (the baseline, same run).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use super::Ratio;
use crate::Ctx;

/// Runs region-outage, switchover and partition (and, when named, pg-crash,
/// broker-crash or the backup drills; each on a lab of its own, started and stopped here) at the seed's load and at a light load, and reports RTO, acknowledged
/// transfers lost, samples with two writable regions and the verdicts.
///
/// Targets (issue #14): region outage RTO <= 60 s and RPO <= 1 s of acknowledged
/// transfers; switchover 0 lost; partition 0 samples with two writable regions; a crash
/// recovered in place (pg-crash, broker-crash, the backup drills) 0 lost.
///
/// Examples:
///   haven bench drill                               (about 6 minutes)
///   haven --json bench drill --scenarios region-outage --lease-ttl-s 5
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Scenarios to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "region-outage,switchover,partition"
    )]
    scenarios: Vec<String>,
    /// Transfers a minute under load (the seed: 10,000).
    #[arg(long, default_value_t = 10_000)]
    rate: u32,
    /// Transfers a minute of the baseline run.
    #[arg(long, default_value_t = 600)]
    baseline_rate: u32,
    /// The labs' lease TTL.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=120))]
    lease_ttl_s: u64,
    /// Seconds of load before the fault and after the new region's first transfer.
    #[arg(long, default_value_t = 10)]
    warmup_s: u64,
}

fn haven(args: &[&str]) -> anyhow::Result<std::process::Output> {
    let exe = std::env::current_exe().context("the haven binary")?;
    Command::new(&exe)
        .args(args)
        .output()
        .with_context(|| format!("run {}", exe.display()))
}

/// One drill on a fresh lab: its JSON report.
fn one(a: &Args, scenario: &str, rate: u32, dir: &Path) -> anyhow::Result<Value> {
    let d = dir.display().to_string();
    let ttl = a.lease_ttl_s.to_string();
    let up = haven(&["lab", "up", "--dir", &d, "--lease-ttl-s", &ttl])?;
    if !up.status.success() {
        bail!("lab up: {}", String::from_utf8_lossy(&up.stderr).trim());
    }
    let (rate, warm) = (rate.to_string(), a.warmup_s.to_string());
    let partition = (a.lease_ttl_s * 3).max(8).to_string();
    let out = haven(&[
        "--json",
        "drill",
        "run",
        scenario,
        "--lab",
        &d,
        "--rate",
        &rate,
        "--warmup-s",
        &warm,
        "--after-s",
        &warm,
        "--partition-s",
        &partition,
    ]);
    let _ = haven(&["lab", "down", "--dir", &d]);
    let out = out?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "drill {scenario} printed no report: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let a = std::sync::Arc::new(a);
    let mut ratios = Vec::new();
    let mut details = serde_json::Map::new();
    for scenario in a.scenarios.clone() {
        let mut pair = Vec::new();
        for rate in [a.rate, a.baseline_rate] {
            if !ctx.json {
                eprintln!("bench drill: {scenario} at {rate} transfers a minute");
            }
            let tmp = tempfile::Builder::new().prefix("hv-drill-").tempdir()?;
            let (a2, s2, p) = (a.clone(), scenario.clone(), tmp.path().to_path_buf());
            let r = tokio::task::spawn_blocking(move || one(&a2, &s2, rate, &p)).await??;
            tokio::time::sleep(Duration::from_millis(500)).await;
            pair.push(r);
        }
        let (loaded, idle) = (&pair[0], &pair[1]);
        let f = |r: &Value, k: &str| r["measured"][k].as_f64().unwrap_or(f64::NAN);
        let rto_target = if scenario == "switchover" {
            "<= 60 s (writes refused)"
        } else {
            "<= 60 s"
        };
        let mut rto = Ratio::new(
            &format!("{scenario}: RTO"),
            f(loaded, "rto_s"),
            f(idle, "rto_s"),
            "s",
            rto_target,
            |_| true,
        );
        rto.met = f(loaded, "rto_s") <= 60.0;
        ratios.push(rto);
        let lost_target = match scenario.as_str() {
            "region-outage" => "<= 1 s of writes",
            "partition" => "the self-fencing window",
            _ => "0",
        };
        let mut lost = Ratio::new(
            &format!("{scenario}: acknowledged lost, s of writes"),
            f(loaded, "lost_seconds"),
            f(idle, "lost_seconds"),
            "s",
            lost_target,
            |_| true,
        );
        lost.met = match scenario.as_str() {
            "partition" => {
                f(loaded, "lost_seconds") <= loaded["objectives"]["rpo_s"].as_f64().unwrap_or(0.0)
            }
            "region-outage" => f(loaded, "lost_seconds") <= 1.0,
            _ => f(loaded, "lost") == 0.0,
        };
        ratios.push(lost);
        let mut split = Ratio::new(
            &format!("{scenario}: samples with two writable regions"),
            f(loaded, "two_writable"),
            f(idle, "two_writable"),
            "",
            "0",
            |_| true,
        );
        split.met = f(loaded, "two_writable") == 0.0;
        ratios.push(split);
        details.insert(
            scenario.clone(),
            serde_json::json!({
                "loaded": {"verdict": loaded["verdict"], "lost": loaded["measured"]["lost"],
                           "acknowledged": loaded["measured"]["acknowledged"],
                           "p99_ms": loaded["measured"]["latency_p99_ms"],
                           "failures": loaded["failures"], "not_measured": loaded["not_measured"]},
                "baseline": {"verdict": idle["verdict"], "lost": idle["measured"]["lost"],
                             "acknowledged": idle["measured"]["acknowledged"]},
            }),
        );
    }
    super::print(
        ctx,
        &format!(
            "drills at {} transfers a minute (baseline: {} a minute), lease TTL {} s",
            a.rate, a.baseline_rate, a.lease_ttl_s
        ),
        &ratios,
        Value::Object(details),
    )?;
    Ok(0)
}
