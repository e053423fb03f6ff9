//! `haven serve`: the dashboard, the JSON API and /metrics for the whole DR posture.

use std::time::Duration;

use haven_http::{ServeOptions, Tokens};

use super::{load_config, usage};
use crate::Ctx;

/// Serve the live dashboard, the JSON API and /metrics for everything haven.toml names.
///
/// Every REFRESH seconds it reads the posture from the systems themselves: the active
/// region and its epoch (etcd), per mirrored partition and replica what a failover now
/// would lose (the RPO ledger), per backup job the durable offset against the high
/// watermark, the repositories' segment and audit chains, the drills and the last restore
/// test. It judges them against [objectives] (RPO, RTO, drill and restore-test ages) and
/// says "ready", "degraded: ..." or "not ready: ..." first.
///
///   /                 the dashboard (updates itself every 2 s; says when its data is stale)
///   /api/v1           the API's index: posture, readiness, regions, rpo, backups, mirrors,
///                     postgres, drills, audit, alerts, history, operations, switchover
///   /metrics          the posture for Prometheus (rules: `haven alerts`)
///
/// [notify.*] receivers are told when a finding appears (RPO above target, a stall, no
/// standby, a drill overdue, ...) and when it is resolved, with a stable dedup key.
///
/// Security: it listens on loopback unless told otherwise, and refuses any other address
/// without tokens. With --tokens-file (lines `NAME ROLE TOKEN`, ROLE viewer or operator;
/// or the same lines in HAVEN_API_TOKENS) every request needs `Authorization: Bearer TOKEN`:
/// viewers read, operators may also start a switchover (POST /api/v1/switchover, audited
/// with the token's name in the state directory). Open the dashboard with a token once as
/// http://HOST:PORT/#token=TOKEN (kept in that browser tab only).
///
/// Examples:
///   haven serve --config /etc/haven/haven.toml
///   haven serve --listen 0.0.0.0:8080 --tokens-file /etc/haven/api-tokens
///   curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/api/v1/readiness
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// API tokens, one `NAME ROLE TOKEN` per line (ROLE viewer or operator).
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<std::path::PathBuf>,

    /// Seconds between two readings of the posture (the page polls the API every 2 s and
    /// is answered from the last reading). A reading slower than this is followed by a
    /// pause as long as it took, so the clusters are read at most half the time.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub refresh: f64,

    /// Where switchover plans, their progress and the audit log are kept.
    #[arg(long, value_name = "DIR", env = "HAVEN_STATE_DIR")]
    pub state_dir: Option<std::path::PathBuf>,
}

/// Tokens from `--tokens-file`, else `HAVEN_API_TOKENS`, else none.
pub fn load_tokens(file: Option<&std::path::Path>) -> anyhow::Result<Tokens> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| usage(format!("--tokens-file {}: {e}", f.display())))?;
        return Tokens::parse(&text, &f.display().to_string()).map_err(|e| usage(e.to_string()));
    }
    match std::env::var("HAVEN_API_TOKENS") {
        Ok(text) => Tokens::parse(&text, "HAVEN_API_TOKENS").map_err(|e| usage(e.to_string())),
        Err(_) => Ok(Tokens::default()),
    }
}

/// Checks `--refresh`.
pub fn refresh(seconds: f64) -> anyhow::Result<Duration> {
    if !(0.2..=3600.0).contains(&seconds) {
        return Err(usage(format!(
            "--refresh {seconds}: give between 0.2 and 3600 seconds"
        )));
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let tokens = load_tokens(a.tokens_file.as_deref())?;
    let n = tokens.len();
    let opts = ServeOptions {
        listen: a.listen,
        tokens,
        refresh: refresh(a.refresh)?,
        state_dir: a
            .state_dir
            .unwrap_or_else(super::switchover::default_state_dir),
        extra_metrics: None,
        notifier: haven_engine::notify::Notifier::start(
            &cfg.notify,
            &format!("serve@{}", super::hostname()),
        ),
    };
    let (bound, _app) = haven_http::serve(cfg, opts)
        .await
        .map_err(|e| usage(e.to_string()))?;
    eprintln!(
        "serving the dashboard at http://{bound}/ and the API at http://{bound}/api/v1 ({})",
        if n == 0 {
            "no tokens: reads open on loopback, changes refused".to_string()
        } else {
            format!("{n} token(s)")
        }
    );
    let mut stop = super::stop_on_signal();
    let _ = stop.changed().await;
    Ok(0)
}
