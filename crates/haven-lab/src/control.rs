//! A lab that outlives the command that started it (`haven lab up|down|status`): a
//! supervisor process holds the lab (its servers are its children, its links live in
//! it) and describes it in `DIR/lab.json`; `down` asks it to stop with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::agent::{lease_epoch_of, lease_status};
use crate::faults::Fault;
use crate::regions::{Lab, LabOptions, TRANSFERS_TOPIC};
use std::os::unix::net::{UnixListener, UnixStream};

/// The file a running lab is described in.
pub const STATE_FILE: &str = "lab.json";
/// The supervisor's log.
pub const LOG_FILE: &str = "lab.log";
/// The supervisor's control socket (faults).
pub const SOCKET_FILE: &str = "lab.sock";

/// What `DIR/lab.json` says about a running lab.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabState {
    /// The supervisor's process id (the leader of the lab's process group).
    pub pid: u32,
    /// When the lab became ready (RFC 3339).
    pub started_at: String,
    /// Seconds from the supervisor's start to a lab with US active.
    pub startup_s: f64,
    /// The `haven.toml` describing the lab: pass it as `haven --config`.
    pub config: PathBuf,
    pub mode: String,
    pub lease_ttl_s: u64,
    /// One-way delay of the links between regions.
    #[serde(default)]
    pub link_ms: u64,
    /// Started on the data an earlier `lab up` left in DIR (`DIR/servers`).
    #[serde(default)]
    pub reused: bool,
    /// The region that held the lease when the lab became ready.
    #[serde(default)]
    pub active: String,
    pub endpoints: Endpoints,
}

/// Where each part of the lab listens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Endpoints {
    /// The etcd members: US, EU, witness.
    pub etcd: Vec<String>,
    /// Superuser URLs of the two databases (no password: loopback trust).
    pub postgres_us: String,
    pub postgres_eu: String,
    /// Where applications write (HAProxy's write backend: the active region's database).
    pub write_route: String,
    pub haproxy_socket: PathBuf,
    /// The DNS server taking the routes' signed updates.
    pub dns: String,
    /// The agents' HTTP endpoints (`/lease`, `/metrics`).
    pub agent_us: String,
    pub agent_eu: String,
    /// Kafka bootstrap of each region, and the transfers topic (mirrored US -> EU).
    pub kafka_us: Option<String>,
    pub kafka_eu: Option<String>,
    pub topic: Option<String>,
    /// Each region's object store (S3 endpoint) and the `/metrics` of its backup job
    /// (repository `backup-REGION` in the config).
    #[serde(default)]
    pub s3_us: Option<String>,
    #[serde(default)]
    pub s3_eu: Option<String>,
    #[serde(default)]
    pub backup_metrics_us: Option<String>,
    #[serde(default)]
    pub backup_metrics_eu: Option<String>,
}

impl LabState {
    /// Reads `DIR/lab.json`; None when there is none.
    pub fn read(dir: &Path) -> anyhow::Result<Option<LabState>> {
        let p = dir.join(STATE_FILE);
        match std::fs::read(&p) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not a lab description; remove it if no lab runs there",
                    p.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
        }
    }

    /// Reads `DIR/lab.json`, or says how to start a lab there.
    pub fn require(dir: &Path) -> anyhow::Result<LabState> {
        LabState::read(dir)?.with_context(|| {
            format!(
                "no lab runs in {}: start one with `haven lab up --dir {}`",
                dir.display(),
                dir.display()
            )
        })
    }

    /// Writes `DIR/lab.json` whole or not at all (a temporary file renamed).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join(STATE_FILE))
            .with_context(|| format!("write {}", dir.join(STATE_FILE).display()))
    }

    fn of(lab: &Lab, startup: Duration, active: &str) -> LabState {
        let agent = |r: &str| {
            lab.agent_port(r)
                .map(|p| format!("http://127.0.0.1:{p}"))
                .unwrap_or_default()
        };
        let metrics = |r: &str| {
            let port = lab.backups.as_ref()?.metrics_port(r)?;
            Some(format!("http://127.0.0.1:{port}/metrics"))
        };
        LabState {
            pid: std::process::id(),
            started_at: chrono_now(),
            startup_s: startup.as_secs_f64(),
            config: PathBuf::from(&lab.cfg),
            mode: lab.options.mode.clone(),
            lease_ttl_s: lab.options.lease_ttl_s,
            link_ms: lab.options.link_delay.as_millis() as u64,
            reused: lab.reused,
            active: active.to_string(),
            endpoints: Endpoints {
                etcd: lab.etcd.endpoints(),
                postgres_us: lab.us.url("postgres"),
                postgres_eu: lab.eu.url("postgres"),
                write_route: format!("127.0.0.1:{}", lab.write_port()),
                haproxy_socket: lab.proxy.socket(),
                dns: format!("127.0.0.1:{}", lab.dns.port()),
                agent_us: agent("us"),
                agent_eu: agent("eu"),
                kafka_us: lab.kafka.as_ref().map(|k| k.us.bootstrap()),
                kafka_eu: lab.kafka.as_ref().map(|k| k.eu.bootstrap()),
                topic: lab.kafka.as_ref().map(|_| TRANSFERS_TOPIC.to_string()),
                s3_us: lab.backups.as_ref().map(|b| b.us.endpoint()),
                s3_eu: lab.backups.as_ref().map(|b| b.eu.endpoint()),
                backup_metrics_us: metrics("us"),
                backup_metrics_eu: metrics("eu"),
            },
        }
    }
}

fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Whether process `pid` is alive (and not a zombie waiting for its parent).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name in parentheses: "123 (haven) S ...".
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    !matches!(
        state.and_then(|s| s.chars().next()),
        Some('Z') | Some('X') | None
    )
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid and a signal number has no memory effects.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The supervisor (`haven lab up --foreground`): starts the lab in `options.dir`,
/// waits for US to be active, writes `lab.json`, then serves fault requests on
/// `DIR/lab.sock` until `stopped()` says so; dropping the lab stops every server.
/// `lab.json` and the socket are removed on the way out.
pub fn supervise(options: &LabOptions, stopped: impl Fn() -> bool) -> anyhow::Result<LabState> {
    let Some(dir) = options.dir.clone() else {
        bail!("the supervisor needs a lab directory");
    };
    let started = Instant::now();
    let mut lab = Lab::start(options)?;
    let active = if lab.reused {
        // Started again on its data: whichever region was active takes the lease again.
        let (region, epoch) = lab.wait_active(&["us", "eu"], Duration::from_secs(60))?;
        eprintln!("the lab's data was kept: {region} is active again, epoch {epoch}");
        region
    } else {
        lab.wait_us_active(Duration::from_secs(60))?;
        "us".to_string()
    };
    if options.kafka {
        // The failback policy of the lab's payment service: a transfer event US
        // published that never crossed is re-produced on EU (its transfer crossed with
        // the database; the event's key is the transfer's id, which nobody writes
        // twice); database changes are left for review (the default).
        let mut text = std::fs::read_to_string(&lab.cfg)?;
        text.push_str("\n[failback]\ntopics = { \"ledger\\\\..*\" = \"reapply-if-untouched\" }\n");
        std::fs::write(&lab.cfg, text)?;
    }
    let sock = dir.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).with_context(|| {
        format!(
            "listen on {} (a socket path must be under 108 bytes: choose a shorter --dir)",
            sock.display()
        )
    })?;
    listener.set_nonblocking(true)?;
    let state = LabState::of(&lab, started.elapsed(), &active);
    state.write(&dir)?;
    eprintln!("lab ready in {:.1} s", state.startup_s);
    while !stopped() {
        match listener.accept() {
            Ok((stream, _)) => serve(&mut lab, stream),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
        lab.keep_mirrors();
    }
    eprintln!("stopping the lab");
    let _ = std::fs::remove_file(dir.join(STATE_FILE));
    let _ = std::fs::remove_file(&sock);
    drop(lab);
    Ok(state)
}

/// One request on the control socket: a line `{"fault": ["region-down", "us"]}`,
/// answered with a line `{"ok": true, "detail": ...}` or `{"ok": false, "error": ...}`.
fn serve(lab: &mut Lab, stream: UnixStream) {
    use std::io::{BufRead, BufReader, Write};
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let mut reader = BufReader::new(&stream);
    let answer = match reader.read_line(&mut line) {
        Ok(_) => match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) => {
                let words: Vec<String> = v["fault"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|w| w.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                match Fault::parse(&words).and_then(|f| lab.inject(&f)) {
                    Ok(detail) => {
                        eprintln!("fault {}: {detail}", words.join(" "));
                        serde_json::json!({"ok": true, "detail": detail})
                    }
                    Err(e) => serde_json::json!({"ok": false, "error": format!("{e:#}")}),
                }
            }
            Err(e) => serde_json::json!({"ok": false, "error": format!("not a request: {e}")}),
        },
        Err(e) => serde_json::json!({"ok": false, "error": format!("read the request: {e}")}),
    };
    let mut w = &stream;
    let _ = writeln!(w, "{answer}");
}

/// Asks the lab in `dir` to inject a fault (`region-down us`, `link-cut`, `heal`, ...);
/// returns what it did.
pub fn fault(dir: &Path, words: &[String]) -> anyhow::Result<String> {
    use std::io::{BufRead, BufReader, Write};
    Fault::parse(words)?;
    let sock = dir.join(SOCKET_FILE);
    let stream = UnixStream::connect(&sock).with_context(|| {
        format!(
            "no lab answers on {}: start one with `haven lab up --dir {}`",
            sock.display(),
            dir.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut w = &stream;
    writeln!(w, "{}", serde_json::json!({ "fault": words }))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .context("the lab did not answer")?;
    let v: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("the lab answered {line:?}"))?;
    if v["ok"] == serde_json::Value::Bool(true) {
        Ok(v["detail"].as_str().unwrap_or("").to_string())
    } else {
        bail!(
            "{}",
            v["error"].as_str().unwrap_or("the lab refused the fault")
        )
    }
}

/// What `lab up` found or did.
pub enum Up {
    Started(LabState),
    AlreadyUp(LabState),
}

/// Starts a supervisor (`haven lab up --foreground ...`, in its own session so it outlives
/// the terminal, its log in `DIR/lab.log`) unless one runs, and waits for its `lab.json`.
pub fn up(haven: &Path, dir: &Path, args: &[String], timeout: Duration) -> anyhow::Result<Up> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    if let Some(state) = LabState::read(dir)? {
        if alive(state.pid) {
            return Ok(Up::AlreadyUp(state));
        }
        // A supervisor killed -9 leaves its description behind, and maybe its servers.
        signal(-(state.pid as i32), libc::SIGKILL);
        let _ = std::fs::remove_file(dir.join(STATE_FILE));
    }
    let log_path = dir.join(LOG_FILE);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    let mut cmd = Command::new(haven);
    cmd.args(["lab", "up", "--foreground", "--dir"])
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid(2) between fork and exec touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", haven.display()))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(state) = LabState::read(dir)? {
            if state.pid == child.id() {
                return Ok(Up::Started(state));
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the lab did not start ({status}); its log, {}:\n{}",
                log_path.display(),
                tail(&log_path, 20)
            );
        }
        if Instant::now() > deadline {
            signal(-(child.id() as i32), libc::SIGTERM);
            bail!(
                "the lab was not ready within {timeout:?} (stopped); its log, {}:\n{}",
                log_path.display(),
                tail(&log_path, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Stops the lab in `dir`: SIGTERM to its supervisor, which stops every server; after
/// `timeout`, SIGKILL to the whole process group. Returns false when no lab ran there.
pub fn down(dir: &Path, timeout: Duration) -> anyhow::Result<bool> {
    let Some(state) = LabState::read(dir)? else {
        return Ok(false);
    };
    let pid = state.pid;
    if !alive(pid) {
        signal(-(pid as i32), libc::SIGKILL);
        let _ = std::fs::remove_file(dir.join(STATE_FILE));
        return Ok(false);
    }
    signal(pid as i32, libc::SIGTERM);
    let deadline = Instant::now() + timeout;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Whatever is left of the group (the supervisor itself if it hung).
    signal(-(pid as i32), libc::SIGKILL);
    let _ = std::fs::remove_file(dir.join(STATE_FILE));
    Ok(true)
}

/// One part of the lab and whether it answers.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    pub name: String,
    pub address: String,
    pub up: bool,
}

/// `lab status`: the supervisor, every part, and which region holds the lease.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub running: bool,
    pub state: Option<LabState>,
    pub parts: Vec<Part>,
    /// The region whose agent answers `/lease` with 200, and its epoch.
    pub active: Option<String>,
    pub epoch: Option<u64>,
}

impl Status {
    pub fn healthy(&self) -> bool {
        self.running && self.parts.iter().all(|p| p.up) && self.active.is_some()
    }
}

fn answers(address: &str) -> bool {
    let hostport = address
        .trim_start_matches("http://")
        .trim_start_matches("postgresql://")
        .rsplit('@')
        .next()
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("");
    match hostport.parse::<std::net::SocketAddr>() {
        Ok(a) => std::net::TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok(),
        Err(_) => false,
    }
}

/// The port of a lab endpoint: `http://127.0.0.1:P`, `postgresql://ROLE@127.0.0.1:P/DB`
/// or `127.0.0.1:P`.
pub fn port_of(url: &str) -> Option<u16> {
    url.rsplit(':').next()?.split('/').next()?.parse().ok()
}

impl LabState {
    /// The region whose agent answers `/lease` with 200, and the epoch it reports.
    pub fn active(&self) -> Option<(String, Option<u64>)> {
        let e = &self.endpoints;
        for (region, url) in [("us", &e.agent_us), ("eu", &e.agent_eu)] {
            if let Some(port) = port_of(url) {
                if lease_status(port) == Some(200) {
                    return Some((region.to_string(), lease_epoch_of(port)));
                }
            }
        }
        None
    }
}

pub fn status(dir: &Path) -> anyhow::Result<Status> {
    let Some(state) = LabState::read(dir)? else {
        return Ok(Status {
            running: false,
            state: None,
            parts: vec![],
            active: None,
            epoch: None,
        });
    };
    let e = &state.endpoints;
    let mut named: Vec<(String, String)> = vec![];
    for (i, who) in ["us", "eu", "witness"].iter().enumerate() {
        if let Some(ep) = e.etcd.get(i) {
            named.push((format!("etcd-{who}"), ep.clone()));
        }
    }
    named.push(("postgres-us".into(), e.postgres_us.clone()));
    named.push(("postgres-eu".into(), e.postgres_eu.clone()));
    named.push(("write-route".into(), e.write_route.clone()));
    named.push(("dns".into(), e.dns.clone()));
    named.push(("agent-us".into(), e.agent_us.clone()));
    named.push(("agent-eu".into(), e.agent_eu.clone()));
    if let Some(k) = &e.kafka_us {
        named.push(("kafka-us".into(), k.clone()));
    }
    if let Some(k) = &e.kafka_eu {
        named.push(("kafka-eu".into(), k.clone()));
    }
    for (name, address) in [
        ("s3-us", &e.s3_us),
        ("s3-eu", &e.s3_eu),
        ("backup-us", &e.backup_metrics_us),
        ("backup-eu", &e.backup_metrics_eu),
    ] {
        if let Some(a) = address {
            named.push((name.into(), a.clone()));
        }
    }
    let parts = named
        .into_iter()
        .map(|(name, address)| Part {
            up: answers(&address),
            name,
            address,
        })
        .collect();
    let (active, epoch) = match state.active() {
        Some((region, epoch)) => (Some(region), epoch),
        None => (None, None),
    };
    Ok(Status {
        running: alive(state.pid),
        state: Some(state),
        parts,
        active,
        epoch,
    })
}
