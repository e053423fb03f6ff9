//! What a region's agent does to its own region: fence it (close its HAProxy write routes,
//! keep its databases' application roles out) when it may not take writes, resume it when
//! it takes the lease back by itself, stamp the heartbeat while it is active, and read
//! how stale its replicas are while it is the standby. Every action is best effort and
//! retried on the next round; failures are `Retrying` events.

use std::collections::HashMap;
use std::time::Duration;

use haven_pg::Pg;
use haven_routes::Action;

use super::config::{databases_of, routes_of, RouteKind};
use crate::config::Config;
use crate::events::{Event, Observer};

const PG_TIMEOUT: Duration = Duration::from_secs(2);

/// One region's routes and databases, with cached connections.
pub struct RegionOps<'a> {
    cfg: &'a Config,
    region: String,
    dbs: HashMap<String, Pg>,
}

impl<'a> RegionOps<'a> {
    pub fn new(cfg: &'a Config, region: &str) -> Self {
        RegionOps {
            cfg,
            region: region.to_string(),
            dbs: HashMap::new(),
        }
    }

    async fn pg(&mut self, name: &str) -> Option<&Pg> {
        if !self.dbs.contains_key(name) {
            let d = self.cfg.databases.get(name)?;
            let pg = d.connect(name, PG_TIMEOUT).await.ok()?;
            // Haven's bookkeeping tables (idempotent; the replica gets the rows once its
            // subscription includes them).
            pg.ensure_tables().await.ok()?;
            self.dbs.insert(name.to_string(), pg);
        }
        self.dbs.get(name)
    }

    fn retrying(&mut self, observer: &dyn Observer, db: Option<&str>, what: String, e: String) {
        if let Some(db) = db {
            // Reconnect next time.
            self.dbs.remove(db);
        }
        observer.event(&Event::Retrying { what, error: e });
    }

    /// Closes (or opens) the region's HAProxy write routes; whether all are so now.
    /// Hook routes are driven by plans only (they need the epoch and the target).
    pub async fn set_routes(&mut self, action: Action, observer: &dyn Observer) -> bool {
        let mut all = true;
        for (name, r) in routes_of(self.cfg, &self.region) {
            if r.kind != RouteKind::Haproxy {
                continue;
            }
            let h = r.haproxy(name);
            let closing = action == Action::Close;
            match h.state().await {
                Ok(st) if st.in_maintenance() == closing => {}
                _ => match h.apply(action).await {
                    Ok(_) if closing => observer.event(&Event::RouteClosed {
                        route: name.clone(),
                        region: self.region.clone(),
                    }),
                    Ok(_) => {}
                    Err(e) => {
                        all = false;
                        observer.event(&Event::Retrying {
                            what: format!("{} route {name}", action.as_str()),
                            error: e.to_string(),
                        });
                    }
                },
            }
        }
        all
    }

    /// Closes the routes and fences the databases; whether everything is fenced.
    pub async fn fence(&mut self, observer: &dyn Observer) -> bool {
        let mut all = self.set_routes(Action::Close, observer).await;
        for (name, d) in databases_of(self.cfg, &self.region) {
            let roles = d.roles.clone();
            let name = name.clone();
            let result = match self.pg(&name).await {
                Some(pg) => pg.fence(&roles).await.map_err(|e| e.to_string()),
                None => Err("cannot connect".into()),
            };
            if let Err(e) = result {
                all = false;
                self.retrying(observer, Some(&name), format!("fence database {name}"), e);
            }
        }
        all
    }

    /// Lets the application roles in and opens the routes (the region took its lease
    /// back by itself).
    pub async fn resume(&mut self, observer: &dyn Observer) -> bool {
        let mut all = true;
        for (name, d) in databases_of(self.cfg, &self.region) {
            let roles = d.roles.clone();
            let name = name.clone();
            let result = match self.pg(&name).await {
                Some(pg) => pg.unfence(&roles).await.map_err(|e| e.to_string()),
                None => Err("cannot connect".into()),
            };
            if let Err(e) = result {
                all = false;
                self.retrying(observer, Some(&name), format!("unfence database {name}"), e);
            }
        }
        all && self.set_routes(Action::Open, observer).await
    }

    /// Stamps the heartbeat (and the sequence snapshot) on the region's databases.
    pub async fn beat(&mut self, observer: &dyn Observer) {
        let names: Vec<String> = databases_of(self.cfg, &self.region)
            .into_iter()
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let result = match self.pg(&name).await {
                Some(pg) => pg.beat().await.map_err(|e| e.to_string()),
                None => Err("cannot connect".into()),
            };
            if let Err(e) = result {
                self.retrying(observer, Some(&name), format!("heartbeat on {name}"), e);
            }
        }
    }

    /// The stalest replica of the region (heartbeat age in seconds); None if a database
    /// does not answer or has no heartbeat yet; Some(0) without databases.
    pub async fn replica_lag_s(&mut self) -> Option<f64> {
        let dbs: Vec<(String, String)> = databases_of(self.cfg, &self.region)
            .into_iter()
            .map(|(n, d)| (n.clone(), d.subscription.clone()))
            .collect();
        let mut worst = 0.0f64;
        for (name, sub) in dbs {
            let lag = match self.pg(&name).await {
                Some(pg) => pg.replica_lag(&sub).await.ok(),
                None => None,
            };
            match lag.and_then(|l| l.seconds) {
                Some(s) => worst = worst.max(s),
                None => {
                    self.dbs.remove(&name);
                    return None;
                }
            }
        }
        Some(worst)
    }
}
