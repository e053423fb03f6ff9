//! `haven failover --to REGION`: the unplanned move of the active region; `haven failover
//! status`: the active region, its epoch, and what a failover would lose.

use haven_engine::failover::plan::Kind;
use haven_engine::failover::status;

use super::load_config;
use super::switchover::RunArgs;
use crate::{output, Ctx};

/// Make another region active when the active one is lost (or see the state with `status`).
///
/// Only once the active region's lease has expired (the etcd quorum no longer hears it):
/// take the lease for the target (the fencing epoch goes up by one), close what can still
/// be reached of the old region (its routes, its databases' application roles), drop the
/// target's subscriptions without contacting the old region (keeping remote_lsn: how far
/// it had replicated), set sequences past anything the old region may have used
/// ([databases.NAME] sequence_gap), publish, let the application roles in, open the
/// target's write routes. Reports what was replicated and how stale it was.
///
/// --force takes the lease from a holder that still renews it: only after you have
/// confirmed the old region is down and cannot write (hosts off, or cut off from clients).
/// When etcd itself has no quorum, no region can take the lease and writes stop by design;
/// --force cannot change that (rebuild etcd from a surviving member first).
///
/// A failed step leaves the system fenced; re-run the same command to continue.
///
/// Examples:
///   haven failover status
///   haven failover --to eu --dry-run
///   haven failover --to eu --yes
///   haven failover --to eu --force --yes
#[derive(Debug, clap::Args)]
#[command(
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The region to make active.
    #[arg(long, value_name = "REGION", required = true)]
    pub to: Option<String>,
    /// Take the lease even though its holder still renews it (break glass).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Which region is active and with which fencing epoch, and the RPO ledger.
    ///
    /// Reads the lease and the epoch from the etcd members of [coordination] (and asks each
    /// member about itself: up, leader, version), and for the
    /// region that does not hold the lease, the mirror that copies into it ([regions.NAME]
    /// mirror_in): per partition the lag in records and seconds and exactly which records an
    /// unplanned failover now would lose. Whatever cannot be read (etcd without quorum, a
    /// cluster down) is listed as unknown; the exit code is then 1.
    ///
    /// Examples:
    ///   haven failover status
    ///   haven --json failover status --config /etc/haven/haven.toml
    #[command(verbatim_doc_comment)]
    Status,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    match (a.command, a.to) {
        (Some(Command::Status), _) => status_cmd(ctx).await,
        (None, Some(to)) => {
            super::switchover::run_plan(ctx, Kind::Failover, &to, a.force, &a.run).await
        }
        (None, None) => Err(super::usage("say --to REGION, or `haven failover status`")),
    }
}

async fn status_cmd(ctx: &Ctx) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let st = status::status(&cfg).await?;
    let code = if st.unknown.is_empty() { 0 } else { 1 };
    if ctx.json {
        output::json(&st)?;
        return Ok(code);
    }
    outln!(
        "active region: {} (epoch {}{})",
        st.active
            .as_deref()
            .unwrap_or("none: nobody holds the lease"),
        st.epoch,
        st.agent
            .as_deref()
            .map(|a| format!(", agent {a}"))
            .unwrap_or_default()
    );
    outln!(
        "configured: primary {}, standby {}, mode {}",
        st.primary,
        st.standby,
        st.mode
    );
    let rows: Vec<Vec<String>> = st
        .regions
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.cluster.clone(),
                r.configured_as.clone(),
                if r.active { "active" } else { "-" }.into(),
            ]
        })
        .collect();
    output::table(&["REGION", "CLUSTER", "CONFIGURED", "LEASE"], &rows);
    outln!();
    let rows: Vec<Vec<String>> = st
        .members
        .iter()
        .map(|m| {
            vec![
                m.endpoint.clone(),
                if !m.up {
                    "DOWN".into()
                } else if m.leader {
                    "leader".into()
                } else if m.has_leader {
                    "follower".into()
                } else {
                    "up, no leader (no quorum?)".into()
                },
                m.version.clone().unwrap_or_default(),
                m.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(&["ETCD MEMBER", "STATE", "VERSION", "ERROR"], &rows);
    outln!(
        "etcd quorum: {} ({} of {} members up)",
        if st.quorum {
            "yes"
        } else {
            "NO: no region can take or renew the lease"
        },
        st.members.iter().filter(|m| m.up).count(),
        st.members.len()
    );
    if !st.ledger.is_empty() {
        outln!();
        let rows: Vec<Vec<String>> = st
            .ledger
            .iter()
            .map(|l| {
                let p = &l.partition;
                vec![
                    l.into.clone(),
                    format!("{}/{}", p.topic, p.partition),
                    p.lag_records.to_string(),
                    format!("{:.1}", p.lag_seconds),
                    match &p.at_risk {
                        None => "nothing".into(),
                        Some(r) => format!("offsets {}..={} ({} records)", r.from, r.to, r.records),
                    },
                ]
            })
            .collect();
        output::table(
            &[
                "INTO",
                "PARTITION",
                "LAG",
                "LAG-S",
                "LOST IF FAILED OVER NOW",
            ],
            &rows,
        );
    }
    if !st.databases.is_empty() {
        outln!();
        let rows: Vec<Vec<String>> = st
            .databases
            .iter()
            .map(|d| {
                vec![
                    d.database.clone(),
                    d.source.clone(),
                    d.lag_seconds
                        .map(|s| format!("{s:.1}"))
                        .unwrap_or_else(|| "?".into()),
                    d.lag_bytes
                        .map(|b| b.to_string())
                        .unwrap_or_else(|| "?".into()),
                    d.remote_lsn.clone().unwrap_or_else(|| "?".into()),
                ]
            })
            .collect();
        output::table(
            &[
                "REPLICA",
                "SOURCE",
                "LAG-S",
                "LAG-BYTES",
                "APPLIED UP TO (remote_lsn)",
            ],
            &rows,
        );
    }
    outln!(
        "RPO now: {:.1} s, {} records at risk",
        st.rpo_seconds,
        st.records_at_risk
    );
    for u in &st.unknown {
        outln!("UNKNOWN {u}");
    }
    Ok(code)
}
