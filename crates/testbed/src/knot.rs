use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::place::Place;
use crate::process::{find_tool, kill, tail};
use anyhow::{bail, Context, Result};

/// A throwaway Knot DNS 3.2 server, authoritative for one zone, that accepts RFC 2136
/// updates signed with one TSIG key (hmac-sha256). Stopped on drop.
pub struct Knot {
    dir: Place,
    child: Option<Child>,
    port: u16,
}

impl Knot {
    /// Serves `zone` (e.g. `dr.example.`) with `records` (zone-file lines, relative names
    /// allowed) and accepts updates signed with key `key_name` / base64 `secret`.
    pub fn start(zone: &str, records: &[&str], key_name: &str, secret: &str) -> Result<Knot> {
        Knot::start_in(Place::temp("haven-knot-")?, zone, records, key_name, secret)
    }

    /// [`Knot::start`] in `place`: a zone served there before keeps its records and the
    /// updates it took (`records` only make a new zone).
    pub fn start_in(
        mut dir: Place,
        zone: &str,
        records: &[&str],
        key_name: &str,
        secret: &str,
    ) -> Result<Knot> {
        let bin = find_tool("knotd", "apt-get install -y knot", &["/usr/sbin"])?;
        let port = dir.port("dns")?;
        let d = dir.path().display();
        let conf = format!(
            "server:\n    listen: 127.0.0.1@{port}\n    rundir: {d}\n\
             database:\n    storage: {d}/db\n\
             key:\n  - id: {key_name}\n    algorithm: hmac-sha256\n    secret: {secret}\n\
             acl:\n  - id: update\n    key: {key_name}\n    action: update\n\
             zone:\n  - domain: {zone}\n    storage: {d}\n    file: zone.db\n    acl: update\n\
             log:\n  - target: stderr\n    any: info\n"
        );
        std::fs::write(dir.path().join("knot.conf"), conf)?;
        // The journal (where updates go first) lives there.
        std::fs::create_dir_all(dir.path().join("db"))?;
        let zone_path = dir.path().join("zone.db");
        let mut zonefile = format!(
            "$ORIGIN {zone}\n$TTL 5\n@ SOA ns.{zone} admin.{zone} 1 60 60 3600 5\n@ NS ns.{zone}\nns A 127.0.0.1\n"
        );
        for r in records {
            zonefile.push_str(r);
            zonefile.push('\n');
        }
        if !zone_path.exists() {
            std::fs::write(&zone_path, zonefile)?;
        }
        let log = dir.path().join("knot.log");
        let mut child = Command::new(&bin)
            .arg("-c")
            .arg(dir.path().join("knot.conf"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("server started") && text.contains("loaded, serial") {
                break;
            }
            if let Some(st) = child.try_wait()? {
                bail!("knotd exited with {st}\n{}", tail(&log));
            }
            if Instant::now() > deadline {
                kill(&mut child);
                bail!("knotd did not load zone {zone} within 20 s\n{}", tail(&log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Knot {
            dir,
            child: Some(child),
            port,
        })
    }

    /// The UDP (and TCP) port it answers on, at 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("knot.log")
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", tail(&self.log()));
        }
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }
}
