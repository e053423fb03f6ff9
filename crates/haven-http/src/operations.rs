//! Operations started through the API (a switchover): the engine's plan, prepared and
//! executed by the engine's executor exactly as `haven switchover` does, in the
//! background; each step it starts and finishes is kept here for `GET
//! /api/v1/operations/{id}`. The request is audited first with the token's name.

use std::sync::{Arc, Mutex};

use haven_engine::config::Config;
use haven_engine::events::{Event, Observer};
use haven_engine::executor::{Audit, FileAudit};
use haven_engine::failover::plan::Kind;
use haven_engine::failover::run;
use serde::Serialize;

use crate::auth::Caller;

#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    pub id: u64,
    pub kind: String,
    pub to: String,
    /// The token's name.
    pub by: String,
    pub started_at: i64,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Steps as the executor reports them (`step 3 of 9 done in 120 ms: ...`).
    pub steps: Vec<String>,
    pub error: Option<String>,
    pub report: Option<serde_json::Value>,
}

#[derive(Default)]
pub struct Operations {
    ops: Arc<Mutex<Vec<Operation>>>,
}

struct Progress {
    ops: Arc<Mutex<Vec<Operation>>>,
    id: u64,
}

impl Progress {
    fn update(&self, f: impl FnOnce(&mut Operation)) {
        if let Ok(mut ops) = self.ops.lock() {
            if let Some(o) = ops.iter_mut().find(|o| o.id == self.id) {
                f(o);
            }
        }
    }
}

impl Observer for Progress {
    fn event(&self, event: &Event) {
        if matches!(event, Event::StepStarted { .. } | Event::StepDone { .. }) {
            let line = event.to_string();
            self.update(|o| o.steps.push(line));
        }
    }
}

impl Operations {
    pub fn list(&self) -> Vec<Operation> {
        self.ops.lock().map(|o| o.clone()).unwrap_or_default()
    }

    pub fn get(&self, id: u64) -> Option<Operation> {
        self.list().into_iter().find(|o| o.id == id)
    }

    fn running(&self) -> Option<Operation> {
        self.list().into_iter().find(|o| o.state == "running")
    }

    /// Prepares a switchover to `to` (refused at once when the engine refuses it: unknown
    /// region, already active, no live holder, another operation running), records who
    /// asked, and runs it in the background. Returns the operation.
    pub async fn switchover(
        &self,
        cfg: &Config,
        state_dir: &std::path::Path,
        to: &str,
        caller: &Caller,
    ) -> Result<Operation, (u16, String)> {
        if let Some(o) = self.running() {
            return Err((
                409,
                format!(
                    "operation {} ({} to {}) is still running: wait for it (GET /api/v1/operations/{})",
                    o.id, o.kind, o.to, o.id
                ),
            ));
        }
        let prepared = run::prepare(cfg, Kind::Switchover, to, false, state_dir)
            .await
            .map_err(|e| match e {
                haven_engine::Error::Input(m) => (409, m),
                e => (503, e.to_string()),
            })?;
        let audit = FileAudit {
            dir: state_dir.join("audit"),
        };
        let sha = haven_engine::recovery::audit::sha256_of(&prepared.plan);
        audit
            .record(
                "api-switchover",
                &sha,
                Some(prepared.plan.base_epoch),
                serde_json::json!({"by": caller.name, "role": caller.role, "to": to, "from": prepared.plan.from}),
            )
            .await
            .map_err(|e| (503, format!("cannot record the request in the audit log: {e}")))?;
        let op = {
            let mut ops = self.ops.lock().map_err(|_| (500, "poisoned".to_string()))?;
            let op = Operation {
                id: ops.len() as u64 + 1,
                kind: "switchover".into(),
                to: to.into(),
                by: caller.name.clone(),
                started_at: chrono::Utc::now().timestamp_millis(),
                state: "running".into(),
                steps: Vec::new(),
                error: None,
                report: None,
            };
            ops.push(op.clone());
            op
        };
        let progress = Progress {
            ops: self.ops.clone(),
            id: op.id,
        };
        let cfg = cfg.clone();
        let agent = format!("api:{}", caller.name);
        tokio::spawn(async move {
            let res = run::execute(&cfg, &prepared, &agent, &progress).await;
            progress.update(|o| match res {
                Ok(r) => {
                    o.state = "done".into();
                    o.report = serde_json::to_value(&r).ok();
                }
                Err(e) => {
                    o.state = "failed".into();
                    o.error = Some(e.to_string());
                }
            });
        });
        Ok(op)
    }
}
