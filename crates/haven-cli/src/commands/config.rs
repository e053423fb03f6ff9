//! `haven config check`: validate a config file and print what it understood.

use std::path::PathBuf;

use haven_engine::config::{Config, EXAMPLE};

use crate::{output, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate a config file and print what Haven understood from it.
    ///
    /// The file is --config FILE, else $HAVEN_CONFIG, else ./haven.toml. Unknown keys are
    /// errors. Exit code 0 when valid, 2 when not.
    #[command(after_help = format!("Example haven.toml:\n\n{EXAMPLE}"))]
    Check {
        /// The file to check (same as the global --config).
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Print an example config file (with --json: the same settings as one JSON document,
    /// keys as in the TOML).
    Example,
}

pub async fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<u8> {
    match cmd {
        Command::Example => {
            if ctx.json {
                let value: toml::Value = toml::from_str(EXAMPLE)?;
                output::json(&value)?;
            } else {
                out!("{EXAMPLE}");
            }
            Ok(0)
        }
        Command::Check { file } => {
            let flag = file.or_else(|| ctx.config_path.clone());
            let (path, _) = Config::locate(flag.as_deref());
            let text = std::fs::read_to_string(&path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    anyhow::Error::new(haven_engine::config::ConfigError::NotFound {
                        path: path.clone(),
                    })
                } else {
                    anyhow::Error::new(haven_engine::config::ConfigError::Io {
                        path: path.clone(),
                        source: e,
                    })
                }
            })?;
            let cfg = Config::parse(&text, &path)?;
            if ctx.json {
                output::json(&serde_json::json!({"file": path, "valid": true, "config": cfg}))?;
                return Ok(0);
            }
            outln!("{}: valid", path.display());
            outln!("clusters: {}", cfg.clusters.len());
            for (n, c) in &cfg.clusters {
                outln!(
                    "  {n}: bootstrap {} region {}{}",
                    c.bootstrap,
                    c.region.as_deref().unwrap_or("(none)"),
                    if c.properties.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " properties {}",
                            c.properties.keys().cloned().collect::<Vec<_>>().join(",")
                        )
                    }
                );
                for (k, r) in &c.secret_properties {
                    outln!("    secret {k} from {r}");
                }
            }
            outln!("repositories: {}", cfg.repositories.len());
            for (n, r) in &cfg.repositories {
                outln!(
                    "  {n}: {} region {}{}",
                    r.url,
                    r.region.as_deref().unwrap_or("(none)"),
                    if r.key_file.is_some() {
                        " encrypted"
                    } else {
                        ""
                    }
                );
            }
            outln!("jobs: {}", cfg.jobs.len());
            for (n, j) in &cfg.jobs {
                outln!(
                    "  {n}: {:?} topics /{}/ from cluster {} to repository {}",
                    j.kind,
                    j.topics,
                    j.cluster,
                    j.repository
                );
            }
            outln!("mirrors: {}", cfg.mirrors.len());
            for (n, m) in &cfg.mirrors {
                outln!(
                    "  {n}: topics /{}/ from cluster {} to cluster {}{}",
                    m.topics,
                    m.from,
                    m.to,
                    if m.groups.is_empty() {
                        String::new()
                    } else {
                        format!(", groups {}", m.groups.join(","))
                    }
                );
            }
            outln!("residency rules: {}", cfg.residency.len());
            for (n, r) in &cfg.residency {
                outln!(
                    "  {n}: topics /{}/ only in {}",
                    r.topics,
                    r.regions.join(", ")
                );
            }
            outln!("services: {}", cfg.services.len());
            for (n, s) in &cfg.services {
                outln!(
                    "  {n}: produces {} consumes {} with groups {}",
                    s.produces.join(","),
                    s.consumes.join(","),
                    s.groups.join(",")
                );
            }
            if let Some(c) = &cfg.coordination {
                outln!(
                    "coordination: etcd {} (keys /haven/{}/), lease TTL {} s",
                    c.endpoints.join(","),
                    c.cluster,
                    c.lease_ttl_s
                );
            }
            outln!("regions: {}", cfg.regions.len());
            for (n, r) in &cfg.regions {
                outln!(
                    "  {n}: cluster {}{}",
                    r.cluster,
                    r.mirror_in
                        .as_deref()
                        .map(|m| format!(", mirrored into by {m}"))
                        .unwrap_or_default()
                );
            }
            if let Some(f) = &cfg.failover {
                outln!(
                    "failover: primary {}, standby {}, mode {:?}; gates: at most {} records and {} s at risk, {} failed checks, one automatic failover per {} s",
                    f.primary,
                    f.standby,
                    f.mode,
                    f.max_records_at_risk,
                    f.max_seconds_at_risk,
                    f.failed_checks,
                    f.min_interval_s
                );
            }
            Ok(0)
        }
    }
}
