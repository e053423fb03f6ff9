//! Haven's adapter to routing: where clients' writes go.
//!
//! - [`Haproxy`]: HAProxy's runtime API over its admin socket (`stats socket ... level
//!   admin`). Closing a server is `set server B/S state maint` then `shutdown sessions
//!   server B/S` (maintenance alone leaves open connections alone); opening is
//!   `state ready`. Both are checked with `show servers state`.
//! - [`dns::DnsRoute`]: an RFC 2136 update signed with TSIG, with the epoch as a
//!   prerequisite so the DNS server itself refuses a stale writer.
//! - [`run_hook`]: a command (`sh -c`) or an HTTP endpoint told the action, the region, the
//!   active region and the epoch, so a receiver can refuse an older epoch than it has seen.
//!
//! Every call is bounded by a timeout. Nothing here decides anything: the engine says
//! which route to open or close, with which epoch.

pub mod dns;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route {route}: HAProxy admin socket {socket}: {message}")]
    Socket {
        route: String,
        socket: PathBuf,
        message: String,
    },
    #[error("route {route}: HAProxy refused `{command}`: {answer}")]
    Refused {
        route: String,
        command: String,
        answer: String,
    },
    #[error("route {route}: {message}")]
    Hook { route: String, message: String },
    #[error("route {route}: DNS: {message}")]
    Dns { route: String, message: String },
}

pub type Result<T, E = RouteError> = std::result::Result<T, E>;

/// Whether a route carries traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Open,
    Close,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Open => "open",
            Action::Close => "close",
        }
    }
}

/// One server as `show servers state` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerState {
    pub backend: String,
    pub server: String,
    pub addr: String,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u8,
    /// `srv_admin_state`: a bit mask; 0x01 forced maintenance, 0x02 inherited, 0x20 by a
    /// failed address resolution (together HAProxy's `SRV_ADMF_MAINT`), 0x04 "disabled in
    /// the configuration" (a marker that stays after `state ready`), 0x08 forced drain.
    pub admin_state: u8,
}

impl ServerState {
    /// In maintenance (forced, inherited or by DNS): takes no traffic.
    pub fn in_maintenance(&self) -> bool {
        self.admin_state & 0x23 != 0
    }
}

/// One server of one backend behind an HAProxy admin socket.
#[derive(Debug, Clone)]
pub struct Haproxy {
    /// The route's name, for errors.
    pub route: String,
    pub socket: PathBuf,
    pub backend: String,
    pub server: String,
    pub timeout: Duration,
}

impl Haproxy {
    /// Sends one command; returns HAProxy's answer.
    pub async fn command(&self, command: &str) -> Result<String> {
        let socket_error = |message: String| RouteError::Socket {
            route: self.route.clone(),
            socket: self.socket.clone(),
            message,
        };
        let talk = async {
            let mut s = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| socket_error(format!("cannot connect: {e}")))?;
            s.write_all(format!("{command}\n").as_bytes())
                .await
                .map_err(|e| socket_error(format!("cannot send: {e}")))?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)
                .await
                .map_err(|e| socket_error(format!("cannot read the answer: {e}")))?;
            Ok(answer)
        };
        tokio::time::timeout(self.timeout, talk)
            .await
            .map_err(|_| socket_error(format!("no answer within {:?}", self.timeout)))?
    }

    /// A command whose only good answer is empty (HAProxy answers errors in words).
    async fn expect_silence(&self, command: &str) -> Result<()> {
        let answer = self.command(command).await?;
        if answer.trim().is_empty() {
            Ok(())
        } else {
            Err(RouteError::Refused {
                route: self.route.clone(),
                command: command.into(),
                answer: answer.trim().into(),
            })
        }
    }

    /// The server's state.
    pub async fn state(&self) -> Result<ServerState> {
        let command = format!("show servers state {}", self.backend);
        let answer = self.command(&command).await?;
        parse_servers_state(&answer)
            .into_iter()
            .find(|s| s.server == self.server)
            .ok_or_else(|| RouteError::Refused {
                route: self.route.clone(),
                command,
                answer: format!(
                    "no server {} in backend {}: {}",
                    self.server,
                    self.backend,
                    answer.lines().next().unwrap_or("").trim()
                ),
            })
    }

    /// Opens or closes the server, then checks that HAProxy shows it so. Closing also cuts
    /// its open sessions. Idempotent.
    pub async fn apply(&self, action: Action) -> Result<ServerState> {
        let target = format!("{}/{}", self.backend, self.server);
        match action {
            Action::Close => {
                self.expect_silence(&format!("set server {target} state maint"))
                    .await?;
                self.expect_silence(&format!("shutdown sessions server {target}"))
                    .await?;
            }
            Action::Open => {
                self.expect_silence(&format!("set server {target} state ready"))
                    .await?;
            }
        }
        let state = self.state().await?;
        let ok = match action {
            Action::Close => state.in_maintenance(),
            Action::Open => !state.in_maintenance(),
        };
        if !ok {
            return Err(RouteError::Refused {
                route: self.route.clone(),
                command: format!("{} {target}", action.as_str()),
                answer: format!(
                    "the server's admin state is still {:#04x}",
                    state.admin_state
                ),
            });
        }
        Ok(state)
    }
}

/// Parses `show servers state` (format 1): a version line, a `#` header naming the
/// columns, then one line per server.
pub fn parse_servers_state(answer: &str) -> Vec<ServerState> {
    let mut columns: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for line in answer.lines() {
        if let Some(h) = line.strip_prefix('#') {
            columns = h.split_whitespace().collect();
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if columns.is_empty() || fields.len() < columns.len().min(7) {
            continue;
        }
        let get = |name: &str| {
            columns
                .iter()
                .position(|c| *c == name)
                .and_then(|i| fields.get(i).copied())
        };
        let (Some(backend), Some(server), Some(op), Some(admin)) = (
            get("be_name"),
            get("srv_name"),
            get("srv_op_state").and_then(|v| v.parse().ok()),
            get("srv_admin_state").and_then(|v| v.parse().ok()),
        ) else {
            continue;
        };
        out.push(ServerState {
            backend: backend.into(),
            server: server.into(),
            addr: get("srv_addr").unwrap_or("").into(),
            op_state: op,
            admin_state: admin,
        });
    }
    out
}

/// What a hook is told.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HookCall {
    /// The route's name.
    pub route: String,
    pub action: Action,
    /// The region whose traffic the route carries.
    pub region: String,
    /// The region that holds (or is taking) the lease.
    pub active: String,
    /// The fencing epoch of this change: a receiver refuses anything older than it saw.
    pub epoch: u64,
    /// The same for every retry of one step (a receiver can deduplicate).
    pub idempotency_key: String,
}

/// Where a hook goes.
#[derive(Debug, Clone)]
pub enum Hook {
    /// Run with `sh -c`, the call in `HAVEN_*` environment variables; success is exit 0.
    Command(String),
    /// POSTed as JSON with a `Haven-Epoch` header; success is a 2xx status.
    Http(String),
}

/// Calls a hook; an error says what it answered.
pub async fn run_hook(hook: &Hook, call: &HookCall, timeout: Duration) -> Result<()> {
    let fail = |message: String| RouteError::Hook {
        route: call.route.clone(),
        message,
    };
    match hook {
        Hook::Command(command) => {
            let mut cmd = tokio::process::Command::new("sh");
            cmd.arg("-c")
                .arg(command)
                .env("HAVEN_ROUTE", &call.route)
                .env("HAVEN_ACTION", call.action.as_str())
                .env("HAVEN_REGION", &call.region)
                .env("HAVEN_ACTIVE", &call.active)
                .env("HAVEN_EPOCH", call.epoch.to_string())
                .env("HAVEN_IDEMPOTENCY_KEY", &call.idempotency_key)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            let out = tokio::time::timeout(timeout, cmd.output())
                .await
                .map_err(|_| fail(format!("command did not finish within {timeout:?}")))?
                .map_err(|e| fail(format!("cannot run `{command}`: {e}")))?;
            if out.status.success() {
                Ok(())
            } else {
                let stderr = String::from_utf8_lossy(&out.stderr);
                Err(fail(format!(
                    "`{command}` failed ({}): {}",
                    out.status,
                    stderr.trim()
                )))
            }
        }
        Hook::Http(url) => {
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .map_err(|e| fail(e.to_string()))?;
            let resp = client
                .post(url)
                .header("Haven-Epoch", call.epoch.to_string())
                .header("Idempotency-Key", &call.idempotency_key)
                .json(call)
                .send()
                .await
                .map_err(|e| fail(format!("POST {url}: {e}")))?;
            if resp.status().is_success() {
                Ok(())
            } else {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                Err(fail(format!(
                    "POST {url} answered {status}: {}",
                    body.trim()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_servers_state() {
        let answer = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n\
                      3 be_write 1 us 127.0.0.1 2 1 1\n3 be_write 2 eu 127.0.0.1 2 4 1\n\n";
        let s = parse_servers_state(answer);
        assert_eq!(s.len(), 2);
        assert!(s[0].in_maintenance() && s[0].server == "us");
        assert!(!s[1].in_maintenance() && s[1].op_state == 2);
        assert!(parse_servers_state("Can't find backend.\n").is_empty());
        assert!(parse_servers_state("").is_empty());
    }
}
