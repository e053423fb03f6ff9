//! `haven agent --region NAME`: the region's long-running agent (its lease loop, today).

use std::sync::Arc;

use haven_engine::failover::agent::{self, Agent};

use super::load_config;
use crate::metrics_server::{serve_routes, Reply};
use crate::Ctx;

/// Run the region's agent: keep the region lease, and answer whether this region may
/// accept writes.
///
/// The agent of the region holding the lease renews it every TTL/5 ([coordination]
/// lease_ttl_s). The configured primary takes the lease when nobody holds it and it was the
/// last active region (a fresh deployment, or its own restart); after a failover the old
/// primary stays out until an operator acts. This region claims to be writable for TTL/2
/// after the start of its last successful renewal, so a holder that is cut off, frozen or
/// without an etcd quorum stops claiming it before another region can take the lease.
///
/// HTTP on --listen (loopback by default):
///   GET /lease    200 and {"region","holder":true,"epoch",...} while this region may accept
///                 writes, 503 otherwise: point load-balancer health checks here
///   GET /metrics  haven_failover_epoch, haven_failover_lease_holder,
///                 haven_failover_lease_valid_seconds
///
/// SIGTERM or Ctrl-C stops it cleanly and releases the lease. Not yet: the standby's
/// automatic takeover, fencing, promotion and routing (see the README).
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
    agent::run(&cfg, &agent, &id, &observer, stop).await?;
    Ok(0)
}
