//! Failover between regions: the configuration (`config`), and what a failover would do and
//! lose now (`status`). The region lease and the fencing epoch live in etcd, behind the
//! `haven-etcd` adapter; this module owns what they mean.
//!
//! Still to come (issue #11): the agent's holder and standby loops, fencing, promotion,
//! routing, switchover and failover as plans run by the engine's executor.

pub mod agent;
pub mod config;
pub mod guard;
pub mod plan;
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
