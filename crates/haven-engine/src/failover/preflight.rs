//! Preflight of a switchover or failover plan: what the plan will touch is checked before
//! anything changes (databases answer, roles exist, publications and subscriptions are
//! there and keep pinned tables home, route sockets exist). Bad input is exit 2.

use std::path::Path;

use haven_pg::Pg;

pub use super::config::pg_error;
use super::config::{DatabaseSection, RouteKind, RouteSection};
use super::plan::{FailoverPlan, FailoverStep};
use crate::config::Config;
use crate::{Error, Result};

const PG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Checks what the plan will touch before anything changes: databases answer, roles
/// exist, publications and subscriptions are there and keep pinned tables home, route
/// sockets exist.
pub async fn preflight(cfg: &Config, plan: &FailoverPlan) -> Result<()> {
    for s in &plan.steps {
        match s {
            FailoverStep::CloseRoute { route, best_effort } if !*best_effort => {
                check_route(cfg, route)?
            }
            FailoverStep::OpenRoute { route } => check_route(cfg, route)?,
            FailoverStep::Fence {
                database,
                best_effort: false,
            } => {
                let d = section(cfg, database)?;
                let pg = connect(cfg, database).await?;
                let missing = pg.missing_roles(&d.roles).await.map_err(pg_error)?;
                if !missing.is_empty() {
                    return Err(Error::Input(format!(
                        "databases.{database}.roles: no role named {} on {database}",
                        missing.join(", ")
                    )));
                }
                let published = pg
                    .published_tables(&d.publication)
                    .await
                    .map_err(pg_error)?
                    .ok_or_else(|| {
                        Error::Input(format!(
                            "database {database} has no publication {:?}: create it \
                             (CREATE PUBLICATION {} FOR ALL TABLES) or fix databases.{database}.publication",
                            d.publication, d.publication
                        ))
                    })?;
                check_residency(database, &d.local_tables, &published)?;
                require_tables(&pg, database).await?;
            }
            FailoverStep::Detach {
                database,
                subscription,
                ..
            } => {
                let pg = connect(cfg, database).await?;
                if pg
                    .subscription(subscription)
                    .await
                    .map_err(pg_error)?
                    .is_none()
                {
                    return Err(Error::Input(format!(
                        "database {database} has no subscription {subscription:?}: fix \
                         databases.{database}.subscription"
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

async fn require_tables(pg: &Pg, database: &str) -> Result<()> {
    if pg.has_tables().await.map_err(pg_error)? {
        Ok(())
    } else {
        Err(Error::Input(format!(
            "database {database} has no haven.heartbeat / haven.barrier / haven.seq_snapshot: \
             start the region's agent once (it creates them), on both sides, then \
             ALTER SUBSCRIPTION ... REFRESH PUBLICATION on the replica"
        )))
    }
}

pub fn check_residency(database: &str, local: &[String], published: &[String]) -> Result<()> {
    let leaking: Vec<&String> = local.iter().filter(|t| published.contains(t)).collect();
    if leaking.is_empty() {
        Ok(())
    } else {
        Err(Error::Input(format!(
            "residency: {} pinned to {database}'s region but published out of it; publish a \
             table list without them (CREATE PUBLICATION ... FOR TABLE ...)",
            leaking
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

fn check_route(cfg: &Config, route: &str) -> Result<()> {
    let r = route_section(cfg, route)?;
    if r.kind == RouteKind::Haproxy {
        let socket = r.socket.clone().unwrap_or_default();
        if !Path::new(&socket).exists() {
            return Err(Error::Input(format!(
                "routes.{route}.socket: {socket} does not exist: is HAProxy running with \
                 `stats socket {socket} level admin`?"
            )));
        }
    }
    Ok(())
}

pub fn route_section<'a>(cfg: &'a Config, route: &str) -> Result<&'a RouteSection> {
    cfg.routes
        .get(route)
        .ok_or_else(|| Error::Input(format!("no route named {route:?} in the config")))
}

pub fn section<'a>(cfg: &'a Config, database: &str) -> Result<&'a DatabaseSection> {
    cfg.databases
        .get(database)
        .ok_or_else(|| Error::Input(format!("no database named {database:?} in the config")))
}

pub async fn connect(cfg: &Config, database: &str) -> Result<Pg> {
    section(cfg, database)?.connect(database, PG_TIMEOUT).await
}
