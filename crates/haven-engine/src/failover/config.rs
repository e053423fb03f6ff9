//! The failover sections of `haven.toml`: `[coordination]` (the etcd members), `[regions.NAME]`
//! (what each region runs) and `[failover]` (which region is primary, and the gates of an
//! automatic failover). Validated with the rest of the file: unknown keys and dangling
//! names are errors naming the key and the fix.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// `[coordination]`: where the region lease and the fencing epoch live.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CoordinationSection {
    /// etcd client URLs, one member per region plus a witness (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// Names this deployment's keys (`/haven/{cluster}/...`).
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Seconds a region keeps the lease without renewing it (at least 2).
    #[serde(default = "default_ttl")]
    pub lease_ttl_s: u64,
    /// Milliseconds one etcd request may take, retries of a dead member included.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_cluster() -> String {
    "prod".into()
}

fn default_ttl() -> u64 {
    10
}

fn default_timeout() -> u64 {
    1500
}

impl CoordinationSection {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_s)
    }
}

/// `[regions.NAME]`: what a region runs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegionSection {
    /// Its Kafka cluster (a name from `[clusters]`).
    pub cluster: String,
    /// The mirror that copies the other region's topics into it (a name from `[mirrors]`):
    /// its lag is what a failover to this region would lose.
    #[serde(default)]
    pub mirror_in: Option<String>,
}

/// `[databases.NAME]`: one Postgres database in one region. Its `peer` is the same
/// database in the other region; the active region's copy publishes, the other subscribes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    pub region: String,
    /// `postgresql://USER@HOST:PORT/DB`, without a password: Haven's role must be a
    /// superuser (it fences the application roles and manages subscriptions).
    pub url: String,
    /// The environment variable holding the password (never logged).
    #[serde(default)]
    pub password_env: Option<String>,
    /// ... or a file holding it (first line).
    #[serde(default)]
    pub password_file: Option<String>,
    /// The same database in the other region (set on either side, or both).
    #[serde(default)]
    pub peer: Option<String>,
    /// The publication this database has while its region is active.
    #[serde(default = "default_replication_name")]
    pub publication: String,
    /// The subscription it has while its region is the standby.
    #[serde(default = "default_replication_name")]
    pub subscription: String,
    /// The application roles fenced (no LOGIN, no CONNECT, sessions ended) when this
    /// region must not take writes.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Tables pinned to this region (`schema.table`): never in its publication.
    #[serde(default)]
    pub local_tables: Vec<String>,
    /// How far past anything the other region may have used sequences are set on an
    /// unplanned failover.
    #[serde(default = "default_sequence_gap")]
    pub sequence_gap: i64,
}

/// A Postgres error as the engine reports it: bad input (exit 2) or unreachable (exit 1).
pub fn pg_error(e: haven_pg::PgError) -> crate::Error {
    match e {
        haven_pg::PgError::Invalid { .. } => crate::Error::Input(e.to_string()),
        e => crate::Error::Unreachable(e.to_string()),
    }
}

fn default_replication_name() -> String {
    "haven".into()
}

fn default_sequence_gap() -> i64 {
    100_000
}

impl DatabaseSection {
    /// Connects Haven to this database (`name` as errors call it), the password read from
    /// its environment variable or file.
    pub async fn connect(&self, name: &str, timeout: Duration) -> crate::Result<haven_pg::Pg> {
        let password = self
            .password(name)
            .map_err(|(k, m)| crate::Error::Input(format!("{k}: {m}")))?;
        haven_pg::Pg::connect(name, &self.url, password.as_deref(), timeout)
            .await
            .map_err(pg_error)
    }

    /// What a subscriber's `CONNECTION` to this database is: its URL with the password
    /// put in (the server keeps it; Haven never prints it).
    pub fn subscription_conninfo(&self, name: &str) -> crate::Result<String> {
        let password = self
            .password(name)
            .map_err(|(k, m)| crate::Error::Input(format!("{k}: {m}")))?;
        Ok(with_password(&self.url, password.as_deref()))
    }

    /// The password, from the environment or a file (None: the URL needs none).
    pub fn password(&self, name: &str) -> Result<Option<String>, Problem> {
        if let Some(var) = &self.password_env {
            return std::env::var(var).map(Some).map_err(|_| {
                (
                    format!("databases.{name}.password_env"),
                    format!("the environment variable {var} is not set"),
                )
            });
        }
        if let Some(file) = &self.password_file {
            return std::fs::read_to_string(file)
                .map(|t| Some(t.lines().next().unwrap_or("").to_string()))
                .map_err(|e| {
                    (
                        format!("databases.{name}.password_file"),
                        format!("cannot read {file}: {e}"),
                    )
                });
        }
        Ok(None)
    }
}

/// What a route is.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// A server of an HAProxy backend, through the runtime API.
    Haproxy,
    /// A command run with `sh -c` (`HAVEN_ACTION`, `HAVEN_EPOCH`, ...).
    Command,
    /// An HTTP endpoint POSTed the change as JSON.
    Http,
    /// A DNS name updated with RFC 2136 + TSIG, the epoch as a prerequisite.
    Dns,
}

/// `[routes.NAME]`: a way writes reach one region. Opened only for the active region,
/// after it is promoted; closed before anything else when its region stops being active.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// The region whose writes it carries.
    pub region: String,
    pub kind: RouteKind,
    /// haproxy: the admin socket (`stats socket PATH level admin`).
    #[serde(default)]
    pub socket: Option<String>,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub server: Option<String>,
    /// command: what to run.
    #[serde(default)]
    pub command: Option<String>,
    /// http: where to POST.
    #[serde(default)]
    pub url: Option<String>,
    /// dns: the primary server (`IP:PORT`), the zone, the name clients resolve, this
    /// region's address, the records' TTL, and the TSIG key (hmac-sha256; its base64
    /// secret in an environment variable or a file).
    #[serde(default)]
    pub dns_server: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default = "default_dns_ttl")]
    pub ttl: u32,
    #[serde(default)]
    pub key_name: Option<String>,
    #[serde(default)]
    pub key_secret_env: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
    #[serde(default = "default_route_timeout")]
    pub timeout_ms: u64,
}

fn default_route_timeout() -> u64 {
    5000
}

fn default_dns_ttl() -> u32 {
    5
}

impl RouteSection {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// A `haproxy` route as the adapter takes it.
    pub fn haproxy(&self, name: &str) -> haven_routes::Haproxy {
        haven_routes::Haproxy {
            route: name.into(),
            socket: self.socket.clone().unwrap_or_default().into(),
            backend: self.backend.clone().unwrap_or_default(),
            server: self.server.clone().unwrap_or_default(),
            timeout: self.timeout(),
        }
    }

    /// A `dns` route as the adapter takes it (the secret read from its env or file).
    pub fn dns(&self, name: &str) -> Result<haven_routes::dns::DnsRoute, Problem> {
        use base64::Engine as _;
        let key = |k: &str| format!("routes.{name}.{k}");
        let server = self
            .dns_server
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|_| {
                (
                    key("dns_server"),
                    format!("{:?} is not IP:PORT", self.dns_server),
                )
            })?;
        let address = self
            .address
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|_| {
                (
                    key("address"),
                    format!("{:?} is not an IP address", self.address),
                )
            })?;
        let secret = match (&self.key_secret_env, &self.key_file) {
            (Some(var), _) => std::env::var(var).map_err(|_| {
                (
                    key("key_secret_env"),
                    format!("the environment variable {var} is not set"),
                )
            })?,
            (None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| (key("key_file"), format!("cannot read {file}: {e}")))?,
            (None, None) => {
                return Err((
                    key("key_secret_env"),
                    "a dns route needs its TSIG secret: key_secret_env or key_file".into(),
                ))
            }
        };
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret.trim())
            .map_err(|e| {
                (
                    key("key_secret_env"),
                    format!("the TSIG secret is not base64: {e}"),
                )
            })?;
        Ok(haven_routes::dns::DnsRoute {
            route: name.into(),
            server,
            zone: self.zone.clone().unwrap_or_default(),
            name: self.name.clone().unwrap_or_default(),
            address,
            ttl: self.ttl,
            key_name: self.key_name.clone().unwrap_or_default(),
            key: secret,
            timeout: self.timeout(),
        })
    }
}

/// Whether a failover happens by itself.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only an operator fails over (the default).
    #[default]
    Manual,
    /// The standby's agent fails over when the primary's lease expires and every gate
    /// passes. Never an automatic failback.
    Automatic,
}

/// `[failover]`: the pair of regions and the gates of an automatic failover.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FailoverSection {
    pub primary: String,
    pub standby: String,
    #[serde(default)]
    pub mode: Mode,
    /// An automatic failover is refused when more records than this are at risk.
    #[serde(default = "default_max_records")]
    pub max_records_at_risk: u64,
    /// ... or when the oldest record at risk is older than this (seconds).
    #[serde(default = "default_max_seconds")]
    pub max_seconds_at_risk: u64,
    /// Consecutive failed health checks before the primary counts as down.
    #[serde(default = "default_checks")]
    pub failed_checks: u32,
    /// At most one automatic failover per this many seconds.
    #[serde(default = "default_interval")]
    pub min_interval_s: u64,
}

fn default_max_records() -> u64 {
    10_000
}

fn default_max_seconds() -> u64 {
    60
}

fn default_checks() -> u32 {
    3
}

fn default_interval() -> u64 {
    600
}

/// A key of the file and what is wrong with it.
pub type Problem = (String, String);

/// Checks the failover sections against each other and the rest of the file.
pub fn validate(cfg: &Config) -> Result<(), Problem> {
    if let Some(c) = &cfg.coordination {
        if c.endpoints.is_empty() {
            return Err((
                "coordination.endpoints".into(),
                "empty: list the etcd members (one per region plus a witness)".into(),
            ));
        }
        for e in &c.endpoints {
            let ok = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .and_then(|rest| rest.rsplit_once(':'))
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err((
                    "coordination.endpoints".into(),
                    format!("{e:?} is not http(s)://HOST:PORT"),
                ));
            }
        }
        if c.endpoints.len() < 3 {
            return Err((
                "coordination.endpoints".into(),
                format!(
                    "{} member(s): a quorum that survives losing a region needs at least 3 \
                     (one per region plus a witness)",
                    c.endpoints.len()
                ),
            ));
        }
        if c.lease_ttl_s < 2 {
            return Err((
                "coordination.lease_ttl_s".into(),
                "at least 2 (etcd's minimum lease TTL is 1.5 election timeouts)".into(),
            ));
        }
    }
    for (name, r) in &cfg.regions {
        if !cfg.clusters.contains_key(&r.cluster) {
            return Err((
                format!("regions.{name}.cluster"),
                format!(
                    "no cluster named {:?}: define [clusters.{}] or fix the name",
                    r.cluster, r.cluster
                ),
            ));
        }
        if let Some(m) = &r.mirror_in {
            match cfg.mirrors.get(m) {
                None => {
                    return Err((
                        format!("regions.{name}.mirror_in"),
                        format!("no mirror named {m:?}: define [mirrors.{m}] or fix the name"),
                    ))
                }
                Some(mirror) if mirror.to != r.cluster => {
                    return Err((
                        format!("regions.{name}.mirror_in"),
                        format!(
                            "mirror {m:?} copies into cluster {:?}, not into this region's {:?}",
                            mirror.to, r.cluster
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    if let Some(f) = &cfg.failover {
        for (key, region) in [("primary", &f.primary), ("standby", &f.standby)] {
            if !cfg.regions.contains_key(region) {
                return Err((
                    format!("failover.{key}"),
                    format!(
                        "no region named {region:?}: define [regions.{region}] or fix the name"
                    ),
                ));
            }
        }
        if f.primary == f.standby {
            return Err((
                "failover.standby".into(),
                "the standby must be another region than the primary".into(),
            ));
        }
        if cfg.coordination.is_none() {
            return Err((
                "failover".into(),
                "needs [coordination] (the etcd members that hold the region lease)".into(),
            ));
        }
        if f.failed_checks == 0 {
            return Err(("failover.failed_checks".into(), "at least 1".into()));
        }
    }
    validate_databases(cfg)?;
    validate_routes(cfg)
}

fn validate_databases(cfg: &Config) -> Result<(), Problem> {
    for (name, d) in &cfg.databases {
        let key = |k: &str| format!("databases.{name}.{k}");
        if !cfg.regions.contains_key(&d.region) {
            return Err((
                key("region"),
                format!(
                    "no region named {:?}: define [regions.{}] or fix the name",
                    d.region, d.region
                ),
            ));
        }
        if !(d.url.starts_with("postgresql://") || d.url.starts_with("postgres://")) {
            return Err((
                key("url"),
                format!(
                    "{:?} is not postgresql://USER@HOST:PORT/DB",
                    haven_pg::redact(&d.url)
                ),
            ));
        }
        if d.url.split_once("://").is_some_and(|(_, rest)| {
            rest.split_once('@')
                .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        }) {
            return Err((
                key("url"),
                "holds a password: put it in password_env or password_file".into(),
            ));
        }
        if d.password_env.is_some() && d.password_file.is_some() {
            return Err((
                key("password_file"),
                "set password_env or password_file, not both".into(),
            ));
        }
        if let Some(p) = &d.peer {
            let Some(peer) = cfg.databases.get(p) else {
                return Err((
                    key("peer"),
                    format!("no database named {p:?}: define [databases.{p}] or fix the name"),
                ));
            };
            if peer.region == d.region {
                return Err((
                    key("peer"),
                    format!(
                        "{p:?} is in the same region ({}): a peer is the copy in the other region",
                        d.region
                    ),
                ));
            }
            if peer.peer.as_ref().is_some_and(|back| back != name) {
                return Err((
                    key("peer"),
                    format!("{p:?} names another peer ({:?})", peer.peer),
                ));
            }
        }
        if d.sequence_gap < 0 {
            return Err((key("sequence_gap"), "must not be negative".into()));
        }
        for t in &d.local_tables {
            if t.split('.').count() != 2 {
                return Err((key("local_tables"), format!("{t:?} is not schema.table")));
            }
        }
    }
    Ok(())
}

fn validate_routes(cfg: &Config) -> Result<(), Problem> {
    for (name, r) in &cfg.routes {
        let key = |k: &str| format!("routes.{name}.{k}");
        if !cfg.regions.contains_key(&r.region) {
            return Err((
                key("region"),
                format!(
                    "no region named {:?}: define [regions.{}] or fix the name",
                    r.region, r.region
                ),
            ));
        }
        let needs: &[(&str, &Option<String>)] = match r.kind {
            RouteKind::Haproxy => &[
                ("socket", &r.socket),
                ("backend", &r.backend),
                ("server", &r.server),
            ],
            RouteKind::Command => &[("command", &r.command)],
            RouteKind::Http => &[("url", &r.url)],
            RouteKind::Dns => &[
                ("dns_server", &r.dns_server),
                ("zone", &r.zone),
                ("name", &r.name),
                ("address", &r.address),
                ("key_name", &r.key_name),
            ],
        };
        for (k, v) in needs {
            if v.as_deref().is_none_or(str::is_empty) {
                return Err((
                    key(k),
                    format!("a {:?} route needs {k}", r.kind).to_lowercase(),
                ));
            }
        }
        if r.kind == RouteKind::Dns {
            if r.dns_server
                .as_deref()
                .unwrap_or_default()
                .parse::<std::net::SocketAddr>()
                .is_err()
            {
                return Err((
                    key("dns_server"),
                    format!("{:?} is not IP:PORT", r.dns_server),
                ));
            }
            if r.address
                .as_deref()
                .unwrap_or_default()
                .parse::<std::net::IpAddr>()
                .is_err()
            {
                return Err((
                    key("address"),
                    format!("{:?} is not an IP address", r.address),
                ));
            }
            if r.key_secret_env.is_none() && r.key_file.is_none() {
                return Err((
                    key("key_secret_env"),
                    "a dns route needs its TSIG secret: key_secret_env or key_file".into(),
                ));
            }
            let (zone, n) = (
                r.zone.clone().unwrap_or_default(),
                r.name.clone().unwrap_or_default(),
            );
            let fq = |s: &str| s.trim_end_matches('.').to_string();
            if !(fq(&n) == fq(&zone) || fq(&n).ends_with(&format!(".{}", fq(&zone)))) {
                return Err((key("name"), format!("{n:?} is not in zone {zone:?}")));
            }
        }
        if let (RouteKind::Http, Some(u)) = (r.kind, &r.url) {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err((key("url"), format!("{u:?} is not an http(s) URL")));
            }
        }
    }
    Ok(())
}

/// The databases of a region, by name.
pub fn databases_of<'a>(cfg: &'a Config, region: &str) -> Vec<(&'a String, &'a DatabaseSection)> {
    cfg.databases
        .iter()
        .filter(|(_, d)| d.region == region)
        .collect()
}

/// The peer of a database (named on either side).
pub fn peer_of<'a>(cfg: &'a Config, name: &str) -> Option<(&'a String, &'a DatabaseSection)> {
    let d = cfg.databases.get(name)?;
    if let Some(p) = &d.peer {
        return cfg.databases.get_key_value(p);
    }
    cfg.databases
        .iter()
        .find(|(_, other)| other.peer.as_deref() == Some(name))
}

/// The routes of a region, by name.
pub fn routes_of<'a>(cfg: &'a Config, region: &str) -> Vec<(&'a String, &'a RouteSection)> {
    cfg.routes
        .iter()
        .filter(|(_, r)| r.region == region)
        .collect()
}

/// Regions by name (for callers that only need the map type).
pub type Regions = BTreeMap<String, RegionSection>;

/// A Postgres URL with the password put in (for a subscription's CONNECTION, which the
/// server keeps; never printed).
fn with_password(url: &str, password: Option<&str>) -> String {
    let Some(pw) = password else {
        return url.to_string();
    };
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) => {
                let enc: String = pw
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
                format!("{scheme}://{user}:{enc}@{host}")
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_the_password_in_the_url() {
        assert_eq!(
            with_password("postgresql://haven@db:5432/x", Some("p@ss word")),
            "postgresql://haven:p%40ss%20word@db:5432/x"
        );
        assert_eq!(
            with_password("postgresql://db/x", Some("p")),
            "postgresql://db/x"
        );
        assert_eq!(
            with_password("postgresql://a@db/x", None),
            "postgresql://a@db/x"
        );
    }
}
