//! The whole DR posture in one reading, for `haven serve` (the dashboard and its API) and
//! `haven status`: the active region and its epoch, the RPO ledger (mirrors into the
//! standby, replicas), every mirror and backup with its lag in seconds, the repositories'
//! integrity, the drills and the last restore test, then the findings and the verdict in
//! words ([`readiness`]).
//!
//! Read from the systems themselves (clusters, repositories, etcd, Postgres), never from a
//! job's memory: a job that died shows as lag, not as silence. A part that cannot be read
//! is named in `unknown`; the rest is still shown. A [`Reader`] keeps what it can between
//! readings (repository catalogs, audit entries, drill reports) and reads only what is new.

pub mod backups;
pub mod compliance;
pub mod metrics;
pub mod readiness;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use backups::{BackupPartition, BackupRow};
pub use readiness::{Finding, Readiness};

use crate::config::Config;
use crate::failover::status::FailoverStatus;
use crate::mirror::status::PartitionStatus;
use crate::mirror::MirrorOptions;
use crate::recovery::audit::{self, Entry};
use crate::repo::{RepoState, Repository};

/// Records at risk read per mirrored partition and reading: the lag in seconds stays
/// exact, a count past it is an upper bound (`exact: false`); `haven failover status`
/// reads them all.
const SCAN_LIMIT: Option<i64> = Some(100);

/// `[objectives]`: what readiness is measured against.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Objectives {
    /// Data a lost region may cost, in seconds of writes.
    pub rpo_s: u64,
    /// Time to take writes again in the other region, in seconds.
    pub rto_s: u64,
    /// A passing drill at least this often.
    pub drill_max_age_days: u64,
    /// A tested restore at least this often.
    pub restore_test_max_age_days: u64,
    /// A backup with records waiting and nothing durable this long is stalled.
    pub stall_s: u64,
}

impl Default for Objectives {
    fn default() -> Self {
        Objectives {
            rpo_s: 60,
            rto_s: 60,
            drill_max_age_days: 90,
            restore_test_max_age_days: 30,
            stall_s: 300,
        }
    }
}

impl Objectives {
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        let bad = |k: &str, why: &str| Err((format!("objectives.{k}"), why.to_string()));
        if self.rpo_s == 0 {
            return bad(
                "rpo_s",
                "must be at least one second (a target of 0 is never met)",
            );
        }
        if self.rto_s == 0 {
            return bad(
                "rto_s",
                "must be at least one second (a target of 0 is never met)",
            );
        }
        if self.drill_max_age_days == 0 || self.restore_test_max_age_days == 0 {
            return bad("drill_max_age_days", "ages must be at least one day");
        }
        if self.stall_s == 0 {
            return bad("stall_s", "must be at least one second");
        }
        Ok(())
    }
}

/// One configured mirror and its partitions.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorRow {
    pub name: String,
    pub from: String,
    pub to: String,
    /// It copies into a region a failover would go to (its lag is in the RPO ledger).
    pub into_standby: bool,
    pub partitions: Vec<PartitionStatus>,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// A repository's integrity as far as a reading can tell without reading every chunk:
/// the segment chain and the audit chain.
#[derive(Debug, Clone, Serialize)]
pub struct RepositoryRow {
    pub name: String,
    pub url: String,
    pub segments: u64,
    pub last_segment_at: Option<i64>,
    pub audit_entries: u64,
    pub audit_last_at: Option<i64>,
    /// Broken segment chain, damaged audit chain, unreadable drill reports.
    pub problems: Vec<String>,
    /// Retention, holds, keys and erasures (empty when the repository could not be read).
    pub compliance: compliance::Compliance,
}

/// A drill, as the dashboard lists it (the report stays in its repository).
#[derive(Debug, Clone, Serialize)]
pub struct DrillSummary {
    pub id: String,
    pub scenario: String,
    /// `PASS` or `FAIL`.
    pub verdict: String,
    pub started_at: String,
    pub rto_s: Option<f64>,
    pub lost: Option<u64>,
    pub failures: Vec<String>,
    pub repository: String,
}

impl DrillSummary {
    pub fn age_s(&self, now_ms: i64) -> Option<f64> {
        let t = chrono::DateTime::parse_from_rfc3339(&self.started_at).ok()?;
        Some((now_ms - t.timestamp_millis()).max(0) as f64 / 1000.0)
    }
}

/// One reading.
#[derive(Debug, Clone, Serialize)]
pub struct Posture {
    /// When the reading started (unix ms) and how long it took.
    pub taken_at: i64,
    pub took_ms: u64,
    pub objectives: Objectives,
    /// Regions, epoch, RPO ledger, databases (None without `[failover]`).
    pub failover: Option<FailoverStatus>,
    /// Mirrors not in the RPO ledger (the ledger has those into the standby).
    pub mirrors: Vec<MirrorRow>,
    pub backups: Vec<BackupRow>,
    pub repositories: Vec<RepositoryRow>,
    /// Newest first.
    pub drills: Vec<DrillSummary>,
    /// The last audited `restore` (ms).
    pub last_restore_test_at: Option<i64>,
    /// Parts that could not be read, with the reason.
    pub unknown: Vec<String>,
    pub findings: Vec<Finding>,
    pub readiness: Readiness,
}

impl Posture {
    /// Every mirrored partition with its mirror's name: the ledger's, then the others.
    pub fn mirror_partitions(&self) -> impl Iterator<Item = (&str, &PartitionStatus)> {
        self.failover
            .iter()
            .flat_map(|f| f.ledger.iter().map(|r| (r.mirror.as_str(), &r.partition)))
            .chain(
                self.mirrors
                    .iter()
                    .flat_map(|m| m.partitions.iter().map(move |p| (m.name.as_str(), p))),
            )
    }

    /// The worst lag now: mirrors, replicas, backups.
    pub fn rpo_now_s(&self) -> f64 {
        let f = self.failover.as_ref().map_or(0.0, |f| f.rpo_seconds);
        self.mirror_partitions()
            .map(|(_, p)| p.lag_seconds)
            .chain(
                self.backups
                    .iter()
                    .flat_map(|b| b.partitions.iter().map(|p| p.lag_seconds)),
            )
            .fold(f, f64::max)
    }
}

/// What a reader keeps of one repository between readings.
struct RepoCache {
    repo: Repository,
    state: RepoState,
    /// Audit entries read so far, by key.
    audit: Vec<(String, Entry)>,
    /// The audit chain's problems at `audit.len()` entries.
    audit_problems: Vec<String>,
    drill_keys: Vec<String>,
    drills: Vec<DrillSummary>,
    /// Why the drill reports could not be read.
    drill_problem: Option<String>,
    /// The holds in force, read when this many `hold-*` audit entries were on record.
    holds: Option<(usize, Vec<crate::retention::holds::Hold>)>,
}

/// Takes readings of one configuration, reusing what it read before.
pub struct Reader {
    cfg: Config,
    repos: HashMap<String, RepoCache>,
}

impl Reader {
    pub fn new(cfg: Config) -> Reader {
        Reader {
            cfg,
            repos: HashMap::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The repository named `name` in the config, opened (once).
    pub async fn repository(&mut self, name: &str) -> crate::Result<Repository> {
        Ok(self.open(name).await?.repo.clone())
    }

    /// What is kept of repository `name`, read up to date.
    async fn cache(&mut self, name: &str) -> crate::Result<&mut RepoCache> {
        let c = self.open(name).await?;
        let fresh = c.repo.clone();
        fresh.refresh_state(&mut c.state).await?;
        refresh_audit(c).await?;
        refresh_drills(c, name).await?;
        Ok(c)
    }

    /// What is kept of repository `name`, opened on first use but not re-read: requests
    /// between readings see the last reading's entries (the sampler re-reads).
    async fn open(&mut self, name: &str) -> crate::Result<&mut RepoCache> {
        if !self.repos.contains_key(name) {
            let section = self.cfg.repositories.get(name).ok_or_else(|| {
                crate::Error::Input(format!(
                    "no repository named {name:?} in the config: define [repositories.{name}]"
                ))
            })?;
            let repo = crate::repo::open_configured(section, None, false).await?;
            self.repos.insert(
                name.to_string(),
                RepoCache {
                    repo,
                    state: RepoState::default(),
                    audit: Vec::new(),
                    audit_problems: Vec::new(),
                    drill_keys: Vec::new(),
                    drills: Vec::new(),
                    drill_problem: None,
                    holds: None,
                },
            );
        }
        Ok(self.repos.get_mut(name).expect("inserted above"))
    }

    /// One reading of everything the config names.
    pub async fn read(&mut self) -> Posture {
        let started = std::time::Instant::now();
        let taken_at = chrono::Utc::now().timestamp_millis();
        let objectives = self.cfg.objectives.clone().unwrap_or_default();
        let mut unknown = Vec::new();
        let failover = match &self.cfg.failover {
            Some(_) => match crate::failover::status::status_limited(&self.cfg, SCAN_LIMIT).await {
                Ok(s) => {
                    unknown.extend(s.unknown.iter().cloned());
                    Some(s)
                }
                Err(e) => {
                    unknown.push(format!("failover status: {e}"));
                    None
                }
            },
            None => None,
        };
        let in_ledger: Vec<String> = failover
            .iter()
            .flat_map(|f| f.ledger.iter().map(|r| r.mirror.clone()))
            .collect();
        let standby_mirrors: Vec<String> = self
            .cfg
            .regions
            .values()
            .filter_map(|r| r.mirror_in.clone())
            .collect();
        let mut mirrors = Vec::new();
        for (name, m) in &self.cfg.mirrors {
            if in_ledger.contains(name) {
                continue;
            }
            let mut row = MirrorRow {
                name: name.clone(),
                from: m.from.clone(),
                to: m.to.clone(),
                into_standby: standby_mirrors.contains(name),
                partitions: Vec::new(),
                error: None,
            };
            let t = std::time::Instant::now();
            let res = match MirrorOptions::from_config(&self.cfg, name) {
                Ok(opts) => crate::mirror::status::status_limited(&opts, SCAN_LIMIT).await,
                Err(e) => Err(e),
            };
            tracing::debug!(mirror = %name, took_ms = t.elapsed().as_millis() as u64, "posture: mirror read");
            match res {
                Ok(p) => row.partitions = p,
                Err(e) => {
                    unknown.push(format!("mirror {name}: {e}"));
                    row.error = Some(e.to_string());
                }
            }
            mirrors.push(row);
        }
        let names: Vec<String> = self.cfg.repositories.keys().cloned().collect();
        let mut repositories = Vec::new();
        let mut drills = Vec::new();
        let mut last_restore_test_at = None;
        for name in &names {
            let mut row = RepositoryRow {
                name: name.clone(),
                url: self.cfg.repositories[name].url.clone(),
                segments: 0,
                last_segment_at: None,
                audit_entries: 0,
                audit_last_at: None,
                problems: Vec::new(),
                compliance: compliance::Compliance::default(),
            };
            let section = self.cfg.repositories[name].clone();
            match self.cache(name).await {
                Ok(c) => {
                    let events = c
                        .audit
                        .iter()
                        .filter(|(_, e)| e.action.starts_with("hold-"))
                        .count();
                    let holds = match &c.holds {
                        Some((n, h)) if *n == events => Ok(h.clone()),
                        _ => match crate::retention::holds::in_force(&c.repo).await {
                            Ok(h) => {
                                c.holds = Some((events, h.clone()));
                                Ok(h)
                            }
                            Err(e) => Err(e.to_string()),
                        },
                    };
                    row.compliance =
                        compliance::summarize(&section, &c.repo, &c.audit, holds, taken_at);
                    row.segments = c.state.segments;
                    row.last_segment_at = c.state.last_segment_at;
                    row.audit_entries = c.audit.len() as u64;
                    row.audit_last_at = c.audit.last().map(|(_, e)| e.at);
                    row.problems = c
                        .state
                        .chain_breaks
                        .iter()
                        .map(|(k, why)| format!("{k}: {why}"))
                        .chain(c.audit_problems.iter().cloned())
                        .chain(c.drill_problem.iter().cloned())
                        .collect();
                    drills.extend(c.drills.iter().cloned());
                    let restore = c
                        .audit
                        .iter()
                        .filter(|(_, e)| e.action == "restore")
                        .map(|(_, e)| e.at)
                        .max();
                    last_restore_test_at = last_restore_test_at.max(restore);
                }
                Err(e) => {
                    unknown.push(format!("repository {name}: {e}"));
                    row.problems.push(format!("cannot be read: {e}"));
                }
            }
            repositories.push(row);
        }
        drills.sort_by(|a, b| b.started_at.cmp(&a.started_at));
        let mut backups = Vec::new();
        let no_catalog = RepoState::default();
        for (job, j) in &self.cfg.jobs {
            let state = self
                .repos
                .get(&j.repository)
                .map_or(&no_catalog, |c| &c.state);
            let t = std::time::Instant::now();
            let row = backups::read(&self.cfg, job, j, state).await;
            tracing::debug!(job = %job, took_ms = t.elapsed().as_millis() as u64, "posture: backup read");
            if let Some(e) = &row.error {
                unknown.push(format!("backup {job}: {e}"));
            }
            backups.push(row);
        }
        let mut p = Posture {
            taken_at,
            took_ms: 0,
            objectives,
            failover,
            mirrors,
            backups,
            repositories,
            drills,
            last_restore_test_at,
            unknown,
            findings: Vec::new(),
            readiness: Readiness::default(),
        };
        let now = chrono::Utc::now().timestamp_millis();
        p.findings = readiness::findings(&p, now);
        p.readiness = readiness::readiness(&p, &p.findings, now);
        p.took_ms = started.elapsed().as_millis() as u64;
        p
    }

    /// A page of `repository`'s audit log as of the last reading, newest first: entries
    /// with a sequence number below `before` (all when None), at most `limit`.
    pub async fn audit_page(
        &mut self,
        repository: &str,
        before: Option<u64>,
        limit: usize,
    ) -> crate::Result<Vec<Entry>> {
        let read = self.repos.contains_key(repository);
        let c = if read {
            self.open(repository).await?
        } else {
            self.cache(repository).await?
        };
        Ok(c.audit
            .iter()
            .rev()
            .map(|(_, e)| e)
            .filter(|e| before.is_none_or(|b| e.seq.is_some_and(|s| s < b)))
            .take(limit)
            .cloned()
            .collect())
    }
}

/// Reads audit entries written since the last reading and re-checks the chain when there
/// are new ones.
async fn refresh_audit(c: &mut RepoCache) -> crate::Result<()> {
    let mut keys: Vec<String> = c
        .repo
        .store()
        .list("audit/")
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with(".json"))
        .collect();
    keys.sort();
    if keys.len() == c.audit.len() && keys.iter().zip(&c.audit).all(|(k, (a, _))| k == a) {
        return Ok(());
    }
    let mut known: HashMap<String, Entry> = c.audit.drain(..).collect();
    for k in keys {
        let e = match known.remove(&k) {
            Some(e) => e,
            None => {
                let raw = c.repo.store().get(&k).await?;
                serde_json::from_slice(&raw)
                    .map_err(|e| crate::Error::Damaged(format!("{k}: not an audit entry: {e}")))?
            }
        };
        c.audit.push((k, e));
    }
    let report = crate::recovery::audit_verify::verify_chain(&c.repo, None, &[]).await?;
    c.audit_problems = report.problems;
    Ok(())
}

/// Re-reads drill reports when the set of stored ones changed.
async fn refresh_drills(c: &mut RepoCache, name: &str) -> crate::Result<()> {
    let mut keys: Vec<String> = c
        .repo
        .store()
        .list("drills/")
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with(".json"))
        .collect();
    keys.sort();
    if keys == c.drill_keys {
        return Ok(());
    }
    c.drill_problem = None;
    c.drills = match crate::drill::stored(&c.repo).await {
        Ok(reports) => reports
            .into_iter()
            .map(|r| DrillSummary {
                id: r.id,
                scenario: r.scenario,
                verdict: format!("{:?}", r.verdict).to_uppercase(),
                started_at: r.started_at,
                rto_s: r.measured.rto_s,
                lost: r.measured.lost,
                failures: r.failures,
                repository: name.to_string(),
            })
            .collect(),
        Err(e) => {
            c.drill_problem = Some(format!("drill reports: {e}"));
            Vec::new()
        }
    };
    c.drill_keys = keys;
    Ok(())
}

/// The audit entries of a reading are the repository's; re-exported for the faces.
pub use audit::Entry as AuditEntry;
