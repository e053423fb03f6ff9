//! Running a switchover or failover plan: preflight checks, the plan kept in the state
//! directory (a re-run continues an unfinished one), and the runner that executes each
//! step under the fencing epoch: every step before the lease step checks the epoch and
//! holder it was planned with; every step after it renews (or re-reads) the new tenure.
//! A stale plan stops before it changes anything.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use haven_etcd::{Acquired, Coordinator, Tenure};
use haven_pg::Pg;
use haven_routes::{Action, Hook, HookCall};
use serde::Serialize;

use super::config::RouteKind;
use super::plan::{self, FailoverPlan, FailoverStep, Kind, Phase};
use super::preflight::{check_residency, connect, pg_error, preflight, route_section, section};
use crate::config::Config;
use crate::events::Observer;
use crate::executor::{self, Execution, FileAudit, Progress, Runner};
use crate::{Error, Result};

/// The `agent` of a tenure a plan holds (`plan:KIND:WHO`): the region's agent carries it
/// on but leaves opening the region to the plan.
pub const PLAN_PREFIX: &str = "plan:";

/// The `agent` of a tenure a finished plan handed to the region's agent.
pub fn handed_to(region: &str) -> String {
    format!("handed:{region}")
}

/// Where a plan and its progress live: `STATE/KIND-to-REGION.json`.
pub fn plan_path(state_dir: &Path, kind: Kind, to: &str) -> PathBuf {
    state_dir.join(format!("{}-to-{to}.json", kind.as_str()))
}

/// A plan ready to run: new, or an unfinished one continued.
#[derive(Debug)]
pub struct Prepared {
    pub plan: FailoverPlan,
    pub path: PathBuf,
    /// Steps already done by an earlier run.
    pub done: usize,
}

/// Loads the unfinished plan for `to`, or checks the system and builds a new one.
pub async fn prepare(
    cfg: &Config,
    kind: Kind,
    to: &str,
    force: bool,
    state_dir: &Path,
) -> Result<Prepared> {
    let path = plan_path(state_dir, kind, to);
    if let Ok(raw) = std::fs::read(&path) {
        let plan: FailoverPlan = serde_json::from_slice(&raw).map_err(|e| {
            Error::Input(format!(
                "{} is not a {} plan: {e}; move it away to plan again",
                path.display(),
                kind.as_str()
            ))
        })?;
        let progress = Progress::load(&executor::progress_path(&path))?;
        if progress.done.len() < plan.steps.len() {
            return Ok(Prepared {
                done: progress.done.len(),
                plan,
                path,
            });
        }
        // Finished: keep it as a record, next to the new one.
        let done_path = path.with_extension(format!("e{}.done.json", plan.base_epoch + 1));
        let _ = std::fs::rename(&path, &done_path);
        let _ = std::fs::rename(
            executor::progress_path(&path),
            executor::progress_path(&done_path),
        );
    }
    if !cfg.regions.contains_key(to) {
        return Err(Error::Input(format!(
            "unknown region {to:?}: the config defines {}",
            cfg.regions.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let mut coord = super::coordinator(cfg).await?;
    let (epoch, holder) = coord.snapshot().await.map_err(|e| no_quorum(e, kind))?;
    let active = coord.active().await.map_err(|e| no_quorum(e, kind))?;
    let from = match (&holder, active) {
        (Some(h), _) => h.region.clone(),
        (None, Some(a)) => a,
        (None, None) => cfg
            .failover
            .as_ref()
            .map(|f| f.primary.clone())
            .unwrap_or_default(),
    };
    if from == to {
        return Err(Error::Input(format!(
            "{to} is already the active region (epoch {epoch}): nothing to do"
        )));
    }
    let from_rev = match (kind, &holder) {
        (Kind::Switchover, Some(h)) => Some((h.rev, h.lease)),
        (Kind::Switchover, None) => {
            return Err(Error::Input(format!(
                "no region holds the lease (last active: {from}): a switchover needs a live \
                 active region; if {from} is lost, run `haven failover --to {to}`"
            )))
        }
        (Kind::Failover, Some(h)) if !force => {
            return Err(Error::Input(format!(
                "region {} still holds the lease (epoch {}): it is alive as far as the etcd \
                 quorum knows. Use `haven switchover --to {to}` for a planned move; if you have \
                 confirmed that {} is down and cannot write (its hosts off or cut off), run \
                 again with --force",
                h.region, h.epoch, h.region
            )))
        }
        (Kind::Failover, Some(h)) => Some((h.rev, h.lease)),
        (Kind::Failover, None) => None,
    };
    let plan = plan::build(cfg, kind, &from, to, epoch, from_rev)?;
    preflight(cfg, &plan).await?;
    std::fs::create_dir_all(state_dir)
        .map_err(|e| Error::Input(format!("state directory {}: {e}", state_dir.display())))?;
    let body = serde_json::to_vec_pretty(&plan).map_err(|e| Error::Task(e.to_string()))?;
    std::fs::write(&path, body)
        .map_err(|e| Error::Input(format!("cannot write {}: {e}", path.display())))?;
    let _ = std::fs::remove_file(executor::progress_path(&path));
    Ok(Prepared {
        plan,
        path,
        done: 0,
    })
}

fn no_quorum(e: haven_etcd::EtcdError, kind: Kind) -> Error {
    let extra = match kind {
        Kind::Failover => {
            " --force cannot help: without a quorum no region can take the lease (by design, \
             writes stop). Break glass: confirm every old member's region is down, rebuild etcd \
             from one surviving member (`etcd --force-new-cluster`), then fail over"
        }
        Kind::Switchover => "",
    };
    Error::Unreachable(format!(
        "cannot read the lease: {e}; check `haven failover status`.{extra}"
    ))
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kind: Kind,
    pub from: String,
    pub to: String,
    pub epoch: u64,
    pub steps: usize,
    /// Steps this run did (the others were done by an earlier run).
    pub ran: usize,
    pub elapsed_ms: u64,
    /// Per database: what a failover could not bring over (remote_lsn, heartbeat age).
    pub evidence: Vec<serde_json::Value>,
    /// Per mirror into the new region: group commits, what it holds of each partition,
    /// records at risk (when the old region answered).
    pub kafka: Vec<serde_json::Value>,
    /// When the plan's steps ran, and the time per phase (over every run of the plan).
    pub timeline: Timeline,
    pub plan: PathBuf,
}

/// When a plan's steps ran (wall-clock ms since the Unix epoch), and the time its steps
/// of each phase took.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timeline {
    /// The first step's start and the last step's end; None before any step ran.
    pub started_ms: Option<i64>,
    pub done_ms: Option<i64>,
    /// Phase -> milliseconds its steps took.
    pub phases: BTreeMap<Phase, u64>,
}

/// The timeline of the steps done so far.
pub fn timeline(plan: &FailoverPlan, progress: &Progress) -> Timeline {
    let mut t = Timeline::default();
    for (i, step) in plan.steps.iter().enumerate() {
        let Some(at) = progress.timings.get(&i) else {
            continue;
        };
        t.started_ms = Some(t.started_ms.map_or(at.started_ms, |s| s.min(at.started_ms)));
        t.done_ms = Some(t.done_ms.map_or(at.done_ms, |d| d.max(at.done_ms)));
        *t.phases.entry(step.phase()).or_default() += (at.done_ms - at.started_ms).max(0) as u64;
    }
    t
}

/// The plan kept at `path` (see [`plan_path`], or a finished one renamed beside it) and
/// its timeline.
pub fn load_timeline(path: &Path) -> Result<(FailoverPlan, Timeline)> {
    let raw = std::fs::read(path)
        .map_err(|e| Error::Input(format!("cannot read plan {}: {e}", path.display())))?;
    let plan: FailoverPlan = serde_json::from_slice(&raw)
        .map_err(|e| Error::Input(format!("{} is not a failover plan: {e}", path.display())))?;
    let progress = Progress::load(&executor::progress_path(path))?;
    let t = timeline(&plan, &progress);
    Ok((plan, t))
}

/// Runs the plan's remaining steps.
pub async fn execute(
    cfg: &Config,
    prepared: &Prepared,
    agent_id: &str,
    observer: &dyn Observer,
) -> Result<Report> {
    let started = Instant::now();
    let plan = &prepared.plan;
    let coord = super::coordinator(cfg).await?;
    let mut progress = Progress::load(&executor::progress_path(&prepared.path))?;
    let sha = crate::recovery::audit::sha256_of(plan);
    let state_dir = prepared
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let audit = FileAudit {
        dir: state_dir.join("audit"),
    };
    let mut runner = FailoverRunner {
        cfg,
        plan,
        coord,
        agent_id: agent_id.to_string(),
        tenure: None,
        epoch: plan.base_epoch,
        dbs: HashMap::new(),
        sha: sha.clone(),
        observer,
    };
    let ex = Execution {
        action: plan.kind.as_str(),
        plan_sha256: &sha,
        audit: &audit,
        observer,
    };
    let ran = executor::execute(&plan.steps, &mut progress, &mut runner, &ex).await?;
    let results_of = |f: fn(&FailoverStep) -> bool| -> Vec<serde_json::Value> {
        progress
            .done
            .iter()
            .filter(|(i, _)| plan.steps.get(**i).is_some_and(f))
            .map(|(_, v)| v.clone())
            .collect()
    };
    let evidence = results_of(|s| matches!(s, FailoverStep::Detach { .. }));
    let kafka = results_of(|s| matches!(s, FailoverStep::SyncGroups { .. }));
    let epoch = plan
        .lease_step()
        .and_then(|i| progress.result(i))
        .and_then(|v| v.get("epoch"))
        .and_then(|v| v.as_u64())
        .unwrap_or(runner.epoch);
    Ok(Report {
        kind: plan.kind,
        from: plan.from.clone(),
        to: plan.to.clone(),
        epoch,
        steps: plan.steps.len(),
        ran: ran.len(),
        elapsed_ms: started.elapsed().as_millis() as u64,
        evidence,
        kafka,
        timeline: timeline(plan, &progress),
        plan: prepared.path.clone(),
    })
}

struct FailoverRunner<'a> {
    cfg: &'a Config,
    plan: &'a FailoverPlan,
    coord: Coordinator,
    agent_id: String,
    tenure: Option<Tenure>,
    epoch: u64,
    dbs: HashMap<String, Pg>,
    sha: String,
    observer: &'a dyn Observer,
}

impl FailoverRunner<'_> {
    async fn pg(&mut self, database: &str) -> Result<&Pg> {
        if !self.dbs.contains_key(database) {
            let pg = connect(self.cfg, database).await?;
            self.dbs.insert(database.to_string(), pg);
        }
        self.dbs
            .get(database)
            .ok_or_else(|| Error::Task("database connection vanished".into()))
    }

    fn stale(&self, why: String) -> Error {
        Error::Input(format!(
            "this {} plan is stale: {why}; nothing more is done. Check `haven failover status`",
            self.plan.kind.as_str()
        ))
    }

    async fn route(&self, index: usize, route: &str, action: Action) -> Result<serde_json::Value> {
        let r = route_section(self.cfg, route)?;
        match r.kind {
            RouteKind::Haproxy => {
                let st = r
                    .haproxy(route)
                    .apply(action)
                    .await
                    .map_err(|e| Error::Unreachable(e.to_string()))?;
                Ok(serde_json::json!({"admin_state": st.admin_state, "op_state": st.op_state}))
            }
            RouteKind::Dns => {
                let d = r
                    .dns(route)
                    .map_err(|(k, m)| Error::Input(format!("{k}: {m}")))?;
                d.apply(action, self.epoch)
                    .await
                    .map_err(|e| Error::Unreachable(e.to_string()))?;
                Ok(serde_json::json!({"epoch": self.epoch, "address": d.address}))
            }
            RouteKind::Command | RouteKind::Http => {
                let hook = if r.kind == RouteKind::Command {
                    Hook::Command(r.command.clone().unwrap_or_default())
                } else {
                    Hook::Http(r.url.clone().unwrap_or_default())
                };
                let call = HookCall {
                    route: route.into(),
                    action,
                    region: r.region.clone(),
                    active: self.plan.to.clone(),
                    epoch: self.epoch,
                    idempotency_key: format!("{}-{index}", &self.sha[..16]),
                };
                haven_routes::run_hook(&hook, &call, r.timeout())
                    .await
                    .map_err(|e| Error::Unreachable(e.to_string()))?;
                Ok(serde_json::json!({"epoch": self.epoch}))
            }
        }
    }

    async fn take_lease(
        &mut self,
        region: &str,
        from: Option<(i64, i64)>,
    ) -> Result<serde_json::Value> {
        let (epoch, holder) = self.coord.snapshot().await.map_err(etcd_error)?;
        if let Some(h) = &holder {
            if h.region == region && h.epoch > self.plan.base_epoch {
                // An earlier run took it (and stopped before recording it).
                self.epoch = h.epoch;
                return Ok(serde_json::json!({"epoch": h.epoch, "already": true}));
            }
        }
        let ttl = self
            .cfg
            .coordination
            .as_ref()
            .map(|c| c.lease_ttl())
            .unwrap_or(Duration::from_secs(10));
        if epoch != self.plan.base_epoch {
            return Err(self.stale(format!(
                "the epoch moved from {} to {epoch}",
                self.plan.base_epoch
            )));
        }
        let agent = format!("{PLAN_PREFIX}{}:{}", self.plan.kind.as_str(), self.agent_id);
        let got = self
            .coord
            .take_over(region, &agent, ttl, epoch, from)
            .await
            .map_err(etcd_error)?;
        match got {
            Acquired::Won(t) => {
                self.epoch = t.epoch;
                let e = t.epoch;
                self.tenure = Some(*t);
                Ok(serde_json::json!({"epoch": e}))
            }
            Acquired::Held(h) => Err(self.stale(format!(
                "region {} took the lease (epoch {}) since this plan was made",
                h.region, h.epoch
            ))),
        }
    }
}

fn etcd_error(e: haven_etcd::EtcdError) -> Error {
    Error::Unreachable(e.to_string())
}

#[async_trait::async_trait]
impl Runner<FailoverStep> for FailoverRunner<'_> {
    async fn guard(&mut self, index: usize, _step: &FailoverStep, done: &Progress) -> Result<()> {
        let lease = self.plan.lease_step().unwrap_or(0);
        if index > lease {
            if let Some(t) = self.tenure.as_mut() {
                let epoch = t.epoch;
                return match self.coord.renew(t).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(self.stale(format!("the lease of epoch {epoch} was lost"))),
                    Err(e) => Err(etcd_error(e)),
                };
            }
            let want = done
                .result(lease)
                .and_then(|v| v.get("epoch"))
                .and_then(|v| v.as_u64());
            let (epoch, holder) = self.coord.snapshot().await.map_err(etcd_error)?;
            let ok =
                holder.as_ref().is_some_and(|h| h.region == self.plan.to) && Some(epoch) == want;
            if !ok {
                return Err(self.stale(format!(
                    "the epoch is {epoch} (holder: {}), not the {:?} this plan took",
                    holder.map_or("none".into(), |h| h.region),
                    want
                )));
            }
            self.epoch = epoch;
            return Ok(());
        }
        let (epoch, holder) = self.coord.snapshot().await.map_err(etcd_error)?;
        if index == lease {
            if let Some(h) = &holder {
                if h.region == self.plan.to && h.epoch > self.plan.base_epoch {
                    return Ok(());
                }
            }
        }
        if epoch != self.plan.base_epoch {
            return Err(self.stale(format!(
                "the epoch moved from {} to {epoch} since it was made (another switchover or failover ran)",
                self.plan.base_epoch
            )));
        }
        if self.plan.kind == Kind::Switchover
            && holder.as_ref().is_none_or(|h| h.region != self.plan.from)
        {
            return Err(self.stale(format!(
                "{} no longer holds the lease (holder: {})",
                self.plan.from,
                holder.map_or("none".into(), |h| h.region)
            )));
        }
        Ok(())
    }

    async fn run(
        &mut self,
        index: usize,
        step: &FailoverStep,
        _: &Progress,
    ) -> Result<serde_json::Value> {
        match step {
            FailoverStep::TakeLease { region, from } => self.take_lease(region, *from).await,
            FailoverStep::CloseRoute { route, best_effort } => {
                match self.route(index, route, Action::Close).await {
                    Err(e) if *best_effort => Ok(serde_json::json!({"skipped": e.to_string()})),
                    r => r,
                }
            }
            FailoverStep::OpenRoute { route } => self.route(index, route, Action::Open).await,
            FailoverStep::AwaitMirror { mirror, timeout_s } => {
                super::kafka::await_mirror(self.cfg, mirror, Duration::from_secs(*timeout_s)).await
            }
            FailoverStep::SyncGroups {
                mirror,
                source_alive,
            } => super::kafka::sync_groups(self.cfg, mirror, *source_alive, self.observer).await,
            FailoverStep::Finish { region } => {
                let (rev, lease) = match &self.tenure {
                    Some(t) => (t.rev, t.lease),
                    None => {
                        let h = self.coord.holder().await.map_err(etcd_error)?;
                        match h {
                            Some(h) if h.region == *region => (h.rev, h.lease),
                            _ => {
                                return Err(
                                    self.stale(format!("{region} no longer holds the lease"))
                                )
                            }
                        }
                    }
                };
                let label = handed_to(region);
                if !self
                    .coord
                    .relabel(rev, lease, &label)
                    .await
                    .map_err(etcd_error)?
                {
                    return Err(self.stale(format!("{region}'s tenure ended before the hand-over")));
                }
                Ok(serde_json::json!({"agent": label}))
            }
            FailoverStep::Fence {
                database,
                best_effort,
            } => {
                let roles = section(self.cfg, database)?.roles.clone();
                let fenced = async {
                    let pg = self.pg(database).await?;
                    pg.fence(&roles).await.map_err(pg_error)
                }
                .await;
                match fenced {
                    Ok(n) => Ok(serde_json::json!({"sessions_ended": n})),
                    Err(e) if *best_effort => {
                        self.dbs.remove(database.as_str());
                        Ok(serde_json::json!({"skipped": e.to_string()}))
                    }
                    Err(e) => Err(e),
                }
            }
            FailoverStep::Unfence { database } => {
                let roles = section(self.cfg, database)?.roles.clone();
                self.pg(database)
                    .await?
                    .unfence(&roles)
                    .await
                    .map_err(pg_error)?;
                Ok(serde_json::json!({"roles": roles}))
            }
            FailoverStep::Barrier { database, token } => {
                self.pg(database)
                    .await?
                    .write_barrier(token)
                    .await
                    .map_err(pg_error)?;
                Ok(serde_json::json!({"token": token}))
            }
            FailoverStep::AwaitBarrier {
                database,
                token,
                timeout_s,
            } => {
                let deadline = Instant::now() + Duration::from_secs(*timeout_s);
                let waited = Instant::now();
                loop {
                    if self
                        .pg(database)
                        .await?
                        .has_barrier(token)
                        .await
                        .map_err(pg_error)?
                    {
                        return Ok(
                            serde_json::json!({"waited_ms": waited.elapsed().as_millis() as u64}),
                        );
                    }
                    if Instant::now() >= deadline {
                        return Err(Error::Unreachable(format!(
                            "{database} did not receive barrier {token} within {timeout_s} s: \
                             is its subscription running (see `haven failover status`)?"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            FailoverStep::SyncSequences {
                database,
                source,
                gap,
            } => {
                let known = match connect(self.cfg, source).await {
                    Ok(src) => src.sequences().await.ok(),
                    Err(_) => None,
                };
                let from_source = known.is_some();
                let set = self
                    .pg(database)
                    .await?
                    .advance_sequences(&known.unwrap_or_default(), *gap)
                    .await
                    .map_err(pg_error)?;
                Ok(serde_json::json!({"from_source": from_source, "set": set}))
            }
            FailoverStep::Detach {
                database,
                subscription,
                source_alive,
            } => {
                let epoch = self.epoch;
                let pg = self.pg(database).await?;
                let lag = pg.replica_lag(subscription).await.map_err(pg_error)?;
                let d = pg
                    .detach(subscription, *source_alive, epoch)
                    .await
                    .map_err(pg_error)?;
                Ok(serde_json::json!({
                    "database": database,
                    "remote_lsn": d.remote_lsn,
                    "dropped": d.dropped,
                    "heartbeat_age_s": lag.seconds,
                }))
            }
            FailoverStep::Publish {
                database,
                publication,
            } => {
                let local = section(self.cfg, database)?.local_tables.clone();
                let pg = self.pg(database).await?;
                pg.ensure_publication(publication).await.map_err(pg_error)?;
                let published = pg
                    .published_tables(publication)
                    .await
                    .map_err(pg_error)?
                    .unwrap_or_default();
                check_residency(database, &local, &published)?;
                Ok(serde_json::json!({"tables": published.len()}))
            }
            FailoverStep::Subscribe {
                database,
                subscription,
                publisher,
                publication,
            } => {
                let conninfo = section(self.cfg, publisher)?.subscription_conninfo(publisher)?;
                self.pg(database)
                    .await?
                    .ensure_subscription(subscription, &conninfo, publication, false)
                    .await
                    .map_err(pg_error)?;
                Ok(serde_json::json!({"subscription": subscription, "publisher": publisher}))
            }
        }
    }

    fn epoch(&self) -> Option<u64> {
        Some(self.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residency_names_the_leaking_tables() {
        let e = check_residency(
            "ledger-eu",
            &["public.kyc".into()],
            &["public.kyc".into(), "public.a".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("public.kyc") && e.contains("ledger-eu"), "{e}");
        assert!(check_residency("x", &["public.kyc".into()], &["public.a".into()]).is_ok());
    }
}
