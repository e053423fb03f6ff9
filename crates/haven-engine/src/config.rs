//! `haven.toml`: named clusters, repositories and jobs.
//!
//! Unknown keys are errors (a typo must never silently disable a setting), and every error
//! names the file, the key and the fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {path} not found: create it (see `haven config check --help` for an example) or pass --config FILE")]
    NotFound { path: PathBuf },
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}{hint}")]
    Parse {
        path: PathBuf,
        message: String,
        hint: String,
    },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// A Kafka cluster.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `host:port[,host:port...]`
    pub bootstrap: String,
    /// Where the cluster runs (`us`, `eu`, ...): used by data-residency rules.
    #[serde(default)]
    pub region: Option<String>,
    /// Extra librdkafka properties (`security.protocol`, `sasl.mechanism`,
    /// `ssl.ca.location`, ...). No secrets here: see `secret_properties`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties holding secrets (`sasl.password`, `ssl.key.password`), each
    /// given as `env:VARIABLE` or `file:/path`: read when a client is made, never printed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_properties: BTreeMap<String, String>,
}

impl ClusterSection {
    /// The client configuration of this cluster: bootstrap, extra properties and the
    /// secrets they refer to (an unset variable or unreadable file is named, not shown).
    pub fn client_config(&self) -> crate::Result<haven_kafka::ClusterConfig> {
        let mut cc = haven_kafka::ClusterConfig::new(self.bootstrap.clone());
        cc.properties = self
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, r) in &self.secret_properties {
            let v = crate::secrets::resolve(&format!("secret_properties.{k}"), r)?;
            cc.properties.push((k.clone(), v));
        }
        Ok(cc)
    }
}

/// Refuses a secret written in clear among `plain` settings, and a reference of another
/// form among `secret` ones.
fn secrets_checked(
    at: &str,
    plain: &BTreeMap<String, String>,
    secret: &BTreeMap<String, String>,
    plain_name: &str,
    secret_name: &str,
) -> Result<(), (String, String)> {
    for k in plain.keys() {
        if crate::secrets::looks_secret(k) {
            return Err((
                format!("{at}.{plain_name}.{k}"),
                format!(
                    "a secret written in the config file: move it to {secret_name} = {{ \"{k}\" = \"env:VARIABLE\" }} (or \"file:/path\")"
                ),
            ));
        }
    }
    for (k, r) in secret {
        if let Err(m) = crate::secrets::check_reference(r) {
            return Err((format!("{at}.{secret_name}.{k}"), m));
        }
    }
    Ok(())
}

/// Checks a bootstrap list: `HOST:PORT[,HOST:PORT...]` with a numeric port. The one check
/// for `haven.toml` and `--brokers`.
pub fn check_bootstrap(bootstrap: &str) -> Result<(), String> {
    if bootstrap.trim().is_empty() {
        return Err("empty".into());
    }
    for addr in bootstrap.split(',') {
        let addr = addr.trim();
        match addr.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
            Some((host, Ok(p))) if !host.is_empty() && p > 0 => {}
            _ => return Err(format!("{addr:?} is not HOST:PORT")),
        }
    }
    Ok(())
}

/// A backup repository.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RepositorySection {
    /// `file:///path`, a plain path, or `s3://bucket/prefix`.
    pub url: String,
    #[serde(default)]
    pub region: Option<String>,
    /// File holding the master key (64 hex digits) of an encrypted repository.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Backend options (`aws_endpoint`, `aws_region`, ...), overriding the environment.
    /// No secrets here: see `secret_options`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Backend options holding secrets (`aws_secret_access_key`, `aws_session_token`),
    /// each given as `env:VARIABLE` or `file:/path`: read when the store is opened.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_options: BTreeMap<String, String>,
    /// How long records are kept before `haven prune` may delete them: `7y`, `400d`,
    /// `36h` (years are calendar years). Unset: nothing is ever pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    /// Retention per topic pattern (a regular expression of whole topic names), instead of
    /// `retention` for the topics it matches; where several match, the longest applies.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retention_topics: BTreeMap<String, String>,
    /// Erasure by crypto-shredding: topic pattern -> where a record's subject id is
    /// (`"key"`, `"header:NAME"`, `"json:/POINTER"`). Such records are sealed under their
    /// subject's key, which `haven forget` destroys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub erasure_subjects: BTreeMap<String, String>,
    /// The secret subject ids are hashed with (`env:VAR` or `file:/path`); needed with
    /// `erasure_subjects`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_hash_key: Option<String>,
}

/// What a job does.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Backup,
}

/// A named, repeatable job (`haven backup --job NAME`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JobSection {
    pub kind: JobKind,
    /// A cluster name from `[clusters]`.
    pub cluster: String,
    /// A repository name from `[repositories]`.
    pub repository: String,
    /// Regular expression matched against whole topic names.
    pub topics: String,
    /// Milliseconds between flushes to the repository (the backup's RPO).
    #[serde(default)]
    pub flush_ms: Option<u64>,
    /// Readers (Kafka consumers) per backup process (default: from the partition count
    /// and the cores).
    #[serde(default)]
    pub readers: Option<usize>,
}

/// A continuous mirror between two clusters (`haven mirror --job NAME`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MirrorSection {
    /// Source cluster name from `[clusters]`.
    pub from: String,
    /// Target cluster name from `[clusters]`.
    pub to: String,
    /// Regular expression matched against whole source topic names.
    pub topics: String,
    /// Target topic name = prefix + source name (default: the same name).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Consumer groups whose offsets are synced onto the target (regular expressions).
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A service of the event-driven architecture: what it writes (single writer) and how it
/// reads. Used by `impact`, `recover` and `compensate`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// Topics this service produces (it is their only writer).
    #[serde(default)]
    pub produces: Vec<String>,
    /// Topics this service consumes.
    #[serde(default)]
    pub consumes: Vec<String>,
    /// Consumer groups this service consumes with.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A data-residency rule: topics matching `topics` may only live in `regions`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResidencyRule {
    /// Regular expression matched against whole topic names.
    pub topics: String,
    /// Regions (as in `clusters.*.region`, `repositories.*.region`) allowed to hold them.
    pub regions: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterSection>,
    #[serde(default)]
    pub repositories: BTreeMap<String, RepositorySection>,
    #[serde(default)]
    pub jobs: BTreeMap<String, JobSection>,
    #[serde(default)]
    pub mirrors: BTreeMap<String, MirrorSection>,
    /// Named data-residency rules.
    #[serde(default)]
    pub residency: BTreeMap<String, ResidencyRule>,
    /// Services of the event-driven architecture (`haven impact --service NAME`).
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSection>,
    /// The etcd members holding the region lease and the fencing epoch.
    #[serde(default)]
    pub coordination: Option<crate::failover::config::CoordinationSection>,
    /// What each region runs.
    #[serde(default)]
    pub regions: crate::failover::config::Regions,
    /// The primary and standby regions, and the gates of an automatic failover.
    #[serde(default)]
    pub failover: Option<crate::failover::config::FailoverSection>,
    /// Postgres databases Haven fences, replicates and promotes.
    #[serde(default)]
    pub databases: BTreeMap<String, crate::failover::config::DatabaseSection>,
    /// Where each region's writes come in (HAProxy servers, hooks).
    #[serde(default)]
    pub routes: BTreeMap<String, crate::failover::config::RouteSection>,
    /// What a failback re-applies on its own: policies per table and topic.
    #[serde(default)]
    pub failback: Option<crate::failback::FailbackSection>,
    /// What the dashboard's readiness verdict measures against (RPO, RTO, drill and
    /// restore-test ages).
    #[serde(default)]
    pub objectives: Option<crate::posture::Objectives>,
    /// Webhooks told about failover steps, fencing, RPO breaches and drill verdicts.
    #[serde(default)]
    pub notify: BTreeMap<String, crate::notify::NotifySection>,
    /// Signed heads of the audit chains, written periodically by the agents.
    #[serde(default)]
    pub audit: Option<crate::recovery::audit_heads::AuditSection>,
    /// Scheduled restore tests, run by the agents (`haven drill schedule`).
    #[serde(default)]
    pub drills: BTreeMap<String, crate::drill::schedule::RestoreTestSection>,
}

pub const EXAMPLE: &str = r#"[clusters.us]
bootstrap = "kafka-us-1:9092,kafka-us-2:9092"
region = "us"

[clusters.eu]
bootstrap = "kafka-eu-1:9092"
region = "eu"
properties = { "security.protocol" = "SASL_SSL", "sasl.mechanism" = "PLAIN", "sasl.username" = "haven" }
# Secrets are references, read when a client starts and never printed: env:VAR or file:PATH.
secret_properties = { "sasl.password" = "env:KAFKA_EU_PASSWORD" }

[repositories.main]
url = "s3://acme-kafka-backup/prod"
region = "us"
key_file = "/etc/haven/main.key"
# `haven prune` deletes only what is past this and under no legal hold (`haven hold`).
retention = "7y"
retention_topics = { "debug\\..*" = "30d" }

[repositories.local]
url = "file:///var/lib/haven/backup"

[jobs.orders]
kind = "backup"
cluster = "us"
repository = "main"
topics = "orders\\..*"
flush_ms = 1000
readers = 4

[mirrors.us-to-eu]
from = "us"
to = "eu"
topics = "orders\\..*"
groups = ["billing", "shipping-.*"]

[residency.us-customers]
topics = "customers\\.us\\..*"
regions = ["us"]

[services.machine-management]
produces = ["machine-events"]
consumes = ["documents"]
groups = ["machine-management"]

[coordination]
endpoints = ["http://etcd-us:2379", "http://etcd-eu:2379", "http://etcd-witness:2379"]
lease_ttl_s = 10

[regions.us]
cluster = "us"

[regions.eu]
cluster = "eu"
mirror_in = "us-to-eu"

[failover]
primary = "us"
standby = "eu"
mode = "manual"
max_records_at_risk = 10000
max_seconds_at_risk = 60

[databases.ledger-us]
region = "us"
url = "postgresql://haven@pg-us:5432/ledger"
password_env = "HAVEN_PG_PASSWORD"
roles = ["ledger_app"]
peer = "ledger-eu"
local_tables = ["public.kyc_documents"]

[databases.ledger-eu]
region = "eu"
url = "postgresql://haven@pg-eu:5432/ledger"
password_env = "HAVEN_PG_PASSWORD"
roles = ["ledger_app"]

[routes.write-us]
region = "us"
kind = "haproxy"
socket = "/run/haproxy/admin.sock"
backend = "be_write"
server = "us"

[routes.write-eu]
region = "eu"
kind = "haproxy"
socket = "/run/haproxy/admin.sock"
backend = "be_write"
server = "eu"

# After an unplanned failover, what `haven failback reconcile --apply` may re-apply on its
# own (everything else is left for review): "manual" (default), "reapply-if-untouched",
# "keep-current"; topics by regular expression.
[failback]
policy = "manual"
tables = { "public.ledger_outbox" = "reapply-if-untouched" }
topics = { "payments\\..*" = "manual" }
money = ["public.ledger_transfers.amount"]

# What the dashboard's verdict (`haven serve`) measures against.
[objectives]
rpo_s = 60
rto_s = 60
drill_max_age_days = 90
restore_test_max_age_days = 30

# Webhooks: generic JSON, Slack-compatible or PagerDuty Events v2; events default to all
# of failover, fencing, rpo, posture, drill. Retried on 5xx, 429 and timeouts.
[notify.oncall]
url = "https://events.pagerduty.com/v2/enqueue"
format = "pagerduty"
routing_key_env = "HAVEN_PAGERDUTY_KEY"
events = ["failover", "fencing", "rpo"]

[notify.chat]
url = "https://hooks.slack.com/services/T000/B000/XXXX"
format = "slack"
"#;

impl Config {
    /// Where the config is looked for: `--config`, then `$HAVEN_CONFIG`, then `./haven.toml`.
    pub fn locate(flag: Option<&Path>) -> (PathBuf, bool) {
        if let Some(p) = flag {
            return (p.to_path_buf(), true);
        }
        if let Some(p) = std::env::var_os("HAVEN_CONFIG") {
            return (PathBuf::from(p), true);
        }
        (PathBuf::from("haven.toml"), false)
    }

    /// Loads the config. A missing default `./haven.toml` is an empty config; a missing file
    /// that was asked for explicitly is an error.
    pub fn load(flag: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
        let (path, explicit) = Self::locate(flag);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((Self::parse(&text, &path)?, Some(path))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok((Config::default(), None))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ConfigError::NotFound { path })
            }
            Err(source) => Err(ConfigError::Io { path, source }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let message = e.to_string();
            let hint = if message.contains("unknown field") {
                "\nfix: remove or correct the key (unknown keys are errors so that a typo never disables a setting)"
            } else if message.contains("missing field") {
                "\nfix: add the missing key (see the example in `haven config check --help`)"
            } else {
                "\nfix: correct the TOML syntax at the place shown"
            };
            ConfigError::Parse {
                path: path.to_path_buf(),
                message: message.trim_end().to_string(),
                hint: hint.to_string(),
            }
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        for (name, c) in &self.clusters {
            if let Err(why) = check_bootstrap(&c.bootstrap) {
                return Err(invalid(
                    format!("clusters.{name}.bootstrap"),
                    format!("{:?} is not a list of host:port: {why}", c.bootstrap),
                ));
            }
        }
        for (name, r) in &self.repositories {
            let u = &r.url;
            if u.is_empty()
                || (u.contains("://") && !(u.starts_with("file://") || u.starts_with("s3://")))
            {
                return Err(invalid(
                    format!("repositories.{name}.url"),
                    format!("{u:?}: use file:///PATH, a plain path, or s3://BUCKET/PREFIX"),
                ));
            }
        }
        for (name, c) in &self.clusters {
            secrets_checked(
                &format!("clusters.{name}"),
                &c.properties,
                &c.secret_properties,
                "properties",
                "secret_properties",
            )
            .map_err(|(k, m)| invalid(k, m))?;
        }
        for (name, r) in &self.repositories {
            secrets_checked(
                &format!("repositories.{name}"),
                &r.options,
                &r.secret_options,
                "options",
                "secret_options",
            )
            .map_err(|(k, m)| invalid(k, m))?;
            if let Err(e) = crate::retention::Policy::of(r, None) {
                let msg = match e {
                    crate::Error::Input(m) => m,
                    e => e.to_string(),
                };
                return Err(invalid(format!("repositories.{name}.retention"), msg));
            }
            if let Err(msg) = crate::erasure::rules::check(r) {
                return Err(invalid(
                    format!("repositories.{name}.erasure_subjects"),
                    msg,
                ));
            }
        }
        for (name, j) in &self.jobs {
            if !self.clusters.contains_key(&j.cluster) {
                return Err(invalid(
                    format!("jobs.{name}.cluster"),
                    format!(
                        "no cluster named {:?}: define [clusters.{}] or fix the name",
                        j.cluster, j.cluster
                    ),
                ));
            }
            if !self.repositories.contains_key(&j.repository) {
                return Err(invalid(
                    format!("jobs.{name}.repository"),
                    format!(
                        "no repository named {:?}: define [repositories.{}] or fix the name",
                        j.repository, j.repository
                    ),
                ));
            }
            if let Err(e) = regex::Regex::new(&j.topics) {
                return Err(invalid(
                    format!("jobs.{name}.topics"),
                    format!("not a regular expression: {e}"),
                ));
            }
        }
        for (name, r) in &self.residency {
            if let Err(e) = regex::Regex::new(&r.topics) {
                return Err(invalid(
                    format!("residency.{name}.topics"),
                    format!("not a regular expression: {e}"),
                ));
            }
            if r.regions.is_empty() {
                return Err(invalid(
                    format!("residency.{name}.regions"),
                    "empty: name at least one region the topics may live in".into(),
                ));
            }
        }
        for (name, svc) in &self.services {
            if svc.produces.is_empty() && svc.consumes.is_empty() {
                return Err(invalid(
                    format!("services.{name}"),
                    "names no topic: add `produces = [...]` and/or `consumes = [...]`".into(),
                ));
            }
            if !svc.consumes.is_empty() && svc.groups.is_empty() {
                return Err(invalid(
                    format!("services.{name}.groups"),
                    "the service consumes topics but names no consumer group: add `groups = [...]`"
                        .into(),
                ));
            }
        }
        for (name, m) in &self.mirrors {
            for (key, cluster) in [("from", &m.from), ("to", &m.to)] {
                if !self.clusters.contains_key(cluster) {
                    return Err(invalid(
                        format!("mirrors.{name}.{key}"),
                        format!(
                            "no cluster named {cluster:?}: define [clusters.{cluster}] or fix the name"
                        ),
                    ));
                }
            }
            if m.from == m.to {
                return Err(invalid(
                    format!("mirrors.{name}.to"),
                    "a mirror needs two different clusters".into(),
                ));
            }
            for (key, pattern) in
                std::iter::once(("topics", &m.topics)).chain(m.groups.iter().map(|g| ("groups", g)))
            {
                if let Err(e) = regex::Regex::new(pattern) {
                    return Err(invalid(
                        format!("mirrors.{name}.{key}"),
                        format!("{pattern:?} is not a regular expression: {e}"),
                    ));
                }
            }
            let region = self.clusters[&m.to].region.as_deref();
            if let Some(v) = self.residency_overlap(&m.topics, region) {
                return Err(invalid(
                    format!("mirrors.{name}"),
                    format!(
                        "would copy topics pinned by {v} to cluster {:?}; fix: narrow `topics` or mirror to an allowed region",
                        m.to
                    ),
                ));
            }
        }
        if let Err((key, message)) = crate::failover::config::validate(self) {
            return Err(invalid(key, message));
        }
        if let Some(Err((key, message))) = self.failback.as_ref().map(|f| f.validate()) {
            return Err(invalid(key, message));
        }
        if let Some(Err((key, message))) = self.objectives.as_ref().map(|o| o.validate()) {
            return Err(invalid(key, message));
        }
        if let Some(Err((key, message))) = self.audit.as_ref().map(|a| a.validate(self)) {
            return Err(invalid(key, message));
        }
        for (name, d) in &self.drills {
            if let Err((key, message)) = d.validate(name, self) {
                return Err(invalid(key, message));
            }
        }
        for (name, n) in &self.notify {
            if let Err((key, message)) = n.validate(name) {
                return Err(invalid(key, message));
            }
        }
        for (name, j) in &self.jobs {
            let region = self.repositories[&j.repository].region.as_deref();
            if let Some(v) = self.residency_overlap(&j.topics, region) {
                return Err(invalid(
                    format!("jobs.{name}"),
                    format!(
                        "would back up topics pinned by {v} to repository {:?}; fix: narrow `topics` or use a repository in an allowed region",
                        j.repository
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The residency rules as checkable regular expressions.
    pub fn residency_rules(&self) -> crate::residency::Rules {
        crate::residency::Rules::new(&self.residency)
    }

    /// A rule whose topics a job pattern may select and whose regions exclude `region`.
    fn residency_overlap(&self, pattern: &str, region: Option<&str>) -> Option<String> {
        self.residency_rules()
            .overlap(pattern, region)
            .map(|v| v.to_string())
    }

    /// Resolves `--brokers`: a cluster name from the config, else taken as `host:port,...`.
    pub fn cluster(&self, name_or_bootstrap: &str) -> ClusterSection {
        self.clusters
            .get(name_or_bootstrap)
            .cloned()
            .unwrap_or_else(|| ClusterSection {
                bootstrap: name_or_bootstrap.to_string(),
                region: None,
                properties: BTreeMap::new(),
                secret_properties: BTreeMap::new(),
            })
    }

    /// Resolves `--repo`: a repository name from the config, else taken as a URL.
    pub fn repository(&self, name_or_url: &str) -> RepositorySection {
        self.repositories
            .get(name_or_url)
            .cloned()
            .unwrap_or_else(|| RepositorySection {
                url: name_or_url.to_string(),
                region: None,
                key_file: None,
                options: BTreeMap::new(),
                secret_options: BTreeMap::new(),
                retention: None,
                retention_topics: BTreeMap::new(),
                erasure_subjects: BTreeMap::new(),
                subject_hash_key: None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("haven.toml"))
    }

    #[test]
    fn example_parses() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.clusters["us"].region.as_deref(), Some("us"));
        assert_eq!(c.jobs["orders"].kind, JobKind::Backup);
    }

    #[test]
    fn errors_name_file_key_and_fix() {
        let e = parse("[clusters.us]\nbootsrap = \"a:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("haven.toml") && e.contains("bootsrap") && e.contains("fix:"),
            "{e}"
        );
        let e = parse("[clusters.us]\nregion = \"us\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing field") && e.contains("bootstrap"),
            "{e}"
        );
        let e = parse("[clusters.us\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("syntax"), "{e}");
        let e =
            parse("[jobs.j]\nkind=\"backup\"\ncluster=\"x\"\nrepository=\"r\"\ntopics=\".*\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("jobs.j.cluster"), "{e}");
    }

    #[test]
    fn services_mirrors_and_residency_are_checked() {
        let e = parse("[services.a]\nconsumes = [\"t\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("services.a.groups"), "{e}");
        let e = parse("[services.a]\n").unwrap_err().to_string();
        assert!(e.contains("services.a") && e.contains("produces"), "{e}");
        let e = parse("[residency.r]\ntopics = \"x\"\nregions = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("residency.r.regions"), "{e}");
        let e = parse("[clusters.us]\nbootstrap = \"a:1\"\n[mirrors.m]\nfrom = \"us\"\nto = \"eu\"\ntopics = \".*\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mirrors.m.to") && e.contains("eu"), "{e}");
        let e = parse("[clusters.us]\nbootstrap = \"a:1\"\n[mirrors.m]\nfrom = \"us\"\nto = \"us\"\ntopics = \".*\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("two different clusters"), "{e}");
        let ok = parse("[services.a]\nproduces = [\"t\"]\n").unwrap();
        assert_eq!(ok.services["a"].produces, vec!["t".to_string()]);
    }

    #[test]
    fn databases_and_routes_are_checked() {
        let example = parse(EXAMPLE).unwrap();
        assert_eq!(
            example.databases["ledger-us"].peer.as_deref(),
            Some("ledger-eu")
        );
        assert_eq!(
            example.routes["write-eu"].kind,
            crate::failover::config::RouteKind::Haproxy
        );
        let fb = example.failback.clone().unwrap();
        use crate::failback::Policy;
        assert_eq!(
            fb.table_policy("public.ledger_outbox"),
            Policy::ReapplyIfUntouched
        );
        assert_eq!(fb.table_policy("public.ledger_accounts"), Policy::Manual);
        assert_eq!(fb.topic_policy("payments.settled"), Policy::Manual);
        assert_eq!(fb.money, vec!["public.ledger_transfers.amount".to_string()]);
        let with = |extra: &str| {
            parse(&format!("{EXAMPLE}\n{extra}"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let cases = [
            ("[databases.x]\nregion = \"mars\"\nurl = \"postgresql://h@db/x\"\n", "databases.x.region"),
            ("[databases.x]\nregion = \"us\"\nurl = \"mysql://db/x\"\n", "databases.x.url"),
            ("[databases.x]\nregion = \"us\"\nurl = \"postgresql://h:secret@db/x\"\n", "password_env"),
            ("[databases.x]\nregion = \"us\"\nurl = \"postgresql://h@db/x\"\npeer = \"ledger-us\"\n", "same region"),
            ("[databases.x]\nregion = \"eu\"\nurl = \"postgresql://h@db/x\"\npeer = \"nope\"\n", "databases.x.peer"),
            ("[databases.x]\nregion = \"eu\"\nurl = \"postgresql://h@db/x\"\nlocal_tables = [\"kyc\"]\n", "schema.table"),
            ("[databases.x]\nregion = \"eu\"\nurl = \"postgresql://h@db/x\"\nrolez = []\n", "rolez"),
            ("[routes.r]\nregion = \"us\"\nkind = \"haproxy\"\nsocket = \"/s\"\nbackend = \"b\"\n", "routes.r.server"),
            ("[routes.r]\nregion = \"us\"\nkind = \"http\"\nurl = \"ftp://x\"\n", "routes.r.url"),
            ("[routes.r]\nregion = \"us\"\nkind = \"bgp\"\n", "unknown variant `bgp`, expected one of"),
            ("[routes.r]\nregion = \"us\"\nkind = \"dns\"\n", "routes.r.dns_server"),
            ("[routes.r]\nregion = \"us\"\nkind = \"dns\"\ndns_server = \"ns:53\"\nzone = \"z.\"\nname = \"k.z.\"\naddress = \"10.0.0.1\"\nkey_name = \"k\"\nkey_file = \"/k\"\n", "is not IP:PORT"),
            ("[routes.r]\nregion = \"us\"\nkind = \"dns\"\ndns_server = \"10.0.0.53:53\"\nzone = \"z.\"\nname = \"k.other.\"\naddress = \"10.0.0.1\"\nkey_name = \"k\"\nkey_file = \"/k\"\n", "not in zone"),
            ("[routes.r]\nregion = \"us\"\nkind = \"dns\"\ndns_server = \"10.0.0.53:53\"\nzone = \"z.\"\nname = \"k.z.\"\naddress = \"10.0.0.1\"\nkey_name = \"k\"\n", "key_secret_env or key_file"),
            ("[routes.r]\nregion = \"asia\"\nkind = \"command\"\ncommand = \"true\"\n", "routes.r.region"),
            ("[repositories.r]\nurl = \"/x\"\nretention = \"7 years\"\n", "repositories.r.retention"),
            ("[repositories.r]\nurl = \"/x\"\noptions = { aws_secret_access_key = \"abc\" }\n", "secret_options"),
            ("[repositories.r]\nurl = \"/x\"\nsecret_options = { aws_secret_access_key = \"abc\" }\n", "env:VARIABLE"),
            ("[clusters.k]\nbootstrap = \"k:9092\"\nproperties = { \"sasl.password\" = \"abc\" }\n", "secret_properties"),
            ("[repositories.r]\nurl = \"/x\"\nretention_topics = { \"a(\" = \"1d\" }\n", "not a regular expression"),
            ("[repositories.r]\nurl = \"/x\"\nerasure_subjects = { \"pay\" = \"key\" }\n", "needs subject_hash_key"),
            ("[repositories.r]\nurl = \"/x\"\nsubject_hash_key = \"env:S\"\nerasure_subjects = { \"pay\" = \"body\" }\n", "header:NAME"),
        ];
        for (extra, want) in cases {
            let e = with(extra);
            assert!(e.contains(want), "{extra:?}: {e:?}");
        }
        // The password is never shown, even in an error about the URL.
        let e = with("[databases.x]\nregion = \"us\"\nurl = \"postgresql://h:secret@db/x\"\n");
        assert!(!e.contains("secret"), "{e}");
    }
}
