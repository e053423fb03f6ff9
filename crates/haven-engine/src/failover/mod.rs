//! Failover between regions. The region lease and the fencing epoch live in etcd, behind
//! the `haven-etcd` adapter; Postgres is operated through `haven-pg` and routes through
//! `haven-routes`; this module owns what they mean:
//!
//! - `config`: `[coordination]`, `[regions]`, `[failover]`, `[databases]`, `[routes]`;
//! - `status`: the active region, its epoch and the RPO ledger;
//! - `plan`, `preflight`, `run`: switchover and failover as plans run by the engine's
//!   executor, every step under the fencing epoch;
//! - `agent`, `region`, `standby`: the agent's loop (lease, fencing of its own region,
//!   heartbeat, automatic failover);
//! - `kafka`: the mirror's part in a plan (barrier, last group sync, records at risk);
//! - `guard`: Haven's own writers (the mirror) stop when their target becomes active.

pub mod agent;
pub mod config;
pub mod guard;
pub mod kafka;
pub mod plan;
pub mod preflight;
pub mod region;
pub mod run;
pub mod standby;
pub mod status;

use crate::{Error, Result};

/// Connects to the configured etcd members.
pub async fn coordinator(cfg: &crate::config::Config) -> Result<haven_etcd::Coordinator> {
    let c = cfg.coordination.as_ref().ok_or_else(|| {
        Error::Input(
            "no [coordination] in the config: list the etcd members (see `haven config example`)"
                .into(),
        )
    })?;
    haven_etcd::Coordinator::connect(&c.endpoints, &c.cluster, c.timeout())
        .await
        .map_err(|e| Error::Unreachable(e.to_string()))
}
