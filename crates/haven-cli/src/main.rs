//! The `haven` command. One file per command under `commands/`; this file parses the
//! command line, sets up logging and maps errors to exit codes:
//! 0 success, 1 operational failure, 2 bad usage or bad configuration.

#[macro_use]
mod output;
mod commands;
mod metrics_server;
mod observer;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Haven: disaster recovery for Kafka-based architectures.
///
/// Haven backs up Kafka topics (records, topic configs and a timeline of consumer-group
/// commits) into an immutable, verifiable repository on object storage, restores any part
/// of it to any cluster, mirrors topics to another region exactly once, and repairs an
/// event-driven system after one service restored its database (impact, rewind, replay,
/// compensate, recover).
///
/// Start with `haven demo`, which runs everything on a local broker. Named clusters and
/// repositories can live in a haven.toml (see `haven config check --help`).
#[derive(Debug, Parser)]
#[command(
    name = "haven",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    /// Config file [default: $HAVEN_CONFIG, else ./haven.toml if present].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(
        about = "Run Haven end to end on a local broker: produce sample events, back them up, show them."
    )]
    Demo(commands::demo::Args),
    #[command(
        about = "Back up Kafka topics into a repository (continuous, or a snapshot with --once)."
    )]
    Backup(commands::backup::Args),
    #[command(
        about = "List what a repository holds: topics, partitions, offsets, times, gaps, losses."
    )]
    Ls(commands::ls::Args),
    #[command(
        about = "Restore topics (all, some partitions, a time or offset window) into a cluster."
    )]
    Restore(commands::restore::Args),
    #[command(
        about = "Mirror topics to another cluster continuously (exactly once, offsets translated exactly, RPO in seconds); `mirror status`, `mirror translate`."
    )]
    Mirror(commands::mirror::Args),
    #[command(
        about = "What a service's database restore to T0 means: downstream groups that processed the lost events, upstream offsets to rewind to."
    )]
    Impact(commands::impact::Args),
    #[command(
        about = "Set a consumer group's offsets to where they were at an instant (from the backup)."
    )]
    Rewind(commands::rewind::Args),
    #[command(
        about = "Replay a window's events to stdout, a topic, an HTTP endpoint or a Postgres table."
    )]
    Replay(commands::replay::Args),
    #[command(
        about = "Emit compensating events (idempotent) for lost events downstream groups processed."
    )]
    Compensate(commands::compensate::Args),
    #[command(
        about = "Write a recovery plan (rewind, replay, compensate) to review, then apply it."
    )]
    Recover(commands::recover::Args),
    #[command(
        about = "The repository's audit log (hash-chained); `audit verify` checks the chain, `audit sign` pins its end."
    )]
    Audit(commands::audit::Args),
    /// Translate offsets through a restore's offset map.
    #[command(subcommand)]
    Offsets(commands::offsets::Command),
    #[command(about = "Check a repository's integrity: checksums, hash chain, offset continuity.")]
    Verify(commands::verify::Args),
    #[command(
        about = "Delete what is past retention and under no legal hold (a manifest keeps `verify` meaningful); dry run without --apply."
    )]
    Prune(commands::prune::Args),
    /// Legal holds that keep records from `prune` (audited): `hold add|remove|ls`.
    #[command(subcommand)]
    Hold(commands::hold::Command),
    /// Erase a data subject by destroying its key (crypto-shredding; audited).
    Forget(commands::forget::Args),
    /// Key-encryption keys: `key new|rotate|status` (rotation re-wraps data keys, audited).
    #[command(subcommand)]
    Key(commands::key::Command),
    /// Repository copies: `repo sync --from main --to main-eu` (create-only, checked on arrival, resumable).
    #[command(subcommand)]
    Repo(commands::repo::Command),
    /// What a repository keeps until when: `retention report`.
    #[command(subcommand)]
    Retention(commands::retention::Command),
    #[command(about = "Print backed-up records as NDJSON.")]
    Cat(commands::cat::Args),
    /// Measure Haven against baselines run on the same data (ratios, not absolute times).
    #[command(subcommand)]
    Bench(commands::bench::Command),
    #[command(
        about = "Run a region's agent: keep the region lease and answer /lease for load-balancer health checks."
    )]
    Agent(commands::agent::Args),
    #[command(
        about = "Serve the live dashboard, the JSON API and /metrics for the whole DR posture (readiness first)."
    )]
    Serve(commands::serve::Args),
    #[command(
        about = "Make the standby region active when the active one is lost; `failover status`: active region, epoch, RPO ledger."
    )]
    Failover(commands::failover::Args),
    #[command(
        about = "After a failover: capture what the old primary wrote that never crossed, reconcile it, re-apply it once."
    )]
    Failback(commands::failback::Args),
    #[command(
        about = "Move the active region on purpose, losing no acknowledged write (fence, barrier, promote, reverse replication)."
    )]
    Switchover(commands::switchover::Args),
    #[command(
        about = "Print Prometheus alerting rules for Haven's metrics (RPO above target, stalls, losses, lease, agents)."
    )]
    Alerts(commands::alerts::Args),
    /// Work with the configuration file.
    #[command(subcommand)]
    Config(commands::config::Command),
    /// The two-region lab on this machine (etcd, Postgres, Kafka, routes, agents): `lab
    /// up`, `lab status`, `lab down`.
    ///
    /// The seed's architecture on this machine, from the servers `scripts/setup.sh` installs:
    /// three etcd members (US, EU, a witness), a Postgres 15 per region (US publishes, EU
    /// subscribes by logical replication through a link that can be cut), a tansu broker per
    /// region with `ledger.transfers` mirrored US -> EU, HAProxy's write route, a Knot DNS
    /// server taking signed updates, and an agent per region. It writes `DIR/haven.toml`
    /// describing itself: every other command works on it with `--config DIR/haven.toml`.
    ///
    /// Examples:
    ///   haven lab up --dir /tmp/lab                 (US active, EU standby; about 5 s)
    ///   haven --config /tmp/lab/haven.toml failover status
    ///   haven --config /tmp/lab/haven.toml switchover --to eu --yes
    ///   haven lab status --dir /tmp/lab             (exit 0 only when every part answers)
    ///   haven lab down --dir /tmp/lab
    ///   haven lab up --dir /tmp/lab                 (again: on the data it had)
    ///
    /// The lab runs under a supervisor process in its own session (its log: DIR/lab.log),
    /// described in DIR/lab.json. `lab down` stops every server and keeps its data in
    /// DIR/servers (databases, topics, etcd's leases and epochs, object stores, the DNS
    /// zone) on the same ports (DIR/servers/ports.json): the next `lab up` in DIR starts
    /// on it, with the region that was active active again. Remove DIR to start afresh.
    #[command(subcommand, verbatim_doc_comment)]
    Lab(commands::lab::Command),
    /// The reference ledger workload on the lab (`workload ledger`) and its invariants
    /// (`workload check`, W1-W9).
    #[command(subcommand)]
    Workload(commands::workload::Command),
    /// DR drills on the lab (`drill run SCENARIO`, `drill history`): RTO, RPO, split
    /// brain and the ledger's invariants against objectives fixed before the start.
    #[command(subcommand)]
    Drill(commands::drill::Command),
}

/// Global settings every command sees.
pub struct Ctx {
    pub json: bool,
    pub config_path: Option<PathBuf>,
}

fn init_logging(cli: &Cli) {
    // A long-running agent says what it does (lease taken, lost, released) by default.
    let quiet_default = if matches!(cli.command, Command::Agent(_) | Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    let level = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => quiet_default,
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HAVEN_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},librdkafka=off,rdkafka=off"))
    });
    // Colour only for a person at a terminal: never into files and pipes, never with
    // NO_COLOR set (https://no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .init();
}

fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause
            .downcast_ref::<haven_engine::config::ConfigError>()
            .is_some()
        {
            return 2;
        }
        if let Some(engine) = cause.downcast_ref::<haven_engine::Error>() {
            if engine.is_usage() {
                return 2;
            }
        }
        if cause.downcast_ref::<commands::UsageError>().is_some() {
            return 2;
        }
    }
    1
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    init_logging(&cli);
    let ctx = Ctx {
        json: cli.json,
        config_path: cli.config.clone(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo(a) => commands::demo::run(&ctx, a).await,
            Command::Backup(a) => commands::backup::run(&ctx, a).await,
            Command::Ls(a) => commands::ls::run(&ctx, a).await,
            Command::Verify(a) => commands::verify::run(&ctx, a).await,
            Command::Restore(a) => commands::restore::run(&ctx, a).await,
            Command::Mirror(a) => commands::mirror::run(&ctx, a).await,
            Command::Impact(a) => commands::impact::run(&ctx, a).await,
            Command::Rewind(a) => commands::rewind::run(&ctx, a).await,
            Command::Replay(a) => commands::replay::run(&ctx, a).await,
            Command::Compensate(a) => commands::compensate::run(&ctx, a).await,
            Command::Recover(a) => commands::recover::run(&ctx, a).await,
            Command::Audit(a) => commands::audit::run(&ctx, a).await,
            Command::Offsets(c) => commands::offsets::run(&ctx, c).await,
            Command::Cat(a) => commands::cat::run(&ctx, a).await,
            Command::Prune(a) => commands::prune::run(&ctx, a).await,
            Command::Hold(c) => commands::hold::run(&ctx, c).await,
            Command::Key(c) => commands::key::run(&ctx, c).await,
            Command::Forget(a) => commands::forget::run(&ctx, a).await,
            Command::Retention(c) => commands::retention::run(&ctx, c).await,
            Command::Repo(c) => commands::repo::run(&ctx, c).await,
            Command::Config(c) => commands::config::run(&ctx, c).await,
            Command::Failover(c) => commands::failover::run(&ctx, c).await,
            Command::Failback(a) => commands::failback::run(&ctx, a).await,
            Command::Switchover(a) => commands::switchover::run(&ctx, a).await,
            Command::Agent(a) => commands::agent::run(&ctx, a).await,
            Command::Serve(a) => commands::serve::run(&ctx, a).await,
            Command::Alerts(a) => commands::alerts::run(&ctx, a).await,
            Command::Bench(c) => commands::bench::run(&ctx, c).await,
            Command::Lab(c) => commands::lab::run(&ctx, c).await,
            Command::Workload(c) => commands::workload::run(&ctx, c).await,
            Command::Drill(c) => commands::drill::run(&ctx, c).await,
        }
    });
    let result = result.or_else(|e| {
        // A reader that closed stdout (`haven replay --sink stdout | head`) ends the
        // command quietly, like the rest of its output.
        let closed = e.chain().any(|c| {
            matches!(
                c.downcast_ref::<haven_engine::Error>(),
                Some(haven_engine::Error::OutputClosed)
            )
        });
        if closed {
            Ok(0)
        } else {
            Err(e)
        }
    });
    if let Some(e) = output::failure() {
        eprintln!("error: cannot write the output: {e}");
        return ExitCode::from(1);
    }
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = exit_code(&e);
            let message = render_error(&e);
            if ctx_json_requested() {
                let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
                outln!(
                    "{}",
                    serde_json::json!({"error": message, "causes": chain, "exit_code": code})
                );
            }
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

/// The error and its causes on one line, each said once: a cause whose text an outer
/// message already includes is not repeated.
fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let m = cause.to_string();
        if m.is_empty() || out.contains(&m) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&m);
    }
    out
}

/// glibc gives each thread that allocates its own arena (up to 8 per core); with
/// librdkafka's threads that fragments memory. Two arenas keep the peak RSS bounded.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn ctx_json_requested() -> bool {
    std::env::args().any(|a| a == "--json")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    fn commands(c: &clap::Command, out: &mut Vec<clap::Command>) {
        out.push(c.clone());
        for s in c.get_subcommands() {
            commands(s, out);
        }
    }

    /// Every example in every command's --help can be pasted: at the width help is
    /// rendered at (at most 100 columns), no example line is wrapped; longer examples are
    /// split with ` \` continuations.
    #[test]
    fn help_examples_are_never_wrapped() {
        let mut all = Vec::new();
        commands(&super::Cli::command(), &mut all);
        assert!(all.len() > 15);
        for c in all {
            let name = c.get_name().to_string();
            let wide = c
                .clone()
                .max_term_width(1000)
                .term_width(1000)
                .render_long_help()
                .to_string();
            let narrow = c.clone().term_width(100).render_long_help().to_string();
            let narrow_lines: Vec<&str> = narrow.lines().collect();
            let mut continuing = false;
            for line in wide.lines() {
                let example = line.trim_start().starts_with("haven ");
                if example || continuing {
                    assert!(
                        narrow_lines.contains(&line),
                        "`{name} --help` wraps the example line (split it with ` \\`):\n{line}"
                    );
                }
                continuing = (example || continuing) && line.ends_with('\\');
            }
        }
    }
}
