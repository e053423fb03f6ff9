//! The plan executor: runs a plan's steps in order, the same way for every face (the CLI,
//! the agent, the HTTP API) and every kind of plan (a recovery, a switchover, a failover).
//!
//! - **Progress** is kept in a file next to the plan, rewritten atomically after each
//!   step with the step's result: a run that stopped (a failure, a crash, kill -9)
//!   continues with the first step not recorded. A step can therefore run twice (done,
//!   then the process died before recording it): every step must be idempotent.
//! - **Guard**: before each step the runner checks that the plan still holds (for a
//!   failover: the fencing epoch); a stale plan stops before it changes anything.
//! - **Audit**: every step done is recorded, with the plan's SHA-256 and the epoch.
//! - **Events**: `StepStarted` and `StepDone` for progress and metrics.
//!
//! A failed step stops the run with [`Error::StepFailed`], which names the step and says
//! that re-running continues from it. Plans put their fencing steps first and their
//! unfencing steps last, so a stop half-way leaves the system fenced (fail closed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::events::{Event, Observer};
use crate::{Error, Result};

/// A step of a plan.
pub trait Step: Serialize + DeserializeOwned + Clone + Send + Sync {
    /// One line for people ("close route write-us").
    fn describe(&self) -> String;
}

/// Runs the steps of one kind of plan.
#[async_trait::async_trait]
pub trait Runner<S: Step>: Send {
    /// Checks, before step `index`, that the plan still holds; `done` holds the results
    /// of the steps done so far (this run's and earlier runs').
    async fn guard(&mut self, _index: usize, _step: &S, _done: &Progress) -> Result<()> {
        Ok(())
    }

    /// Runs one step; returns what it did (recorded in the progress and the audit log).
    async fn run(&mut self, index: usize, step: &S, done: &Progress) -> Result<serde_json::Value>;

    /// The fencing epoch the step ran under, for the audit log.
    fn epoch(&self) -> Option<u64> {
        None
    }
}

/// Where the steps done are recorded.
#[async_trait::async_trait]
pub trait Audit: Send + Sync {
    async fn record(
        &self,
        action: &str,
        plan_sha256: &str,
        epoch: Option<u64>,
        details: serde_json::Value,
    ) -> Result<()>;
}

#[async_trait::async_trait]
impl Audit for crate::repo::Repository {
    async fn record(
        &self,
        action: &str,
        plan_sha256: &str,
        epoch: Option<u64>,
        details: serde_json::Value,
    ) -> Result<()> {
        crate::recovery::audit::record_with_epoch(self, action, plan_sha256, epoch, details)
            .await
            .map(|_| ())
    }
}

/// An audit log in a local directory, hash-chained like a repository's
/// (`DIR/chain/{seq:012}.json`, each entry holding the SHA-256 of the one before; entries
/// written before the chain, `DIR/{ms}-{hex}.json`, are read as unchained): for
/// operations that must not depend on a repository in a region that may be gone.
/// `dir` is `STATE/audit`; `haven audit verify-state --state-dir STATE` walks it.
pub struct FileAudit {
    pub dir: PathBuf,
}

#[async_trait::async_trait]
impl Audit for FileAudit {
    async fn record(
        &self,
        action: &str,
        plan_sha256: &str,
        epoch: Option<u64>,
        details: serde_json::Value,
    ) -> Result<()> {
        let entry = crate::recovery::audit::entry(action, plan_sha256, epoch, details);
        // The store's root is the state directory, so that the chain's keys (`audit/...`)
        // are the repository's.
        let root = self.dir.parent().unwrap_or(&self.dir).to_path_buf();
        let dir = self.dir.clone();
        crate::blocking(move || std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e)))
            .await?;
        let store = haven_storage::Store::open(&root.display().to_string())
            .map_err(|e| Error::Input(format!("{}: {e}", root.display())))?;
        crate::recovery::audit::append(&store, entry).await?;
        Ok(())
    }
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Unreachable(format!("{}: {e}", path.display()))
}

/// The steps done so far, with their results.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// Step index -> what it did.
    pub done: BTreeMap<usize, serde_json::Value>,
    /// Step index -> when it ran (wall clock), for timelines and benchmarks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub timings: BTreeMap<usize, StepTiming>,
    #[serde(skip)]
    path: PathBuf,
}

impl Progress {
    /// Loads the progress kept at `path` (none yet: nothing done). Also reads the older
    /// form, a bare list of indexes.
    pub fn load(path: &Path) -> Result<Progress> {
        let mut p = match std::fs::read(path) {
            Ok(b) => match serde_json::from_slice::<Progress>(&b) {
                Ok(p) => p,
                Err(_) => {
                    let list: Vec<usize> = serde_json::from_slice(&b).map_err(|e| {
                        Error::Input(format!(
                            "{} is not a plan's progress: {e}; move it away to start the plan over",
                            path.display()
                        ))
                    })?;
                    Progress {
                        done: list
                            .into_iter()
                            .map(|i| (i, serde_json::Value::Null))
                            .collect(),
                        ..Progress::default()
                    }
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Progress::default(),
            Err(e) => return Err(io_error(path, e)),
        };
        p.path = path.to_path_buf();
        Ok(p)
    }

    pub fn is_done(&self, index: usize) -> bool {
        self.done.contains_key(&index)
    }

    pub fn result(&self, index: usize) -> Option<&serde_json::Value> {
        self.done.get(&index)
    }

    /// Records a step as done: written to a temporary file, synced, then renamed.
    fn mark(&mut self, index: usize, result: serde_json::Value, timing: StepTiming) -> Result<()> {
        self.done.insert(index, result);
        self.timings.insert(index, timing);
        let body = serde_json::to_vec_pretty(self).map_err(|e| Error::Task(e.to_string()))?;
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| io_error(&self.path, e))
    }
}

/// When a step ran: wall-clock milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepTiming {
    pub started_ms: i64,
    pub done_ms: i64,
}

/// The progress file of a plan file: `PLAN.progress.json`.
pub fn progress_path(plan: &Path) -> PathBuf {
    let mut p = plan.as_os_str().to_owned();
    p.push(".progress.json");
    PathBuf::from(p)
}

/// What one run of a plan is called and recorded as.
pub struct Execution<'a> {
    /// The audit action (`recover-apply`, `switchover`, `failover`).
    pub action: &'a str,
    pub plan_sha256: &'a str,
    pub audit: &'a dyn Audit,
    pub observer: &'a dyn Observer,
}

/// Runs the steps not done yet, in order. Returns the indexes run now.
pub async fn execute<S: Step, R: Runner<S>>(
    steps: &[S],
    progress: &mut Progress,
    runner: &mut R,
    ex: &Execution<'_>,
) -> Result<Vec<usize>> {
    let total = steps.len();
    let mut ran = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        if progress.is_done(index) {
            continue;
        }
        let what = step.describe();
        let failed = |cause: Error| Error::StepFailed {
            action: ex.action.to_string(),
            step: index + 1,
            total,
            what: what.clone(),
            cause: Box::new(cause),
        };
        runner.guard(index, step, progress).await.map_err(failed)?;
        ex.observer.event(&Event::StepStarted {
            action: ex.action.to_string(),
            step: index + 1,
            total,
            what: what.clone(),
        });
        let started = Instant::now();
        let started_ms = chrono::Utc::now().timestamp_millis();
        let result = match runner.run(index, step, progress).await {
            Ok(r) => r,
            Err(e) => {
                // A failed step is audited too (PCI DSS 10.2: every outcome).
                let details = serde_json::json!({
                    "step": index + 1, "what": what, "error": e.to_string(),
                    "outcome": "failure",
                });
                if let Err(ae) = ex
                    .audit
                    .record(ex.action, ex.plan_sha256, runner.epoch(), details)
                    .await
                {
                    ex.observer.event(&Event::Retrying {
                        what: "audit a failed step".into(),
                        error: ae.to_string(),
                    });
                }
                return Err(failed(e));
            }
        };
        let ms = started.elapsed().as_millis() as u64;
        let details =
            serde_json::json!({"step": index + 1, "what": what, "result": result, "ms": ms});
        ex.audit
            .record(ex.action, ex.plan_sha256, runner.epoch(), details)
            .await
            .map_err(failed)?;
        let timing = StepTiming {
            started_ms,
            done_ms: chrono::Utc::now().timestamp_millis(),
        };
        progress.mark(index, result, timing).map_err(failed)?;
        ex.observer.event(&Event::StepDone {
            action: ex.action.to_string(),
            step: index + 1,
            total,
            what,
            ms,
        });
        ran.push(index);
    }
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct S(u32);
    impl Step for S {
        fn describe(&self) -> String {
            format!("step {}", self.0)
        }
    }

    struct R {
        fail_at: Option<usize>,
        ran: Vec<usize>,
    }

    #[async_trait::async_trait]
    impl Runner<S> for R {
        async fn run(&mut self, index: usize, step: &S, _: &Progress) -> Result<serde_json::Value> {
            if self.fail_at == Some(index) {
                return Err(Error::Unreachable("down".into()));
            }
            self.ran.push(index);
            Ok(serde_json::json!(step.0 * 10))
        }
        fn epoch(&self) -> Option<u64> {
            Some(4)
        }
    }

    #[derive(Default)]
    struct Log(
        Mutex<Vec<(String, Option<u64>)>>,
        Mutex<Vec<serde_json::Value>>,
    );
    #[async_trait::async_trait]
    impl Audit for Log {
        async fn record(
            &self,
            a: &str,
            _: &str,
            e: Option<u64>,
            d: serde_json::Value,
        ) -> Result<()> {
            self.0.lock().unwrap().push((a.into(), e));
            self.1.lock().unwrap().push(d);
            Ok(())
        }
    }

    struct Quiet;
    impl Observer for Quiet {
        fn event(&self, _: &Event) {}
    }

    #[tokio::test]
    async fn a_failed_run_continues_with_the_failed_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.progress.json");
        let steps = vec![S(1), S(2), S(3)];
        let log = Log::default();
        let ex = Execution {
            action: "test",
            plan_sha256: "x",
            audit: &log,
            observer: &Quiet,
        };
        let mut r = R {
            fail_at: Some(1),
            ran: vec![],
        };
        let mut p = Progress::load(&path).unwrap();
        let e = execute(&steps, &mut p, &mut r, &ex).await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("step 2 of 3 (step 2)") && text.contains("continues with this step"),
            "{text}"
        );
        assert_eq!(r.ran, vec![0]);
        let mut r = R {
            fail_at: None,
            ran: vec![],
        };
        let mut p = Progress::load(&path).unwrap();
        assert!(p.is_done(0) && !p.is_done(1));
        assert_eq!(
            execute(&steps, &mut p, &mut r, &ex).await.unwrap(),
            vec![1, 2]
        );
        assert_eq!(r.ran, vec![1, 2]);
        let p = Progress::load(&path).unwrap();
        assert_eq!(p.result(2), Some(&serde_json::json!(30)));
        assert_eq!(p.timings.len(), 3);
        assert!(p.timings.values().all(|t| t.started_ms <= t.done_ms));
        assert!(p.timings[&1].done_ms <= p.timings[&2].started_ms);
        // Three steps done and the one failure, each audited.
        assert_eq!(log.0.lock().unwrap().len(), 4);
        let d = log.1.lock().unwrap();
        assert_eq!(d[1]["outcome"], "failure", "{d:?}");
        assert_eq!(d[1]["step"], 2, "{d:?}");
        assert!(d[1]["error"].as_str().unwrap().contains("down"), "{d:?}");
        assert!(log
            .0
            .lock()
            .unwrap()
            .iter()
            .all(|(a, e)| a == "test" && *e == Some(4)));
    }

    #[test]
    fn reads_the_older_progress_form() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.json");
        std::fs::write(&path, "[0, 2]").unwrap();
        let p = Progress::load(&path).unwrap();
        assert!(p.is_done(0) && !p.is_done(1) && p.is_done(2));
        std::fs::write(&path, "{oops").unwrap();
        assert!(Progress::load(&path)
            .unwrap_err()
            .to_string()
            .contains("move it away"));
    }
}
