//! Faults injected into a running lab (`haven lab fault`, drills) and healed again.

use std::time::Duration;

use anyhow::bail;

use crate::agent::spawn_agent;
use crate::regions::Lab;

/// A fault the lab can inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The whole region at once: its agent killed -9, its Postgres stopped in immediate
    /// mode (a crash), its broker killed -9.
    RegionDown(String),
    /// The region's Postgres crashes (immediate stop); `heal` starts it again.
    PgCrash(String),
    /// The region's broker is killed -9; `heal` starts it again on the same data.
    BrokerCrash(String),
    /// The region's object store (Garage) is killed -9: its backup must hold on;
    /// `heal` starts the store again on its data.
    S3Down(String),
    /// The agent alone is killed -9.
    AgentCrash(String),
    /// US cut off: the replication link and US's links to every etcd member go down.
    LinkCut,
    /// The same cut for `ms` milliseconds, then healed by itself.
    LinkFlap(u64),
    /// Every link up again, every stopped server and agent started again.
    Heal,
}

fn region(arg: Option<&str>, what: &str) -> anyhow::Result<String> {
    match arg {
        Some(r @ ("us" | "eu")) => Ok(r.to_string()),
        Some(other) => bail!("{what}: no region {other:?} in the lab (us or eu)"),
        None => bail!("{what} needs a region: us or eu"),
    }
}

impl Fault {
    /// Parses `region-down us`, `pg-crash eu`, `broker-crash us`, `agent-crash us`, `s3-down us`,
    /// `link-cut`, `link-flap [MS]`, `heal`.
    pub fn parse(words: &[String]) -> anyhow::Result<Fault> {
        let name = words.first().map(String::as_str).unwrap_or("");
        let arg = words.get(1).map(String::as_str);
        Ok(match name {
            "region-down" => Fault::RegionDown(region(arg, name)?),
            "pg-crash" => Fault::PgCrash(region(arg, name)?),
            "broker-crash" => Fault::BrokerCrash(region(arg, name)?),
            "agent-crash" => Fault::AgentCrash(region(arg, name)?),
            "link-cut" => Fault::LinkCut,
            "link-flap" => Fault::LinkFlap(match arg {
                None => 1000,
                Some(ms) => ms
                    .parse()
                    .map_err(|_| anyhow::anyhow!("link-flap: {ms:?} is not milliseconds"))?,
            }),
            "heal" => Fault::Heal,
            "s3-down" => Fault::S3Down(region(arg, name)?),
            other => bail!(
                "unknown fault {other:?}: region-down REGION, pg-crash REGION, broker-crash REGION, \
                 agent-crash REGION, s3-down REGION, link-cut, link-flap [MS], heal"
            ),
        })
    }
}

impl Lab {
    fn set_links_down(&self, down: bool) {
        self.replication.set_down(down);
        for l in &self.us_links {
            l.set_down(down);
        }
    }

    fn kill_agent(&mut self, region: &str) {
        for (r, _, child) in &mut self.agents {
            if r == region {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn pg(&self, region: &str) -> &testbed::Postgres {
        if region == "us" {
            &self.us
        } else {
            &self.eu
        }
    }

    fn kill_broker(&mut self, region: &str) -> bool {
        match self.kafka.as_mut() {
            Some(k) => {
                if region == "us" {
                    k.us.kill()
                } else {
                    k.eu.kill()
                }
                true
            }
            None => false,
        }
    }

    /// Injects `fault`; says what it did.
    pub fn inject(&mut self, fault: &Fault) -> anyhow::Result<String> {
        match fault {
            Fault::RegionDown(r) => {
                self.kill_agent(r);
                let _ = self.pg(r).stop();
                let broker = self.kill_broker(r);
                self.stopped
                    .extend([format!("agent-{r}"), format!("pg-{r}")]);
                if broker {
                    self.stopped.insert(format!("broker-{r}"));
                }
                Ok(format!(
                    "{r} down: agent killed -9, Postgres crashed{}",
                    if broker { ", broker killed -9" } else { "" }
                ))
            }
            Fault::PgCrash(r) => {
                self.pg(r).stop()?;
                self.stopped.insert(format!("pg-{r}"));
                Ok(format!("{r}'s Postgres crashed (immediate stop)"))
            }
            Fault::BrokerCrash(r) => {
                if !self.kill_broker(r) {
                    bail!("the lab has no Kafka (started with --no-kafka)");
                }
                self.stopped.insert(format!("broker-{r}"));
                Ok(format!("{r}'s broker killed -9"))
            }
            Fault::S3Down(r) => {
                let Some(b) = self.backups.as_mut() else {
                    bail!("the lab has no object stores (started with --no-backups or --no-kafka)");
                };
                b.store(r).kill();
                self.stopped.insert(format!("s3-{r}"));
                Ok(format!("{r}'s object store killed -9"))
            }
            Fault::AgentCrash(r) => {
                self.kill_agent(r);
                self.stopped.insert(format!("agent-{r}"));
                Ok(format!("{r}'s agent killed -9"))
            }
            Fault::LinkCut => {
                if self.us_links.is_empty() {
                    bail!("this lab was started without cuttable links");
                }
                self.set_links_down(true);
                Ok("US cut off: replication link and US's links to etcd down".into())
            }
            Fault::LinkFlap(ms) => {
                if self.us_links.is_empty() {
                    bail!("this lab was started without cuttable links");
                }
                self.set_links_down(true);
                std::thread::sleep(Duration::from_millis(*ms));
                self.set_links_down(false);
                Ok(format!("US's links down for {ms} ms, then up"))
            }
            Fault::Heal => self.heal(),
        }
    }

    /// Links up, then every stopped Postgres, broker and agent started again (on the same
    /// data and ports).
    pub fn heal(&mut self) -> anyhow::Result<String> {
        self.set_links_down(false);
        let stopped: Vec<String> = std::mem::take(&mut self.stopped).into_iter().collect();
        let mut done = vec!["links up".to_string()];
        // A database whose agent is down too comes back refusing application logins
        // until its agent is back and has decided (fenced it, or holds the lease): an old
        // primary must never take a write meanwhile.
        let mut refusing = Vec::new();
        for part in stopped.iter().filter(|p| p.starts_with("pg-")) {
            let region = &part[3..];
            if stopped.contains(&format!("agent-{region}")) {
                self.pg(region).restart_refusing()?;
                refusing.push(region.to_string());
                done.push(format!("{part} started (refusing application logins)"));
            } else {
                self.pg(region).restart()?;
                done.push(format!("{part} started"));
            }
        }
        for part in stopped.iter().filter(|p| p.starts_with("broker-")) {
            if let Some(k) = self.kafka.as_mut() {
                if &part[7..] == "us" {
                    k.us.restart()?
                } else {
                    k.eu.restart()?
                }
            }
            done.push(format!("{part} started"));
        }
        for part in stopped.iter().filter(|p| p.starts_with("s3-")) {
            if let Some(b) = self.backups.as_mut() {
                b.store(&part[3..]).restart()?;
            }
            done.push(format!("{part} started"));
        }
        for part in stopped.iter().filter(|p| p.starts_with("agent-")) {
            let r = &part[6..];
            let cfg = self.agent_config(r);
            let state = self.state_dir(r);
            let haven = self.options.haven.clone();
            if let Some(a) = self.agents.iter_mut().find(|a| a.0 == r) {
                a.2 = spawn_agent(&haven, &cfg, r, a.1, &state)?;
            }
            done.push(format!("{part} started"));
        }
        for region in refusing {
            done.push(self.admit_when_decided(&region)?);
        }
        Ok(done.join(", "))
    }

    /// Lets applications log in to `region`'s database again once its agent has fenced
    /// it or holds the lease (30 s at most; otherwise it stays refusing, and says so).
    fn admit_when_decided(&self, region: &str) -> anyhow::Result<String> {
        let port = self.agents.iter().find(|a| a.0 == region).map(|a| a.1);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let holds = port.and_then(crate::lease_status) == Some(200);
            if holds || roles_fenced(self.pg(region)) {
                self.pg(region).admit()?;
                return Ok(format!(
                    "pg-{region} admits application logins ({})",
                    if holds {
                        "its agent holds the lease"
                    } else {
                        "its agent fenced it"
                    }
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(format!(
            "pg-{region} still refuses application logins: its agent neither fenced it nor took the lease within 30 s"
        ))
    }
}

/// Whether the lab's application role may not log in (its agent fenced the database),
/// read as the superuser.
fn roles_fenced(pg: &testbed::Postgres) -> bool {
    std::thread::scope(|s| {
        s.spawn(|| {
            crate::rt().block_on(async {
                let c = pg.connect().await.ok()?;
                let row = c
                    .query_opt(
                        "SELECT NOT rolcanlogin FROM pg_roles WHERE rolname = 'app'",
                        &[],
                    )
                    .await
                    .ok()??;
                Some(row.get::<_, bool>(0))
            })
        })
        .join()
        .ok()
        .flatten()
        .unwrap_or(false)
    })
}
