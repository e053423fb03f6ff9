//! A throwaway etcd cluster (Debian's etcd-server 3.4): `n` members on free loopback
//! ports, each in its own temporary directory, with the WAN-tuned timers Haven's failover
//! design uses scaled to loopback (heartbeat 100 ms, election 1000 ms, pre-vote on).
//! Members can be killed (SIGKILL), frozen (SIGSTOP) and resumed, and restarted with their
//! data. Dropping the cluster kills every member and removes the directories.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::place::Place;
use crate::process::{find_tool, kill, tail, wait_for_port};
use anyhow::{bail, Context, Result};

const ETCD_INSTALL: &str = "apt-get install -y etcd-server";

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct EtcdCluster {
    root: Option<Place>,
    bin: PathBuf,
    initial_cluster: String,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `n` members (named m0, m1, ...) and waits until each answers on its client
    /// port and the cluster has a leader. A start that fails (a port taken between choosing
    /// and binding it by a test running in parallel, a slow machine) is tried again with
    /// fresh ports, up to three times.
    pub fn start(n: usize) -> Result<EtcdCluster> {
        Self::start_in(Place::temp("haven-etcd-")?, n)
    }

    /// Starts `n` members in `place`: on the data and ports they had there (the cluster
    /// keeps its keys, leases and revisions), or new ones. A first start that fails is
    /// tried again on other ports; a cluster started before keeps its ports.
    pub fn start_in(mut place: Place, n: usize) -> Result<EtcdCluster> {
        for attempt in 1..=3 {
            match Self::try_start(place, n) {
                Ok(c) => return Ok(c),
                Err((p, e)) => {
                    eprintln!("etcd cluster start, attempt {attempt} of 3, failed: {e:#}");
                    if p.reused() || attempt == 3 {
                        return Err(e);
                    }
                    place = p;
                    place.reset()?;
                }
            }
        }
        bail!("etcd cluster did not start")
    }

    fn try_start(
        place: Place,
        n: usize,
    ) -> std::result::Result<EtcdCluster, (Place, anyhow::Error)> {
        let mut root = place;
        let members = match Self::members(&mut root, n) {
            Ok(m) => m,
            Err(e) => return Err((root, e)),
        };
        let bin = match find_tool("etcd", ETCD_INSTALL, &["/usr/bin"]) {
            Ok(b) => b,
            Err(e) => return Err((root, e)),
        };
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            root: Some(root),
            bin,
            initial_cluster,
            members,
        };
        match c.spawn_all(n) {
            Ok(()) => Ok(c),
            Err(e) => {
                // The members die here, before their directory is reset for a retry.
                for i in 0..n {
                    c.kill(i);
                }
                match c.root.take() {
                    Some(root) => Err((root, e)),
                    None => unreachable!("the place is taken only here"),
                }
            }
        }
    }

    fn spawn_all(&mut self, n: usize) -> Result<()> {
        for i in 0..n {
            self.spawn(i)?;
        }
        for i in 0..n {
            self.wait_member(i)?;
        }
        self.wait_healthy(Duration::from_secs(30))
    }

    fn members(root: &mut Place, n: usize) -> Result<Vec<Member>> {
        let mut members = Vec::new();
        for i in 0..n {
            let dir = root.path().join(format!("m{i}"));
            std::fs::create_dir_all(&dir)?;
            members.push(Member {
                name: format!("m{i}"),
                client_port: root.port(&format!("m{i}-client"))?,
                peer_port: root.port(&format!("m{i}-peer"))?,
                log: root.path().join(format!("m{i}.log")),
                dir,
                child: None,
            });
        }
        Ok(members)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let child = Command::new(&self.bin)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(m.dir.join("data"))
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{}",
                m.client_port
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{}",
                m.client_port
            ))
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{}",
                m.peer_port
            ))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                m.peer_port
            ))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=haven-test")
            .args(["--heartbeat-interval=100", "--election-timeout=1000"])
            .arg("--pre-vote=true")
            .env("ETCD_UNSUPPORTED_ARCH", "")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        m.child = Some(child);
        Ok(())
    }

    fn wait_member(&mut self, i: usize) -> Result<()> {
        let m = &mut self.members[i];
        let port = m.client_port;
        let log = m.log.clone();
        match m.child.as_mut() {
            Some(child) => wait_for_port(port, child, &log, Duration::from_secs(20)),
            None => bail!("etcd member {i} is not running"),
        }
    }

    /// Waits until a member reports the cluster healthy (a leader, quorum).
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                if health(m.client_port) {
                    return Ok(());
                }
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "etcd cluster not healthy within {timeout:?}\n{}",
                    self.members
                        .iter()
                        .map(|m| tail(&m.log))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    pub fn client_port(&self, i: usize) -> u16 {
        self.members[i].client_port
    }

    /// SIGKILL of member `i` (its data stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            kill(&mut c);
        }
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_member(i)
    }

    /// Freezes (SIGSTOP) or resumes (SIGCONT) member `i`.
    pub fn freeze(&self, i: usize, frozen: bool) -> Result<()> {
        let Some(c) = &self.members[i].child else {
            bail!("etcd member {i} is not running");
        };
        let sig = if frozen { "-STOP" } else { "-CONT" };
        let st = Command::new("kill")
            .arg(sig)
            .arg(c.id().to_string())
            .status()?;
        if !st.success() {
            bail!("kill {sig} {} failed", c.id());
        }
        Ok(())
    }

    /// The log of every member (for a failing test).
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| tail(&m.log))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Whether the member on `port` answers `/health` with `"health":"true"`.
fn health(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for i in 0..self.members.len() {
            // A frozen member must be resumed to die promptly.
            let _ = self.freeze(i, false);
            self.kill(i);
        }
        if panicking {
            eprintln!("{}", self.logs());
        }
    }
}
