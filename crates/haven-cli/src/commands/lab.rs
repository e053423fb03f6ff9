//! `haven lab up|down|status`: the two-region lab on this machine, in the background.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use haven_lab::control::{self, LabState, Status, Up};
use haven_lab::LabOptions;

use crate::Ctx;

/// `haven lab up|down|status` (documented on the `Lab` command in main.rs).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Start the lab in the background (nothing happens if it already runs).
    Up(UpArgs),
    /// Stop the lab and every server in it; their data stays in DIR/servers for the next
    /// `up` in DIR (remove DIR to start afresh).
    Down(DownArgs),
    /// Every part of the lab, whether it answers, and the active region (exit 1 unless all
    /// are up and a region holds the lease).
    Status(DirArg),
    /// Inject a fault by hand: region-down REGION (agent and broker killed -9, Postgres
    /// crashed), pg-crash REGION, broker-crash REGION, agent-crash REGION, s3-down REGION
    /// (its object store killed -9: its backup holds on), link-cut (US cut off from EU,
    /// the witness and its own etcd member), link-flap [MS], heal (everything up again,
    /// on the same data).
    Fault(FaultArgs),
}

#[derive(Debug, clap::Args)]
pub struct FaultArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The fault and its argument, e.g. `region-down us`, `link-flap 800`, `heal`.
    #[arg(required = true, num_args = 1..=2, value_name = "FAULT")]
    fault: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct DirArg {
    /// The lab's directory (its haven.toml, lab.json, agent states and logs).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    dir: DirArg,
    /// `[failover] mode`: "automatic" (EU's agent fails over by itself) or "manual".
    #[arg(long, default_value = "automatic", value_parser = ["automatic", "manual"])]
    mode: String,
    /// `[coordination] lease_ttl_s`: how long a silent region keeps the lease.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=120))]
    lease_ttl_s: u64,
    /// `[failover] failed_checks`: rounds the lease must be free before EU takes it.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=20))]
    failed_checks: u32,
    /// One-way delay in ms of the links between regions (replication, US's links to EU's
    /// and the witness's etcd members, and every connection to EU's Kafka broker).
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u64).range(0..=2000))]
    link_ms: u64,
    /// Leave Kafka out (no brokers, no mirror): Postgres, etcd and routes only.
    #[arg(long)]
    no_kafka: bool,
    /// Leave the object stores and backups out (by default each region has a Garage S3
    /// server and a continuous backup of its ledger topics into it).
    #[arg(long)]
    no_backups: bool,
    /// Give up (and stop what started) when the lab is not ready after this many seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    timeout_s: u64,
    /// Run the lab in this process until SIGTERM or Ctrl-C (what `up` starts in the
    /// background).
    #[arg(long)]
    foreground: bool,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Seconds to wait for a clean stop before killing what is left.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    timeout_s: u64,
}

pub async fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<u8> {
    match cmd {
        Command::Up(a) if a.foreground => foreground(a).await,
        Command::Up(a) => up(ctx, a).await,
        Command::Down(a) => down(ctx, a).await,
        Command::Status(a) => status(ctx, a).await,
        Command::Fault(a) => fault(ctx, a).await,
    }
}

fn absolute(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    dir.canonicalize()
        .with_context(|| format!("resolve {}", dir.display()))
}

async fn foreground(a: UpArgs) -> anyhow::Result<u8> {
    let mut o = LabOptions::new(std::env::current_exe().context("the haven binary")?);
    o.dir = Some(absolute(&a.dir.dir)?);
    o.mode = a.mode;
    o.lease_ttl_s = a.lease_ttl_s;
    o.failed_checks = a.failed_checks;
    o.kafka = !a.no_kafka;
    o.backups = !a.no_kafka && !a.no_backups;
    o.link_delay = Duration::from_millis(a.link_ms);
    o.cut_links = true;
    let stop = super::stop_on_signal();
    tokio::task::spawn_blocking(move || control::supervise(&o, move || *stop.borrow())).await??;
    Ok(0)
}

async fn up(ctx: &Ctx, a: UpArgs) -> anyhow::Result<u8> {
    let dir = absolute(&a.dir.dir)?;
    let haven = std::env::current_exe().context("the haven binary")?;
    let mut args = vec![
        "--mode".to_string(),
        a.mode.clone(),
        "--lease-ttl-s".into(),
        a.lease_ttl_s.to_string(),
        "--failed-checks".into(),
        a.failed_checks.to_string(),
        "--link-ms".into(),
        a.link_ms.to_string(),
    ];
    if a.no_kafka {
        args.push("--no-kafka".into());
    }
    if a.no_backups {
        args.push("--no-backups".into());
    }
    if !ctx.json {
        eprintln!(
            "starting the lab in {} (log: lab.log there)...",
            dir.display()
        );
    }
    let timeout = Duration::from_secs(a.timeout_s);
    let d = dir.clone();
    let result =
        tokio::task::spawn_blocking(move || control::up(&haven, &d, &args, timeout)).await??;
    let (state, already) = match result {
        Up::Started(s) => (s, false),
        Up::AlreadyUp(s) => (s, true),
    };
    if ctx.json {
        let mut v = serde_json::to_value(&state)?;
        v["already_up"] = serde_json::Value::Bool(already);
        outln!("{v}");
    } else {
        if already {
            outln!(
                "the lab in {} already runs (pid {})",
                dir.display(),
                state.pid
            );
        } else if state.reused {
            outln!(
                "lab up in {:.1} s on the data kept in {}: {} active ({} failover, lease TTL {} s, {} ms between regions)",
                state.startup_s,
                dir.join(haven_lab::SERVERS_DIR).display(),
                state.active.to_uppercase(),
                state.mode,
                state.lease_ttl_s,
                state.link_ms
            );
        } else {
            outln!(
                "lab up in {:.1} s: US active, EU standby ({} failover, lease TTL {} s, {} ms between regions)",
                state.startup_s,
                state.mode,
                state.lease_ttl_s,
                state.link_ms
            );
        }
        print_endpoints(&state);
    }
    Ok(0)
}

fn print_endpoints(s: &LabState) {
    let e = &s.endpoints;
    outln!("  config        {}", s.config.display());
    outln!(
        "  write route   {}  (application role `app`, database `postgres`)",
        e.write_route
    );
    outln!("  postgres us   {}", e.postgres_us);
    outln!("  postgres eu   {}", e.postgres_eu);
    if let (Some(us), Some(eu)) = (&e.kafka_us, &e.kafka_eu) {
        outln!(
            "  kafka         us {us}, eu {eu} (topic {}, mirrored us -> eu)",
            e.topic.as_deref().unwrap_or("-")
        );
    }
    if let (Some(us), Some(eu)) = (&e.s3_us, &e.s3_eu) {
        outln!("  object store  us {us}, eu {eu} (repositories backup-us, backup-eu)");
    }
    if let (Some(us), Some(eu)) = (&e.backup_metrics_us, &e.backup_metrics_eu) {
        outln!("  backups       us {us}, eu {eu}");
    }
    outln!("  etcd          {}", e.etcd.join(", "));
    outln!("  agents        us {}, eu {}", e.agent_us, e.agent_eu);
    outln!("  dns           {} (zone dr.example.)", e.dns);
    outln!(
        "next: haven --config {} failover status",
        s.config.display()
    );
}

async fn down(ctx: &Ctx, a: DownArgs) -> anyhow::Result<u8> {
    let dir = a.dir.dir.clone();
    let timeout = Duration::from_secs(a.timeout_s);
    let started = std::time::Instant::now();
    let d = dir.clone();
    let stopped = tokio::task::spawn_blocking(move || control::down(&d, timeout)).await??;
    let secs = started.elapsed().as_secs_f64();
    if ctx.json {
        outln!(
            "{}",
            serde_json::json!({"dir": dir, "stopped": stopped, "seconds": secs})
        );
    } else if stopped {
        outln!("lab in {} stopped in {secs:.1} s", dir.display());
    } else {
        outln!("no lab runs in {} (nothing to stop)", dir.display());
    }
    Ok(0)
}

async fn status(ctx: &Ctx, a: DirArg) -> anyhow::Result<u8> {
    let dir = a.dir.clone();
    let s: Status = tokio::task::spawn_blocking(move || control::status(&dir)).await??;
    let code = if s.healthy() { 0 } else { 1 };
    if ctx.json {
        outln!("{}", serde_json::to_string(&s)?);
        return Ok(code);
    }
    let Some(state) = &s.state else {
        outln!(
            "no lab in {}: start one with `haven lab up --dir {}`",
            a.dir.display(),
            a.dir.display()
        );
        return Ok(code);
    };
    outln!(
        "lab in {}: supervisor pid {} {}",
        a.dir.display(),
        state.pid,
        if s.running { "running" } else { "NOT running" }
    );
    match (&s.active, s.epoch) {
        (Some(r), Some(e)) => outln!("active region: {r} (epoch {e})"),
        (Some(r), None) => outln!("active region: {r}"),
        _ => outln!("active region: none (no agent claims the lease)"),
    }
    for p in &s.parts {
        outln!(
            "  {:<12} {:<5} {}",
            p.name,
            if p.up { "up" } else { "DOWN" },
            p.address
        );
    }
    Ok(code)
}

async fn fault(ctx: &Ctx, a: FaultArgs) -> anyhow::Result<u8> {
    let dir = a.dir.dir.clone();
    let words = a.fault.clone();
    haven_lab::Fault::parse(&words).map_err(|e| super::usage(format!("{e:#}")))?;
    let at_ms = chrono::Utc::now().timestamp_millis();
    let detail = tokio::task::spawn_blocking(move || control::fault(&dir, &words)).await??;
    if ctx.json {
        outln!(
            "{}",
            serde_json::json!({"fault": a.fault, "at_ms": at_ms, "detail": detail})
        );
    } else {
        outln!("{detail} (at {at_ms} ms)");
    }
    Ok(0)
}
