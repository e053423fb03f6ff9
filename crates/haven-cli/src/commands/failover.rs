//! `haven failover status`: the active region, its epoch, and what a failover would lose.

use haven_engine::failover::status;

use super::load_config;
use crate::{output, Ctx};

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

pub async fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<u8> {
    let Command::Status = cmd;
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
