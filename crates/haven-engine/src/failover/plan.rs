//! Switchover and failover as plans: the steps, in the order that keeps at most one
//! region writable and leaves the system fenced if a step fails (fail closed).
//!
//! Switchover (planned, the old region alive, zero loss of acknowledged writes): close
//! the old region's routes, fence its databases, write a barrier, wait until the new
//! region has it, wait until the mirror has every record the old region's topics held
//! (the Kafka barrier), sync consumer-group offsets one last time, copy sequences, drop the forward subscription, publish from the new
//! region and subscribe the old one to it (reverse replication, before any new write),
//! take the lease (epoch + 1), let the application roles in, open the new routes.
//!
//! Failover (unplanned, the old region lost): take the lease first (only once the old
//! tenure expired, or `--force`), then close what can still be reached of the old region
//! (best effort: the old region's agent has fenced itself when it could not renew),
//! sync group offsets if the old cluster answers and record what the new one holds of
//! each partition, detach the subscriptions without the source (keeping `remote_lsn`), set sequences past
//! anything the old region may have used, publish, unfence, open the new routes.

use serde::{Deserialize, Serialize};

use super::config::{databases_of, peer_of, routes_of};
use crate::config::Config;
use crate::executor;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Switchover,
    Failover,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Switchover => "switchover",
            Kind::Failover => "failover",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum FailoverStep {
    /// Take the region lease for `region`: the epoch goes up by one. From the tenure seen
    /// when planning (`from`: its create revision and lease; a switchover or `--force`),
    /// or once it expired.
    TakeLease {
        region: String,
        from: Option<(i64, i64)>,
    },
    /// Stop a route from carrying writes (HAProxy maint + cut sessions, or a hook).
    /// `best_effort`: an unreachable route is recorded, not fatal (its region is gone).
    CloseRoute {
        route: String,
        best_effort: bool,
    },
    OpenRoute {
        route: String,
    },
    /// Keep a database's application roles out (no LOGIN, no CONNECT, sessions ended).
    Fence {
        database: String,
        best_effort: bool,
    },
    Unfence {
        database: String,
    },
    /// Write a barrier token on the (fenced) source.
    Barrier {
        database: String,
        token: String,
    },
    /// Wait until the replica has the barrier: it has every write the source took.
    AwaitBarrier {
        database: String,
        token: String,
        timeout_s: u64,
    },
    /// Set the database's sequences past the source's values (read from `source` when it
    /// answers, else from the replicated snapshot) plus `gap`.
    SyncSequences {
        database: String,
        source: String,
        gap: i64,
    },
    /// Drop the database's subscription; `source_alive`: drop the source's slot too.
    Detach {
        database: String,
        subscription: String,
        source_alive: bool,
    },
    /// Publish every table of the database (the new primary).
    Publish {
        database: String,
        publication: String,
    },
    /// Hand the finished plan's tenure to `region`'s agent (which then keeps the region
    /// open by itself, or fences it if it loses the lease).
    Finish {
        region: String,
    },
    /// Wait until the mirror into the new region holds every record its source held
    /// when the step started (the old region closed): the Kafka barrier.
    AwaitMirror {
        mirror: String,
        timeout_s: u64,
    },
    /// The mirror's last consumer-group offset sync, and the evidence of what the new
    /// region holds of each partition. `source_alive`: the source must answer
    /// (switchover); a failover records an unreachable one and goes on.
    SyncGroups {
        mirror: String,
        source_alive: bool,
    },
    /// Subscribe the database to `publisher`'s publication (reverse replication; no
    /// initial copy: both hold the same rows).
    Subscribe {
        database: String,
        subscription: String,
        publisher: String,
        publication: String,
    },
}

/// What a step is for, in the terms of an RTO breakdown (`haven bench failover`, the
/// report's `phases`). Detection and decision happen before a plan runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Taking the lease (the new epoch), closing the old region's routes and databases.
    Fencing,
    /// Waiting until the new region holds what the old one acknowledged (barriers).
    CatchUp,
    /// Making the new region the primary: sequences, subscriptions, publications, group
    /// offsets, its application roles let in.
    Promotion,
    /// Opening the new region's routes and handing the lease to its agent.
    Routing,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Fencing => "fencing",
            Phase::CatchUp => "catch_up",
            Phase::Promotion => "promotion",
            Phase::Routing => "routing",
        }
    }
}

impl FailoverStep {
    pub fn phase(&self) -> Phase {
        match self {
            FailoverStep::TakeLease { .. }
            | FailoverStep::CloseRoute { .. }
            | FailoverStep::Fence { .. } => Phase::Fencing,
            FailoverStep::Barrier { .. }
            | FailoverStep::AwaitBarrier { .. }
            | FailoverStep::AwaitMirror { .. } => Phase::CatchUp,
            FailoverStep::SyncSequences { .. }
            | FailoverStep::Detach { .. }
            | FailoverStep::Publish { .. }
            | FailoverStep::Subscribe { .. }
            | FailoverStep::SyncGroups { .. }
            | FailoverStep::Unfence { .. } => Phase::Promotion,
            FailoverStep::OpenRoute { .. } | FailoverStep::Finish { .. } => Phase::Routing,
        }
    }
}

impl executor::Step for FailoverStep {
    fn describe(&self) -> String {
        match self {
            FailoverStep::TakeLease { region, from } => match from {
                Some(_) => format!("hand the region lease to {region} (epoch + 1)"),
                None => format!("take the expired region lease for {region} (epoch + 1)"),
            },
            FailoverStep::CloseRoute { route, best_effort } => {
                let how = if *best_effort { " (if reachable)" } else { "" };
                format!("close route {route}{how}")
            }
            FailoverStep::OpenRoute { route } => format!("open route {route}"),
            FailoverStep::Fence {
                database,
                best_effort,
            } => {
                let how = if *best_effort { " (if reachable)" } else { "" };
                format!("fence database {database}{how}")
            }
            FailoverStep::Unfence { database } => {
                format!("let the application roles into {database}")
            }
            FailoverStep::Barrier { database, token } => {
                format!("write barrier {token} on {database}")
            }
            FailoverStep::AwaitBarrier {
                database, token, ..
            } => format!("wait until {database} has barrier {token}"),
            FailoverStep::SyncSequences {
                database,
                source,
                gap,
            } => format!("set {database}'s sequences past {source}'s (+{gap})"),
            FailoverStep::Detach {
                database,
                subscription,
                source_alive,
            } => {
                let how = if *source_alive {
                    ""
                } else {
                    " without its source, keeping remote_lsn"
                };
                format!("drop subscription {subscription} on {database}{how}")
            }
            FailoverStep::Publish {
                database,
                publication,
            } => format!("publish {database} ({publication})"),
            FailoverStep::Subscribe {
                database,
                publisher,
                ..
            } => format!("subscribe {database} to {publisher} (reverse replication)"),
            FailoverStep::Finish { region } => format!("hand the lease to {region}'s agent"),
            FailoverStep::AwaitMirror { mirror, .. } => {
                format!("wait until mirror {mirror} has every record of the closed region")
            }
            FailoverStep::SyncGroups {
                mirror,
                source_alive,
            } => {
                let how = if *source_alive {
                    ""
                } else {
                    " (if the old region answers) and record what the new one holds"
                };
                format!("sync consumer-group offsets through mirror {mirror}{how}")
            }
        }
    }
}

/// A switchover or failover, written before it runs (`--dry-run` prints it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverPlan {
    pub kind: Kind,
    pub from: String,
    pub to: String,
    /// The epoch when planned: every step before the lease step checks it still holds.
    pub base_epoch: u64,
    pub created_at: String,
    pub steps: Vec<FailoverStep>,
}

impl FailoverPlan {
    /// Index of the lease step.
    pub fn lease_step(&self) -> Option<usize> {
        self.steps
            .iter()
            .position(|s| matches!(s, FailoverStep::TakeLease { .. }))
    }
}

/// Builds the plan that makes `to` the active region (the current one is `from`).
pub fn build(
    cfg: &Config,
    kind: Kind,
    from: &str,
    to: &str,
    base_epoch: u64,
    from_tenure: Option<(i64, i64)>,
) -> Result<FailoverPlan> {
    for r in [from, to] {
        if !cfg.regions.contains_key(r) {
            return Err(Error::Input(format!(
                "unknown region {r:?}: the config defines {}",
                cfg.regions.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    if from == to {
        return Err(Error::Input(format!("{to} is already the active region")));
    }
    let token = format!("{}-{}-e{}", kind.as_str(), to, base_epoch + 1);
    let old_routes: Vec<String> = routes_of(cfg, from)
        .into_iter()
        .map(|(n, _)| n.clone())
        .collect();
    let new_routes: Vec<String> = routes_of(cfg, to)
        .into_iter()
        .map(|(n, _)| n.clone())
        .collect();
    let mut pairs = Vec::new();
    for (name, d) in databases_of(cfg, to) {
        let (peer, p) = peer_of(cfg, name).ok_or_else(|| {
            Error::Input(format!(
                "database {name} has no peer in region {from}: set databases.{name}.peer"
            ))
        })?;
        if p.region != from {
            continue;
        }
        pairs.push((name.clone(), d.clone(), peer.clone(), p.clone()));
    }
    let mirror = super::kafka::mirror_between(cfg, from, to);
    let mut steps = Vec::new();
    match kind {
        Kind::Switchover => {
            for r in &old_routes {
                steps.push(FailoverStep::CloseRoute {
                    route: r.clone(),
                    best_effort: false,
                });
            }
            for (_, _, peer, _) in &pairs {
                steps.push(FailoverStep::Fence {
                    database: peer.clone(),
                    best_effort: false,
                });
            }
            for (name, _, peer, _) in &pairs {
                steps.push(FailoverStep::Barrier {
                    database: peer.clone(),
                    token: token.clone(),
                });
                steps.push(FailoverStep::AwaitBarrier {
                    database: name.clone(),
                    token: token.clone(),
                    timeout_s: 60,
                });
            }
            if let Some(m) = &mirror {
                steps.push(FailoverStep::AwaitMirror {
                    mirror: m.clone(),
                    timeout_s: 60,
                });
                steps.push(FailoverStep::SyncGroups {
                    mirror: m.clone(),
                    source_alive: true,
                });
            }
            for (name, d, peer, p) in &pairs {
                steps.push(FailoverStep::SyncSequences {
                    database: name.clone(),
                    source: peer.clone(),
                    gap: 0,
                });
                steps.push(FailoverStep::Detach {
                    database: name.clone(),
                    subscription: d.subscription.clone(),
                    source_alive: true,
                });
                steps.push(FailoverStep::Publish {
                    database: name.clone(),
                    publication: d.publication.clone(),
                });
                steps.push(FailoverStep::Subscribe {
                    database: peer.clone(),
                    subscription: p.subscription.clone(),
                    publisher: name.clone(),
                    publication: d.publication.clone(),
                });
            }
            steps.push(FailoverStep::TakeLease {
                region: to.into(),
                from: from_tenure,
            });
        }
        Kind::Failover => {
            steps.push(FailoverStep::TakeLease {
                region: to.into(),
                from: from_tenure,
            });
            for r in &old_routes {
                steps.push(FailoverStep::CloseRoute {
                    route: r.clone(),
                    best_effort: true,
                });
            }
            for (_, _, peer, _) in &pairs {
                steps.push(FailoverStep::Fence {
                    database: peer.clone(),
                    best_effort: true,
                });
            }
            if let Some(m) = &mirror {
                steps.push(FailoverStep::SyncGroups {
                    mirror: m.clone(),
                    source_alive: false,
                });
            }
            for (name, d, peer, _) in &pairs {
                steps.push(FailoverStep::Detach {
                    database: name.clone(),
                    subscription: d.subscription.clone(),
                    source_alive: false,
                });
                steps.push(FailoverStep::SyncSequences {
                    database: name.clone(),
                    source: peer.clone(),
                    gap: d.sequence_gap,
                });
                steps.push(FailoverStep::Publish {
                    database: name.clone(),
                    publication: d.publication.clone(),
                });
            }
        }
    }
    for (name, _, _, _) in &pairs {
        steps.push(FailoverStep::Unfence {
            database: name.clone(),
        });
    }
    for r in &new_routes {
        steps.push(FailoverStep::OpenRoute { route: r.clone() });
    }
    steps.push(FailoverStep::Finish { region: to.into() });
    Ok(FailoverPlan {
        kind,
        from: from.into(),
        to: to.into(),
        base_epoch,
        created_at: crate::time::format_ms(chrono::Utc::now().timestamp_millis()),
        steps,
    })
}
