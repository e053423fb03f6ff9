//! The lab's servers, its `haven.toml` and its agents.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use haven_pg::Pg;
use testbed::{Broker, DelayProxy, EtcdCluster, Haproxy, HaproxyBackend, Knot, Place, Postgres};

use crate::agent::{lease_epoch_of, lease_status, spawn_agent};
use crate::backups::{self, JobProcess, RegionBackups};
use crate::traffic::write_via_route;

/// The TSIG key (base64) of the lab's DNS server.
pub const TSIG_B64: &str = "aGF2ZW4tdGVzdC1rZXktMzItYnl0ZXMtbG9uZy4uLi4=";

/// The lab's application schema (on both databases) and its application role.
pub const SCHEMA: &str =
    "CREATE TABLE accounts (id bigserial PRIMARY KEY, owner text NOT NULL, payload text);
     CREATE ROLE app LOGIN;
     GRANT ALL ON accounts TO app; GRANT ALL ON SEQUENCE accounts_id_seq TO app;";

/// How to build the lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The `haven` binary the agents run.
    pub haven: PathBuf,
    /// `[failover] mode`: "manual" or "automatic".
    pub mode: String,
    /// US's agent reaches the etcd members through proxies that can be cut
    /// ([`Lab::us_links`]): a partition of US from EU and the witness.
    pub cut_links: bool,
    /// `[coordination] lease_ttl_s`.
    pub lease_ttl_s: u64,
    /// `[failover] failed_checks`.
    pub failed_checks: u32,
    /// One-way delay of the links between regions (the replication link, and US's links to
    /// EU's and the witness's etcd members): the seed's 80 ms in `haven lab up`.
    pub link_delay: Duration,
    /// Where the lab keeps its `haven.toml`, agent states and logs (kept when the lab
    /// stops); by default a temporary directory removed with the lab.
    pub dir: Option<PathBuf>,
    /// A Kafka broker (tansu) per region, the topic `ledger.transfers` on US and a
    /// continuous mirror US -> EU (`[mirrors.us-to-eu]`, `regions.eu.mirror_in`).
    pub kafka: bool,
    /// With `kafka`: a Garage S3 server per region and a continuous backup of each
    /// region's `ledger.*` topics into its own store (`[jobs.backup-REGION]`).
    pub backups: bool,
    /// With `kafka`: consumer groups the mirrors keep in sync each way (`groups`).
    pub mirror_groups: Vec<String>,
}

/// The topic of the lab's transfer events, and its partitions.
pub const TRANSFERS_TOPIC: &str = "ledger.transfers";
pub const TRANSFERS_PARTITIONS: i32 = 4;

/// Where the lab's servers live: in `DIR/servers/PART` when the lab has a directory
/// (their data and ports kept across `lab down` / `lab up`), else in temporary ones.
#[derive(Debug, Clone)]
pub struct Places(Option<PathBuf>);

/// The folder of a lab directory holding its servers' data (and `ports.json`, the ports
/// of the lab's links, agents and backup jobs).
pub const SERVERS_DIR: &str = "servers";

impl Places {
    pub fn of(options: &LabOptions) -> Places {
        Places(options.dir.as_ref().map(|d| d.join(SERVERS_DIR)))
    }

    /// The place of one part (`pg-us`, `etcd`, ...).
    pub fn part(&self, name: &str) -> anyhow::Result<Place> {
        match &self.0 {
            Some(root) => Place::kept(root.join(name)),
            None => Place::temp(&format!("haven-lab-{name}-")),
        }
    }

    /// The ports of what the lab runs itself (links, agents, backup jobs' metrics).
    pub fn own(&self) -> anyhow::Result<Place> {
        match &self.0 {
            Some(root) => Place::kept(root),
            None => Place::temp("haven-lab-"),
        }
    }
}

/// Where a lab keeps its files.
pub enum LabDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl LabDir {
    pub fn path(&self) -> &Path {
        match self {
            LabDir::Temp(t) => t.path(),
            LabDir::Kept(p) => p,
        }
    }
}

/// A region's Kafka broker.
pub struct RegionKafka {
    pub us: Broker,
    pub eu: Broker,
    /// The continuous mirrors `us-to-eu` and `eu-to-us` (`haven mirror --job NAME`):
    /// each runs only while its target is not the active region (the mirror's own guard
    /// ends it otherwise) and [`Lab::keep_mirrors`] starts it again.
    pub mirrors: Vec<MirrorProcess>,
}

/// One mirror job and its process.
pub type MirrorProcess = JobProcess;

impl LabOptions {
    pub fn new(haven: impl Into<PathBuf>) -> Self {
        LabOptions {
            haven: haven.into(),
            mode: "manual".into(),
            cut_links: false,
            lease_ttl_s: 3,
            failed_checks: 2,
            dir: None,
            kafka: false,
            backups: false,
            mirror_groups: vec![],
            link_delay: Duration::ZERO,
        }
    }
}

/// A running lab; dropping it stops every server and agent and removes its files.
pub struct Lab {
    pub etcd: EtcdCluster,
    pub us: Postgres,
    pub eu: Postgres,
    pub proxy: Haproxy,
    pub dns: Knot,
    pub dir: LabDir,
    /// Kafka per region and the mirror, with [`LabOptions::kafka`].
    pub kafka: Option<RegionKafka>,
    /// Object stores and backup jobs, with [`LabOptions::backups`].
    pub backups: Option<RegionBackups>,
    /// The `haven.toml` describing the lab.
    pub cfg: String,
    /// Per agent: its region, its HTTP port (`/lease`, `/metrics`), its process.
    pub agents: Vec<(String, u16, Child)>,
    /// US's links to the etcd members (empty unless `cut_links`).
    pub us_links: Vec<DelayProxy>,
    /// The replication link: EU's subscription reaches US's database through it.
    pub replication: DelayProxy,
    pub options: LabOptions,
    /// Parts a fault stopped (`pg-us`, `broker-eu`, `agent-us`): what `heal` starts.
    pub stopped: std::collections::BTreeSet<String>,
    /// The lab was started on the data of an earlier one (`lab down` then `lab up`).
    pub reused: bool,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, _, c) in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(b) = self.backups.as_mut() {
            for (j, _) in &mut b.jobs {
                j.stop();
            }
        }
        // SIGTERM: a mirror settles what it copied and leaves its consumer group. Killed
        // -9, its member stayed in the group (tansu keeps groups across a restart), and
        // after `lab down` / `lab up` the next mirror waited to join for minutes.
        if let Some(k) = self.kafka.as_mut() {
            for m in &mut k.mirrors {
                m.stop();
            }
        }
    }
}

/// A current-thread runtime for the lab's blocking helpers.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A superuser session on a lab database.
pub async fn admin(pg: &Postgres, name: &str) -> anyhow::Result<Pg> {
    Pg::connect(name, &pg.url("postgres"), None, Duration::from_secs(10))
        .await
        .with_context(|| format!("connect to {name}"))
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

impl Lab {
    /// Starts every server, replicates US to EU (EU's application role fenced), writes
    /// the config and starts both agents.
    pub fn start(options: &LabOptions) -> anyhow::Result<Lab> {
        // The object stores take the longest to set up: they start first, beside the rest.
        let places = Places::of(options);
        let mut own = places.own()?;
        let stores = (options.backups && options.kafka).then(|| {
            let places = places.clone();
            std::thread::spawn(move || RegionBackups::start_stores(&places))
        });
        let etcd = EtcdCluster::start_in(places.part("etcd")?, 3)?;
        let (us, eu) = (
            Postgres::start_in(places.part("pg-us")?)?,
            Postgres::start_in(places.part("pg-eu")?)?,
        );
        let reused = us.reused();
        if eu.reused() != reused {
            bail!(
                "{} holds one region's database and not the other's: remove the directory to start afresh",
                options.dir.as_deref().unwrap_or(Path::new("?")).display()
            );
        }
        let replication =
            DelayProxy::start(own.port("replication")?, us.port(), options.link_delay)?;
        let via_link = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            replication.port()
        );
        // A lab started again keeps its schemas, its subscription (through the same link
        // port) and its fences: whichever region was active stays so.
        rt().block_on(async {
            if reused {
                return anyhow::Ok(());
            }
            let (u, e) = (
                admin(&us, "ledger-us").await?,
                admin(&eu, "ledger-eu").await?,
            );
            for db in [&u, &e] {
                db.exec("schema", SCHEMA).await?;
                db.exec("the ledger's schema", crate::ledger::SCHEMA)
                    .await?;
                db.ensure_tables().await?;
            }
            u.ensure_publication("haven").await?;
            e.ensure_subscription("haven", &via_link, "haven", true)
                .await?;
            e.wait_synced("haven", Duration::from_secs(30)).await?;
            // The standby's application roles are fenced while it is the standby.
            e.fence(&["app".into()]).await?;
            anyhow::Ok(())
        })?;
        let proxy = Haproxy::start_in(
            places.part("haproxy")?,
            &[HaproxyBackend {
                name: "be_write".into(),
                servers: vec![
                    ("us".into(), format!("127.0.0.1:{}", us.port())),
                    ("eu".into(), format!("127.0.0.1:{}", eu.port())),
                ],
                disabled: true,
            }],
        )?;
        let dir = match &options.dir {
            Some(p) => {
                std::fs::create_dir_all(p).with_context(|| format!("create {}", p.display()))?;
                LabDir::Kept(p.clone())
            }
            None => LabDir::Temp(tempfile::tempdir()?),
        };
        let kafka = if options.kafka {
            // EU's broker is across the link: every client reaches it through a proxy that
            // delays each direction by the link's delay (tansu advertises one address, so
            // EU's own clients pay it too; the mirrors cross it as they would).
            let remote = (!options.link_delay.is_zero()).then_some(options.link_delay);
            let eu = Broker::start_in(places.part("kafka-eu")?, remote)?;
            let us = Broker::start_in(places.part("kafka-us")?, None)?;
            if !us.reused() {
                us.create_topic(TRANSFERS_TOPIC, TRANSFERS_PARTITIONS)?;
            }
            Some(RegionKafka {
                us,
                eu,
                mirrors: vec![],
            })
        } else {
            None
        };
        let dns = Knot::start_in(
            places.part("dns")?,
            "dr.example.",
            &["kafka A 10.0.0.1"],
            "haven",
            TSIG_B64,
        )?;
        let key_file = dir.path().join("tsig.key");
        std::fs::write(&key_file, TSIG_B64)?;
        let mut text = config_text(options, &etcd, &us, &eu, &proxy, &dns, &key_file);
        if let Some(k) = &kafka {
            text = with_kafka(
                &text,
                &k.us.bootstrap(),
                &k.eu.bootstrap(),
                &options.mirror_groups,
            );
        }
        let stores = match stores {
            Some(h) => {
                let (us, eu) = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("starting the object stores panicked"))??;
                text.push_str(&backups::config_sections(dir.path(), &us, &eu)?);
                Some((us, eu))
            }
            None => None,
        };
        // Where drills keep their evidence (and, later, the lab's backups).
        text.push_str(&format!(
            "\n[repositories.lab]\nurl = \"file://{}\"\n",
            path(&dir.path().join("repo"))
        ));
        let cfg = dir.path().join("haven.toml");
        std::fs::write(&cfg, text)?;
        let cfg = path(&cfg);
        let mut lab = Lab {
            etcd,
            us,
            eu,
            proxy,
            dns,
            dir,
            kafka,
            backups: None,
            cfg,
            agents: vec![],
            us_links: vec![],
            replication,
            options: options.clone(),
            stopped: Default::default(),
            reused,
        };
        if options.cut_links {
            let mut text = std::fs::read_to_string(&lab.cfg)?;
            for i in 0..3 {
                let port = lab.etcd.client_port(i);
                // US's own member is local; EU's and the witness's are across the link.
                let delay = if i == 0 {
                    Duration::ZERO
                } else {
                    options.link_delay
                };
                let link = DelayProxy::start(own.port(&format!("us-link-{i}"))?, port, delay)?;
                text = text.replace(
                    &format!("127.0.0.1:{port}\""),
                    &format!("127.0.0.1:{}\"", link.port()),
                );
                lab.us_links.push(link);
            }
            std::fs::write(lab.dir.path().join("haven-us.toml"), text)?;
        }
        for region in ["us", "eu"] {
            let port = own.port(&format!("agent-{region}"))?;
            let state = lab.state_dir(region);
            let cfg = lab.agent_config(region);
            let child = spawn_agent(&options.haven, &cfg, region, port, &state)?;
            lab.agents.push((region.into(), port, child));
        }
        if lab.kafka.is_some() {
            let mut mirrors = vec![];
            for job in ["us-to-eu", "eu-to-us"] {
                let log = lab.dir.path().join(format!("mirror-{job}.log"));
                let args = vec!["mirror".into(), "--job".into(), job.into()];
                mirrors.push(JobProcess::start(&options.haven, &lab.cfg, job, args, &log));
            }
            if let Some(k) = lab.kafka.as_mut() {
                k.mirrors = mirrors;
            }
            lab.wait_mirrored(Duration::from_secs(30))?;
        }
        // The backups start once EU has the topic, so each sees its region's topics.
        if let Some((us, eu)) = stores {
            let mut jobs = vec![];
            for region in ["us", "eu"] {
                let port = own.port(&format!("backup-metrics-{region}"))?;
                let job = backups::repository(region);
                let log = lab.dir.path().join(format!("{job}.log"));
                let args = backups::backup_args(region, port);
                jobs.push((
                    JobProcess::start(&options.haven, &lab.cfg, &job, args, &log),
                    port,
                ));
            }
            // Ready means answering: a backup's metrics endpoint opens once it has read
            // its repository and its cluster (across the link for EU's).
            let deadline = Instant::now() + Duration::from_secs(60);
            for (j, port) in jobs.iter_mut() {
                while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                    j.keep(&options.haven, &lab.cfg);
                    if Instant::now() > deadline {
                        bail!(
                            "backup job {} did not open its metrics endpoint within 60 s: see {}",
                            j.job,
                            lab.dir.path().join(format!("{}.log", j.job)).display()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            lab.backups = Some(RegionBackups { us, eu, jobs });
        }
        Ok(lab)
    }

    /// Starts again every mirror that ended (its target became active, or it failed) and
    /// every backup that ended, at most every 3 s each. Called by the lab's supervisor.
    pub fn keep_mirrors(&mut self) {
        let (haven, cfg) = (self.options.haven.clone(), self.cfg.clone());
        if let Some(k) = self.kafka.as_mut() {
            for m in &mut k.mirrors {
                m.keep(&haven, &cfg);
            }
        }
        if let Some(b) = self.backups.as_mut() {
            for (j, _) in &mut b.jobs {
                j.keep(&haven, &cfg);
            }
        }
    }

    /// Waits until the mirror has created the transfers topic on EU (so that what a
    /// failover would lose can be measured from the start).
    fn wait_mirrored(&self, timeout: Duration) -> anyhow::Result<()> {
        let Some(k) = &self.kafka else {
            return Ok(());
        };
        let bootstrap = k.eu.bootstrap();
        let inspector = haven_kafka::ClusterConfig::new(&bootstrap).inspector("haven-lab")?;
        let deadline = Instant::now() + timeout;
        loop {
            let topics = haven_kafka::list_topics(&inspector, &bootstrap, Duration::from_secs(5))
                .unwrap_or_default();
            if topics.iter().any(|t| t.name == TRANSFERS_TOPIC) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the mirror did not create {TRANSFERS_TOPIC} on EU within {timeout:?}: see {}",
                    self.dir.path().join("mirror-us-to-eu.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The config a region's agent runs with: US's reaches etcd through the cuttable
    /// links when there are some.
    pub fn agent_config(&self, region: &str) -> String {
        if region == "us" && !self.us_links.is_empty() {
            path(&self.dir.path().join("haven-us.toml"))
        } else {
            self.cfg.clone()
        }
    }

    /// A region's agent state directory (its plans, progress, audit).
    pub fn state_dir(&self, region: &str) -> PathBuf {
        self.dir.path().join(format!("agent-{region}"))
    }

    /// The HTTP port of a region's agent.
    pub fn agent_port(&self, region: &str) -> Option<u16> {
        self.agents.iter().find(|a| a.0 == region).map(|a| a.1)
    }

    /// The port applications write through (HAProxy's write backend).
    pub fn write_port(&self) -> u16 {
        self.proxy.port("be_write")
    }

    /// Waits until US's agent holds the lease and US takes writes through the route (the
    /// primary of a fresh deployment); returns the epoch.
    pub fn wait_us_active(&self, timeout: Duration) -> anyhow::Result<u64> {
        self.wait_active(&["us"], timeout).map(|(_, epoch)| epoch)
    }

    /// Waits until the agent of one of `regions` holds the lease and its region takes
    /// writes through the route; returns that region and the epoch.
    pub fn wait_active(
        &self,
        regions: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<(String, u64)> {
        let deadline = Instant::now() + timeout;
        loop {
            for &region in regions {
                let Some(port) = self.agent_port(region) else {
                    bail!("the lab has no {region} agent");
                };
                let db = if region == "us" { &self.us } else { &self.eu };
                if lease_status(port) == Some(200)
                    && rt().block_on(write_via_route(self.write_port())) == Some(db.port())
                {
                    if let Some(epoch) = lease_epoch_of(port) {
                        return Ok((region.to_string(), epoch));
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no region of {} took the lease and opened its route within {timeout:?}",
                    regions.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The config with real brokers for both regions and the mirrors each way.
fn with_kafka(text: &str, us: &str, eu: &str, groups: &[String]) -> String {
    let text = text
        .replace(
            "bootstrap = \"127.0.0.1:1\"",
            &format!("bootstrap = \"{us}\""),
        )
        .replace(
            "bootstrap = \"127.0.0.1:2\"",
            &format!("bootstrap = \"{eu}\""),
        )
        .replace(
            "[regions.eu]\ncluster = \"eu\"\n",
            "[regions.eu]\ncluster = \"eu\"\nmirror_in = \"us-to-eu\"\n",
        )
        .replace(
            "[regions.us]\ncluster = \"us\"\n",
            "[regions.us]\ncluster = \"us\"\nmirror_in = \"eu-to-us\"\n",
        );
    let mut out = text;
    // The ledger's downstream service (`ledger::service`): what `haven recover` rewinds
    // when its database is restored to an earlier point.
    out.push_str(&format!(
        "\n[services.{}]\nconsumes = [\"{TRANSFERS_TOPIC}\"]\ngroups = [\"{}\"]\n",
        crate::ledger::service::SERVICE,
        crate::ledger::service::GROUP
    ));
    for (from, to) in [("us", "eu"), ("eu", "us")] {
        out.push_str(&format!(
            "\n[mirrors.{from}-to-{to}]\nfrom = \"{from}\"\nto = \"{to}\"\ntopics = \"ledger\\\\..*\"\n"
        ));
        if !groups.is_empty() {
            out.push_str(&format!("groups = {groups:?}\n"));
        }
    }
    out
}

fn config_text(
    o: &LabOptions,
    etcd: &EtcdCluster,
    us: &Postgres,
    eu: &Postgres,
    proxy: &Haproxy,
    dns: &Knot,
    key_file: &Path,
) -> String {
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    format!(
        r#"
[clusters.us]
bootstrap = "127.0.0.1:1"
[clusters.eu]
bootstrap = "127.0.0.1:2"

[coordination]
endpoints = [{endpoints}]
cluster = "lab"
lease_ttl_s = {ttl}

[regions.us]
cluster = "us"
[regions.eu]
cluster = "eu"

[failover]
primary = "us"
standby = "eu"
mode = "{mode}"
failed_checks = {checks}

[databases.ledger-us]
region = "us"
url = "{us_url}"
roles = ["app"]
peer = "ledger-eu"
sequence_gap = 1000

[databases.ledger-eu]
region = "eu"
url = "{eu_url}"
roles = ["app"]
sequence_gap = 1000

[routes.write-us]
region = "us"
kind = "haproxy"
socket = "{socket}"
backend = "be_write"
server = "us"

[routes.write-eu]
region = "eu"
kind = "haproxy"
socket = "{socket}"
backend = "be_write"
server = "eu"

[routes.dns-us]
region = "us"
kind = "dns"
dns_server = "127.0.0.1:{dns_port}"
zone = "dr.example."
name = "kafka.dr.example."
address = "10.0.0.1"
key_name = "haven"
key_file = "{key_file}"

[routes.dns-eu]
region = "eu"
kind = "dns"
dns_server = "127.0.0.1:{dns_port}"
zone = "dr.example."
name = "kafka.dr.example."
address = "10.0.1.1"
key_name = "haven"
key_file = "{key_file}"
"#,
        endpoints = endpoints.join(", "),
        ttl = o.lease_ttl_s,
        mode = o.mode,
        checks = o.failed_checks,
        us_url = us.url("postgres"),
        eu_url = eu.url("postgres"),
        socket = path(&proxy.socket()),
        dns_port = dns.port(),
        key_file = path(key_file),
    )
}
