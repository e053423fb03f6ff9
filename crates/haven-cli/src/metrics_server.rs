//! A small HTTP face for long-running jobs: `--metrics-addr` serves the engine's metrics
//! for Prometheus at `GET /metrics`; the agent adds `GET /lease` (see [`serve_routes`]).

use std::net::SocketAddr;
use std::sync::Arc;

use haven_engine::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Binds `addr` and serves `metrics` until the process ends. Returns the bound address.
pub async fn serve(addr: &str, metrics: Arc<Metrics>) -> anyhow::Result<SocketAddr> {
    serve_routes(
        addr,
        "--metrics-addr",
        Arc::new(move |path: &str| match path {
            "/metrics" => Reply::ok("text/plain; version=0.0.4", metrics.render()),
            _ => Reply::not_found("try GET /metrics\n"),
        }),
    )
    .await
}

/// An answer: status line, content type, body.
pub struct Reply {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn ok(content_type: &'static str, body: String) -> Reply {
        Reply {
            status: "200 OK",
            content_type,
            body,
        }
    }

    pub fn not_found(body: &str) -> Reply {
        Reply {
            status: "404 Not Found",
            content_type: "text/plain",
            body: body.to_string(),
        }
    }
}

/// What answers a `GET PATH`.
pub type Routes = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// Binds `addr` (named by `flag` in errors) and answers `GET` requests with `routes` until
/// the process ends. Returns the bound address.
pub async fn serve_routes(addr: &str, flag: &str, routes: Routes) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| crate::commands::usage(format!("{flag} {addr}: cannot listen: {e}")))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let routes = routes.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req
                    .strip_prefix("GET ")
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap_or("");
                let Reply {
                    status,
                    content_type,
                    body,
                } = if path.is_empty() {
                    Reply {
                        status: "405 Method Not Allowed",
                        content_type: "text/plain",
                        body: "only GET\n".into(),
                    }
                } else {
                    routes(path)
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(local)
}
