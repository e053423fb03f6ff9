//! `haven alerts`: Prometheus alerting rules for the metrics Haven's processes export.

use haven_engine::alerts::{self, Thresholds};

use super::usage;
use crate::{output, Ctx};

/// Print Prometheus alerting rules for Haven's metrics (a rule file for `rule_files:`).
///
/// One rule per condition to act on, each with a severity, a summary and a runbook line:
/// backup or mirror lag above the RPO target (per partition, in seconds: what a lost
/// region would lose now), a backup or mirror making no progress while records wait,
/// records the broker deleted before the backup read them, no region holding the lease
/// (writes stopped), fewer than two region agents reporting (no standby), the fencing
/// epoch moving (a switchover or failover happened), group-offset syncs refused; and from
/// `haven serve`'s posture metrics: a replica behind the RPO target, the last drill failed,
/// no passing drill or tested restore for too long, a repository's segment or audit chain
/// broken, the posture reading stale.
///
/// Scrape every Haven process's /metrics (`--metrics-addr` of backup and mirror, the
/// agent's --listen, `haven serve`). Check the file with `promtool check rules FILE`.
///
/// Examples:
///   haven alerts > /etc/prometheus/haven-rules.yml
///   haven alerts --rpo-s 30 --stall-s 120
///   haven --json alerts
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// RPO target: backup or mirror lag above it alerts (the seed's target is a minute).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub rpo_s: u64,
    /// A backup or mirror with lag that makes no progress this long alerts.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub stall_s: u64,
    /// How long lag must stay above the target before the RPO alerts fire.
    #[arg(long = "for-s", default_value_t = 60, value_name = "SECONDS")]
    pub for_s: u64,
    /// No passing drill for this many days alerts (auditors ask for one a quarter).
    #[arg(long, default_value_t = 90, value_name = "DAYS")]
    pub drill_max_age_days: u64,
    /// No tested restore for this many days alerts.
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    pub restore_test_max_age_days: u64,
    /// Name of the rule group.
    #[arg(long, default_value = "haven")]
    pub group: String,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    if a.rpo_s == 0 || a.stall_s == 0 {
        return Err(usage(
            "--rpo-s and --stall-s must be at least 1 second (an alert at 0 would always fire)",
        ));
    }
    if a.drill_max_age_days == 0 || a.restore_test_max_age_days == 0 {
        return Err(usage(
            "--drill-max-age-days and --restore-test-max-age-days must be at least 1",
        ));
    }
    if a.group.trim().is_empty() {
        return Err(usage("--group must not be empty"));
    }
    let t = Thresholds {
        rpo_s: a.rpo_s,
        stall_s: a.stall_s,
        for_s: a.for_s,
        drill_max_age_days: a.drill_max_age_days,
        restore_test_max_age_days: a.restore_test_max_age_days,
    };
    let rules = alerts::rules(&t);
    if ctx.json {
        output::json(&serde_json::json!({"group": a.group, "thresholds": t, "rules": rules}))?;
    } else {
        output::write(format_args!("{}", alerts::to_yaml(&a.group, &rules)));
    }
    Ok(0)
}
