use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::place::Place;
use crate::process::{find_tool, kill, tail, wait_for_port};
use anyhow::{Context, Result};

/// One TCP backend behind its own frontend port.
#[derive(Debug, Clone)]
pub struct HaproxyBackend {
    pub name: String,
    /// (server name, `host:port`).
    pub servers: Vec<(String, String)>,
    /// Servers start in maintenance (fail closed) until the runtime API readies them.
    pub disabled: bool,
}

/// A throwaway HAProxy 2.6 in TCP mode: one frontend per backend on a free loopback port,
/// and the runtime API on an admin unix socket. Stopped on drop.
pub struct Haproxy {
    dir: Place,
    child: Option<Child>,
    ports: BTreeMap<String, u16>,
}

impl Haproxy {
    pub fn start(backends: &[HaproxyBackend]) -> Result<Haproxy> {
        Haproxy::start_in(Place::temp("haven-haproxy-")?, backends)
    }

    /// [`Haproxy::start`] in `place`, each frontend on the port it had there. HAProxy
    /// keeps no state: servers start as `backends` say (disabled ones stay so until the
    /// runtime API readies them).
    pub fn start_in(mut dir: Place, backends: &[HaproxyBackend]) -> Result<Haproxy> {
        let bin = find_tool("haproxy", "apt-get install -y haproxy", &["/usr/sbin"])?;
        let socket = dir.path().join("admin.sock");
        // An old socket would read as this server's before it made its own.
        let _ = std::fs::remove_file(&socket);
        let mut cfg = format!(
            "global\n  stats socket {} mode 600 level admin\n  stats timeout 2m\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n",
            socket.display()
        );
        let mut ports = BTreeMap::new();
        for b in backends {
            let port = dir.port(&b.name)?;
            ports.insert(b.name.clone(), port);
            cfg.push_str(&format!(
                "frontend fe_{0}\n  bind 127.0.0.1:{port}\n  default_backend {0}\nbackend {0}\n",
                b.name
            ));
            for (s, addr) in &b.servers {
                let disabled = if b.disabled { " disabled" } else { "" };
                cfg.push_str(&format!("  server {s} {addr}{disabled}\n"));
            }
        }
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg)?;
        let log = dir.path().join("haproxy.log");
        let mut child = Command::new(&bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.path().join("haproxy.err"))?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        if let Some(port) = ports.values().next() {
            wait_for_port(*port, &mut child, &log, Duration::from_secs(20))?;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if std::time::Instant::now() > deadline {
                anyhow::bail!("haproxy made no admin socket\n{}", tail(&log));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Haproxy {
            dir,
            child: Some(child),
            ports,
        })
    }

    /// The admin socket of the runtime API.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// The frontend port of a backend.
    pub fn port(&self, backend: &str) -> u16 {
        self.ports[backend]
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("haproxy.err")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", tail(&self.log()));
        }
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }
}
