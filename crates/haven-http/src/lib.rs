//! Haven's HTTP face (`haven serve`, `haven agent --dashboard`): a JSON API under
//! `/api/v1`, the live dashboard at `/`, and `/metrics` for Prometheus.
//!
//! A face only: every figure comes from the engine's [`posture::Reader`], taken in the
//! background every `refresh`, or after a pause as long as the last reading when that
//! was slower (requests never touch a cluster, so a slow broker slows nothing but the
//! next reading, and a busy one is read at most half the time), and every operation (a switchover) is the engine's plan
//! run by the engine's executor, as from the CLI. Reads need a viewer token and changes an
//! operator token once tokens are configured ([`auth`]); errors are JSON
//! `{"error": {"status", "message"}}`.

pub mod api;
pub mod auth;
pub mod history;
pub mod operations;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use haven_engine::config::Config;
use haven_engine::posture::{self, Posture};
use tokio::sync::{Mutex, RwLock};

pub use auth::{Role, Tokens};
/// For faces that merge their own routes ([`serve_with`]).
pub use axum;

/// What `haven serve` runs.
pub struct ServeOptions {
    pub listen: String,
    pub tokens: Tokens,
    /// How often the posture is read.
    pub refresh: Duration,
    /// Where switchover plans, their progress and the audit log are kept (the CLI's).
    pub state_dir: PathBuf,
    /// More metrics for `/metrics` (the agent's, a job's), rendered on each scrape.
    pub extra_metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Told when findings appear and when they are resolved.
    pub notifier: haven_engine::notify::Notifier,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--listen {addr}: {why}")]
    Listen { addr: String, why: String },
}

impl ServeOptions {
    /// Fails closed: an address other than loopback needs tokens (otherwise anyone who
    /// can reach it reads the whole posture).
    pub fn check(&self) -> Result<(), ServeError> {
        let loopback = match self.listen.parse::<SocketAddr>() {
            Ok(a) => a.ip().is_loopback(),
            Err(_) => self.listen.starts_with("localhost:"),
        };
        if !loopback && self.tokens.is_empty() {
            return Err(ServeError::Listen {
                addr: self.listen.clone(),
                why: "not a loopback address and no API tokens: give --tokens-file (or HAVEN_API_TOKENS) so that only viewers and operators can read it".into(),
            });
        }
        Ok(())
    }
}

/// The last reading and what the pages ask for.
pub struct App {
    pub reader: Mutex<posture::Reader>,
    pub last: RwLock<Option<Arc<Posture>>>,
    pub history: std::sync::Mutex<history::History>,
    pub tokens: Tokens,
    pub refresh: Duration,
    pub state_dir: PathBuf,
    pub extra_metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    pub operations: operations::Operations,
    pub notifier: haven_engine::notify::Notifier,
    /// Wakes the sampler for an immediate reading.
    pub wake: tokio::sync::Notify,
    pub started_at: i64,
}

impl App {
    pub fn new(cfg: Config, opts: ServeOptions) -> Arc<App> {
        Arc::new(App {
            reader: Mutex::new(posture::Reader::new(cfg)),
            last: RwLock::new(None),
            history: std::sync::Mutex::new(history::History::new(3_600_000)),
            tokens: opts.tokens,
            refresh: opts.refresh,
            state_dir: opts.state_dir,
            extra_metrics: opts.extra_metrics,
            operations: operations::Operations::default(),
            notifier: opts.notifier,
            wake: tokio::sync::Notify::new(),
            started_at: chrono::Utc::now().timestamp_millis(),
        })
    }

    /// Takes one reading, keeps it, and tells the notifier what findings changed.
    pub async fn read_now(&self) -> Arc<Posture> {
        let p = Arc::new(self.reader.lock().await.read().await);
        if let Ok(mut h) = self.history.lock() {
            h.push(history::Point::of(&p), history::partition_lags(&p));
        }
        let before = self.last.write().await.replace(p.clone());
        let before = before.map(|b| b.findings.clone()).unwrap_or_default();
        for n in haven_engine::notify::findings_changed(&before, &p.findings) {
            self.notifier.send(n);
        }
        p
    }

    /// Reads every `refresh` (or when woken) until the process ends.
    pub fn spawn_sampler(self: &Arc<Self>) {
        let app = self.clone();
        tokio::spawn(async move {
            loop {
                let p = app.read_now().await;
                tracing::debug!(
                    took_ms = p.took_ms,
                    verdict = p.readiness.verdict,
                    "posture read"
                );
                // A reading slower than `refresh` is followed by a pause as long as it
                // took: the clusters are read at most half the time, so a busy broker
                // that answers slowly is not made busier by the dashboard.
                let pause = app.refresh.max(Duration::from_millis(p.took_ms));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = app.wake.notified() => {}
                }
            }
        });
    }
}

/// Binds `opts.listen` and serves until the process ends; returns the bound address.
pub async fn serve(cfg: Config, opts: ServeOptions) -> Result<(SocketAddr, Arc<App>), ServeError> {
    serve_with(cfg, opts, axum::Router::new()).await
}

/// As [`serve`], with more routes (the agent's `/lease`) merged in.
pub async fn serve_with(
    cfg: Config,
    opts: ServeOptions,
    extra: axum::Router,
) -> Result<(SocketAddr, Arc<App>), ServeError> {
    opts.check()?;
    let addr = opts.listen.clone();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| ServeError::Listen {
            addr: addr.clone(),
            why: format!("cannot listen: {e}"),
        })?;
    let local = listener.local_addr().map_err(|e| ServeError::Listen {
        addr: addr.clone(),
        why: e.to_string(),
    })?;
    let app = App::new(cfg, opts);
    app.spawn_sampler();
    let router = api::router(app.clone()).merge(extra);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok((local, app))
}
