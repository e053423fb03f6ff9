//! The agent's loop (`haven agent --region NAME`), after Patroni's small, explicit HA loop:
//! the region that holds the lease renews it every `ttl / 5`; a region takes a free lease
//! only if it was the last active region (or is the primary of a fresh deployment), and
//! carries on its own tenure after a restart and a plan's tenure taken for it. The region's claim to be writable, answered on
//! `/lease` for load-balancer health checks, lasts `ttl / 2` after the start of its last
//! successful renewal: a holder that cannot renew (cut off, frozen, etcd without quorum)
//! stops claiming it well before the lease can expire and another region can take it, so
//! at most one region claims it at any instant. A clean stop resigns the lease.
//!
//! Each round, a region that does not claim the lease is fenced (`region.rs`); under its
//! own tenure it is opened and its heartbeat stamped; the standby considers an automatic
//! failover (`standby.rs`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haven_etcd::{Acquired, Coordinator, Tenure};
use serde::Serialize;
use tokio::sync::watch;

use super::region::RegionOps;
use super::standby::Standby;
use crate::config::Config;
use crate::events::{Event, Observer};
use crate::{Error, Result};

/// What the agent knows about the lease, shared with its HTTP face.
#[derive(Debug, Clone, Default)]
struct Known {
    epoch: u64,
    holder: Option<String>,
    /// Until when this region may claim to be writable.
    valid_until: Option<Instant>,
    /// The last round read the lease (etcd answered).
    read_ok: bool,
    /// The tenure is this agent's own (taken by it, or by it before a restart), not one a
    /// switchover or failover plan took: only then does the agent let its region take
    /// writes again by itself after fencing it.
    own: bool,
}

/// The lease as `/lease` and the metrics show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LeaseView {
    pub region: String,
    /// This region holds the lease and renewed it recently enough to claim it.
    pub holder: bool,
    /// The fencing epoch as last seen; null until this process has read one (a restarted
    /// agent does not report 0: epochs only go up).
    pub epoch: Option<u64>,
    /// The region holding the lease, as last seen.
    pub active: Option<String>,
    /// Milliseconds the claim stays valid without another renewal.
    pub valid_for_ms: u64,
}

/// A running agent's shared state.
#[derive(Debug, Clone)]
pub struct Agent {
    region: String,
    known: Arc<Mutex<Known>>,
}

impl Agent {
    pub fn new(region: &str) -> Self {
        Agent {
            region: region.to_string(),
            known: Default::default(),
        }
    }

    pub fn view(&self) -> LeaseView {
        let k = self.known.lock().map(|k| k.clone()).unwrap_or_default();
        let left = k
            .valid_until
            .map(|v| v.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        LeaseView {
            region: self.region.clone(),
            holder: !left.is_zero(),
            epoch: (k.epoch > 0).then_some(k.epoch),
            active: k.holder,
            valid_for_ms: left.as_millis() as u64,
        }
    }

    /// Prometheus text for the lease.
    pub fn render_metrics(&self) -> String {
        let v = self.view();
        format!(
            "# HELP haven_failover_epoch The fencing epoch as last seen (0: none yet).\n# TYPE haven_failover_epoch gauge\nhaven_failover_epoch {}\n\
             # HELP haven_failover_lease_holder 1 when this region holds the lease and may accept writes.\n# TYPE haven_failover_lease_holder gauge\nhaven_failover_lease_holder{{region=\"{}\"}} {}\n\
             # HELP haven_failover_lease_valid_seconds How long this region's claim stays valid without another renewal.\n# TYPE haven_failover_lease_valid_seconds gauge\nhaven_failover_lease_valid_seconds {:.3}\n",
            v.epoch.unwrap_or(0),
            v.region,
            u8::from(v.holder),
            v.valid_for_ms as f64 / 1000.0
        )
    }

    fn set(&self, f: impl FnOnce(&mut Known)) {
        if let Ok(mut k) = self.known.lock() {
            f(&mut k);
        }
    }
}

/// Runs the lease loop for `agent`'s region until `stop`.
pub async fn run(
    cfg: &Config,
    agent: &Agent,
    agent_id: &str,
    state_dir: &std::path::Path,
    observer: &dyn Observer,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let coordination = cfg.coordination.as_ref().ok_or_else(|| {
        Error::Input("no [coordination] in the config: the agent needs the etcd members".into())
    })?;
    let failover = cfg
        .failover
        .as_ref()
        .ok_or_else(|| Error::Input("no [failover] in the config".into()))?;
    let region = agent.region.clone();
    if !cfg.regions.contains_key(&region) {
        return Err(Error::Input(format!(
            "no region named {region:?}: define [regions.{region}] or fix --region"
        )));
    }
    let ttl = coordination.lease_ttl();
    let interval = super::standby::round_interval(ttl);
    let claim = ttl / 2;
    let is_primary = region == failover.primary;
    let mut coord: Option<Coordinator> = None;
    let mut tenure: Option<Tenure> = None;
    let mut ops = RegionOps::new(cfg, &region);
    let mut standby = Standby::default();
    // What this agent last made of its region: Some(true) fenced, Some(false) open (taking
    // writes), None not known (start, a failed step, or a plan's tenure).
    let mut fenced: Option<bool> = None;
    loop {
        if coord.is_none() {
            match super::coordinator(cfg).await {
                Ok(c) => coord = Some(c),
                Err(e) => observer.event(&Event::Retrying {
                    what: "connect to the etcd members".into(),
                    error: e.to_string(),
                }),
            }
        }
        if let Some(c) = coord.as_mut() {
            tick(
                c,
                agent,
                &mut tenure,
                is_primary,
                agent_id,
                ttl,
                claim,
                observer,
            )
            .await;
        }
        let view = agent.view();
        if view.holder {
            let own = agent.known.lock().map(|k| k.own).unwrap_or(false);
            if own && fenced != Some(false) {
                // This agent's own tenure (taken by itself as the last active region, or
                // kept through a restart or a short cut): the region takes writes. A
                // plan's tenure is left to the plan, which opens the region last.
                fenced = ops.resume(observer).await.then_some(false);
            } else if !own {
                fenced = None;
            }
            // Only under its own tenure: while a plan holds the lease for this region
            // (between its lease step and its handover), the databases may still be
            // replicas, and a beat would make the plan's staleness evidence (heartbeat
            // age read before the detach) say they were fresh.
            if own {
                ops.beat(observer).await;
            }
        } else {
            // Fence: when this region may not take writes (standby, lease lost, claim run
            // out, etcd unreachable), its routes close and its databases keep the
            // application roles out, whether or not etcd answers.
            if fenced != Some(true) {
                fenced = ops.fence(observer).await.then_some(true);
            }
            if let Some(c) = coord.as_mut() {
                let read_ok = agent.known.lock().map(|k| k.read_ok).unwrap_or(false);
                let seen = if read_ok {
                    Ok(view.active.clone())
                } else {
                    Err(())
                };
                let ran = standby
                    .round(
                        cfg, &region, seen, c, &mut ops, state_dir, agent_id, observer,
                    )
                    .await;
                if ran {
                    // The plan opened this region; the next round adopts its lease, or
                    // fences again if it cannot.
                    fenced = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
    agent.set(|k| k.valid_until = None);
    if let (Some(c), Some(t)) = (coord.as_mut(), tenure.take()) {
        let epoch = t.epoch;
        match c.resign(t).await {
            Ok(()) => observer.event(&Event::LeaseReleased { region, epoch }),
            Err(e) => observer.event(&Event::Retrying {
                what: "resign the lease (it expires by itself)".into(),
                error: e.to_string(),
            }),
        }
    }
    Ok(())
}

/// One round: renew the tenure, or look at (and maybe take or adopt) the lease.
#[allow(clippy::too_many_arguments)]
async fn tick(
    c: &mut Coordinator,
    agent: &Agent,
    tenure: &mut Option<Tenure>,
    is_primary: bool,
    agent_id: &str,
    ttl: Duration,
    claim: Duration,
    observer: &dyn Observer,
) {
    let region = agent.region.clone();
    agent.set(|k| k.read_ok = false);
    if let Some(t) = tenure.as_mut() {
        let sent = Instant::now();
        match c.renew(t).await {
            Ok(true) => agent.set(|k| {
                k.valid_until = Some(sent + claim);
                k.epoch = k.epoch.max(t.epoch);
                k.holder = Some(region.clone());
            }),
            Ok(false) => {
                let epoch = t.epoch;
                *tenure = None;
                agent.set(|k| k.valid_until = None);
                observer.event(&Event::LeaseLost { region, epoch });
            }
            // Not renewed: the claim runs out by itself at `valid_until`.
            Err(e) => observer.event(&Event::Retrying {
                what: "renew the lease".into(),
                error: e.to_string(),
            }),
        }
        return;
    }
    let seen = c.snapshot().await;
    let (epoch, holder) = match seen {
        Ok(s) => s,
        Err(e) => {
            observer.event(&Event::Retrying {
                what: "read the lease".into(),
                error: e.to_string(),
            });
            return;
        }
    };
    agent.set(|k| {
        k.epoch = k.epoch.max(epoch);
        k.holder = holder.as_ref().map(|h| h.region.clone());
        k.read_ok = true;
    });
    if let Some(h) = &holder {
        // Carry on a tenure of this region that this agent held before a restart (same
        // id), that a switchover or failover plan holds for it, or that a finished plan
        // handed to it. Another agent's tenure in the same region is left alone: it
        // expires if that agent is gone.
        let by_plan = h.agent.starts_with(super::run::PLAN_PREFIX);
        let handed = h.agent == super::run::handed_to(&region);
        if h.region == region && (h.agent == agent_id || by_plan || handed) {
            let sent = Instant::now();
            match c.adopt(h, ttl).await {
                Ok(Some(t)) => {
                    let own = !by_plan;
                    agent.set(|k| {
                        k.valid_until = Some(sent + claim);
                        k.epoch = k.epoch.max(t.epoch);
                        k.own = own;
                    });
                    observer.event(&Event::LeaseAcquired {
                        region: region.clone(),
                        epoch: t.epoch,
                    });
                    *tenure = Some(t);
                }
                Ok(None) => {}
                Err(e) => observer.event(&Event::Retrying {
                    what: "adopt the lease".into(),
                    error: e.to_string(),
                }),
            }
        }
        return;
    }
    // Only the last active region (or the primary on a fresh deployment) takes a free
    // lease by itself: after a failover the old primary stays fenced until an operator
    // acts, and the new one resumes after its own restart.
    match c.active().await {
        Ok(Some(last)) if last != region => return,
        Ok(None) if !is_primary => return,
        Ok(_) => {}
        Err(e) => {
            observer.event(&Event::Retrying {
                what: "read the last active region".into(),
                error: e.to_string(),
            });
            return;
        }
    }
    let sent = Instant::now();
    match c.acquire(&region, agent_id, ttl, epoch).await {
        Ok(Acquired::Won(t)) => {
            let t = *t;
            agent.set(|k| {
                k.valid_until = Some(sent + claim);
                k.epoch = t.epoch;
                k.holder = Some(region.clone());
                k.own = true;
            });
            observer.event(&Event::LeaseAcquired {
                region: region.clone(),
                epoch: t.epoch,
            });
            *tenure = Some(t);
        }
        Ok(Acquired::Held(h)) => agent.set(|k| {
            k.epoch = k.epoch.max(h.epoch);
            k.holder = Some(h.region);
        }),
        Err(e) => observer.event(&Event::Retrying {
            what: "take the lease".into(),
            error: e.to_string(),
        }),
    }
}
