//! The routes: `/api/v1/...` (JSON), `/metrics`, the dashboard's files, drill reports.
//! Every error is JSON `{"error": {"status": N, "message": "..."}}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use haven_engine::posture::Posture;
use serde_json::{json, Value};

use crate::auth::{Caller, Check, Role};
use crate::App;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Every route.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route("/app.js", get(|| async { page("text/javascript", APP_JS) }))
        .route("/style.css", get(|| async { page("text/css", STYLE_CSS) }))
        .route("/metrics", get(metrics))
        .route("/api/v1", get(index))
        .route("/api/v1/posture", get(posture))
        .route("/api/v1/readiness", get(readiness))
        .route("/api/v1/regions", get(regions))
        .route("/api/v1/rpo", get(rpo))
        .route("/api/v1/backups", get(backups))
        .route("/api/v1/mirrors", get(mirrors))
        .route("/api/v1/postgres", get(postgres))
        .route("/api/v1/drills", get(drills))
        .route("/api/v1/drills/{id}", get(drill_report))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/history", get(history))
        .route("/api/v1/operations", get(operations))
        .route("/api/v1/operations/{id}", get(operation))
        .route("/api/v1/switchover", post(switchover))
        .route("/api/v1/refresh", post(refresh))
        .fallback(not_found)
        .with_state(app)
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A refusal: its status and a message naming the thing and the fix.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"status": self.status.as_u16(), "message": self.message}})),
        )
            .into_response()
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

/// A JSON error.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    refuse(status, message).into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such path {}: GET /api/v1 lists the API", uri.path()),
    )
}

/// The caller, if `headers` carry a token with `role`; else the refusal.
fn authorize(app: &App, headers: &HeaderMap, role: Role) -> Result<Caller, ApiError> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match app.tokens.check(h, role) {
        Check::Allowed(c) => Ok(c),
        Check::Unauthenticated(why) => Err(refuse(
            StatusCode::UNAUTHORIZED,
            format!("a {} token is needed: {why}", role_name(role)),
        )),
        Check::Forbidden(c) => Err(refuse(
            StatusCode::FORBIDDEN,
            if app.tokens.is_empty() {
                "changes need an operator token and no tokens are configured: start the server with --tokens-file".to_string()
            } else {
                format!(
                    "token {} has the {} role; this needs {}",
                    c.name,
                    role_name(c.role),
                    role_name(role)
                )
            },
        )),
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
    }
}

/// The query's parameters; unknown names and repeated ones are refused.
fn params(q: Option<String>, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    let q = q.unwrap_or_default();
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown query parameter {k:?}: this path takes {}",
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ),
            ));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("query parameter {k:?} given twice"),
            ));
        }
    }
    Ok(out)
}

fn number<T>(
    p: &HashMap<String, String>,
    name: &str,
    range: std::ops::RangeInclusive<T>,
) -> Result<Option<T>, ApiError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let Some(raw) = p.get(name) else {
        return Ok(None);
    };
    match raw.parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(Some(v)),
        _ => Err(refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "{name}={raw:?}: expected a number from {} to {}",
                range.start(),
                range.end()
            ),
        )),
    }
}

/// The last reading, or 503 before the first is done.
async fn last(app: &App) -> Result<Arc<Posture>, ApiError> {
    app.last.read().await.clone().ok_or_else(|| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the first reading is not done yet: retry in a few seconds",
        )
    })
}

/// Freshness of a reading: its age and whether it is older than three refreshes.
fn freshness(app: &App, p: &Posture) -> Value {
    let age_s = (chrono::Utc::now().timestamp_millis() - p.taken_at).max(0) as f64 / 1000.0;
    let limit = (app.refresh.as_secs_f64() * 3.0).max(15.0);
    json!({"taken_at": p.taken_at, "age_s": age_s, "stale": age_s > limit, "took_ms": p.took_ms,
           "refresh_s": app.refresh.as_secs_f64()})
}

/// A read: authorized, no parameters, built from the last reading.
async fn read_view(
    app: &App,
    headers: &HeaderMap,
    q: Option<String>,
    view: impl FnOnce(&Posture) -> Value,
) -> Response {
    if let Err(r) = authorize(app, headers, Role::Viewer) {
        return r.into_response();
    }
    if let Err(r) = params(q, &[]) {
        return r.into_response();
    }
    match last(app).await {
        Ok(p) => {
            let mut v = view(&p);
            if let Value::Object(m) = &mut v {
                m.insert("reading".into(), freshness(app, &p));
            }
            Json(v).into_response()
        }
        Err(r) => r.into_response(),
    }
}

async fn index(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&app, &headers, Role::Viewer) {
        return r.into_response();
    }
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "paths": {
            "GET /api/v1/posture": "everything of the last reading",
            "GET /api/v1/readiness": "the verdict, the figures against the objectives, the findings",
            "GET /api/v1/regions": "regions, the active one and its epoch, etcd members",
            "GET /api/v1/rpo": "the RPO ledger: per mirrored partition and replica, what a failover now would lose",
            "GET /api/v1/backups": "per backup job and partition: durable offset vs high watermark, lag, losses",
            "GET /api/v1/mirrors": "every mirror and its partitions",
            "GET /api/v1/postgres": "replicated databases",
            "GET /api/v1/drills": "drills, newest first; GET /api/v1/drills/ID the report (?format=html)",
            "GET /api/v1/audit": "the audit log, newest first (?repository=NAME&before=SEQ&limit=N)",
            "GET /api/v1/alerts": "findings firing now, and the alert rules",
            "GET /api/v1/history": "lag over the last hour, one point per reading; ?partition=mirror:NAME:TOPIC/P or backup:JOB:TOPIC/P for one partition's",
            "GET /api/v1/operations": "operations started here (GET /api/v1/operations/ID)",
            "POST /api/v1/switchover": "operator: start a switchover, body {\"to\": REGION}",
            "POST /api/v1/refresh": "operator: read now instead of at the next refresh",
            "GET /metrics": "Prometheus metrics",
        }
    }))
    .into_response()
}

async fn posture(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    read_view(&app, &headers, q, |p| {
        serde_json::to_value(p).unwrap_or(Value::Null)
    })
    .await
}

async fn readiness(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    read_view(&app, &headers, q, |p| {
        json!({"readiness": p.readiness, "findings": p.findings, "objectives": p.objectives, "unknown": p.unknown})
    })
    .await
}

async fn regions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    read_view(&app, &headers, q, |p| match &p.failover {
        Some(f) => json!({"primary": f.primary, "standby": f.standby, "mode": f.mode,
            "active": f.active, "agent": f.agent, "epoch": f.epoch, "regions": f.regions,
            "members": f.members, "quorum": f.quorum}),
        None => json!({"active": null, "regions": [], "note": "no [failover] in the config"}),
    })
    .await
}

async fn rpo(State(app): State<Arc<App>>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    read_view(&app, &headers, q, |p| {
        let (ledger, databases, at_risk) =
            p.failover
                .as_ref()
                .map_or((Value::Array(vec![]), Value::Array(vec![]), 0), |f| {
                    (
                        serde_json::to_value(&f.ledger).unwrap_or_default(),
                        serde_json::to_value(&f.databases).unwrap_or_default(),
                        f.records_at_risk,
                    )
                });
        json!({"rpo_now_s": p.readiness.rpo_now_s, "rpo_target_s": p.objectives.rpo_s,
               "records_at_risk": at_risk, "partitions": ledger, "databases": databases})
    })
    .await
}

async fn backups(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    read_view(&app, &headers, q, |p| json!({"backups": p.backups})).await
}

async fn mirrors(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    read_view(&app, &headers, q, |p| {
        let mut all: Vec<Value> = Vec::new();
        if let Some(f) = &p.failover {
            let mut names: Vec<&str> = f.ledger.iter().map(|r| r.mirror.as_str()).collect();
            names.dedup();
            for n in names {
                let parts: Vec<_> = f
                    .ledger
                    .iter()
                    .filter(|r| r.mirror == n)
                    .map(|r| &r.partition)
                    .collect();
                let into = f.ledger.iter().find(|r| r.mirror == n).map(|r| r.into.clone());
                all.push(json!({"name": n, "into_standby": true, "into": into, "partitions": parts, "error": null}));
            }
        }
        for m in &p.mirrors {
            all.push(serde_json::to_value(m).unwrap_or_default());
        }
        json!({"mirrors": all})
    })
    .await
}

async fn postgres(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    read_view(&app, &headers, q, |p| {
        json!({"databases": p.failover.as_ref().map(|f| f.databases.clone()).unwrap_or_default()})
    })
    .await
}

async fn drills(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    read_view(&app, &headers, q, |p| json!({"drills": p.drills})).await
}

async fn alerts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    read_view(&app, &headers, q, |p| {
        let t = haven_engine::alerts::Thresholds::of(&p.objectives);
        json!({"firing": p.findings, "rules": haven_engine::alerts::rules(&t)})
    })
    .await
}

async fn history(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(r) = authorize(&app, &headers, Role::Viewer) {
        return r.into_response();
    }
    let p = match params(q, &["partition"]) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let Ok(h) = app.history.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the history is unreadable",
        );
    };
    match p.get("partition") {
        None => Json(json!({"points": h.points()})).into_response(),
        Some(key) => match h.partition(key) {
            Some(s) => {
                let points: Vec<Value> = s
                    .iter()
                    .map(|&(at, lag)| json!({"at": at, "lag_s": lag}))
                    .collect();
                Json(json!({"partition": key, "points": points})).into_response()
            }
            None => error(
                StatusCode::NOT_FOUND,
                format!(
                    "no lag on record for partition {key:?} in the last hour: keys are \
                     mirror:NAME:TOPIC/P or backup:JOB:TOPIC/P, as in the dashboard's rows"
                ),
            ),
        },
    }
}

/// One drill's report, as stored (JSON), or its HTML page with `?format=html`.
async fn drill_report(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(r) = authorize(&app, &headers, Role::Viewer) {
        return r.into_response();
    }
    let p = match params(q, &["format"]) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let format = p.get("format").map_or("json", String::as_str);
    if !matches!(format, "json" | "html") {
        return error(
            StatusCode::BAD_REQUEST,
            format!("format={format:?}: use json or html"),
        );
    }
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || id.contains("..")
    {
        return error(StatusCode::BAD_REQUEST, format!("{id:?} is not a drill id"));
    }
    let Ok(posture) = last(&app).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the first reading is not done yet",
        );
    };
    let Some(d) = posture.drills.iter().find(|d| d.id == id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no drill {id}: GET /api/v1/drills lists them"),
        );
    };
    let repo = match app.reader.lock().await.repository(&d.repository).await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let key = haven_engine::drill::evidence_key(&id, format);
    match repo.store().get(&key).await {
        Ok(bytes) => {
            let ct = if format == "html" {
                "text/html; charset=utf-8"
            } else {
                "application/json"
            };
            ([(header::CONTENT_TYPE, ct)], bytes.to_vec()).into_response()
        }
        Err(e) => error(StatusCode::NOT_FOUND, format!("{key}: {e}")),
    }
}

async fn audit(State(app): State<Arc<App>>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    if let Err(r) = authorize(&app, &headers, Role::Viewer) {
        return r.into_response();
    }
    let p = match params(q, &["repository", "before", "limit"]) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let before = match number::<u64>(&p, "before", 1..=u64::MAX) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let limit = match number::<usize>(&p, "limit", 1..=500) {
        Ok(v) => v.unwrap_or(50),
        Err(r) => return r.into_response(),
    };
    let mut reader = app.reader.lock().await;
    let names: Vec<String> = reader.config().repositories.keys().cloned().collect();
    let repository = match p.get("repository") {
        Some(r) if names.contains(r) => r.clone(),
        Some(r) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no repository {r:?} in the config: {}", names.join(", ")),
            )
        }
        None => match names.first() {
            Some(n) => n.clone(),
            None => return error(StatusCode::NOT_FOUND, "the config names no repository"),
        },
    };
    match reader.audit_page(&repository, before, limit).await {
        Ok(entries) => {
            let next = entries.last().and_then(|e| e.seq).filter(|s| *s > 1);
            Json(json!({"repository": repository, "entries": entries,
                        "next_before": if entries.len() == limit { next } else { None }}))
            .into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut body = String::new();
    if let Some(p) = app.last.read().await.clone() {
        body.push_str(&haven_engine::posture::metrics::render(&p));
    }
    if let Some(extra) = &app.extra_metrics {
        body.push_str(&extra());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn operations(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&app, &headers, Role::Viewer) {
        return r.into_response();
    }
    Json(json!({"operations": app.operations.list()})).into_response()
}

async fn operation(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&app, &headers, Role::Viewer) {
        return r.into_response();
    }
    let Ok(n) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not an operation id"),
        );
    };
    match app.operations.get(n) {
        Some(o) => Json(o).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no operation {n}")),
    }
}

async fn switchover(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let caller = match authorize(&app, &headers, Role::Operator) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let to = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v.get("to").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "the body must be {\"to\": \"REGION\"}",
                )
            }
        },
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON ({e}): send {{\"to\": \"REGION\"}}"),
            )
        }
    };
    tracing::info!(by = %caller.name, to = %to, "switchover requested through the API");
    let cfg = app.reader.lock().await.config().clone();
    match app
        .operations
        .switchover(&cfg, &app.state_dir, &to, &caller)
        .await
    {
        Ok(op) => (StatusCode::ACCEPTED, Json(op)).into_response(),
        Err((status, m)) => error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            m,
        ),
    }
}

async fn refresh(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&app, &headers, Role::Operator) {
        return r.into_response();
    }
    app.wake.notify_one();
    (StatusCode::ACCEPTED, Json(json!({"refreshing": true}))).into_response()
}
