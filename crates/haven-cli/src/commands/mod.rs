//! One file per command. Shared arguments and helpers live here.

pub mod agent;
pub mod alerts;
pub mod audit;
pub mod backup;
pub mod bench;
pub mod cat;
pub mod compensate;
pub mod config;
pub mod demo;
pub mod drill;
pub mod failback;
pub mod failover;
pub mod forget;
pub mod hold;
pub mod impact;
pub mod key;
pub mod lab;
pub mod ls;
pub mod mirror;
pub mod offsets;
pub mod prune;
pub mod recover;
pub mod replay;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod rewind;
pub mod serve;
pub mod switchover;
pub mod verify;
pub mod workload;

use std::path::PathBuf;

use anyhow::Context;
use haven_engine::config::Config;
use haven_engine::repo::Repository;
use haven_kafka::ClusterConfig;

use crate::Ctx;

/// Bad usage detected by the CLI itself (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// An engine error, bad input exiting 2 (usage) and the rest 1.
pub fn input(e: haven_engine::Error) -> anyhow::Error {
    match e {
        haven_engine::Error::Input(m) => usage(m),
        e => e.into(),
    }
}

/// Which repository, and its key.
#[derive(Debug, clap::Args)]
pub struct RepoArgs {
    /// Repository: a name from haven.toml, a URL (file:///PATH, s3://BUCKET/PREFIX) or a path.
    #[arg(long, env = "HAVEN_REPO", value_name = "NAME|URL")]
    pub repo: String,

    /// File holding the repository's keys (64 hex digits each, one per line; the first
    /// encrypts a new repository; old keys may stay for reading after `haven key rotate`).
    /// Also: HAVEN_KEY (keys separated by commas).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

/// Reading a repository that may be damaged.
#[derive(Debug, clap::Args)]
pub struct DamageArgs {
    /// Read what is intact of a damaged repository: leave out unreadable segments and
    /// ranges held twice, and print (on stderr) exactly which offsets are missing. Without
    /// it a damaged repository is refused (exit 1) naming the first problem.
    #[arg(long)]
    pub skip_damaged: bool,
}

/// The catalog a reader works from: refused when damaged, unless `skip_damaged`, which
/// says on stderr what it leaves out, and refused when the keys given do not open every
/// segment (before anything is read).
pub async fn load_for_reading(
    repo: &Repository,
    skip_damaged: bool,
) -> anyhow::Result<haven_engine::repo::RepoState> {
    let state = load_for_listing(repo, skip_damaged).await?;
    repo.ensure_readable(&state)?;
    Ok(state)
}

/// [`load_for_reading`] for a command that lists the catalog and reads no record.
pub async fn load_for_listing(
    repo: &Repository,
    skip_damaged: bool,
) -> anyhow::Result<haven_engine::repo::RepoState> {
    let state = repo.load_state_for_listing(skip_damaged).await?;
    if skip_damaged {
        for d in state.damage() {
            eprintln!("warning: damaged: {}: {}", d.object, d.what);
        }
        for m in state.missing_ranges() {
            eprintln!(
                "warning: missing: {}/{} offsets {}..{} (in no intact segment)",
                m.topic, m.partition, m.from, m.to
            );
        }
    }
    Ok(state)
}

/// Which Kafka cluster.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Kafka cluster: a name from haven.toml or HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "HAVEN_BROKERS", value_name = "NAME|HOST:PORT")]
    pub brokers: String,
}

pub fn load_config(ctx: &Ctx) -> anyhow::Result<Config> {
    Ok(Config::load(ctx.config_path.as_deref())?.0)
}

/// Resolves `--brokers` (a cluster name from haven.toml, or HOST:PORT[,HOST:PORT...]):
/// anything else is refused at once (exit 2) instead of being retried as an address.
pub fn cluster(cfg: &Config, args: &ClusterArgs) -> anyhow::Result<ClusterConfig> {
    let c = cfg.cluster(&args.brokers);
    haven_engine::config::check_bootstrap(&c.bootstrap).map_err(|why| {
        usage(format!(
            "--brokers {:?}: {why}; give a cluster name from haven.toml or HOST:PORT[,HOST:PORT...]",
            args.brokers
        ))
    })?;
    c.client_config().map_err(input)
}

/// Opens (or, with `create`, creates) the repository named by the arguments.
pub async fn open_repo(cfg: &Config, args: &RepoArgs, create: bool) -> anyhow::Result<Repository> {
    let section = cfg.repository(&args.repo);
    haven_engine::repo::open_configured(&section, args.key_file.as_deref(), create)
        .await
        .map_err(|e| match e {
            haven_engine::Error::Input(m) => usage(m),
            e => anyhow::Error::from(e),
        })
        .with_context(|| format!("repository {}", section.url))
}

/// `--from`/`--to`: a plain number below 10^12 is an offset, anything else a time
/// (RFC 3339, epoch milliseconds, or relative like -15m).
pub fn parse_bound(s: Option<&str>, now: i64) -> anyhow::Result<haven_engine::read::Bound> {
    use haven_engine::read::Bound;
    Ok(match s {
        None => Bound::Unbounded,
        Some(t) => match t.parse::<i64>() {
            Ok(n) if (0..1_000_000_000_000).contains(&n) => Bound::Offset(n),
            _ => Bound::Time(
                haven_engine::time::parse_instant(t, now).map_err(|e| usage(e.to_string()))?,
            ),
        },
    })
}

/// Parses an instant flag (RFC 3339, epoch ms, or relative like -15m).
pub fn instant(flag: &str, text: &str) -> anyhow::Result<i64> {
    let now = chrono::Utc::now().timestamp_millis();
    haven_engine::time::parse_instant(text, now).map_err(|e| usage(format!("{flag} {text:?}: {e}")))
}

/// Asks before an action that changes a cluster: `--yes` skips the question; without a
/// terminal to ask on, the action is refused (exit 2) rather than taken silently.
pub fn confirm(yes: bool, what: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(usage(format!(
            "{what}: refusing to change the cluster without confirmation; review with --dry-run, then pass --yes"
        )));
    }
    eprint!("{what}\nProceed? [y/N] ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if matches!(line.trim(), "y" | "Y" | "yes" | "YES") {
        Ok(())
    } else {
        Err(usage("cancelled"))
    }
}

/// A flag that turns true on Ctrl-C or SIGTERM: long-running jobs finish cleanly on it.
/// This machine's name (for bodies, agent ids).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    rx
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// The observer of a long-running job (`backup`, `mirror`): logs and progress, and
/// Prometheus metrics at `metrics_addr` when given.
pub async fn job_observer(
    ctx: &Ctx,
    metrics_addr: Option<&str>,
    job: &'static str,
) -> anyhow::Result<crate::observer::CliObserver> {
    let mut observer = crate::observer::CliObserver::new(ctx.json);
    if let Some(addr) = metrics_addr {
        let metrics = std::sync::Arc::new(haven_engine::metrics::Metrics::for_job(job));
        let bound = crate::metrics_server::serve(addr, metrics.clone()).await?;
        tracing::info!("metrics at http://{bound}/metrics");
        observer = observer.with_metrics(metrics);
    }
    Ok(observer)
}
