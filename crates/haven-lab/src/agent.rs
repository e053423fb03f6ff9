//! An agent process and its `/lease` endpoint.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// Starts `haven --config CFG agent --region REGION` listening on `port`, its state in
/// `state` and its log beside it (`STATE.log`).
pub fn spawn_agent(
    haven: &Path,
    cfg: &str,
    region: &str,
    port: u16,
    state: &Path,
) -> anyhow::Result<Child> {
    let log = state.with_extension("log");
    // Appended: an agent started again after a fault keeps the first one's log.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("{}", log.display()))?;
    Command::new(haven)
        .args(["--config", cfg, "agent", "--region", region])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", haven.display()))
}

/// The status code of `GET /lease` on an agent (200: it holds the lease).
pub fn lease_status(port: u16) -> Option<u16> {
    get_lease(port).map(|(status, _)| status)
}

/// The epoch `GET /lease` reports.
pub fn lease_epoch_of(port: u16) -> Option<u64> {
    let (_, body) = get_lease(port)?;
    serde_json::from_str::<serde_json::Value>(&body).ok()?["epoch"].as_u64()
}

/// `GET /lease` on `port`: its status code and body, or None within 300 ms.
fn get_lease(port: u16) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    s.write_all(b"GET /lease HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}
