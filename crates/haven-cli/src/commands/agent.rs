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
/// [notify.*] receivers are told of failover steps, fencing (route closed, lease lost),
/// automatic failovers and what blocks one; with --dashboard also of RPO breaches and
/// other posture findings (triggered, then resolved).
///
///   GET /lease    200 and {"region","holder":true,"epoch",...} while this region may accept
///                 writes, 503 otherwise: point load-balancer health checks here
///   GET /metrics  haven_failover_epoch, haven_failover_lease_holder,
///                 haven_failover_lease_valid_seconds
/// With --dashboard the same address also serves `haven serve`'s dashboard, API and
/// posture metrics (see `haven serve --help`), so each region has one.
///
/// With [audit] in haven.toml it also signs the end of the listed repositories' audit
/// chains every sign_every_s and copies each head to copy_to (see `haven audit --help`).
///
/// With [drills.NAME] sections whose region is this one, it runs each restore test when
/// it is due: every_s after the last report stored (see `haven drill schedule --help`).
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

    /// Also serve the dashboard and the JSON API on --listen (as `haven serve`).
    #[arg(long)]
    dashboard: bool,

    /// With --dashboard: API tokens, one `NAME ROLE TOKEN` per line.
    #[arg(long, value_name = "FILE", requires = "dashboard")]
    tokens_file: Option<std::path::PathBuf>,

    /// With --dashboard: seconds between two readings of the posture.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 5.0,
        requires = "dashboard"
    )]
    refresh: f64,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let agent = Agent::new(&a.region);
    let state_dir = a
        .state_dir
        .clone()
        .unwrap_or_else(super::switchover::default_state_dir);
    let notifier = haven_engine::notify::Notifier::start(
        &cfg.notify,
        &format!("agent {}@{}", a.region, super::hostname()),
    );
    let bound = if a.dashboard {
        dashboard(&cfg, &agent, &a, &state_dir, &notifier).await?
    } else {
        let face = agent.clone();
        serve_routes(
            &a.listen,
            "--listen",
            Arc::new(move |path: &str| match path {
                "/lease" => {
                    let (holder, body) = lease(&face);
                    Reply {
                        status: if holder {
                            "200 OK"
                        } else {
                            "503 Service Unavailable"
                        },
                        content_type: "application/json",
                        body,
                    }
                }
                "/metrics" => Reply::ok("text/plain; version=0.0.4", face.render_metrics()),
                _ => Reply::not_found("try GET /lease or GET /metrics\n"),
            }),
        )
        .await?
    };
    let id =
        a.id.clone()
            .unwrap_or_else(|| format!("{}@{}", a.region, super::hostname()));
    eprintln!(
        "agent {id} of region {}: /lease and /metrics at http://{bound}",
        a.region
    );
    let cli = crate::observer::CliObserver::new(ctx.json);
    let observer = haven_engine::events::Tee(&cli, &notifier);
    let stop = super::stop_on_signal();
    // [audit]: signed heads of the audit chains, on schedule, beside the lease loop.
    let heads = cfg
        .audit
        .as_ref()
        .map(haven_engine::recovery::audit_heads::schedule)
        .transpose()?;
    let signer = async {
        if let (Some(section), Some((key, every))) = (&cfg.audit, &heads) {
            haven_engine::recovery::audit_heads::sign_every(
                &cfg,
                &section.repositories,
                &section.copy_to,
                key,
                *every,
                &observer,
                stop.clone(),
            )
            .await;
        }
        // Never ends by itself: the agent's loop decides when the process stops.
        std::future::pending::<()>().await
    };
    // [drills.NAME] of this region: restore tests, each when it is due.
    let restore_tests = async {
        haven_engine::drill::schedule::run_due(&cfg, &a.region, &id, &observer, stop.clone()).await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        ran = agent::run(&cfg, &agent, &id, &state_dir, &observer, stop.clone()) => ran?,
        () = signer => {}
        () = restore_tests => {}
    }
    Ok(0)
}

/// What /lease answers: whether this region may accept writes, and the agent's view.
fn lease(agent: &Agent) -> (bool, String) {
    let v = agent.view();
    (
        v.holder,
        serde_json::to_string(&v).unwrap_or_default() + "\n",
    )
}

/// --dashboard: `haven serve` on the agent's address, /lease and the agent's metrics added.
async fn dashboard(
    cfg: &haven_engine::config::Config,
    agent: &Agent,
    a: &Args,
    state_dir: &std::path::Path,
    notifier: &haven_engine::notify::Notifier,
) -> anyhow::Result<std::net::SocketAddr> {
    use haven_http::axum::{http::StatusCode, routing::get, Router};
    let face = agent.clone();
    let routes = Router::new().route(
        "/lease",
        get(move || {
            let (holder, body) = lease(&face);
            let status = if holder {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            async move {
                (
                    status,
                    [(
                        haven_http::axum::http::header::CONTENT_TYPE,
                        "application/json",
                    )],
                    body,
                )
            }
        }),
    );
    let metrics = agent.clone();
    let opts = haven_http::ServeOptions {
        listen: a.listen.clone(),
        tokens: super::serve::load_tokens(a.tokens_file.as_deref())?,
        refresh: super::serve::refresh(a.refresh)?,
        state_dir: state_dir.to_path_buf(),
        extra_metrics: Some(Arc::new(move || metrics.render_metrics())),
        notifier: notifier.clone(),
    };
    let (bound, _) = haven_http::serve_with(cfg.clone(), opts, routes)
        .await
        .map_err(|e| super::usage(e.to_string()))?;
    Ok(bound)
}
