//! The lab's object stores and continuous backups: a Garage S3 server per region, and
//! in each region a `haven backup` job writing that region's Kafka topics into that
//! region's store (`[repositories.backup-REGION]`, `[jobs.backup-REGION]`), each serving
//! its metrics so a drill can watch its RPO.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::Context;
use testbed::S3Server;

use crate::regions::Places;

/// The bucket of a region's backups.
pub fn bucket(region: &str) -> String {
    format!("haven-{region}")
}

/// The repository (in `haven.toml`) holding a region's backup.
pub fn repository(region: &str) -> String {
    format!("backup-{region}")
}

/// A supervised `haven` job (a mirror, a backup): started again when it ends.
pub struct JobProcess {
    pub job: String,
    /// The arguments after `haven --config CFG`.
    pub args: Vec<String>,
    /// Where its stderr goes (appended).
    pub log: std::path::PathBuf,
    pub child: Option<Child>,
    pub started: Instant,
}

impl JobProcess {
    pub fn start(haven: &Path, cfg: &str, job: &str, args: Vec<String>, log: &Path) -> Self {
        let mut p = JobProcess {
            job: job.into(),
            args,
            log: log.to_path_buf(),
            child: None,
            started: Instant::now(),
        };
        p.child = spawn_job(haven, cfg, &p.args, &p.log).ok();
        p
    }

    /// Starts the job again if it ended, at most every 3 s.
    pub fn keep(&mut self, haven: &Path, cfg: &str) {
        let ended = match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        };
        if ended && self.started.elapsed() > Duration::from_secs(3) {
            self.child = spawn_job(haven, cfg, &self.args, &self.log).ok();
            self.started = Instant::now();
        }
    }

    /// Stops the job (SIGTERM, so a backup flushes), killing it after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) with a pid and a signal number has no memory effects.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `haven --config CFG ARGS...`, its log appended to `log`.
pub fn spawn_job(haven: &Path, cfg: &str, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("{}", log.display()))?;
    std::process::Command::new(haven)
        .args(["--config", cfg])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .with_context(|| format!("cannot start {}", haven.display()))
}

/// Each region's object store and backup job.
pub struct RegionBackups {
    pub us: S3Server,
    pub eu: S3Server,
    /// `backup-us`, `backup-eu`, and the port each serves `/metrics` on.
    pub jobs: Vec<(JobProcess, u16)>,
}

impl RegionBackups {
    /// Starts both object stores (side by side: each takes seconds to set up its
    /// layout) and makes each region's bucket.
    pub fn start_stores(places: &Places) -> anyhow::Result<(S3Server, S3Server)> {
        let start = |region: &'static str| {
            let place = places.part(&format!("s3-{region}"));
            std::thread::spawn(move || -> anyhow::Result<S3Server> {
                let s = S3Server::start_in(place?)?;
                if !s.reused() {
                    s.create_bucket(&bucket(region))?;
                }
                Ok(s)
            })
        };
        let (us, eu) = (start("us"), start("eu"));
        let join = |h: std::thread::JoinHandle<anyhow::Result<S3Server>>| {
            h.join()
                .map_err(|_| anyhow::anyhow!("starting an object store panicked"))?
        };
        Ok((join(us)?, join(eu)?))
    }

    pub fn store(&mut self, region: &str) -> &mut S3Server {
        if region == "us" {
            &mut self.us
        } else {
            &mut self.eu
        }
    }

    /// The metrics port of a region's backup job.
    pub fn metrics_port(&self, region: &str) -> Option<u16> {
        let job = format!("backup-{region}");
        self.jobs.iter().find(|(j, _)| j.job == job).map(|j| j.1)
    }
}

/// The `haven.toml` sections of the backups: per region a repository on its own object
/// store (the secret key in `DIR/s3-REGION.secret`, read through `secret_options`) and a
/// backup job of the region's `ledger.*` topics.
pub fn config_sections(dir: &Path, us: &S3Server, eu: &S3Server) -> anyhow::Result<String> {
    let mut out = String::new();
    for (region, s3) in [("us", us), ("eu", eu)] {
        let secret = dir.join(format!("s3-{region}.secret"));
        std::fs::write(&secret, &s3.secret)
            .with_context(|| format!("write {}", secret.display()))?;
        out.push_str(&format!(
            r#"
[repositories.{repo}]
url = "s3://{bucket}/ledger"
options = {{ aws_endpoint = "{endpoint}", aws_access_key_id = "{key}", aws_region = "garage", aws_allow_http = "true", timeout = "2s" }}
secret_options = {{ aws_secret_access_key = "file:{secret}" }}

[jobs.{repo}]
kind = "backup"
cluster = "{region}"
repository = "{repo}"
topics = "ledger\\..*"
flush_ms = 500
"#,
            repo = repository(region),
            bucket = bucket(region),
            endpoint = s3.endpoint(),
            key = s3.key_id,
            secret = secret.display(),
        ));
    }
    Ok(out)
}

/// The arguments of a region's backup job, serving metrics on `port`.
pub fn backup_args(region: &str, port: u16) -> Vec<String> {
    vec![
        "backup".into(),
        "--job".into(),
        repository(region),
        // The timeline of the ledger's service's group, which `haven recover` rewinds from
        // (tansu cannot list groups: it is named).
        "--group-interval".into(),
        "1".into(),
        "--group".into(),
        crate::ledger::service::GROUP.into(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{port}"),
    ]
}
