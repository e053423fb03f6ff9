//! `haven agent --region NAME`: the region's long-running agent: lease loop, fencing of its
//! own region, heartbeat, and the standby's automatic failover.

use std::sync::Arc;

use haven_engine::failover::agent::{self, Agent};

use super::load_config;
use crate::metrics_server::{serve_routes, Reply};
use crate::Ctx;

/// Run the region's agent: keep the region lease, fence the region whenever it may not
/// take writes, and (in automatic mode, on the standby) fail over.
///
/// The agent of the region holding the lease renews it every TTL/5 ([coordination]
/// lease_ttl_s) and stamps the heartbeat on its databases. A region takes a free lease by
/// itself only if it was the last active region (or is the primary of a fresh deployment):
/// after a failover the old primary stays out until an operator acts. A lease a switchover
/// or failover took for this region is carried on (adopted). This region claims to be
/// writable for TTL/2 after the start of its last successful renewal, so a holder that is
/// cut off, frozen or without an etcd quorum stops claiming it before another region can
/// take the lease.
///
/// Whenever this region does not claim the lease (standby, lease lost, etcd unreachable)
/// the agent fences it: its HAProxy write routes go to maintenance (sessions cut) and its
/// databases' application roles lose LOGIN and CONNECT. When it takes its lease back by
/// itself it lets them in again and opens its routes.
///
/// With [failover] mode = "automatic", the standby's agent runs `haven failover --to` itself
/// once the lease has been free for failed_checks rounds and the gates pass (data at risk as
/// last measured, one automatic failover per min_interval_s, never a failback).
///
/// HTTP on --listen (loopback by default):
///   GET /lease    200 and {"region","holder":true,"epoch",...} while this region may accept
///                 writes, 503 otherwise: point load-balancer health checks here
///   GET /metrics  haven_failover_epoch, haven_failover_lease_holder,
///                 haven_failover_lease_valid_seconds
///
/// SIGTERM or Ctrl-C stops it cleanly and releases the lease.
///
/// Example:
///   haven agent --region us --config /etc/haven/haven.toml --listen 127.0.0.1:8008
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// This agent's region (a name from [regions]).
    #[arg(long, value_name = "NAME")]
    region: String,

    /// Address for /lease and /metrics.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8008")]
    listen: String,

    /// This agent's id in etcd (default: REGION@HOSTNAME).
    #[arg(long, value_name = "ID")]
    id: Option<String>,

    /// Where failover plans, their progress and the audit log are kept.
    #[arg(long, value_name = "DIR", env = "HAVEN_STATE_DIR")]
    state_dir: Option<std::path::PathBuf>,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let agent = Agent::new(&a.region);
    let face = agent.clone();
    let bound = serve_routes(
        &a.listen,
        "--listen",
        Arc::new(move |path: &str| match path {
            "/lease" => {
                let v = face.view();
                let body = serde_json::to_string(&v).unwrap_or_default() + "\n";
                if v.holder {
                    Reply::ok("application/json", body)
                } else {
                    Reply {
                        status: "503 Service Unavailable",
                        content_type: "application/json",
                        body,
                    }
                }
            }
            "/metrics" => Reply::ok("text/plain; version=0.0.4", face.render_metrics()),
            _ => Reply::not_found("try GET /lease or GET /metrics\n"),
        }),
    )
    .await?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let id = a.id.unwrap_or_else(|| format!("{}@{host}", a.region));
    eprintln!(
        "agent {id} of region {}: /lease and /metrics at http://{bound}",
        a.region
    );
    let observer = crate::observer::CliObserver::new(ctx.json);
    let stop = super::stop_on_signal();
    let state_dir = a
        .state_dir
        .unwrap_or_else(super::switchover::default_state_dir);
    agent::run(&cfg, &agent, &id, &state_dir, &observer, stop).await?;
    Ok(0)
}
