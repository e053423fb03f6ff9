//! `haven repo sync`: keep a copy of a repository in another store.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use haven_engine::repo::sync::{self, SyncTarget};

use super::{input, load_config, usage};
use crate::{output, Ctx};

/// Repository operations.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Copy a repository into another store (the other region's) and keep the copy up to
    /// date, object for object, so that `haven verify` passes on the copy alone.
    ///
    /// Each object is copied create-only under the same key and read back (same SHA-256;
    /// a segment must also verify and extend the copy's hash chain). Objects go in an
    /// order that keeps the copy verifiable whenever the sync is killed (audit chain and
    /// prune manifests, then segments in log order, then the rest), and a re-run copies
    /// only what is missing: a killed sync resumes where it stopped. Residency rules hold:
    /// a segment with a topic pinned to regions the target (its `region`) is not in is
    /// never copied; the sync stops before it, says why (exit 1) and records
    /// `repo-sync-refused` in the source's audit chain. Each pass prints the copy's lag in
    /// objects and in seconds (the oldest segment not yet copied).
    ///
    /// Examples:
    ///   haven repo sync --from main --to main-eu --once
    ///   haven repo sync --from main --to main-eu --interval 10      (until Ctrl-C)
    #[command(verbatim_doc_comment)]
    Sync(SyncArgs),
}

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The repository to copy: a name from haven.toml (or a URL).
    #[arg(long, value_name = "NAME|URL")]
    from: String,
    /// Where the copy lives: a name from haven.toml (its `region` is checked against the
    /// residency rules), or a URL (no region: pinned topics are refused there).
    #[arg(long, value_name = "NAME|URL")]
    to: String,
    /// One pass, then exit (otherwise: a pass every --interval seconds until Ctrl-C).
    #[arg(long)]
    once: bool,
    /// Seconds between passes.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    interval: f64,
    /// File holding the source's master key, if encrypted (only to open it; segments are
    /// copied as they are, still encrypted).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
}

pub async fn run(ctx: &Ctx, c: Command) -> anyhow::Result<u8> {
    let Command::Sync(a) = c;
    if !(a.interval.is_finite() && a.interval > 0.0) {
        return Err(usage("--interval must be a positive number of seconds"));
    }
    let cfg = load_config(ctx)?;
    let from = cfg.repository(&a.from);
    let to = cfg.repository(&a.to);
    if from.url == to.url && from.options == to.options {
        return Err(usage(format!(
            "--from and --to are the same store ({}): give the other region's repository",
            from.url
        )));
    }
    let source = haven_engine::repo::open_configured(&from, a.key_file.as_deref(), false)
        .await
        .map_err(|e| anyhow::anyhow!("repository {}: {e}", a.from))?;
    let store = haven_engine::repo::store_of(&to).map_err(input)?;
    let rules = cfg.residency_rules();
    let target = SyncTarget {
        name: &a.to,
        store: &store,
        region: to.region.as_deref(),
        residency: &rules,
    };
    let mut refused = BTreeSet::new();
    loop {
        let r = sync::sync_once(&source, &target, &mut refused)
            .await
            .map_err(input)?;
        if ctx.json {
            output::json(&r)?;
        } else {
            outln!(
                "{} -> {}: lag {} objects, {:.1} s; copied {} objects ({} segments, {}); copy head {}",
                a.from,
                a.to,
                r.lag_objects,
                r.lag_seconds,
                r.copied_objects,
                r.copied_segments,
                output::bytes(r.copied_bytes),
                r.target_head.as_deref().unwrap_or("(empty log)")
            );
        }
        if let Some(why) = &r.refused {
            eprintln!("refused: {why}");
            if a.once {
                return Ok(1);
            }
        }
        if a.once {
            return Ok(0);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(a.interval)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
    }
}
