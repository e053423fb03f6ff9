//! Event-driven recovery: when one service restores its database to an older point T0,
//! measure the damage (`impact`), make the service consume its inputs again (`rewind`),
//! rebuild from the events (`replay` to a sink), and tell downstream services what no
//! longer holds (`compensate`). `plan` ties them into a reviewed, resumable recovery, and
//! `audit` records every action that changed a cluster.

pub mod apply;
pub mod audit;
pub mod audit_heads;
pub mod audit_verify;
pub mod compensate;
pub mod impact;
pub mod plan;
pub mod replay;
pub mod rewind;
pub mod sink;

use serde::{Deserialize, Serialize};

/// A service as `[services.NAME]` describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub produces: Vec<String>,
    pub consumes: Vec<String>,
    pub groups: Vec<String>,
}

impl Service {
    pub fn from_config(cfg: &crate::config::Config, name: &str) -> crate::Result<Service> {
        let s = cfg.services.get(name).ok_or_else(|| {
            crate::Error::Input(format!(
                "unknown service {name:?}: the config defines {}; add a [services.{name}] section (produces, consumes, groups)",
                if cfg.services.is_empty() {
                    "no services".to_string()
                } else {
                    cfg.services.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ))
        })?;
        Ok(Service {
            name: name.to_string(),
            produces: s.produces.clone(),
            consumes: s.consumes.clone(),
            groups: s.groups.clone(),
        })
    }

    /// Every configured service's groups with the topics they consume.
    pub fn consumers(cfg: &crate::config::Config) -> Vec<(String, Vec<String>)> {
        cfg.services
            .values()
            .flat_map(|s| {
                s.groups
                    .iter()
                    .map(move |g| (g.clone(), s.consumes.clone()))
            })
            .collect()
    }
}
